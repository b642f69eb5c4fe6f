//! Telemetry of the publishing pipeline: logs, Prometheus metrics, health and shutdown
//! signals. The log subscriber and the HTTP endpoint are `flowlog_runtime`'s, shared with
//! the lean agent.
//!
//! - [`init_tracing`] installs the global `tracing` subscriber (text or JSON on stderr);
//! - [`Metrics`] holds every counter, gauge and histogram the service exports, and
//!   [`Metrics::encode`] renders them as OpenMetrics text;
//! - [`Health`] is shared state the components mark unhealthy (with a reason) and healthy;
//! - [`bind_http`] and [`serve_http`] expose `GET /metrics` and `GET /healthz`;
//! - [`shutdown_signal`] resolves on the first `SIGTERM` or `SIGINT`.
//!
//! Label values are always drawn from closed sets of `&'static str` (see [`SINK_LOCAL`],
//! [`RETRY_TRANSIENT`], …), never from keys, addresses or other unbounded data.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flowlog_runtime::http::{self, HttpError};
use flowlog_runtime::logs::LogFilterError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Errors of the telemetry functions.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter (the `filter` argument or `RUST_LOG`) cannot be parsed.
    #[error(transparent)]
    LogFilter(#[from] LogFilterError),
    /// The metrics endpoint cannot listen on its address, or failed while serving.
    #[error(transparent)]
    Http(#[from] HttpError),
}

// ---------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------

/// How log lines are written to stderr (`service.log_format`).
pub use flowlog_runtime::LogOutput;

/// Installs the global `tracing` subscriber, writing to stderr in `format`
/// ([`flowlog_runtime::logs::init`]: `RUST_LOG` replaces `filter` when set; a second call
/// does nothing).
pub fn init_tracing(format: LogOutput, filter: &str) -> Result<(), TelemetryError> {
    Ok(flowlog_runtime::logs::init(format, filter)?)
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// Label value of the local-directory sink.
pub const SINK_LOCAL: &str = "local";
/// Label value of the S3 sink.
pub const SINK_S3: &str = "s3";
/// All `sink` label values.
pub const SINKS: [&str; 2] = [SINK_LOCAL, SINK_S3];

/// Label value of a retry after a transient error (throttling, timeouts, 5xx).
pub const RETRY_TRANSIENT: &str = "transient";
/// Label value of a retry after a permanent error (access denied, missing bucket, …).
pub const RETRY_PERMANENT: &str = "permanent";
/// All `class` label values.
pub const RETRY_CLASSES: [&str; 2] = [RETRY_TRANSIENT, RETRY_PERMANENT];

/// All `reason` label values of `flowlog_quarantined_records_total`: a time outside the
/// window `serve` accepts around its clock, and a value no output can hold (year > 9999, a
/// counter above `bigint`). The quarantine module names them.
pub const QUARANTINE_REASONS: [&str; 2] = ["time_window", "out_of_range"];

/// All `reason` label values of `flowlog_sealed_files_total` (they match
/// `SealReason::as_str` in the stager).
pub const SEAL_REASONS: [&str; 5] = [
    "window_closed",
    "size_cap",
    "memory_budget",
    "wal_limit",
    "shutdown",
];

/// `result` of a push that was written.
pub const INGEST_ACCEPTED: &str = "accepted";
/// `result` of a push the WAL already had (acked, not written again).
pub const INGEST_DUPLICATE: &str = "duplicate";
/// `result` of a malformed, oversized or otherwise invalid push.
pub const INGEST_INVALID: &str = "invalid";
/// `result` of a push refused because there was no room within `push_timeout`, or during
/// shutdown.
pub const INGEST_BUSY: &str = "busy";
/// `result` of a push whose outcome is unknown because the pipeline failed.
pub const INGEST_FAILED: &str = "failed";
/// All `result` label values of `flowlog_ingest_batches_total` (refused calls are counted in
/// `flowlog_ingest_auth_failures_total` instead).
pub const INGEST_RESULTS: [&str; 5] = [
    INGEST_ACCEPTED,
    INGEST_DUPLICATE,
    INGEST_INVALID,
    INGEST_BUSY,
    INGEST_FAILED,
];

/// All `reason` label values of `flowlog_ingest_auth_failures_total`: no `authorization`
/// header, one that is not `Bearer <token>`, a token not in the tokens file, a token of
/// another agent.
pub const AUTH_FAILURE_REASONS: [&str; 4] = ["missing", "malformed", "unknown", "agent_mismatch"];

/// Labels `{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct IngestLabels {
    /// One of [`INGEST_RESULTS`].
    pub result: &'static str,
}

/// Labels `{reason}` of `flowlog_ingest_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AuthFailureLabels {
    /// One of [`AUTH_FAILURE_REASONS`].
    pub reason: &'static str,
}

