//! What happens around every call before and after the `Ingest` service sees it.
//!
//! - At most `listen.max_concurrent_pushes` calls are received and handled at once (a call
//!   that finds no slot within `push_timeout` is refused as busy), so memory stays bounded
//!   however many agents push: a waiting call's body is held back by HTTP/2 flow control.
//! - A message larger than `listen.max_batch_bytes` is refused by tonic's decoder with
//!   OUT_OF_RANGE (or RESOURCE_EXHAUSTED when it only grows past the limit while being
//!   decompressed); the delivery contract says INVALID_ARGUMENT, so the answer is rewritten.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use crate::telemetry::{INGEST_BUSY, INGEST_INVALID, Metrics};

/// When a call must have found room (`push_timeout` after it arrived), passed to the
/// service in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

/// Wraps the `Ingest` server.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    calls: Arc<Semaphore>,
    push_timeout: Duration,
    max_batch_bytes: usize,
    metrics: Arc<Metrics>,
}

impl<S> Guard<S> {
    /// Wraps `inner`; `calls` holds one permit per call handled at once.
    pub fn new(
        inner: S,
        calls: Arc<Semaphore>,
        push_timeout: Duration,
        max_batch_bytes: usize,
        metrics: Arc<Metrics>,
    ) -> Guard<S> {
        Guard {
            inner,
            calls,
            push_timeout,
            max_batch_bytes,
            metrics,
        }
    }
}

impl<S: NamedService> NamedService for Guard<S> {
    const NAME: &'static str = S::NAME;
}

/// The peer of a call, from the connection info tonic attaches.
fn peer_of(request: &Request<Body>) -> String {
    let ext = request.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// Rewrites a decoder's "message too large" answer as INVALID_ARGUMENT naming the limit.
fn rewrite_oversize(response: &mut Response<Body>, max_batch_bytes: usize) -> bool {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return false;
    };
    if !matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted) {
        return false;
    }
    let replaced = Status::invalid_argument(format!(
        "the batch is larger than listen.max_batch_bytes ({max_batch_bytes} bytes): {}",
        status.message()
    ));
    let headers = response.headers_mut();
    headers.remove(Status::GRPC_STATUS);
    headers.remove(Status::GRPC_MESSAGE);
    headers.remove(Status::GRPC_STATUS_DETAILS);
    if replaced.add_header(headers).is_err() {
        return false;
    }
    response.extensions_mut().insert(replaced);
    true
}

impl<S> Service<Request<Body>> for Guard<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone is ready as the original was; the original is left for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let calls = Arc::clone(&self.calls);
        let push_timeout = self.push_timeout;
        let max_batch_bytes = self.max_batch_bytes;
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let started = Instant::now();
            let deadline = started + push_timeout;
            let permit = match tokio::time::timeout_at(deadline.into(), calls.acquire_owned()).await
            {
                Ok(Ok(permit)) => permit,
                Ok(Err(_closed)) => {
                    metrics.observe_push(INGEST_BUSY, started.elapsed());
                    return Ok(Status::unavailable(
                        "the aggregator is shutting down; nothing was written",
                    )
                    .into_http());
                }
                Err(_elapsed) => {
                    metrics.observe_push(INGEST_BUSY, started.elapsed());
                    return Ok(Status::unavailable(format!(
                            "aggregator busy: listen.max_concurrent_pushes calls are in progress and none finished within {}; nothing was written, retry later",
                            humantime::format_duration(push_timeout)
                        ))
                        .into_http());
                }
            };
            request.extensions_mut().insert(Deadline(deadline));
            let peer = peer_of(&request);
            let mut response = inner.call(request).await?;
            drop(permit);
            if rewrite_oversize(&mut response, max_batch_bytes) {
                metrics.observe_push(INGEST_INVALID, started.elapsed());
                tracing::warn!(
                    peer = %peer,
                    "refused a push larger than listen.max_batch_bytes ({max_batch_bytes} bytes)"
                );
            }
            Ok(response)
        })
    }
}
