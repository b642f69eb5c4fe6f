//! Conditional writes: what a 412 answer to `If-None-Match: *` means. The object at the
//! key is compared with the staged file by size and, where S3 makes it an MD5, by ETag
//! (the rules are in the [`super`] module docs): the same bytes were delivered before
//! ([`PutOutcome::AlreadyPresent`]), other bytes are a [`SinkErrorKind::KeyConflict`].

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::ServerSideEncryption;

use super::S3Sink;
use super::errors::{http_status, staged_file_error};
use super::staged::{expected_etag, part_ranges};
use crate::sink::{PutOutcome, SinkError, SinkErrorKind};

impl S3Sink {
    /// After a 412 to `If-None-Match: *`: the same size and ETag (see the module docs)
    /// mean the same deterministic bytes were delivered before; anything else is a
    /// [`SinkErrorKind::KeyConflict`].
    pub(super) async fn resolve_existing(
        &self,
        client: &Client,
        key: &str,
        path: &Path,
        len: u64,
    ) -> Result<PutOutcome, SinkError> {
        match client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => {
                let stored = head.content_length().and_then(|n| u64::try_from(n).ok());
                if stored == Some(len) {
                    match self.compare_etag(&head, key, path, len).await? {
                        EtagCheck::Same => {}
                        EtagCheck::Unverifiable(why) => tracing::warn!(
                            key,
                            bytes = len,
                            reason = why,
                            "object of the same size already present; its content cannot be \
                             compared, so it is taken as delivered before"
                        ),
                        EtagCheck::Different { stored, staged } => {
                            return Err(SinkError::failed(
                                "put",
                                self.target(key),
                                SinkErrorKind::KeyConflict,
                                format!(
                                    "a different object of the same size ({len} bytes) already \
                                     holds this key (ETag {stored}, the staged file's is \
                                     {staged}) and if_none_match forbids overwriting it"
                                ),
                                None,
                            ));
                        }
                    }
                    tracing::info!(
                        key,
                        bytes = len,
                        "object already present (delivered before); not overwritten"
                    );
                    Ok(PutOutcome::AlreadyPresent)
                } else {
                    let stored = stored.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
                    Err(SinkError::failed(
                        "put",
                        self.target(key),
                        SinkErrorKind::KeyConflict,
                        format!(
                            "a different object already holds this key ({stored} bytes stored, {len} bytes \
                             staged) and if_none_match forbids overwriting it"
                        ),
                        None,
                    ))
                }
            }
            Err(e) if http_status(&e) == Some(404) => Err(SinkError::failed(
                "put",
                self.target(key),
                SinkErrorKind::Conflict,
                "the store refused to overwrite the key (412) but the object is gone now",
                Some(Box::new(e)),
            )),
            Err(e) => Err(self.classify("head", key, false, e)),
        }
    }

    /// Compares the ETag of the object at `key` (from `head`) with the one S3 would give
    /// the staged file.
    async fn compare_etag(
        &self,
        head: &HeadObjectOutput,
        key: &str,
        path: &Path,
        len: u64,
    ) -> Result<EtagCheck, SinkError> {
        if head.sse_customer_algorithm().is_some() {
            return Ok(EtagCheck::Unverifiable("SSE-C: the ETag is not an MD5"));
        }
        if matches!(
            head.server_side_encryption(),
            Some(ServerSideEncryption::AwsKms | ServerSideEncryption::AwsKmsDsse)
        ) {
            return Ok(EtagCheck::Unverifiable("SSE-KMS: the ETag is not an MD5"));
        }
        let Some(stored) = head.e_tag() else {
            return Ok(EtagCheck::Unverifiable("the store returned no ETag"));
        };
        let stored = stored.trim_matches('"').to_ascii_lowercase();
        let parts = match stored.split_once('-') {
            None => None,
            Some((_, count)) => {
                let ranges = part_ranges(len, self.settings.part_size);
                if count.parse::<usize>().ok() != Some(ranges.len()) {
                    return Ok(EtagCheck::Unverifiable(
                        "a multipart object with another part count (part_size changed)",
                    ));
                }
                Some(ranges)
            }
        };
        let owned = path.to_owned();
        let target = self.target(key);
        let staged = tokio::task::spawn_blocking(move || expected_etag(&owned, len, parts))
            .await
            .map_err(|e| staged_file_error(&target, path, Box::new(e)))?
            .map_err(|e| staged_file_error(&target, path, Box::new(e)))?;
        Ok(if staged == stored {
            EtagCheck::Same
        } else {
            EtagCheck::Different { stored, staged }
        })
    }
}

/// How an object found at a key compares with the staged file.
#[derive(Debug)]
enum EtagCheck {
    /// The same bytes.
    Same,
    /// Other bytes: the two ETags (lowercase, unquoted).
    Different { stored: String, staged: String },
    /// The ETag is not an MD5 of the bytes, or not one this sink can compute: why.
    Unverifiable(&'static str),
}
