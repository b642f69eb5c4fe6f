//! [`Publisher`]: the one start / seal / stop sequence of every program that publishes.
//!
//! ```text
//! start:  runtime ─▶ metrics ─▶ sink (connect + startup check) ─▶ /metrics, /healthz
//!         ─▶ pipeline (recover the state directory, replay the WAL)
//! run:    submit batches (serve's handlers, import's readers, the agent's flow tables)
//! finish: seal the live streams ─▶ wait for the sink (within a grace, or until done)
//!         ─▶ stop the HTTP endpoint and uploads ─▶ stop the pipeline ─▶ stop the runtime
//! ```
//!
//! `serve`, `import` and the agent's standalone mode differ only in [`PublisherOptions`]
//! (how windows close, which metrics are exported, runtime threads) and in [`Wait`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::pipeline::{Pipeline, PipelineError, PipelineStats, Windows};
use crate::settings::Settings;
use crate::sink::{self, ConnectError, ObjectSink};
use crate::telemetry::{self, Health, Metrics, TelemetryError};

/// Failure to start or to finish publishing.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The async runtime could not be built.
    #[error("cannot start the async runtime")]
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

/// How a program runs its publisher.
#[derive(Debug, Clone)]
pub struct PublisherOptions {
    /// How windows close: by clock (`serve`, the agent) or by input (`import`).
    pub windows: Windows,
    /// Worker threads of the runtime that uploads and serves HTTP (`None`: one per core).
    pub runtime_threads: Option<usize>,
    /// Name of the runtime's threads.
    pub thread_name: &'static str,
    /// The metrics to export and update (see [`Metrics::new`] and [`Metrics::new_with`]).
    pub metrics: Arc<Metrics>,
}

/// How long [`Publisher::finish`] waits for the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// At most this long from now, or from an earlier shutdown signal that set the
    /// pipeline's [`crate::pipeline::ShutdownDeadline`]: what is not sealed stays in the WAL,
    /// what is not uploaded stays staged; both go out at the next start.
    Grace(Duration),
    /// Until every file is sealed and confirmed (the end of an `import`'s input).
    UntilPublished,
}

/// What [`Publisher::finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The pipeline's totals.
    pub stats: PipelineStats,
    /// True if every sealed file was confirmed by the sink before the wait ended.
    pub published: bool,
}

/// A running publishing pipeline with its runtime, sink and telemetry.
pub struct Publisher {
    runtime: tokio::runtime::Runtime,
    pipeline: Pipeline,
    cancel: CancellationToken,
    sink: Arc<dyn ObjectSink>,
    metrics: Arc<Metrics>,
    health: Health,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("sink", &self.sink.describe())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Builds the runtime, connects the sink (its startup check included), starts the
    /// `/metrics` and `/healthz` endpoint when `[service] metrics_address` is set, recovers
    /// the state directory and starts the pipeline.
    pub fn start(
        settings: &Settings,
        options: PublisherOptions,
    ) -> Result<Publisher, PublishError> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        if let Some(threads) = options.runtime_threads {
            builder.worker_threads(threads.max(1));
        }
        let runtime = builder
            .thread_name(options.thread_name)
            .enable_all()
            .build()
            .map_err(PublishError::Runtime)?;
        let cancel = CancellationToken::new();
        let health = Health::default();
        let metrics = options.metrics;
        let sink = runtime.block_on(sink::connect(&settings.sink))?;
        telemetry::start_http(
            &runtime,
            settings.service.metrics_address.as_deref(),
            &metrics,
            &health,
            &cancel,
        )?;
        let pipeline = Pipeline::start_with(
            settings,
            options.windows,
            Arc::clone(&sink),
            Arc::clone(&metrics),
            health.clone(),
            runtime.handle().clone(),
            cancel.clone(),
        )?;
        Ok(Publisher {
            runtime,
            pipeline,
            cancel,
            sink,
            metrics,
            health,
        })
    }

    /// The pipeline records are submitted to.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The runtime uploads run on (a server's tasks may run there too).
    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }

    /// The metrics this publisher updates.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What `/healthz` answers.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Where files go (`file:///…/flowlogs`, `s3://bucket`).
    pub fn describe(&self) -> String {
        self.sink.describe()
    }

    /// Seals the live streams, waits for the sink as `wait` says, then stops the HTTP
    /// endpoint, the uploads, the pipeline and the runtime. When the pipeline failed, the
    /// error that stopped it is returned; what it held stays in the state directory.
    pub fn finish(self, wait: Wait) -> Result<Finished, PublishError> {
        let waited = match wait {
            Wait::Grace(grace) => self.pipeline.finish(grace),
            Wait::UntilPublished => self.pipeline.seal_all().and_then(|()| {
                self.pipeline
                    .wait_published(Duration::from_secs(u64::MAX / 4))
            }),
        };
        self.cancel.cancel();
        // A failed wait means the pipeline has stopped: `stop` says why.
        let stopped = self.pipeline.stop();
        self.runtime.shutdown_timeout(Duration::from_secs(1));
        let stats = stopped?;
        Ok(Finished {
            stats,
            published: waited?,
        })
    }
}
