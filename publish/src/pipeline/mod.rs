//! The publishing pipeline: records in, correct objects out, nothing lost or duplicated.
//!
//! ```text
//! submit(batch) ─▶ WAL append (+fsync) ─▶ stager (records gathered per stream) ─▶ encoder
//!   threads (one file per stream, sealed at window close / end of input / size cap)
//!   ─▶ manifest "sealed" (fsync) ─▶ upload (retry forever) ─▶ manifest "uploaded" ─▶ delete
//!   staged file ─▶ reclaim WAL below the lowest position still open or unpublished
//! ```
//!
//! One thread owns the WAL, the stager and the manifest; encoding and compression run on
//! the stager's encoder threads (one stream always on the same one), uploads as tasks on a
//! tokio runtime, and both report back over channels. After a crash, [`Pipeline::start`] re-queues
//! every sealed file the manifest has not seen confirmed (same key, same bytes) and replays
//! the WAL, skipping records that are already in sealed files, so every record is published
//! exactly once.
//!
//! Batches pushed by agents arrive as [`Delivery`]s through a [`Deliverer`], which never
//! blocks. The thread takes every delivery queued at once (group commit): drops those the
//! [`dedupe`] state already has, appends the others, makes them durable with one fsync,
//! answers them all, and only then stages their records.

pub mod batch;
pub mod dedupe;
pub mod encoder;
pub mod manifest;
pub mod sealed;
pub mod stager;
pub mod window;

use std::collections::HashMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowlog_formats::{FlowRecord, Text};
use tokio_util::sync::CancellationToken;

use self::batch::{
    BatchDecodeError, DeliveryMark, ImportMark, MAX_BATCH_RECORDS, WalBatch, decode_entry,
    encode_entry, lsn_of, position, pushed_entry_head,
};
use self::dedupe::Dedupe;
use self::manifest::{Manifest, ManifestError, SealedEntry, StoredStream};
use self::stager::{SealedFile, StageError, Stager, StagerSettings};
use self::window::{
    StreamKey, check_publishable, publishable_window_end, record_account, record_region,
    record_time,
};
use crate::quarantine::{
    Quarantine, QuarantineError, Quarantined, REASON_OUT_OF_RANGE, REASON_TIME_WINDOW,
};
use crate::settings::Settings;
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
    /// Unpublishable records could not be set aside.
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
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
        deadline: Option<Instant>,
        reply: SyncSender<bool>,
    },
    /// Deliveries are queued (see [`Deliverer::deliver`]).
    Wake,
    /// Finish (deliverers may still hold senders, so a closed channel is not enough).
    Stop,
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
    deliveries: Sender<Delivery>,
    recycled: Arc<std::sync::Mutex<Receiver<Vec<FlowRecord>>>>,
    thread: Option<JoinHandle<Result<PipelineStats, PipelineError>>>,
    imports: HashMap<String, ImportMark>,
    writer_id: String,
    deadline: ShutdownDeadline,
    quarantine: Arc<Quarantine>,
}

/// The moment by which a shutdown must be over, shared with the pipeline thread: once it
/// has passed, nothing waits for an upload slot any more (sealed files stay staged for the
/// next start) and no further stream is sealed (its records stay in the WAL). Cheap to
/// clone; set it from a signal handler with [`ShutdownDeadline::set`].
#[derive(Debug, Clone, Default)]
pub struct ShutdownDeadline(Arc<AtomicU64>);

impl ShutdownDeadline {
    /// Sets the deadline to `after` from now (an earlier deadline already set stays).
    pub fn set(&self, after: Duration) {
        let at = unix_millis().saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                (old == 0 || at < old).then_some(at)
            });
    }

    /// Returns the time left before the deadline: `None` when none is set.
    pub fn remaining(&self) -> Option<Duration> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            at => Some(Duration::from_millis(at.saturating_sub(unix_millis()))),
        }
    }

    /// Returns true once a deadline is set and has passed.
    pub fn passed(&self) -> bool {
        self.remaining().is_some_and(|d| d.is_zero())
    }

    fn instant(&self) -> Option<Instant> {
        self.remaining().map(|d| Instant::now() + d)
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A batch pushed by an agent on its way into the WAL, with its WAL entry already encoded
/// (by the caller's thread, not the pipeline's).
#[derive(Debug)]
pub struct Delivery {
    batch: WalBatch,
    mark: DeliveryMark,
    /// The WAL entry is `head` followed by `body`.
    head: Vec<u8>,
    body: bytes::Bytes,
    reply: tokio::sync::oneshot::Sender<bool>,
}

impl Delivery {
    /// Prepares a delivery, serializing `batch` for the WAL. Once the pipeline has it,
    /// `reply` receives `false` when the batch was written (and synced, as `[state] fsync`
    /// says) or `true` when the WAL already had it (a duplicate, not written again). When
    /// the pipeline fails first, `reply` is dropped without a value: the outcome is
    /// unknown.
    pub fn new(
        batch: WalBatch,
        mark: DeliveryMark,
        reply: tokio::sync::oneshot::Sender<bool>,
    ) -> Result<Delivery, PipelineError> {
        if batch.records.len() > MAX_BATCH_RECORDS {
            return Err(PipelineError::BatchTooLarge(batch.records.len()));
        }
        let head = encode_entry(&batch, Some(&mark), Vec::new()).map_err(PipelineError::Encode)?;
        Ok(Delivery {
            batch,
            mark,
            head,
            body: bytes::Bytes::new(),
            reply,
        })
    }

    /// Prepares a delivery whose WAL entry keeps `message`, the `PushRequest` exactly as
    /// received, instead of serializing the records again. `batch.records` must be what
    /// `message`'s batch decodes to (a replay of the entry decodes it again); `reply` as
    /// for [`Delivery::new`].
    pub fn pushed(
        batch: WalBatch,
        mark: DeliveryMark,
        message: bytes::Bytes,
        reply: tokio::sync::oneshot::Sender<bool>,
    ) -> Result<Delivery, PipelineError> {
        if batch.records.len() > MAX_BATCH_RECORDS {
            return Err(PipelineError::BatchTooLarge(batch.records.len()));
        }
        let head = pushed_entry_head(&batch.flow_log_id, &batch.account_id, &batch.region, &mark)
            .map_err(PipelineError::Encode)?;
        Ok(Delivery {
            batch,
            mark,
            head,
            body: message,
            reply,
        })
    }

    /// Number of records.
    pub fn records(&self) -> usize {
        self.batch.records.len()
    }
}

/// Hands [`Delivery`]s to the pipeline without blocking (for async callers). Memory is the
/// caller's to bound: the queue itself is unbounded. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Deliverer {
    deliveries: Sender<Delivery>,
    wake: SyncSender<Msg>,
    recycled: Arc<std::sync::Mutex<Receiver<Vec<FlowRecord>>>>,
}

