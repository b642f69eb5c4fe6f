//! Logs and the `/metrics` + `/healthz` endpoint of an agent shipping to aggregators (the
//! lean agent has no publishing pipeline whose endpoint it could share).

use std::io::IsTerminal;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use super::Shared;
use super::settings::{LogOutput, ServiceSettings};

/// Failure of the service endpoint or the logs.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The metrics address could not be bound.
    #[error("cannot listen on service.metrics_address {address}")]
    Bind {
        /// The address.
        address: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The log filter does not parse.
    #[error("log filter '{filter}' (from {origin}) does not parse: {problem}")]
    LogFilter {
        /// The filter.
        filter: String,
        /// `RUST_LOG` or `service.log_level`.
        origin: &'static str,
        /// What is wrong.
        problem: String,
    },
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Installs the global log subscriber (stderr, text or JSON); `RUST_LOG` wins over
/// `service.log_level` when set. A second call does nothing.
pub fn init_logs(service: &ServiceSettings) -> Result<(), ServiceError> {
    let (filter, origin) = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => (env, "RUST_LOG"),
        _ => (service.log_level.clone(), "service.log_level"),
    };
    let env_filter = EnvFilter::try_new(&filter).map_err(|e| ServiceError::LogFilter {
        filter: filter.clone(),
        origin,
        problem: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let _already_set = match service.log_format {
        LogOutput::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogOutput::Json => builder.json().try_init(),
    };
    Ok(())
}

/// Binds the metrics endpoint's listener (so a bad or busy address fails at startup).
pub async fn bind(address: &str) -> Result<TcpListener, ServiceError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServiceError::Bind {
            address: address.to_owned(),
            source,
        })
}

/// Serves `GET /metrics` and `GET /healthz` until `cancel` fires.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening");
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "the metrics endpoint failed");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mut registry = Registry::default();
    shared.metrics.register(&mut registry);
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response();
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], out).into_response()
}

/// `200 ok`, or `503` with one `component: reason` line per problem: no aggregator
/// endpoint connected, or records dropped because the spool was full.
async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let (connected, batches, dropped) = {
        let state = shared.lock();
        (
            state.dispatch.any_connected(),
            state.spool.batches(),
            state.spool.dropped_records(),
        )
    };
    let mut body = String::new();
    if !connected {
        body.push_str(&format!(
            "aggregator: no endpoint reachable; {batches} batches wait in the spool\n"
        ));
    }
    if dropped > 0 {
        body.push_str(&format!(
            "spool: full; {dropped} records replaced by SKIPDATA since the start\n"
        ));
    }
    if body.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}
