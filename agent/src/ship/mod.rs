//! Shipping to aggregators (`[aggregator]` set): closed-interval records go to a disk
//! spool in batches, and are pushed over gRPC/TLS until an aggregator acknowledges them
//! (docs/delivery.md is the contract).
//!
//! ```text
//! capture / replay ─▶ Batcher (≤ batch_records, one interval per batch)
//!   ─▶ Spool (disk, fsync, bounded; SKIPDATA when full)
//!   ─▶ one sender task per endpoint ═gRPC/TLS═▶ aggregator ─▶ ack ─▶ batch done
//! ```
//!
//! - [`settings`]: the `[aggregator]`, `[spool]` and ship-mode `[service]` sections;
//! - [`spool`]: the spool directory;
//! - [`sender`]: the endpoint tasks (failover, pinning, backoff);
//! - [`service`]: logs, `/metrics` and `/healthz`.
//!
//! [`Shipper`] runs it all on its own tokio runtime; the capture or replay thread hands
//! records to a [`Batcher`].

pub mod sender;
pub mod service;
pub mod settings;
pub mod spool;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flowlog_formats::FlowRecord;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::AgentMetrics;
use sender::Dispatch;
use settings::ShipSettings;
use spool::{Appended, Mark, Spool, SpoolError};

/// Failure of shipping.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The spool failed.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The async runtime could not be built.
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    /// The metrics endpoint could not be started.
    #[error(transparent)]
    Service(#[from] service::ServiceError),
    /// An endpoint's TLS material or URL is unusable.
    #[error("aggregator endpoint {url}: {problem}")]
    Endpoint {
        /// The endpoint.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The replay input could not be read.
    #[error("{path}: {source}")]
    Input {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Shipping stopped (shutdown) while a batch waited for room in the spool.
    #[error("stopped while waiting for room in the spool")]
    Stopped,
}

/// The spool and the dispatch state, behind one lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) spool: Spool,
    pub(crate) dispatch: Dispatch,
}

/// What the shipper's threads and tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: ShipSettings,
    state: Mutex<State>,
    /// Signalled whenever a batch is spooled or settled (for threads that wait).
    pub(crate) changed: Condvar,
    /// Wakes the endpoint tasks.
    pub(crate) wake: Notify,
    pub(crate) metrics: AgentMetrics,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn publish_gauges(&self, state: &State) {
        if let Some(ship) = &self.metrics.ship {
            ship.spool_bytes
                .set(i64::try_from(state.spool.bytes()).unwrap_or(i64::MAX));
            ship.spool_batches
                .set(i64::try_from(state.spool.batches()).unwrap_or(i64::MAX));
            ship.pinned_batches
                .set(i64::try_from(state.dispatch.pinned()).unwrap_or(i64::MAX));
        }
    }
}

/// What is left in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pending {
    /// Unacknowledged batches.
    pub batches: usize,
    /// Their records.
    pub records: u64,
}

/// What to do with a batch that does not fit in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Replace it by SKIPDATA records (live capture: packets do not wait).
    Replace,
    /// Wait for acknowledgements to make room (replay: the file waits); replace only when
    /// even an empty spool is too small for it.
    Wait,
}

/// How often a full spool is logged at most.
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);

/// The spool and the sender tasks, on their own runtime.
#[derive(Debug)]
pub struct Shipper {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    last_drop_log: Mutex<Option<Instant>>,
}