impl Deliverer {
    /// Queues a delivery; its `reply` answers once the group it joins is committed.
    pub fn deliver(&self, delivery: Delivery) -> Result<(), PipelineError> {
        self.deliveries
            .send(delivery)
            .map_err(|_| PipelineError::Stopped)?;
        // A full channel means the thread has messages to handle, after each of which it
        // takes the queued deliveries: no wake-up is lost.
        match self.wake.try_send(Msg::Wake) {
            Ok(()) | Err(mpsc::TrySendError::Full(_)) => Ok(()),
            Err(mpsc::TrySendError::Disconnected(_)) => Err(PipelineError::Stopped),
        }
    }

    /// Returns an empty record buffer, reused when one is free (see
    /// [`Pipeline::record_buffer`]).
    pub fn record_buffer(&self, capacity: usize) -> Vec<FlowRecord> {
        recycled_buffer(&self.recycled, capacity)
    }
}

fn recycled_buffer(
    recycled: &std::sync::Mutex<Receiver<Vec<FlowRecord>>>,
    capacity: usize,
) -> Vec<FlowRecord> {
    let reused = recycled.lock().ok().and_then(|rx| rx.try_recv().ok());
    match reused {
        Some(mut buf) => {
            buf.reserve(capacity);
            buf
        }
        None => Vec::with_capacity(capacity),
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Msg")
    }
}

/// Seconds since the Unix epoch by the system clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How a pipeline closes the windows of its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// By the clock: a window closes at its end plus `[output] grace` (`serve`, the agent).
    /// Records further than `max_ahead` ahead of the clock would hold a window open for
    /// years: they are quarantined (`serve`: `[listen] max_record_ahead`).
    ByClock {
        /// How far ahead of the clock a record may end.
        max_ahead: Duration,
    },
    /// By the input (`import`): a stream is sealed when the input is done, at the size cap,
    /// or when memory or the WAL run over their limits.
    ByInput,
}

/// Default of how far ahead of the clock a record may end (`[listen] max_record_ahead`).
pub const DEFAULT_MAX_RECORD_AHEAD: Duration = Duration::from_secs(600);

impl Pipeline {
    /// Recovers the state directory (re-queues unconfirmed files, replays the WAL) and starts
    /// the pipeline thread, closing windows by the clock (the agent) and quarantining records
    /// more than [`DEFAULT_MAX_RECORD_AHEAD`] ahead of it. Uploads run on `runtime` until
    /// `cancel` fires; a permanent sink error marks `health` unhealthy until an upload
    /// succeeds again.
    pub fn start(
        settings: &Settings,
        sink: Arc<dyn ObjectSink>,
        metrics: Arc<Metrics>,
        health: Health,
        runtime: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Result<Pipeline, PipelineError> {
        let windows = Windows::ByClock {
            max_ahead: DEFAULT_MAX_RECORD_AHEAD,
        };
        Pipeline::start_with(settings, windows, sink, metrics, health, runtime, cancel)
    }

    /// Like [`Pipeline::start`] for historical input (`import`): windows are not closed by
    /// the clock; a stream is sealed when the input is done ([`Pipeline::seal_all`]), at
    /// the size cap, or when memory or the WAL run over their limits.
    pub fn start_import(
        settings: &Settings,
        sink: Arc<dyn ObjectSink>,
        metrics: Arc<Metrics>,
        health: Health,
        runtime: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Result<Pipeline, PipelineError> {
        Pipeline::start_with(
            settings,
            Windows::ByInput,
            sink,
            metrics,
            health,
            runtime,
            cancel,
        )
    }

    /// Starts the pipeline closing windows as `windows` says (see [`Pipeline::start`]).
    pub fn start_with(
        settings: &Settings,
        windows: Windows,
        sink: Arc<dyn ObjectSink>,
        metrics: Arc<Metrics>,
        health: Health,
        runtime: tokio::runtime::Handle,
        cancel: CancellationToken,
    ) -> Result<Pipeline, PipelineError> {
        let close_by_clock = matches!(windows, Windows::ByClock { .. });
        if settings.output.max_open_files_set {
            tracing::warn!(
                "output.max_open_files has no effect any more: files are written per stream, \
                 and output.memory_budget bounds memory; remove the key"
            );
        }
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
            workers: settings.output.workers,
            memory_budget: settings.output.memory_budget,
            close_by_clock,
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
        let dedupe = Dedupe::from_stored(manifest.agents().cloned());
        let (deliveries_tx, deliveries_rx) = mpsc::channel();
        let deadline = ShutdownDeadline::default();
        let quarantine = Arc::new(Quarantine::new(
            &state_dir,
            settings.state.max_quarantine_bytes,
            Arc::clone(&metrics),
        ));
        // Records further ahead of the clock than serve accepts would hold a window open
        // for years: by clock, they are quarantined (a WAL of an older version may hold some).
        let max_ahead_secs = match windows {
            Windows::ByClock { max_ahead } => Some(max_ahead.as_secs()),
            Windows::ByInput => None,
        };
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
            dedupe,
            deliveries: deliveries_rx,
            replay_floor: 0,
            deadline: deadline.clone(),
            max_wal_bytes: settings.state.max_wal_bytes,
            close_by_clock,
            quarantine: Arc::clone(&quarantine),
            max_ahead_secs,
        };
        runtime.spawn(upload_loop(
            upload_rx,
            sink,
            done_tx,
            metrics,
            health,
            cancel,
            settings.sink.max_pending_uploads(),
        ));

        let unconfirmed: Vec<SealedEntry> = core.manifest.pending().cloned().collect();
        for entry in unconfirmed {
            core.requeue(entry, true);
        }
        let replayed_marks = core.replay()?;
        for mark in replayed_marks {
            imports.insert(mark.input.clone(), mark);
        }

        let agents_at_start = core.dedupe.agents();
        let metrics_for_gauge = Arc::clone(&core.metrics);
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
        core_metrics_agents(&metrics_for_gauge, agents_at_start);
        Ok(Pipeline {
            tx: Some(tx),
            deliveries: deliveries_tx,
            recycled: Arc::new(std::sync::Mutex::new(recycled)),
            thread: Some(thread),
            imports,
            writer_id,
            deadline,
            quarantine,
        })
    }

    /// Returns where records that cannot be published are set aside.
    pub fn quarantine(&self) -> Arc<Quarantine> {
        Arc::clone(&self.quarantine)
    }

    /// Returns the shutdown deadline shared with the pipeline thread.
    pub fn shutdown_deadline(&self) -> ShutdownDeadline {
        self.deadline.clone()
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
        recycled_buffer(&self.recycled, capacity)
    }

    /// Returns a handle that queues batches pushed by agents (see [`Delivery`]).
    pub fn deliverer(&self) -> Result<Deliverer, PipelineError> {
        Ok(Deliverer {
            deliveries: self.deliveries.clone(),
            wake: self.tx.clone().ok_or(PipelineError::Stopped)?,
            recycled: Arc::clone(&self.recycled),
        })
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

    /// Seals every live stream (shutdown, end of an import), waits for the encoders and
    /// queues the files for upload.
    pub fn seal_all(&self) -> Result<(), PipelineError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Msg::SealAll {
            deadline: None,
            reply,
        })?;
        rx.recv().map(|_| ()).map_err(|_| PipelineError::Stopped)
    }

