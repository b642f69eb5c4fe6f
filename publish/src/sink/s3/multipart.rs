//! Multipart uploads: CreateMultipartUpload, the parts cut from the file
//! (`upload_concurrency` in flight, each with its checksum or `Content-MD5`),
//! CompleteMultipartUpload (with `If-None-Match`), AbortMultipartUpload on failure or
//! cancellation (best effort), and a restart when the store lost the upload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::task::JoinSet;

use super::S3Sink;
use super::errors::{classify_sdk_error, http_status, root_cause, staged_file_error};
use super::settings::{ChecksumMode, apply_object_options};
use super::staged::{md5_base64, part_ranges, to_i64};
use crate::sink::{PutOutcome, SinkError, SinkErrorKind, content_type_for};

// `apply_object_options!` expands to code naming these.
use super::settings::{S3Settings, Sse};
use aws_sdk_s3::types::{ObjectCannedAcl, ServerSideEncryption, StorageClass};

/// How often a multipart upload is restarted within one `put_file` when the store lost
/// it (`NoSuchUpload`) or a conditional completion conflicted (409).
const MULTIPART_RESTARTS: u32 = 2;

impl S3Sink {
    pub(super) async fn put_multipart(
        &self,
        client: &Client,
        key: &str,
        path: &Path,
        len: u64,
    ) -> Result<PutOutcome, SinkError> {
        let mut restarts = 0;
        loop {
            match self.multipart_attempt(client, key, path, len).await {
                Ok(outcome) => return Ok(outcome),
                Err(Multipart::Restart(err)) if restarts < MULTIPART_RESTARTS => {
                    restarts += 1;
                    tracing::warn!(key, error = %err, restarts, "multipart upload lost; restarting it");
                }
                Err(Multipart::Restart(err) | Multipart::Fail(err)) => return Err(err),
            }
        }
    }

    async fn multipart_attempt(
        &self,
        client: &Client,
        key: &str,
        path: &Path,
        len: u64,
    ) -> Result<PutOutcome, Multipart> {
        let s = &*self.settings;
        let target = self.target(key);
        let mut create = client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(key)
            .content_type(content_type_for(key));
        create = apply_object_options!(create, s);
        if let Some(algorithm) = s.checksum.algorithm() {
            create = create.checksum_algorithm(algorithm);
        }
        let created = create.send().await.map_err(|e| {
            Multipart::Fail(self.classify("create multipart upload", key, false, e))
        })?;
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(Multipart::Fail(SinkError::failed(
                "create multipart upload",
                target,
                SinkErrorKind::Transient,
                "the store returned no upload id",
                None,
            )));
        };
        let mut guard = AbortGuard::new(client.clone(), &s.bucket, key, &upload_id);

        let parts = part_ranges(len, s.part_size);
        let job = Arc::new(PartJob {
            client: client.clone(),
            bucket: s.bucket.clone(),
            key: key.to_owned(),
            upload_id: upload_id.clone(),
            path: path.to_owned(),
            checksum: s.checksum,
            target: target.clone(),
            region: self.region(),
            endpoint: self.endpoint(),
        });
        let mut in_flight = JoinSet::new();
        let mut pending = parts.iter().copied();
        let mut completed = Vec::with_capacity(parts.len());
        let mut failure = None;
        loop {
            while in_flight.len() < s.upload_concurrency.max(1) {
                let Some(range) = pending.next() else { break };
                in_flight.spawn(Arc::clone(&job).upload(range));
            }
            match in_flight.join_next().await {
                None => break,
                Some(Ok(Ok(part))) => completed.push(part),
                Some(Ok(Err(err))) => {
                    failure = Some(err);
                    break;
                }
                Some(Err(join)) => {
                    failure = Some(Multipart::Fail(SinkError::failed(
                        "upload part",
                        target.clone(),
                        SinkErrorKind::Transient,
                        "the part upload task did not finish",
                        Some(Box::new(join)),
                    )));
                    break;
                }
            }
        }
        if let Some(failure) = failure {
            in_flight.abort_all();
            guard.abort_now().await;
            return Err(failure);
        }
        completed.sort_by_key(|p: &CompletedPart| p.part_number());

