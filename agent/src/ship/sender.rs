//! The sender: one task per aggregator endpoint pushes spooled batches over gRPC/TLS.
//!
//! - The **active** endpoint is the first in config order that is connected and not
//!   backing off; it takes the batches that are free to go anywhere. While the preferred
//!   endpoint is down its task keeps reconnecting (exponential backoff with full jitter,
//!   capped at `retry_max`), and it takes over again as soon as it is back.
//! - Up to `max_in_flight` batches await their reply per endpoint.
//! - Replies (docs/delivery.md): OK → the batch is done (`duplicate = true` counted apart);
//!   UNAUTHENTICATED / PERMISSION_DENIED → logged once per change, backoff, retry;
//!   INVALID_ARGUMENT → logged naming the seq and the server's message, the batch is kept
//!   and retried after `retry_max`; UNAVAILABLE → backoff; anything else, a timeout or a
//!   broken connection → the outcome is unknown and the batch is **pinned** to that
//!   endpoint: it is retried there only, whenever it is reachable. A batch that never
//!   reached an endpoint (the connection was refused) is free again.
//! - A batch is pinned to an endpoint durably (in the spool) before its first send there,
//!   and the pin is released only by an ack or a definite refusal. So after a crash of the
//!   agent, a batch an aggregator may already hold goes back to that aggregator only.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowlog_runtime::backoff::Backoff;
use flowlog_runtime::error_chain;
use flowlog_transport::{AUTHORIZATION, MAX_MESSAGE_BYTES, pb};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::Shared;
use super::settings::{Compression, ShipSettings};
use crate::metrics::{AckLabels, EndpointLabels, FailureLabels};

/// Smallest step of the exponential backoff.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Most doublings of [`BACKOFF_BASE`] (about 29 h), whatever `retry_max`.
const BACKOFF_DOUBLINGS: u32 = 20;
/// Shortest backoff delay (unless the ceiling is shorter).
const BACKOFF_FLOOR: Duration = Duration::from_millis(10);
/// How often an idle endpoint task looks for work it was not woken for (delays expiring).
const TICK: Duration = Duration::from_millis(100);

/// Exponential backoff with full jitter: a random delay up to `min(cap, 100ms · 2^n)`
/// (`n` at most 20), and at least 10 ms (or that ceiling, when it is shorter).
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    schedule(cap).transient_delay_at_least(attempt.saturating_add(1), BACKOFF_FLOOR)
}

/// The schedule of [`backoff`]: attempt `n + 1` of the [`Backoff`] has the ceiling
/// `min(cap, 100ms · 2^min(n, 20))`.
fn schedule(cap: Duration) -> Backoff {
    Backoff {
        initial: BACKOFF_BASE,
        max: cap.min(BACKOFF_BASE.saturating_mul(1u32 << BACKOFF_DOUBLINGS)),
        // Refusals are retried on the transient schedule.
        permanent_max: cap,
    }
}

/// Delivery state of a batch that is not simply waiting for the active endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct BatchState {
    /// Sent to this endpoint, reply pending.
    in_flight: Option<usize>,
    /// Outcome unknown at this endpoint: retried there only.
    pinned: Option<usize>,
    /// Not to be sent before this.
    not_before: Option<Instant>,
    /// Pushes made.
    attempts: u32,
    /// The last refusal logged for this batch.
    last_refusal: Option<String>,
}

/// State of one endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointState {
    connected: bool,
    /// Backing off after a refusal (auth, busy): takes no batch until then.
    paused_until: Option<Instant>,
    /// Refusals in a row (the backoff's exponent).
    refusals: u32,
    /// The last problem logged (logged again only when it changes).
    last_problem: Option<String>,
    /// Batches pinned here.
    pinned: usize,
}

/// Which batch goes where.
#[derive(Debug, Default)]
pub(crate) struct Dispatch {
    batches: HashMap<u64, BatchState>,
    endpoints: Vec<EndpointState>,
}

impl Dispatch {
    pub(crate) fn new(endpoints: usize) -> Dispatch {
        Dispatch {
            batches: HashMap::new(),
            endpoints: vec![EndpointState::default(); endpoints],
        }
    }

    fn usable(&self, i: usize, now: Instant) -> bool {
        self.endpoints
            .get(i)
            .is_some_and(|e| e.connected && e.paused_until.is_none_or(|t| t <= now))
    }

    /// The endpoint that takes free batches: the first usable one.
    fn active(&self, now: Instant) -> Option<usize> {
        (0..self.endpoints.len()).find(|&i| self.usable(i, now))
    }

