//! The `Ingest` gRPC service: the caller (authenticated by the guard from the headers)
//! must match the batch's agent id; the batch is decoded, checked against the caller's
//! token line (accounts, regions), its unpublishable records quarantined, and the rest
//! handed to the pipeline; the answer comes once the batch is in the WAL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flowlog_formats::FlowRecord;
use flowlog_formats::key::{validate_account_id, validate_region};
use flowlog_transport::pb::{PushReply, PushRequest};
use flowlog_transport::{decode_batch_into, encode_batch};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::{AuthFailure, Grant, validate_agent_id};
use super::guard::{Caller, Deadline};
use super::limits::LogLimiter;
use flowlog_publish::pipeline::batch::{DeliveryMark, WalBatch};
use flowlog_publish::pipeline::window::check_publishable;
use flowlog_publish::pipeline::{Deliverer, Delivery};
use flowlog_publish::quarantine::{
    Quarantine, Quarantined, REASON_OUT_OF_RANGE, REASON_TIME_WINDOW,
};
use flowlog_publish::settings::FlowLogSettings;
use flowlog_publish::telemetry::{
    INGEST_ACCEPTED, INGEST_BUSY, INGEST_DUPLICATE, INGEST_FAILED, INGEST_INVALID, Metrics,
    REFUSED_IDENTITY,
};

/// A push as received: the message's bytes (after decompression) and the message. The
/// codec (`super::codec`) makes it; the service keeps the bytes for the WAL.
#[derive(Debug)]
pub struct RawPush {
    /// The encoded `PushRequest`.
    pub bytes: Bytes,
    /// The decoded `PushRequest`.
    pub request: PushRequest,
}

/// Most batches of one agent above its `acked_below` that the aggregator remembers (its
/// dedupe state per agent is bounded by this): a push further ahead is refused until the
/// agent's oldest unacknowledged batch is delivered.
pub const MAX_SEQ_AHEAD: u64 = 65_536;

/// The limits the service applies to a decoded push.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLimits {
    /// Records accepted but not yet in the WAL, at most.
    pub max_pending: u32,
    /// How long a push may wait for room.
    pub push_timeout: Duration,
    /// Records whose times lie further back are quarantined.
    pub max_record_age: Duration,
    /// Records whose times lie further ahead are quarantined.
    pub max_record_ahead: Duration,
}

/// The `Ingest` service of `serve`.
#[derive(Debug)]
pub struct IngestService {
    deliverer: Deliverer,
    flow_log: FlowLogSettings,
    pending: Arc<Semaphore>,
    limits: ServiceLimits,
    metrics: Arc<Metrics>,
    failed: CancellationToken,
    quarantine: Arc<Quarantine>,
    log: Arc<LogLimiter>,
}

/// Records of a push counted in `flowlog_ingest_pending_records` until it is answered.
struct Pending {
    _permit: OwnedSemaphorePermit,
    records: i64,
    metrics: Arc<Metrics>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.metrics.ingest_pending_records.dec_by(self.records);
    }
}

fn peer_text(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
}

