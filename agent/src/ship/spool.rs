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
//! A segment file starts with the 8-byte magic `FLSPOOL1`, then frames:
//!
//! ```text
//! u32 LE  payload length
//! u32 LE  crc32c of everything after this field (seq, mark, payload)
//! u64 LE  seq
//! u64 LE  replay mark: input tag (0 = none)
//! u64 LE  replay mark: records of the input handled up to and including this batch
//! ...     payload: the prost-encoded flowlog.ingest.v1.RecordBatch
//! ```
//!
//! - A batch is written (and fsync'd under `fsync = "always"`) before it is sent.
//! - A torn or corrupt tail (a crash in the middle of a write) is cut off at open.
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

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"FLSPOOL1";
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
    /// Bytes cut off torn or corrupt segment tails.
    pub cut_bytes: u64,
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
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync the directory"))
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

/// Reads the frames of a segment file; returns them and the length of its valid part.
fn scan_segment(path: &Path, file: &mut File) -> Result<(Vec<Frame>, u64, u64), SpoolError> {
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(io_err(path, "read"))?;
    let total = data.len() as u64;
    if data.len() < SEGMENT_MAGIC.len() {
        return Ok((Vec::new(), 0, total));
    }
    if &data[..SEGMENT_MAGIC.len()] != SEGMENT_MAGIC {
        return Err(SpoolError::Corrupt {
            path: path.to_owned(),
            problem: "not a flowlog spool segment (bad magic)".to_owned(),
        });
    }
    let mut frames = Vec::new();
    let mut at = SEGMENT_MAGIC.len();
    while let Some(header) = data.get(at..at + FRAME_HEADER) {
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let long = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let len = word(0);
        let crc = word(4);
        let end = at + FRAME_HEADER + len as usize;
        if len as usize > MAX_MESSAGE_BYTES || end > data.len() {
            break;
        }
        if crc32c::crc32c(&data[at + 8..end]) != crc {
            break;
        }
        let seq = long(8);
        let input = long(16);
        let Ok(batch) = pb::RecordBatch::decode(&data[at + FRAME_HEADER..end]) else {
            break;
        };
        frames.push(Frame {
            seq,
            mark: (input != 0).then_some(Mark {
                input,
                records: long(24),
                finished: false,
            }),
            offset: (at + FRAME_HEADER) as u64,
            len,
            records: u32::try_from(batch.records.len()).unwrap_or(u32::MAX),
        });
        at = end;
    }
    Ok((frames, at as u64, total))
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
        for name in seg_names {
            let path = dir.join(segment_name(name));
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err(&path, "open"))?;
            let (frames, valid, total) = scan_segment(&path, &mut file)?;
            if valid < total {
                let cut = total - valid;
                spool.open_report.cut_bytes += cut;
                tracing::warn!(
                    segment = %path.display(),
                    cut_bytes = cut,
                    kept_batches = frames.len(),
                    "spool: cut a torn or corrupt tail off a segment (a write interrupted by a crash)"
                );
                file.set_len(valid)
                    .and_then(|()| file.sync_all())
                    .map_err(io_err(&path, "truncate"))?;
            }
            if frames.is_empty() {
                to_delete.push(path);
                continue;
            }
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
                },
            );
        }
        spool.meta.next_seq = spool.meta.next_seq.max(max_seq + 1);
        if let Some((seq, m)) = frame_mark
            && spool.meta.mark.is_none_or(|(s, _)| seq > s)
        {
            spool.meta.mark = Some((seq, m));
        }
        spool.meta.acked_below = spool.lowest_unacked();
        if spool.meta != spool.persisted {
            spool.persist()?;
        }
        // Segments with nothing left to send go only once the meta (next seq, mark) that
        // they held is persisted.
        for path in to_delete {
            std::fs::remove_file(&path).map_err(io_err(&path, "delete"))?;
        }
        sync_dir(dir)?;
        spool.load_pins()?;
        spool.open_report.batches = spool.batches.len();
        spool.open_report.records = spool.records;
        Ok(spool)
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
                SEGMENT_MAGIC.len() as u64
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
        let crc = crc32c::crc32c(&frame[8..]);
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
        file.write_all_at(SEGMENT_MAGIC, 0)
            .map_err(io_err(&path, "write"))?;
        if self.settings.fsync == FsyncPolicy::Always {
            file.sync_all().map_err(io_err(&path, "fsync"))?;
            sync_dir(&self.settings.dir)?;
        }
        let bytes = SEGMENT_MAGIC.len() as u64;
        self.bytes += bytes;
        self.segments.insert(
            first_seq,
            Segment {
                path,
                file,
                bytes,
                unacked: 0,
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
