//! Standalone mode: the publishing pipeline (`flowlog-publish`) runs inside the agent.
//!
//! ```text
//! capture / replay ─▶ flow tables ─▶ records ─▶ Publisher::submit ─▶ WAL ─▶ 5-minute windows
//!   ─▶ text.gz / Parquet files ─▶ local directory (./flowlogs/AWSLogs/…) or S3
//! ```
//!
//! The config's `[output]` file keys, `[sink]`, `[state]` and `[service]` are those of
//! the aggregator (see `docs/configuration.md`). Records are durable once submitted (the
//! WAL is fsynced per the `[state]` policy); [`Publisher::finish`] seals the open windows
//! and waits for their upload, and whatever is still staged is published at the next start.

use std::time::Duration;

use flowlog_formats::FlowRecord;
use flowlog_publish::pipeline::batch::WalBatch;
use flowlog_publish::pipeline::{DEFAULT_MAX_RECORD_AHEAD, PipelineStats, Windows};
use flowlog_publish::telemetry::Metrics;
use flowlog_publish::{PublishError, PublisherOptions, Wait};
use prometheus_client::registry::Registry;

use crate::config::AgentSettings;

/// Records per WAL batch at most when records are handed over one by one (replay).
pub const BATCH_RECORDS: usize = 16_384;

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

/// The publishing pipeline of standalone mode: [`flowlog_publish::Publisher`] with the
/// agent's identity on every batch and records gathered into batches.
#[derive(Debug)]
pub struct Publisher {
    inner: flowlog_publish::Publisher,
    grace: Duration,
    flow_log_id: String,
    account_id: String,
    region: String,
    pending: Vec<FlowRecord>,
    records: u64,
}

impl Publisher {
    /// Connects the sink (startup check included), starts the metrics endpoint when
    /// `[service].metrics_address` is set (serving the pipeline's metrics and those
    /// `register` adds), recovers the state directory and starts the pipeline. Windows
    /// close by the clock.
    pub fn start(
        settings: &AgentSettings,
        register: impl FnOnce(&mut Registry),
    ) -> Result<Publisher, PublishError> {
        let inner = flowlog_publish::Publisher::start(
            &settings.publish,
            PublisherOptions {
                windows: Windows::ByClock {
                    max_ahead: DEFAULT_MAX_RECORD_AHEAD,
                },
                runtime_threads: Some(2),
                thread_name: "publish",
                metrics: Metrics::new_with(register),
            },
        )?;
        Ok(Publisher {
            inner,
            grace: settings.publish.service.shutdown_grace,
            flow_log_id: settings.flow_log_id.clone(),
            account_id: settings.account_id.to_string(),
            region: settings.region.to_string(),
            pending: Vec::new(),
            records: 0,
        })
    }

    /// Returns where files go (`file:///…/flowlogs`, `s3://bucket`).
    pub fn describe(&self) -> String {
        self.inner.describe()
    }

    /// Submits records (durable in the WAL before the next call returns; blocks while the
    /// pipeline is busy).
    pub fn submit(&mut self, records: Vec<FlowRecord>) -> Result<(), PublishError> {
        if records.is_empty() {
            return Ok(());
        }
        self.records += records.len() as u64;
        self.inner.pipeline().submit(WalBatch {
            flow_log_id: self.flow_log_id.clone(),
            account_id: self.account_id.clone(),
            region: self.region.clone(),
            import: None,
            records,
        })?;
        Ok(())
    }

    /// Adds one record, submitting a batch every [`BATCH_RECORDS`] records.
    pub fn push(&mut self, record: FlowRecord) -> Result<(), PublishError> {
        if self.pending.capacity() == 0 {
            self.pending = self.inner.pipeline().record_buffer(BATCH_RECORDS);
        }
        self.pending.push(record);
        if self.pending.len() >= BATCH_RECORDS {
            self.flush()?;
        }
        Ok(())
    }

    /// Submits the records added by [`Publisher::push`] so far.
    pub fn flush(&mut self) -> Result<(), PublishError> {
        let batch = std::mem::take(&mut self.pending);
        self.submit(batch)
    }

    /// Seals every live stream, waits up to `grace` (default: `[service].shutdown_grace`) for
    /// the sink to confirm them, and stops the pipeline.
    pub fn finish(mut self, grace: Option<Duration>) -> Result<PublishSummary, PublishError> {
        self.flush()?;
        let finished = self
            .inner
            .finish(Wait::Grace(grace.unwrap_or(self.grace)))?;
        Ok(PublishSummary {
            records: self.records,
            stats: finished.stats,
            published: finished.published,
        })
    }
}
