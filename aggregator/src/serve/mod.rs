//! `flowlog-aggregator serve`: agents push batches over gRPC (TLS), the aggregator writes
//! them to its WAL, acks, and publishes them like any other input.
//!
//! ```text
//! connection cap ─▶ TLS ─▶ guard (token from headers, calls per agent, size prefix, call
//!   slots, body deadline) ─▶ count records ─▶ decode ─▶ token ↔ agent_id, accounts/regions
//!   ─▶ quarantine unpublishable records ─▶ room (pending records)
//!   ─▶ pipeline: dedupe + WAL append, one fsync per group ─▶ ack ─▶ windows ─▶ sink
//! ```
//!
//! - [`auth`]: the tokens file and bearer-token checks (reloaded on SIGHUP);
//! - [`tls`]: the server identity and the optional client CA (mTLS);
//! - [`limits`]: the connection cap and rate-limited logging of refusals;
//! - [`guard`]: authentication from the headers, per-agent calls, call slots, body deadline;
//! - [`codec`]: the gRPC service, keeping each message's bytes for the WAL;
//! - [`service`]: what a push goes through.
//!
//! `docs/delivery.md` is the contract this follows.

pub mod auth;
pub mod codec;
pub mod guard;
pub mod limits;
pub mod service;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use self::auth::{Authenticator, TokensError};
use self::codec::IngestRoute;
use self::guard::{Guard, GuardLimits};
use self::limits::{CappedIncoming, LogLimiter};
use self::service::{IngestService, ServiceLimits};
use crate::config::{ListenSettings, Problem, Settings};
use flowlog_publish::pipeline::{Pipeline, PipelineError, PipelineStats, Windows};
use flowlog_publish::telemetry::{self, Metrics};
use flowlog_publish::{Finished, PublishError, Publisher, PublisherOptions, Wait};

/// Largest header block of a call: read before authentication, so kept small.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// How often the HTTP/2 connection of an idle agent is pinged.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Failure of `serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config has no `[listen]` section.
    #[error("serve needs a [listen] section")]
    NoListen,
    /// The tokens file cannot be used.
    #[error(transparent)]
    Tokens(#[from] TokensError),
    /// The TLS files cannot be used.
    #[error("{}", .0.iter().map(|p| format!("{}: {}", p.key, p.message)).collect::<Vec<_>>().join("; "))]
    Tls(Vec<Problem>),
    /// The listen address cannot be bound.
    #[error("cannot listen on {address} (listen.address)")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Publishing could not start (runtime, sink, metrics endpoint) or failed (the WAL
    /// keeps what was acked).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The pipeline failed while serving (the WAL keeps what was acked).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The gRPC server failed.
    #[error("the gRPC server failed")]
    Server(#[source] tonic::transport::Error),
}

/// What a `serve` run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeSummary {
    /// Totals of the pipeline.
    pub stats: PipelineStats,
    /// True when every sealed file was published before exiting (else the rest is
    /// uploaded at the next start).
    pub published: bool,
}

/// Reads the files `[listen]` names: the certificates and key must parse (and fit
/// together), the tokens file must be valid. Returns every problem, each under its key.
pub fn check_listen_files(listen: &ListenSettings) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(tls) = &listen.tls
        && let Err(problems) = tls::server_tls_config(tls)
    {
        out.extend(problems);
    }
    if let Err(e) = auth::TokenTable::load(&listen.tokens_file) {
        for message in e.problems() {
            out.push(Problem {
                key: "listen.tokens_file".into(),
                message,
            });
        }
    }
    out
}

/// Binds `[listen] address` and runs the server until SIGTERM or SIGINT, then stops taking
/// calls, lets the calls in progress finish, seals the live streams and uploads, all within
/// `[service] shutdown_grace` of the signal (what does not make it goes out at the next
/// start). This is what `flowlog-aggregator serve` runs.
pub fn run(settings: &Settings) -> Result<ServeSummary, ServeError> {
    let listen = settings.listen.as_ref().ok_or(ServeError::NoListen)?;
    let bind = |source| ServeError::Bind {
        address: listen.address,
        source,
    };
    let listener = std::net::TcpListener::bind(listen.address).map_err(bind)?;
    run_with(settings, listener, telemetry::shutdown_signal())
}

