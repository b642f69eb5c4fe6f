//! Standalone mode: the aggregator's publishing pipeline runs inside the agent.
//!
//! ```text
//! capture / replay ─▶ flow tables ─▶ records ─▶ Publisher::submit ─▶ WAL ─▶ 5-minute windows
//!   ─▶ text.gz / Parquet files ─▶ local directory (./flowlogs/AWSLogs/…) or S3
//! ```
//!
//! The config's `[output]` file keys, `[sink]`, `[state]` and `[service]` are the
//! aggregator's (see `docs/configuration.md`). Records are durable once submitted (the
//! WAL is fsynced per the `[state]` policy); [`Publisher::finish`] seals the open windows
//! and waits for their upload, and whatever is still staged is published at the next start.

use std::sync::Arc;
use std::time::Duration;

use flowlog_aggregator::config::Settings;
use flowlog_aggregator::pipeline::batch::WalBatch;
use flowlog_aggregator::pipeline::{Pipeline, PipelineError, PipelineStats};
use flowlog_aggregator::sink::{self, ConnectError, ObjectSink};
use flowlog_aggregator::telemetry::{self, Health, Metrics, TelemetryError};
use flowlog_formats::FlowRecord;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::config::AgentSettings;

/// Records per WAL batch at most when records are handed over one by one (replay).
pub const BATCH_RECORDS: usize = 16_384;

/// Failure of standalone publishing.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// The async runtime could not be built.
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    /// The sink failed to build or its startup check failed.
    #[error(transparent)]
    Sink(#[from] ConnectError),
    /// The metrics endpoint could not be started.
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    /// The pipeline failed (records already submitted stay in the WAL).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// What [`Publisher::finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishSummary {
    /// Records submitted by this run.
    pub records: u64,
    /// The pipeline's totals.
    pub stats: PipelineStats,
    /// True if every sealed file was confirmed by the sink before the grace ran out.
    pub published: bool,
}

/// The publishing pipeline of standalone mode.
pub struct Publisher {
    runtime: tokio::runtime::Runtime,
    pipeline: Pipeline,
    cancel: CancellationToken,
    sink: Arc<dyn ObjectSink>,
    publish: Settings,
    flow_log_id: String,
    account_id: String,
    region: String,
    pending: Vec<FlowRecord>,
    records: u64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("sink", &self.sink.describe())
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects the sink (startup check included), starts the metrics endpoint when
    /// `[service].metrics_address` is set (serving the pipeline's metrics and those
    /// `register` adds), recovers the state directory and starts the pipeline.
    pub fn start(
        settings: &AgentSettings,
        register: impl FnOnce(&mut Registry),
        health: Health,
    ) -> Result<Publisher, StandaloneError> {
        let publish = settings.publish.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("publish")
            .enable_all()
            .build()
            .map_err(StandaloneError::Runtime)?;
        let cancel = CancellationToken::new();
        let metrics = Metrics::new_with(register);
        let sink = runtime.block_on(sink::connect(&publish.sink))?;
        telemetry::start_http(
            &runtime,
            publish.service.metrics_address.as_deref(),
            &metrics,
            &health,
            &cancel,
        )?;
        let pipeline = Pipeline::start(
            &publish,
            Arc::clone(&sink),
            metrics,
            health,
            runtime.handle().clone(),
            cancel.clone(),
        )?;
        Ok(Publisher {
            runtime,
            pipeline,
            cancel,
            sink,
            flow_log_id: settings.flow_log_id.clone(),
            account_id: settings.account_id.to_string(),
            region: settings.region.to_string(),
            publish,
            pending: Vec::new(),
            records: 0,
        })
    }

    /// Returns where files go (`file:///…/flowlogs`, `s3://bucket`).
    pub fn describe(&self) -> String {
        self.sink.describe()
    }

    /// Submits records (durable in the WAL before the next call returns; blocks while the
    /// pipeline is busy).
    pub fn submit(&mut self, records: Vec<FlowRecord>) -> Result<(), StandaloneError> {
        if records.is_empty() {
            return Ok(());
        }
        self.records += records.len() as u64;
        self.pipeline.submit(WalBatch {
            flow_log_id: self.flow_log_id.clone(),
            account_id: self.account_id.clone(),
            region: self.region.clone(),
            import: None,
            records,
        })?;
        Ok(())
    }

    /// Adds one record, submitting a batch every [`BATCH_RECORDS`] records.
    pub fn push(&mut self, record: FlowRecord) -> Result<(), StandaloneError> {
        if self.pending.capacity() == 0 {
            self.pending = self.pipeline.record_buffer(BATCH_RECORDS);
        }
        self.pending.push(record);
        if self.pending.len() >= BATCH_RECORDS {
            self.flush()?;
        }
        Ok(())
    }

    /// Submits the records added by [`Publisher::push`] so far.
    pub fn flush(&mut self) -> Result<(), StandaloneError> {
        let batch = std::mem::take(&mut self.pending);
        self.submit(batch)
    }

    /// Seals every live stream, waits up to `grace` (default: `[service].shutdown_grace`) for
    /// the sink to confirm them, and stops the pipeline.
    pub fn finish(mut self, grace: Option<Duration>) -> Result<PublishSummary, StandaloneError> {
        self.flush()?;
        let published = self
            .pipeline
            .finish(grace.unwrap_or(self.publish.service.shutdown_grace))?;
        self.cancel.cancel();
        let stats = self.pipeline.stop()?;
        self.runtime.shutdown_timeout(Duration::from_secs(1));
        Ok(PublishSummary {
            records: self.records,
            stats,
            published,
        })
    }
}