impl IngestService {
    /// Creates the service. `pending` holds `limits.max_pending` permits, one per record
    /// accepted but not yet in the WAL; `failed` is cancelled when the pipeline is found
    /// stopped.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        deliverer: Deliverer,
        flow_log: FlowLogSettings,
        pending: Arc<Semaphore>,
        limits: ServiceLimits,
        metrics: Arc<Metrics>,
        failed: CancellationToken,
        quarantine: Arc<Quarantine>,
        log: Arc<LogLimiter>,
    ) -> IngestService {
        IngestService {
            deliverer,
            flow_log,
            pending,
            limits,
            metrics,
            failed,
            quarantine,
            log,
        }
    }

    fn invalid(&self, peer: &str, agent_id: &str, started: Instant, message: String) -> Status {
        if let Some(suppressed) = self.log.allow("invalid") {
            tracing::warn!(peer = %peer, agent_id, error = %message, suppressed, "refused an invalid push");
        }
        self.metrics.observe_push(INGEST_INVALID, started.elapsed());
        Status::invalid_argument(message)
    }

    /// Checks every record against what the caller's token line allows: the account and
    /// region a record names pick its output folder.
    fn check_identity(&self, grant: &Grant, records: &[FlowRecord]) -> Result<(), String> {
        for (i, r) in records.iter().enumerate() {
            if let Some(a) = r.account_id.as_deref()
                && validate_account_id(a).is_ok()
                && !grant.accounts.allows(a, &self.flow_log.account_id)
            {
                return Err(format!(
                    "record {i}, field 'account-id': agent '{}' may not publish under account {a} (allowed: {})",
                    grant.agent,
                    grant
                        .accounts
                        .describe(&self.flow_log.account_id, "account_id")
                ));
            }
            if let Some(region) = r.region.as_deref()
                && validate_region(region).is_ok()
                && !grant.regions.allows(region, &self.flow_log.region)
            {
                return Err(format!(
                    "record {i}, field 'region': agent '{}' may not publish under region {region} (allowed: {})",
                    grant.agent,
                    grant.regions.describe(&self.flow_log.region, "region")
                ));
            }
        }
        Ok(())
    }

    /// Returns the indexes of the records that cannot be published, with the field, the
    /// problem and the `reason` label.
    fn unpublishable(
        &self,
        records: &[FlowRecord],
    ) -> Vec<(usize, &'static str, String, &'static str)> {
        let now = flowlog_publish::pipeline::unix_now();
        let age = self.limits.max_record_age.as_secs();
        let ahead = self.limits.max_record_ahead.as_secs();
        let oldest = now.saturating_sub(age);
        let newest = now.saturating_add(ahead);
        let mut bad = Vec::new();
        for (i, r) in records.iter().enumerate() {
            if let Err((field, problem)) = check_publishable(r) {
                bad.push((i, field, problem, REASON_OUT_OF_RANGE));
                continue;
            }
            for (field, value) in [("start", r.start), ("end", r.end)] {
                let Some(t) = value else { continue };
                let problem = if t < oldest {
                    format!(
                        "{t} is {} s before the aggregator's clock (listen.max_record_age allows {age} s)",
                        now - t
                    )
                } else if t > newest {
                    format!(
                        "{t} is {} s ahead of the aggregator's clock (listen.max_record_ahead allows {ahead} s)",
                        t - now
                    )
                } else {
                    continue;
                };
                bad.push((i, field, problem, REASON_TIME_WINDOW));
                break;
            }
        }
        bad
    }

    /// Waits for room for `records` records until `deadline`.
    async fn room(&self, records: u32, deadline: Instant) -> Result<Pending, Status> {
        let acquire = Arc::clone(&self.pending).acquire_many_owned(records);
        match tokio::time::timeout_at(deadline.into(), acquire).await {
            Ok(Ok(permit)) => {
                let records = i64::from(records);
                self.metrics.ingest_pending_records.inc_by(records);
                Ok(Pending {
                    _permit: permit,
                    records,
                    metrics: Arc::clone(&self.metrics),
                })
            }
            Ok(Err(_closed)) => Err(Status::unavailable(
                "the aggregator is shutting down; nothing was written",
            )),
            Err(_elapsed) => Err(Status::unavailable(format!(
                "aggregator busy: no room for {records} records within {}; nothing was written, retry later",
                humantime::format_duration(self.limits.push_timeout)
            ))),
        }
    }
}

