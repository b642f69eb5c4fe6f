//! Append-only write-ahead log (WAL) for flow record batches.
//!
//! The aggregator appends every received batch (opaque, caller-serialized
//! bytes) to the WAL and acknowledges it only after [`Wal::append`] returned
//! (which, under the default [`FsyncPolicy::Always`], means the entry is on
//! stable storage). After a crash the WAL is reopened with [`Wal::open`] and
//! replayed with [`Wal::replay`]; once every entry below some log sequence
//! number (LSN) has been durably published, [`Wal::reclaim`] deletes the
//! segment files that hold nothing else.
//!
//! # On-disk format
//!
//! A WAL is a directory of *segment* files named `wal-{first_lsn:020}.seg`
//! (the LSN of the segment's first entry, zero-padded to 20 digits so that
//! lexical and numeric order agree). All integers are little-endian.
//!
//! ```text
//! segment := header frame*
//! header  := magic "FLOGWAL2" (8 bytes) | first_lsn u64 | salt (16 bytes)  = 32 bytes
//! frame   := len u32 | crc u32 | lsn u64 | payload (len bytes)           = 16 + len bytes
//! crc     := crc32c(salt ‖ lsn bytes ‖ len bytes ‖ payload)
//! ```
//!
//! - The salt is 16 random bytes from the OS, drawn for each segment when it
//!   is created. Payloads are written verbatim and may come from a client, so
//!   a payload can hold bytes that look like frames; keying every checksum
//!   with a salt that never leaves the segment file means such bytes do not
//!   pass as frames when open searches a torn tail (see point 3 below).
//! - Version 1 segments (magic `FLOGWAL1`, a 16-byte header without salt,
//!   `crc := crc32c(lsn bytes ‖ len bytes ‖ payload)`) written by earlier
//!   releases are still validated and replayed. Appends never go to one: if
//!   the last segment is version 1, open starts a version 2 segment after it
//!   (or, when it holds no frame, replaces it by an empty version 2 segment).
//!
//! - LSNs start at 1 and are consecutive: the frames of a segment carry
//!   `first_lsn, first_lsn + 1, …`, and each segment starts where the previous
//!   one ended. The first *retained* segment may start anywhere (older ones
//!   were reclaimed).
//! - The last segment is the *active* one; appends go there. A segment is
//!   rotated before an append that would make it exceed
//!   [`WalSettings::segment_bytes`] (header included), unless it is still
//!   empty: an entry larger than the limit goes, alone, into its own segment.
//! - The directory is created with mode 0700 and segment files with 0600: they
//!   hold records and salts that only the service user may read.
//! - Files in the directory that do not match the name pattern are ignored
//!   (with a warning). `wal-{lsn:020}.seg.tmp` files are leftovers of an
//!   interrupted segment creation and are deleted on open.
//!
//! # Crash-safety argument
//!
//! 1. **Segments appear atomically.** A new segment is written as
//!    `….seg.tmp` (header only), fsync'd, renamed to its final name, and then
//!    the directory is fsync'd. A file with a segment name therefore always
//!    has a complete, durable header, and its name survives a crash before
//!    any entry is appended to it.
//! 2. **Only the tail of the last segment can be torn.** Each frame is
//!    written at the end of the active segment by one vectored write (header
//!    and payload parts, continued if the kernel takes less); a crash (even `kill -9` mid-write) can leave at most an
//!    incomplete or unsynced suffix of that file. Before rotating, the old
//!    active segment is fsync'd (whatever the policy), so no frame of a
//!    non-last segment is ever in flight when later data exists. If a write
//!    fails, the file is cut back to the last frame boundary (or the WAL
//!    refuses further appends).
//! 3. **Open distinguishes a torn tail from corruption.** Every frame of
//!    every segment is checked (length within the file, checksum, expected
//!    LSN). When a frame of the *last* segment is bad, the rest of the file
//!    is searched at every byte offset for a valid frame (checksum keyed by
//!    the segment's salt) with a plausible LSN. A torn frame's payload is
//!    part of that rest, and a look-alike frame inside it would need the
//!    unknown salt to pass. If none exists, the bad frame and everything after it is an
//!    interrupted append: it is truncated away (logged with `tracing::warn!`
//!    naming the file, offset and bytes dropped) and the truncation is
//!    fsync'd. If a valid frame follows, or the bad frame is in any other
//!    segment, or a frame has a valid checksum but the wrong LSN, or the
//!    segments' LSNs do not line up, open fails with [`WalError::Corrupt`]
//!    naming the file and byte offset: data in the middle of the log is never
//!    dropped silently.
//! 4. **Acknowledged entries survive.** Under [`FsyncPolicy::Always`] an
//!    entry is fdatasync'd before `append` returns, so an acknowledged entry
//!    is complete on disk and precedes any torn suffix; truncation only
//!    removes entries whose `append` never returned. Under
//!    [`FsyncPolicy::Interval`] and [`FsyncPolicy::Never`] a process crash
//!    loses nothing that was written (the data is in the OS page cache), but
//!    a power loss or kernel crash can lose the unsynced tail (up to the
//!    interval, or the OS writeback delay of a few seconds). Because the OS
//!    may then persist the unsynced pages out of order, such a power loss can
//!    also leave a hole followed by valid frames, which open reports as
//!    corruption instead of guessing.
//! 5. **LSNs are never reused.** The active segment is never reclaimed and
//!    its name holds its first LSN, so on open the next LSN is the last valid
//!    LSN + 1, or the active segment's first LSN when it is empty — even
//!    after every older segment was reclaimed. Segments are reclaimed oldest
//!    first with a directory fsync after each deletion, so a crash during
//!    [`Wal::reclaim`] leaves a contiguous run of segments.
//! 6. **fsync failures poison the WAL.** After a failed fsync the kernel may
//!    have dropped the dirty pages, so the WAL refuses further appends
//!    ([`WalError::Poisoned`]); reopening re-validates what is on disk. An
//!    entry whose `append` failed may still be replayed (at-least-once).
//!
//! The WAL assumes a single writer: two processes must not open the same
//! directory at the same time.

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::file_modes;

/// Magic bytes at the start of every segment file written (format version 2).
const SEGMENT_MAGIC: &[u8; 8] = b"FLOGWAL2";
/// Magic bytes of a format version 1 segment (no salt; read, never written).
const SEGMENT_MAGIC_V1: &[u8; 8] = b"FLOGWAL1";
/// Bytes of the random per-segment salt that keys the frame checksums.
const SALT_LEN: usize = 16;
/// Size of a version 1 segment header: magic plus the first LSN.
const SEGMENT_HEADER_LEN_V1: u64 = 16;
/// Size of the segment header: magic, first LSN and salt.
const SEGMENT_HEADER_LEN: u64 = SEGMENT_HEADER_LEN_V1 + SALT_LEN as u64;
/// Size of a frame header: length, checksum and LSN.
const FRAME_HEADER_LEN: u64 = 16;
/// Default [`WalSettings::segment_bytes`]: 64 MiB.
const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Buffer size of the readers used by open and replay.
const READ_BUFFER: usize = 256 * 1024;
/// Segment file name prefix and suffix.
const SEGMENT_PREFIX: &str = "wal-";
const SEGMENT_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".seg.tmp";

/// When the active segment is fdatasync'd (see [`WalSettings::fsync`]).
pub use flowlog_runtime::FsyncPolicy;

/// Configuration of a [`Wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSettings {
    /// Directory holding the segment files; created if missing.
    pub dir: PathBuf,
    /// Size at which the active segment is rotated (header included); an
    /// entry larger than this gets a segment of its own. Default 64 MiB.
    pub segment_bytes: u64,
    /// When appends are fdatasync'd. Default [`FsyncPolicy::Always`].
    ///
    /// - [`FsyncPolicy::Always`]: sync the segment before [`Wal::append`] returns: an
    ///   acknowledged entry survives a power loss.
    /// - [`FsyncPolicy::Interval`]: sync at an append when the last sync is older than
    ///   the interval, on [`Wal::sync`] and when the [`Wal`] is dropped. A power loss can
    ///   lose the entries of the last interval (a process crash loses nothing). An idle
    ///   WAL is not synced by a timer; call [`Wal::sync`] for that.
    /// - [`FsyncPolicy::Never`]: never sync except on [`Wal::sync`] and segment rotation;
    ///   the OS writes the data back on its own schedule. A power loss or kernel crash can
    ///   lose the last seconds of entries; a process crash loses nothing.
    pub fsync: FsyncPolicy,
}

impl WalSettings {
    /// Settings for a WAL in `dir` with 64 MiB segments and
    /// [`FsyncPolicy::Always`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// Errors of the write-ahead log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O operation on a WAL file or directory failed.
    #[error("failed to {op} {}{}", .path.display(), at_offset(*.offset))]
    Io {
        /// What was being done, e.g. `"read segment"`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// Byte offset in the file, when meaningful.
        offset: Option<u64>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A segment holds invalid data that is not a torn tail.
    #[error("corrupt wal segment {} at byte offset {offset}: {reason}", .path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad header or frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The payload does not fit the frame's 32-bit length field.
    #[error("wal entry of {len} bytes exceeds the maximum of {max} bytes")]
    EntryTooLarge {
        /// Payload length.
        len: usize,
        /// Largest accepted payload length.
        max: u64,
    },
    /// A write or fsync failed earlier; the WAL must be reopened.
    #[error(
        "wal in {} refuses writes after a failed write or fsync; reopen it to recover",
        .dir.display()
    )]
    Poisoned {
        /// The WAL directory.
        dir: PathBuf,
    },
}