        let mut complete = client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(key)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            );
        if s.if_none_match {
            complete = complete.if_none_match("*");
        }
        match complete.send().await {
            Ok(_) => {
                guard.disarm();
                Ok(PutOutcome::Stored)
            }
            Err(e) if http_status(&e) == Some(412) => {
                guard.abort_now().await;
                self.resolve_existing(client, key, path, len)
                    .await
                    .map_err(Multipart::Fail)
            }
            Err(e) if e.code() == Some("NoSuchUpload") => {
                // Either the store lost the upload, or an earlier attempt of this very
                // request completed it (the SDK retried after a lost response).
                guard.disarm();
                match client.head_object().bucket(&s.bucket).key(key).send().await {
                    Ok(head)
                        if head.content_length().and_then(|n| u64::try_from(n).ok())
                            == Some(len) =>
                    {
                        Ok(PutOutcome::Stored)
                    }
                    _ => Err(Multipart::Restart(self.classify(
                        "complete multipart upload",
                        key,
                        s.if_none_match,
                        e,
                    ))),
                }
            }
            Err(e) if http_status(&e) == Some(409) => {
                guard.abort_now().await;
                Err(Multipart::Restart(self.classify(
                    "complete multipart upload",
                    key,
                    s.if_none_match,
                    e,
                )))
            }
            Err(e) => {
                guard.abort_now().await;
                Err(Multipart::Fail(self.classify(
                    "complete multipart upload",
                    key,
                    s.if_none_match,
                    e,
                )))
            }
        }
    }
}

/// Why a multipart attempt stopped.
enum Multipart {
    /// The upload is gone or conflicted: start a new one.
    Restart(SinkError),
    /// Give up this `put_file` call.
    Fail(SinkError),
}

/// What every part upload of one multipart upload shares.
struct PartJob {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    path: PathBuf,
    checksum: ChecksumMode,
    target: String,
    region: String,
    endpoint: String,
}

impl PartJob {
    async fn upload(
        self: Arc<Self>,
        (number, offset, length): (i32, u64, u64),
    ) -> Result<CompletedPart, Multipart> {
        let body = ByteStream::read_from()
            .path(&self.path)
            .offset(offset)
            .length(Length::Exact(length))
            .build()
            .await
            .map_err(|e| {
                Multipart::Fail(staged_file_error(&self.target, &self.path, Box::new(e)))
            })?;
        let mut req = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .content_length(to_i64(length))
            .body(body);
        if let Some(algorithm) = self.checksum.algorithm() {
            req = req.checksum_algorithm(algorithm);
        }
        if self.checksum == ChecksumMode::Md5 {
            req = req.content_md5(
                md5_base64(&self.target, &self.path, offset, length)
                    .await
                    .map_err(Multipart::Fail)?,
            );
        }
        let out = req.send().await.map_err(|e| {
            let restart = e.code() == Some("NoSuchUpload");
            let (err, _) = classify_sdk_error(
                "upload part",
                self.target.clone(),
                false,
                &self.region,
                &self.endpoint,
                e,
            );
            if restart {
                Multipart::Restart(err)
            } else {
                Multipart::Fail(err)
            }
        })?;
        let Some(e_tag) = out.e_tag() else {
            return Err(Multipart::Fail(SinkError::failed(
                "upload part",
                self.target.clone(),
                SinkErrorKind::Transient,
                format!("the store returned no ETag for part {number}"),
                None,
            )));
        };
        let mut part = CompletedPart::builder().part_number(number).e_tag(e_tag);
        match self.checksum {
            ChecksumMode::Crc32 => {
                part = part.set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
            }
            ChecksumMode::Crc32c => {
                part = part.set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_owned))
            }
            ChecksumMode::WhenRequired | ChecksumMode::Md5 => {}
        }
        Ok(part.build())
    }
}

/// Aborts a multipart upload that did not complete: explicitly on failure, or from a
/// spawned task when the upload future is dropped (cancelled) midway.
struct AbortGuard {
    armed: Option<(Client, String, String, String)>,
}

impl AbortGuard {
    fn new(client: Client, bucket: &str, key: &str, upload_id: &str) -> Self {
        Self {
            armed: Some((
                client,
                bucket.to_owned(),
                key.to_owned(),
                upload_id.to_owned(),
            )),
        }
    }

    fn disarm(&mut self) {
        self.armed = None;
    }

    async fn abort_now(&mut self) {
        if let Some((client, bucket, key, upload_id)) = self.armed.take() {
            abort_upload(client, bucket, key, upload_id).await;
        }
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Some((client, bucket, key, upload_id)) = self.armed.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(abort_upload(client, bucket, key, upload_id));
        }
    }
}

async fn abort_upload(client: Client, bucket: String, key: String, upload_id: String) {
    let result = client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&upload_id)
        .send()
        .await;
    match result {
        Ok(_) => tracing::debug!(%bucket, %key, %upload_id, "multipart upload aborted"),
        Err(e) => tracing::warn!(
            %bucket,
            %key,
            %upload_id,
            error = %root_cause(&e),
            "cannot abort the multipart upload; an AbortIncompleteMultipartUpload lifecycle rule cleans it up"
        ),
    }
}