/// `reason` of `flowlog_ingest_refused_total`: a connection past `listen.max_connections`.
pub const REFUSED_CONNECTIONS: &str = "max_connections";
/// `reason`: an agent's call past `listen.max_calls_per_agent`.
pub const REFUSED_AGENT_CALLS: &str = "max_calls_per_agent";
/// `reason`: a body that did not arrive within `listen.body_timeout`.
pub const REFUSED_BODY_TIMEOUT: &str = "body_timeout";
/// `reason`: a message larger than `listen.max_batch_bytes`.
pub const REFUSED_TOO_LARGE: &str = "max_batch_bytes";
/// `reason`: more records than `listen.max_batch_records`.
pub const REFUSED_TOO_MANY_RECORDS: &str = "max_batch_records";
/// `reason`: records outside what the agent's token line allows.
pub const REFUSED_IDENTITY: &str = "identity_policy";
/// All `reason` label values of `flowlog_ingest_refused_total`.
pub const REFUSED_REASONS: [&str; 6] = [
    REFUSED_CONNECTIONS,
    REFUSED_AGENT_CALLS,
    REFUSED_BODY_TIMEOUT,
    REFUSED_TOO_LARGE,
    REFUSED_TOO_MANY_RECORDS,
    REFUSED_IDENTITY,
];

/// Labels `{reason}` of `flowlog_ingest_refused_total` and
/// `flowlog_quarantined_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The reason.
    pub reason: &'static str,
}

/// Labels `{sink}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SinkLabels {
    /// [`SINK_LOCAL`] or [`SINK_S3`].
    pub sink: &'static str,
}

/// Labels `{sink, class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    /// [`SINK_LOCAL`] or [`SINK_S3`].
    pub sink: &'static str,
    /// [`RETRY_TRANSIENT`] or [`RETRY_PERMANENT`].
    pub class: &'static str,
}

/// Labels `{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SealLabels {
    /// One of [`SEAL_REASONS`].
    pub reason: &'static str,
}

/// Labels `{version}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildInfoLabels {
    /// The crate version.
    pub version: &'static str,
}

