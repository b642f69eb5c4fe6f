//! The publishing pipeline: records in, correct objects out, nothing lost or duplicated.
//!
//! ```text
//! submit(batch) ─▶ WAL append (+fsync) ─▶ stager (one open file per stream) ─▶ sealed file
//!   ─▶ manifest "sealed" (fsync) ─▶ upload (retry forever) ─▶ manifest "uploaded" ─▶ delete
//!   staged file ─▶ reclaim WAL below the lowest position still open or unpublished
//! ```
//!
//! One thread owns the WAL, the stager and the manifest; uploads run as tasks on a tokio
//! runtime and report back over a channel. After a crash, [`Pipeline::start`] re-queues
//! every sealed file the manifest has not seen confirmed (same key, same bytes) and replays
//! the WAL, skipping records that are already in sealed files, so every record is published
//! exactly once.

pub mod batch;
pub mod manifest;
pub mod stager;
pub mod window;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowlog_formats::{FlowRecord, Text};
use tokio_util::sync::CancellationToken;

use self::batch::{BatchDecodeError, ImportMark, MAX_BATCH_RECORDS, WalBatch, lsn_of, position};
use self::manifest::{Manifest, ManifestError, SealedEntry, StoredStream};
use self::stager::{SealedFile, StageError, Stager, StagerSettings};
use self::window::{StreamKey, record_account, record_region, record_time, window_end};
use crate::config::Settings;
use crate::sink::{Backoff, ObjectSink, SinkError, put_with_retry};
use crate::telemetry::{Health, Metrics};
use crate::wal::{Wal, WalError, WalSettings};

