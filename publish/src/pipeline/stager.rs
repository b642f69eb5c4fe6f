//! The window stage: records gathered per stream (account, region, flow log, window) and
//! handed to the encoder workers, so that a stream becomes one file whatever the order of
//! the input and however many streams are live at once.
//!
//! A stream's records wait in memory until
//! - its window closes (serve and the agent: end + grace by the clock; a stream opened
//!   after its window closed, by late records, closes `grace` after it opened), or its
//!   input ends (`import` never closes by the clock), or shutdown: the records go to the
//!   stream's encoder and its file is sealed;
//! - it holds [`CHUNK_RECORDS`]: they go to its encoder, which keeps the file open and
//!   seals it only at the size cap (the stream goes on in the next file);
//! - memory runs over `memory_budget`: the streams holding the most records in memory are
//!   handed to their encoders (their files stay open); if open encoders themselves are
//!   what fills the budget, the largest stream's file is sealed (an extra file, never one
//!   record per file while streams with more exist);
//! - the WAL grows over its limit: the streams holding its oldest records are sealed so
//!   that it can be reclaimed.
//!
//! Files are written under `staging/open/` and, once sealed (finished, fsync'd), renamed to
//! `staging/sealed/<file name>` by the encoders (see [`super::encoder`]). Keys are
//! deterministic: the hash in a file's name comes from (writer id, window, position of the
//! file's first record), so a file rebuilt from the WAL after a crash gets the same key.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Instant;

use flowlog_formats::key::{KeyLayout, KeyPrefix};
use flowlog_formats::parquet::ParquetOptions;
use flowlog_formats::{FlowRecord, LogFormat};

use super::encoder::{Done, EncodeSettings, Encoders, Job, PARQUET_FILE_BUFFER, SPILL_BYTES};
use super::sealed::io_err;
pub use super::sealed::{SealReason, SealedFile, StageError};
use super::window::StreamKey;
use crate::file_modes;
use crate::settings::OutputFormat;

/// Records a stream gathers before they are handed to its encoder.
pub const CHUNK_RECORDS: usize = 4096;

/// Memory one record waiting in a stream is counted for (the record, its position, and
/// an allowance for its texts).
pub const RECORD_BYTES: u64 = (std::mem::size_of::<FlowRecord>() + 8 + 64) as u64;

/// Memory an open text encoder is counted for (deflate state and buffers).
const TEXT_ENCODER_BYTES: u64 = 512 * 1024 + SPILL_BYTES as u64;

/// Memory an open Parquet encoder is counted for (buffered rows and buffers).
const PARQUET_ENCODER_BYTES: u64 = PARQUET_FILE_BUFFER + 512 * 1024 + SPILL_BYTES as u64;

/// A stream holding less than this in memory is not worth an encoder of its own when
/// memory runs short: the largest stream's file is sealed instead.
const MIN_HANDOFF_BYTES: u64 = 64 * RECORD_BYTES;

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
    /// Encoder threads.
    pub workers: usize,
    /// Memory for records waiting in streams and for open encoders.
    pub memory_budget: u64,
    /// Close windows by the clock (serve, agent) rather than by the end of the input
    /// (import).
    pub close_by_clock: bool,
    /// Writer id (goes into every hash).
    pub writer_id: String,
    /// The state directory (`staging/` lives below it).
    pub state_dir: PathBuf,
}

/// One live stream: records waiting in memory and, once it has one, an open file at its
/// encoder.
#[derive(Debug)]
struct Stream {
    /// Incarnation id: the encoder's name for this stream's open file(s).
    sid: u64,
    worker: usize,
    /// Position of the stream's first record not yet in a sealed file.
    first: u64,
    records: Vec<FlowRecord>,
    positions: Vec<u64>,
    /// Records handed to the encoder.
    sent: u64,
    /// Opened after its window closed (late records).
    late: bool,
    /// Wall clock when it opened.
    opened_at: u64,
}

