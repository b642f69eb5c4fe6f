//! Single-request writes: a file below `multipart_threshold` in one PutObject (body read
//! from the path, checksum or `Content-MD5`, `If-None-Match`), and the startup probe
//! (a small object written, then deleted).

use std::path::Path;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::{ByteStream, Length};

use super::S3Sink;
use super::errors::{http_status, staged_file_error};
use super::settings::{ChecksumMode, apply_object_options};
use super::staged::{md5_base64, to_i64};
use crate::sink::md5::Md5;
use crate::sink::{PutOutcome, SinkError, SinkErrorKind, content_type_for, unique_suffix};

// `apply_object_options!` expands to code naming these.
use super::settings::{S3Settings, Sse};
use aws_sdk_s3::types::{ObjectCannedAcl, ServerSideEncryption, StorageClass};

/// Content of the startup probe object.
const PROBE_BODY: &[u8] = b"flowlog sink probe; safe to delete\n";

impl S3Sink {
    pub(super) async fn put_single(
        &self,
        client: &Client,
        key: &str,
        path: &Path,
        len: u64,
    ) -> Result<PutOutcome, SinkError> {
        let s = &*self.settings;
        let body = ByteStream::read_from()
            .path(path)
            .length(Length::Exact(len))
            .build()
            .await
            .map_err(|e| staged_file_error(&self.target(key), path, Box::new(e)))?;
        let mut req = client
            .put_object()
            .bucket(&s.bucket)
            .key(key)
            .body(body)
            .content_length(to_i64(len))
            .content_type(content_type_for(key));
        req = apply_object_options!(req, s);
        if let Some(algorithm) = s.checksum.algorithm() {
            req = req.checksum_algorithm(algorithm);
        }
        if s.checksum == ChecksumMode::Md5 {
            req = req.content_md5(md5_base64(&self.target(key), path, 0, len).await?);
        }
        if s.if_none_match {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(PutOutcome::Stored),
            Err(e) if http_status(&e) == Some(412) => {
                self.resolve_existing(client, key, path, len).await
            }
            Err(e) => Err(self.classify("put", key, s.if_none_match, e)),
        }
    }

    pub(super) async fn check_once(&self) -> Result<(), SinkError> {
        let s = &*self.settings;
        let key = format!("{}.flowlog-probe/{}", s.probe_prefix, unique_suffix());
        let client = self.client();
        let mut req = client
            .put_object()
            .bucket(&s.bucket)
            .key(&key)
            .body(ByteStream::from_static(PROBE_BODY))
            .content_type("text/plain");
        req = apply_object_options!(req, s);
        if let Some(algorithm) = s.checksum.algorithm() {
            req = req.checksum_algorithm(algorithm);
        }
        if s.checksum == ChecksumMode::Md5 {
            let mut md5 = Md5::new();
            md5.update(PROBE_BODY);
            req = req.content_md5(aws_smithy_types::base64::encode(md5.finish()));
        }
        if s.if_none_match {
            // Also proves the store supports conditional writes.
            req = req.if_none_match("*");
        }
        req.send()
            .await
            .map_err(|e| self.classify("check", &key, s.if_none_match, e))?;
        match client
            .delete_object()
            .bucket(&s.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.classify("check", &key, false, e);
                if err.kind() == SinkErrorKind::AccessDenied {
                    // Uploading needs s3:PutObject only; do not demand s3:DeleteObject.
                    tracing::warn!(
                        key = %key,
                        error = %err,
                        "startup probe written but not deleted (no s3:DeleteObject); delete it by hand"
                    );
                    Ok(())
                } else {
                    Err(err)
                }
            }
        }
    }
}