    /// Batches pinned to some endpoint.
    pub(crate) fn pinned(&self) -> usize {
        self.endpoints.iter().map(|e| e.pinned).sum()
    }

    /// True if some endpoint is connected.
    pub(crate) fn any_connected(&self) -> bool {
        self.endpoints.iter().any(|e| e.connected)
    }

    fn pin(&mut self, seq: u64, i: usize) {
        let state = self.batches.entry(seq).or_default();
        if state.pinned.is_none() {
            state.pinned = Some(i);
            if let Some(e) = self.endpoints.get_mut(i) {
                e.pinned += 1;
            }
        }
    }

    /// Releases the pin of `seq` (the endpoint said for certain it did not write it).
    fn unpin(&mut self, seq: u64) {
        if let Some(state) = self.batches.get_mut(&seq)
            && let Some(p) = state.pinned.take()
            && let Some(e) = self.endpoints.get_mut(p)
        {
            e.pinned -= 1;
        }
    }

    /// Restores the pins the spool kept across a restart (`urls` = the endpoints in config
    /// order); a pin to an endpoint no longer configured is dropped with a warning.
    pub(crate) fn restore_pins(&mut self, spool: &super::spool::Spool, urls: &[String]) {
        for seq in spool.seqs() {
            let Some(url) = spool.pinned_to(seq) else {
                continue;
            };
            match urls.iter().position(|u| u == url) {
                Some(i) => self.pin(seq, i),
                None => tracing::warn!(
                    seq,
                    endpoint = url,
                    "batch was sent to an endpoint that is no longer configured; it may now reach the output twice"
                ),
            }
        }
    }

    /// Forgets an acknowledged batch.
    fn done(&mut self, seq: u64) {
        if let Some(state) = self.batches.remove(&seq)
            && let Some(p) = state.pinned
            && let Some(e) = self.endpoints.get_mut(p)
        {
            e.pinned -= 1;
        }
    }
}

/// What became of one push.
#[derive(Debug)]
enum Outcome {
    /// Acknowledged.
    Acked { duplicate: bool },
    /// A reply from the aggregator other than OK.
    Refused(Status),
    /// No reply within `push_timeout`.
    Timeout,
    /// The connection failed; `reached` = the request may have reached the aggregator.
    Transport { reached: bool, error: String },
    /// The batch could not be read from the spool.
    Spool(String),
}

/// True if the error says the connection could not be made at all (nothing was sent).
fn never_connected(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        let text = s.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        source = s.source();
    }
    false
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Runs the task of endpoint `i` until `cancel` fires.
pub(crate) async fn run_endpoint(shared: Arc<Shared>, i: usize, cancel: CancellationToken) {
    let settings = &shared.settings;
    let Some(ep) = settings.endpoints.get(i) else {
        return;
    };
    let url = ep.url.clone();
    let endpoint = match super::settings::build_endpoint(settings, ep) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(endpoint = %url, error = %error_chain(&e), "aggregator endpoint unusable");
            return;
        }
    };
    let mut failures: u32 = 0;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let connect = tokio::time::timeout(settings.connect_timeout, endpoint.connect());
        let result = tokio::select! {
            r = connect => r,
            () = cancel.cancelled() => return,
        };
        match result {
            Ok(Ok(channel)) => {
                failures = 0;
                shared.endpoint_connected(i, true);
                serve(&shared, i, channel, &cancel).await;
                shared.endpoint_connected(i, false);
            }
            Ok(Err(e)) => {
                shared.endpoint_problem(i, format!("cannot connect: {}", error_chain(&e)), false);
                failures = failures.saturating_add(1);
            }
            Err(_) => {
                shared.endpoint_problem(
                    i,
                    format!(
                        "cannot connect: no connection within {}",
                        humantime::format_duration(settings.connect_timeout)
                    ),
                    false,
                );
                failures = failures.saturating_add(1);
            }
        }
        let wait = backoff(failures, settings.retry_max);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return,
        }
    }
}

fn client(settings: &ShipSettings, channel: Channel) -> pb::ingest_client::IngestClient<Channel> {
    let client = pb::ingest_client::IngestClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let encoding = match settings.compression {
        Compression::Zstd => CompressionEncoding::Zstd,
        Compression::Gzip => CompressionEncoding::Gzip,
        Compression::None => return client,
    };
    client.send_compressed(encoding).accept_compressed(encoding)
}