impl Stream {
    fn waiting_bytes(&self) -> u64 {
        self.records.len() as u64 * RECORD_BYTES
    }
}

/// The window stage. Not thread-safe: one pipeline thread owns it; encoding runs on the
/// encoder workers.
#[derive(Debug)]
pub struct Stager {
    settings: StagerSettings,
    /// Hashed with foldhash: one lookup per record, SipHash's cost showed in profiles.
    streams: HashMap<StreamKey, Stream, foldhash::fast::RandomState>,
    encoders: Encoders,
    done: Receiver<Done>,
    next_sid: u64,
    /// Incarnations told to seal whose files are not all reported yet: (first, window end).
    sealing: HashMap<u64, (u64, u64)>,
    /// Records waiting in streams.
    waiting: u64,
    /// Streams with an open file at their encoder.
    encoding: usize,
    encoder_bytes: u64,
    sealed_dir: PathBuf,
}

impl Stager {
    /// Creates the stage and starts its encoders; files left in `staging/open/` by an
    /// earlier run are deleted (their records are still in the WAL and will be replayed).
    pub fn new(settings: StagerSettings) -> Result<Stager, StageError> {
        let open_dir = settings.state_dir.join("staging/open");
        let sealed_dir = settings.state_dir.join("staging/sealed");
        if open_dir.exists() {
            fs::remove_dir_all(&open_dir).map_err(io_err(&open_dir))?;
        }
        file_modes::create_dir_all(&open_dir, file_modes::STATE_DIR_MODE)
            .map_err(io_err(&open_dir))?;
        file_modes::create_dir_all(&sealed_dir, file_modes::STATE_DIR_MODE)
            .map_err(io_err(&sealed_dir))?;
        let (done_tx, done) = mpsc::channel();
        let encoders = Encoders::start(
            EncodeSettings {
                format: settings.format,
                log_format: settings.log_format.clone(),
                layout: settings.layout,
                prefix: settings.prefix.clone(),
                max_file_bytes: settings.max_file_bytes,
                gzip_level: settings.gzip_level,
                parquet: settings.parquet.clone(),
                writer_id: settings.writer_id.clone(),
                open_dir,
                sealed_dir: sealed_dir.clone(),
            },
            settings.workers,
            done_tx,
        )?;
        let encoder_bytes = match settings.format {
            OutputFormat::Text => TEXT_ENCODER_BYTES,
            OutputFormat::Parquet => PARQUET_ENCODER_BYTES,
        };
        Ok(Stager {
            settings,
            streams: HashMap::default(),
            encoders,
            done,
            next_sid: 0,
            sealing: HashMap::new(),
            waiting: 0,
            encoding: 0,
            encoder_bytes,
            sealed_dir,
        })
    }

    /// Returns the directory sealed files are staged in.
    pub fn sealed_dir(&self) -> &Path {
        &self.sealed_dir
    }

    /// Returns the number of live streams (records waiting or a file open).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Returns the memory counted against `memory_budget`.
    pub fn memory_used(&self) -> u64 {
        self.waiting * RECORD_BYTES + self.encoding as u64 * self.encoder_bytes
    }

    /// Returns the lowest position not yet in a sealed file (its record must stay in the
    /// WAL).
    pub fn min_open_position(&self) -> Option<u64> {
        self.streams
            .values()
            .map(|s| s.first)
            .chain(self.sealing.values().map(|(first, _)| *first))
            .min()
    }

    /// Returns the oldest window end with records not yet in a sealed file.
    pub fn oldest_open_window(&self) -> Option<u64> {
        self.streams
            .keys()
            .map(|k| k.window_end)
            .chain(self.sealing.values().map(|(_, end)| *end))
            .min()
    }

    /// Returns true when no seal is in progress at the encoders.
    pub fn is_idle(&self) -> bool {
        self.sealing.is_empty()
    }