/// Failure of the pipeline. Records already accepted stay in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The manifest failed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Staging a file failed.
    #[error(transparent)]
    Stage(#[from] StageError),
    /// A WAL entry could not be decoded.
    #[error(transparent)]
    Decode(#[from] BatchDecodeError),
    /// A batch could not be serialized.
    #[error("cannot serialize a batch for the WAL")]
    Encode(#[source] postcard::Error),
    /// A batch holds more records than positions allow.
    #[error("a batch holds {0} records; at most {MAX_BATCH_RECORDS} are allowed")]
    BatchTooLarge(usize),
    /// The pipeline thread has stopped (after an error, reported by [`Pipeline::stop`]).
    #[error("the pipeline has stopped")]
    Stopped,
}

enum Msg {
    Batch {
        batch: WalBatch,
        ack: Option<SyncSender<u64>>,
    },
    SealAll {
        reply: SyncSender<()>,
    },
    WaitPublished {
        deadline: Instant,
        reply: SyncSender<bool>,
    },
}

struct UploadJob {
    id: u64,
    key: String,
    path: PathBuf,
    bytes: u64,
    records: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    first: u64,
    window_end: u64,
    bytes: u64,
}

/// Totals of a pipeline run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Records accepted into the WAL by this run.
    pub records_in: u64,
    /// Records replayed from the WAL at startup.
    pub records_replayed: u64,
    /// Files published (confirmed by the sink) by this run.
    pub files_published: u64,
    /// Bytes published by this run.
    pub bytes_published: u64,
    /// Records in the files published by this run.
    pub records_published: u64,
}

/// Handle to a running pipeline.
#[derive(Debug)]
pub struct Pipeline {
    tx: Option<SyncSender<Msg>>,
    recycled: std::sync::Mutex<Receiver<Vec<FlowRecord>>>,
    thread: Option<JoinHandle<Result<PipelineStats, PipelineError>>>,
    imports: HashMap<String, ImportMark>,
    writer_id: String,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Pipeline {
    /// Recovers the state directory (re-queues unconfirmed files, replays the WAL) and starts
    /// the pipeline thread. Uploads run on `runtime` until `cancel` fires; a permanent sink
    /// error marks `health` unhealthy until an upload succeeds again.
    pub fn start(
        settings: &Settings,
        sink: Arc<dyn ObjectSink>,
        metrics: Arc<Metrics>,
        health: Health,
        runtime: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Result<Pipeline, PipelineError> {
        let state_dir = settings.state.dir.clone();
        let manifest = Manifest::open(&state_dir, settings.state.writer_id.as_deref())?;
        let writer_id = manifest.writer_id().to_owned();
        let mut wal_settings = WalSettings::new(state_dir.join("wal"));
        wal_settings.segment_bytes = settings.state.wal_segment_bytes;
        wal_settings.fsync = settings.state.fsync;
        let wal = Wal::open(wal_settings)?;
        let stager = Stager::new(StagerSettings {
            format: settings.output.format,
            log_format: settings.output.log_format.clone(),
            layout: settings.output.layout,
            prefix: settings.output.prefix.clone(),
            max_file_bytes: settings.output.max_file_bytes,
            window_secs: settings.output.window.as_secs(),
            grace_secs: settings.output.grace.as_secs(),
            gzip_level: settings.output.gzip_level,
            parquet: settings.output.parquet.clone(),
            max_open_files: settings.output.max_open_files,
            writer_id: writer_id.clone(),
            state_dir: state_dir.clone(),
        })?;

        // Staged files the manifest does not know are leftovers of a seal that crashed
        // before it was recorded: the WAL still has their records.
        let known: std::collections::HashSet<PathBuf> = manifest
            .pending()
            .map(|e| state_dir.join(&e.file))
            .collect();
        if let Ok(entries) = fs::read_dir(stager.sealed_dir()) {
            for entry in entries.flatten() {
                if !known.contains(&entry.path()) {
                    tracing::info!(file = %entry.path().display(), "removing staged file not recorded in the manifest");
                    let _ = fs::remove_file(entry.path());
                }
            }
        }

        let (upload_tx, upload_rx) = tokio::sync::mpsc::unbounded_channel();
        let (recycle_tx, recycled) = mpsc::sync_channel(RECYCLED_BUFFERS);
        let (done_tx, done_rx) = mpsc::channel();
        let mut imports: HashMap<String, ImportMark> = manifest
            .imports()
            .map(|m| (m.input.clone(), m.clone()))
            .collect();
        let mut core = Core {
            wal,
            stager,
            manifest,
            state_dir,
            pending: HashMap::new(),
            upload_tx,
            done_rx,
            max_pending: settings.sink.max_pending_uploads(),
            metrics: Arc::clone(&metrics),
            dirty_imports: HashMap::new(),
            window_secs: settings.output.window.as_secs(),
            grace_secs: settings.output.grace.as_secs(),
            stats: PipelineStats::default(),
            sealed_scratch: Vec::new(),
            recycle_tx,
            encode_buf: Vec::new(),
        };
        runtime.spawn(upload_loop(
            upload_rx, sink, done_tx, metrics, health, cancel,
        ));

        let unconfirmed: Vec<SealedEntry> = core.manifest.pending().cloned().collect();
        for entry in unconfirmed {
            core.requeue(entry);
        }
        let replayed_marks = core.replay()?;
        for mark in replayed_marks {
            imports.insert(mark.input.clone(), mark);
        }

        let (tx, rx) = mpsc::sync_channel(4);
        let thread = std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || core.run(rx))
            .map_err(|e| {
                PipelineError::Stage(StageError::Io {
                    path: "pipeline thread".into(),
                    source: e,
                })
            })?;
        Ok(Pipeline {
            tx: Some(tx),
            recycled: std::sync::Mutex::new(recycled),
            thread: Some(thread),
            imports,
            writer_id,
        })
    }

    /// Returns the writer id of this state directory.
    pub fn writer_id(&self) -> &str {
        &self.writer_id
    }

    /// Returns the durable progress of an import, as of startup.
    pub fn import_progress(&self, input: &str) -> Option<&ImportMark> {
        self.imports.get(input)
    }

    fn send(&self, msg: Msg) -> Result<(), PipelineError> {
        self.tx
            .as_ref()
            .ok_or(PipelineError::Stopped)?
            .send(msg)
            .map_err(|_| PipelineError::Stopped)
    }

    /// Returns an empty record buffer for the next batch: one the pipeline has finished
    /// with, when there is one. Reusing the large batch buffers keeps the allocator from
    /// fragmenting the heap (peak memory then stays flat however much is imported).
    pub fn record_buffer(&self, capacity: usize) -> Vec<FlowRecord> {
        let recycled = self.recycled.lock().ok().and_then(|rx| rx.try_recv().ok());
        recycled.unwrap_or_else(|| Vec::with_capacity(capacity))
    }

    /// Queues a batch (blocks while the pipeline is busy: backpressure). The batch is in the
    /// WAL once a later call returns, or when [`Pipeline::submit_acked`] returns.
    pub fn submit(&self, batch: WalBatch) -> Result<(), PipelineError> {
        if batch.records.len() > MAX_BATCH_RECORDS {
            return Err(PipelineError::BatchTooLarge(batch.records.len()));
        }
        self.send(Msg::Batch { batch, ack: None })
    }

    /// Appends a batch and returns its LSN once it is durable in the WAL.
    pub fn submit_acked(&self, batch: WalBatch) -> Result<u64, PipelineError> {
        if batch.records.len() > MAX_BATCH_RECORDS {
            return Err(PipelineError::BatchTooLarge(batch.records.len()));
        }
        let (ack, rx) = mpsc::sync_channel(1);
        self.send(Msg::Batch {
            batch,
            ack: Some(ack),
        })?;
        rx.recv().map_err(|_| PipelineError::Stopped)
    }

    /// Seals every open file (shutdown, end of an import) and queues them for upload.
    pub fn seal_all(&self) -> Result<(), PipelineError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Msg::SealAll { reply })?;
        rx.recv().map_err(|_| PipelineError::Stopped)
    }

    /// Waits until every sealed file is confirmed by the sink, or `timeout` passes.
    /// Returns true if everything was published.
    pub fn wait_published(&self, timeout: Duration) -> Result<bool, PipelineError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Msg::WaitPublished {
            deadline: Instant::now() + timeout,
            reply,
        })?;
        rx.recv().map_err(|_| PipelineError::Stopped)
    }

    /// Stops the thread and returns the run's totals (or the error that stopped it).
    pub fn stop(mut self) -> Result<PipelineStats, PipelineError> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) | None => Err(PipelineError::Stopped),
        }
    }
}