    /// Ends a run within `grace` (from now, or from an earlier [`ShutdownDeadline::set`]):
    /// seals what can be sealed and waits for the uploads until the deadline. What is not
    /// sealed by then stays in the WAL, what is not uploaded stays staged; both go out at
    /// the next start. Returns true when everything was published.
    pub fn finish(&self, grace: Duration) -> Result<bool, PipelineError> {
        self.deadline.set(grace);
        let deadline = self.deadline.instant().unwrap_or_else(Instant::now);
        let (reply, rx) = mpsc::sync_channel(1);
        self.send(Msg::SealAll {
            deadline: Some(deadline),
            reply,
        })?;
        let sealed = rx.recv().map_err(|_| PipelineError::Stopped)?;
        let published = self.wait_published(deadline.saturating_duration_since(Instant::now()))?;
        Ok(sealed && published)
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

    /// Returns whether the pipeline thread has ended (after an error, or [`Pipeline::stop`]).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread and returns the run's totals (or the error that stopped it).
    pub fn stop(mut self) -> Result<PipelineStats, PipelineError> {
        if let Some(tx) = self.tx.take() {
            // Fails only when the thread has already ended; joining tells why.
            let _ = tx.send(Msg::Stop);
        }
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
    concurrency: usize,
) {
    let backoff = Backoff::default();
    // A group of files sealed at once (a window closing for thousands of streams) is
    // uploaded at most `concurrency` at a time.
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            () = cancel.cancelled() => None,
        };
        let Some(job) = job else { break };
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.ok(),
            () = cancel.cancelled() => None,
        };
        let Some(slot) = slot else { break };
        let (sink, done, metrics, health, cancel, backoff) = (
            Arc::clone(&sink),
            done.clone(),
            Arc::clone(&metrics),
            health.clone(),
            cancel.clone(),
            backoff.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
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
    dedupe: Dedupe,
    deliveries: Receiver<Delivery>,
    /// While the WAL is replayed, the LSN being replayed: nothing from it on is reclaimed.
    replay_floor: u64,
    deadline: ShutdownDeadline,
    max_wal_bytes: u64,
    close_by_clock: bool,
    quarantine: Arc<Quarantine>,
    /// By clock: records whose time is further ahead of now than this are quarantined.
    max_ahead_secs: Option<u64>,
}

fn core_metrics_agents(metrics: &Metrics, agents: usize) {
    metrics
        .ingest_agents
        .set(i64::try_from(agents).unwrap_or(i64::MAX));
}

impl Core {
    fn run(mut self, rx: Receiver<Msg>) -> Result<PipelineStats, PipelineError> {
        let tick = Duration::from_secs(1);
        let mut last_tick = Instant::now();
        loop {
            self.drain_done()?;
            self.collect_sealed()?;
            let msg = rx.recv_timeout(tick.saturating_sub(last_tick.elapsed()));
            if last_tick.elapsed() >= tick {
                last_tick = Instant::now();
                let now = unix_now();
                self.stager.close_due(now)?;
                self.limit_wal()?;
                self.collect_sealed()?;
                self.update_gauges(now);
            }
            match msg {
                Ok(Msg::Batch { batch, ack }) => {
                    self.append(batch, ack)?;
                }
                Ok(Msg::SealAll { deadline, reply }) => {
                    self.commit_deliveries()?;
                    let all = self.seal_all(deadline)?;
                    self.persist_imports()?;
                    self.persist_agents()?;
                    let _ = reply.send(all);
                }
                Ok(Msg::Wake) => {}
                Ok(Msg::Stop) => break,
                Ok(Msg::WaitPublished { deadline, reply }) => {
                    loop {
                        // A shutdown deadline set meanwhile (a signal) ends the wait too.
                        let until = self
                            .deadline
                            .instant()
                            .map_or(deadline, |d| d.min(deadline));
                        let now = Instant::now();
                        if self.pending.is_empty() || now >= until {
                            break;
                        }
                        let step = (until - now).min(Duration::from_secs(1));
                        match self.done_rx.recv_timeout(step) {
                            Ok(done) => self.handle_done(done)?,
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    let _ = reply.send(self.pending.is_empty());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.commit_deliveries()?;
        }
        self.commit_deliveries()?;
        self.persist_imports()?;
        self.persist_agents()?;
        self.wal.sync()?;
        Ok(self.stats)
    }

    /// Group commit of every delivery queued: duplicates are answered without a write, the
    /// others are appended, synced once, answered, and then staged. On a WAL failure the
    /// group's replies are dropped unanswered (outcome unknown) and the error stops the
    /// pipeline.
    fn commit_deliveries(&mut self) -> Result<(), PipelineError> {
        let mut group: Vec<(Delivery, Option<u64>)> = Vec::new();
        while let Ok(delivery) = self.deliveries.try_recv() {
            group.push((delivery, None));
        }
        if group.is_empty() {
            return Ok(());
        }
        let mut appended = false;
        for (delivery, lsn) in &mut group {
            if self.dedupe.is_duplicate(&delivery.mark) {
                continue;
            }
            let at = self
                .wal
                .append_unsynced_parts(&[&delivery.head, &delivery.body])?;
            self.dedupe.record(&delivery.mark, at);
            *lsn = Some(at);
            appended = true;
        }
        if appended {
            self.wal.commit()?;
        }
        // Counted before the answers, so that whoever got an answer sees it in the metrics.
        core_metrics_agents(&self.metrics, self.dedupe.agents());
        let mut staged = Vec::with_capacity(group.len());
        for (delivery, lsn) in group {
            let Delivery { batch, reply, .. } = delivery;
            if lsn.is_some() {
                let n = batch.records.len() as u64;
                self.stats.records_in += n;
                self.metrics.records_in.inc_by(n);
            }
            let _ = reply.send(lsn.is_none());
            if let Some(lsn) = lsn {
                staged.push((lsn, batch));
            }
        }
        for (lsn, batch) in staged {
            self.stage(lsn, batch, false)?;
        }
        Ok(())
    }

    /// Appends a live batch to the WAL, answers `ack` with its LSN and stages its records.
    fn append(
        &mut self,
        mut batch: WalBatch,
        ack: Option<SyncSender<u64>>,
    ) -> Result<(), PipelineError> {
        let mut buf = std::mem::take(&mut self.encode_buf);
        buf.clear();
        let buf = postcard::to_extend(&batch, buf).map_err(PipelineError::Encode)?;
        let lsn = self.wal.append(&buf);
        self.encode_buf = buf;
        let lsn = lsn?;
        if let Some(ack) = ack {
            let _ = ack.send(lsn);
        }
        let n = batch.records.len() as u64;
        self.stats.records_in += n;
        self.metrics.records_in.inc_by(n);
        if let Some(mark) = batch.import.take() {
            self.dirty_imports.insert(mark.input.clone(), mark);
        }
        self.stage(lsn, batch, false)
    }

    /// Stages the records of one batch (and recycles its buffer); on replay, records
    /// already sealed are skipped.
    fn stage(&mut self, lsn: u64, mut batch: WalBatch, replay: bool) -> Result<(), PipelineError> {
        let now = unix_now();
        let account: Text = batch.account_id.as_str().into();
        let region: Text = batch.region.as_str().into();
        let flow_log_id: Text = batch.flow_log_id.as_str().into();
        let mut late = 0u64;
        // Records of a batch mostly share their stream (and their account and region
        // texts): the key of the previous record is reused when it matches.
        let mut stream = StreamKey {
            account_id: Text::clone(&account),
            region: Text::clone(&region),
            flow_log_id,
            window_end: 0,
        };
        let mut last: Option<(*const u8, *const u8)> = None;
        let mut unpublishable: Vec<(usize, &'static str, String, &'static str, FlowRecord)> =
            Vec::new();
        for (i, record) in batch.records.drain(..).enumerate() {
            let time = record_time(&record, now);
            let checked = check_publishable(&record)
                .map_err(|(field, problem)| (field, problem, REASON_OUT_OF_RANGE))
                .and_then(|()| {
                    publishable_window_end(time, self.window_secs).ok_or_else(|| {
                        (
                            "end",
                            format!("{time} falls in a window that ends after year 9999"),
                            REASON_OUT_OF_RANGE,
                        )
                    })
                })
                .and_then(|end| match self.max_ahead_secs {
                    Some(ahead) if time > now.saturating_add(ahead) => Err((
                        "end",
                        format!(
                            "{time} is {} s ahead of the clock (at most {ahead} s)",
                            time - now
                        ),
                        REASON_TIME_WINDOW,
                    )),
                    _ => Ok(end),
                });
            let end = match checked {
                Ok(end) => end,
                Err((field, problem, reason)) => {
                    unpublishable.push((i, field, problem, reason, record));
                    continue;
                }
            };
            let texts = (
                record
                    .account_id
                    .as_ref()
                    .map_or(std::ptr::null(), |t| t.as_ptr()),
                record
                    .region
                    .as_ref()
                    .map_or(std::ptr::null(), |t| t.as_ptr()),
            );
            if last != Some(texts) {
                let a = record_account(&record, &account);
                let r = record_region(&record, &region);
                if !Arc::ptr_eq(a, &stream.account_id) && **a != *stream.account_id {
                    stream.account_id = Text::clone(a);
                }
                if !Arc::ptr_eq(r, &stream.region) && **r != *stream.region {
                    stream.region = Text::clone(r);
                }
                last = Some(texts);
            }
            stream.window_end = end;
            let pos = position(lsn, i);
            if replay
                && self
                    .manifest
                    .sealed_through(&stream)
                    .is_some_and(|t| pos <= t)
            {
                continue;
            }
            if !replay
                && self.close_by_clock
                && stream.window_end.saturating_add(self.grace_secs) <= now
            {
                late += 1;
            }
            self.stager.insert(&stream, record, pos, now)?;
        }
        self.metrics.late_records.inc_by(late);
        if !unpublishable.is_empty() {
            let source = format!("WAL entry {lsn} (flow log {})", batch.flow_log_id);
            let entries: Vec<Quarantined<'_>> = unpublishable
                .iter()
                .map(|(i, field, problem, reason, record)| Quarantined {
                    source: &source,
                    index: *i as u64,
                    field,
                    problem: problem.clone(),
                    record,
                    reason,
                })
                .collect();
            self.quarantine.put(&entries)?;
        }
        let mut records = batch.records;
        records.clear();
        let _ = self.recycle_tx.try_send(records);
        self.collect_sealed()
    }

    /// Publishes the files the encoders have sealed so far.
    fn collect_sealed(&mut self) -> Result<(), PipelineError> {
        let mut sealed = std::mem::take(&mut self.sealed_scratch);
        self.stager.collect(&mut sealed)?;
        let published = self.publish(&mut sealed);
        self.sealed_scratch = sealed;
        published
    }

    /// Seals every live stream (until `deadline`) and waits for the encoders to finish
    /// them. Returns whether everything was sealed.
    fn seal_all(&mut self, deadline: Option<Instant>) -> Result<bool, PipelineError> {
        // A shutdown deadline set meanwhile (a signal) bounds the wait too.
        let shared = self.deadline.clone();
        let limit = move || {
            let far = Instant::now() + Duration::from_secs(3600);
            let given = deadline.unwrap_or(far);
            shared.instant().map_or(given, |d| d.min(given))
        };
        let mut all = self.stager.seal_all(Some(limit()))?;
        let mut sealed = std::mem::take(&mut self.sealed_scratch);
        while !self.stager.is_idle() {
            let at = limit();
            if Instant::now() >= at {
                all = false;
                break;
            }
            self.stager
                .collect_until(at.min(Instant::now() + Duration::from_secs(1)), &mut sealed)?;
            self.publish(&mut sealed)?;
        }
        self.stager.collect(&mut sealed)?;
        self.publish(&mut sealed)?;
        self.sealed_scratch = sealed;
        Ok(all)
    }

    /// Seals the streams holding the WAL's oldest quarter while it is over
    /// `max_wal_bytes`, so that it can be reclaimed once their files are published.
    fn limit_wal(&mut self) -> Result<(), PipelineError> {
        if self.wal.disk_bytes() <= self.max_wal_bytes {
            return Ok(());
        }
        let first = self.wal.first_lsn();
        let below = first + (self.wal.next_lsn().saturating_sub(first) / 4).max(1);
        let n = self.stager.seal_below(position(below, 0))?;
        if n > 0 {
            tracing::info!(
                streams = n,
                wal_bytes = self.wal.disk_bytes(),
                max_wal_bytes = self.max_wal_bytes,
                "the WAL is over state.max_wal_bytes: sealing the streams holding its oldest records"
            );
        }
        Ok(())
    }

    /// Replays the WAL at startup; returns the import marks it holds. Delivery marks go
    /// into the dedupe state.
    fn replay(&mut self) -> Result<Vec<ImportMark>, PipelineError> {
        let mut marks: HashMap<String, ImportMark> = HashMap::new();
        let from = self.wal.first_lsn();
        for entry in self.wal.replay(from)? {
            let (lsn, bytes) = entry?;
            // Entries from here on are not staged yet: their segments must stay.
            self.replay_floor = lsn;
            let (batch, delivery) = decode_entry(lsn, &bytes)?;
            drop(bytes);
            if let Some(mark) = &delivery {
                self.dedupe.replay(mark, lsn);
            }
            self.stats.records_replayed += batch.records.len() as u64;
            let mut batch = batch;
            if let Some(mark) = batch.import.take() {
                marks.insert(mark.input.clone(), mark.clone());
                self.dirty_imports.insert(mark.input.clone(), mark);
            }
            self.stage(lsn, batch, true)?;
        }
        self.replay_floor = u64::MAX;
        if self.stats.records_replayed > 0 {
            tracing::info!(
                records = self.stats.records_replayed,
                streams = self.stager.open_streams(),
                "replayed the WAL"
            );
        }
        Ok(marks.into_values().collect())
    }

    /// Records sealed files in the manifest and queues them for upload, waiting while too
    /// many uploads are pending (backpressure).
    fn publish(&mut self, sealed: &mut Vec<SealedFile>) -> Result<(), PipelineError> {
        if sealed.is_empty() {
            return Ok(());
        }
        // The renames into staging/sealed/ must be durable before the manifest names them.
        let dir = self.stager.sealed_dir();
        flowlog_runtime::sync_dir(dir).map_err(sealed::io_err(dir))?;
        let mut upload = true;
        while self.pending.len() >= self.max_pending {
            // Past a shutdown deadline nothing waits: the file stays staged and goes
            // out at the next start.
            if self.deadline.passed() {
                upload = false;
                break;
            }
            let wait = self
                .deadline
                .remaining()
                .map_or(Duration::from_secs(1), |d| d.min(Duration::from_secs(1)));
            match self.done_rx.recv_timeout(wait) {
                Ok(done) => {
                    self.handle_done(done)?;
                    self.drain_done()?;
                }
                Err(_) => self.update_gauges(unix_now()),
            }
        }
        let mut entries = Vec::with_capacity(sealed.len());
        for file in sealed.drain(..) {
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
            entries.push(entry);
        }
        // One manifest write and fsync for the group.
        for entry in self.manifest.record_sealed_all(entries)? {
            self.requeue(entry, upload);
        }
        Ok(())
    }

    /// Counts a sealed file as pending and, when `upload`, queues it for the uploader.
    fn requeue(&mut self, entry: SealedEntry, upload: bool) {
        self.pending.insert(
            entry.id,
            Pending {
                first: entry.first,
                window_end: entry.stream.window_end,
                bytes: entry.bytes,
            },
        );
        if !upload {
            return;
        }
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

    /// Handles every confirmed upload reported so far, with one manifest write.
    fn drain_done(&mut self) -> Result<(), PipelineError> {
        let mut done = Vec::new();
        while let Ok(d) = self.done_rx.try_recv() {
            done.push(d);
        }
        self.confirm(&done)
    }

    fn handle_done(&mut self, done: (u64, u64, u64)) -> Result<(), PipelineError> {
        self.confirm(&[done])
    }

    /// Records confirmed uploads `(id, bytes, records)`, deletes their staged files and
    /// reclaims the WAL below what is still unpublished.
    fn confirm(&mut self, done: &[(u64, u64, u64)]) -> Result<(), PipelineError> {
        if done.is_empty() {
            return Ok(());
        }
        let ids: Vec<u64> = done.iter().map(|d| d.0).collect();
        for entry in self.manifest.record_uploaded_all(&ids)? {
            let path = self.state_dir.join(&entry.file);
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove a published staged file");
            }
        }
        for &(id, bytes, records) in done {
            self.pending.remove(&id);
            self.stats.files_published += 1;
            self.stats.bytes_published += bytes;
            self.stats.records_published += records;
        }
        self.reclaim()
    }

    fn persist_agents(&mut self) -> Result<(), PipelineError> {
        if self.dedupe.is_dirty() {
            self.manifest.record_agents(self.dedupe.take_dirty())?;
        }
        Ok(())
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
        let below = lowest
            .map_or(self.wal.next_lsn(), lsn_of)
            .min(self.replay_floor);
        if below > self.wal.first_lsn() {
            self.persist_imports()?;
            if self.wal.reclaimable(below) {
                // The segments about to go hold delivery marks: the manifest must have
                // the dedupe state they contributed to first.
                self.persist_agents()?;
            }
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
            self.stager.open_streams() as u64,
            self.wal.disk_bytes(),
            oldest.map_or(0, |w| now.saturating_sub(w)),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use flowlog_formats::input::RecordSource;
    use flowlog_formats::{FlowRecord, LogStatus};

    use super::*;
    use crate::sink::local::LocalDirSink;

    const T0: u64 = 1_704_067_200;

    struct Harness {
        dir: tempfile::TempDir,
        rt: tokio::runtime::Runtime,
    }

    impl Harness {
        fn new() -> Harness {
            Harness {
                dir: tempfile::tempdir().unwrap(),
                rt: tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap(),
            }
        }

        fn settings(&self) -> Settings {
            let text = format!(
                "[flow_log]\nid = \"fl-1\"\naccount_id = \"123456789012\"\nregion = \"us-east-1\"\n[sink]\npath = \"{}\"\n[state]\ndir = \"{}\"\n",
                self.out().display(),
                self.state().display()
            );
            let mut s = crate::settings::parse(&text).unwrap();
            // Tiny segments: every batch rotates, so publishing reclaims segments.
            s.state.wal_segment_bytes = 2048;
            s
        }

        fn out(&self) -> PathBuf {
            self.dir.path().join("out")
        }

        fn state(&self) -> PathBuf {
            self.dir.path().join("state")
        }

        fn start(&self) -> Pipeline {
            let sink: Arc<dyn ObjectSink> = Arc::new(LocalDirSink::new(self.out()).unwrap());
            Pipeline::start(
                &self.settings(),
                sink,
                Metrics::new(),
                Health::default(),
                self.rt.handle().clone(),
                CancellationToken::new(),
            )
            .unwrap()
        }

        fn published_records(&self) -> Vec<u64> {
            let mut out = Vec::new();
            let mut stack = vec![self.out()];
            while let Some(dir) = stack.pop() {
                for e in fs::read_dir(&dir).unwrap().flatten() {
                    let p = e.path();
                    if e.file_name().to_string_lossy().starts_with('.') {
                        continue;
                    }
                    if p.is_dir() {
                        stack.push(p);
                    } else {
                        for r in RecordSource::open_path(&p, None).unwrap() {
                            out.push(r.unwrap().bytes.unwrap());
                        }
                    }
                }
            }
            out.sort_unstable();
            out
        }
    }

    fn mark(agent: &str, spool_id: u64, seq: u64, acked_below: u64) -> DeliveryMark {
        DeliveryMark {
            agent_id: agent.into(),
            spool_id,
            seq,
            acked_below,
        }
    }

    /// `n` records whose `bytes` field is `tag * 1000 + i`.
    fn records(tag: u64, n: u64) -> Vec<FlowRecord> {
        (0..n)
            .map(|i| FlowRecord {
                account_id: Some("123456789012".into()),
                interface_id: Some("eni-1".into()),
                start: Some(T0),
                end: Some(T0 + 10),
                bytes: Some(tag * 1000 + i),
                log_status: Some(LogStatus::Ok),
                ..FlowRecord::default()
            })
            .collect()
    }

    fn wal_batch(records: Vec<FlowRecord>) -> WalBatch {
        WalBatch {
            flow_log_id: "fl-1".into(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            import: None,
            records,
        }
    }

    /// Queues a delivery and returns the receiver of its answer.
    fn queue(
        d: &Deliverer,
        m: DeliveryMark,
        records: Vec<FlowRecord>,
    ) -> tokio::sync::oneshot::Receiver<bool> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        d.deliver(Delivery::new(wal_batch(records), m, tx).unwrap())
            .unwrap();
        rx
    }

    /// Delivers and returns whether it was a duplicate.
    fn deliver(p: &Pipeline, m: DeliveryMark, records: Vec<FlowRecord>) -> bool {
        queue(&p.deliverer().unwrap(), m, records)
            .blocking_recv()
            .unwrap()
    }

    fn finish(p: Pipeline) -> PipelineStats {
        p.seal_all().unwrap();
        assert!(p.wait_published(Duration::from_secs(30)).unwrap());
        p.stop().unwrap()
    }

    fn manifest_without_agents(state: &Path) {
        let path = state.join("manifest.jsonl");
        let text = fs::read_to_string(&path).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| !l.contains("\"op\":\"agent\""))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_ne!(kept.len(), text.len(), "the manifest held agent states");
        fs::write(&path, kept).unwrap();
    }

    #[test]
    fn unpublishable_records_are_quarantined_live_and_on_replay_never_a_stop() {
        let h = Harness::new();
        let p = h.start();
        let mut batch = records(1, 4);
        // A window past year 9999 (no key can name it), a window a year ahead (it would
        // stay open for a year), a counter above bigint.
        batch[1].end = Some(window::MAX_KEY_TIME - 10);
        batch[1].start = Some(window::MAX_KEY_TIME - 20);
        batch[2].start = Some(unix_now() + 365 * 86_400);
        batch[2].end = Some(unix_now() + 365 * 86_400);
        batch[3].packets = Some(1 << 63);
        assert!(!deliver(&p, mark("a", 1, 1, 1), batch));
        // Stopped before publishing: the entry stays in the WAL, as in a WAL of an older
        // version that holds such records.
        p.stop().unwrap();
        let lines = |h: &Harness| -> Vec<serde_json::Value> {
            let dir = h.state().join(crate::quarantine::DIR);
            let mut out = Vec::new();
            for e in fs::read_dir(dir).unwrap().flatten() {
                for l in fs::read_to_string(e.path()).unwrap().lines() {
                    out.push(serde_json::from_str(l).unwrap());
                }
            }
            out
        };
        let first = lines(&h);
        assert_eq!(first.len(), 3, "{first:?}");
        let fields: Vec<(&str, u64)> = first
            .iter()
            .map(|l| {
                (
                    l["field"].as_str().unwrap(),
                    l["record_index"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(fields, vec![("end", 1), ("end", 2), ("packets", 3)]);
        assert!(
            first[0]["source"]
                .as_str()
                .unwrap()
                .starts_with("WAL entry ")
        );
        // The restart replays the entry: no crash loop, the good record is published.
        let p = h.start();
        let stats = finish(p);
        assert_eq!(stats.records_replayed, 4);
        assert_eq!(h.published_records(), vec![1000]);
        assert_eq!(lines(&h).len(), 6, "set aside again on replay");
    }

    #[test]
    fn duplicate_after_restart_rebuilt_from_the_wal() {
        let h = Harness::new();
        let p = h.start();
        assert!(!deliver(&p, mark("a", 1, 1, 1), records(1, 3)));
        assert!(deliver(&p, mark("a", 1, 1, 1), records(1, 3)));
        // Stop without publishing: the WAL keeps the entry.
        let stats = p.stop().unwrap();
        assert_eq!(stats.records_in, 3);
        // As after a crash before the state reached the manifest: only the WAL knows.
        manifest_without_agents(&h.state());
        let p = h.start();
        assert!(deliver(&p, mark("a", 1, 1, 1), records(1, 3)));
        assert!(!deliver(&p, mark("a", 1, 2, 1), records(2, 2)));
        let stats = finish(p);
        assert_eq!(stats.records_replayed, 3);
        assert_eq!(h.published_records(), vec![1000, 1001, 1002, 2000, 2001]);
    }

    #[test]
    fn a_pushed_entry_keeps_the_message_and_replays_from_it() {
        use prost::Message;
        let h = Harness::new();
        let p = h.start();
        let m = mark("a", 4, 1, 1);
        let message = flowlog_transport::pb::PushRequest {
            agent_id: "a".into(),
            spool_id: 4,
            seq: 1,
            acked_below: 1,
            batch: Some(flowlog_transport::encode_batch(&records(5, 3))),
        }
        .encode_to_vec();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let d = Delivery::pushed(wal_batch(records(5, 3)), m.clone(), message.into(), tx).unwrap();
        p.deliverer().unwrap().deliver(d).unwrap();
        assert!(!rx.blocking_recv().unwrap());
        p.stop().unwrap();
        manifest_without_agents(&h.state());
        let p = h.start();
        assert!(deliver(&p, m, records(5, 3)), "the replayed mark dedupes");
        let stats = finish(p);
        assert_eq!(stats.records_replayed, 3);
        assert_eq!(h.published_records(), vec![5000, 5001, 5002]);
    }

    #[test]
    fn duplicate_after_its_wal_segment_was_reclaimed() {
        let h = Harness::new();
        let p = h.start();
        for seq in 1..=5 {
            assert!(!deliver(&p, mark("a", 1, seq, 1), records(seq, 40)));
        }
        p.seal_all().unwrap();
        assert!(p.wait_published(Duration::from_secs(30)).unwrap());
        // Reclaiming stored the state first (not only the stop below).
        let manifest = fs::read_to_string(h.state().join("manifest.jsonl")).unwrap();
        assert!(manifest.contains("\"op\":\"agent\""), "{manifest}");
        p.stop().unwrap();
        let first = Wal::open(WalSettings::new(h.state().join("wal")))
            .unwrap()
            .first_lsn();
        // Only the active segment (the last batch) is left.
        assert_eq!(first, 5, "the segments holding seqs 1-4 are reclaimed");
        let p = h.start();
        for seq in 1..=5 {
            assert!(
                deliver(&p, mark("a", 1, seq, 1), records(seq, 40)),
                "seq {seq}"
            );
        }
        assert!(!deliver(&p, mark("a", 1, 6, 1), records(6, 1)));
        let stats = finish(p);
        // The last batch is still in the (active) WAL segment: replayed, not republished.
        assert_eq!((stats.records_in, stats.records_replayed), (1, 40));
        assert_eq!(h.published_records().len(), 5 * 40 + 1);
    }

    #[test]
    fn a_new_spool_id_starts_afresh() {
        let h = Harness::new();
        let p = h.start();
        assert!(!deliver(&p, mark("a", 1, 1, 1), records(1, 1)));
        assert!(!deliver(&p, mark("a", 2, 1, 1), records(2, 1)));
        assert!(deliver(&p, mark("a", 2, 1, 1), records(2, 1)));
        // Another agent with the same numbers is its own.
        assert!(!deliver(&p, mark("b", 2, 1, 1), records(3, 1)));
        finish(p);
        assert_eq!(h.published_records(), vec![1000, 2000, 3000]);
    }

    #[test]
    fn seqs_below_acked_below_are_pruned_and_stay_duplicates() {
        let h = Harness::new();
        let p = h.start();
        for seq in 1..=30 {
            assert!(!deliver(
                &p,
                mark("a", 9, seq, seq.saturating_sub(2).max(1)),
                records(seq, 1)
            ));
        }
        finish(p);
        let m = Manifest::open(&h.state(), None).unwrap();
        let a = m.agents().find(|a| a.agent_id == "a").unwrap();
        assert_eq!(a.acked_below, 28);
        assert_eq!(a.seqs.iter().copied().collect::<Vec<_>>(), vec![28, 29, 30]);
        drop(m);
        let p = h.start();
        assert!(
            deliver(&p, mark("a", 9, 3, 28), records(3, 1)),
            "below acked_below"
        );
        assert!(
            deliver(&p, mark("a", 9, 29, 28), records(29, 1)),
            "kept in the set"
        );
        assert!(!deliver(&p, mark("a", 9, 31, 29), records(31, 1)));
        finish(p);
        assert_eq!(h.published_records().len(), 31);
    }

    #[test]
    fn ten_thousand_flow_log_ids_pushed_at_once_give_one_file_each() {
        // On a tmpfs when there is one: the test is about file counts, and 10,000 files'
        // fsyncs on a slow disk would only cost time.
        let shm = Path::new("/dev/shm");
        let h = Harness {
            dir: if shm.is_dir() {
                tempfile::tempdir_in(shm).unwrap()
            } else {
                tempfile::tempdir().unwrap()
            },
            ..Harness::new()
        };
        let mut settings = h.settings();
        settings.state.wal_segment_bytes = 64 << 20;
        let sink: Arc<dyn ObjectSink> = Arc::new(LocalDirSink::new(h.out()).unwrap());
        let p = Pipeline::start(
            &settings,
            sink,
            Metrics::new(),
            Health::default(),
            h.rt.handle().clone(),
            CancellationToken::new(),
        )
        .unwrap();
        let d = p.deliverer().unwrap();
        let answers: Vec<_> = (0..10_000u64)
            .map(|i| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let mut batch = wal_batch(records(i, 2));
                batch.flow_log_id = format!("fl-{i:08x}");
                d.deliver(Delivery::new(batch, mark("a", 1, i + 1, 1), tx).unwrap())
                    .unwrap();
                rx
            })
            .collect();
        for rx in answers {
            assert!(!rx.blocking_recv().unwrap());
        }
        drop(d);
        let stats = finish(p);
        assert_eq!(stats.files_published, 10_000);
        assert_eq!(stats.records_published, 20_000);
        assert_eq!(h.published_records().len(), 20_000);
    }

    /// The local sink, each put delayed: a slow bucket.
    #[derive(Debug)]
    struct SlowSink(LocalDirSink, Duration);

    #[async_trait::async_trait]
    impl ObjectSink for SlowSink {
        async fn put_file(
            &self,
            key: &str,
            path: &Path,
        ) -> Result<crate::sink::PutOutcome, SinkError> {
            tokio::time::sleep(self.1).await;
            self.0.put_file(key, path).await
        }
        async fn check(&self) -> Result<(), SinkError> {
            self.0.check().await
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn kind(&self) -> &'static str {
            self.0.kind()
        }
    }

    #[test]
    fn finish_keeps_its_deadline_with_a_slow_sink_and_the_rest_goes_out_at_the_next_start() {
        let h = Harness::new();
        let mut settings = h.settings();
        settings.state.wal_segment_bytes = 64 << 20;
        let start = |sink: Arc<dyn ObjectSink>| {
            Pipeline::start_import(
                &settings,
                sink,
                Metrics::new(),
                Health::default(),
                h.rt.handle().clone(),
                CancellationToken::new(),
            )
            .unwrap()
        };
        let slow = SlowSink(
            LocalDirSink::new(h.out()).unwrap(),
            Duration::from_millis(300),
        );
        let p = start(Arc::new(slow));
        // 2,000 streams (flow log ids), 3 records each.
        for i in 0..2000u64 {
            let mut batch = wal_batch(records(i, 3));
            batch.flow_log_id = format!("fl-{i:08x}");
            p.submit(batch).unwrap();
        }
        let started = Instant::now();
        let published = p.finish(Duration::from_secs(2)).unwrap();
        let took = started.elapsed();
        let stats = p.stop().unwrap();
        assert!(!published, "a slow sink cannot take 2,000 files in 2 s");
        // The deadline plus slack for a loaded machine.
        assert!(took < Duration::from_millis(4000), "finish took {took:?}");
        assert!(stats.files_published < 2000, "{stats:?}");
        // The next start publishes the rest, and nothing twice.
        let p = start(Arc::new(LocalDirSink::new(h.out()).unwrap()));
        let stats_after = finish(p);
        assert_eq!(stats.files_published + stats_after.files_published, 2000);
        assert_eq!(h.published_records().len(), 6000);
        let mut all = h.published_records();
        all.dedup();
        assert_eq!(all.len(), 6000, "no record twice");
    }

    #[test]
    fn group_commit_answers_every_delivery_and_dedupes_within_the_group() {
        let h = Harness::new();
        let p = h.start();
        let d = p.deliverer().unwrap();
        let mut answers = Vec::new();
        for seq in 1..=20 {
            answers.push(queue(&d, mark("a", 1, seq, 1), records(seq, 2)));
            if seq % 5 == 0 {
                answers.push(queue(&d, mark("a", 1, seq, 1), records(seq, 2)));
            }
        }
        let duplicates: Vec<bool> = answers
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap())
            .collect();
        assert_eq!(duplicates.len(), 24);
        assert_eq!(duplicates.iter().filter(|d| **d).count(), 4);
        drop(d);
        finish(p);
        assert_eq!(h.published_records().len(), 40);
    }

    /// Environment variable that makes `file_modes_child` run (set by its parent test).
    const MODES_CHILD: &str = "FLOWLOG_TEST_FILE_MODES_CHILD";

    /// `(path, mode)` of `root` and everything under it.
    fn modes_under(root: &Path) -> Vec<(PathBuf, u32, bool)> {
        use std::os::unix::fs::PermissionsExt;
        let mut out = Vec::new();
        let mut stack = vec![root.to_owned()];
        while let Some(p) = stack.pop() {
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            }
            out.push((p, meta.permissions().mode() & 0o7777, meta.is_dir()));
        }
        out
    }

    fn assert_modes(root: &Path, dir_mode: u32, file_mode: u32) -> usize {
        let all = modes_under(root);
        for (path, mode, is_dir) in &all {
            let want = if *is_dir { dir_mode } else { file_mode };
            assert_eq!(
                *mode,
                want,
                "{} has mode {mode:04o}, not {want:04o}",
                path.display()
            );
        }
        all.iter().filter(|(_, _, is_dir)| !is_dir).count()
    }

    /// Runs in a child process with umask 022 (see `state_and_output_modes_under_umask_022`).
    #[test]
    #[ignore = "child process of state_and_output_modes_under_umask_022"]
    fn file_modes_child() {
        use std::os::unix::fs::PermissionsExt;
        if std::env::var_os(MODES_CHILD).is_none() {
            return;
        }
        let h = Harness::new();
        let probe = h.dir.path().join("umask-probe");
        fs::write(&probe, b"").unwrap();
        let probe_mode = fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
        assert_eq!(probe_mode, 0o644, "the child runs under umask 022");
        fs::remove_file(&probe).unwrap();

        // A slow sink keeps the sealed file staged while the modes are checked.
        let sink = SlowSink(LocalDirSink::new(h.out()).unwrap(), Duration::from_secs(2));
        let p = Pipeline::start(
            &h.settings(),
            Arc::new(sink),
            Metrics::new(),
            Health::default(),
            h.rt.handle().clone(),
            CancellationToken::new(),
        )
        .unwrap();
        assert!(!deliver(&p, mark("a", 1, 1, 1), records(1, 5)));
        p.seal_all().unwrap();
        let sealed = h.state().join("staging/sealed");
        let deadline = Instant::now() + Duration::from_secs(30);
        while fs::read_dir(&sealed).unwrap().next().is_none() {
            assert!(Instant::now() < deadline, "no staged file appeared");
            std::thread::sleep(Duration::from_millis(10));
        }
        let files = assert_modes(&h.state(), 0o700, 0o600);
        // WAL segment, manifest and the staged file at least.
        assert!(files >= 3, "{:?}", modes_under(&h.state()));
        assert!(p.wait_published(Duration::from_secs(30)).unwrap());
        p.stop().unwrap();
        assert_modes(&h.state(), 0o700, 0o600);
        let published = assert_modes(&h.out(), 0o750, 0o640);
        assert!(published >= 1, "{:?}", modes_under(&h.out()));
        assert_eq!(h.published_records().len(), 5);

        // A copy (staged file on another file system) gets the output's mode too.
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let other = tempfile::tempdir_in(shm).unwrap();
            let staged = other.path().join("staged");
            fs::write(&staged, b"bytes").unwrap();
            fs::set_permissions(&staged, fs::Permissions::from_mode(0o600)).unwrap();
            let sink = LocalDirSink::new(h.out()).unwrap();
            h.rt.block_on(sink.put_file("copied/x.log.gz", &staged))
                .unwrap();
            assert_modes(&h.out(), 0o750, 0o640);
        }

        // A state directory an earlier release left 0755 is narrowed at the next start.
        let old = h.dir.path().join("old-state");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, fs::Permissions::from_mode(0o755)).unwrap();
        crate::file_modes::prepare_state_dir(&old).unwrap();
        let mode = fs::metadata(&old).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn state_and_output_modes_under_umask_022() {
        let child = std::process::Command::new("sh")
            .args(["-c", "umask 022 && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "pipeline::tests::file_modes_child",
                "--ignored",
                "--nocapture",
            ])
            .env(MODES_CHILD, "1")
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "the child failed: {}\n{}\n{}",
            child.status,
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        // The filter matched: the checks ran.
        assert!(
            String::from_utf8_lossy(&child.stdout).contains("1 passed"),
            "{}",
            String::from_utf8_lossy(&child.stdout)
        );
    }
}