impl Shipper {
    /// Opens the spool (logging what it found), starts the `/metrics` endpoint when
    /// `service.metrics_address` is set, and starts one sender task per endpoint.
    pub fn start(settings: &ShipSettings, metrics: &AgentMetrics) -> Result<Shipper, ShipError> {
        for ep in &settings.endpoints {
            settings::build_endpoint(settings, ep).map_err(|e| ShipError::Endpoint {
                url: ep.url.clone(),
                problem: flowlog_runtime::error_chain(&e),
            })?;
            if !ep.tls {
                tracing::warn!(endpoint = %ep.url, "insecure = true: records and the token go to this endpoint in plaintext");
            }
        }
        let spool = Spool::open(&settings.spool)?;
        let report = spool.open_report().clone();
        tracing::info!(
            dir = %settings.spool.dir.display(),
            spool_id = format_args!("{:016x}", spool.spool_id()),
            batches = report.batches,
            records = report.records,
            next_seq = spool.next_seq(),
            "spool opened{}",
            if report.batches > 0 { "; its unacknowledged batches are sent again" } else { "" }
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ship")
            .enable_all()
            .build()
            .map_err(ShipError::Runtime)?;
        let mut metrics = metrics.clone();
        if metrics.ship.is_none() {
            let urls: Vec<String> = settings.endpoints.iter().map(|e| e.url.clone()).collect();
            metrics.ship = Some(crate::metrics::ShipMetrics::new(&urls));
        }
        if let Some(ship) = &metrics.ship {
            ship.spool_corrupt_bytes
                .inc_by(report.losses.iter().map(|l| l.bytes).sum());
        }
        let mut dispatch = Dispatch::new(settings.endpoints.len());
        let urls: Vec<String> = settings.endpoints.iter().map(|e| e.url.clone()).collect();
        dispatch.restore_pins(&spool, &urls);
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            state: Mutex::new(State { spool, dispatch }),
            changed: Condvar::new(),
            wake: Notify::new(),
            metrics,
        });
        shared.publish_gauges(&shared.lock());
        let cancel = CancellationToken::new();
        if let Some(address) = &settings.service.metrics_address {
            let listener = runtime.block_on(service::bind(address))?;
            runtime.spawn(service::serve(
                listener,
                Arc::clone(&shared),
                cancel.clone(),
            ));
        }
        for i in 0..settings.endpoints.len() {
            runtime.spawn(sender::run_endpoint(Arc::clone(&shared), i, cancel.clone()));
        }
        runtime.spawn(housekeeping(Arc::clone(&shared), cancel.clone()));
        Ok(Shipper {
            runtime: Some(runtime),
            shared,
            cancel,
            last_drop_log: Mutex::new(None),
        })
    }

    /// The spool directory.
    pub fn spool_dir(&self) -> std::path::PathBuf {
        self.shared.settings.spool.dir.clone()
    }

    /// The spool's id.
    pub fn spool_id(&self) -> u64 {
        self.shared.lock().spool.spool_id()
    }

    /// The latest replay mark of the spool.
    pub fn mark(&self) -> Option<Mark> {
        self.shared.lock().spool.mark()
    }

    /// True if replay input `input` was finished before.
    pub fn input_finished(&self, input: u64) -> bool {
        self.shared.lock().spool.input_finished(input)
    }

    /// Records that replay input `input` is completely spooled.
    pub fn finish_input(&self, input: u64, records: u64) -> Result<(), ShipError> {
        Ok(self.shared.lock().spool.finish_input(input, records)?)
    }

    /// What the spool holds.
    pub fn pending(&self) -> Pending {
        let state = self.shared.lock();
        Pending {
            batches: state.spool.batches(),
            records: state.spool.records(),
        }
    }

    /// Spools one batch (see [`Overflow`]); `fill` completes SKIPDATA records. `stop`
    /// ends a wait for room.
    pub fn append(
        &self,
        records: &[FlowRecord],
        mark: Option<Mark>,
        fill: &dyn Fn(&mut FlowRecord),
        overflow: Overflow,
        stop: &dyn Fn() -> bool,
    ) -> Result<Appended, ShipError> {
        let mut state = self.shared.lock();
        if overflow == Overflow::Wait {
            let payload = Spool::encode(records);
            loop {
                if state.spool.has_room(payload.len()) {
                    let seq = state.spool.append_encoded(&payload, records.len(), mark)?;
                    return Ok(self.appended(state, Appended::Spooled { seq }));
                }
                if state.spool.batches() == 0 {
                    break;
                }
                if stop() {
                    return Err(ShipError::Stopped);
                }
                state = self
                    .shared
                    .changed
                    .wait_timeout(state, Duration::from_millis(200))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
        }
        let appended = state.spool.append(records, mark, fill)?;
        if let Appended::Replaced { dropped, seq } = appended {
            if let Some(ship) = &self.shared.metrics.ship {
                ship.spool_dropped_records.inc_by(dropped);
            }
            // Logged at most once a minute while the spool stays full.
            let total = state.spool.dropped_records();
            let mut last = self
                .last_drop_log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY) {
                *last = Some(Instant::now());
                tracing::error!(
                    dropped,
                    seq,
                    dropped_since_start = total,
                    max_bytes = self.shared.settings.spool.max_bytes,
                    "spool full: a batch was not kept; SKIPDATA records spooled in its place \
                     (no aggregator acknowledges fast enough)"
                );
            }
        }
        Ok(self.appended(state, appended))
    }

    fn appended(&self, state: MutexGuard<'_, State>, appended: Appended) -> Appended {
        self.shared.publish_gauges(&state);
        drop(state);
        self.shared.wake.notify_waiters();
        appended
    }

    /// Waits until every spooled batch is acknowledged, `deadline` passes or `stop`
    /// returns true; returns what is left.
    pub fn wait_drained(&self, deadline: Option<Instant>, stop: &dyn Fn() -> bool) -> Pending {
        let mut state = self.shared.lock();
        loop {
            let left = Pending {
                batches: state.spool.batches(),
                records: state.spool.records(),
            };
            if left.batches == 0 || stop() || deadline.is_some_and(|d| Instant::now() >= d) {
                return left;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Stops the sender tasks and closes the spool (its meta persisted); returns what is
    /// left for the next start.
    pub fn stop(mut self) -> Result<Pending, ShipError> {
        self.cancel.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
        let mut state = self.shared.lock();
        state.spool.close()?;
        Ok(Pending {
            batches: state.spool.batches(),
            records: state.spool.records(),
        })
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Periodic work: fsync under `interval:` and persist the acknowledged floor.
async fn housekeeping(shared: Arc<Shared>, cancel: CancellationToken) {
    let every = spool::housekeeping_every(shared.settings.spool.fsync);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = cancel.cancelled() => return,
        }
        let mut state = shared.lock();
        if let Err(e) = state.spool.sync_if_due() {
            tracing::error!(dir = %shared.settings.spool.dir.display(), error = %e, "spool: fsync failed");
        }
        if let Err(e) = state.spool.persist_floor() {
            tracing::error!(error = %flowlog_runtime::error_chain(&e), "spool: cannot persist the acknowledged floor");
        }
    }
}

/// Groups records into batches of at most `batch_records` records, never mixing
/// aggregation intervals, and spools them.
pub struct Batcher<'a> {
    shipper: &'a Shipper,
    fill: &'a dyn Fn(&mut FlowRecord),
    stop: &'a dyn Fn() -> bool,
    overflow: Overflow,
    max: usize,
    interval_secs: u64,
    pending: Vec<FlowRecord>,
    interval: Option<u64>,
    /// Replay progress: the input and the records handed to the batcher so far.
    mark: Option<(u64, u64)>,
    last_push: Instant,
    /// Batches spooled.
    pub batches: u64,
    /// Records spooled.
    pub records: u64,
    /// Records replaced by SKIPDATA (spool full).
    pub dropped: u64,
}

impl std::fmt::Debug for Batcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("pending", &self.pending.len())
            .field("batches", &self.batches)
            .finish_non_exhaustive()
    }
}