impl IngestService {
    /// Handles one push; answers once its batch is in the WAL (see `docs/delivery.md`).
    pub async fn push(&self, request: Request<RawPush>) -> Result<Response<PushReply>, Status> {
        let started = Instant::now();
        let deadline = request
            .extensions()
            .get::<Deadline>()
            .map_or_else(|| started + self.limits.push_timeout, |d| d.0);
        let peer = peer_text(request.remote_addr());
        // The guard authenticated the caller from the headers; without it, nothing passes.
        let Some(Caller(grant)) = request.extensions().get::<Caller>().cloned() else {
            return Err(Status::unauthenticated("the call was not authenticated"));
        };
        let RawPush {
            bytes: message,
            request: mut push,
        } = request.into_inner();
        let agent_id = push.agent_id.as_str();

        // Who calls first (an unauthenticated caller learns nothing), then what it says.
        if let Err(e) = validate_agent_id(agent_id) {
            let shown = agent_id.escape_debug().to_string();
            return Err(self.invalid(&peer, &shown, started, e.to_string()));
        }
        if *grant.agent != *agent_id {
            let failure = AuthFailure::AgentMismatch {
                token_agent: Arc::clone(&grant.agent),
            };
            if let Some(suppressed) = self.log.allow(failure.reason()) {
                tracing::warn!(
                    peer = %peer,
                    agent_id = %agent_id.escape_debug(),
                    reason = failure.reason(),
                    token_agent = %grant.agent,
                    suppressed,
                    "refused a push"
                );
            }
            self.metrics.observe_auth_failure(failure.reason());
            return Err(failure.status(agent_id));
        }
        if push.seq == 0 {
            return Err(self.invalid(
                &peer,
                agent_id,
                started,
                "seq 0: batches are numbered from 1".into(),
            ));
        }
        if push.seq - push.acked_below.min(push.seq) >= MAX_SEQ_AHEAD {
            return Err(self.invalid(
                &peer,
                agent_id,
                started,
                format!(
                    "seq {} is {MAX_SEQ_AHEAD} or more above acked_below {}: the aggregator keeps at most {MAX_SEQ_AHEAD} unacknowledged batches per agent; deliver batch {} first",
                    push.seq, push.acked_below, push.acked_below
                ),
            ));
        }
        if push.acked_below > push.seq {
            return Err(self.invalid(
                &peer,
                agent_id,
                started,
                format!(
                    "acked_below {} is above the batch's own seq {}",
                    push.acked_below, push.seq
                ),
            ));
        }
        let batch = push.batch.take().unwrap_or_default();
        let count = batch.records.len();
        let records = match u32::try_from(count) {
            Ok(n) if n <= self.limits.max_pending => n,
            _ => {
                return Err(self.invalid(
                    &peer,
                    agent_id,
                    started,
                    format!(
                        "the batch holds {count} records; listen.max_pending_records allows at most {}",
                        self.limits.max_pending
                    ),
                ));
            }
        };
        let pending = match self.room(records, deadline).await {
            Ok(p) => p,
            Err(status) => {
                tracing::debug!(peer = %peer, agent_id, "push refused: {}", status.message());
                self.metrics.observe_push(INGEST_BUSY, started.elapsed());
                return Err(status);
            }
        };

        let mut buffer = self.deliverer.record_buffer(count);
        if let Err(e) = decode_batch_into(&batch, &mut buffer) {
            return Err(self.invalid(&peer, agent_id, started, e.to_string()));
        }
        drop(batch);
        if let Err(message) = self.check_identity(&grant, &buffer) {
            self.metrics.observe_refused(REFUSED_IDENTITY);
            self.metrics.observe_push(INGEST_INVALID, started.elapsed());
            if let Some(suppressed) = self.log.allow(REFUSED_IDENTITY) {
                tracing::warn!(peer = %peer, agent_id, seq = push.seq, reason = REFUSED_IDENTITY, error = %message, suppressed, "refused a push");
            }
            return Err(Status::permission_denied(message));
        }
        let bad = self.unpublishable(&buffer);
        let message = if bad.is_empty() {
            message
        } else {
            let source = format!(
                "agent {agent_id} spool {:016x} seq {}",
                push.spool_id, push.seq
            );
            let entries: Vec<Quarantined<'_>> = bad
                .iter()
                .map(|(i, field, problem, reason)| Quarantined {
                    source: &source,
                    index: *i as u64,
                    field,
                    problem: problem.clone(),
                    record: &buffer[*i],
                    reason,
                })
                .collect();
            if let Err(e) = self.quarantine.put(&entries) {
                tracing::error!(error = %e, agent_id, seq = push.seq, "cannot quarantine records; refusing the push");
                self.metrics.observe_push(INGEST_BUSY, started.elapsed());
                return Err(Status::unavailable(format!(
                    "the aggregator cannot set aside {} unpublishable records: {e}; nothing was written, retry later",
                    bad.len()
                )));
            }
            // The WAL keeps what is published: the message is written again without them.
            let mut index = 0;
            let mut next_bad = bad.iter().map(|b| b.0).peekable();
            buffer.retain(|_| {
                let keep = next_bad.peek() != Some(&index);
                if !keep {
                    next_bad.next();
                }
                index += 1;
                keep
            });
            Bytes::from(
                PushRequest {
                    agent_id: push.agent_id.clone(),
                    spool_id: push.spool_id,
                    seq: push.seq,
                    acked_below: push.acked_below,
                    batch: Some(encode_batch(&buffer)),
                }
                .encode_to_vec(),
            )
        };
        let kept = buffer.len() as u64;
        let mark = DeliveryMark {
            agent_id: push.agent_id.clone(),
            spool_id: push.spool_id,
            seq: push.seq,
            acked_below: push.acked_below,
        };
        let wal_batch = WalBatch {
            flow_log_id: self.flow_log.id.clone(),
            account_id: self.flow_log.account_id.clone(),
            region: self.flow_log.region.clone(),
            import: None,
            records: buffer,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let delivered = Delivery::pushed(wal_batch, mark, message, reply)
            .map_err(|e| self.invalid(&peer, agent_id, started, e.to_string()))?;
        if self.deliverer.deliver(delivered).is_err() {
            self.failed.cancel();
            self.metrics.observe_push(INGEST_BUSY, started.elapsed());
            return Err(Status::unavailable(
                "the aggregator is stopping; nothing was written",
            ));
        }
        let duplicate = match answer.await {
            Ok(duplicate) => duplicate,
            Err(_) => {
                self.failed.cancel();
                self.metrics.observe_push(INGEST_FAILED, started.elapsed());
                tracing::error!(
                    peer = %peer,
                    agent_id,
                    seq = push.seq,
                    "the pipeline failed while writing a push; its outcome is unknown"
                );
                return Err(Status::internal(
                    "the aggregator failed while writing the batch; its outcome is unknown: retry it at this aggregator",
                ));
            }
        };
        drop(pending);
        if duplicate {
            self.metrics.ingest_dedupe_hits.inc();
            self.metrics
                .observe_push(INGEST_DUPLICATE, started.elapsed());
            tracing::debug!(
                peer = %peer,
                agent_id,
                spool_id = push.spool_id,
                seq = push.seq,
                "duplicate push acked"
            );
        } else {
            self.metrics.ingest_records.inc_by(kept);
            self.metrics
                .observe_push(INGEST_ACCEPTED, started.elapsed());
        }
        Ok(Response::new(PushReply { duplicate }))
    }
}
