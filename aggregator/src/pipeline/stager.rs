//! The window stage: one open file per stream, encoded as records arrive, sealed when its
//! window closes, when the next record would push it over the size cap, or when too many
//! files are open.
//!
//! Files are written under `staging/open/` and, once sealed (finished, fsync'd), renamed to
//! `staging/sealed/<file name>`. Keys are deterministic: the hash in a file's name comes
//! from (writer id, window, position of the file's first record), so a file rebuilt from
//! the WAL after a crash gets the same key.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use flowlog_formats::key::{FileKind, KeyLayout, KeyParts, KeyPrefix, hash8, object_key};
use flowlog_formats::parquet::{ParquetError, ParquetOptions, ParquetWriter};
use flowlog_formats::text::{GzipTextWriter, line_len_upper_bound};
use flowlog_formats::{FlowRecord, LogFormat};

use super::window::StreamKey;
use crate::convert::OutputFormat;

/// Bytes of Parquet rows buffered in memory across all open files before row groups are
/// written out early.
pub const PARQUET_MEMORY_BUDGET: u64 = 256 << 20;

/// What the stage needs to know.
#[derive(Debug, Clone)]
pub struct StagerSettings {
    /// Text or Parquet.
    pub format: OutputFormat,
    /// Record format.
    pub log_format: LogFormat,
    /// Key layout.
    pub layout: KeyLayout,
    /// Key prefix.
    pub prefix: KeyPrefix,
    /// Size cap of every object.
    pub max_file_bytes: u64,
    /// Window width in seconds.
    pub window_secs: u64,
    /// Grace in seconds.
    pub grace_secs: u64,
    /// gzip level for text.
    pub gzip_level: u32,
    /// Parquet options.
    pub parquet: ParquetOptions,
    /// Files open at once at most.
    pub max_open_files: usize,
    /// Writer id (goes into every hash).
    pub writer_id: String,
    /// The state directory (`staging/` lives below it).
    pub state_dir: PathBuf,
}

/// Why a file was sealed (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealReason {
    /// Its window closed (end + grace passed), or a late file went idle.
    WindowClosed,
    /// The next record would have exceeded the size cap.
    SizeCap,
    /// Too many files were open.
    OpenFileLimit,
    /// Shutdown or the end of an import.
    Flush,
}

impl SealReason {
    /// Returns the metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SealReason::WindowClosed => "window_closed",
            SealReason::SizeCap => "size_cap",
            SealReason::OpenFileLimit => "open_file_limit",
            SealReason::Flush => "shutdown",
        }
    }
}

/// A finished file ready for upload.
#[derive(Debug, Clone)]
pub struct SealedFile {
    /// Final object key.
    pub key: String,
    /// Where the file is staged.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Records in it.
    pub records: u64,
    /// Its stream.
    pub stream: StreamKey,
    /// Position of its first record.
    pub first: u64,
    /// Position of its last record.
    pub last: u64,
    /// Why it was sealed.
    pub reason: SealReason,
}

/// Failure of the stage (local disk or encoder); the records stay in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Local file I/O failed.
    #[error("staging file {path} failed")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Parquet encoding failed.
    #[error("encoding {path} as Parquet failed")]
    Parquet {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: ParquetError,
    },
    /// The key could not be built (invalid identity).
    #[error("cannot build the object key")]
    Key(#[from] flowlog_formats::key::KeyError),
}

enum Encoder {
    Text(Box<GzipTextWriter<BufWriter<File>>>),
    Parquet(Box<ParquetWriter<BufWriter<File>>>),
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::Text(_) => "Encoder::Text",
            Encoder::Parquet(_) => "Encoder::Parquet",
        })
    }
}

#[derive(Debug)]
struct OpenFile {
    encoder: Encoder,
    tmp: PathBuf,
    first: u64,
    last: u64,
    records: u64,
    last_write: u64,
    late: bool,
    touched: u64,
    flushed: bool,
}