/// Pushes batches over one connection until it breaks or `cancel` fires.
async fn serve(shared: &Arc<Shared>, i: usize, channel: Channel, cancel: &CancellationToken) {
    let settings = &shared.settings;
    let client = client(settings, channel);
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        match format!("Bearer {}", settings.token.expose()).parse() {
            Ok(v) => v,
            Err(_) => {
                tracing::error!("the token cannot be sent in a header");
                return;
            }
        };
    let mut in_flight: JoinSet<(u64, Outcome)> = JoinSet::new();
    let mut broken = false;
    loop {
        if !broken && !cancel.is_cancelled() {
            while in_flight.len() < settings.max_in_flight {
                let Some((seq, request)) = shared.take(i) else {
                    break;
                };
                let mut client = client.clone();
                let bearer = bearer.clone();
                let timeout = settings.push_timeout;
                in_flight.spawn(async move {
                    let request = match request {
                        Ok(r) => r,
                        Err(e) => return (seq, Outcome::Spool(e)),
                    };
                    let mut request = tonic::Request::new(request);
                    request.metadata_mut().insert(AUTHORIZATION, bearer);
                    let outcome = match tokio::time::timeout(timeout, client.push(request)).await {
                        Err(_) => Outcome::Timeout,
                        Ok(Ok(reply)) => Outcome::Acked {
                            duplicate: reply.get_ref().duplicate,
                        },
                        Ok(Err(status)) if std::error::Error::source(&status).is_some() => {
                            Outcome::Transport {
                                reached: !never_connected(&status),
                                error: error_chain(&status),
                            }
                        }
                        Ok(Err(status)) => Outcome::Refused(status),
                    };
                    (seq, outcome)
                });
            }
        }
        if in_flight.is_empty() && (broken || cancel.is_cancelled()) {
            return;
        }
        let notified = shared.wake.notified();
        tokio::select! {
            Some(joined) = in_flight.join_next() => {
                if let Ok((seq, outcome)) = joined
                    && shared.settle(i, seq, outcome)
                {
                    broken = true;
                }
            }
            () = notified => {}
            () = tokio::time::sleep(TICK) => {}
            () = cancel.cancelled(), if !cancel.is_cancelled() => {}
        }
    }
}

impl Shared {
    fn endpoint_url(&self, i: usize) -> String {
        self.settings
            .endpoints
            .get(i)
            .map(|e| e.url.clone())
            .unwrap_or_default()
    }

    fn endpoint_connected(&self, i: usize, connected: bool) {
        let url = self.endpoint_url(i);
        if let Some(ship) = &self.metrics.ship {
            ship.endpoint_up
                .get_or_create(&EndpointLabels {
                    endpoint: url.clone(),
                })
                .set(i64::from(connected));
        }
        let mut state = self.lock();
        let Some(e) = state.dispatch.endpoints.get_mut(i) else {
            return;
        };
        e.connected = connected;
        if connected {
            let was = e.last_problem.take();
            drop(state);
            match was {
                Some(problem) => {
                    tracing::info!(endpoint = %url, after = %problem, "aggregator endpoint reachable again");
                }
                None => tracing::info!(endpoint = %url, "connected to the aggregator"),
            }
        }
        self.changed.notify_all();
        self.wake.notify_waiters();
    }

    /// Logs a problem of endpoint `i` when it differs from the last one logged.
    fn endpoint_problem(&self, i: usize, problem: String, error: bool) {
        let url = self.endpoint_url(i);
        let mut state = self.lock();
        let Some(e) = state.dispatch.endpoints.get_mut(i) else {
            return;
        };
        if e.last_problem.as_deref() == Some(problem.as_str()) {
            return;
        }
        e.last_problem = Some(problem.clone());
        let others = state.dispatch.active(Instant::now());
        drop(state);
        let fallback = match others {
            Some(o) if o != i => format!("; sending to {}", self.endpoint_url(o)),
            _ => String::new(),
        };
        if error {
            tracing::error!(endpoint = %url, "{problem}{fallback}");
        } else {
            tracing::warn!(endpoint = %url, "{problem}; retrying{fallback}");
        }
    }