/// Runs the server on `listener` until `shutdown` completes, then stops as [`run`] does
/// after a signal (`shutdown_grace` counts from then). `[listen] address` is not used;
/// SIGHUP still reloads the tokens file. Tests run a server in process with it: a listener
/// on port 0 and a channel as the shutdown.
pub fn run_with(
    settings: &Settings,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<ServeSummary, ServeError> {
    let listen = settings.listen.as_ref().ok_or(ServeError::NoListen)?;
    let auth = Arc::new(Authenticator::load(&listen.tokens_file)?);
    if auth.agents() == 0 {
        tracing::warn!(file = %listen.tokens_file.display(), "the tokens file lists no agent: every push is refused");
    }
    warn_if_world_readable(&listen.tokens_file, "the tokens file");
    if let Some(files) = &listen.tls {
        warn_if_world_readable(&files.key, "the TLS private key (listen.tls_key)");
    }
    let tls = match &listen.tls {
        Some(files) => Some(tls::server_tls_config(files).map_err(ServeError::Tls)?),
        None => None,
    };
    let publisher = Publisher::start(
        &settings.publish,
        PublisherOptions {
            windows: Windows::ByClock {
                max_ahead: listen.max_record_ahead,
            },
            runtime_threads: None,
            thread_name: "serve",
            metrics: Metrics::new(),
        },
    )?;
    let served = serve_until_stopped(
        publisher.runtime(),
        settings,
        listen,
        listener,
        shutdown,
        tls,
        &auth,
        publisher.pipeline(),
        publisher.metrics(),
    );
    if let Err(e) = &served {
        tracing::error!(error = %e, "the server failed; sealing and stopping");
    }
    // Sealing and uploading get what is left of shutdown_grace since the signal.
    let Finished { stats, published } =
        publisher.finish(Wait::Grace(settings.publish.service.shutdown_grace))?;
    served?;
    if !published {
        tracing::warn!(
            state = %settings.publish.state.dir.display(),
            "some files are still staged; they are uploaded at the next start"
        );
    }
    Ok(ServeSummary { stats, published })
}

/// Serves on `listener` until `shutdown` (or a failure), and returns once the server has
/// stopped.
#[allow(clippy::too_many_arguments)]
fn serve_until_stopped(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    listen: &ListenSettings,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    tls: Option<tonic::transport::ServerTlsConfig>,
    auth: &Arc<Authenticator>,
    pipeline: &Pipeline,
    metrics: &Arc<Metrics>,
) -> Result<(), ServeError> {
    let bind = |source| ServeError::Bind {
        address: listen.address,
        source,
    };
    let address = listener.local_addr().map_err(bind)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(bind)?
    };
    limits::raise_open_files_limit(listen.max_connections);
    let failed = CancellationToken::new();
    let pending = Arc::new(Semaphore::new(listen.max_pending_records as usize));
    let calls = Arc::new(Semaphore::new(listen.max_concurrent_pushes));
    let log = Arc::new(LogLimiter::default());
    let service = IngestService::new(
        pipeline.deliverer()?,
        settings.publish.flow_log.clone(),
        Arc::clone(&pending),
        ServiceLimits {
            max_pending: listen.max_pending_records,
            push_timeout: listen.push_timeout,
            max_record_age: listen.max_record_age,
            max_record_ahead: listen.max_record_ahead,
        },
        Arc::clone(metrics),
        failed.clone(),
        pipeline.quarantine(),
        Arc::clone(&log),
    );
    let ingest = IngestRoute::new(
        service,
        listen.max_batch_bytes,
        listen.max_batch_records as usize,
    );
    let guarded = Guard::new(
        ingest,
        Arc::clone(auth),
        Arc::clone(&calls),
        GuardLimits {
            push_timeout: listen.push_timeout,
            body_timeout: listen.body_timeout,
            max_batch_bytes: listen.max_batch_bytes,
            max_calls_per_agent: listen.max_calls_per_agent,
        },
        Arc::clone(metrics),
        Arc::clone(&log),
    );
    let mut builder = Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(listen.max_calls_per_connection)
        // Headers are read before authentication: keep them small (agents send a few
        // hundred bytes).
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    let secure = tls.is_some();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).map_err(ServeError::Server)?;
    }
    let router = builder.add_service(guarded);

    let stop = CancellationToken::new();
    let incoming = CappedIncoming::new(
        listener,
        listen.max_connections,
        Arc::clone(metrics),
        Arc::clone(&log),
    );
    let mut server = runtime
        .spawn(router.serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()));
    runtime.spawn(reload_on_sighup(Arc::clone(auth), stop.clone()));
    if !secure {
        tracing::warn!(
            %address,
            "listen.insecure = true: serving plaintext gRPC; tokens and records travel unencrypted"
        );
    }
    tracing::info!(
        %address,
        tls = secure,
        mtls = listen.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        agents = auth.agents(),
        "listening"
    );

    let grace = settings.publish.service.shutdown_grace;
    let deadline = pipeline.shutdown_deadline();
    runtime.block_on(async {
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let mut signalled = std::pin::pin!(shutdown);
        let early = loop {
            tokio::select! {
                () = &mut signalled => {
                    deadline.set(grace);
                    tracing::info!("stopping: no new calls; letting the calls in progress finish");
                    break None;
                }
                () = failed.cancelled() => {
                    tracing::error!("the pipeline has stopped; shutting down");
                    break None;
                }
                result = &mut server => break Some(result),
                _ = check.tick() => {
                    if pipeline.is_finished() {
                        tracing::error!("the pipeline has stopped; shutting down");
                        break None;
                    }
                }
            }
        };
        stop.cancel();
        // Calls waiting for room are answered UNAVAILABLE at once; calls already admitted
        // finish normally.
        pending.close();
        calls.close();
        let result = match early {
            Some(result) => result,
            None => {
                // Idle connections may take long to close (an agent that does not answer
                // the GOAWAY ping): what matters is that no call is in progress. The
                // server task keeps closing connections (and sending the last replies)
                // while the files are sealed and uploaded.
                let all = listen.max_concurrent_pushes;
                let drained = async {
                    while calls.available_permits() < all {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                tokio::select! {
                    result = &mut server => result,
                    () = drained => Ok(Ok(())),
                    () = tokio::time::sleep(deadline.remaining().unwrap_or(grace)) => {
                        tracing::warn!(
                            "calls still in progress after service.shutdown_grace; stopping anyway"
                        );
                        Ok(Ok(()))
                    }
                }
            }
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServeError::Server(e)),
            Err(join) => {
                tracing::error!(error = %join, "the gRPC server task ended abnormally");
                Ok(())
            }
        }
    })
}

/// Reloads the tokens file on every SIGHUP until `stop` fires.
async fn reload_on_sighup(auth: Arc<Authenticator>, stop: CancellationToken) {
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the tokens file is not reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            got = hangups.recv() => if got.is_none() { return },
        }
        match auth.reload() {
            Ok(agents) => {
                tracing::info!(file = %auth.path().display(), agents, "reloaded the tokens file");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the tokens file; the previous tokens stay in force");
            }
        }
    }
}

/// Warns when a secret file is readable by every user of the host.
#[cfg(unix)]
fn warn_if_world_readable(path: &std::path::Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(file = %path.display(), "{what} is readable by every user; chmod 600 it (or 640 with the service's group)");
    }
}

#[cfg(not(unix))]
fn warn_if_world_readable(_path: &std::path::Path, _what: &str) {}
