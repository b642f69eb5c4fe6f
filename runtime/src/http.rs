//! The `/metrics` and `/healthz` endpoint both binaries serve.
//!
//! What the two answer is the caller's: a [`Status`] renders the metrics (OpenMetrics text)
//! and lists the unhealthy components. `/healthz` is `200 ok`, or `503` with one
//! `component: reason` line per problem; other paths get `404`.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Content type of the `/metrics` answer.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint answers with.
pub trait Status: Send + Sync + 'static {
    /// The metrics in OpenMetrics text, or `None` when they cannot be encoded.
    fn metrics(&self) -> Option<String>;
    /// Unhealthy components and why; empty when healthy.
    fn problems(&self) -> Vec<(String, String)>;
}

/// Failure of the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The endpoint cannot listen on its address.
    #[error("cannot bind the metrics endpoint to {addr}")]
    Bind {
        /// The address as given.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The endpoint failed while serving.
    #[error("the metrics endpoint failed")]
    Serve(#[source] std::io::Error),
}

/// Binds the endpoint's listener to `addr` (such as `127.0.0.1:9464`), so that a bad or
/// busy address fails at startup.
pub async fn bind(addr: &str) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind {
            addr: addr.to_owned(),
            source,
        })
}

/// Serves `GET /metrics` and `GET /healthz` on `listener` from `status`; returns once
/// `cancel` fires and the open requests have finished.
pub async fn serve(
    listener: TcpListener,
    status: Arc<dyn Status>,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics endpoint listening");
    }
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(health))
        .fallback(not_found)
        .with_state(status);
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(HttpError::Serve)
}

async fn metrics(State(status): State<Arc<dyn Status>>) -> Response {
    match status.metrics() {
        Some(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

async fn health(State(status): State<Arc<dyn Status>>) -> Response {
    let problems = status.problems();
    if problems.is_empty() {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let mut body = String::new();
    for (component, reason) in problems {
        // One line per reason, whatever the reason text holds.
        let reason = reason.replace(['\r', '\n'], " ");
        body.push_str(&component);
        body.push_str(": ");
        body.push_str(&reason);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}