/// Every metric the aggregator exports, registered in one [`Registry`].
///
/// Metric handles are cheap clones sharing their value, and all of them are public:
/// `metrics.records_in.inc_by(n)`,
/// `metrics.files_published.get_or_create(&SinkLabels { sink: SINK_S3 }).inc()`, or the
/// helpers [`Metrics::observe_upload`], [`Metrics::observe_upload_failure`],
/// [`Metrics::observe_sealed`] and [`Metrics::set_pipeline_gauges`].
/// Every known label combination is created up front so its series is exported as 0.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `flowlog_records_in_total`: records accepted into the WAL.
    pub records_in: Counter,
    /// `flowlog_bad_records_total`: malformed input lines/rows skipped.
    pub bad_records: Counter,
    /// `flowlog_late_records_total`: records that arrived after their window closed.
    pub late_records: Counter,
    /// `flowlog_records_published_total{sink}`: records in published files.
    pub records_published: Family<SinkLabels, Counter>,
    /// `flowlog_files_published_total{sink}`: files published.
    pub files_published: Family<SinkLabels, Counter>,
    /// `flowlog_bytes_published_total{sink}`: bytes of published files.
    pub bytes_published: Family<SinkLabels, Counter>,
    /// `flowlog_upload_retries_total{sink, class}`: upload attempts that are retried.
    pub upload_retries: Family<RetryLabels, Counter>,
    /// `flowlog_staged_bytes`: bytes of sealed files waiting for upload.
    pub staged_bytes: Gauge,
    /// `flowlog_staged_files`: sealed files waiting for upload.
    pub staged_files: Gauge,
    /// `flowlog_open_files`: live streams (records waiting or a file open).
    pub open_files: Gauge,
    /// `flowlog_wal_bytes`: size of the write-ahead log.
    pub wal_bytes: Gauge,
    /// `flowlog_oldest_unpublished_window_age_seconds`: age of the oldest window end with
    /// records not yet published (0 when there is none).
    pub oldest_unpublished_window_age_seconds: Gauge,
    /// `flowlog_sealed_files_total{reason}`: files sealed, by reason.
    pub sealed_files: Family<SealLabels, Counter>,
    /// `flowlog_upload_seconds`: duration of each successful upload.
    pub upload_seconds: Histogram,
    /// `flowlog_build_info{version}`: always 1.
    pub build_info: Family<BuildInfoLabels, Gauge>,
    /// `flowlog_ingest_batches_total{result}`: pushes answered, by result.
    pub ingest_batches: Family<IngestLabels, Counter>,
    /// `flowlog_ingest_records_total`: records of pushes written to the WAL.
    pub ingest_records: Counter,
    /// `flowlog_ingest_dedupe_hits_total`: pushes of batches the WAL already had.
    pub ingest_dedupe_hits: Counter,
    /// `flowlog_ingest_auth_failures_total{reason}`: calls refused by authentication.
    pub ingest_auth_failures: Family<AuthFailureLabels, Counter>,
    /// `flowlog_ingest_push_seconds`: time from receiving a decoded push to answering it.
    pub ingest_push_seconds: Histogram,
    /// `flowlog_ingest_pending_records`: records accepted but not yet in the WAL.
    pub ingest_pending_records: Gauge,
    /// `flowlog_ingest_agents`: agents in the dedupe state.
    pub ingest_agents: Gauge,
    /// `flowlog_ingest_refused_total{reason}`: connections and calls refused by a limit.
    pub ingest_refused: Family<ReasonLabels, Counter>,
    /// `flowlog_quarantined_records_total{reason}`: records set aside as unpublishable.
    pub quarantined_records: Family<ReasonLabels, Counter>,
    /// `flowlog_quarantine_dropped_records_total`: quarantined records not written because
    /// the quarantine was full.
    pub quarantine_dropped: Counter,
}

