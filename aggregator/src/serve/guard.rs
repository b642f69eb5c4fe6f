//! What happens around every call before the `Ingest` service sees it, in this order:
//!
//! 1. **Authentication from the headers**: the bearer token is checked before any byte of
//!    the body is read, so an unauthenticated call costs the server its headers only
//!    (answered UNAUTHENTICATED; counted; logged at most once per reason every 10 s).
//! 2. **Per-agent calls**: one agent (token) has at most `listen.max_calls_per_agent` calls
//!    in progress; more are answered UNAVAILABLE at once, so one agent cannot take every
//!    slot.
//! 3. **Size from the first bytes**: the gRPC length prefix is read (within
//!    `listen.body_timeout`) and a message larger than `listen.max_batch_bytes` is refused
//!    INVALID_ARGUMENT before it waits for a slot or is buffered.
//! 4. **Call slots**: at most `listen.max_concurrent_pushes` calls are received and handled
//!    at once (a call that finds no slot within `push_timeout` is refused as busy); a
//!    waiting call's body is held back by HTTP/2 flow control.
//! 5. **Body deadline**: the rest of the body must arrive within `listen.body_timeout`,
//!    else UNAVAILABLE (nothing was written): a client that trickles its body holds a slot
//!    for that long at most.
//!
//! A message that only grows past `listen.max_batch_bytes` while being decompressed is
//! refused by tonic's decoder with OUT_OF_RANGE or RESOURCE_EXHAUSTED; the delivery contract
//! says INVALID_ARGUMENT, so the answer is rewritten.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use flowlog_transport::AUTHORIZATION;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use super::auth::{Authenticator, Grant};
use super::limits::LogLimiter;
use flowlog_publish::telemetry::{
    INGEST_BUSY, INGEST_INVALID, Metrics, REFUSED_AGENT_CALLS, REFUSED_BODY_TIMEOUT,
    REFUSED_TOO_LARGE,
};

/// When a call must have found room (`push_timeout` after it arrived), passed to the
/// service in the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

/// The authenticated caller, passed to the service in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Grant>);

/// Bytes of the gRPC message prefix: a compression flag and a 4-byte length.
const PREFIX_BYTES: usize = 5;

/// The limits the guard applies.
#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    /// How long a call may wait for a slot.
    pub push_timeout: Duration,
    /// How long the body may take to arrive.
    pub body_timeout: Duration,
    /// Largest message (compressed as sent, and once decompressed).
    pub max_batch_bytes: usize,
    /// Calls of one agent in progress at once.
    pub max_calls_per_agent: usize,
}

/// Wraps the `Ingest` server.
#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    auth: Arc<Authenticator>,
    calls: Arc<Semaphore>,
    agents: Arc<Mutex<HashMap<Arc<str>, Arc<Semaphore>>>>,
    limits: GuardLimits,
    metrics: Arc<Metrics>,
    log: Arc<LogLimiter>,
}

