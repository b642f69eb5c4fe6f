//! The disk spool: batches wait here, fsync'd, until an aggregator acknowledges them.
//!
//! ```text
//! <dir>/                      (created 0700)
//!   lock                      flock'd while an agent uses the spool (holds its pid)
//!   spool.meta                spool id, next seq, acked floor, replay mark (text, atomic rename)
//!   00000000000000000001.seg  segment files, named by the seq of their first batch
//!   00000000000000000412.seg
//! ```
//!
//! A segment file starts with the 8-byte magic `FLSPOOL2` and a 16-byte random salt drawn
//! when the segment is created, then frames:
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  crc32c of the salt and everything after this field (salt ‖ seq, mark, payload)
//! u64 LE  seq
//! u64 LE  replay mark: input tag (0 = none)
//! u64 LE  replay mark: records of the input handled up to and including this batch
//! ...     payload: the prost-encoded flowlog.ingest.v1.RecordBatch
//! ```
//!
//! - A batch is written (and fsync'd under `fsync = "always"`) before it is sent.
//! - The salt keys the frame checksums, so bytes inside a payload that look like a frame
//!   (a frame of another segment, or one built to look valid) never pass as one. Segments
//!   of the earlier format (`FLSPOOL1`: no salt, `crc32c(seq, mark, payload)`) are still
//!   read; new batches always go to a new segment.
//! - A torn tail of the last segment (a crash in the middle of a write) is cut off at open.
//! - A damaged frame anywhere else does not end its segment: open searches the bytes after
//!   it for the next intact frame and goes on from there. The skipped bytes are logged as an
//!   error (file, offset, bytes), counted, and the batches they held (when not already
//!   acknowledged) are reported as SKIPDATA records, spooled as a new batch (see
//!   [`Loss`]). The segment and offset are remembered in `spool.meta`, so a loss is
//!   reported once even though the damaged bytes stay until the segment is deleted.
//! - A segment is deleted when every batch in it is acknowledged; `spool.meta` is written
//!   (fsync, atomic rename) first, so the next `seq` survives even when every segment is
//!   gone and a restart never reuses one.
//! - `acked_below` is persisted in `spool.meta` before it is ever sent: batches below it are
//!   never sent again, even after a crash.
//! - When the spool holds `max_bytes`, a batch that does not fit is not kept; one SKIPDATA
//!   record per interface of the batch is spooled in its place (allowed past the limit) and
//!   its records are counted as dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowlog_formats::{FlowRecord, Text};
use flowlog_transport::{MAX_MESSAGE_BYTES, encode_batch, pb};
use prost::Message;

use super::settings::{FsyncPolicy, SpoolSettings};

/// Magic at the start of every segment file written.
pub const SEGMENT_MAGIC: &[u8; 8] = b"FLSPOOL2";
/// Magic of an earlier-format segment (no salt, unkeyed checksums); read, never written.
pub const SEGMENT_MAGIC_V1: &[u8; 8] = b"FLSPOOL1";
/// Bytes of the per-segment salt after the magic.
const SALT_LEN: usize = 16;
/// Bytes before the first frame of a segment: magic and salt.
pub const SEGMENT_HEADER: usize = SEGMENT_MAGIC.len() + SALT_LEN;
/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 32;
const META_FILE: &str = "spool.meta";
const META_TMP: &str = "spool.meta.tmp";
const LOCK_FILE: &str = "lock";
/// Which endpoint each batch was first sent to (`<seq> <endpoint URL>` lines; `<seq> -`
/// releases a pin).
const PINS_FILE: &str = "pins";
const PINS_TMP: &str = "pins.tmp";
const META_HEADER: &str = "flowlog-agent spool v1";
/// Finished replay inputs remembered in the meta file.
const MAX_FINISHED_INPUTS: usize = 64;

/// Failure of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file or directory operation failed.
    #[error("spool {path}: {op}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another agent holds the spool directory.
    #[error(
        "spool {dir} is in use by another flowlog-agent{holder}; two agents cannot share a spool"
    )]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// ` (pid N)` when known.
        holder: String,
    },
    /// A spool file does not have the expected form.
    #[error("spool {path}: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The batch is unknown (already acknowledged).
    #[error("batch {0} is not in the spool")]
    UnknownBatch(u64),
}

fn io_err(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> SpoolError + use<> {
    let path = path.to_owned();
    move |source| SpoolError::Io { path, op, source }
}

/// Progress of a `--replay` input, kept with the batches it produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Identity of the input (nonzero hash of its content and the record settings).
    pub input: u64,
    /// Records of the input handled (spooled, or replaced by SKIPDATA) so far, in the
    /// replay's deterministic order.
    pub records: u64,
    /// Every record of the input is handled.
    pub finished: bool,
}

/// What [`Spool::append`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The batch is spooled under `seq`.
    Spooled {
        /// Its sequence number.
        seq: u64,
    },
    /// The spool was full: the batch was not kept; SKIPDATA records (one per interface)
    /// were spooled under `seq` instead.
    Replaced {
        /// The SKIPDATA batch's sequence number.
        seq: u64,
        /// Records not kept.
        dropped: u64,
    },
}

/// Where an unacknowledged batch is.
#[derive(Debug, Clone, Copy)]
struct BatchLoc {
    segment: u64,
    offset: u64,
    len: u32,
    records: u32,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: File,
    bytes: u64,
    /// Unacknowledged batches in it.
    unacked: usize,
    /// CRC32C state after the segment's salt: frame checksums continue from it (0, the
    /// empty CRC, for an earlier-format segment).
    seed: u32,
}

/// The contents of `spool.meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    spool_id: u64,
    next_seq: u64,
    acked_below: u64,
    /// The latest replay mark and the seq of the last batch when it was written.
    mark: Option<(u64, Mark)>,
    finished: Vec<u64>,
    /// Damaged stretches already reported as lost: (segment, byte offset).
    reported: Vec<(u64, u64)>,
}

impl Meta {
    fn render(&self) -> String {
        let mut s = format!(
            "{META_HEADER}\nspool_id {}\nnext_seq {}\nacked_below {}\n",
            self.spool_id, self.next_seq, self.acked_below
        );
        if let Some((seq, m)) = &self.mark {
            s.push_str(&format!(
                "mark {:016x} {} {} {}\n",
                m.input,
                m.records,
                seq,
                u8::from(m.finished)
            ));
        }
        for f in &self.finished {
            s.push_str(&format!("finished {f:016x}\n"));
        }
        for (segment, offset) in &self.reported {
            s.push_str(&format!("lost_reported {segment} {offset}\n"));
        }
        s
    }

    fn parse(text: &str) -> Result<Meta, String> {
        let mut lines = text.lines();
        if lines.next() != Some(META_HEADER) {
            return Err(format!("does not start with '{META_HEADER}'"));
        }
        let (mut spool_id, mut next_seq, mut acked_below) = (None, None, None);
        let mut mark = None;
        let mut finished = Vec::new();
        let mut reported = Vec::new();
        for (n, line) in lines.enumerate() {
            let bad = || format!("line {}: '{line}' is not understood", n + 2);
            let words: Vec<&str> = line.split_whitespace().collect();
            let num = |w: &str| w.parse::<u64>().map_err(|_| bad());
            let hex = |w: &str| u64::from_str_radix(w, 16).map_err(|_| bad());
            match words.as_slice() {
                [] => {}
                ["spool_id", v] => spool_id = Some(num(v)?),
                ["next_seq", v] => next_seq = Some(num(v)?),
                ["acked_below", v] => acked_below = Some(num(v)?),
                ["mark", input, records, seq, fin] => {
                    mark = Some((
                        num(seq)?,
                        Mark {
                            input: hex(input)?,
                            records: num(records)?,
                            finished: num(fin)? == 1,
                        },
                    ));
                }
                ["finished", input] => finished.push(hex(input)?),
                ["lost_reported", segment, offset] => reported.push((num(segment)?, num(offset)?)),
                _ => return Err(bad()),
            }
        }
        match (spool_id, next_seq, acked_below) {
            (Some(spool_id), Some(next_seq), Some(acked_below)) if spool_id != 0 => Ok(Meta {
                spool_id,
                next_seq: next_seq.max(1),
                acked_below,
                mark,
                finished,
                reported,
            }),
            _ => Err("spool_id, next_seq or acked_below is missing".to_owned()),
        }
    }
}