/// Creates a metric, registers it under `name` and returns the handle.
fn registered<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: Default + Clone + prometheus_client::registry::Metric,
{
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// Like [`registered`], but registers the metric only when `on` (it is counted either way).
fn registered_if<M>(on: bool, registry: &mut Registry, name: &str, help: &str) -> M
where
    M: Default + Clone + prometheus_client::registry::Metric,
{
    let metric = M::default();
    if on {
        registry.register(name, help, metric.clone());
    }
    metric
}

impl Metrics {
    /// Creates and registers every metric, the ingest endpoint's (`flowlog_ingest_*`)
    /// included: what `serve` exports.
    pub fn new() -> Arc<Metrics> {
        Metrics::build(true, |_| {})
    }

    /// Creates and registers the publishing metrics, plus those `extra` registers in the
    /// same registry (the agent's own, in standalone mode), so one endpoint serves them
    /// all. Without an ingest endpoint (`import`, the agent's standalone mode) the
    /// `flowlog_ingest_*` series would only ever be 0, so they are not exported.
    pub fn new_with(extra: impl FnOnce(&mut Registry)) -> Arc<Metrics> {
        Metrics::build(false, extra)
    }

    fn build(ingest: bool, extra: impl FnOnce(&mut Registry)) -> Arc<Metrics> {
        let mut registry = Registry::default();
        extra(&mut registry);

        // prometheus-client appends `_total` to counter names.
        let records_in: Counter = registered(
            &mut registry,
            "flowlog_records_in",
            "Records accepted into the WAL",
        );
        let bad_records: Counter = registered(
            &mut registry,
            "flowlog_bad_records",
            "Malformed input lines or rows skipped",
        );
        let late_records: Counter = registered(
            &mut registry,
            "flowlog_late_records",
            "Records that arrived after their window closed",
        );

        let records_published: Family<SinkLabels, Counter> = registered(
            &mut registry,
            "flowlog_records_published",
            "Records in files published, by sink",
        );
        let files_published: Family<SinkLabels, Counter> = registered(
            &mut registry,
            "flowlog_files_published",
            "Files published, by sink",
        );
        let bytes_published: Family<SinkLabels, Counter> = registered(
            &mut registry,
            "flowlog_bytes_published",
            "Bytes of files published, by sink",
        );
        let upload_retries: Family<RetryLabels, Counter> = registered(
            &mut registry,
            "flowlog_upload_retries",
            "Upload attempts retried, by sink and error class",
        );

        let staged_bytes: Gauge = registered(
            &mut registry,
            "flowlog_staged_bytes",
            "Bytes of sealed files waiting for upload",
        );
        let staged_files: Gauge = registered(
            &mut registry,
            "flowlog_staged_files",
            "Sealed files waiting for upload",
        );
        let open_files: Gauge = registered(
            &mut registry,
            "flowlog_open_files",
            "Streams being written (records waiting or a file open)",
        );
        let wal_bytes: Gauge = registered(
            &mut registry,
            "flowlog_wal_bytes",
            "Bytes in the write-ahead log",
        );
        let oldest_unpublished_window_age_seconds: Gauge = registered(
            &mut registry,
            "flowlog_oldest_unpublished_window_age_seconds",
            "Age of the oldest window end with records not yet published (0 when none)",
        );

        let sealed_files: Family<SealLabels, Counter> = registered(
            &mut registry,
            "flowlog_sealed_files",
            "Files sealed, by reason",
        );

        // 5 ms … ~82 s.
        let upload_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "flowlog_upload_seconds",
            "Duration of successful uploads",
            upload_seconds.clone(),
        );

        let build_info: Family<BuildInfoLabels, Gauge> = registered(
            &mut registry,
            "flowlog_build_info",
            "Build information; always 1",
        );
        build_info
            .get_or_create(&BuildInfoLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);

        let ingest_batches: Family<IngestLabels, Counter> = registered_if(
            ingest,
            &mut registry,
            "flowlog_ingest_batches",
            "Batches pushed by agents, by result",
        );
        let ingest_records: Counter = registered_if(
            ingest,
            &mut registry,
            "flowlog_ingest_records",
            "Records of pushed batches written to the WAL",
        );
        let ingest_dedupe_hits: Counter = registered_if(
            ingest,
            &mut registry,
            "flowlog_ingest_dedupe_hits",
            "Pushed batches the WAL already had (acked without writing)",
        );
        let ingest_auth_failures: Family<AuthFailureLabels, Counter> = registered_if(
            ingest,
            &mut registry,
            "flowlog_ingest_auth_failures",
            "Push calls refused by authentication, by reason",
        );
        // 0.5 ms … ~16 s.
        let ingest_push_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        if ingest {
            registry.register(
                "flowlog_ingest_push_seconds",
                "Time from a decoded push to its answer",
                ingest_push_seconds.clone(),
            );
        }
        let ingest_pending_records: Gauge = registered_if(
            ingest,
            &mut registry,
            "flowlog_ingest_pending_records",
            "Records of pushes accepted but not yet in the WAL",
        );
        let ingest_agents: Gauge = registered_if(
            ingest,
            &mut registry,
            "flowlog_ingest_agents",
            "Agents in the dedupe state",
        );
        let ingest_refused: Family<ReasonLabels, Counter> = registered_if(
            ingest,
            &mut registry,
            "flowlog_ingest_refused",
            "Connections and push calls refused by a [listen] limit, by reason",
        );
        let quarantined_records: Family<ReasonLabels, Counter> = registered(
            &mut registry,
            "flowlog_quarantined_records",
            "Records that cannot be published, set aside under the state directory's quarantine/",
        );
        let quarantine_dropped: Counter = registered(
            &mut registry,
            "flowlog_quarantine_dropped_records",
            "Quarantined records not written because state.max_quarantine_bytes was reached",
        );
        for reason in REFUSED_REASONS {
            drop(ingest_refused.get_or_create(&ReasonLabels { reason }));
        }
        for reason in QUARANTINE_REASONS {
            drop(quarantined_records.get_or_create(&ReasonLabels { reason }));
        }
        for result in INGEST_RESULTS {
            drop(ingest_batches.get_or_create(&IngestLabels { result }));
        }
        for reason in AUTH_FAILURE_REASONS {
            drop(ingest_auth_failures.get_or_create(&AuthFailureLabels { reason }));
        }

        // `get_or_create` returns a read guard; dropping it at once just leaves the series.
        for sink in SINKS {
            let labels = SinkLabels { sink };
            drop(records_published.get_or_create(&labels));
            drop(files_published.get_or_create(&labels));
            drop(bytes_published.get_or_create(&labels));
            for class in RETRY_CLASSES {
                drop(upload_retries.get_or_create(&RetryLabels { sink, class }));
            }
        }
        for reason in SEAL_REASONS {
            drop(sealed_files.get_or_create(&SealLabels { reason }));
        }

        Arc::new(Metrics {
            registry,
            records_in,
            bad_records,
            late_records,
            records_published,
            files_published,
            bytes_published,
            upload_retries,
            staged_bytes,
            staged_files,
            open_files,
            wal_bytes,
            oldest_unpublished_window_age_seconds,
            sealed_files,
            upload_seconds,
            build_info,
            ingest_batches,
            ingest_records,
            ingest_dedupe_hits,
            ingest_auth_failures,
            ingest_push_seconds,
            ingest_pending_records,
            ingest_agents,
            ingest_refused,
            quarantined_records,
            quarantine_dropped,
        })
    }

    /// Records one answered push: its `result` (one of [`INGEST_RESULTS`]) and how long it
    /// took.
    pub fn observe_push(&self, result: &'static str, elapsed: Duration) {
        self.ingest_batches
            .get_or_create(&IngestLabels { result })
            .inc();
        self.ingest_push_seconds.observe(elapsed.as_secs_f64());
    }

    /// Records one connection or call refused by a limit (one of [`REFUSED_REASONS`]).
    pub fn observe_refused(&self, reason: &'static str) {
        self.ingest_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records one quarantined record (`reason` one of [`QUARANTINE_REASONS`]).
    pub fn observe_quarantined(&self, reason: &'static str) {
        self.quarantined_records
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Quarantined records so far, all reasons.
    pub fn quarantined_total(&self) -> u64 {
        QUARANTINE_REASONS
            .iter()
            .map(|&reason| {
                self.quarantined_records
                    .get_or_create(&ReasonLabels { reason })
                    .get()
            })
            .sum()
    }

    /// Records one call refused by authentication for `reason` (one of
    /// [`AUTH_FAILURE_REASONS`]).
    pub fn observe_auth_failure(&self, reason: &'static str) {
        self.ingest_auth_failures
            .get_or_create(&AuthFailureLabels { reason })
            .inc();
    }

    /// Records one successful upload to `sink` ([`SINK_LOCAL`] or [`SINK_S3`]) of a file
    /// of `bytes` bytes and `records` records that took `elapsed`.
    pub fn observe_upload(&self, sink: &'static str, bytes: u64, records: u64, elapsed: Duration) {
        let labels = SinkLabels { sink };
        self.records_published
            .get_or_create(&labels)
            .inc_by(records);
        self.files_published.get_or_create(&labels).inc();
        self.bytes_published.get_or_create(&labels).inc_by(bytes);
        self.upload_seconds.observe(elapsed.as_secs_f64());
    }

    /// Records one failed upload attempt to `sink` that will be retried: class
    /// [`RETRY_TRANSIENT`] when `retryable`, else [`RETRY_PERMANENT`].
    pub fn observe_upload_failure(&self, sink: &'static str, retryable: bool) {
        let class = if retryable {
            RETRY_TRANSIENT
        } else {
            RETRY_PERMANENT
        };
        self.upload_retries
            .get_or_create(&RetryLabels { sink, class })
            .inc();
    }

    /// Records one file sealed for `reason` (one of [`SEAL_REASONS`]).
    pub fn observe_sealed(&self, reason: &'static str) {
        self.sealed_files
            .get_or_create(&SealLabels { reason })
            .inc();
    }

    /// Sets the pipeline gauges at once: staged bytes and files, open files, WAL bytes and
    /// the age in seconds of the oldest unpublished window end (0 when none). Values above
    /// `i64::MAX` are clamped.
    pub fn set_pipeline_gauges(
        &self,
        staged_bytes: u64,
        staged_files: u64,
        open_files: u64,
        wal_bytes: u64,
        oldest_unpublished_window_age_seconds: u64,
    ) {
        let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.staged_bytes.set(clamp(staged_bytes));
        self.staged_files.set(clamp(staged_files));
        self.open_files.set(clamp(open_files));
        self.wal_bytes.set(clamp(wal_bytes));
        self.oldest_unpublished_window_age_seconds
            .set(clamp(oldest_unpublished_window_age_seconds));
    }

    /// Renders every metric as OpenMetrics text (ending in `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; on the impossible error the text so far is
        // returned rather than panicking.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

// ---------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------

/// Shared health state: healthy unless some component says otherwise.
///
/// Clones share the same state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    problems: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Health {
    /// Creates a healthy state.
    pub fn new() -> Health {
        Health::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        // The map is always consistent, so a poisoned lock is still usable.
        self.problems.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `component` unhealthy because of `reason` (replacing its previous reason).
    pub fn set_unhealthy(&self, component: &'static str, reason: String) {
        self.lock().insert(component, reason);
    }

    /// Marks `component` healthy again.
    pub fn set_healthy(&self, component: &'static str) {
        self.lock().remove(component);
    }

    /// Returns whether no component is unhealthy.
    pub fn is_healthy(&self) -> bool {
        self.lock().is_empty()
    }

    /// Returns the unhealthy components and their reasons, sorted by component.
    pub fn reasons(&self) -> Vec<(&'static str, String)> {
        self.lock().iter().map(|(c, r)| (*c, r.clone())).collect()
    }
}

// ---------------------------------------------------------------------------------------
// HTTP endpoint
// ---------------------------------------------------------------------------------------

/// What the endpoint answers: the metrics, and the components `health` lists.
#[derive(Debug)]
struct PipelineStatus {
    metrics: Arc<Metrics>,
    health: Health,
}

impl http::Status for PipelineStatus {
    fn metrics(&self) -> Option<String> {
        Some(self.metrics.encode())
    }

    fn problems(&self) -> Vec<(String, String)> {
        self.health
            .reasons()
            .into_iter()
            .map(|(component, reason)| (component.to_owned(), reason))
            .collect()
    }
}

/// Starts the `/metrics` and `/healthz` endpoint on `runtime` when `address` is set: binds
/// now (so a bad or busy address fails at startup), then serves until `cancel` fires.
pub fn start_http(
    runtime: &tokio::runtime::Runtime,
    address: Option<&str>,
    metrics: &Arc<Metrics>,
    health: &Health,
    cancel: &CancellationToken,
) -> Result<(), TelemetryError> {
    if let Some(address) = address {
        let listener = runtime.block_on(bind_http(address))?;
        runtime.spawn(serve_http(
            listener,
            Arc::clone(metrics),
            health.clone(),
            cancel.clone(),
        ));
    }
    Ok(())
}

/// Binds the metrics endpoint's listener to `addr` (such as `127.0.0.1:9464`).
pub async fn bind_http(addr: &str) -> Result<TcpListener, TelemetryError> {
    Ok(http::bind(addr).await?)
}

/// Serves `GET /metrics` (OpenMetrics text) and `GET /healthz` (`200 ok` or `503` with one
/// `component: reason` line per problem) on `listener`; other paths get `404`.
///
/// Returns once `cancel` fires and the open requests have finished.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
    cancel: CancellationToken,
) -> Result<(), TelemetryError> {
    let status = Arc::new(PipelineStatus { metrics, health });
    Ok(http::serve(listener, status, cancel).await?)
}

// ---------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------

/// Waits for `kind`; never resolves when the handler cannot be installed.
async fn wait_for(kind: SignalKind, name: &'static str) {
    match signal(kind) {
        Ok(mut stream) => {
            stream.recv().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, signal = name, "cannot listen for the signal");
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves on the first `SIGTERM` or `SIGINT`.
///
/// Both handlers are installed on the first poll; from then on these signals no longer
/// end the process by themselves.
pub async fn shutdown_signal() {
    let name = tokio::select! {
        () = wait_for(SignalKind::terminate(), "SIGTERM") => "SIGTERM",
        () = wait_for(SignalKind::interrupt(), "SIGINT") => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown requested");
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    #[test]
    fn ingest_series_are_exported_only_by_the_ingest_endpoint() {
        let serve = Metrics::new().encode();
        assert!(serve.contains("flowlog_ingest_batches_total{result=\"accepted\"} 0"));
        assert!(serve.contains("flowlog_ingest_push_seconds_bucket"));
        let publishing = Metrics::new_with(|_| {});
        publishing.ingest_records.inc();
        let text = publishing.encode();
        assert!(!text.contains("flowlog_ingest_"), "{text}");
        assert!(text.contains("flowlog_records_in_total 0"), "{text}");
    }

    /// Sends one HTTP/1.1 request and returns (status, headers, body).
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    async fn start() -> (
        SocketAddr,
        Arc<Metrics>,
        Health,
        CancellationToken,
        tokio::task::JoinHandle<Result<(), TelemetryError>>,
    ) {
        let listener = bind_http("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let health = Health::new();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve_http(
            listener,
            metrics.clone(),
            health.clone(),
            cancel.clone(),
        ));
        (addr, metrics, health, cancel, task)
    }

    #[test]
    fn init_tracing_twice_is_ok() {
        init_tracing(LogOutput::Text, "warn").unwrap();
        init_tracing(LogOutput::Json, "warn").unwrap();
    }

    #[test]
    fn encode_has_every_metric() {
        let m = Metrics::new();
        m.records_in.inc_by(3);
        m.observe_upload(SINK_LOCAL, 2048, 10, Duration::from_millis(250));
        m.observe_upload_failure(SINK_S3, true);
        m.observe_upload_failure(SINK_S3, false);
        m.observe_upload_failure(SINK_S3, false);
        m.observe_sealed("size_cap");
        m.set_pipeline_gauges(77, 2, 3, 4096, 42);
        m.observe_push(INGEST_ACCEPTED, Duration::from_millis(3));
        m.observe_auth_failure("agent_mismatch");
        let text = m.encode();
        for line in [
            "flowlog_records_in_total 3",
            "flowlog_bad_records_total 0",
            "flowlog_late_records_total 0",
            "flowlog_records_published_total{sink=\"local\"} 10",
            "flowlog_records_published_total{sink=\"s3\"} 0",
            "flowlog_files_published_total{sink=\"local\"} 1",
            "flowlog_bytes_published_total{sink=\"local\"} 2048",
            "flowlog_upload_retries_total{sink=\"s3\",class=\"transient\"} 1",
            "flowlog_upload_retries_total{sink=\"s3\",class=\"permanent\"} 2",
            "flowlog_upload_retries_total{sink=\"local\",class=\"permanent\"} 0",
            "flowlog_staged_bytes 77",
            "flowlog_staged_files 2",
            "flowlog_open_files 3",
            "flowlog_wal_bytes 4096",
            "flowlog_oldest_unpublished_window_age_seconds 42",
            "flowlog_sealed_files_total{reason=\"size_cap\"} 1",
            "flowlog_sealed_files_total{reason=\"shutdown\"} 0",
            "flowlog_upload_seconds_count 1",
            "flowlog_upload_seconds_sum 0.25",
            "# TYPE flowlog_upload_seconds histogram",
            "# TYPE flowlog_staged_bytes gauge",
            "# TYPE flowlog_records_in counter",
            "flowlog_ingest_batches_total{result=\"accepted\"} 1",
            "flowlog_ingest_batches_total{result=\"busy\"} 0",
            "flowlog_ingest_records_total 0",
            "flowlog_ingest_dedupe_hits_total 0",
            "flowlog_ingest_auth_failures_total{reason=\"agent_mismatch\"} 1",
            "flowlog_ingest_auth_failures_total{reason=\"missing\"} 0",
            "flowlog_ingest_push_seconds_count 1",
            "flowlog_ingest_pending_records 0",
            "flowlog_ingest_agents 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let build = format!(
            "flowlog_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.lines().any(|l| l == build), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn health_tracks_components() {
        let h = Health::new();
        let shared = h.clone();
        assert!(h.is_healthy());
        shared.set_unhealthy("wal", "disk full".into());
        shared.set_unhealthy("sink", "access denied".into());
        assert!(!h.is_healthy());
        assert_eq!(
            h.reasons(),
            vec![
                ("sink", "access denied".to_owned()),
                ("wal", "disk full".to_owned())
            ]
        );
        shared.set_unhealthy("wal", "disk still full".into());
        h.set_healthy("sink");
        assert_eq!(h.reasons(), vec![("wal", "disk still full".to_owned())]);
        h.set_healthy("wal");
        assert!(h.is_healthy());
        assert!(h.reasons().is_empty());
    }

    #[tokio::test]
    async fn metrics_endpoint_serves_counters() {
        let (addr, metrics, _health, cancel, task) = start().await;
        metrics.records_in.inc_by(5);
        metrics
            .files_published
            .get_or_create(&SinkLabels { sink: SINK_S3 })
            .inc_by(2);
        let (status, head, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        assert!(
            body.lines().any(|l| l == "flowlog_records_in_total 5"),
            "{body}"
        );
        assert!(
            body.lines()
                .any(|l| l == "flowlog_files_published_total{sink=\"s3\"} 2"),
            "{body}"
        );
        assert!(
            body.lines()
                .any(|l| l == "flowlog_files_published_total{sink=\"local\"} 0"),
            "{body}"
        );
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn healthz_flips() {
        let (addr, _metrics, health, cancel, task) = start().await;
        let (status, _, body) = request(addr, "GET", "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));

        health.set_unhealthy("sink", "upload failing: access denied".into());
        health.set_unhealthy("wal", "line one\nline two".into());
        let (status, _, body) = request(addr, "GET", "/healthz").await;
        assert_eq!(status, 503);
        assert_eq!(
            body,
            "sink: upload failing: access denied\nwal: line one line two\n"
        );

        health.set_healthy("sink");
        health.set_healthy("wal");
        let (status, _, body) = request(addr, "GET", "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn other_paths_are_404() {
        let (addr, _metrics, _health, cancel, task) = start().await;
        for path in ["/", "/metrics/x", "/health", "/favicon.ico"] {
            let (status, _, _) = request(addr, "GET", path).await;
            assert_eq!(status, 404, "{path}");
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn server_stops_when_cancelled() {
        let (addr, _metrics, _health, cancel, task) = start().await;
        // An idle keep-alive connection must not hold the shutdown up.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener still open"
        );
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let e = bind_http("256.0.0.1:1").await.unwrap_err();
        assert!(e.to_string().contains("256.0.0.1:1"), "{e}");
        let taken = bind_http("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = bind_http(&addr).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("cannot bind the metrics endpoint to {addr}")
        );
    }

    #[tokio::test]
    async fn shutdown_signal_resolves_on_sigterm() {
        let mut fut = std::pin::pin!(shutdown_signal());
        // Poll once so both handlers are installed before the signal is sent.
        tokio::select! {
            biased;
            () = &mut fut => panic!("resolved without a signal"),
            () = std::future::ready(()) => {}
        }
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap();
    }
}