impl<S> Guard<S> {
    /// Wraps `inner`; `calls` holds one permit per call handled at once.
    pub fn new(
        inner: S,
        auth: Arc<Authenticator>,
        calls: Arc<Semaphore>,
        limits: GuardLimits,
        metrics: Arc<Metrics>,
        log: Arc<LogLimiter>,
    ) -> Guard<S> {
        Guard {
            inner,
            auth,
            calls,
            agents: Arc::default(),
            limits,
            metrics,
            log,
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

/// A refusal: the status, the `result` it is counted under (if any), and the log line's
/// reason (rate-limited per reason).
struct Refusal {
    status: Status,
    result: Option<&'static str>,
    reason: &'static str,
}

impl Refusal {
    fn new(status: Status, result: Option<&'static str>, reason: &'static str) -> Refusal {
        Refusal {
            status,
            result,
            reason,
        }
    }
}

/// Reads body frames into `buf` until it holds `want` bytes, the body ends, or `deadline`.
/// Returns whether the body has ended.
async fn read_until(
    body: &mut Body,
    buf: &mut BytesMut,
    want: usize,
    deadline: Instant,
    body_timeout: Duration,
) -> Result<bool, Refusal> {
    while buf.len() < want {
        let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Err(_elapsed) => {
                return Err(Refusal::new(
                    Status::unavailable(format!(
                        "the request body did not arrive within listen.body_timeout ({}); nothing was written",
                        humantime::format_duration(body_timeout)
                    )),
                    Some(INGEST_BUSY),
                    REFUSED_BODY_TIMEOUT,
                ));
            }
            Ok(None) => return Ok(true),
            Ok(Some(Err(status))) => {
                return Err(Refusal::new(
                    Status::cancelled(format!(
                        "the request body was not received: {}",
                        status.message()
                    )),
                    None,
                    "body_error",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    Ok(false)
}

/// The length of the first message, from its prefix.
fn message_len(buf: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = buf.get(1..PREFIX_BYTES)?.try_into().ok()?;
    usize::try_from(u32::from_be_bytes(prefix)).ok()
}

fn too_large(len: usize, max: usize) -> Refusal {
    Refusal::new(
        Status::invalid_argument(format!(
            "the batch is larger than listen.max_batch_bytes ({max} bytes): its message is {len} bytes"
        )),
        Some(INGEST_INVALID),
        REFUSED_TOO_LARGE,
    )
}

impl<S> Guard<S> {
    /// The agent's call permit, or a refusal when it has `max_calls_per_agent` in progress.
    fn agent_call(&self, agent: &Arc<str>) -> Result<OwnedSemaphorePermit, Refusal> {
        let semaphore = {
            let mut agents = self.agents.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(
                agents
                    .entry(Arc::clone(agent))
                    .or_insert_with(|| Arc::new(Semaphore::new(self.limits.max_calls_per_agent))),
            )
        };
        semaphore.try_acquire_owned().map_err(|_| {
            Refusal::new(
                Status::unavailable(format!(
                    "agent '{agent}' already has {} calls in progress (listen.max_calls_per_agent); nothing was written, retry later",
                    self.limits.max_calls_per_agent
                )),
                Some(INGEST_BUSY),
                REFUSED_AGENT_CALLS,
            )
        })
    }
}

/// Everything a call goes through before the service; returns the request to hand on with
/// the permits that must be held until it is answered.
async fn admit(
    guard: GuardParts,
    request: Request<Body>,
    started: Instant,
) -> Result<(Request<Body>, [OwnedSemaphorePermit; 2]), Refusal> {
    let GuardParts {
        caller,
        calls,
        limits,
    } = guard;
    let (grant, agent_call) = caller?;
    let (mut parts, mut body) = request.into_parts();

    // The prefix tells the message's size before anything else is read.
    let mut buf = BytesMut::new();
    let first = Instant::now() + limits.body_timeout;
    let mut ended = read_until(
        &mut body,
        &mut buf,
        PREFIX_BYTES,
        first,
        limits.body_timeout,
    )
    .await?;
    let want = match message_len(&buf) {
        Some(len) if len > limits.max_batch_bytes => {
            return Err(too_large(len, limits.max_batch_bytes));
        }
        Some(len) => PREFIX_BYTES + len,
        // An empty or cut body: tonic answers it.
        None => buf.len(),
    };

    let deadline = started + limits.push_timeout;
    let slot = match tokio::time::timeout_at(deadline.into(), calls.acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_closed)) => {
            return Err(Refusal::new(
                Status::unavailable("the aggregator is shutting down; nothing was written"),
                Some(INGEST_BUSY),
                "shutting_down",
            ));
        }
        Err(_elapsed) => {
            return Err(Refusal::new(
                Status::unavailable(format!(
                    "aggregator busy: listen.max_concurrent_pushes calls are in progress and none finished within {}; nothing was written, retry later",
                    humantime::format_duration(limits.push_timeout)
                )),
                Some(INGEST_BUSY),
                "busy",
            ));
        }
    };
    if !ended {
        buf.reserve(want.saturating_sub(buf.len()));
        let rest = Instant::now() + limits.body_timeout;
        ended = read_until(&mut body, &mut buf, want, rest, limits.body_timeout).await?;
        if !ended {
            // A unary call holds one message: anything after it is refused by tonic.
            let mut extra = BytesMut::new();
            read_until(&mut body, &mut extra, 1, rest, limits.body_timeout).await?;
            if !extra.is_empty() {
                return Err(Refusal::new(
                    Status::invalid_argument("the request holds more than one message"),
                    Some(INGEST_INVALID),
                    "extra_message",
                ));
            }
        }
    }
    let body: Bytes = buf.freeze();
    parts.extensions.insert(Deadline(deadline));
    parts.extensions.insert(Caller(grant));
    let request = Request::from_parts(parts, Body::new(http_body_util::Full::new(body)));
    Ok((request, [agent_call, slot]))
}

/// What [`admit`] needs, taken from the guard before the call's future starts.
struct GuardParts {
    /// The authenticated caller and its per-agent call permit, or why there is none.
    caller: Result<(Arc<Grant>, OwnedSemaphorePermit), Refusal>,
    calls: Arc<Semaphore>,
    limits: GuardLimits,
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

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone is ready as the original was; the original is left for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        let peer = peer_of(&request);
        // Who calls is decided from the headers alone.
        let caller = self
            .auth
            .identify(
                request
                    .headers()
                    .get(AUTHORIZATION)
                    .map(tonic::codegen::http::HeaderValue::as_bytes),
            )
            .map_err(|failure| {
                self.metrics.observe_auth_failure(failure.reason());
                Refusal::new(failure.status(""), None, failure.reason())
            })
            .and_then(|grant| {
                let permit = self.agent_call(&grant.agent)?;
                Ok((grant, permit))
            });
        let parts = GuardParts {
            caller,
            calls: Arc::clone(&self.calls),
            limits: self.limits,
        };
        let metrics = Arc::clone(&self.metrics);
        let log = Arc::clone(&self.log);
        let max_batch_bytes = self.limits.max_batch_bytes;
        Box::pin(async move {
            let (request, permits) = match admit(parts, request, started).await {
                Ok(admitted) => admitted,
                Err(refusal) => {
                    if let Some(result) = refusal.result {
                        metrics.observe_push(result, started.elapsed());
                    }
                    if [REFUSED_AGENT_CALLS, REFUSED_BODY_TIMEOUT, REFUSED_TOO_LARGE]
                        .contains(&refusal.reason)
                    {
                        metrics.observe_refused(refusal.reason);
                    }
                    if let Some(suppressed) = log.allow(refusal.reason) {
                        tracing::warn!(
                            peer = %peer,
                            reason = refusal.reason,
                            error = refusal.status.message(),
                            suppressed,
                            "refused a push"
                        );
                    }
                    return Ok(refusal.status.into_http());
                }
            };
            let mut response = inner.call(request).await?;
            drop(permits);
            if rewrite_oversize(&mut response, max_batch_bytes) {
                metrics.observe_push(INGEST_INVALID, started.elapsed());
                if let Some(suppressed) = log.allow(REFUSED_TOO_LARGE) {
                    tracing::warn!(
                        peer = %peer,
                        suppressed,
                        "refused a push larger than listen.max_batch_bytes ({max_batch_bytes} bytes) once decompressed"
                    );
                }
            }
            Ok(response)
        })
    }
}