impl<'a> Batcher<'a> {
    /// A batcher for `shipper`. `mark` = `(input, records already handled)` for a replay.
    pub fn new(
        shipper: &'a Shipper,
        interval_secs: u64,
        fill: &'a dyn Fn(&mut FlowRecord),
        stop: &'a dyn Fn() -> bool,
        overflow: Overflow,
        mark: Option<(u64, u64)>,
    ) -> Batcher<'a> {
        let max = shipper.shared.settings.batch_records;
        Batcher {
            shipper,
            fill,
            stop,
            overflow,
            max,
            interval_secs: interval_secs.max(1),
            pending: Vec::new(),
            interval: None,
            mark,
            last_push: Instant::now(),
            batches: 0,
            records: 0,
            dropped: 0,
        }
    }

    /// Adds a record; spools the batch first if the record belongs to another interval.
    pub fn push(&mut self, record: FlowRecord) -> Result<(), ShipError> {
        let interval = record.end.or(record.start).map(|t| t / self.interval_secs);
        if interval != self.interval && !self.pending.is_empty() {
            self.flush()?;
        }
        self.interval = interval;
        self.pending.push(record);
        self.last_push = Instant::now();
        if let Some((_, handled)) = &mut self.mark {
            *handled += 1;
        }
        if self.pending.len() >= self.max {
            self.flush()?;
        }
        Ok(())
    }

    /// Spools the records added so far.
    pub fn flush(&mut self) -> Result<(), ShipError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mark = self.mark.map(|(input, records)| Mark {
            input,
            records,
            finished: false,
        });
        match self
            .shipper
            .append(&self.pending, mark, self.fill, self.overflow, self.stop)?
        {
            Appended::Spooled { .. } => self.records += self.pending.len() as u64,
            Appended::Replaced { dropped, .. } => self.dropped += dropped,
        }
        self.batches += 1;
        self.pending.clear();
        Ok(())
    }

    /// Spools the records added so far if none came for `idle`.
    pub fn flush_if_idle(&mut self, idle: Duration) -> Result<(), ShipError> {
        if !self.pending.is_empty() && self.last_push.elapsed() >= idle {
            self.flush()?;
        }
        Ok(())
    }

    /// The replay progress: records handed over so far.
    pub fn handled(&self) -> Option<u64> {
        self.mark.map(|(_, n)| n)
    }
}

/// The identity of a replay input: a nonzero hash of the file's size, its first MiB and
/// last 64 KiB, and `settings`, the text of the settings that decide its records
/// (`AgentSettings::replay_identity`: interval, filter, flow limit, interfaces, account,
/// region, flow log id). The same content replayed with the same settings gives the same
/// records in the same order.
pub fn replay_input_tag(path: &Path, settings: &str) -> Result<u64, ShipError> {
    let fail = |source| ShipError::Input {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let size = file.metadata().map_err(fail)?.len();
    let mut h = Sha256::new();
    h.update(b"flowlog-agent replay input v1\0");
    h.update(size.to_le_bytes());
    let mut head = Vec::new();
    (&mut file)
        .take(1 << 20)
        .read_to_end(&mut head)
        .map_err(fail)?;
    h.update(&head);
    let tail_len = size.min(64 << 10);
    file.seek(SeekFrom::Start(size - tail_len)).map_err(fail)?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).map_err(fail)?;
    h.update(&tail);
    h.update(settings.as_bytes());
    let digest = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    Ok(u64::from_le_bytes(b).max(1))
}
