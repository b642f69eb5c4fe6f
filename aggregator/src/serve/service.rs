//! The `Ingest` gRPC service: authenticate, check, decode, hand to the pipeline, answer
//! once the batch is in the WAL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowlog_transport::pb::PushReply;
use flowlog_transport::{AUTHORIZATION, decode_batch_into};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::{AuthFailure, Authenticator, validate_agent_id};
use super::codec::RawPush;
use super::guard::Deadline;
use crate::config::FlowLogSettings;
use crate::pipeline::batch::{DeliveryMark, WalBatch};
use crate::pipeline::{Deliverer, Delivery};
use crate::telemetry::{
    INGEST_ACCEPTED, INGEST_BUSY, INGEST_DUPLICATE, INGEST_FAILED, INGEST_INVALID, Metrics,
};

/// The `Ingest` service of `serve`.
#[derive(Debug)]
pub struct IngestService {
    auth: Arc<Authenticator>,
    deliverer: Deliverer,
    flow_log: FlowLogSettings,
    pending: Arc<Semaphore>,
    max_pending: u32,
    push_timeout: Duration,
    metrics: Arc<Metrics>,
    failed: CancellationToken,
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
    /// Creates the service. `pending` holds `max_pending` permits, one per record accepted
    /// but not yet in the WAL; `failed` is cancelled when the pipeline is found stopped.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        auth: Arc<Authenticator>,
        deliverer: Deliverer,
        flow_log: FlowLogSettings,
        pending: Arc<Semaphore>,
        max_pending: u32,
        push_timeout: Duration,
        metrics: Arc<Metrics>,
        failed: CancellationToken,
    ) -> IngestService {
        IngestService {
            auth,
            deliverer,
            flow_log,
            pending,
            max_pending,
            push_timeout,
            metrics,
            failed,
        }
    }

    fn invalid(&self, peer: &str, agent_id: &str, started: Instant, message: String) -> Status {
        tracing::warn!(peer = %peer, agent_id, error = %message, "refused an invalid push");
        self.metrics.observe_push(INGEST_INVALID, started.elapsed());
        Status::invalid_argument(message)
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
                humantime::format_duration(self.push_timeout)
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
            .map_or_else(|| started + self.push_timeout, |d| d.0);
        let peer = peer_text(request.remote_addr());
        let authorization = request
            .metadata()
            .get(AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec());
        let RawPush {
            bytes: message,
            request: mut push,
        } = request.into_inner();
        let agent_id = push.agent_id.as_str();

        // Who calls first (an unauthenticated caller learns nothing), then what it says.
        let checked = self
            .auth
            .identify(authorization.as_deref())
            .and_then(|owner| {
                if let Err(e) = validate_agent_id(agent_id) {
                    return Ok(Err(e.to_string()));
                }
                if *owner == *agent_id {
                    Ok(Ok(()))
                } else {
                    Err(AuthFailure::AgentMismatch { token_agent: owner })
                }
            });
        match checked {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let shown = agent_id.escape_debug().to_string();
                return Err(self.invalid(&peer, &shown, started, e));
            }
            Err(failure) => {
                let token_agent = match &failure {
                    AuthFailure::AgentMismatch { token_agent } => Some(&**token_agent),
                    _ => None,
                };
                tracing::warn!(
                    peer = %peer,
                    agent_id = %agent_id.escape_debug(),
                    reason = failure.reason(),
                    token_agent,
                    "refused a push"
                );
                self.metrics.observe_auth_failure(failure.reason());
                return Err(failure.status(agent_id));
            }
        }
        if push.seq == 0 {
            return Err(self.invalid(
                &peer,
                agent_id,
                started,
                "seq 0: batches are numbered from 1".into(),
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
            Ok(n) if n <= self.max_pending => n,
            _ => {
                return Err(self.invalid(
                    &peer,
                    agent_id,
                    started,
                    format!(
                        "the batch holds {count} records; listen.max_pending_records allows at most {}",
                        self.max_pending
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
            self.metrics.ingest_records.inc_by(u64::from(records));
            self.metrics
                .observe_push(INGEST_ACCEPTED, started.elapsed());
        }
        Ok(Response::new(PushReply { duplicate }))
    }
}