    /// The next batch endpoint `i` may send: a ready batch pinned to it, else (when it is
    /// the active endpoint) the lowest ready free batch. Marks it in flight.
    fn take(&self, i: usize) -> Option<(u64, Result<pb::PushRequest, String>)> {
        let now = Instant::now();
        let mut state = self.lock();
        let dispatch = &state.dispatch;
        if !dispatch.usable(i, now) {
            return None;
        }
        let takes_free = dispatch.active(now) == Some(i);
        let pinned_here = dispatch.endpoints.get(i).map_or(0, |e| e.pinned);
        if !takes_free && pinned_here == 0 {
            return None;
        }
        let seq = state.spool.seqs().find(|seq| {
            let Some(b) = state.dispatch.batches.get(seq) else {
                return takes_free;
            };
            if b.in_flight.is_some() || b.not_before.is_some_and(|t| t > now) {
                return false;
            }
            match b.pinned {
                Some(p) => p == i,
                None => takes_free,
            }
        })?;
        let request = state
            .spool
            .read_batch(seq)
            .map(|batch| pb::PushRequest {
                agent_id: self.settings.agent_id.clone(),
                spool_id: state.spool.spool_id(),
                seq,
                acked_below: state.spool.acked_below(),
                batch: Some(batch),
            })
            .map_err(|e| error_chain(&e));
        // Pinned before its first send, durably: after a crash it goes back to this
        // endpoint only (which dedupes), never to another one that would write it again.
        if state
            .dispatch
            .batches
            .get(&seq)
            .is_none_or(|b| b.pinned.is_none())
        {
            let url = self.endpoint_url(i);
            if let Err(e) = state.spool.pin(seq, &url) {
                let b = state.dispatch.batches.entry(seq).or_default();
                b.not_before = Some(now + self.settings.retry_max);
                drop(state);
                tracing::error!(seq, error = %error_chain(&e), "spool: cannot record where a batch is sent; retrying");
                return None;
            }
            state.dispatch.pin(seq, i);
        }
        let b = state.dispatch.batches.entry(seq).or_default();
        b.in_flight = Some(i);
        b.attempts += 1;
        let retried = b.attempts > 1;
        drop(state);
        if let Some(ship) = &self.metrics.ship {
            ship.batches_sent.inc();
            if retried {
                ship.batches_retried.inc();
            }
        }
        Some((seq, request))
    }

