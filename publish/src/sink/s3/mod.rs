//! [`S3Sink`]: objects in an S3 bucket (AWS, or an S3-compatible store via
//! `endpoint_url` + `force_path_style`).
//!
//! - Below `multipart_threshold` a file goes up in one PutObject whose body is read from
//!   the path (a retryable body: the SDK can resend it); above it, in a multipart upload of
//!   `part_size` parts cut from the file, `upload_concurrency` in flight, aborted on
//!   failure (best effort) and restarted when the store lost it (`NoSuchUpload`).
//! - Every object carries the configured ACL, SSE, storage class and a Content-Type from
//!   its extension, never a Content-Encoding.
//! - With `if_none_match`, PutObject and CompleteMultipartUpload send `If-None-Match: *`;
//!   a 412 answer plus a HEAD showing the same size and the ETag of the staged file's
//!   bytes means the file was delivered before ([`PutOutcome::AlreadyPresent`]). Another
//!   size or ETag is a [`SinkErrorKind::KeyConflict`]: the object is never overwritten.
//!   The ETag is compared when S3 makes it an MD5 (no SSE-KMS, no SSE-C): the hex MD5 of
//!   the bytes for one PutObject, the MD5 of the parts' MD5s and `-<parts>` for a
//!   multipart upload, with the parts cut as this sink cuts them. When it is not an MD5,
//!   or the object has another part count (`part_size` changed since), only the size is
//!   compared, with a warning.
//! - Checksums follow [`ChecksumMode`]: S3-compatible stores get none unless required,
//!   AWS gets CRC32 (per part too), Object Lock buckets need `Content-MD5`.
//! - Errors are classified from the SDK's error kind, HTTP status and S3 error code into
//!   [`SinkErrorKind`]s (see [`SinkError::is_retryable`]).
//!
//! The parts, one submodule each: `settings` ([`S3Settings`], [`Sse`], [`ChecksumMode`],
//! their parsing and validation), `client` (building the client, the bucket's region),
//! `put` (single PutObject, the startup probe), `multipart` (multipart uploads),
//! `conditional` (what a 412 to `If-None-Match` means), `staged` (parts, MD5s and ETag of
//! the staged file) and `errors` (SDK errors into [`SinkErrorKind`]s).

mod client;
mod conditional;
mod errors;
mod multipart;
mod put;
mod settings;
mod staged;

use std::path::Path;
use std::sync::{Arc, RwLock};

use aws_sdk_s3::Client;

use self::errors::staged_file_error;
pub use self::settings::{
    ChecksumMode, MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, ParseChecksumModeError, S3Settings, Sse,
    default_checksum_for,
};
use super::{ObjectSink, PutOutcome, SinkError, SinkErrorKind};

/// Writes objects into an S3 bucket.
#[derive(Debug)]
pub struct S3Sink {
    settings: Arc<S3Settings>,
    /// Replaced when the bucket's region turns out to differ (auto region only).
    client: RwLock<Client>,
    /// Whether the region may be changed by discovery / redirects.
    region_auto: bool,
}

impl S3Sink {
    /// Returns the settings the sink was built with.
    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    fn target(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.settings.bucket)
    }

    /// One put, single request or multipart by size.
    async fn put_once(&self, key: &str, path: &Path, len: u64) -> Result<PutOutcome, SinkError> {
        let client = self.client();
        if len > 0 && len >= self.settings.multipart_threshold {
            self.put_multipart(&client, key, path, len).await
        } else {
            self.put_single(&client, key, path, len).await
        }
    }
}

#[async_trait::async_trait]
impl ObjectSink for S3Sink {
    async fn put_file(&self, key: &str, path: &Path) -> Result<PutOutcome, SinkError> {
        if key.is_empty() || key.starts_with('/') {
            return Err(SinkError::InvalidKey {
                key: key.to_owned(),
                reason: "must be a non-empty key without a leading '/'",
            });
        }
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|e| staged_file_error(&self.target(key), path, Box::new(e)))?
            .len();
        let started = std::time::Instant::now();
        let mut result = self.put_once(key, path, len).await;
        if matches!(&result, Err(e) if e.kind() == SinkErrorKind::RegionRedirect) {
            result = self.put_once(key, path, len).await;
        }
        if let Ok(outcome) = &result {
            tracing::debug!(key, bytes = len, ?outcome, elapsed = ?started.elapsed(), "object stored");
        }
        result
    }

    async fn check(&self) -> Result<(), SinkError> {
        match self.check_once().await {
            Err(e) if e.kind() == SinkErrorKind::RegionRedirect => self.check_once().await,
            other => other,
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}", self.settings.bucket)
    }

    fn kind(&self) -> &'static str {
        "s3"
    }
}