/// Formats an optional offset for [`WalError::Io`].
fn at_offset(offset: Option<u64>) -> String {
    offset.map_or_else(String::new, |o| format!(" at byte offset {o}"))
}

/// Builds a `map_err` closure for an I/O error without an offset.
fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WalError {
    move |source| WalError::Io {
        op,
        path: path.to_owned(),
        offset: None,
        source,
    }
}

/// Builds a `map_err` closure for an I/O error at a byte offset.
fn io_err_at(op: &'static str, path: &Path, offset: u64) -> impl FnOnce(io::Error) -> WalError {
    move |source| WalError::Io {
        op,
        path: path.to_owned(),
        offset: Some(offset),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corrupt {
        path: path.to_owned(),
        offset,
        reason: reason.into(),
    }
}

/// A retained segment file.
#[derive(Debug)]
struct Segment {
    first_lsn: u64,
    path: PathBuf,
    bytes: u64,
    /// How its frame checksums are computed.
    key: FrameKey,
}

/// How the frame checksums of one segment are computed.
///
/// The check value stays CRC32C (hardware-accelerated, already the frame
/// checksum) with the segment's random salt prepended to what it covers,
/// rather than a keyed hash such as HMAC or SipHash. What it must resist is
/// a client that chooses payload bytes so that they contain something that
/// looks like a valid frame; it never sees the salt, which lives only in the
/// segment file (mode 0600). CRC32C over `salt ‖ data` is the CRC of `data`
/// XOR a 32-bit value that depends linearly on the salt and the length; with
/// a uniformly random 128-bit salt that value is uniformly distributed and
/// unknown, so a crafted look-alike frame passes with probability 2^-32 per
/// candidate offset, as for any 32-bit tag. A keyed hash would add value
/// only against someone who already reads the segment files (and with them
/// the salt), and it would cost a second pass over every payload. Salting
/// costs nothing per frame: the CRC state after the salt is computed once
/// per segment and each frame's CRC continues from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameKey {
    /// CRC32C state after the salt (0, the empty CRC, for version 1).
    seed: u32,
    /// Length of the segment header: where the first frame starts.
    header_len: u64,
}

impl FrameKey {
    /// Version 1 segments: unkeyed checksums after a 16-byte header.
    const UNKEYED_V1: FrameKey = FrameKey {
        seed: 0,
        header_len: SEGMENT_HEADER_LEN_V1,
    };

    fn salted(salt: &[u8; SALT_LEN]) -> Self {
        Self {
            seed: crc32c::crc32c(salt),
            header_len: SEGMENT_HEADER_LEN,
        }
    }

    fn is_v1(self) -> bool {
        self.header_len == SEGMENT_HEADER_LEN_V1
    }
}

