//! Sinks: where sealed files go (the publishing stage).
//!
//! ```text
//! stage (sealed local file + final key) ─▶ put_with_retry ─▶ ObjectSink::put_file ─▶ local dir / S3
//! ```
//!
//! - [`ObjectSink`] is the seam: [`local::LocalDirSink`] writes into a directory tree,
//!   [`s3::S3Sink`] into a bucket (AWS or an S3-compatible store);
//! - [`put_with_retry`] is the upload loop: transient errors are retried forever with
//!   exponential backoff and full jitter, permanent ones slowly (an operator may fix the
//!   bucket policy), until the upload succeeds or the caller cancels;
//! - [`SinkError`] says what failed, where, and whether retrying can help
//!   ([`SinkError::is_retryable`], [`SinkErrorKind`]).
//!
//! The staged file is only read: deleting it after a successful put is the caller's job.

pub mod local;
mod md5;
pub mod s3;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// A sink that could not be built or failed its startup check.
#[derive(Debug, thiserror::Error)]
#[error("startup check of {sink} failed")]
pub struct ConnectError {
    /// The sink (`s3://bucket`, `file:///path`, or the configured path).
    pub sink: String,
    /// Why.
    #[source]
    pub source: SinkError,
}

/// `[sink]`: where sealed files go.
#[derive(Debug, Clone)]
pub enum SinkSettings {
    /// A local directory.
    Local {
        /// The directory `AWSLogs/…` is written under.
        path: std::path::PathBuf,
        /// Sealed files waiting for upload at most; sealing waits beyond it.
        max_pending_uploads: usize,
    },
    /// An S3 bucket (or S3-compatible store).
    S3 {
        /// Client and request options.
        settings: Box<s3::S3Settings>,
        /// Sealed files waiting for upload at most; sealing waits beyond it.
        max_pending_uploads: usize,
    },
}

impl SinkSettings {
    /// Returns the bound on sealed files waiting for upload.
    pub fn max_pending_uploads(&self) -> usize {
        match self {
            SinkSettings::Local {
                max_pending_uploads,
                ..
            }
            | SinkSettings::S3 {
                max_pending_uploads,
                ..
            } => *max_pending_uploads,
        }
    }
}

/// Builds the sink `settings` describes and runs its startup check (for S3: writes and
/// deletes a probe object), so that a wrong bucket, region or permission fails at startup.
pub async fn connect(
    settings: &SinkSettings,
) -> Result<std::sync::Arc<dyn ObjectSink>, ConnectError> {
    let (configured, built) = match settings {
        SinkSettings::Local { path, .. } => (
            path.display().to_string(),
            local::LocalDirSink::new(path)
                .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn ObjectSink>),
        ),
        SinkSettings::S3 { settings, .. } => (
            format!("s3://{}", settings.bucket),
            s3::S3Sink::connect((**settings).clone())
                .await
                .map(|s| std::sync::Arc::new(s) as std::sync::Arc<dyn ObjectSink>),
        ),
    };
    let sink = built.map_err(|source| ConnectError {
        sink: configured,
        source,
    })?;
    sink.check().await.map_err(|source| ConnectError {
        sink: sink.describe(),
        source,
    })?;
    Ok(sink)
}

/// A boxed error, the `source` of a [`SinkError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a successful [`ObjectSink::put_file`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was written.
    Stored,
    /// The key already held an object of the same size and the store refused to overwrite
    /// it (`If-None-Match: *` answered 412). Keys are deterministic, so the same key means
    /// the same bytes: the file was delivered before (typically before a crash).
    AlreadyPresent,
}

/// A destination for sealed files.
///
/// Contract of every implementation:
/// - `put_file` is atomic: a reader sees either nothing or the complete object;
/// - keys are deterministic, so putting an existing key again stores identical bytes
///   (an overwrite or [`PutOutcome::AlreadyPresent`], never a second copy);
/// - the file at `path` is only read, never moved or deleted;
/// - errors say whether a retry can help ([`SinkError::is_retryable`]).
#[async_trait::async_trait]
pub trait ObjectSink: Send + Sync + std::fmt::Debug {
    /// Stores the complete file at `path` under `key` (the full key, e.g.
    /// `"my-prefix/AWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/20/..._fe123456.log.gz"`).
    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome, SinkError>;