/// What [`Spool::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// The spool directory was created.
    pub created: bool,
    /// Unacknowledged batches found.
    pub batches: usize,
    /// Their records.
    pub records: u64,
    /// Bytes cut off torn tails of the last segment.
    pub cut_bytes: u64,
    /// Damaged stretches skipped (first found by this open).
    pub losses: Vec<Loss>,
}

/// A damaged stretch of a segment that open skipped (first found by this open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The segment file.
    pub segment: PathBuf,
    /// Byte offset of the first damaged byte.
    pub offset: u64,
    /// Bytes skipped.
    pub bytes: u64,
    /// Seqs of the batches that were in it, when they can be bounded (`lo..hi`).
    pub seqs: Option<std::ops::Range<u64>>,
    /// SKIPDATA records spooled for it (0 when its batches were already acknowledged).
    pub skipdata_records: usize,
    /// Seq of the batch that carries them.
    pub skipdata_seq: Option<u64>,
}

/// The spool. Not thread-safe by itself: the shipper keeps it behind a mutex.
#[derive(Debug)]
pub struct Spool {
    settings: SpoolSettings,
    _lock: File,
    meta: Meta,
    /// The meta as last persisted.
    persisted: Meta,
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to.
    active: Option<u64>,
    batches: BTreeMap<u64, BatchLoc>,
    bytes: u64,
    records: u64,
    last_sync: Instant,
    unsynced: bool,
    dropped_records: u64,
    open_report: OpenReport,
    /// Endpoint each unacknowledged batch is pinned to (see [`Spool::pin`]).
    pins: BTreeMap<u64, String>,
    /// Lines in the pins file (rewritten when mostly stale).
    pin_lines: usize,
}

/// A random nonzero id.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    let from_os = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    let mut v = u64::from_le_bytes(buf);
    if from_os.is_err() || v == 0 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        v = h.finish() | 1;
    }
    v
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    flowlog_runtime::sync_dir(dir).map_err(io_err(dir, "fsync the directory"))
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// Writes `meta` atomically: temporary file, fsync, rename, fsync of the directory.
fn write_meta(dir: &Path, meta: &Meta) -> Result<(), SpoolError> {
    write_atomically(dir, META_TMP, META_FILE, meta.render().as_bytes())
}

/// Replaces `dir/name` with `bytes`: `dir/tmp_name` written and fsync'd, renamed into
/// place, then the directory fsync'd.
fn write_atomically(
    dir: &Path,
    tmp_name: &str,
    name: &str,
    bytes: &[u8],
) -> Result<(), SpoolError> {
    let tmp = dir.join(tmp_name);
    let path = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp, "create"))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp, "write"))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path, "rename into place"))?;
    sync_dir(dir)
}

/// One frame read back from a segment.
struct Frame {
    seq: u64,
    mark: Option<Mark>,
    offset: u64,
    len: u32,
    records: u32,
}

/// What [`scan_segment`] found in a segment file.
struct SegmentScan {
    frames: Vec<Frame>,
    /// Damaged stretches followed by an intact frame: (offset, bytes).
    gaps: Vec<(u64, u64)>,
    /// End of the last intact frame (or of the header): what follows is a bad tail.
    valid: u64,
    /// The file's length.
    total: u64,
    /// CRC32C state after the salt (0 for an earlier-format segment).
    seed: u32,
}

/// A damaged stretch found at open.
#[derive(Debug)]
struct Gap {
    segment: u64,
    path: PathBuf,
    offset: u64,
    bytes: u64,
    /// Seqs of the batches it held.
    seqs: std::ops::Range<u64>,
    /// Index (in spool order) of the first intact frame after it.
    next_intact: usize,
}

/// Reads and checks the frame at `at`: length within the file and the limit, a seq in
/// `seqs`, checksum keyed by `seed`, payload that decodes.
fn frame_at(
    data: &[u8],
    at: usize,
    seed: u32,
    seqs: std::ops::RangeInclusive<u64>,
) -> Option<Frame> {
    let header = data.get(at..at.checked_add(FRAME_HEADER)?)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let long = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let len = word(0);
    // The cheap checks first: the search after a damaged frame tries every offset.
    if len as usize > MAX_MESSAGE_BYTES || !seqs.contains(&long(8)) {
        return None;
    }
    let end = at + FRAME_HEADER + len as usize;
    let covered = data.get(at + 8..end)?;
    if crc32c::crc32c_append(seed, covered) != word(4) {
        return None;
    }
    let batch = pb::RecordBatch::decode(&data[at + FRAME_HEADER..end]).ok()?;
    let input = long(16);
    Some(Frame {
        seq: long(8),
        mark: (input != 0).then_some(Mark {
            input,
            records: long(24),
            finished: false,
        }),
        offset: (at + FRAME_HEADER) as u64,
        len,
        records: u32::try_from(batch.records.len()).unwrap_or(u32::MAX),
    })
}

/// Reads the frames of a segment file. A frame that is damaged does not end the scan: the
/// following bytes are searched for the next intact frame (with a seq above the last one),
/// and the stretch in between is returned as a gap. Bytes after the last intact frame are
/// the segment's bad tail (`valid..total`).
fn scan_segment(path: &Path, file: &mut File, first_seq: u64) -> Result<SegmentScan, SpoolError> {
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io_err(path, "read"))?;
    let total = data.len() as u64;
    let empty = |valid| SegmentScan {
        frames: Vec::new(),
        gaps: Vec::new(),
        valid,
        total,
        seed: 0,
    };
    let (seed, header) = match data.get(..SEGMENT_MAGIC.len()) {
        Some(m) if m == SEGMENT_MAGIC => match data.get(SEGMENT_MAGIC.len()..SEGMENT_HEADER) {
            Some(salt) => (crc32c::crc32c(salt), SEGMENT_HEADER),
            // A creation cut short: no frame can follow.
            None => return Ok(empty(0)),
        },
        Some(m) if m == SEGMENT_MAGIC_V1 => (0, SEGMENT_MAGIC_V1.len()),
        Some(_) => {
            return Err(SpoolError::Corrupt {
                path: path.to_owned(),
                problem: "not a flowlog spool segment (bad magic)".to_owned(),
            });
        }
        None => return Ok(empty(0)),
    };
    let mut frames: Vec<Frame> = Vec::new();
    let mut gaps = Vec::new();
    let mut at = header;
    let mut valid = header;
    while at < data.len() {
        if let Some(frame) = frame_at(&data, at, seed, 0..=u64::MAX) {
            at = frame.offset as usize + frame.len as usize;
            valid = at;
            frames.push(frame);
            continue;
        }
        // Seqs rise by one per frame, and every frame takes at least FRAME_HEADER bytes:
        // that bounds the seq a later intact frame can have.
        let after = frames.last().map_or(first_seq.saturating_sub(1), |f| f.seq);
        let most = after.saturating_add((data.len() / FRAME_HEADER) as u64 + 1);
        let next = (at + 1..data.len().saturating_sub(FRAME_HEADER - 1))
            .find(|&i| frame_at(&data, i, seed, after + 1..=most).is_some());
        match next {
            Some(next) => {
                gaps.push((at as u64, (next - at) as u64));
                at = next;
            }
            None => break,
        }
    }
    Ok(SegmentScan {
        frames,
        gaps,
        valid: valid as u64,
        total,
        seed,
    })
}

/// What is known of the batch next to a damaged stretch: its records' interfaces (one
/// record each, carrying the fields that describe the interface) and time span.
fn neighbour_summary(path: &Path, offset: u64, len: u32) -> Option<(Vec<FlowRecord>, u64, u64)> {
    let file = File::open(path).ok()?;
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset).ok()?;
    let batch = pb::RecordBatch::decode(buf.as_slice()).ok()?;
    let records = flowlog_transport::decode_batch(&batch).ok()?;
    let mut interfaces: Vec<FlowRecord> = Vec::new();
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for r in &records {
        if let Some(t) = r.start.or(r.end) {
            lo = lo.min(t);
        }
        if let Some(t) = r.end.or(r.start) {
            hi = hi.max(t);
        }
        if !interfaces
            .iter()
            .any(|i| i.interface_id == r.interface_id && i.account_id == r.account_id)
        {
            interfaces.push(interface_template(r));
        }
    }
    (lo <= hi).then_some((interfaces, lo, hi))
}