/// An append-only write-ahead log; see the [module docs](self) for the format
/// and the crash-safety argument.
///
/// Single writer with a synchronous API: run it on a dedicated thread or in
/// `spawn_blocking`.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    fsync: FsyncPolicy,
    /// Retained older segments in LSN order.
    sealed: VecDeque<Segment>,
    /// The last segment, which appends go to.
    active: Segment,
    /// Write handle of the active segment, positioned at its end.
    file: File,
    next_lsn: u64,
    /// Whether the active segment has writes that were not synced.
    dirty: bool,
    last_sync: Instant,
    poisoned: bool,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segment_bytes", &self.segment_bytes)
            .field("fsync", &self.fsync)
            .field("first_lsn", &self.first_lsn())
            .field("next_lsn", &self.next_lsn)
            .field("segments", &self.segments())
            .field("disk_bytes", &self.disk_bytes())
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (creating if needed) the WAL in `settings.dir`.
    ///
    /// Scans the segments in LSN order and validates every frame. A torn or
    /// corrupt tail of the last segment (after which no valid frame follows)
    /// is truncated with a warning; any other damage is a
    /// [`WalError::Corrupt`] naming the file and byte offset.
    pub fn open(settings: WalSettings) -> Result<Wal, WalError> {
        let WalSettings {
            dir,
            segment_bytes,
            fsync,
        } = settings;
        create_dir(&dir)?;
        let found = list_segments(&dir)?;

        let mut sealed = VecDeque::with_capacity(found.len());
        let mut next_lsn = None::<u64>;
        let count = found.len();
        for (i, (first_lsn, path)) in found.into_iter().enumerate() {
            if let Some(expected) = next_lsn
                && first_lsn != expected
            {
                return Err(corrupt(
                    &path,
                    0,
                    format!(
                        "segment starts at lsn {first_lsn} but the previous segment ends before lsn {expected}"
                    ),
                ));
            }
            let scan = scan_segment(&path, first_lsn, i + 1 == count)?;
            next_lsn = Some(scan.next_lsn);
            sealed.push_back(Segment {
                first_lsn,
                path,
                bytes: scan.len,
                key: scan.key,
            });
        }

        let (active, file, next_lsn) = match (sealed.pop_back(), next_lsn) {
            (Some(old), Some(next_lsn)) if old.key.is_v1() => {
                // Appends only go to version 2 segments. The old segment was
                // validated (and a torn tail cut and synced) above.
                tracing::info!(
                    file = %old.path.display(),
                    next_lsn,
                    "wal segment has format version 1; appending to a new version 2 segment"
                );
                let (active, file) = create_segment(&dir, next_lsn)?;
                if next_lsn > old.first_lsn {
                    sealed.push_back(old);
                }
                // else: it held no frame and was atomically replaced by the
                // new segment of the same name.
                (active, file, next_lsn)
            }
            (Some(active), Some(next_lsn)) => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .open(&active.path)
                    .map_err(io_err("open segment", &active.path))?;
                file.seek(SeekFrom::Start(active.bytes)).map_err(io_err_at(
                    "seek in segment",
                    &active.path,
                    active.bytes,
                ))?;
                (active, file, next_lsn)
            }
            _ => {
                let (active, file) = create_segment(&dir, 1)?;
                (active, file, 1)
            }
        };
        let wal = Wal {
            dir,
            segment_bytes,
            fsync,
            sealed,
            active,
            file,
            next_lsn,
            dirty: false,
            last_sync: Instant::now(),
            poisoned: false,
        };
        tracing::debug!(
            dir = %wal.dir.display(),
            first_lsn = wal.first_lsn(),
            next_lsn = wal.next_lsn,
            segments = wal.segments(),
            disk_bytes = wal.disk_bytes(),
            "opened wal"
        );
        Ok(wal)
    }

    /// Appends one entry and returns its LSN.
    ///
    /// Rotates to a new segment first when the active one is non-empty and
    /// would exceed [`WalSettings::segment_bytes`]. Under
    /// [`FsyncPolicy::Always`] the entry is durable when this returns.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, WalError> {
        let lsn = self.append_unsynced(payload)?;
        self.commit()?;
        Ok(lsn)
    }

    /// Appends one entry without syncing it, whatever the policy, and returns
    /// its LSN: group commit appends several entries this way and then calls
    /// [`commit`](Self::commit) once. The entry is not durable (and must not
    /// be acknowledged) before that call returns.
    pub fn append_unsynced(&mut self, payload: &[u8]) -> Result<u64, WalError> {
        self.append_unsynced_parts(&[payload])
    }

    /// Like [`append_unsynced`](Self::append_unsynced) with the payload given
    /// as consecutive parts (written without joining them first).
    pub fn append_unsynced_parts(&mut self, parts: &[&[u8]]) -> Result<u64, WalError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(total).map_err(|_| WalError::EntryTooLarge {
            len: total,
            max: u64::from(u32::MAX),
        })?;
        let frame_len = FRAME_HEADER_LEN + u64::from(len);
        if self.next_lsn > self.active.first_lsn
            && self.active.bytes.saturating_add(frame_len) > self.segment_bytes
        {
            self.rotate()?;
        }

        let lsn = self.next_lsn;
        let len_bytes = len.to_le_bytes();
        let lsn_bytes = lsn.to_le_bytes();
        let crc = parts.iter().fold(
            crc32c::crc32c_append(
                crc32c::crc32c_append(self.active.key.seed, &lsn_bytes),
                &len_bytes,
            ),
            |crc, part| crc32c::crc32c_append(crc, part),
        );
        let mut header = [0u8; FRAME_HEADER_LEN as usize];
        header[..4].copy_from_slice(&len_bytes);
        header[4..8].copy_from_slice(&crc.to_le_bytes());
        header[8..].copy_from_slice(&lsn_bytes);

        let offset = self.active.bytes;
        if let Err(source) = write_all_parts(&mut self.file, &header, parts) {
            // Cut back to the last frame boundary so a retry does not append
            // after a partial frame; if even that fails, refuse further writes.
            let rollback = self
                .file
                .set_len(offset)
                .and_then(|()| self.file.seek(SeekFrom::Start(offset)));
            if let Err(e) = rollback {
                tracing::error!(
                    file = %self.active.path.display(),
                    offset,
                    error = %e,
                    "cannot cut wal segment back after a failed write; wal poisoned"
                );
                self.poisoned = true;
            }
            return Err(WalError::Io {
                op: "append to segment",
                path: self.active.path.clone(),
                offset: Some(offset),
                source,
            });
        }
        self.dirty = true;
        self.next_lsn += 1;
        self.active.bytes += frame_len;
        Ok(lsn)
    }

    /// Makes the entries appended so far durable as the [`FsyncPolicy`]
    /// says: one fdatasync under [`FsyncPolicy::Always`] (none when nothing
    /// is unsynced), one when the interval has passed under
    /// [`FsyncPolicy::Interval`], none under [`FsyncPolicy::Never`].
    pub fn commit(&mut self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        match self.fsync {
            FsyncPolicy::Always => self.sync_active(),
            FsyncPolicy::Interval(interval) if self.last_sync.elapsed() >= interval => {
                self.sync_active()
            }
            FsyncPolicy::Interval(_) | FsyncPolicy::Never => Ok(()),
        }
    }

    /// Fdatasyncs the active segment if it has unsynced writes, whatever the
    /// [`FsyncPolicy`].
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        self.sync_active()
    }

    /// The LSN the next [`append`](Self::append) will return.
    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    /// The lowest LSN still retained (equal to [`next_lsn`](Self::next_lsn)
    /// when the WAL holds no entries).
    pub fn first_lsn(&self) -> u64 {
        self.sealed
            .front()
            .map_or(self.active.first_lsn, |segment| segment.first_lsn)
    }

    /// Returns an iterator over every retained entry with `lsn >= from_lsn`
    /// in LSN order, across segments, as `(lsn, payload)`.
    ///
    /// The reader opens its own file handles and stops at the entries that
    /// existed when it was created. Entries appended meanwhile are not
    /// returned; segments reclaimed before the reader reaches them make it
    /// fail with an I/O error.
    pub fn replay(&self, from_lsn: u64) -> Result<WalReader, WalError> {
        let start = from_lsn.max(self.first_lsn());
        let mut segments: VecDeque<(PathBuf, u64)> = VecDeque::new();
        if start < self.next_lsn {
            let all = || self.sealed.iter().chain(std::iter::once(&self.active));
            // Segments are sorted: the last one starting at or before `start`
            // holds it.
            let first = all()
                .filter(|s| s.first_lsn <= start)
                .count()
                .saturating_sub(1);
            segments.extend(all().skip(first).map(|s| (s.path.clone(), s.first_lsn)));
        }
        Ok(WalReader {
            dir: self.dir.clone(),
            segments,
            current: None,
            cursor: start,
            from_lsn: start,
            end_lsn: self.next_lsn,
            started: false,
            failed: false,
        })
    }

    /// Deletes the oldest segments all of whose entries have
    /// `lsn < below_lsn`, never the active (last) segment, and returns the
    /// number of bytes freed. The directory is fsync'd after each deletion.
    pub fn reclaim(&mut self, below_lsn: u64) -> Result<u64, WalError> {
        let mut freed = 0;
        while let Some(oldest) = self.sealed.front() {
            // The entries of the oldest segment end just before the next
            // segment's first LSN.
            let end = self
                .sealed
                .get(1)
                .map_or(self.active.first_lsn, |next| next.first_lsn);
            if end > below_lsn {
                break;
            }
            match fs::remove_file(&oldest.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    tracing::warn!(file = %oldest.path.display(), "wal segment to reclaim was already gone");
                }
                Err(e) => return Err(io_err("delete segment", &oldest.path)(e)),
            }
            freed += oldest.bytes;
            tracing::debug!(file = %oldest.path.display(), bytes = oldest.bytes, "reclaimed wal segment");
            self.sealed.pop_front();
            // One fsync per deletion keeps the deletions ordered on disk, so a
            // crash cannot leave a gap in the segment sequence.
            sync_dir(&self.dir)?;
        }
        Ok(freed)
    }

    /// Whether [`reclaim`](Self::reclaim)`(below_lsn)` would delete at least
    /// one segment.
    pub fn reclaimable(&self, below_lsn: u64) -> bool {
        self.sealed.front().is_some_and(|_| {
            let end = self
                .sealed
                .get(1)
                .map_or(self.active.first_lsn, |next| next.first_lsn);
            end <= below_lsn
        })
    }

    /// Total size in bytes of the retained segment files.
    pub fn disk_bytes(&self) -> u64 {
        self.sealed.iter().map(|s| s.bytes).sum::<u64>() + self.active.bytes
    }

    /// Number of retained segment files (at least 1: the active one).
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    fn poisoned_error(&self) -> WalError {
        WalError::Poisoned {
            dir: self.dir.clone(),
        }
    }

    fn sync_active(&mut self) -> Result<(), WalError> {
        if !self.dirty {
            return Ok(());
        }
        if let Err(source) = self.file.sync_data() {
            // The kernel may have dropped the dirty pages: never retry.
            self.poisoned = true;
            return Err(WalError::Io {
                op: "fsync segment",
                path: self.active.path.clone(),
                offset: None,
                source,
            });
        }
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Seals the active segment (fsync) and starts a new one at `next_lsn`.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.sync_active()?;
        let (segment, file) = create_segment(&self.dir, self.next_lsn)?;
        tracing::debug!(file = %segment.path.display(), "rotated wal segment");
        let sealed = std::mem::replace(&mut self.active, segment);
        self.sealed.push_back(sealed);
        self.file = file;
        self.dirty = false;
        self.last_sync = Instant::now();
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if matches!(self.fsync, FsyncPolicy::Interval(_))
            && self.dirty
            && !self.poisoned
            && let Err(e) = self.file.sync_data()
        {
            tracing::warn!(
                file = %self.active.path.display(),
                error = %e,
                "failed to fsync wal segment on close"
            );
        }
    }
}