    /// Startup check: writes then deletes a small probe object outside `AWSLogs/`
    /// (`"{probe_prefix}.flowlog-probe/{unique}"`), failing with a clear reason (no bucket,
    /// bad credentials, wrong region, no permission, unreachable).
    async fn check(&self) -> Result<(), SinkError>;

    /// Returns `"s3://bucket"` or `"file:///abs/path"`, for logs and metric labels.
    fn describe(&self) -> String;

    /// Returns `"s3"` or `"local"`, a metric label value.
    fn kind(&self) -> &'static str;
}

/// What went wrong, as far as retrying is concerned. [`SinkErrorKind::is_retryable`]
/// decides; [`SinkErrorKind::as_str`] is a metric label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SinkErrorKind {
    /// Connection refused or reset, DNS failure, no credentials yet (transient).
    Unreachable,
    /// A connect, read or attempt timeout (transient).
    Timeout,
    /// 429, `SlowDown`, `Throttling…` (transient).
    Throttled,
    /// 5xx, `InternalError`, `RequestTimeout` (transient).
    ServerError,
    /// A conflicting concurrent operation (409 `OperationAborted` /
    /// `ConditionalRequestConflict`, a multipart upload that vanished) (transient).
    Conflict,
    /// The bucket lives in another region and the client switched to it (transient:
    /// the next attempt goes to the right region).
    RegionRedirect,
    /// Other transient failures: a broken response, clock skew, expired temporary
    /// credentials, a corrupted body (`BadDigest`).
    Transient,
    /// A local I/O error that may go away (disk full, interrupted) (transient).
    LocalIo,
    /// Unknown access key, wrong secret, invalid session token (permanent).
    Credentials,
    /// 403 `AccessDenied` (permanent until the policy changes).
    AccessDenied,
    /// The bucket does not exist (permanent).
    NoSuchBucket,
    /// The bucket is in another region than the configured one (permanent).
    WrongRegion,
    /// SSE-KMS failures: unknown, disabled or forbidden key (permanent).
    Kms,
    /// The store does not implement something we send, e.g. `If-None-Match` (permanent).
    Unsupported,
    /// A different object (other size) already holds the key (permanent).
    KeyConflict,
    /// The store refused the request as invalid (400 `InvalidArgument`, …) (permanent).
    InvalidRequest,
    /// The key is not a safe relative path (permanent).
    InvalidKey,
    /// The sink settings cannot work (permanent).
    InvalidConfig,
    /// A local permission problem or a missing staged file (permanent).
    LocalPermanent,
    /// Anything else (permanent).
    Other,
}

impl SinkErrorKind {
    /// Returns whether retrying the same request can succeed without an operator.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Unreachable
                | Self::Timeout
                | Self::Throttled
                | Self::ServerError
                | Self::Conflict
                | Self::RegionRedirect
                | Self::Transient
                | Self::LocalIo
        )
    }

    /// Returns the metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::Throttled => "throttled",
            Self::ServerError => "server_error",
            Self::Conflict => "conflict",
            Self::RegionRedirect => "region_redirect",
            Self::Transient => "transient",
            Self::LocalIo => "local_io",
            Self::Credentials => "credentials",
            Self::AccessDenied => "access_denied",
            Self::NoSuchBucket => "no_such_bucket",
            Self::WrongRegion => "wrong_region",
            Self::Kms => "kms",
            Self::Unsupported => "unsupported",
            Self::KeyConflict => "key_conflict",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidKey => "invalid_key",
            Self::InvalidConfig => "invalid_config",
            Self::LocalPermanent => "local_permanent",
            Self::Other => "other",
        }
    }
}