async fn upload_loop(
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<UploadJob>,
    sink: Arc<dyn ObjectSink>,
    done: Sender<(u64, u64, u64)>,
    metrics: Arc<Metrics>,
    health: Health,
    cancel: CancellationToken,
) {
    let backoff = Backoff::default();
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            () = cancel.cancelled() => None,
        };
        let Some(job) = job else { break };
        let (sink, done, metrics, health, cancel, backoff) = (
            Arc::clone(&sink),
            done.clone(),
            Arc::clone(&metrics),
            health.clone(),
            cancel.clone(),
            backoff.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let kind = sink.kind();
            let observe = |e: &SinkError| {
                metrics.observe_upload_failure(kind, e.is_retryable());
                if !e.is_retryable() {
                    health.set_unhealthy("sink", e.to_string());
                }
            };
            if put_with_retry(&*sink, &job.key, &job.path, &backoff, &cancel, &observe)
                .await
                .is_some()
            {
                health.set_healthy("sink");
                metrics.observe_upload(kind, job.bytes, job.records, started.elapsed());
                let _ = done.send((job.id, job.bytes, job.records));
            }
        });
    }
}

/// Finished batch buffers kept for reuse.
const RECYCLED_BUFFERS: usize = 8;

struct Core {
    wal: Wal,
    stager: Stager,
    manifest: Manifest,
    state_dir: PathBuf,
    pending: HashMap<u64, Pending>,
    upload_tx: tokio::sync::mpsc::UnboundedSender<UploadJob>,
    done_rx: Receiver<(u64, u64, u64)>,
    max_pending: usize,
    metrics: Arc<Metrics>,
    dirty_imports: HashMap<String, ImportMark>,
    window_secs: u64,
    grace_secs: u64,
    stats: PipelineStats,
    sealed_scratch: Vec<SealedFile>,
    recycle_tx: SyncSender<Vec<FlowRecord>>,
    encode_buf: Vec<u8>,
}