/// Writes a frame header and its payload parts with vectored writes, until
/// all of it is written.
fn write_all_parts(file: &mut File, header: &[u8], parts: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = std::iter::once(header)
        .chain(parts.iter().copied())
        .filter(|p| !p.is_empty())
        .map(io::IoSlice::new)
        .collect();
    let mut rest = slices.as_mut_slice();
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Iterator over WAL entries returned by [`Wal::replay`]; yields
/// `(lsn, payload)` in LSN order and stops after the first error.
#[derive(Debug)]
pub struct WalReader {
    /// The WAL directory.
    dir: PathBuf,
    /// Segments not yet opened: path and first LSN.
    segments: VecDeque<(PathBuf, u64)>,
    current: Option<OpenSegment>,
    /// LSN of the next frame to read.
    cursor: u64,
    from_lsn: u64,
    /// Exclusive upper bound: the WAL's next LSN when the reader was made.
    end_lsn: u64,
    /// Whether the first segment was opened.
    started: bool,
    failed: bool,
}

#[derive(Debug)]
struct OpenSegment {
    reader: BufReader<File>,
    path: PathBuf,
    offset: u64,
    key: FrameKey,
}

impl Iterator for WalReader {
    type Item = Result<(u64, Vec<u8>), WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.cursor >= self.end_lsn {
            return None;
        }
        match self.read_next() {
            Ok(entry) => Some(Ok(entry)),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl WalReader {
    fn read_next(&mut self) -> Result<(u64, Vec<u8>), WalError> {
        loop {
            let Some(segment) = self.current.as_mut() else {
                self.open_next_segment()?;
                continue;
            };
            let path = segment.path.as_path();
            let offset = segment.offset;
            let mut header = [0u8; FRAME_HEADER_LEN as usize];
            let n = read_full(&mut segment.reader, &mut header).map_err(io_err_at(
                "read segment",
                path,
                offset,
            ))?;
            if n == 0 {
                if self.segments.is_empty() {
                    return Err(corrupt(
                        path,
                        offset,
                        format!(
                            "the wal ends before lsn {} but entries up to lsn {} were expected",
                            self.cursor,
                            self.end_lsn - 1
                        ),
                    ));
                }
                self.current = None;
                continue;
            }
            if n < header.len() {
                return Err(corrupt(path, offset, "incomplete frame header"));
            }
            let frame = FrameHeader::parse(&header);
            if frame.lsn != self.cursor {
                return Err(corrupt(
                    path,
                    offset,
                    format!(
                        "frame has lsn {} but lsn {} was expected",
                        frame.lsn, self.cursor
                    ),
                ));
            }
            segment.offset += FRAME_HEADER_LEN + u64::from(frame.len);
            self.cursor += 1;
            if frame.lsn < self.from_lsn {
                segment
                    .reader
                    .seek_relative(i64::from(frame.len))
                    .map_err(io_err_at("seek in segment", path, offset))?;
                continue;
            }
            let mut payload = vec![0u8; frame.len as usize];
            segment.reader.read_exact(&mut payload).map_err(io_err_at(
                "read segment",
                path,
                offset,
            ))?;
            if frame.checksum(segment.key, &payload) != frame.crc {
                return Err(corrupt(path, offset, "frame checksum mismatch"));
            }
            return Ok((frame.lsn, payload));
        }
    }

    fn open_next_segment(&mut self) -> Result<(), WalError> {
        let Some((path, first_lsn)) = self.segments.pop_front() else {
            // Unreachable: `replay` lists a segment whenever entries remain.
            return Err(corrupt(
                &self.dir,
                0,
                format!("no wal segment holds lsn {}", self.cursor),
            ));
        };
        let file = File::open(&path).map_err(io_err("open segment", &path))?;
        let mut reader = BufReader::with_capacity(READ_BUFFER, file);
        let key = read_segment_header(&mut reader, &path, first_lsn)?;
        if !self.started && first_lsn <= self.cursor {
            // First segment of the replay: frames below `from_lsn` are skipped.
            self.cursor = first_lsn;
        } else if first_lsn != self.cursor {
            return Err(corrupt(
                &path,
                0,
                format!(
                    "segment starts at lsn {first_lsn} but lsn {} was expected",
                    self.cursor
                ),
            ));
        }
        self.started = true;
        self.current = Some(OpenSegment {
            reader,
            path,
            offset: key.header_len,
            key,
        });
        Ok(())
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    len: u32,
    crc: u32,
    lsn: u64,
}

impl FrameHeader {
    fn parse(b: &[u8; FRAME_HEADER_LEN as usize]) -> Self {
        Self {
            len: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            crc: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            lsn: u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    /// The frame's expected check value in a segment with `key`.
    fn checksum(&self, key: FrameKey, payload: &[u8]) -> u32 {
        let crc = crc32c::crc32c_append(key.seed, &self.lsn.to_le_bytes());
        let crc = crc32c::crc32c_append(crc, &self.len.to_le_bytes());
        crc32c::crc32c_append(crc, payload)
    }
}

/// Reads until `buf` is full or EOF; returns the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads and checks the header of a version 1 or 2 segment, leaving
/// `reader` at the first frame; returns how its frames are checked.
fn read_segment_header(
    reader: &mut impl Read,
    path: &Path,
    first_lsn: u64,
) -> Result<FrameKey, WalError> {
    let mut header = [0u8; SEGMENT_HEADER_LEN_V1 as usize];
    let n = read_full(reader, &mut header).map_err(io_err_at("read segment", path, 0))?;
    if n < header.len() {
        return Err(corrupt(path, 0, "incomplete segment header"));
    }
    let (magic, lsn) = header.split_at(8);
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(lsn);
    let lsn = u64::from_le_bytes(lsn_bytes);
    let key = if magic == SEGMENT_MAGIC {
        let mut salt = [0u8; SALT_LEN];
        let n = read_full(reader, &mut salt).map_err(io_err_at(
            "read segment",
            path,
            SEGMENT_HEADER_LEN_V1,
        ))?;
        if n < salt.len() {
            return Err(corrupt(path, 0, "incomplete segment header"));
        }
        FrameKey::salted(&salt)
    } else if magic == SEGMENT_MAGIC_V1 {
        FrameKey::UNKEYED_V1
    } else {
        return Err(corrupt(path, 0, "not a wal segment (bad magic)"));
    };
    if lsn != first_lsn {
        return Err(corrupt(
            path,
            8,
            format!("segment header says first lsn {lsn} but the file name says {first_lsn}"),
        ));
    }
    Ok(key)
}

/// Result of validating one segment on open.
#[derive(Debug)]
struct SegmentScan {
    /// Valid length of the file (after truncating a torn tail).
    len: u64,
    /// LSN following the segment's last valid entry.
    next_lsn: u64,
    /// How its frames are checked.
    key: FrameKey,
}

/// Validates every frame of a segment; truncates a torn tail when `is_last`.
fn scan_segment(path: &Path, first_lsn: u64, is_last: bool) -> Result<SegmentScan, WalError> {
    let file = File::open(path).map_err(io_err("open segment", path))?;
    let file_len = file.metadata().map_err(io_err("stat segment", path))?.len();
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let key = read_segment_header(&mut reader, path, first_lsn)?;

    let mut offset = key.header_len;
    let mut lsn = first_lsn;
    let mut payload = Vec::new();
    let bad = loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            return Ok(SegmentScan {
                len: offset,
                next_lsn: lsn,
                key,
            });
        }
        if remaining < FRAME_HEADER_LEN {
            break format!("incomplete frame header ({remaining} bytes)");
        }
        let mut raw = [0u8; FRAME_HEADER_LEN as usize];
        reader
            .read_exact(&mut raw)
            .map_err(io_err_at("read segment", path, offset))?;
        let frame = FrameHeader::parse(&raw);
        let available = remaining - FRAME_HEADER_LEN;
        if u64::from(frame.len) > available {
            break format!(
                "frame length {} runs past the end of the file ({available} bytes left)",
                frame.len
            );
        }
        payload.resize(frame.len as usize, 0);
        reader
            .read_exact(&mut payload)
            .map_err(io_err_at("read segment", path, offset))?;
        if frame.checksum(key, &payload) != frame.crc {
            break "frame checksum mismatch".to_owned();
        }
        if frame.lsn != lsn {
            return Err(corrupt(
                path,
                offset,
                format!("frame has lsn {} but lsn {lsn} was expected", frame.lsn),
            ));
        }
        offset += FRAME_HEADER_LEN + u64::from(frame.len);
        lsn += 1;
    };
    drop(payload);

    if !is_last {
        return Err(corrupt(path, offset, bad));
    }
    // The last segment: a bad frame is a torn tail only if no valid frame
    // follows it anywhere in the rest of the file.
    let mut tail = Vec::new();
    reader
        .seek(SeekFrom::Start(offset))
        .map_err(io_err_at("seek in segment", path, offset))?;
    reader
        .read_to_end(&mut tail)
        .map_err(io_err_at("read segment", path, offset))?;
    drop(reader);
    if let Some((at, found)) = find_valid_frame(&tail, lsn, key) {
        return Err(corrupt(
            path,
            offset,
            format!(
                "{bad}, but a valid frame (lsn {found}) follows at byte offset {}",
                offset + at as u64
            ),
        ));
    }
    let dropped = file_len - offset;
    tracing::warn!(
        file = %path.display(),
        offset,
        bytes_dropped = dropped,
        reason = %bad,
        "truncating torn tail of wal segment"
    );
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open segment", path))?;
    file.set_len(offset)
        .map_err(io_err_at("truncate segment", path, offset))?;
    file.sync_all().map_err(io_err("fsync segment", path))?;
    Ok(SegmentScan {
        len: offset,
        next_lsn: lsn,
        key,
    })
}

/// Searches `tail` (the bytes from a bad frame to the end of the last
/// segment) at every offset after the first for a frame with a valid
/// checksum under `key` and an LSN that could follow `expected_lsn`. Returns
/// its offset within `tail` and its LSN.
fn find_valid_frame(tail: &[u8], expected_lsn: u64, key: FrameKey) -> Option<(usize, u64)> {
    let header_len = FRAME_HEADER_LEN as usize;
    // Every frame takes at least 16 bytes, which bounds the plausible LSNs.
    let max_lsn = expected_lsn.saturating_add(tail.len() as u64 / FRAME_HEADER_LEN + 1);
    (1..tail.len()).find_map(|at| {
        let raw = tail.get(at..at + header_len)?.first_chunk::<16>()?;
        let frame = FrameHeader::parse(raw);
        if frame.lsn < expected_lsn || frame.lsn > max_lsn {
            return None;
        }
        let start = at + header_len;
        let payload = tail.get(start..start.checked_add(frame.len as usize)?)?;
        (frame.checksum(key, payload) == frame.crc).then_some((at, frame.lsn))
    })
}

/// Parses `wal-{lsn:020}.seg`; returns `None` for any other name.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&lsn| lsn > 0)
}

fn segment_name(first_lsn: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_lsn:020}{SEGMENT_SUFFIX}")
}

/// Lists the segment files of `dir` in LSN order, deleting leftover
/// temporary files and warning about (and ignoring) anything else.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(io_err("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_file = entry.file_type().map_err(io_err("stat", &path))?.is_file();
        if is_file && let Some(lsn) = parse_segment_name(&name) {
            segments.push((lsn, path));
        } else if is_file
            && name.strip_suffix(TMP_SUFFIX).is_some_and(|stem| {
                parse_segment_name(&format!("{stem}{SEGMENT_SUFFIX}")).is_some()
            })
        {
            tracing::warn!(file = %path.display(), "deleting leftover of an interrupted wal segment creation");
            fs::remove_file(&path).map_err(io_err("delete", &path))?;
        } else {
            tracing::warn!(file = %path.display(), "ignoring unexpected file in wal directory");
        }
    }
    segments.sort_unstable_by_key(|(lsn, _)| *lsn);
    Ok(segments)
}