/// A failed sink operation. Messages name the operation, the destination (bucket and key,
/// or path) and the reason, e.g.
/// `put s3://b/k failed: access denied (AccessDenied): Access Denied`.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// An operation against the destination (or on the staged file) failed.
    #[error("{op} {target} failed: {reason}")]
    Failed {
        /// `put`, `check`, `connect`, …
        op: &'static str,
        /// `s3://bucket/key`, `file:///root/key`, or the staged file's path.
        target: String,
        /// What kind of failure, which decides retrying.
        kind: SinkErrorKind,
        /// Human-readable reason (with the store's error code and message).
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The key is not a safe relative object key.
    #[error("refusing key {key:?}: {reason}")]
    InvalidKey {
        /// The refused key.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

impl SinkError {
    /// Builds a [`SinkError::Failed`].
    pub fn failed(
        op: &'static str,
        target: impl Into<String>,
        kind: SinkErrorKind,
        reason: impl Into<String>,
        source: Option<BoxError>,
    ) -> Self {
        Self::Failed {
            op,
            target: target.into(),
            kind,
            reason: reason.into(),
            source,
        }
    }

    /// Returns the kind of failure.
    pub fn kind(&self) -> SinkErrorKind {
        match self {
            Self::Failed { kind, .. } => *kind,
            Self::InvalidKey { .. } => SinkErrorKind::InvalidKey,
        }
    }

    /// Returns whether retrying can succeed without an operator (connection errors,
    /// timeouts, 5xx, throttling); `false` for bad credentials, missing buckets, denied
    /// access, wrong region, KMS errors, invalid requests and keys.
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}

/// Delays between upload attempts (default: 200 ms doubling up to 60 s for transient
/// errors, 2.5 to 5 min after a permanent one).
pub use flowlog_runtime::backoff::Backoff;

/// Returns a name part unique within this host: time, process id and a counter.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Uploads `path` under `key`, retrying until it succeeds or `cancel` fires (then returns
/// `None`; an attempt in flight is dropped).
///
/// - Transient errors: `warn!` with the attempt, key and error, then retry after
///   [`Backoff::transient_delay`], forever.
/// - Permanent errors: `error!` naming the destination, key and reason ("data stays
///   staged"), then retry after [`Backoff::permanent_delay`].
/// - `observe` sees every failed attempt (for metrics).
pub async fn put_with_retry(
    sink: &dyn ObjectSink,
    key: &str,
    path: &Path,
    backoff: &Backoff,
    cancel: &CancellationToken,
    observe: &(dyn Fn(&SinkError) + Send + Sync),
) -> Option<PutOutcome> {
    let mut attempt: u32 = 0;
    // Counts consecutive transient failures only, so a permanent error does not inflate
    // the next transient delay.
    let mut transient_streak: u32 = 0;
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        attempt = attempt.saturating_add(1);
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            result = sink.put_file(key, path) => result,
        };
        let err = match result {
            Ok(outcome) => {
                if attempt > 1 {
                    tracing::info!(
                        attempt,
                        key,
                        destination = %sink.describe(),
                        "upload succeeded after retries"
                    );
                }
                return Some(outcome);
            }
            Err(err) => err,
        };
        observe(&err);
        let delay = if err.is_retryable() {
            transient_streak = transient_streak.saturating_add(1);
            let delay = backoff.transient_delay(transient_streak);
            tracing::warn!(
                attempt,
                key,
                error = %err,
                kind = err.kind().as_str(),
                retry_in = ?delay,
                "upload failed, retrying"
            );
            delay
        } else {
            transient_streak = 0;
            let delay = backoff.permanent_delay();
            tracing::error!(
                attempt,
                key,
                destination = %sink.describe(),
                error = %err,
                kind = err.kind().as_str(),
                retry_in = ?delay,
                "upload failed with a permanent error; data stays staged until an operator \
                 fixes the destination"
            );
            delay
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Returns the Content-Type for a key: `application/gzip` for `.gz`,
/// `application/vnd.apache.parquet` for `.parquet`, else `application/octet-stream`.
/// No Content-Encoding is ever set: `.log.gz` objects are gzip archives, not
/// transparently compressed text.
pub fn content_type_for(key: &str) -> &'static str {
    if key.ends_with(".gz") {
        "application/gzip"
    } else if key.ends_with(".parquet") {
        "application/vnd.apache.parquet"
    } else {
        "application/octet-stream"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[test]
    fn content_types() {
        assert_eq!(
            content_type_for("a/b_20180620T1620Z_fe123456.log.gz"),
            "application/gzip"
        );
        assert_eq!(
            content_type_for("a/b.log.parquet"),
            "application/vnd.apache.parquet"
        );
        assert_eq!(content_type_for("a/b.log"), "application/octet-stream");
    }

    #[test]
    fn retryable_kinds() {
        assert!(SinkErrorKind::Unreachable.is_retryable());
        assert!(SinkErrorKind::Throttled.is_retryable());
        assert!(!SinkErrorKind::AccessDenied.is_retryable());
        assert!(!SinkErrorKind::Credentials.is_retryable());
        let e = SinkError::InvalidKey {
            key: "../x".into(),
            reason: "contains a \"..\" component",
        };
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "refusing key \"../x\": contains a \"..\" component"
        );
    }

    /// A sink that fails a scripted number of times, then stores.
    #[derive(Debug)]
    struct Scripted {
        failures: Mutex<Vec<SinkErrorKind>>,
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl ObjectSink for Scripted {
        async fn put_file(&self, key: &str, _path: &Path) -> Result<PutOutcome, SinkError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let next = self.failures.lock().unwrap().pop();
            match next {
                Some(kind) => Err(SinkError::failed(
                    "put",
                    format!("mem://{key}"),
                    kind,
                    "scripted",
                    None,
                )),
                None => Ok(PutOutcome::Stored),
            }
        }
        async fn check(&self) -> Result<(), SinkError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "mem://".into()
        }
        fn kind(&self) -> &'static str {
            "mem"
        }
    }

    fn fast_backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(5),
            permanent_max: Duration::from_millis(40),
        }
    }

    #[tokio::test]
    async fn put_with_retry_retries_transient_and_permanent_errors() {
        let sink = Scripted {
            failures: Mutex::new(vec![
                SinkErrorKind::Unreachable,
                SinkErrorKind::AccessDenied,
                SinkErrorKind::Timeout,
            ]),
            calls: AtomicUsize::new(0),
        };
        let seen = Mutex::new(Vec::new());
        let observe = |e: &SinkError| seen.lock().unwrap().push(e.kind());
        let cancel = CancellationToken::new();
        let started = std::time::Instant::now();
        let out = put_with_retry(
            &sink,
            "k",
            Path::new("/nonexistent"),
            &fast_backoff(),
            &cancel,
            &observe,
        )
        .await;
        assert_eq!(out, Some(PutOutcome::Stored));
        assert_eq!(sink.calls.load(Ordering::SeqCst), 4);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                SinkErrorKind::Timeout,
                SinkErrorKind::AccessDenied,
                SinkErrorKind::Unreachable
            ]
        );
        // One permanent delay (at least half of permanent_max) was slept.
        assert!(started.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn put_with_retry_stops_when_cancelled() {
        let sink = Scripted {
            failures: Mutex::new(vec![SinkErrorKind::NoSuchBucket; 100]),
            calls: AtomicUsize::new(0),
        };
        let cancel = CancellationToken::new();
        let observe = |_: &SinkError| cancel.cancel();
        let out = put_with_retry(
            &sink,
            "k",
            Path::new("/x"),
            &Backoff::default(),
            &cancel,
            &observe,
        )
        .await;
        assert_eq!(out, None);
        assert_eq!(sink.calls.load(Ordering::SeqCst), 1);
    }
}