    /// Applies the outcome of a push of `seq` to endpoint `i`; returns true if the
    /// connection must be made again.
    fn settle(&self, i: usize, seq: u64, outcome: Outcome) -> bool {
        let url = self.endpoint_url(i);
        let now = Instant::now();
        let retry_max = self.settings.retry_max;
        let code = match &outcome {
            Outcome::Acked { .. } => None,
            Outcome::Refused(s) => Some(code_label(s.code())),
            Outcome::Timeout => Some("timeout"),
            Outcome::Transport { .. } => Some("transport"),
            Outcome::Spool(_) => None,
        };
        if let (Some(code), Some(ship)) = (code, &self.metrics.ship) {
            ship.push_failures
                .get_or_create(&FailureLabels {
                    endpoint: url.clone(),
                    code,
                })
                .inc();
        }
        let mut state = self.lock();
        let mut broken = false;
        let mut log: Option<(bool, String)> = None;
        match outcome {
            Outcome::Acked { duplicate } => {
                let acked = state.spool.ack(seq);
                state.dispatch.done(seq);
                if let Some(e) = state.dispatch.endpoints.get_mut(i) {
                    e.refusals = 0;
                    e.paused_until = None;
                    if let Some(was) = e.last_problem.take() {
                        log = Some((false, format!("delivering again (after: {was})")));
                    }
                }
                if let Err(e) = acked {
                    tracing::error!(seq, error = %error_chain(&e), "spool: cannot remove an acknowledged batch");
                }
                if let Some(ship) = &self.metrics.ship {
                    ship.batches_acked
                        .get_or_create(&AckLabels {
                            duplicate: if duplicate { "true" } else { "false" },
                        })
                        .inc();
                }
            }
            Outcome::Refused(status) => {
                let message = status.message().to_owned();
                if matches!(
                    status.code(),
                    Code::Unauthenticated
                        | Code::PermissionDenied
                        | Code::InvalidArgument
                        | Code::Unavailable
                ) {
                    // Nothing was written: the batch may go to any endpoint.
                    state.dispatch.unpin(seq);
                    if let Err(e) = state.spool.unpin(seq) {
                        tracing::warn!(seq, error = %error_chain(&e), "spool: cannot release a pin");
                    }
                }
                let b = state.dispatch.batches.entry(seq).or_default();
                b.in_flight = None;
                let attempts = b.attempts;
                match status.code() {
                    Code::Unauthenticated | Code::PermissionDenied => {
                        b.not_before = Some(now + backoff(attempts, retry_max));
                        let e = &mut state.dispatch.endpoints[i];
                        e.refusals = e.refusals.saturating_add(1);
                        e.paused_until = Some(now + backoff(e.refusals, retry_max));
                        let problem = format!(
                            "the aggregator refused the agent ({:?}): {message}",
                            status.code()
                        );
                        if e.last_problem.as_deref() != Some(problem.as_str()) {
                            e.last_problem = Some(problem.clone());
                            log = Some((
                                true,
                                format!("{problem}; check agent_id and token_file; retrying"),
                            ));
                        }
                    }
                    Code::InvalidArgument => {
                        b.not_before = Some(now + retry_max);
                        let refusal = message.clone();
                        if b.last_refusal.as_deref() != Some(refusal.as_str()) {
                            b.last_refusal = Some(refusal);
                            log = Some((
                                true,
                                format!(
                                    "the aggregator refused batch {seq} as invalid: {message}; the batch is kept and retried every {}",
                                    humantime::format_duration(retry_max)
                                ),
                            ));
                        }
                    }
                    Code::Unavailable => {
                        b.not_before = Some(now + backoff(attempts, retry_max));
                        let e = &mut state.dispatch.endpoints[i];
                        e.refusals = e.refusals.saturating_add(1);
                        e.paused_until = Some(now + backoff(e.refusals, retry_max));
                        let problem = format!("the aggregator is busy: {message}");
                        if e.last_problem.as_deref() != Some(problem.as_str()) {
                            e.last_problem = Some(problem.clone());
                            log = Some((false, format!("{problem}; backing off")));
                        }
                    }
                    other => {
                        b.not_before = Some(now + backoff(attempts, retry_max));
                        state.dispatch.pin(seq, i);
                        log = Some((
                            false,
                            format!(
                                "batch {seq}: outcome unknown ({other:?}: {message}); retried at this endpoint only"
                            ),
                        ));
                    }
                }
            }
            Outcome::Timeout => {
                let b = state.dispatch.batches.entry(seq).or_default();
                b.in_flight = None;
                b.not_before = Some(now + backoff(b.attempts, retry_max));
                state.dispatch.pin(seq, i);
                broken = true;
                log = Some((
                    false,
                    format!(
                        "batch {seq}: no reply within {}; outcome unknown, retried at this endpoint only",
                        humantime::format_duration(self.settings.push_timeout)
                    ),
                ));
            }
            Outcome::Transport { reached, error } => {
                let b = state.dispatch.batches.entry(seq).or_default();
                b.in_flight = None;
                b.not_before = Some(now + backoff(b.attempts, retry_max));
                broken = true;
                if !reached {
                    state.dispatch.unpin(seq);
                    if let Err(e) = state.spool.unpin(seq) {
                        tracing::warn!(seq, error = %error_chain(&e), "spool: cannot release a pin");
                    }
                }
                if reached {
                    state.dispatch.pin(seq, i);
                    log = Some((
                        false,
                        format!(
                            "batch {seq}: the connection failed ({error}); outcome unknown, retried at this endpoint only"
                        ),
                    ));
                }
            }
            Outcome::Spool(error) => {
                let b = state.dispatch.batches.entry(seq).or_default();
                b.in_flight = None;
                b.not_before = Some(now + retry_max);
                log = Some((
                    true,
                    format!("batch {seq} cannot be read from the spool: {error}"),
                ));
            }
        }
        self.publish_gauges(&state);
        drop(state);
        if let Some((error, text)) = log {
            if error {
                tracing::error!(endpoint = %url, "{text}");
            } else {
                tracing::warn!(endpoint = %url, "{text}");
            }
        }
        self.changed.notify_all();
        self.wake.notify_waiters();
        broken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ceiling of retry `n` (0-based) is `min(cap, 100ms · 2^min(n, 20))`, and the
    /// delay lies between `min(10ms, ceiling)` and the ceiling.
    #[test]
    fn backoff_follows_its_schedule() {
        let caps = [
            Duration::from_millis(5),
            Duration::from_millis(150),
            Duration::from_secs(30),
            Duration::from_secs(40 * 3600),
            Duration::MAX,
        ];
        for cap in caps {
            for attempt in [0, 1, 2, 5, 19, 20, 21, 31, 32, 1000, u32::MAX] {
                let ceiling = BACKOFF_BASE
                    .saturating_mul(1u32 << attempt.min(20))
                    .min(cap);
                assert_eq!(
                    schedule(cap).ceiling(attempt.saturating_add(1)),
                    ceiling,
                    "{attempt} {cap:?}"
                );
                for _ in 0..20 {
                    let d = backoff(attempt, cap);
                    assert!(d <= ceiling, "{d:?} > {ceiling:?}");
                    assert!(d >= BACKOFF_FLOOR.min(ceiling), "{d:?}");
                }
            }
        }
    }
}