/// Creates and durably names an empty segment starting at `first_lsn` with
/// a fresh random salt (atomically replacing a file of the same name);
/// returns it with a write handle positioned after the header.
fn create_segment(dir: &Path, first_lsn: u64) -> Result<(Segment, File), WalError> {
    let name = segment_name(first_lsn);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt)
        .map_err(|e| io_err("draw a random salt for segment", &path)(e.into()))?;
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    header[16..].copy_from_slice(&salt);
    let prepared = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file_modes::STATE_FILE_MODE)
            .open(&tmp)
            .map_err(io_err("create segment", &tmp))?;
        file.write_all(&header)
            .map_err(io_err_at("write segment", &tmp, 0))?;
        file.sync_all().map_err(io_err("fsync segment", &tmp))?;
        Ok::<_, WalError>(file)
    })();
    let file = match prepared {
        Ok(file) => file,
        Err(e) => {
            // Best effort; open also removes leftovers.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &path).map_err(io_err("rename segment into place", &path))?;
    sync_dir(dir)?;
    Ok((
        Segment {
            first_lsn,
            path,
            bytes: SEGMENT_HEADER_LEN,
            key: FrameKey::salted(&salt),
        },
        file,
    ))
}

/// Creates the WAL directory if missing, making its entry durable.
fn create_dir(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    file_modes::create_dir_all(dir, file_modes::STATE_DIR_MODE)
        .map_err(io_err("create wal directory", dir))?;
    sync_dir(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Fsyncs a directory so that entries created, renamed or deleted in it are
/// durable.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    flowlog_runtime::sync_dir(dir).map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// Deterministic payload of `len` bytes for entry `lsn`.
    fn payload(lsn: u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (lsn as usize).wrapping_mul(31).wrapping_add(i) as u8)
            .collect()
    }

    fn settings(dir: &Path, segment_bytes: u64) -> WalSettings {
        WalSettings {
            segment_bytes,
            fsync: FsyncPolicy::Never,
            ..WalSettings::new(dir)
        }
    }

    fn replay_all(wal: &Wal, from: u64) -> Vec<(u64, Vec<u8>)> {
        wal.replay(from)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn seg_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .collect();
        files.sort();
        files
    }

    /// Collects tracing output while `f` runs.
    fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
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

    #[test]
    fn new_wal_starts_at_one_and_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(WalSettings::new(dir.path().join("nested/wal"))).unwrap();
        assert_eq!(wal.next_lsn(), 1);
        assert_eq!(wal.first_lsn(), 1);
        assert_eq!(wal.segments(), 1);
        assert_eq!(wal.disk_bytes(), SEGMENT_HEADER_LEN);
        assert!(replay_all(&wal, 0).is_empty());
        assert!(format!("{wal:?}").contains("next_lsn: 1"));
        // Usable from a dedicated thread or `spawn_blocking`.
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Wal>();
        assert_send::<WalReader>();
    }

    #[test]
    fn append_and_replay_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(WalSettings {
            segment_bytes: 300,
            ..WalSettings::new(dir.path())
        })
        .unwrap();
        let mut expected = Vec::new();
        for i in 0..40u64 {
            let p = payload(i + 1, (i as usize * 7) % 90);
            assert_eq!(wal.append(&p).unwrap(), i + 1);
            expected.push((i + 1, p));
        }
        assert!(wal.segments() > 5, "{} segments", wal.segments());
        assert_eq!(wal.next_lsn(), 41);
        assert_eq!(replay_all(&wal, 1), expected);
        assert_eq!(replay_all(&wal, 0), expected);
        // Every segment but an oversized single entry stays within the limit.
        for file in seg_files(dir.path()) {
            assert!(fs::metadata(&file).unwrap().len() <= 300, "{file:?}");
        }
        let on_disk: u64 = seg_files(dir.path())
            .iter()
            .map(|f| fs::metadata(f).unwrap().len())
            .sum();
        assert_eq!(wal.disk_bytes(), on_disk);
        assert_eq!(wal.segments(), seg_files(dir.path()).len());
    }

    #[test]
    fn oversized_entry_gets_its_own_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(settings(dir.path(), 100)).unwrap();
        wal.append(b"small").unwrap();
        wal.append(&[7u8; 500]).unwrap();
        wal.append(b"after").unwrap();
        assert_eq!(wal.segments(), 3);
        let files = seg_files(dir.path());
        assert_eq!(
            fs::metadata(&files[1]).unwrap().len(),
            SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 500
        );
        let got = replay_all(&wal, 1);
        assert_eq!(got.len(), 3);
        assert_eq!(got[1], (2, vec![7u8; 500]));
        // Empty payloads are entries too.
        assert_eq!(wal.append(b"").unwrap(), 4);
        assert_eq!(replay_all(&wal, 4), vec![(4, Vec::new())]);
    }

    #[test]
    fn replay_from_the_middle() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(settings(dir.path(), 200)).unwrap();
        let entries: Vec<_> = (1..=30u64).map(|lsn| (lsn, payload(lsn, 40))).collect();
        for (_, p) in &entries {
            wal.append(p).unwrap();
        }
        let boundaries: Vec<u64> = seg_files(dir.path())
            .iter()
            .map(|f| parse_segment_name(f.file_name().unwrap().to_str().unwrap()).unwrap())
            .collect();
        assert!(boundaries.len() > 3);
        let mut starts = vec![2, 13, 29, 30, 31, 1000];
        starts.extend(boundaries.iter().copied());
        starts.extend(boundaries.iter().map(|b| b + 1));
        starts.extend(boundaries.iter().map(|b| b - 1));
        for from in starts {
            let want: Vec<_> = entries
                .iter()
                .filter(|(l, _)| *l >= from)
                .cloned()
                .collect();
            assert_eq!(replay_all(&wal, from), want, "from {from}");
        }
        // The reader stops at the entries that existed when it was created.
        let reader = wal.replay(29).unwrap();
        wal.append(b"later").unwrap();
        assert_eq!(reader.count(), 2);
    }

    #[test]
    fn reopen_continues_lsns() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(settings(dir.path(), 150)).unwrap();
            for lsn in 1..=10 {
                assert_eq!(wal.append(&payload(lsn, 30)).unwrap(), lsn);
            }
        }
        let mut wal = Wal::open(settings(dir.path(), 150)).unwrap();
        assert_eq!(wal.next_lsn(), 11);
        assert_eq!(wal.first_lsn(), 1);
        assert_eq!(wal.append(b"eleven").unwrap(), 11);
        let got = replay_all(&wal, 1);
        assert_eq!(got.len(), 11);
        assert_eq!(got[10], (11, b"eleven".to_vec()));
        assert_eq!(got[4], (5, payload(5, 30)));
    }

    #[test]
    fn reclaim_deletes_only_covered_inactive_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(settings(dir.path(), 200)).unwrap();
        for lsn in 1..=20 {
            wal.append(&payload(lsn, 50)).unwrap();
        }
        // 200-byte segments hold 2 frames of 66 bytes each after the header.
        let firsts: Vec<u64> = wal
            .sealed
            .iter()
            .chain([&wal.active])
            .map(|s| s.first_lsn)
            .collect();
        assert_eq!(firsts, vec![1, 3, 5, 7, 9, 11, 13, 15, 17, 19]);
        let before = wal.disk_bytes();

        assert_eq!(wal.reclaim(0).unwrap(), 0);
        assert_eq!(wal.reclaim(2).unwrap(), 0, "lsn 2 is not below 2");
        assert_eq!(wal.first_lsn(), 1);
        let segment = SEGMENT_HEADER_LEN + 2 * 66;
        let freed = wal.reclaim(3).unwrap();
        assert_eq!(freed, segment);
        assert_eq!(wal.first_lsn(), 3);
        assert_eq!(wal.reclaim(6).unwrap(), segment);
        assert_eq!(wal.first_lsn(), 5);
        assert_eq!(wal.disk_bytes(), before - 2 * segment);
        assert_eq!(seg_files(dir.path()).len(), wal.segments());
        assert_eq!(replay_all(&wal, 0).first().map(|e| e.0), Some(5));

        // Everything is published: all but the active segment go.
        wal.reclaim(u64::MAX).unwrap();
        assert_eq!(wal.segments(), 1);
        assert_eq!(wal.first_lsn(), 19);
        assert_eq!(seg_files(dir.path()).len(), 1);
        assert_eq!(
            replay_all(&wal, 0),
            vec![(19, payload(19, 50)), (20, payload(20, 50))]
        );
        drop(wal);

        let mut wal = Wal::open(settings(dir.path(), 200)).unwrap();
        assert_eq!(wal.first_lsn(), 19);
        assert_eq!(wal.next_lsn(), 21);
        assert_eq!(wal.append(b"x").unwrap(), 21);
        // Rotate so the active segment is empty, then reclaim everything.
        wal.append(&[0u8; 300]).unwrap();
        wal.append(b"y").unwrap();
        assert!(wal.reclaim(24).unwrap() > 0);
        assert_eq!(wal.segments(), 1);
        assert_eq!(wal.first_lsn(), 23);
        drop(wal);
        let mut wal = Wal::open(settings(dir.path(), 200)).unwrap();
        assert_eq!(wal.next_lsn(), 24);
        assert_eq!(wal.append(b"z").unwrap(), 24);
    }

    #[test]
    fn lsns_survive_reclaiming_everything_with_an_empty_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(settings(dir.path(), 100)).unwrap();
            for lsn in 1..=5 {
                wal.append(&payload(lsn, 60)).unwrap();
            }
        }
        // Simulate a crash right after a rotation: an empty active segment.
        let (_segment, _file) = create_segment(dir.path(), 6).unwrap();
        let mut wal = Wal::open(settings(dir.path(), 100)).unwrap();
        assert_eq!(wal.next_lsn(), 6);
        wal.reclaim(6).unwrap();
        assert_eq!(wal.segments(), 1);
        assert_eq!(wal.first_lsn(), 6);
        assert_eq!(wal.next_lsn(), 6);
        assert!(replay_all(&wal, 0).is_empty());
        drop(wal);
        let mut wal = Wal::open(settings(dir.path(), 100)).unwrap();
        assert_eq!((wal.first_lsn(), wal.next_lsn()), (6, 6));
        assert_eq!(wal.append(b"six").unwrap(), 6);
    }

    #[test]
    fn torn_tail_at_every_cut_point() {
        for frames_in_last in [1u64, 2] {
            let dir = tempfile::tempdir().unwrap();
            let frame = FRAME_HEADER_LEN + 40;
            let seg_bytes = SEGMENT_HEADER_LEN + 2 * frame;
            let total = 2 + frames_in_last;
            let (last_path, prev_len, full_len) = {
                let mut wal = Wal::open(settings(dir.path(), seg_bytes)).unwrap();
                for lsn in 1..total {
                    wal.append(&payload(lsn, 40)).unwrap();
                }
                wal.append(&payload(total, 40)).unwrap();
                assert_eq!(wal.segments(), 2);
                let full_len = wal.active.bytes;
                (wal.active.path.clone(), full_len - frame, full_len)
            };
            assert_eq!(prev_len, SEGMENT_HEADER_LEN + (frames_in_last - 1) * frame);
            let golden = fs::read(&last_path).unwrap();
            assert_eq!(golden.len() as u64, full_len);
            for cut in prev_len..=full_len {
                fs::write(&last_path, &golden[..cut as usize]).unwrap();
                let (wal, logs) = capture_logs(|| Wal::open(settings(dir.path(), seg_bytes)));
                let mut wal = wal.unwrap();
                let complete = if cut == full_len { total } else { total - 1 };
                assert_eq!(wal.next_lsn(), complete + 1, "cut {cut}");
                let want: Vec<_> = (1..=complete).map(|l| (l, payload(l, 40))).collect();
                assert_eq!(replay_all(&wal, 1), want, "cut {cut}");
                if cut == prev_len || cut == full_len {
                    assert!(logs.is_empty(), "cut {cut}: {logs}");
                } else {
                    assert!(logs.contains("truncating torn tail"), "cut {cut}: {logs}");
                    assert!(logs.contains(&format!("offset={prev_len}")), "{logs}");
                    assert!(
                        logs.contains(&format!("bytes_dropped={}", cut - prev_len)),
                        "{logs}"
                    );
                }
                let kept = if cut == full_len { full_len } else { prev_len };
                assert_eq!(fs::metadata(&last_path).unwrap().len(), kept, "cut {cut}");
                let lsn = wal.append(b"next").unwrap();
                assert_eq!(lsn, complete + 1);
                assert_eq!(replay_all(&wal, lsn), vec![(lsn, b"next".to_vec())]);
                drop(wal);
                let wal = Wal::open(settings(dir.path(), seg_bytes)).unwrap();
                assert_eq!(wal.next_lsn(), complete + 2);
            }
        }
    }

    /// The bytes of a version 1 frame, as earlier releases wrote it.
    fn v1_frame(lsn: u64, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap();
        let header = FrameHeader { len, crc: 0, lsn };
        let crc = header.checksum(FrameKey::UNKEYED_V1, payload);
        let mut frame = Vec::new();
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&crc.to_le_bytes());
        frame.extend_from_slice(&lsn.to_le_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// Writes a version 1 segment holding `lsns` (payloads from [`payload`]).
    fn write_v1_segment(dir: &Path, lsns: std::ops::Range<u64>, len: usize) -> PathBuf {
        let path = dir.join(segment_name(lsns.start));
        let mut bytes = SEGMENT_MAGIC_V1.to_vec();
        bytes.extend_from_slice(&lsns.start.to_le_bytes());
        for lsn in lsns {
            bytes.extend_from_slice(&v1_frame(lsn, &payload(lsn, len)));
        }
        fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn crc_append_after_the_salt_is_the_crc_of_salt_and_data() {
        let salt = [7u8; SALT_LEN];
        let key = FrameKey::salted(&salt);
        let header = FrameHeader {
            len: 3,
            crc: 0,
            lsn: 9,
        };
        let mut all = salt.to_vec();
        all.extend_from_slice(&9u64.to_le_bytes());
        all.extend_from_slice(&3u32.to_le_bytes());
        all.extend_from_slice(b"abc");
        assert_eq!(header.checksum(key, b"abc"), crc32c::crc32c(&all));
    }

    #[test]
    fn segments_get_distinct_salts_and_frames_do_not_move_between_them() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(settings(dir.path(), 100)).unwrap();
            for lsn in 1..=2 {
                wal.append(&payload(lsn, 40)).unwrap();
            }
        }
        let files = seg_files(dir.path());
        assert_eq!(files.len(), 2);
        let (a, b) = (fs::read(&files[0]).unwrap(), fs::read(&files[1]).unwrap());
        assert_eq!(&a[..8], SEGMENT_MAGIC);
        assert_ne!(a[16..32], b[16..32], "salts");
        // Frame 2 copied behind frame 1 with the right LSN is still rejected:
        // its checksum was keyed with the other segment's salt.
        let mut moved = a.clone();
        moved.extend_from_slice(&b[SEGMENT_HEADER_LEN as usize..]);
        fs::remove_file(&files[1]).unwrap();
        fs::write(&files[0], &moved).unwrap();
        let wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
        assert_eq!(wal.next_lsn(), 2);
        assert_eq!(fs::read(&files[0]).unwrap(), a);
    }

    #[test]
    fn version_1_segments_are_recovered_replayed_and_appended_after() {
        let dir = tempfile::tempdir().unwrap();
        write_v1_segment(dir.path(), 1..4, 30);
        let last = write_v1_segment(dir.path(), 4..6, 30);
        // A torn write at the end of the old active segment.
        let mut bytes = fs::read(&last).unwrap();
        let intact = bytes.len() as u64;
        bytes.extend_from_slice(&v1_frame(6, &payload(6, 30))[..20]);
        fs::write(&last, &bytes).unwrap();

        let (wal, logs) = capture_logs(|| Wal::open(settings(dir.path(), 1 << 20)));
        let mut wal = wal.unwrap();
        assert!(logs.contains("truncating torn tail"), "{logs}");
        assert_eq!(fs::metadata(&last).unwrap().len(), intact);
        assert_eq!((wal.first_lsn(), wal.next_lsn()), (1, 6));
        let want: Vec<_> = (1..6).map(|l| (l, payload(l, 30))).collect();
        assert_eq!(replay_all(&wal, 1), want);
        assert_eq!(replay_all(&wal, 5), want[4..].to_vec());

        // Appends go to a new version 2 segment; the old ones stay readable.
        assert_eq!(wal.append(&payload(6, 30)).unwrap(), 6);
        assert_eq!(wal.segments(), 3);
        drop(wal);
        let files = seg_files(dir.path());
        assert_eq!(files.len(), 3);
        assert_eq!(&fs::read(&files[2]).unwrap()[..8], SEGMENT_MAGIC);
        assert_eq!(&fs::read(&files[1]).unwrap()[..8], SEGMENT_MAGIC_V1);
        let mut wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
        let want: Vec<_> = (1..7).map(|l| (l, payload(l, 30))).collect();
        assert_eq!(replay_all(&wal, 1), want);
        // Reclaiming works across formats.
        assert!(wal.reclaim(6).unwrap() > 0);
        assert_eq!(wal.first_lsn(), 6);
        assert_eq!(replay_all(&wal, 1), want[5..].to_vec());
    }

    #[test]
    fn an_empty_version_1_active_segment_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        write_v1_segment(dir.path(), 1..3, 10);
        let empty = write_v1_segment(dir.path(), 3..3, 10);
        let mut wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
        assert_eq!(wal.next_lsn(), 3);
        assert_eq!(wal.segments(), 2);
        assert_eq!(&fs::read(&empty).unwrap()[..8], SEGMENT_MAGIC);
        assert_eq!(wal.append(b"three").unwrap(), 3);
        drop(wal);
        let wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
        let got: Vec<u64> = replay_all(&wal, 1).into_iter().map(|(l, _)| l).collect();
        assert_eq!(got, vec![1, 2, 3]);
    }

    /// A payload holding complete, validly checksummed version 1 frames with
    /// the LSNs that follow the entry carrying it (`next_lsn` and on).
    fn payload_with_look_alike_frames(next_lsn: u64) -> Vec<u8> {
        let mut p = b"client bytes ".to_vec();
        for lsn in next_lsn..next_lsn + 3 {
            p.extend_from_slice(&v1_frame(lsn, &payload(lsn, 24)));
        }
        p.extend_from_slice(&[0xAB; 64]);
        p
    }

    #[test]
    fn look_alike_frames_in_a_torn_payload_do_not_stop_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let crafted = payload_with_look_alike_frames(3);
        let (path, torn_at) = {
            let mut wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
            wal.append(&payload(1, 40)).unwrap();
            wal.append(&payload(2, 40)).unwrap();
            let torn_at = wal.active.bytes;
            wal.append(&crafted).unwrap();
            (wal.active.path.clone(), torn_at)
        };
        let golden = fs::read(&path).unwrap();
        // Torn inside the crafted payload, after every look-alike frame.
        let cut = golden.len() - 10;
        fs::write(&path, &golden[..cut]).unwrap();
        let (wal, logs) = capture_logs(|| Wal::open(settings(dir.path(), 1 << 20)));
        let mut wal = wal.unwrap();
        assert!(logs.contains("truncating torn tail"), "{logs}");
        assert!(logs.contains(&format!("offset={torn_at}")), "{logs}");
        assert_eq!(wal.next_lsn(), 3);
        assert_eq!(
            replay_all(&wal, 1),
            vec![(1, payload(1, 40)), (2, payload(2, 40))]
        );
        assert_eq!(fs::metadata(&path).unwrap().len(), torn_at);

        // Complete, it is one entry, and a torn write after it is cut alone.
        assert_eq!(wal.append(&crafted).unwrap(), 3);
        let before = wal.active.bytes;
        wal.append(&payload(4, 40)).unwrap();
        drop(wal);
        let golden = fs::read(&path).unwrap();
        fs::write(&path, &golden[..before as usize + 20]).unwrap();
        let wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
        assert_eq!(wal.next_lsn(), 4);
        assert_eq!(replay_all(&wal, 3), vec![(3, crafted)]);
    }

    #[test]
    fn look_alike_frames_in_a_torn_payload_stopped_version_1_recovery() {
        // Why segments are salted: the same crafted bytes in an unsalted
        // (version 1) segment make open refuse to start.
        let dir = tempfile::tempdir().unwrap();
        let path = write_v1_segment(dir.path(), 1..3, 40);
        let mut bytes = fs::read(&path).unwrap();
        let torn = v1_frame(3, &payload_with_look_alike_frames(3));
        bytes.extend_from_slice(&torn[..torn.len() - 10]);
        fs::write(&path, &bytes).unwrap();
        let err = Wal::open(settings(dir.path(), 1 << 20)).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains("a valid frame (lsn 3) follows"),
            "{err}"
        );
    }

    #[test]
    fn zeroed_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let mut wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
            wal.append(b"one").unwrap();
            wal.active.path.clone()
        };
        let mut bytes = fs::read(&path).unwrap();
        let len = bytes.len();
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(&path, &bytes).unwrap();
        let wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
        assert_eq!(wal.next_lsn(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len(), len as u64);
    }

    #[test]
    fn flipped_byte_in_last_frame_is_truncated_with_warning() {
        let dir = tempfile::tempdir().unwrap();
        let (path, last_offset) = {
            let mut wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
            for lsn in 1..=3 {
                wal.append(&payload(lsn, 100)).unwrap();
            }
            let offset = wal.active.bytes;
            wal.append(&payload(4, 100)).unwrap();
            (wal.active.path.clone(), offset)
        };
        let mut bytes = fs::read(&path).unwrap();
        bytes[last_offset as usize + 16 + 50] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let (wal, logs) = capture_logs(|| Wal::open(settings(dir.path(), 1 << 20)));
        let wal = wal.unwrap();
        assert_eq!(wal.next_lsn(), 4);
        assert_eq!(replay_all(&wal, 0).len(), 3);
        assert_eq!(fs::metadata(&path).unwrap().len(), last_offset);
        assert!(logs.contains("WARN"), "{logs}");
        assert!(logs.contains("truncating torn tail"), "{logs}");
        assert!(logs.contains(&path.display().to_string()), "{logs}");
        assert!(logs.contains(&format!("offset={last_offset}")), "{logs}");
        assert!(logs.contains("bytes_dropped=116"), "{logs}");
    }

    #[test]
    fn flipped_byte_before_valid_frames_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, bad_offset) = {
            let mut wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
            wal.append(&payload(1, 100)).unwrap();
            let offset = wal.active.bytes;
            for lsn in 2..=4 {
                wal.append(&payload(lsn, 100)).unwrap();
            }
            (wal.active.path.clone(), offset)
        };
        let golden = fs::read(&path).unwrap();
        // A flipped payload byte, length byte and LSN byte of frame 2.
        for delta in [16 + 10, 0, 1, 8] {
            let mut bytes = golden.clone();
            bytes[bad_offset as usize + delta] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            let err = Wal::open(settings(dir.path(), 1 << 20)).unwrap_err();
            assert!(matches!(err, WalError::Corrupt { offset, .. } if offset == bad_offset));
            let msg = err.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("byte offset {bad_offset}")), "{msg}");
            // Nothing was truncated.
            assert_eq!(fs::read(&path).unwrap(), bytes);
        }
    }

    #[test]
    fn corruption_in_an_earlier_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(settings(dir.path(), 200)).unwrap();
            for lsn in 1..=6 {
                wal.append(&payload(lsn, 50)).unwrap();
            }
        }
        let files = seg_files(dir.path());
        assert_eq!(files.len(), 3);
        // Even the last frame of a non-last segment is never dropped.
        let mut bytes = fs::read(&files[1]).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        fs::write(&files[1], &bytes).unwrap();
        let err = Wal::open(settings(dir.path(), 200)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&files[1].display().to_string()), "{msg}");
        let second_frame = SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 50;
        assert!(
            msg.contains(&format!("byte offset {second_frame}")),
            "{msg}"
        );
        // A torn earlier segment is an error too.
        bytes.truncate(bytes.len() - 10);
        fs::write(&files[1], &bytes).unwrap();
        assert!(matches!(
            Wal::open(settings(dir.path(), 200)),
            Err(WalError::Corrupt { offset, .. }) if offset == second_frame
        ));
    }

    #[test]
    fn missing_middle_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(settings(dir.path(), 200)).unwrap();
            for lsn in 1..=6 {
                wal.append(&payload(lsn, 50)).unwrap();
            }
        }
        let files = seg_files(dir.path());
        fs::remove_file(&files[1]).unwrap();
        let err = Wal::open(settings(dir.path(), 200)).unwrap_err();
        assert!(
            err.to_string().contains(&files[2].display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("lsn 5"), "{err}");
    }

    #[test]
    fn bad_segment_header_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
            wal.append(b"x").unwrap();
        }
        let path = seg_files(dir.path()).remove(0);
        let mut bytes = fs::read(&path).unwrap();
        bytes[0] = b'X';
        fs::write(&path, &bytes).unwrap();
        let err = Wal::open(settings(dir.path(), 1 << 20)).unwrap_err();
        assert!(err.to_string().contains("bad magic"), "{err}");
        // A segment whose header disagrees with its name.
        fs::write(dir.path().join(segment_name(1)), b"").unwrap();
        let renamed = dir.path().join(segment_name(1));
        let (_seg, _file) = create_segment(dir.path(), 7).unwrap();
        fs::rename(dir.path().join(segment_name(7)), &renamed).unwrap();
        let err = Wal::open(settings(dir.path(), 1 << 20)).unwrap_err();
        assert!(err.to_string().contains("first lsn 7"), "{err}");
    }

    #[test]
    fn unrelated_files_are_ignored_and_temp_files_removed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut wal = Wal::open(settings(dir.path(), 1 << 20)).unwrap();
            wal.append(b"a").unwrap();
        }
        fs::write(dir.path().join("wal-1.seg"), b"").unwrap();
        fs::write(dir.path().join("wal-abc.seg"), b"garbage").unwrap();
        fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        fs::write(dir.path().join(format!("{}.bak", segment_name(1))), b"x").unwrap();
        fs::create_dir(dir.path().join(segment_name(99))).unwrap();
        let tmp = dir.path().join(format!("{}.tmp", segment_name(2)));
        fs::write(&tmp, b"FLOG").unwrap();
        let (wal, logs) = capture_logs(|| Wal::open(settings(dir.path(), 1 << 20)));
        let mut wal = wal.unwrap();
        assert_eq!(wal.segments(), 1);
        assert_eq!(wal.next_lsn(), 2);
        assert!(!tmp.exists());
        assert!(logs.contains("ignoring unexpected file"), "{logs}");
        assert!(logs.contains("notes.txt"), "{logs}");
        assert!(logs.contains("wal-abc.seg"), "{logs}");
        assert!(logs.contains("interrupted wal segment creation"), "{logs}");
        assert_eq!(wal.append(b"b").unwrap(), 2);
        assert!(dir.path().join("notes.txt").exists());
    }

    #[test]
    fn fsync_policies() {
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::Interval(Duration::from_millis(1)),
            FsyncPolicy::Never,
        ] {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut wal = Wal::open(WalSettings {
                    fsync: policy,
                    segment_bytes: 100,
                    ..WalSettings::new(dir.path())
                })
                .unwrap();
                for lsn in 1..=5 {
                    wal.append(&payload(lsn, 30)).unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
                wal.sync().unwrap();
                assert!(!wal.dirty);
            }
            let wal = Wal::open(WalSettings::new(dir.path())).unwrap();
            assert_eq!(wal.next_lsn(), 6, "{policy}");
        }
    }

    #[test]
    fn group_commit_appends_unsynced_then_syncs_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(WalSettings {
            segment_bytes: 200,
            ..WalSettings::new(dir.path())
        })
        .unwrap();
        assert!(!wal.reclaimable(u64::MAX));
        let lsns: Vec<u64> = (1..=3)
            .map(|i| wal.append_unsynced(&payload(i, 60)).unwrap())
            .collect();
        assert_eq!(lsns, vec![1, 2, 3]);
        assert!(wal.dirty, "appended without a sync");
        wal.commit().unwrap();
        assert!(!wal.dirty, "one commit syncs the group");
        // The third entry rotated: the first segment holds LSNs 1-2.
        assert_eq!(wal.segments(), 2);
        assert!(!wal.reclaimable(2));
        assert!(wal.reclaimable(3));
        assert!(wal.reclaim(3).unwrap() > 0);
        assert!(!wal.reclaimable(u64::MAX), "the active segment stays");
        drop(wal);
        let wal = Wal::open(WalSettings::new(dir.path())).unwrap();
        assert_eq!(replay_all(&wal, 0), vec![(3, payload(3, 60))]);
    }

    #[test]
    fn an_entry_in_parts_reads_back_joined() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(WalSettings::new(dir.path())).unwrap();
        let big = payload(9, 300_000);
        assert_eq!(
            wal.append_unsynced_parts(&[b"head:", &[], &big]).unwrap(),
            1
        );
        assert_eq!(wal.append_unsynced_parts(&[]).unwrap(), 2);
        wal.commit().unwrap();
        drop(wal);
        let wal = Wal::open(WalSettings::new(dir.path())).unwrap();
        let mut joined = b"head:".to_vec();
        joined.extend_from_slice(&big);
        assert_eq!(replay_all(&wal, 0), vec![(1, joined), (2, Vec::new())]);
    }

    #[test]
    fn settings_default_to_always_and_64_mib() {
        assert_eq!(FsyncPolicy::default(), FsyncPolicy::Always);
        let s = WalSettings::new("/x");
        assert_eq!(s.segment_bytes, 64 * 1024 * 1024);
        assert_eq!(s.fsync, FsyncPolicy::Always);
    }

    #[test]
    fn error_messages_are_lowercase_and_chain_io_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = Wal::open(WalSettings::new(&file)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("failed to "), "{msg}");
        assert!(msg.contains("not-a-dir"), "{msg}");
        assert!(std::error::Error::source(&err).is_some());
        let err = WalError::EntryTooLarge { len: 1, max: 0 };
        assert!(err.to_string().starts_with("wal entry"));
    }

    /// Environment variable telling [`crash_child`] which WAL to write.
    const CRASH_CHILD_DIR: &str = "FLOWLOG_WAL_CRASH_CHILD_DIR";

    /// Child process of [`kill_9_loses_no_acknowledged_entry`]: appends
    /// entries of up to 128 KiB until killed (or for 20 s), printing each
    /// acknowledged LSN.
    #[test]
    #[ignore = "child process of kill_9_loses_no_acknowledged_entry"]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) else {
            return;
        };
        let mut wal = Wal::open(settings(Path::new(&dir), 1 << 20)).unwrap();
        let mut out = io::stdout().lock();
        // Bounded, in case the parent dies before killing this process.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let lsn = wal.next_lsn();
            let len = (lsn as usize * 7919) % (128 << 10);
            assert_eq!(wal.append(&payload(lsn, len)).unwrap(), lsn);
            writeln!(out, "acked {lsn}").unwrap();
            out.flush().unwrap();
            if lsn.is_multiple_of(50) {
                wal.reclaim(lsn - 20).unwrap();
            }
        }
    }

    #[test]
    fn kill_9_loses_no_acknowledged_entry() {
        use std::io::BufRead;
        use std::process::{Command, Stdio};

        let dir = tempfile::tempdir().unwrap();
        let mut max_acked = 0;
        let mut torn = 0;
        for round in 0..5u64 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "wal::tests::crash_child",
                    "--ignored",
                    "--nocapture",
                ])
                .env(CRASH_CHILD_DIR, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let reader = std::thread::spawn(move || {
                io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|line| line.strip_prefix("acked ")?.parse::<u64>().ok())
                    .max()
            });
            std::thread::sleep(Duration::from_millis(100 + round * 37));
            child.kill().unwrap(); // SIGKILL on Unix
            child.wait().unwrap();
            if let Some(acked) = reader.join().unwrap() {
                max_acked = max_acked.max(acked);
            }

            let (wal, logs) = capture_logs(|| Wal::open(settings(dir.path(), 1 << 20)));
            let wal = wal.unwrap();
            torn += logs.matches("truncating torn tail").count();
            assert!(
                wal.next_lsn() > max_acked,
                "round {round}: lost acknowledged entries"
            );
            let mut expect = wal.first_lsn();
            for entry in wal.replay(0).unwrap() {
                let (lsn, data) = entry.unwrap();
                assert_eq!(lsn, expect);
                assert_eq!(data, payload(lsn, (lsn as usize * 7919) % (128 << 10)));
                expect += 1;
            }
            assert_eq!(expect, wal.next_lsn());
        }
        assert!(max_acked > 0, "the child never appended");
        println!("{max_acked} entries acknowledged, {torn} torn tails truncated");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn prop_reopen_replays_retained_suffix(
            sizes in proptest::collection::vec(0usize..5000, 0..60),
            segment_bytes in 16u64..20_000,
            reclaim in proptest::option::of(0u64..70),
            from_offset in 0u64..70,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let entries: Vec<(u64, Vec<u8>)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &len)| (i as u64 + 1, payload(i as u64 + 1, len)))
                .collect();
            {
                let mut wal = Wal::open(settings(dir.path(), segment_bytes)).unwrap();
                for (lsn, p) in &entries {
                    prop_assert_eq!(wal.append(p).unwrap(), *lsn);
                }
                if let Some(below) = reclaim {
                    let before = wal.disk_bytes();
                    let freed = wal.reclaim(below).unwrap();
                    prop_assert_eq!(wal.disk_bytes(), before - freed);
                    prop_assert!(wal.first_lsn() <= below.max(1).min(wal.next_lsn()));
                }
            }
            let wal = Wal::open(settings(dir.path(), segment_bytes)).unwrap();
            let next = entries.len() as u64 + 1;
            prop_assert_eq!(wal.next_lsn(), next);
            let first = wal.first_lsn();
            if let Some(below) = reclaim {
                prop_assert!(first <= below.max(1).min(next));
            } else {
                prop_assert_eq!(first, 1);
            }
            let retained: Vec<_> = entries.iter().filter(|(l, _)| *l >= first).cloned().collect();
            prop_assert_eq!(replay_all(&wal, first), retained.clone());
            let from = first + from_offset;
            let suffix: Vec<_> = retained.iter().filter(|(l, _)| *l >= from).cloned().collect();
            prop_assert_eq!(replay_all(&wal, from), suffix);
            let on_disk: u64 = seg_files(dir.path())
                .iter()
                .map(|f| fs::metadata(f).unwrap().len())
                .sum();
            prop_assert_eq!(wal.disk_bytes(), on_disk);
            prop_assert_eq!(wal.segments(), seg_files(dir.path()).len());
        }
    }

    /// Throughput of 200k 4 KiB appends with `interval:200ms`; not asserted.
    #[test]
    #[ignore = "benchmark; run with --release --ignored --nocapture"]
    fn bench_append_throughput() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(WalSettings {
            fsync: FsyncPolicy::Interval(Duration::from_millis(200)),
            ..WalSettings::new(dir.path())
        })
        .unwrap();
        let entry = payload(1, 4096);
        let count = 200_000u64;
        let start = Instant::now();
        for _ in 0..count {
            wal.append(&entry).unwrap();
        }
        wal.sync().unwrap();
        let elapsed = start.elapsed();
        let mb = (count * 4096) as f64 / 1e6;
        println!(
            "appended {count} x 4 KiB = {mb:.0} MB in {elapsed:.2?}: {:.0} MB/s, {:.0} appends/s ({} segments)",
            mb / elapsed.as_secs_f64(),
            count as f64 / elapsed.as_secs_f64(),
            wal.segments()
        );
    }
}