/// A SKIPDATA record for `r`'s interface: the fields that describe the interface (account,
/// interface, region, VPC, subnet, instance, zone, sublocation) are kept, as the agent's
/// metadata step would set them.
fn interface_template(r: &FlowRecord) -> FlowRecord {
    let mut t = FlowRecord::skip_data(r.account_id.clone(), r.interface_id.clone(), 0, 0);
    t.region = r.region.clone();
    t.vpc_id = r.vpc_id.clone();
    t.subnet_id = r.subnet_id.clone();
    t.instance_id = r.instance_id.clone();
    t.az_id = r.az_id.clone();
    t.sublocation_type = r.sublocation_type.clone();
    t.sublocation_id = r.sublocation_id.clone();
    t
}

impl Spool {
    /// Opens (or creates) the spool: takes its lock, reads the meta file, scans the
    /// segments (cutting torn tails off) and finds the unacknowledged batches.
    pub fn open(settings: &SpoolSettings) -> Result<Spool, SpoolError> {
        let dir = &settings.dir;
        let created = !dir.exists();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir, "create the directory"))?;
        let lock_path = dir.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "open"))?;
        if let Err(e) =
            rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        {
            if e == rustix::io::Errno::WOULDBLOCK {
                let mut holder = String::new();
                let _ = lock.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(SpoolError::Locked {
                    dir: dir.clone(),
                    holder: if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {holder})")
                    },
                });
            }
            return Err(SpoolError::Io {
                path: lock_path,
                op: "lock",
                source: e.into(),
            });
        }
        lock.set_len(0)
            .and_then(|()| lock.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0))
            .map_err(io_err(&lock_path, "write"))?;
        let _ = std::fs::remove_file(dir.join(META_TMP));

        let mut seg_names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_err(dir, "list"))? {
            let entry = entry.map_err(io_err(dir, "list"))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(n) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                seg_names.push(n);
            }
        }
        seg_names.sort_unstable();

        let meta_path = dir.join(META_FILE);
        let meta = match std::fs::read_to_string(&meta_path) {
            Ok(text) => Meta::parse(&text).map_err(|problem| SpoolError::Corrupt {
                path: meta_path.clone(),
                problem,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(first) = seg_names.first() {
                    return Err(SpoolError::Corrupt {
                        path: meta_path,
                        problem: format!(
                            "is missing but segments such as {} exist; without the spool id \
                             they cannot be delivered exactly once (move them away to start \
                             a new spool)",
                            segment_name(*first)
                        ),
                    });
                }
                let meta = Meta {
                    spool_id: random_u64(),
                    next_seq: 1,
                    acked_below: 1,
                    mark: None,
                    finished: Vec::new(),
                    reported: Vec::new(),
                };
                write_meta(dir, &meta)?;
                meta
            }
            Err(e) => return Err(io_err(&meta_path, "read")(e)),
        };

        let mut spool = Spool {
            settings: settings.clone(),
            _lock: lock,
            persisted: meta.clone(),
            meta,
            segments: BTreeMap::new(),
            active: None,
            batches: BTreeMap::new(),
            bytes: 0,
            records: 0,
            last_sync: Instant::now(),
            unsynced: false,
            dropped_records: 0,
            open_report: OpenReport {
                created,
                ..OpenReport::default()
            },
            pins: BTreeMap::new(),
            pin_lines: 0,
        };
        let mut max_seq = 0;
        let mut to_delete = Vec::new();
        let mut frame_mark: Option<(u64, Mark)> = None;
        // Every intact frame in spool order: (segment path, payload offset, length).
        let mut intact: Vec<(PathBuf, u64, u32)> = Vec::new();
        let mut gaps: Vec<Gap> = Vec::new();
        for (k, &name) in seg_names.iter().enumerate() {
            let path = dir.join(segment_name(name));
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path, "open"))?;
            let scan = scan_segment(&path, &mut file, name)?;
            let frames = scan.frames;
            // The batches a damaged stretch held lie between the intact frames around it
            // (or the segment's first seq, or the next segment's first seq).
            let seq_before = |offset: u64| {
                frames
                    .iter()
                    .take_while(|f| f.offset < offset)
                    .last()
                    .map_or(name, |f| f.seq + 1)
            };
            for &(offset, bytes) in &scan.gaps {
                let before = frames.iter().take_while(|f| f.offset < offset).count();
                let hi = frames.get(before).map_or(seq_before(offset), |f| f.seq);
                gaps.push(Gap {
                    segment: name,
                    path: path.clone(),
                    offset,
                    bytes,
                    seqs: seq_before(offset)..hi,
                    next_intact: intact.len() + before,
                });
            }
            if scan.valid < scan.total {
                let cut = scan.total - scan.valid;
                match seg_names.get(k + 1) {
                    // Only the last segment is written to: a bad tail there is a write
                    // interrupted by a crash (its batch was never spooled).
                    None => {
                        spool.open_report.cut_bytes += cut;
                        tracing::warn!(
                            segment = %path.display(),
                            offset = scan.valid,
                            cut_bytes = cut,
                            kept_batches = frames.len(),
                            "spool: cut a torn tail off the last segment (a write interrupted by a crash)"
                        );
                    }
                    // An earlier segment was complete when the next one started: its
                    // damaged tail held batches up to the next segment's first seq.
                    Some(&next) => gaps.push(Gap {
                        segment: name,
                        path: path.clone(),
                        offset: scan.valid,
                        bytes: cut,
                        seqs: seq_before(scan.valid)..next,
                        next_intact: intact.len() + frames.len(),
                    }),
                }
                file.set_len(scan.valid)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err(&path, "truncate"))?;
            }
            intact.extend(frames.iter().map(|f| (path.clone(), f.offset, f.len)));
            if frames.is_empty() {
                to_delete.push(path);
                continue;
            }
            let valid = scan.valid;
            let mut unacked = 0;
            for f in &frames {
                max_seq = max_seq.max(f.seq);
                if let Some(m) = f.mark
                    && frame_mark.is_none_or(|(s, _)| f.seq > s)
                {
                    frame_mark = Some((f.seq, m));
                }
                if f.seq < spool.meta.acked_below || spool.batches.contains_key(&f.seq) {
                    continue;
                }
                unacked += 1;
                spool.records += u64::from(f.records);
                spool.batches.insert(
                    f.seq,
                    BatchLoc {
                        segment: name,
                        offset: f.offset,
                        len: f.len,
                        records: f.records,
                    },
                );
            }
            if unacked == 0 {
                to_delete.push(path);
                continue;
            }
            spool.bytes += valid;
            spool.segments.insert(
                name,
                Segment {
                    path,
                    file,
                    bytes: valid,
                    unacked,
                    seed: scan.seed,
                },
            );
        }
        spool.meta.next_seq = spool.meta.next_seq.max(max_seq + 1);
        if let Some((seq, m)) = frame_mark
            && spool.meta.mark.is_none_or(|(s, _)| seq > s)
        {
            spool.meta.mark = Some((seq, m));
        }
        spool.meta.next_seq = spool
            .meta
            .next_seq
            .max(gaps.iter().map(|g| g.seqs.end).max().unwrap_or(0));
        // Lost batches are judged against the floor persisted before this open.
        let floor = spool.persisted.acked_below;
        spool.meta.acked_below = spool.lowest_unacked();
        if spool.meta != spool.persisted {
            spool.persist()?;
        }
        // Segments with nothing left to send go only once the meta (next seq, mark) that
        // they held is persisted; those with a damaged stretch not reported yet stay until
        // it is (the SKIPDATA batch goes to a new segment, whose name is then free).
        let unreported = |path: &PathBuf| {
            gaps.iter()
                .any(|g| g.path == *path && !spool.meta.reported.contains(&(g.segment, g.offset)))
        };
        let (later, now): (Vec<PathBuf>, Vec<PathBuf>) =
            to_delete.into_iter().partition(unreported);
        for path in now {
            std::fs::remove_file(&path).map_err(io_err(&path, "delete"))?;
        }
        spool.report_losses(gaps, &intact, floor)?;
        let kept: BTreeSet<u64> = spool.segments.keys().copied().collect();
        spool
            .meta
            .reported
            .retain(|(segment, _)| kept.contains(segment));
        if spool.meta != spool.persisted {
            spool.persist()?;
        }
        for path in later {
            std::fs::remove_file(&path).map_err(io_err(&path, "delete"))?;
        }
        sync_dir(dir)?;
        spool.load_pins()?;
        spool.open_report.batches = spool.batches.len();
        spool.open_report.records = spool.records;
        Ok(spool)
    }

    /// Logs each damaged stretch not reported before, and spools SKIPDATA records for the
    /// batches it held unless all of them were acknowledged (below the persisted floor).
    ///
    /// What the lost batches held is unknown, so the SKIPDATA records are built from the
    /// intact batches on either side: one per interface seen in them, spanning from the
    /// earliest start of the batch before to the latest end of the batch after. Without a
    /// batch before, the span starts at the batch after's earliest start; without a batch
    /// after, it ends at the segment's modification time (the last write to it); with
    /// neither, it is that instant, on one record without interface (`-`).
    fn report_losses(
        &mut self,
        gaps: Vec<Gap>,
        intact: &[(PathBuf, u64, u32)],
        floor: u64,
    ) -> Result<(), SpoolError> {
        for gap in gaps {
            if self.meta.reported.contains(&(gap.segment, gap.offset)) {
                continue;
            }
            let unacked = gap.seqs.end > floor && !gap.seqs.is_empty();
            let mut loss = Loss {
                segment: gap.path.clone(),
                offset: gap.offset,
                bytes: gap.bytes,
                seqs: Some(gap.seqs.clone()),
                skipdata_records: 0,
                skipdata_seq: None,
            };
            if unacked {
                let summary = |i: Option<usize>| {
                    let (path, offset, len) = intact.get(i?)?;
                    neighbour_summary(path, *offset, *len)
                };
                let before = summary(gap.next_intact.checked_sub(1));
                let after = summary(Some(gap.next_intact));
                let modified = std::fs::metadata(&gap.path)
                    .and_then(|m| m.modified())
                    .unwrap_or_else(|_| std::time::SystemTime::now())
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let start = before
                    .as_ref()
                    .or(after.as_ref())
                    .map_or(modified, |(_, lo, _)| *lo);
                let end = after.as_ref().map_or(modified, |(_, _, hi)| *hi).max(start);
                let mut skip: Vec<FlowRecord> = Vec::new();
                for t in before.into_iter().chain(after).flat_map(|(t, _, _)| t) {
                    if !skip
                        .iter()
                        .any(|r| r.interface_id == t.interface_id && r.account_id == t.account_id)
                    {
                        skip.push(t);
                    }
                }
                if skip.is_empty() {
                    skip.push(FlowRecord::skip_data(None, None, 0, 0));
                }
                for r in &mut skip {
                    r.start = Some(start);
                    r.end = Some(end);
                }
                let seq = self.append_encoded(&Spool::encode(&skip), skip.len(), None)?;
                loss.skipdata_records = skip.len();
                loss.skipdata_seq = Some(seq);
            }
            tracing::error!(
                segment = %gap.path.display(),
                offset = gap.offset,
                bytes_skipped = gap.bytes,
                lost_seqs = format_args!("{}..{}", gap.seqs.start, gap.seqs.end),
                already_acknowledged = !unacked,
                skipdata_records = loss.skipdata_records,
                "spool: skipped a damaged stretch of a segment; the batches in it are lost{}",
                if unacked { " (reported as SKIPDATA)" } else { " but were acknowledged before" }
            );
            self.meta.reported.push((gap.segment, gap.offset));
            self.open_report.losses.push(loss);
        }
        if self.unsynced {
            self.sync().map_err(io_err(&self.settings.dir, "fsync"))?;
        }
        Ok(())
    }

    /// What the open found.
    pub fn open_report(&self) -> &OpenReport {
        &self.open_report
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.settings.dir
    }

    /// The random id chosen when the spool was created.
    pub fn spool_id(&self) -> u64 {
        self.meta.spool_id
    }

    /// The seq the next batch gets.
    pub fn next_seq(&self) -> u64 {
        self.meta.next_seq
    }

    /// Every batch below this seq is acknowledged and never sent again (persisted before
    /// this returns it).
    pub fn acked_below(&self) -> u64 {
        self.persisted.acked_below
    }

    /// The lowest unacknowledged seq (or the next seq when every batch is acknowledged).
    pub fn lowest_unacked(&self) -> u64 {
        self.batches
            .keys()
            .next()
            .copied()
            .unwrap_or(self.meta.next_seq)
    }

    /// Unacknowledged batches.
    pub fn batches(&self) -> usize {
        self.batches.len()
    }

    /// Records of the unacknowledged batches.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes of the segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records dropped (replaced by SKIPDATA) since the spool was opened.
    pub fn dropped_records(&self) -> u64 {
        self.dropped_records
    }

    /// The unacknowledged seqs, lowest first.
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.batches.keys().copied()
    }

    /// Records in batch `seq`, if it is unacknowledged.
    pub fn batch_records(&self, seq: u64) -> Option<u32> {
        self.batches.get(&seq).map(|b| b.records)
    }

    /// The latest replay mark.
    pub fn mark(&self) -> Option<Mark> {
        self.meta.mark.map(|(_, m)| m)
    }

    /// True if replay input `input` was finished.
    pub fn input_finished(&self, input: u64) -> bool {
        self.meta.finished.contains(&input)
            || self.mark().is_some_and(|m| m.input == input && m.finished)
    }

    /// True if a payload of `payload_len` bytes fits under `max_bytes`.
    pub fn has_room(&self, payload_len: usize) -> bool {
        self.bytes + self.frame_cost(payload_len) <= self.settings.max_bytes
    }

    fn frame_cost(&self, payload_len: usize) -> u64 {
        let frame = (FRAME_HEADER + payload_len) as u64;
        let new_segment = match self.active.and_then(|a| self.segments.get(&a)) {
            Some(s) => s.bytes + frame > self.settings.segment_bytes,
            None => true,
        };
        frame
            + if new_segment {
                SEGMENT_HEADER as u64
            } else {
                0
            }
    }

    /// Encodes records as a batch payload.
    pub fn encode(records: &[FlowRecord]) -> Vec<u8> {
        encode_batch(records).encode_to_vec()
    }

    /// Spools `records` as one batch carrying `mark`. When it does not fit under
    /// `max_bytes`, spools one SKIPDATA record per interface of the batch instead (each
    /// completed by `fill`, which sets the region and metadata fields) and counts the
    /// records as dropped.
    pub fn append(
        &mut self,
        records: &[FlowRecord],
        mark: Option<Mark>,
        fill: &dyn Fn(&mut FlowRecord),
    ) -> Result<Appended, SpoolError> {
        let payload = Spool::encode(records);
        if self.has_room(payload.len()) {
            let seq = self.append_encoded(&payload, records.len(), mark)?;
            return Ok(Appended::Spooled { seq });
        }
        let skip = skipdata_for(records, fill);
        let payload = Spool::encode(&skip);
        let seq = self.append_encoded(&payload, skip.len(), mark)?;
        let dropped = records.len() as u64;
        self.dropped_records += dropped;
        Ok(Appended::Replaced { seq, dropped })
    }

    /// Appends an encoded batch (whether or not it fits: callers check
    /// [`Spool::has_room`]); returns its seq. It is on disk, and fsync'd under the
    /// `always` policy, when this returns.
    pub fn append_encoded(
        &mut self,
        payload: &[u8],
        records: usize,
        mark: Option<Mark>,
    ) -> Result<u64, SpoolError> {
        let seq = self.meta.next_seq;
        let frame_len = (FRAME_HEADER + payload.len()) as u64;
        let rotate = match self.active.and_then(|a| self.segments.get(&a)) {
            Some(s) => s.bytes + frame_len > self.settings.segment_bytes,
            None => true,
        };
        if rotate {
            self.start_segment(seq)?;
        }
        let Some(name) = self.active else {
            return Err(SpoolError::UnknownBatch(seq));
        };
        let Some(segment) = self.segments.get_mut(&name) else {
            return Err(SpoolError::UnknownBatch(seq));
        };
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let (input, handled) = mark.map_or((0, 0), |m| (m.input, m.records));
        let mut frame = Vec::with_capacity(FRAME_HEADER + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(&seq.to_le_bytes());
        frame.extend_from_slice(&input.to_le_bytes());
        frame.extend_from_slice(&handled.to_le_bytes());
        frame.extend_from_slice(payload);
        let crc = crc32c::crc32c_append(segment.seed, &frame[8..]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let offset = segment.bytes;
        if let Err(e) = segment.file.write_all_at(&frame, offset) {
            // Leave no partial frame behind.
            let _ = segment.file.set_len(offset);
            return Err(io_err(&segment.path, "write")(e));
        }
        segment.bytes += frame_len;
        segment.unacked += 1;
        let path = segment.path.clone();
        self.bytes += frame_len;
        let records = u32::try_from(records).unwrap_or(u32::MAX);
        self.records += u64::from(records);
        self.batches.insert(
            seq,
            BatchLoc {
                segment: name,
                offset: offset + FRAME_HEADER as u64,
                len,
                records,
            },
        );
        self.meta.next_seq = seq + 1;
        if let Some(m) = mark {
            self.meta.mark = Some((seq, m));
        }
        self.unsynced = true;
        match self.settings.fsync {
            FsyncPolicy::Always => self.sync().map_err(io_err(&path, "fsync"))?,
            FsyncPolicy::Interval(_) => self.sync_if_due().map_err(io_err(&path, "fsync"))?,
            FsyncPolicy::Never => {}
        }
        Ok(seq)
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        // The previous active segment is complete: it is deleted once fully acknowledged.
        if let Some(prev) = self.active.take()
            && self.segments.get(&prev).is_some_and(|s| s.unacked == 0)
        {
            self.delete_segment(prev)?;
        }
        let path = self.settings.dir.join(segment_name(first_seq));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path, "create"))?;
        let mut salt = [0u8; SALT_LEN];
        getrandom::fill(&mut salt)
            .map_err(|e| io_err(&path, "draw a random salt")(io::Error::from(e)))?;
        let mut header = SEGMENT_MAGIC.to_vec();
        header.extend_from_slice(&salt);
        file.write_all_at(&header, 0)
            .map_err(io_err(&path, "write"))?;
        if self.settings.fsync == FsyncPolicy::Always {
            file.sync_all().map_err(io_err(&path, "fsync"))?;
            sync_dir(&self.settings.dir)?;
        }
        let bytes = SEGMENT_HEADER as u64;
        self.bytes += bytes;
        self.segments.insert(
            first_seq,
            Segment {
                path,
                file,
                bytes,
                unacked: 0,
                seed: crc32c::crc32c(&salt),
            },
        );
        self.active = Some(first_seq);
        Ok(())
    }

    /// Fsyncs what was written since the last fsync.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            if let Some(s) = self.active.and_then(|a| self.segments.get(&a)) {
                s.file.sync_data()?;
            }
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Under `fsync = "interval:D"`: fsyncs when the last fsync is older than D.
    pub fn sync_if_due(&mut self) -> io::Result<()> {
        if let FsyncPolicy::Interval(d) = self.settings.fsync
            && self.unsynced
            && self.last_sync.elapsed() >= d
        {
            return self.sync();
        }
        Ok(())
    }

    /// Reads the payload of batch `seq`.
    pub fn read(&self, seq: u64) -> Result<Vec<u8>, SpoolError> {
        let loc = self
            .batches
            .get(&seq)
            .ok_or(SpoolError::UnknownBatch(seq))?;
        let segment = self
            .segments
            .get(&loc.segment)
            .ok_or(SpoolError::UnknownBatch(seq))?;
        let mut buf = vec![0u8; loc.len as usize];
        segment
            .file
            .read_exact_at(&mut buf, loc.offset)
            .map_err(io_err(&segment.path, "read"))?;
        Ok(buf)
    }

    /// Reads batch `seq` as a [`pb::RecordBatch`].
    pub fn read_batch(&self, seq: u64) -> Result<pb::RecordBatch, SpoolError> {
        let bytes = self.read(seq)?;
        pb::RecordBatch::decode(bytes.as_slice()).map_err(|e| {
            let path = self
                .batches
                .get(&seq)
                .and_then(|l| self.segments.get(&l.segment))
                .map(|s| s.path.clone())
                .unwrap_or_default();
            SpoolError::Corrupt {
                path,
                problem: format!("batch {seq} does not decode: {e}"),
            }
        })
    }

    /// Marks batch `seq` acknowledged; deletes its segment when that was the segment's
    /// last unacknowledged batch (persisting the meta first). Returns the records of the
    /// batch.
    pub fn ack(&mut self, seq: u64) -> Result<u32, SpoolError> {
        let loc = self
            .batches
            .remove(&seq)
            .ok_or(SpoolError::UnknownBatch(seq))?;
        self.records -= u64::from(loc.records);
        let done = match self.segments.get_mut(&loc.segment) {
            Some(s) => {
                s.unacked -= 1;
                s.unacked == 0
            }
            None => false,
        };
        if done {
            if self.active == Some(loc.segment) {
                self.active = None;
            }
            self.delete_segment(loc.segment)?;
        }
        Ok(loc.records)
    }

    fn delete_segment(&mut self, name: u64) -> Result<(), SpoolError> {
        self.meta.acked_below = self.lowest_unacked();
        if self.meta != self.persisted {
            self.persist()?;
        }
        // A pin is kept until its batch can no longer come back after a restart: an acked
        // batch above the persisted floor is sent again, to the same endpoint.
        let floor = self.persisted.acked_below;
        self.pins.retain(|seq, _| *seq >= floor);
        if self.pin_lines > 2 * self.pins.len() + 256 {
            self.rewrite_pins()?;
        }
        if let Some(s) = self.segments.remove(&name) {
            self.bytes -= s.bytes;
            std::fs::remove_file(&s.path).map_err(io_err(&s.path, "delete"))?;
            sync_dir(&self.settings.dir)?;
        }
        Ok(())
    }

    /// Reads the pins file, keeping the pins of batches still in the spool, and rewrites it
    /// compacted.
    fn load_pins(&mut self) -> Result<(), SpoolError> {
        let path = self.settings.dir.join(PINS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io_err(&path, "read")(e)),
        };
        for line in text.lines() {
            let Some((seq, endpoint)) = line.split_once(' ') else {
                continue;
            };
            let Ok(seq) = seq.parse::<u64>() else {
                continue;
            };
            if endpoint == "-" {
                self.pins.remove(&seq);
            } else if self.batches.contains_key(&seq) {
                self.pins.insert(seq, endpoint.to_owned());
            }
        }
        self.pins.retain(|seq, _| self.batches.contains_key(seq));
        self.rewrite_pins()
    }

    /// Rewrites the pins file from memory (temporary file, fsync, rename).
    fn rewrite_pins(&mut self) -> Result<(), SpoolError> {
        let mut text = String::new();
        for (seq, endpoint) in &self.pins {
            text.push_str(&format!("{seq} {endpoint}\n"));
        }
        write_atomically(&self.settings.dir, PINS_TMP, PINS_FILE, text.as_bytes())?;
        self.pin_lines = self.pins.len();
        Ok(())
    }

    fn append_pin_line(&mut self, line: &str, sync: bool) -> Result<(), SpoolError> {
        let path = self.settings.dir.join(PINS_FILE);
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path, "open"))?;
        f.write_all(line.as_bytes())
            .map_err(io_err(&path, "write"))?;
        if sync && self.settings.fsync == FsyncPolicy::Always {
            f.sync_data().map_err(io_err(&path, "fsync"))?;
        }
        self.pin_lines += 1;
        Ok(())
    }

    /// Pins batch `seq` to `endpoint` durably, before it is first sent there: after a crash
    /// it is sent again to that endpoint only, which acks it as a duplicate if it already
    /// has it. Another aggregator, not knowing it, would write it a second time.
    pub fn pin(&mut self, seq: u64, endpoint: &str) -> Result<(), SpoolError> {
        if self.pins.get(&seq).is_some_and(|e| e == endpoint) {
            return Ok(());
        }
        self.append_pin_line(&format!("{seq} {endpoint}\n"), true)?;
        self.pins.insert(seq, endpoint.to_owned());
        Ok(())
    }

    /// Releases the pin of `seq`: the endpoint said for certain that it did not write it.
    /// (Acknowledged batches keep theirs until the persisted floor passes them.)
    /// (Not fsync'd: if the release is lost in a crash the batch just stays pinned.)
    pub fn unpin(&mut self, seq: u64) -> Result<(), SpoolError> {
        if self.pins.remove(&seq).is_some() {
            self.append_pin_line(&format!("{seq} -\n"), false)?;
        }
        Ok(())
    }

    /// The endpoint batch `seq` is pinned to.
    pub fn pinned_to(&self, seq: u64) -> Option<&str> {
        self.pins.get(&seq).map(String::as_str)
    }

    /// Persists the acknowledged floor (`acked_below`) when it moved; returns true if the
    /// meta was written.
    pub fn persist_floor(&mut self) -> Result<bool, SpoolError> {
        let floor = self.lowest_unacked();
        if floor > self.persisted.acked_below {
            self.meta.acked_below = floor;
            self.persist()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Records that replay input `input` is complete: every record of it is spooled.
    pub fn finish_input(&mut self, input: u64, records: u64) -> Result<(), SpoolError> {
        let seq = self.meta.next_seq - 1;
        self.meta.mark = Some((
            seq,
            Mark {
                input,
                records,
                finished: true,
            },
        ));
        if !self.meta.finished.contains(&input) {
            self.meta.finished.push(input);
            let excess = self.meta.finished.len().saturating_sub(MAX_FINISHED_INPUTS);
            self.meta.finished.drain(..excess);
        }
        self.sync().map_err(io_err(&self.settings.dir, "fsync"))?;
        self.persist()
    }

    /// Writes the meta file (atomic rename).
    fn persist(&mut self) -> Result<(), SpoolError> {
        // Frames a mark in the meta refers to must be durable first.
        if self.unsynced {
            self.sync().map_err(io_err(&self.settings.dir, "fsync"))?;
        }
        write_meta(&self.settings.dir, &self.meta)?;
        self.persisted = self.meta.clone();
        Ok(())
    }

    /// Fsyncs and persists the meta (at shutdown).
    pub fn close(&mut self) -> Result<(), SpoolError> {
        self.sync().map_err(io_err(&self.settings.dir, "fsync"))?;
        self.meta.acked_below = self.lowest_unacked();
        if self.meta != self.persisted {
            self.persist()?;
        }
        Ok(())
    }

    /// Unacknowledged batches per segment file (for tests and diagnostics).
    pub fn segment_files(&self) -> Vec<PathBuf> {
        self.segments.values().map(|s| s.path.clone()).collect()
    }

    /// Seqs of the unacknowledged batches whose records would be sent, as a set.
    pub fn unacked(&self) -> BTreeSet<u64> {
        self.batches.keys().copied().collect()
    }
}

/// One SKIPDATA record per interface of `records`, covering the interface's time span,
/// each completed by `fill`.
pub fn skipdata_for(records: &[FlowRecord], fill: &dyn Fn(&mut FlowRecord)) -> Vec<FlowRecord> {
    let mut spans: Vec<(Option<Text>, Option<Text>, u64, u64)> = Vec::new();
    for r in records {
        let start = r.start.or(r.end).unwrap_or(0);
        let end = r.end.or(r.start).unwrap_or(start);
        match spans
            .iter_mut()
            .find(|(_, iface, _, _)| *iface == r.interface_id)
        {
            Some(span) => {
                span.2 = span.2.min(start);
                span.3 = span.3.max(end);
            }
            None => spans.push((r.account_id.clone(), r.interface_id.clone(), start, end)),
        }
    }
    spans
        .into_iter()
        .map(|(account, iface, start, end)| {
            let mut r = FlowRecord::skip_data(account, iface, start, end);
            fill(&mut r);
            r
        })
        .collect()
}

/// Time until a fsync is due under `policy`, for the shipper's housekeeping.
pub fn housekeeping_every(policy: FsyncPolicy) -> Duration {
    match policy {
        FsyncPolicy::Interval(d) => d.min(Duration::from_secs(1)),
        _ => Duration::from_secs(1),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use flowlog_formats::LogStatus;

    fn settings(dir: &Path, max_bytes: u64, segment_bytes: u64) -> SpoolSettings {
        SpoolSettings {
            dir: dir.join("spool"),
            max_bytes,
            segment_bytes,
            fsync: FsyncPolicy::Always,
        }
    }

    fn records(iface: &str, n: u64, start: u64) -> Vec<FlowRecord> {
        (0..n)
            .map(|i| {
                let mut r = FlowRecord::no_data(
                    Some("123456789012".into()),
                    Some(iface.into()),
                    start + i,
                    start + i + 1,
                );
                r.log_status = Some(LogStatus::Ok);
                r.packets = Some(i);
                r
            })
            .collect()
    }

    fn no_fill(_: &mut FlowRecord) {}

    #[test]
    fn append_read_ack_and_segments_are_deleted_when_fully_acked() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 4096);
        let mut spool = Spool::open(&s).unwrap();
        assert!(spool.open_report().created);
        let mode = std::fs::metadata(&s.dir).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        let mut seqs = Vec::new();
        for i in 0..10 {
            let batch = records("eni-a", 100, i * 100);
            match spool.append(&batch, None, &no_fill).unwrap() {
                Appended::Spooled { seq } => seqs.push(seq),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(spool.batches(), 10);
        assert_eq!(spool.records(), 1000);
        let files = spool.segment_files();
        assert!(files.len() > 1, "small segments rotate: {files:?}");
        let back = flowlog_transport::decode_batch(&spool.read_batch(3).unwrap()).unwrap();
        assert_eq!(back, records("eni-a", 100, 200));
        // Acking everything but the last batch deletes every segment but the last.
        for seq in 1..10 {
            spool.ack(seq).unwrap();
        }
        let left = spool.segment_files();
        assert_eq!(left.len(), 1);
        for f in &files {
            assert_eq!(f.exists(), left.contains(f), "{f:?}");
        }
        assert_eq!(spool.lowest_unacked(), 10);
        spool.ack(10).unwrap();
        assert!(spool.segment_files().is_empty());
        assert_eq!(spool.bytes(), 0);
        assert!(matches!(spool.ack(10), Err(SpoolError::UnknownBatch(10))));
    }

    #[test]
    fn restart_keeps_spool_id_resends_unacked_and_never_reuses_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        let (id, acked_floor);
        {
            let mut spool = Spool::open(&s).unwrap();
            id = spool.spool_id();
            assert_ne!(id, 0);
            for i in 0..5 {
                spool
                    .append(&records("eni-a", 3, i), None, &no_fill)
                    .unwrap();
            }
            spool.ack(1).unwrap();
            spool.ack(2).unwrap();
            spool.ack(4).unwrap();
            spool.persist_floor().unwrap();
            acked_floor = spool.acked_below();
            assert_eq!(acked_floor, 3);
            // Dropped without close(): like kill -9.
        }
        {
            let mut spool = Spool::open(&s).unwrap();
            assert_eq!(spool.spool_id(), id);
            // 1 and 2 are below the persisted floor: never sent again. 4 was acked above
            // the floor: sent again (the aggregator acks it as a duplicate).
            assert_eq!(spool.unacked().into_iter().collect::<Vec<_>>(), [3, 4, 5]);
            assert_eq!(spool.next_seq(), 6);
            for seq in [3, 4, 5] {
                spool.ack(seq).unwrap();
            }
            assert!(spool.segment_files().is_empty(), "every segment deleted");
        }
        {
            let mut spool = Spool::open(&s).unwrap();
            assert_eq!(spool.spool_id(), id);
            assert_eq!(spool.batches(), 0);
            assert_eq!(
                spool.next_seq(),
                6,
                "the next seq survives without segments"
            );
            let Appended::Spooled { seq } = spool
                .append(&records("eni-a", 1, 0), None, &no_fill)
                .unwrap()
            else {
                panic!()
            };
            assert_eq!(seq, 6);
        }
        // Another spool directory gets another id.
        let other = Spool::open(&settings(&dir.path().join("x"), 1 << 20, 1 << 20)).unwrap();
        assert_ne!(other.spool_id(), id);
    }

    #[test]
    fn pins_survive_a_restart_until_the_batch_is_acked_or_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        {
            let mut spool = Spool::open(&s).unwrap();
            for i in 0..4 {
                spool
                    .append(&records("eni-a", 3, i), None, &no_fill)
                    .unwrap();
            }
            spool.pin(1, "https://a:7443").unwrap();
            spool.pin(2, "https://a:7443").unwrap();
            spool.pin(3, "https://b:7443").unwrap();
            spool.pin(4, "https://b:7443").unwrap();
            spool.ack(1).unwrap();
            spool.unpin(4).unwrap();
        }
        let mut spool = Spool::open(&s).unwrap();
        // Batch 1 was acked, but the floor was not persisted: it is sent again after the
        // restart, so it keeps its pin.
        assert_eq!(spool.seqs().next(), Some(1));
        assert_eq!(spool.pinned_to(1), Some("https://a:7443"));
        assert_eq!(spool.pinned_to(2), Some("https://a:7443"));
        assert_eq!(spool.pinned_to(3), Some("https://b:7443"));
        assert_eq!(spool.pinned_to(4), None, "released");
        // The file is compacted at open: one line per live pin.
        let text = std::fs::read_to_string(s.dir.join(PINS_FILE)).unwrap();
        assert_eq!(
            text,
            "1 https://a:7443\n2 https://a:7443\n3 https://b:7443\n"
        );
        // Every batch acked: the segment goes, the floor passes them, and so do the pins.
        for seq in 1..=4 {
            spool.ack(seq).unwrap();
        }
        drop(spool);
        let spool = Spool::open(&s).unwrap();
        assert_eq!(spool.seqs().next(), None);
        assert_eq!(spool.pinned_to(3), None);
    }

    #[test]
    fn a_second_agent_cannot_open_the_same_spool() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        let _first = Spool::open(&s).unwrap();
        let err = Spool::open(&s).unwrap_err();
        assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains("in use by another flowlog-agent"),
            "{err}"
        );
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        let segment;
        {
            let mut spool = Spool::open(&s).unwrap();
            for i in 0..3 {
                spool
                    .append(&records("eni-a", 5, i), None, &no_fill)
                    .unwrap();
            }
            segment = spool.segment_files()[0].clone();
        }
        let good_len = std::fs::metadata(&segment).unwrap().len();
        // A fourth frame written halfway, then garbage.
        let mut frame = vec![0u8; FRAME_HEADER];
        frame[..4].copy_from_slice(&1000u32.to_le_bytes());
        frame.extend_from_slice(&[7u8; 100]);
        let mut f = OpenOptions::new().append(true).open(&segment).unwrap();
        f.write_all(&frame).unwrap();
        drop(f);
        let spool = Spool::open(&s).unwrap();
        assert_eq!(spool.open_report().cut_bytes, frame.len() as u64);
        assert_eq!(spool.batches(), 3);
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), good_len);
        assert_eq!(spool.next_seq(), 4);
        drop(spool);
        // A frame whose bytes were damaged: cut from there (its crc does not match).
        let mut bytes = std::fs::read(&segment).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        std::fs::write(&segment, &bytes).unwrap();
        let spool = Spool::open(&s).unwrap();
        assert_eq!(spool.batches(), 2);
        assert!(spool.open_report().cut_bytes > 0);
        // The cut batch's seq is not reused: the meta kept next_seq = 4.
        assert_eq!(spool.next_seq(), 4);
    }

    /// Collects tracing output while `f` runs.
    fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
        use std::sync::{Arc, Mutex};
        #[derive(Clone)]
        struct Capture(Arc<Mutex<Vec<u8>>>);
        impl Write for Capture {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Capture(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let logs = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        (out, logs)
    }

    /// Start of the frame of batch `seq` in its segment.
    fn frame_start(spool: &Spool, seq: u64) -> usize {
        spool.batches[&seq].offset as usize - FRAME_HEADER
    }

    fn with_iface(mut records: Vec<FlowRecord>, iface: &str) -> Vec<FlowRecord> {
        for r in &mut records {
            r.interface_id = Some(iface.into());
            r.region = Some("eu-west-3".into());
            r.vpc_id = Some("vpc-1".into());
        }
        records
    }

    #[test]
    fn a_damaged_frame_is_skipped_the_rest_kept_and_its_batch_reported_as_skipdata() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        let (segment, damaged_at, damaged_len);
        {
            let mut spool = Spool::open(&s).unwrap();
            let batches = [
                with_iface(records("eni-a", 5, 1000), "eni-a"),
                with_iface(records("eni-a", 5, 2000), "eni-a"),
                with_iface(records("eni-b", 5, 3000), "eni-b"),
                with_iface(records("eni-c", 5, 4000), "eni-c"),
                with_iface(records("eni-a", 5, 5000), "eni-a"),
            ];
            for b in &batches {
                spool.append(b, None, &no_fill).unwrap();
            }
            segment = spool.segment_files()[0].clone();
            damaged_at = frame_start(&spool, 3);
            damaged_len = frame_start(&spool, 4) - damaged_at;
        }
        let mut bytes = std::fs::read(&segment).unwrap();
        assert_eq!(&bytes[..8], SEGMENT_MAGIC);
        bytes[damaged_at + FRAME_HEADER + 7] ^= 0x5a;
        std::fs::write(&segment, &bytes).unwrap();

        let (spool, logs) = capture_logs(|| Spool::open(&s));
        let spool = spool.unwrap();
        assert!(logs.contains("ERROR"), "{logs}");
        assert!(logs.contains(&segment.display().to_string()), "{logs}");
        assert!(logs.contains(&format!("offset={damaged_at}")), "{logs}");
        assert!(
            logs.contains(&format!("bytes_skipped={damaged_len}")),
            "{logs}"
        );
        assert!(logs.contains("SKIPDATA"), "{logs}");
        let report = spool.open_report().clone();
        assert_eq!(report.cut_bytes, 0);
        assert_eq!(report.losses.len(), 1, "{report:?}");
        let loss = &report.losses[0];
        assert_eq!(loss.segment, segment);
        assert_eq!(loss.offset, damaged_at as u64);
        assert_eq!(loss.bytes, damaged_len as u64);
        assert_eq!(loss.seqs, Some(3..4));
        // The batches after the damaged one are kept, and a SKIPDATA batch is added.
        let skip_seq = loss.skipdata_seq.unwrap();
        assert_eq!(skip_seq, 6);
        assert_eq!(spool.seqs().collect::<Vec<_>>(), vec![1, 2, 4, 5, 6]);
        let back = flowlog_transport::decode_batch(&spool.read_batch(4).unwrap()).unwrap();
        assert_eq!(back, with_iface(records("eni-c", 5, 4000), "eni-c"));
        let skip = flowlog_transport::decode_batch(&spool.read_batch(skip_seq).unwrap()).unwrap();
        // One record per interface of the batches on either side, over their span.
        let ifaces: Vec<_> = skip.iter().map(|r| r.interface_id.clone()).collect();
        assert_eq!(ifaces, vec![Some("eni-a".into()), Some("eni-c".into())]);
        for r in &skip {
            assert_eq!(r.log_status, Some(LogStatus::SkipData));
            assert_eq!((r.start, r.end), (Some(2000), Some(4005)));
            assert_eq!(r.region.as_deref(), Some("eu-west-3"));
            assert_eq!(r.vpc_id.as_deref(), Some("vpc-1"));
            assert_eq!(r.account_id.as_deref(), Some("123456789012"));
        }
        assert_eq!(loss.skipdata_records, 2);
        drop(spool);

        // Reported once: the damaged bytes stay, the next open does not report them again.
        let spool = Spool::open(&s).unwrap();
        assert!(spool.open_report().losses.is_empty());
        assert_eq!(spool.seqs().collect::<Vec<_>>(), vec![1, 2, 4, 5, 6]);
        assert_eq!(spool.next_seq(), 7);
    }

    #[test]
    fn a_damaged_tail_of_an_earlier_segment_is_a_loss_up_to_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 700);
        let files;
        {
            let mut spool = Spool::open(&s).unwrap();
            for i in 0..6 {
                spool
                    .append(&records("eni-a", 5, 1000 * (i + 1)), None, &no_fill)
                    .unwrap();
            }
            files = spool.segment_files();
        }
        assert!(files.len() >= 2, "{files:?}");
        // The first segment's last frame loses its end.
        let mut bytes = std::fs::read(&files[0]).unwrap();
        let len = bytes.len();
        bytes.truncate(len - 5);
        std::fs::write(&files[0], &bytes).unwrap();
        let next_first: u64 = files[1]
            .file_stem()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .unwrap();
        let spool = Spool::open(&s).unwrap();
        let report = spool.open_report();
        assert_eq!(report.losses.len(), 1, "{report:?}");
        assert_eq!(report.losses[0].seqs, Some(next_first - 1..next_first));
        assert_eq!(report.losses[0].skipdata_records, 1);
        assert!(!spool.seqs().any(|q| q == next_first - 1));
    }

    #[test]
    fn damaged_batches_that_were_acknowledged_are_skipped_without_skipdata() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        let (segment, damaged_at);
        {
            let mut spool = Spool::open(&s).unwrap();
            for i in 0..3 {
                spool
                    .append(&records("eni-a", 5, 1000 * (i + 1)), None, &no_fill)
                    .unwrap();
            }
            damaged_at = frame_start(&spool, 1);
            segment = spool.segment_files()[0].clone();
            spool.ack(1).unwrap();
            spool.persist_floor().unwrap();
        }
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[damaged_at + 3] ^= 0x01;
        std::fs::write(&segment, &bytes).unwrap();
        let spool = Spool::open(&s).unwrap();
        let report = spool.open_report();
        assert_eq!(report.losses.len(), 1, "{report:?}");
        assert_eq!(report.losses[0].skipdata_seq, None);
        assert_eq!(spool.seqs().collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn segments_of_the_earlier_format_are_read_and_new_batches_go_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        std::fs::create_dir_all(&s.dir).unwrap();
        let meta = Meta {
            spool_id: 77,
            next_seq: 1,
            acked_below: 1,
            mark: None,
            finished: Vec::new(),
            reported: Vec::new(),
        };
        write_meta(&s.dir, &meta).unwrap();
        // Earlier format: no salt, crc32c(seq, mark, payload).
        let mut file = SEGMENT_MAGIC_V1.to_vec();
        for seq in 1..=3u64 {
            let payload = Spool::encode(&records("eni-a", 4, seq * 100));
            let mut frame = Vec::new();
            frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
            frame.extend_from_slice(&[0; 4]);
            frame.extend_from_slice(&seq.to_le_bytes());
            frame.extend_from_slice(&[0; 16]);
            frame.extend_from_slice(&payload);
            let crc = crc32c::crc32c(&frame[8..]);
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            file.extend_from_slice(&frame);
        }
        std::fs::write(s.dir.join(segment_name(1)), &file).unwrap();
        let mut spool = Spool::open(&s).unwrap();
        assert_eq!(spool.spool_id(), 77);
        assert_eq!(spool.seqs().collect::<Vec<_>>(), vec![1, 2, 3]);
        let back = flowlog_transport::decode_batch(&spool.read_batch(2).unwrap()).unwrap();
        assert_eq!(back, records("eni-a", 4, 200));
        let seq = match spool
            .append(&records("eni-b", 2, 900), None, &no_fill)
            .unwrap()
        {
            Appended::Spooled { seq } => seq,
            other => panic!("{other:?}"),
        };
        assert_eq!(seq, 4);
        let newest = std::fs::read(s.dir.join(segment_name(4))).unwrap();
        assert_eq!(&newest[..8], SEGMENT_MAGIC);
        drop(spool);
        let spool = Spool::open(&s).unwrap();
        assert_eq!(spool.seqs().collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert!(spool.open_report().losses.is_empty());
    }

    #[test]
    fn a_frame_copied_from_another_segment_does_not_pass() {
        // Frames are keyed by their segment's salt: valid bytes of another segment, put
        // where a frame is expected, are damage, not a batch.
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 100);
        let files;
        {
            let mut spool = Spool::open(&s).unwrap();
            for i in 0..2 {
                spool
                    .append(&records("eni-a", 3, 100 * (i + 1)), None, &no_fill)
                    .unwrap();
            }
            files = spool.segment_files();
        }
        assert_eq!(files.len(), 2);
        let a = std::fs::read(&files[0]).unwrap();
        let b = std::fs::read(&files[1]).unwrap();
        let mut moved = a.clone();
        moved.extend_from_slice(&b[SEGMENT_HEADER..]);
        std::fs::remove_file(&files[1]).unwrap();
        std::fs::write(&files[0], &moved).unwrap();
        let spool = Spool::open(&s).unwrap();
        assert_eq!(spool.seqs().collect::<Vec<_>>(), vec![1]);
        assert_eq!(
            spool.open_report().cut_bytes,
            (b.len() - SEGMENT_HEADER) as u64
        );
    }

    #[test]
    fn a_full_spool_keeps_one_skipdata_record_per_interface_and_counts_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 8192, 1 << 20);
        let mut spool = Spool::open(&s).unwrap();
        let fill = |r: &mut FlowRecord| r.region = Some("eu-west-3".into());
        let mut spooled = 0;
        while let Appended::Spooled { .. } = spool
            .append(&records("eni-a", 40, 1000), None, &fill)
            .unwrap()
        {
            spooled += 1;
            assert!(spooled < 100, "the spool never filled");
        }
        assert!(spool.bytes() <= 8192 + 200);
        let seq_full = spool.next_seq() - 1;
        let skipped = spool.read_batch(seq_full).unwrap();
        let skipped = flowlog_transport::decode_batch(&skipped).unwrap();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].log_status, Some(LogStatus::SkipData));
        assert_eq!(skipped[0].start, Some(1000));
        assert_eq!(skipped[0].end, Some(1040));
        assert_eq!(skipped[0].region.as_deref(), Some("eu-west-3"));
        assert_eq!(spool.dropped_records(), 40);
        // Two interfaces in one batch: two SKIPDATA records.
        let mut mixed = records("eni-a", 30, 50);
        mixed.extend(records("eni-b", 30, 10));
        let Appended::Replaced { seq, dropped } = spool.append(&mixed, None, &fill).unwrap() else {
            panic!("the spool is full")
        };
        assert_eq!(dropped, 60);
        let back = flowlog_transport::decode_batch(&spool.read_batch(seq).unwrap()).unwrap();
        let spans: Vec<(Option<&str>, Option<u64>, Option<u64>)> = back
            .iter()
            .map(|r| (r.interface_id.as_deref(), r.start, r.end))
            .collect();
        assert_eq!(
            spans,
            [
                (Some("eni-a"), Some(50), Some(80)),
                (Some("eni-b"), Some(10), Some(40))
            ]
        );
        assert_eq!(spool.dropped_records(), 100);
        // Acks make room again.
        for seq in spool.unacked() {
            spool.ack(seq).unwrap();
        }
        assert!(matches!(
            spool.append(&records("eni-a", 40, 0), None, &fill).unwrap(),
            Appended::Spooled { .. }
        ));
    }

    #[test]
    fn replay_marks_survive_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 1 << 20);
        let mark = |records| Mark {
            input: 0xabc,
            records,
            finished: false,
        };
        {
            let mut spool = Spool::open(&s).unwrap();
            spool
                .append(&records("eni-a", 5, 0), Some(mark(5)), &no_fill)
                .unwrap();
            spool
                .append(&records("eni-a", 5, 0), Some(mark(10)), &no_fill)
                .unwrap();
            spool.ack(1).unwrap();
        }
        {
            let mut spool = Spool::open(&s).unwrap();
            assert_eq!(spool.mark(), Some(mark(10)));
            assert!(!spool.input_finished(0xabc));
            spool.ack(2).unwrap();
            // Every segment deleted: the mark lives on in the meta.
        }
        {
            let mut spool = Spool::open(&s).unwrap();
            assert_eq!(spool.mark(), Some(mark(10)));
            spool.finish_input(0xabc, 10).unwrap();
        }
        let spool = Spool::open(&s).unwrap();
        assert!(spool.input_finished(0xabc));
        assert!(!spool.input_finished(0xdef));
    }
}