    /// Adds a record at `position` to its stream. `now` is the wall clock (Unix seconds).
    pub fn insert(
        &mut self,
        stream: &StreamKey,
        record: FlowRecord,
        position: u64,
        now: u64,
    ) -> Result<(), StageError> {
        let s = match self.streams.get_mut(stream) {
            Some(s) => s,
            None => {
                let sid = self.next_sid;
                self.next_sid += 1;
                let late = self.settings.close_by_clock
                    && stream.window_end.saturating_add(self.settings.grace_secs) <= now;
                self.streams.entry(stream.clone()).or_insert(Stream {
                    sid,
                    worker: (sid % self.encoders.workers() as u64) as usize,
                    first: position,
                    records: Vec::new(),
                    positions: Vec::new(),
                    sent: 0,
                    late,
                    opened_at: now,
                })
            }
        };
        s.records.push(record);
        s.positions.push(position);
        self.waiting += 1;
        if s.records.len() >= CHUNK_RECORDS {
            self.hand_off(stream, None)?;
        }
        if self.memory_used() > self.settings.memory_budget {
            self.relieve()?;
        }
        Ok(())
    }

    /// Hands a stream's waiting records to its encoder, and seals its file if `seal` says
    /// so (the stream is then no longer live).
    fn hand_off(&mut self, key: &StreamKey, seal: Option<SealReason>) -> Result<(), StageError> {
        let Some(s) = self.streams.get_mut(key) else {
            return Ok(());
        };
        let records = std::mem::take(&mut s.records);
        let positions = std::mem::take(&mut s.positions);
        self.waiting -= records.len() as u64;
        let (sid, worker, first) = (s.sid, s.worker, s.first);
        let had_file = s.sent > 0;
        s.sent += records.len() as u64;
        match seal {
            None if !had_file && !records.is_empty() => self.encoding += 1,
            None => {}
            Some(_) => {
                if had_file {
                    self.encoding -= 1;
                }
                self.streams.remove(key);
                self.sealing.insert(sid, (first, key.window_end));
            }
        }
        if records.is_empty() && seal.is_none() {
            return Ok(());
        }
        let job = Job {
            sid,
            stream: key.clone(),
            records,
            positions,
            seal,
        };
        self.encoders.send(worker, job).map_err(|stopped| {
            // A worker stops only after reporting why: prefer that error.
            std::iter::from_fn(|| self.done.try_recv().ok())
                .find_map(|done| match done {
                    Done::Failed(e) => Some(e),
                    _ => None,
                })
                .unwrap_or(stopped)
        })
    }

    /// Brings memory back under 7/8 of the budget: the streams with the most records
    /// waiting go to their encoders; when open encoders are what fills the budget, the
    /// largest stream's file is sealed.
    fn relieve(&mut self) -> Result<(), StageError> {
        let target = self.settings.memory_budget / 8 * 7;
        let mut by_waiting: Vec<(u64, StreamKey)> = self
            .streams
            .iter()
            .map(|(k, s)| (s.waiting_bytes(), k.clone()))
            .collect();
        by_waiting.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
        for (bytes, key) in by_waiting {
            if self.memory_used() <= target {
                return Ok(());
            }
            let has_file = self.streams.get(&key).is_some_and(|s| s.sent > 0);
            if has_file || bytes >= MIN_HANDOFF_BYTES.max(self.encoder_bytes) {
                self.hand_off(&key, None)?;
            } else {
                break;
            }
        }
        // What is left is open encoders and small streams: seal the largest streams.
        while self.memory_used() > target {
            let largest = self
                .streams
                .iter()
                .max_by_key(|(_, s)| (s.sent + s.records.len() as u64, std::cmp::Reverse(s.sid)))
                .map(|(k, _)| k.clone());
            let Some(key) = largest else { break };
            self.hand_off(&key, Some(SealReason::MemoryBudget))?;
        }
        Ok(())
    }

