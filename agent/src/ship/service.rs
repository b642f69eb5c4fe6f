//! Logs and the `/metrics` + `/healthz` answers of an agent shipping to aggregators. The
//! log subscriber and the endpoint are `flowlog_runtime`'s, as in the publishing pipeline
//! (which the lean agent does not link); what they answer is the shipper's.

use std::sync::Arc;

use flowlog_runtime::http::{self, HttpError};
use flowlog_runtime::logs::LogFilterError;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::settings::ServiceSettings;

/// Failure of the service endpoint or the logs.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The metrics address could not be bound.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The log filter does not parse.
    #[error(transparent)]
    LogFilter(#[from] LogFilterError),
}

/// Installs the global log subscriber (stderr, text or JSON); `RUST_LOG` wins over
/// `service.log_level` when set. A second call does nothing.
pub fn init_logs(service: &ServiceSettings) -> Result<(), ServiceError> {
    Ok(flowlog_runtime::logs::init(
        service.log_format,
        &service.log_level,
    )?)
}

/// Binds the metrics endpoint's listener (so a bad or busy address fails at startup).
pub async fn bind(address: &str) -> Result<TcpListener, ServiceError> {
    Ok(http::bind(address).await?)
}

/// Serves `GET /metrics` and `GET /healthz` until `cancel` fires.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    if let Err(e) = http::serve(listener, Arc::new(ShipStatus(shared)), cancel).await {
        tracing::error!(error = %e, "the metrics endpoint failed");
    }
}

/// What the endpoint answers for a shipping agent.
struct ShipStatus(Arc<Shared>);

impl http::Status for ShipStatus {
    fn metrics(&self) -> Option<String> {
        let mut registry = Registry::default();
        self.0.metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).ok()?;
        Some(out)
    }

    /// No aggregator endpoint connected, or records dropped because the spool was full.
    fn problems(&self) -> Vec<(String, String)> {
        let (connected, batches, dropped) = {
            let state = self.0.lock();
            (
                state.dispatch.any_connected(),
                state.spool.batches(),
                state.spool.dropped_records(),
            )
        };
        let mut problems = Vec::new();
        if !connected {
            problems.push((
                "aggregator".to_owned(),
                format!("no endpoint reachable; {batches} batches wait in the spool"),
            ));
        }
        if dropped > 0 {
            problems.push((
                "spool".to_owned(),
                format!("full; {dropped} records replaced by SKIPDATA since the start"),
            ));
        }
        problems
    }
}