/// The window stage. Not thread-safe: one pipeline thread owns it.
#[derive(Debug)]
pub struct Stager {
    settings: StagerSettings,
    /// Hashed with foldhash: one lookup per record, SipHash's cost showed in profiles.
    open: HashMap<StreamKey, OpenFile, foldhash::fast::RandomState>,
    open_dir: PathBuf,
    sealed_dir: PathBuf,
    clock: u64,
    kind: FileKind,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), StageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Stager {
    /// Creates the stage; files left in `staging/open/` by an earlier run are deleted (their
    /// records are still in the WAL and will be replayed).
    pub fn new(settings: StagerSettings) -> Result<Stager, StageError> {
        let open_dir = settings.state_dir.join("staging/open");
        let sealed_dir = settings.state_dir.join("staging/sealed");
        if open_dir.exists() {
            fs::remove_dir_all(&open_dir).map_err(io_err(&open_dir))?;
        }
        fs::create_dir_all(&open_dir).map_err(io_err(&open_dir))?;
        fs::create_dir_all(&sealed_dir).map_err(io_err(&sealed_dir))?;
        let kind = match settings.format {
            OutputFormat::Text => FileKind::Text,
            OutputFormat::Parquet => FileKind::Parquet,
        };
        Ok(Stager {
            settings,
            open: HashMap::default(),
            open_dir,
            sealed_dir,
            clock: 0,
            kind,
        })
    }

    /// Returns the directory sealed files are staged in.
    pub fn sealed_dir(&self) -> &Path {
        &self.sealed_dir
    }

    /// Returns the number of files being written.
    pub fn open_files(&self) -> usize {
        self.open.len()
    }

    /// Returns the lowest position held by an open file (its records must stay in the WAL).
    pub fn min_open_position(&self) -> Option<u64> {
        self.open.values().map(|f| f.first).min()
    }

    /// Returns the oldest window end among open files.
    pub fn oldest_open_window(&self) -> Option<u64> {
        self.open.keys().map(|k| k.window_end).min()
    }

    /// Adds a record at `position` to its stream's file, sealing files as needed (into
    /// `sealed`). `now` is the wall clock (Unix seconds).
    pub fn insert(
        &mut self,
        stream: &StreamKey,
        record: &FlowRecord,
        position: u64,
        now: u64,
        sealed: &mut Vec<SealedFile>,
    ) -> Result<(), StageError> {
        self.clock += 1;
        let bound = line_len_upper_bound(&self.settings.log_format, record) as u64 * 2 + 64;
        let budget = (PARQUET_MEMORY_BUDGET / self.settings.max_open_files as u64).max(1 << 20);
        let clock = self.clock;
        // The common case, one lookup: the stream's file is open and the record fits.
        if let Some(file) = self.open.get_mut(stream) {
            if file.records == 0 || fits(file, bound, self.settings.max_file_bytes)? {
                return write_record(file, record, position, now, clock, budget);
            }
            self.seal(stream, SealReason::SizeCap, sealed)?;
        }
        if self.open.len() >= self.settings.max_open_files {
            let victim = self
                .open
                .iter()
                .min_by_key(|(_, f)| f.touched)
                .map(|(k, _)| k.clone());
            if let Some(victim) = victim {
                self.seal(&victim, SealReason::OpenFileLimit, sealed)?;
            }
        }
        let closes_at = stream.window_end + self.settings.grace_secs;
        let mut file = self.create(stream, position, now >= closes_at)?;
        write_record(&mut file, record, position, now, clock, budget)?;
        self.open.insert(stream.clone(), file);
        Ok(())
    }

    fn create(&self, stream: &StreamKey, first: u64, late: bool) -> Result<OpenFile, StageError> {
        let tmp = self
            .open_dir
            .join(format!("{}-{first}.part", stream.window_end));
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let out = BufWriter::with_capacity(64 * 1024, file);
        let format = self.settings.log_format.clone();
        let encoder = match self.settings.format {
            OutputFormat::Text => Encoder::Text(Box::new(
                GzipTextWriter::new(out, format, self.settings.gzip_level).map_err(io_err(&tmp))?,
            )),
            OutputFormat::Parquet => Encoder::Parquet(Box::new(
                ParquetWriter::new(out, format, &self.settings.parquet).map_err(|source| {
                    StageError::Parquet {
                        path: tmp.display().to_string(),
                        source,
                    }
                })?,
            )),
        };
        Ok(OpenFile {
            encoder,
            tmp,
            first,
            last: first,
            records: 0,
            last_write: 0,
            late,
            touched: 0,
            flushed: false,
        })
    }

    /// Seals files whose window closed (`end + grace <= now`) and late files idle for the
    /// grace period.
    pub fn close_due(&mut self, now: u64, sealed: &mut Vec<SealedFile>) -> Result<(), StageError> {
        let grace = self.settings.grace_secs;
        let due: Vec<StreamKey> = self
            .open
            .iter()
            .filter(|(k, f)| {
                if f.late {
                    f.last_write + grace <= now
                } else {
                    k.window_end + grace <= now
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.seal(&k, SealReason::WindowClosed, sealed)?;
        }
        Ok(())
    }

    /// Seals every open file.
    pub fn seal_all(&mut self, sealed: &mut Vec<SealedFile>) -> Result<(), StageError> {
        let mut all: Vec<StreamKey> = self.open.keys().cloned().collect();
        all.sort();
        for k in all {
            self.seal(&k, SealReason::Flush, sealed)?;
        }
        Ok(())
    }

    fn seal(
        &mut self,
        stream: &StreamKey,
        reason: SealReason,
        sealed: &mut Vec<SealedFile>,
    ) -> Result<(), StageError> {
        let Some(file) = self.open.remove(stream) else {
            return Ok(());
        };
        let tmp = file.tmp;
        let writer = match file.encoder {
            Encoder::Text(w) => w.finish().map_err(io_err(&tmp))?,
            Encoder::Parquet(w) => w.finish().map_err(|source| StageError::Parquet {
                path: tmp.display().to_string(),
                source,
            })?,
        };
        let f = writer.into_inner().map_err(|e| StageError::Io {
            path: tmp.display().to_string(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io_err(&tmp))?;
        let bytes = f.metadata().map_err(io_err(&tmp))?.len();
        drop(f);
        let seed = format!(
            "{}/{}/{}",
            self.settings.writer_id, stream.window_end, file.first
        );
        let hash = hash8(seed.as_bytes());
        let timestamp = i64::try_from(stream.window_end)
            .ok()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
            .unwrap_or_default();
        let parts = KeyParts {
            account_id: &stream.account_id,
            region: &stream.region,
            flow_log_id: &stream.flow_log_id,
            file_timestamp: timestamp,
            hash8: &hash,
            kind: self.kind,
        };
        let key = object_key(self.settings.layout, &self.settings.prefix, &parts)?;
        let name = key.rsplit('/').next().unwrap_or(&key).to_owned();
        let path = self.sealed_dir.join(name);
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.sealed_dir)?;
        sealed.push(SealedFile {
            key,
            path,
            bytes,
            records: file.records,
            stream: stream.clone(),
            first: file.first,
            last: file.last,
            reason,
        });
        Ok(())
    }
}

/// Returns whether one more record of at most `bound` encoded bytes still fits under `cap`;
/// flushes the encoder once to make its size exact before saying no.
/// Appends one record to an open file.
fn write_record(
    file: &mut OpenFile,
    record: &FlowRecord,
    position: u64,
    now: u64,
    clock: u64,
    parquet_budget: u64,
) -> Result<(), StageError> {
    match &mut file.encoder {
        Encoder::Text(w) => w.write_record(record).map_err(io_err(&file.tmp))?,
        Encoder::Parquet(w) => {
            w.write_record(record)
                .map_err(|source| StageError::Parquet {
                    path: file.tmp.display().to_string(),
                    source,
                })?;
            if w.buffered_bytes_estimate() > parquet_budget {
                w.flush_row_group().map_err(|source| StageError::Parquet {
                    path: file.tmp.display().to_string(),
                    source,
                })?;
            }
        }
    }
    file.last = position;
    file.records += 1;
    file.last_write = now;
    file.touched = clock;
    file.flushed = false;
    Ok(())
}

fn fits(file: &mut OpenFile, bound: u64, cap: u64) -> Result<bool, StageError> {
    loop {
        let size = match &file.encoder {
            Encoder::Text(w) => w.final_size_bound(),
            Encoder::Parquet(w) => w.bytes_written() + w.buffered_bytes_estimate(),
        };
        if size + bound <= cap {
            return Ok(true);
        }
        if file.flushed {
            return Ok(false);
        }
        match &mut file.encoder {
            Encoder::Text(w) => w.sync_flush().map_err(io_err(&file.tmp))?,
            Encoder::Parquet(w) => w.flush_row_group().map_err(|source| StageError::Parquet {
                path: file.tmp.display().to_string(),
                source,
            })?,
        }
        file.flushed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_formats::input::RecordSource;

    fn settings(
        dir: &Path,
        format: OutputFormat,
        cap: u64,
        max_open_files: usize,
    ) -> StagerSettings {
        StagerSettings {
            format,
            log_format: LogFormat::aws_default(),
            layout: KeyLayout::Default,
            prefix: KeyPrefix::default(),
            max_file_bytes: cap,
            window_secs: 300,
            grace_secs: 60,
            gzip_level: 6,
            parquet: ParquetOptions::default(),
            max_open_files,
            writer_id: "w".into(),
            state_dir: dir.to_path_buf(),
        }
    }

    fn stream(window_end: u64) -> StreamKey {
        StreamKey {
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            flow_log_id: "fl-1".into(),
            window_end,
        }
    }

    fn record(i: u64) -> FlowRecord {
        let mut r = FlowRecord::no_data(
            Some("123456789012".into()),
            Some(format!("eni-{i:x}").into()),
            1000 + i,
            1000 + i,
        );
        r.srcaddr = Some(std::net::Ipv4Addr::from((i as u32).wrapping_mul(2_654_435_761)).into());
        r.bytes = Some(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 3);
        r
    }

    #[test]
    fn window_closes_at_end_plus_grace_and_late_files_close_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Stager::new(settings(dir.path(), OutputFormat::Text, 75_000_000, 8)).unwrap();
        let mut sealed = Vec::new();
        st.insert(&stream(1200), &record(1), 1, 1100, &mut sealed)
            .unwrap();
        st.close_due(1259, &mut sealed).unwrap();
        assert!(sealed.is_empty(), "still within grace");
        st.close_due(1260, &mut sealed).unwrap();
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].reason, SealReason::WindowClosed);
        // A late record for the closed window opens an extra file with another key.
        st.insert(&stream(1200), &record(2), 2, 1300, &mut sealed)
            .unwrap();
        st.insert(&stream(1200), &record(3), 3, 1330, &mut sealed)
            .unwrap();
        st.close_due(1389, &mut sealed).unwrap();
        assert_eq!(
            sealed.len(),
            1,
            "late file stays open while records keep arriving"
        );
        st.close_due(1390, &mut sealed).unwrap();
        assert_eq!(sealed.len(), 2);
        assert_ne!(sealed[0].key, sealed[1].key);
        assert_eq!(
            (sealed[1].first, sealed[1].last, sealed[1].records),
            (2, 3, 2)
        );
        assert!(
            sealed[0].key.contains("_19700101T0020Z_"),
            "{}",
            sealed[0].key
        );
    }

    #[test]
    fn size_cap_holds_for_text_and_parquet() {
        for (format, cap) in [
            (OutputFormat::Text, 70_000u64),
            (OutputFormat::Parquet, 200_000),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut st = Stager::new(settings(dir.path(), format, cap, 8)).unwrap();
            let mut sealed = Vec::new();
            for i in 0..30_000u64 {
                st.insert(&stream(1200), &record(i), i, 1100, &mut sealed)
                    .unwrap();
            }
            st.seal_all(&mut sealed).unwrap();
            assert!(sealed.len() > 3, "{format:?}: {}", sealed.len());
            let mut total = 0;
            for f in &sealed {
                let len = std::fs::metadata(&f.path).unwrap().len();
                assert_eq!(len, f.bytes);
                assert!(len <= cap, "{format:?}: {len} > {cap}");
                total += RecordSource::open_path(&f.path, None).unwrap().count();
            }
            assert_eq!(total, 30_000);
            let keys: std::collections::HashSet<_> = sealed.iter().map(|f| f.key.clone()).collect();
            assert_eq!(keys.len(), sealed.len(), "distinct keys");
        }
    }

    #[test]
    fn open_file_limit_seals_the_least_recently_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Stager::new(settings(dir.path(), OutputFormat::Text, 75_000_000, 2)).unwrap();
        let mut sealed = Vec::new();
        st.insert(&stream(300), &record(1), 1, 0, &mut sealed)
            .unwrap();
        st.insert(&stream(600), &record(2), 2, 0, &mut sealed)
            .unwrap();
        st.insert(&stream(300), &record(3), 3, 0, &mut sealed)
            .unwrap();
        st.insert(&stream(900), &record(4), 4, 0, &mut sealed)
            .unwrap();
        assert_eq!(sealed.len(), 1);
        assert_eq!(
            (sealed[0].stream.window_end, sealed[0].reason),
            (600, SealReason::OpenFileLimit)
        );
        assert_eq!(st.open_files(), 2);
        assert_eq!(st.min_open_position(), Some(1));
    }
}