    /// Seals the streams whose window closed (`end + grace <= now`) and late streams open
    /// for the grace period. Does nothing when windows close by input (import).
    pub fn close_due(&mut self, now: u64) -> Result<(), StageError> {
        if !self.settings.close_by_clock {
            return Ok(());
        }
        let grace = self.settings.grace_secs;
        let due: Vec<StreamKey> = self
            .streams
            .iter()
            .filter(|(k, s)| {
                if s.late {
                    s.opened_at.saturating_add(grace) <= now
                } else {
                    k.window_end.saturating_add(grace) <= now
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in due {
            self.hand_off(&k, Some(SealReason::WindowClosed))?;
        }
        Ok(())
    }

    /// Seals the streams holding a record below `position` (the WAL is over its limit).
    pub fn seal_below(&mut self, position: u64) -> Result<usize, StageError> {
        let mut due: Vec<(u64, StreamKey)> = self
            .streams
            .iter()
            .filter(|(_, s)| s.first < position)
            .map(|(k, s)| (s.first, k.clone()))
            .collect();
        due.sort_unstable();
        for (_, k) in &due {
            self.hand_off(k, Some(SealReason::WalLimit))?;
        }
        Ok(due.len())
    }

    /// Seals every stream, oldest window first, until `deadline` (then the rest stays
    /// live, in the WAL). Returns whether every stream was handed over.
    pub fn seal_all(&mut self, deadline: Option<Instant>) -> Result<bool, StageError> {
        let mut all: Vec<StreamKey> = self.streams.keys().cloned().collect();
        all.sort_unstable_by(|a, b| a.window_end.cmp(&b.window_end).then_with(|| a.cmp(b)));
        for k in all {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            self.hand_off(&k, Some(SealReason::Flush))?;
        }
        Ok(true)
    }

    /// Moves every file the encoders sealed so far into `sealed`.
    pub fn collect(&mut self, sealed: &mut Vec<SealedFile>) -> Result<(), StageError> {
        while let Ok(done) = self.done.try_recv() {
            self.take(done, sealed)?;
        }
        Ok(())
    }

    /// Waits until `deadline` for the encoders to report, then collects like
    /// [`Stager::collect`]. Returns false when the deadline passed with nothing reported.
    pub fn collect_until(
        &mut self,
        deadline: Instant,
        sealed: &mut Vec<SealedFile>,
    ) -> Result<bool, StageError> {
        match self
            .done
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(done) => self.take(done, sealed)?,
            Err(RecvTimeoutError::Timeout) => return Ok(false),
            Err(RecvTimeoutError::Disconnected) => {
                return Err(StageError::Io {
                    path: "encoder thread".into(),
                    source: std::io::Error::other("the encoder threads have stopped"),
                });
            }
        }
        self.collect(sealed)?;
        Ok(true)
    }

    fn take(&mut self, done: Done, sealed: &mut Vec<SealedFile>) -> Result<(), StageError> {
        match done {
            Done::Sealed(file) => {
                if file.reason == SealReason::SizeCap
                    && let Some(s) = self.streams.get_mut(&file.stream)
                {
                    // The stream goes on in a new file; its records up to here are sealed.
                    if s.first <= file.last {
                        s.first = file.last + 1;
                    }
                }
                sealed.push(file);
            }
            Done::Closed(sid) => {
                self.sealing.remove(&sid);
            }
            Done::Failed(e) => return Err(e),
        }
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_formats::input::RecordSource;
    use std::time::Duration;

    fn settings(dir: &Path, format: OutputFormat, cap: u64, by_clock: bool) -> StagerSettings {
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
            workers: 2,
            memory_budget: 1 << 30,
            close_by_clock: by_clock,
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

    /// Waits for every seal in progress and returns all files sealed so far.
    fn settle(st: &mut Stager, sealed: &mut Vec<SealedFile>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !st.is_idle() {
            assert!(
                st.collect_until(deadline, sealed).unwrap(),
                "encoders stuck"
            );
        }
        st.collect(sealed).unwrap();
    }

    fn records_in(files: &[SealedFile]) -> usize {
        files
            .iter()
            .map(|f| RecordSource::open_path(&f.path, None).unwrap().count())
            .sum()
    }

    #[test]
    fn window_closes_at_end_plus_grace_and_late_streams_close_grace_after_they_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut st =
            Stager::new(settings(dir.path(), OutputFormat::Text, 75_000_000, true)).unwrap();
        let mut sealed = Vec::new();
        st.insert(&stream(1200), record(1), 1, 1100).unwrap();
        st.close_due(1259).unwrap();
        settle(&mut st, &mut sealed);
        assert!(sealed.is_empty(), "still within grace");
        st.close_due(1260).unwrap();
        settle(&mut st, &mut sealed);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].reason, SealReason::WindowClosed);
        // Late records for the closed window go into one extra file with another key,
        // sealed `grace` after the first of them arrived, however they keep coming.
        st.insert(&stream(1200), record(2), 2, 1300).unwrap();
        st.insert(&stream(1200), record(3), 3, 1330).unwrap();
        st.close_due(1359).unwrap();
        st.insert(&stream(1200), record(4), 4, 1359).unwrap();
        settle(&mut st, &mut sealed);
        assert_eq!(sealed.len(), 1, "the late stream is open for its grace");
        st.close_due(1360).unwrap();
        settle(&mut st, &mut sealed);
        assert_eq!(sealed.len(), 2);
        assert_ne!(sealed[0].key, sealed[1].key);
        assert_eq!(
            (sealed[1].first, sealed[1].last, sealed[1].records),
            (2, 4, 3)
        );
        assert!(
            sealed[0].key.contains("_19700101T0020Z_"),
            "{}",
            sealed[0].key
        );
        assert_eq!(st.min_open_position(), None);
    }

    #[test]
    fn import_streams_do_not_close_by_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let mut st =
            Stager::new(settings(dir.path(), OutputFormat::Text, 75_000_000, false)).unwrap();
        let mut sealed = Vec::new();
        st.insert(&stream(300), record(1), 1, 1_000_000).unwrap();
        st.close_due(2_000_000).unwrap();
        settle(&mut st, &mut sealed);
        assert!(sealed.is_empty());
        assert_eq!(st.min_open_position(), Some(1));
        assert!(st.seal_all(None).unwrap());
        settle(&mut st, &mut sealed);
        assert_eq!(sealed.len(), 1);
        assert_eq!(sealed[0].reason, SealReason::Flush);
    }