impl Core {
    fn run(mut self, rx: Receiver<Msg>) -> Result<PipelineStats, PipelineError> {
        let tick = Duration::from_secs(1);
        let mut last_tick = Instant::now();
        loop {
            self.drain_done()?;
            let msg = rx.recv_timeout(tick.saturating_sub(last_tick.elapsed()));
            if last_tick.elapsed() >= tick {
                last_tick = Instant::now();
                let now = unix_now();
                let mut sealed = std::mem::take(&mut self.sealed_scratch);
                self.stager.close_due(now, &mut sealed)?;
                self.publish(&mut sealed)?;
                self.sealed_scratch = sealed;
                self.update_gauges(now);
            }
            match msg {
                Ok(Msg::Batch { batch, ack }) => {
                    let lsn = self.append(&batch)?;
                    if let Some(ack) = ack {
                        let _ = ack.send(lsn);
                    }
                    let mut records = batch.records;
                    records.clear();
                    let _ = self.recycle_tx.try_send(records);
                }
                Ok(Msg::SealAll { reply }) => {
                    let mut sealed = Vec::new();
                    self.stager.seal_all(&mut sealed)?;
                    self.publish(&mut sealed)?;
                    self.persist_imports()?;
                    let _ = reply.send(());
                }
                Ok(Msg::WaitPublished { deadline, reply }) => {
                    while !self.pending.is_empty() && Instant::now() < deadline {
                        match self
                            .done_rx
                            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                        {
                            Ok(done) => self.handle_done(done)?,
                            Err(_) => break,
                        }
                    }
                    let _ = reply.send(self.pending.is_empty());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.persist_imports()?;
        self.wal.sync()?;
        Ok(self.stats)
    }

    /// Appends a live batch to the WAL and stages its records.
    fn append(&mut self, batch: &WalBatch) -> Result<u64, PipelineError> {
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        let buf = postcard::to_extend(batch, buf).map_err(PipelineError::Encode)?;
        let lsn = self.wal.append(&buf);
        self.encode_buf = buf;
        let lsn = lsn?;
        let n = batch.records.len() as u64;
        self.stats.records_in += n;
        self.metrics.records_in.inc_by(n);
        self.stage(lsn, batch, false)?;
        if let Some(mark) = &batch.import {
            self.dirty_imports.insert(mark.input.clone(), mark.clone());
        }
        Ok(lsn)
    }

    /// Stages the records of one batch; on replay, records already sealed are skipped.
    fn stage(&mut self, lsn: u64, batch: &WalBatch, replay: bool) -> Result<(), PipelineError> {
        let now = unix_now();
        let account: Text = batch.account_id.as_str().into();
        let region: Text = batch.region.as_str().into();
        let flow_log_id: Text = batch.flow_log_id.as_str().into();
        let mut sealed = std::mem::take(&mut self.sealed_scratch);
        let mut late = 0u64;
        for (i, record) in batch.records.iter().enumerate() {
            let stream = StreamKey {
                account_id: Text::clone(record_account(record, &account)),
                region: Text::clone(record_region(record, &region)),
                flow_log_id: Text::clone(&flow_log_id),
                window_end: window_end(record_time(record, now), self.window_secs),
            };
            let pos = position(lsn, i);
            if replay
                && self
                    .manifest
                    .sealed_through(&stream)
                    .is_some_and(|t| pos <= t)
            {
                continue;
            }
            if !replay && stream.window_end + self.grace_secs <= now {
                late += 1;
            }
            self.stager.insert(&stream, record, pos, now, &mut sealed)?;
            if !sealed.is_empty() {
                self.publish(&mut sealed)?;
            }
        }
        self.sealed_scratch = sealed;
        self.metrics.late_records.inc_by(late);
        Ok(())
    }

    /// Replays the WAL at startup; returns the import marks it holds.
    fn replay(&mut self) -> Result<Vec<ImportMark>, PipelineError> {
        let mut marks: HashMap<String, ImportMark> = HashMap::new();
        let from = self.wal.first_lsn();
        let entries: Vec<(u64, Vec<u8>)> = self.wal.replay(from)?.collect::<Result<_, _>>()?;
        for (lsn, bytes) in entries {
            let batch = WalBatch::decode(lsn, &bytes)?;
            self.stats.records_replayed += batch.records.len() as u64;
            self.stage(lsn, &batch, true)?;
            if let Some(mark) = batch.import {
                marks.insert(mark.input.clone(), mark.clone());
                self.dirty_imports.insert(mark.input.clone(), mark);
            }
        }
        if self.stats.records_replayed > 0 {
            tracing::info!(
                records = self.stats.records_replayed,
                open_files = self.stager.open_files(),
                "replayed the WAL"
            );
        }
        Ok(marks.into_values().collect())
    }

    /// Records sealed files in the manifest and queues them for upload, waiting while too
    /// many uploads are pending (backpressure).
    fn publish(&mut self, sealed: &mut Vec<SealedFile>) -> Result<(), PipelineError> {
        for file in sealed.drain(..) {
            while self.pending.len() >= self.max_pending {
                match self.done_rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(done) => self.handle_done(done)?,
                    Err(_) => self.update_gauges(unix_now()),
                }
            }
            self.metrics.observe_sealed(file.reason.as_str());
            let relative = file
                .path
                .strip_prefix(&self.state_dir)
                .unwrap_or(&file.path)
                .display()
                .to_string();
            let entry = SealedEntry {
                id: 0,
                key: file.key.clone(),
                file: relative,
                bytes: file.bytes,
                records: file.records,
                stream: StoredStream::from(&file.stream),
                first: file.first,
                last: file.last,
            };
            let id = self.manifest.record_sealed(entry.clone())?;
            self.requeue(SealedEntry { id, ..entry });
        }
        Ok(())
    }

    fn requeue(&mut self, entry: SealedEntry) {
        self.pending.insert(
            entry.id,
            Pending {
                first: entry.first,
                window_end: entry.stream.window_end,
                bytes: entry.bytes,
            },
        );
        let job = UploadJob {
            id: entry.id,
            key: entry.key,
            path: self.state_dir.join(&entry.file),
            bytes: entry.bytes,
            records: entry.records,
        };
        if self.upload_tx.send(job).is_err() {
            tracing::error!(
                "the uploader has stopped; staged files will be uploaded at the next start"
            );
        }
    }

    fn drain_done(&mut self) -> Result<(), PipelineError> {
        while let Ok(done) = self.done_rx.try_recv() {
            self.handle_done(done)?;
        }
        Ok(())
    }

    fn handle_done(&mut self, (id, bytes, records): (u64, u64, u64)) -> Result<(), PipelineError> {
        if let Some(entry) = self.manifest.record_uploaded(id)? {
            let path = self.state_dir.join(&entry.file);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a published staged file");
            }
        }
        self.pending.remove(&id);
        self.stats.files_published += 1;
        self.stats.bytes_published += bytes;
        self.stats.records_published += records;
        self.reclaim()
    }

    fn persist_imports(&mut self) -> Result<(), PipelineError> {
        for (_, mark) in self.dirty_imports.drain() {
            self.manifest.record_import(&mark)?;
        }
        Ok(())
    }

    /// Frees WAL segments whose records are all published.
    fn reclaim(&mut self) -> Result<(), PipelineError> {
        let lowest = self
            .stager
            .min_open_position()
            .into_iter()
            .chain(self.pending.values().map(|p| p.first))
            .min();
        let below = lowest.map_or(self.wal.next_lsn(), lsn_of);
        if below > self.wal.first_lsn() {
            self.persist_imports()?;
            self.wal.reclaim(below)?;
            self.manifest
                .compact_if_large(position(self.wal.first_lsn(), 0))?;
        }
        Ok(())
    }

    fn update_gauges(&self, now: u64) {
        let staged: u64 = self.pending.values().map(|p| p.bytes).sum();
        let oldest = self
            .pending
            .values()
            .map(|p| p.window_end)
            .chain(self.stager.oldest_open_window())
            .min();
        self.metrics.set_pipeline_gauges(
            staged,
            self.pending.len() as u64,
            self.stager.open_files() as u64,
            self.wal.disk_bytes(),
            oldest.map_or(0, |w| now.saturating_sub(w)),
        );
    }
}