    #[test]
    fn size_cap_holds_for_text_and_parquet() {
        for (format, cap) in [
            (OutputFormat::Text, 70_000u64),
            (OutputFormat::Parquet, 200_000),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let mut st = Stager::new(settings(dir.path(), format, cap, false)).unwrap();
            let mut sealed = Vec::new();
            for i in 0..30_000u64 {
                st.insert(&stream(1200), record(i), i, 1100).unwrap();
            }
            st.seal_all(None).unwrap();
            settle(&mut st, &mut sealed);
            assert!(sealed.len() > 3, "{format:?}: {}", sealed.len());
            for f in &sealed {
                let len = std::fs::metadata(&f.path).unwrap().len();
                assert_eq!(len, f.bytes);
                assert!(len <= cap, "{format:?}: {len} > {cap}");
            }
            assert_eq!(
                sealed
                    .iter()
                    .filter(|f| f.reason == SealReason::Flush)
                    .count(),
                1,
                "one file at the end, the others at the cap"
            );
            assert_eq!(records_in(&sealed), 30_000);
            let keys: std::collections::HashSet<_> = sealed.iter().map(|f| f.key.clone()).collect();
            assert_eq!(keys.len(), sealed.len(), "distinct keys");
        }
    }

    #[test]
    fn any_number_of_streams_in_any_order_makes_one_file_each() {
        let dir = tempfile::tempdir().unwrap();
        let mut st =
            Stager::new(settings(dir.path(), OutputFormat::Text, 75_000_000, false)).unwrap();
        let mut sealed = Vec::new();
        // 3,000 streams, 10 records each, interleaved.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut order: Vec<u64> = (0..30_000).collect();
        for i in (1..order.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % (i as u64 + 1)) as usize);
        }
        for (pos, i) in order.iter().enumerate() {
            st.insert(&stream(300 * (1 + i % 3000)), record(*i), pos as u64, 0)
                .unwrap();
        }
        assert_eq!(st.open_streams(), 3000);
        st.seal_all(None).unwrap();
        settle(&mut st, &mut sealed);
        assert_eq!(sealed.len(), 3000);
        assert!(sealed.iter().all(|f| f.records == 10));
        assert_eq!(records_in(&sealed), 30_000);
    }

    /// 40 streams of 2,000 records each, interleaved, under `budget`.
    fn interleaved(budget: u64) -> Vec<SealedFile> {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), OutputFormat::Text, 75_000_000, false);
        s.memory_budget = budget;
        let mut st = Stager::new(s).unwrap();
        let mut sealed = Vec::new();
        let mut pos = 0u64;
        for round in 0..2000u64 {
            for w in 0..40u64 {
                st.insert(&stream(300 * (1 + w)), record(round * 40 + w), pos, 0)
                    .unwrap();
                pos += 1;
            }
            assert!(st.memory_used() <= budget);
        }
        st.seal_all(None).unwrap();
        settle(&mut st, &mut sealed);
        assert_eq!(records_in(&sealed), 80_000);
        sealed
    }

    #[test]
    fn over_the_memory_budget_streams_go_to_encoders_without_extra_files() {
        // 80,000 waiting records need more than 32 MiB; 40 open encoders fit.
        const { assert!(80_000 * RECORD_BYTES > 32 << 20) };
        let sealed = interleaved(32 << 20);
        assert_eq!(sealed.len(), 40);
        assert!(sealed.iter().all(|f| f.records == 2000));
    }

    #[test]
    fn when_open_encoders_fill_the_budget_the_largest_stream_is_sealed() {
        // 16 MiB holds fewer than 40 open encoders: extra files, each of many records.
        let sealed = interleaved(16 << 20);
        let extra: Vec<u64> = sealed
            .iter()
            .filter(|f| f.reason == SealReason::MemoryBudget)
            .map(|f| f.records)
            .collect();
        assert!(!extra.is_empty(), "the budget was exceeded");
        assert!(extra.iter().all(|r| *r >= 400), "{extra:?}");
        assert_eq!(sealed.len(), 40 + extra.len());
    }

    #[test]
    fn an_encoder_failure_is_reported_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), OutputFormat::Text, 75_000_000, false);
        s.workers = 1;
        let mut st = Stager::new(s).unwrap();
        // The encoder can no longer write its file.
        fs::remove_dir_all(dir.path().join("staging/open")).unwrap();
        st.insert(&stream(300), record(1), 1, 0).unwrap();
        st.seal_all(None).unwrap();
        let mut sealed = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        let err = loop {
            match st.collect_until(deadline, &mut sealed) {
                Err(e) => break e,
                Ok(got) => assert!(got, "no report from the encoder"),
            }
        };
        assert!(err.to_string().contains("staging/open/300-1.part"), "{err}");
        assert!(sealed.is_empty());
    }

    #[test]
    fn seal_below_seals_the_streams_holding_old_positions() {
        let dir = tempfile::tempdir().unwrap();
        let mut st =
            Stager::new(settings(dir.path(), OutputFormat::Text, 75_000_000, false)).unwrap();
        let mut sealed = Vec::new();
        st.insert(&stream(300), record(1), 1, 0).unwrap();
        st.insert(&stream(600), record(2), 2, 0).unwrap();
        st.insert(&stream(300), record(3), 3, 0).unwrap();
        assert_eq!(st.seal_below(2).unwrap(), 1);
        settle(&mut st, &mut sealed);
        assert_eq!(sealed.len(), 1);
        assert_eq!(
            (
                sealed[0].stream.window_end,
                sealed[0].reason,
                sealed[0].records
            ),
            (300, SealReason::WalLimit, 2)
        );
        assert_eq!(st.min_open_position(), Some(2));
    }
}
