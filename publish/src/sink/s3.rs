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

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectCannedAcl,
    ServerSideEncryption, StorageClass,
};
use tokio::task::JoinSet;

use super::md5::{Md5, md5_of_file_range};
use super::{
    BoxError, ObjectSink, PutOutcome, SinkError, SinkErrorKind, content_type_for, unique_suffix,
};

const MIB: u64 = 1024 * 1024;
/// S3's smallest part (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3's largest number of parts in one upload.
pub const MAX_PARTS: u64 = 10_000;
/// How often a multipart upload is restarted within one `put_file` when the store lost
/// it (`NoSuchUpload`) or a conditional completion conflicted (409).
const MULTIPART_RESTARTS: u32 = 2;
/// Bound on the region discovery at connect time (it must not hold up startup for long
/// when the store is unreachable; the first request redirects later anyway).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Content of the startup probe object.
const PROBE_BODY: &[u8] = b"flowlog sink probe; safe to delete\n";

/// Server-side encryption of stored objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Sse {
    /// Send no SSE header (the bucket default applies).
    #[default]
    None,
    /// SSE-S3 (`AES256`).
    Aes256,
    /// SSE-KMS (`aws:kms`), with a key id/ARN (`None` = the AWS managed key) and whether
    /// to use an S3 Bucket Key.
    AwsKms {
        /// KMS key id, alias or ARN; `None` uses the account's `aws/s3` key.
        key_id: Option<String>,
        /// Sends `x-amz-server-side-encryption-bucket-key-enabled: true`.
        bucket_key: bool,
    },
}

/// Which integrity checksums requests carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumMode {
    /// Only where an operation requires one; responses validated only where required.
    /// Works with S3-compatible stores that reject the SDK's default CRC32 trailers.
    WhenRequired,
    /// CRC32 on PutObject and on every part (also listed in CompleteMultipartUpload).
    Crc32,
    /// CRC32C on PutObject and on every part.
    Crc32c,
    /// `Content-MD5` computed from the file (whole object or part); needed by Object Lock
    /// buckets. No SDK checksum is added on top (some stores refuse two).
    Md5,
}

impl ChecksumMode {
    /// Returns the default for an endpoint: [`ChecksumMode::WhenRequired`] for a custom
    /// endpoint (S3-compatible store), [`ChecksumMode::Crc32`] for AWS.
    pub fn default_for(endpoint_url: Option<&str>) -> Self {
        if endpoint_url.is_some() {
            Self::WhenRequired
        } else {
            Self::Crc32
        }
    }

    /// Returns the config spelling: `when_required`, `crc32`, `crc32c` or `md5`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WhenRequired => "when_required",
            Self::Crc32 => "crc32",
            Self::Crc32c => "crc32c",
            Self::Md5 => "md5",
        }
    }

    fn algorithm(self) -> Option<ChecksumAlgorithm> {
        match self {
            Self::Crc32 => Some(ChecksumAlgorithm::Crc32),
            Self::Crc32c => Some(ChecksumAlgorithm::Crc32C),
            Self::WhenRequired | Self::Md5 => None,
        }
    }
}

impl fmt::Display for ChecksumMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Returns [`ChecksumMode::default_for`]`(endpoint_url)`.
pub fn default_checksum_for(endpoint_url: Option<&str>) -> ChecksumMode {
    ChecksumMode::default_for(endpoint_url)
}

/// A string that is not a [`ChecksumMode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not one of when_required, crc32, crc32c, md5")]
pub struct ParseChecksumModeError(pub String);

impl FromStr for ChecksumMode {
    type Err = ParseChecksumModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "when_required" => Ok(Self::WhenRequired),
            "crc32" => Ok(Self::Crc32),
            "crc32c" => Ok(Self::Crc32c),
            "md5" => Ok(Self::Md5),
            other => Err(ParseChecksumModeError(other.to_owned())),
        }
    }
}

/// Validated settings of an [`S3Sink`]. [`S3Settings::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Bucket name (no `s3://`, no folders).
    pub bucket: String,
    /// Region; `None` = discover the bucket's region (HeadBucket's `x-amz-bucket-region`,
    /// else GetBucketLocation), starting from the default chain's region (or us-east-1).
    pub region: Option<String>,
    /// Custom endpoint of an S3-compatible store, e.g. `http://127.0.0.1:9000`.
    pub endpoint_url: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`) instead of virtual-hosted ones.
    pub force_path_style: bool,
    /// Role to assume (STS AssumeRole) with the default chain's credentials.
    pub role_arn: Option<String>,
    /// External id for the AssumeRole call.
    pub external_id: Option<String>,
    /// Session name for the AssumeRole call (default `flowlog-aggregator`).
    pub role_session_name: String,
    /// Explicit access keys instead of the default chain (S3-compatible stores, tests);
    /// `role_arn` still applies on top of them. Debug output redacts the secret.
    pub static_credentials: Option<Credentials>,
    /// Server-side encryption.
    pub sse: Sse,
    /// Canned ACL (default `bucket-owner-full-control`, which buckets with "bucket owner
    /// enforced" object ownership also accept); `None` sends no ACL header, for stores
    /// that refuse ACL headers.
    pub acl: Option<String>,
    /// Storage class, e.g. `STANDARD_IA`; `None` = the bucket default (STANDARD).
    pub storage_class: Option<String>,
    /// Checksums (default from [`default_checksum_for`]).
    pub checksum: ChecksumMode,
    /// Files of at least this many bytes go up as multipart uploads (default 16 MiB).
    pub multipart_threshold: u64,
    /// Multipart part size in bytes (default 8 MiB, at least 5 MiB).
    pub part_size: u64,
    /// Parts in flight per multipart upload (default 4).
    pub upload_concurrency: usize,
    /// Sends `If-None-Match: *` so an existing object is never overwritten (default true);
    /// turn off for stores without conditional writes.
    pub if_none_match: bool,
    /// Key prefix (`""` or ending in `/`) under which the startup probe goes, as
    /// `{probe_prefix}.flowlog-probe/{unique}`.
    pub probe_prefix: String,
    /// Timeout of each HTTP request attempt (one PutObject or one part; default 5 min).
    pub operation_timeout: Duration,
}

impl S3Settings {
    /// Returns the defaults for `bucket`.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            region: None,
            endpoint_url: None,
            force_path_style: false,
            role_arn: None,
            external_id: None,
            role_session_name: "flowlog-aggregator".to_owned(),
            static_credentials: None,
            sse: Sse::None,
            acl: Some("bucket-owner-full-control".to_owned()),
            storage_class: None,
            checksum: ChecksumMode::default_for(None),
            multipart_threshold: 16 * MIB,
            part_size: 8 * MIB,
            upload_concurrency: 4,
            if_none_match: true,
            probe_prefix: String::new(),
            operation_timeout: Duration::from_secs(300),
        }
    }
}

/// Sets ACL, SSE and storage class on a PutObject or CreateMultipartUpload builder.
macro_rules! apply_object_options {
    ($req:expr, $settings:expr) => {{
        let settings: &S3Settings = $settings;
        let mut req = $req;
        if let Some(acl) = &settings.acl {
            req = req.acl(ObjectCannedAcl::from(acl.as_str()));
        }
        match &settings.sse {
            Sse::None => {}
            Sse::Aes256 => req = req.server_side_encryption(ServerSideEncryption::Aes256),
            Sse::AwsKms { key_id, bucket_key } => {
                req = req.server_side_encryption(ServerSideEncryption::AwsKms);
                if let Some(key_id) = key_id {
                    req = req.ssekms_key_id(key_id);
                }
                if *bucket_key {
                    req = req.bucket_key_enabled(true);
                }
            }
        }
        if let Some(class) = &settings.storage_class {
            req = req.storage_class(StorageClass::from(class.as_str()));
        }
        req
    }};
}

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
    /// Builds the client: the standard credential chain (env, profile, web identity,
    /// ECS, IMDS…) or `static_credentials`, AssumeRole (with external id) when `role_arn`
    /// is set, the endpoint and path style, an explicit [`BehaviorVersion`], upload
    /// stalled-stream protection off (bodies come from sealed files), checksums per
    /// [`ChecksumMode`]. Then discovers the bucket's region when none is configured (best
    /// effort: an unreachable store does not fail `connect`; `check` reports it).
    pub async fn connect(settings: S3Settings) -> Result<Self, SinkError> {
        validate_settings(&settings)?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(credentials) = &settings.static_credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let sdk_config = loader.load().await;
        let region = sdk_config
            .region()
            .cloned()
            .unwrap_or_else(|| Region::from_static("us-east-1"));
        let sdk_config = sdk_config.into_builder().region(region.clone()).build();

        let mut builder = aws_sdk_s3::config::Builder::from(&sdk_config)
            .behavior_version(BehaviorVersion::latest())
            .region(region)
            .force_path_style(settings.force_path_style)
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .upload_enabled(false)
                    .build(),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(settings.operation_timeout)
                    .build(),
            );
        if let Some(url) = &settings.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        builder = match settings.checksum {
            ChecksumMode::WhenRequired | ChecksumMode::Md5 => builder
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired),
            ChecksumMode::Crc32 | ChecksumMode::Crc32c => builder
                .request_checksum_calculation(RequestChecksumCalculation::WhenSupported)
                .response_checksum_validation(ResponseChecksumValidation::WhenSupported),
        };
        if let Some(role_arn) = &settings.role_arn {
            let mut assume = aws_config::sts::AssumeRoleProvider::builder(role_arn)
                .session_name(&settings.role_session_name)
                .configure(&sdk_config);
            if let Some(external_id) = &settings.external_id {
                assume = assume.external_id(external_id);
            }
            builder = builder.credentials_provider(assume.build().await);
        }

        let sink = Self {
            region_auto: settings.region.is_none(),
            settings: Arc::new(settings),
            client: RwLock::new(Client::from_conf(builder.build())),
        };
        if sink.region_auto {
            match tokio::time::timeout(DISCOVERY_TIMEOUT, sink.discover_region()).await {
                Ok(Ok(region)) => {
                    tracing::info!(bucket = %sink.settings.bucket, %region, "bucket region")
                }
                Ok(Err(reason)) => tracing::warn!(
                    bucket = %sink.settings.bucket,
                    region = %sink.region(),
                    %reason,
                    "cannot discover the bucket's region; using the default region for now"
                ),
                Err(_) => tracing::warn!(
                    bucket = %sink.settings.bucket,
                    region = %sink.region(),
                    "bucket region discovery timed out; using the default region for now"
                ),
            }
        }
        Ok(sink)
    }

    /// Returns the settings the sink was built with.
    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// Returns the region requests currently go to.
    pub fn region(&self) -> String {
        self.client()
            .config()
            .region()
            .map_or_else(String::new, |r| r.as_ref().to_owned())
    }

    /// Returns (a clone of) the current client.
    pub fn client(&self) -> Client {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Points the client at `region` (if it is not already there).
    fn use_region(&self, region: &str) {
        let mut client = self.client.write().unwrap_or_else(PoisonError::into_inner);
        if client.config().region().map(|r| r.as_ref()) != Some(region) {
            let conf = client
                .config()
                .to_builder()
                .region(Region::new(region.to_owned()))
                .build();
            *client = Client::from_conf(conf);
        }
    }

    /// Asks the store where the bucket lives and switches the client there.
    async fn discover_region(&self) -> Result<String, String> {
        let client = self.client();
        let bucket = &self.settings.bucket;
        let found = match client.head_bucket().bucket(bucket).send().await {
            Ok(out) => out.bucket_region().map(str::to_owned),
            Err(e) => {
                let header = bucket_region_header(&e);
                if header.is_none() && e.raw_response().is_none() {
                    return Err(root_cause(&e));
                }
                header
            }
        };
        let region = match found {
            Some(region) => region,
            None => {
                let out = client.get_bucket_location().bucket(bucket).send().await.map_err(|e| {
                    let code = e.code().unwrap_or("no error code").to_owned();
                    format!("HeadBucket gave no x-amz-bucket-region and GetBucketLocation failed ({code})")
                })?;
                match out.location_constraint().map(|c| c.as_str()) {
                    None | Some("") => "us-east-1".to_owned(),
                    Some("EU") => "eu-west-1".to_owned(),
                    Some(other) => other.to_owned(),
                }
            }
        };
        self.use_region(&region);
        Ok(region)
    }

    /// Returns the endpoint requests go to, for error messages.
    fn endpoint(&self) -> String {
        match &self.settings.endpoint_url {
            Some(url) => url.clone(),
            None => format!("s3.{}.amazonaws.com", self.region()),
        }
    }

    fn target(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.settings.bucket)
    }

    /// Classifies an SDK error; with an automatic region, a response naming the bucket's
    /// region switches the client there and makes the error a retryable
    /// [`SinkErrorKind::RegionRedirect`].
    fn classify<E>(
        &self,
        op: &'static str,
        key: &str,
        conditional: bool,
        err: SdkError<E, HttpResponse>,
    ) -> SinkError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let configured = self.region();
        let (err, hint) = classify_sdk_error(
            op,
            self.target(key),
            conditional,
            &configured,
            &self.endpoint(),
            err,
        );
        match (err, hint) {
            (
                SinkError::Failed {
                    op,
                    target,
                    kind: SinkErrorKind::WrongRegion,
                    source,
                    ..
                },
                Some(region),
            ) if self.region_auto && region != configured => {
                self.use_region(&region);
                let reason =
                    format!("the bucket is in {region}, not {configured}; switched to {region}");
                SinkError::failed(op, target, SinkErrorKind::RegionRedirect, reason, source)
            }
            (err, _) => err,
        }
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

    async fn put_single(
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

    /// After a 412 to `If-None-Match: *`: the same size and ETag (see the module docs)
    /// mean the same deterministic bytes were delivered before; anything else is a
    /// [`SinkErrorKind::KeyConflict`].
    async fn resolve_existing(
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

    async fn put_multipart(
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

    async fn check_once(&self) -> Result<(), SinkError> {
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

fn validate_settings(s: &S3Settings) -> Result<(), SinkError> {
    let target = format!("s3://{}", s.bucket);
    let invalid = |reason: String| {
        Err(SinkError::failed(
            "connect",
            target.clone(),
            SinkErrorKind::InvalidConfig,
            reason,
            None,
        ))
    };
    if s.bucket.is_empty() || s.bucket.contains('/') {
        return invalid(format!("'{}' is not a bucket name", s.bucket));
    }
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&s.part_size) {
        return invalid(format!(
            "part_size {} is outside S3's 5 MiB..5 GiB",
            s.part_size
        ));
    }
    if s.upload_concurrency == 0 {
        return invalid("upload_concurrency must be at least 1".to_owned());
    }
    if s.external_id.is_some() && s.role_arn.is_none() {
        return invalid("external_id needs role_arn".to_owned());
    }
    Ok(())
}

/// Why a multipart attempt stopped.
enum Multipart {
    /// The upload is gone or conflicted: start a new one.
    Restart(SinkError),
    /// Give up this `put_file` call.
    Fail(SinkError),
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

/// The ETag S3 gives an object of `path`'s `len` bytes when it is not encrypted with
/// SSE-KMS or SSE-C: the hex MD5 of the bytes for one PutObject; for a multipart upload of
/// `parts`, the hex MD5 of the concatenated part MD5s, then `-` and the part count.
fn expected_etag(
    path: &Path,
    len: u64,
    parts: Option<Vec<(i32, u64, u64)>>,
) -> std::io::Result<String> {
    let hex = |digest: [u8; 16]| {
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    match parts {
        None => Ok(hex(md5_of_file_range(path, 0, len)?)),
        Some(parts) => {
            let mut composite = Md5::new();
            for &(_, offset, length) in &parts {
                composite.update(&md5_of_file_range(path, offset, length)?);
            }
            Ok(format!("{}-{}", hex(composite.finish()), parts.len()))
        }
    }
}

/// `(part number, offset, length)` of every part; the part size grows if the file would
/// need more than 10,000 parts.
fn part_ranges(len: u64, part_size: u64) -> Vec<(i32, u64, u64)> {
    let min_for_count = len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
    let size = part_size.max(min_for_count).max(1);
    let mut parts = Vec::new();
    let mut offset = 0;
    let mut number = 1i32;
    while offset < len {
        let length = size.min(len - offset);
        parts.push((number, offset, length));
        offset += length;
        number = number.saturating_add(1);
    }
    parts
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

/// Returns the base64 MD5 of a file range (computed off the async runtime).
async fn md5_base64(
    target: &str,
    path: &Path,
    offset: u64,
    length: u64,
) -> Result<String, SinkError> {
    let owned = path.to_owned();
    let digest = tokio::task::spawn_blocking(move || md5_of_file_range(&owned, offset, length))
        .await
        .map_err(|e| staged_file_error(target, path, Box::new(e)))?
        .map_err(|e| staged_file_error(target, path, Box::new(e)))?;
    Ok(aws_smithy_types::base64::encode(digest))
}

fn staged_file_error(target: &str, path: &Path, source: BoxError) -> SinkError {
    let missing = source
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::NotFound);
    let kind = if missing {
        SinkErrorKind::LocalPermanent
    } else {
        SinkErrorKind::LocalIo
    };
    let reason = format!("cannot read the staged file {}: {source}", path.display());
    SinkError::failed("put", target, kind, reason, Some(source))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn http_status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn bucket_region_header<E>(err: &SdkError<E, HttpResponse>) -> Option<String> {
    err.raw_response()
        .and_then(|r| r.headers().get("x-amz-bucket-region"))
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
}

/// Returns the innermost error's message: for connection problems this is the useful
/// part ("Connection refused (os error 111)"), the outer layers are SDK plumbing.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// Maps an SDK error to a [`SinkError`] (plus the bucket's region if the response named
/// it). `conditional`: the request carried `If-None-Match`.
fn classify_sdk_error<E>(
    op: &'static str,
    target: String,
    conditional: bool,
    configured_region: &str,
    endpoint: &str,
    err: SdkError<E, HttpResponse>,
) -> (SinkError, Option<String>)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = http_status(&err);
    let code = err.code().map(str::to_owned);
    let message = err.message().map(str::to_owned);
    let region_hint = bucket_region_header(&err)
        .or_else(|| message.as_deref().and_then(expected_region_in_message));
    let (kind, summary) = match &err {
        SdkError::ServiceError(_) => classify_service_error(
            status,
            code.as_deref(),
            conditional,
            configured_region,
            region_hint.as_deref(),
        ),
        SdkError::TimeoutError(_) => (
            SinkErrorKind::Timeout,
            format!("request to {endpoint} timed out"),
        ),
        SdkError::DispatchFailure(failure) => {
            if failure.is_timeout() {
                (
                    SinkErrorKind::Timeout,
                    format!("connecting to {endpoint} timed out"),
                )
            } else if failure.is_io() {
                (
                    SinkErrorKind::Unreachable,
                    format!("cannot reach {endpoint}"),
                )
            } else if failure.is_user() {
                (
                    SinkErrorKind::InvalidConfig,
                    "the request could not be sent (client configuration)".to_owned(),
                )
            } else {
                (
                    SinkErrorKind::Unreachable,
                    format!(
                        "the request to {endpoint} could not be sent (credentials or endpoint)"
                    ),
                )
            }
        }
        SdkError::ResponseError(_) => (
            SinkErrorKind::Transient,
            "invalid or truncated response".to_owned(),
        ),
        SdkError::ConstructionFailure(_) => (
            SinkErrorKind::InvalidRequest,
            "the request could not be built".to_owned(),
        ),
        _ => (SinkErrorKind::Other, "unexpected sdk error".to_owned()),
    };
    let reason = match (&err, code.as_deref(), status) {
        (SdkError::ServiceError(_), Some(code), _) => match message.as_deref() {
            Some(message) if !message.is_empty() => format!("{summary} ({code}): {message}"),
            _ => format!("{summary} ({code})"),
        },
        (SdkError::ServiceError(_), None, Some(status)) => format!("{summary} (http {status})"),
        (SdkError::ServiceError(_), None, None) => summary,
        _ => format!("{summary}: {}", root_cause(&err)),
    };
    let hint = if kind == SinkErrorKind::WrongRegion {
        region_hint
    } else {
        None
    };
    (
        SinkError::failed(op, target, kind, reason, Some(Box::new(err))),
        hint,
    )
}

/// Classifies a response the store sent: by S3 error code first, then by HTTP status.
fn classify_service_error(
    status: Option<u16>,
    code: Option<&str>,
    conditional: bool,
    configured_region: &str,
    region_hint: Option<&str>,
) -> (SinkErrorKind, String) {
    use SinkErrorKind as K;
    let wrong_region = || {
        let reason = match region_hint {
            Some(region) => format!(
                "wrong region: the bucket is in {region}, not {configured_region}; set region = \"{region}\""
            ),
            None => format!("wrong region: the bucket is not in {configured_region}"),
        };
        (K::WrongRegion, reason)
    };
    let not_implemented = || {
        if conditional {
            (
                K::Unsupported,
                "the store does not support conditional writes (If-None-Match); set if_none_match = false".to_owned(),
            )
        } else {
            (
                K::Unsupported,
                "the store does not implement this request".to_owned(),
            )
        }
    };
    let by_code = match code {
        Some("AccessDenied" | "AllAccessDisabled" | "AccountProblem" | "AccessControlListNotSupported") => {
            Some((K::AccessDenied, "access denied".to_owned()))
        }
        Some("InvalidAccessKeyId") => {
            Some((K::Credentials, "invalid credentials: the access key id is not known to the store".to_owned()))
        }
        Some("SignatureDoesNotMatch") => Some((
            K::Credentials,
            "invalid credentials: the request signature does not match (check the secret access key)".to_owned(),
        )),
        Some("InvalidToken" | "InvalidSecurity" | "MissingSecurityHeader" | "CredentialsNotSupported") => {
            Some((K::Credentials, "invalid credentials".to_owned()))
        }
        Some("ExpiredToken" | "TokenRefreshRequired" | "RequestExpired" | "RequestTimeTooSkewed") => {
            Some((K::Transient, "credentials expired or clock skew".to_owned()))
        }
        Some("NoSuchBucket") => Some((K::NoSuchBucket, "no such bucket".to_owned())),
        Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException") => {
            Some(wrong_region())
        }
        Some("TemporaryRedirect") => Some((K::Transient, "temporary redirect".to_owned())),
        Some(c) if c.starts_with("KMS.") && c.contains("Throttl") => Some((K::Throttled, "kms throttling".to_owned())),
        Some(c) if c.starts_with("KMS.") || c.starts_with("KMS") => {
            Some((K::Kms, "kms key error (check sse key id, key state and kms permissions)".to_owned()))
        }
        Some(
            "SlowDown"
            | "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "TooManyRequestsException"
            | "ProvisionedThroughputExceededException"
            | "RequestLimitExceeded"
            | "BandwidthLimitExceeded"
            | "LimitExceededException"
            | "PriorRequestNotComplete",
        ) => Some((K::Throttled, "throttled".to_owned())),
        Some("RequestTimeout" | "RequestTimeoutException") => {
            Some((K::ServerError, "the store timed out reading the request".to_owned()))
        }
        Some("InternalError" | "InternalFailure" | "ServiceUnavailable") => {
            Some((K::ServerError, "server error".to_owned()))
        }
        Some("OperationAborted" | "ConditionalRequestConflict" | "NoSuchUpload") => {
            Some((K::Conflict, "conflicting concurrent operation".to_owned()))
        }
        Some("BadDigest" | "XAmzContentSHA256Mismatch" | "IncompleteBody") => {
            Some((K::Transient, "the body arrived corrupted or incomplete".to_owned()))
        }
        Some("NotImplemented") => Some(not_implemented()),
        Some(
            "InvalidArgument"
            | "InvalidRequest"
            | "InvalidStorageClass"
            | "EntityTooLarge"
            | "EntityTooSmall"
            | "InvalidPart"
            | "InvalidPartOrder"
            | "MalformedXML"
            | "InvalidDigest"
            | "KeyTooLongError"
            | "MetadataTooLarge"
            | "InvalidBucketName"
            | "MissingContentLength"
            | "InvalidEncryptionAlgorithmError"
            | "InvalidObjectState"
            | "UnexpectedContent",
        ) => Some((K::InvalidRequest, "the store refused the request as invalid".to_owned())),
        _ => None,
    };
    if let Some(found) = by_code {
        return found;
    }
    match status {
        Some(301) => wrong_region(),
        Some(307) => (K::Transient, "temporary redirect".to_owned()),
        Some(400) => (K::InvalidRequest, "bad request".to_owned()),
        Some(401 | 403) => (K::AccessDenied, "access denied".to_owned()),
        Some(404) => (K::Other, "not found".to_owned()),
        Some(405) => (K::Unsupported, "method not allowed".to_owned()),
        Some(408) => (K::ServerError, "request timeout".to_owned()),
        Some(409) => (K::Conflict, "conflict".to_owned()),
        Some(429) => (K::Throttled, "throttled".to_owned()),
        Some(501) => not_implemented(),
        Some(s) if s >= 500 => (K::ServerError, "server error".to_owned()),
        _ => (K::Other, "unexpected response".to_owned()),
    }
}

/// Finds the region in an `AuthorizationHeaderMalformed` message:
/// "the region 'us-east-1' is wrong; expecting 'eu-west-1'".
fn expected_region_in_message(message: &str) -> Option<String> {
    let rest = &message[message.find("expecting '")? + "expecting '".len()..];
    let region = &rest[..rest.find('\'')?];
    (!region.is_empty()).then(|| region.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_modes_parse() {
        for mode in [
            ChecksumMode::WhenRequired,
            ChecksumMode::Crc32,
            ChecksumMode::Crc32c,
            ChecksumMode::Md5,
        ] {
            assert_eq!(mode.as_str().parse::<ChecksumMode>(), Ok(mode));
        }
        let err = "sha1".parse::<ChecksumMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "'sha1' is not one of when_required, crc32, crc32c, md5"
        );
        assert_eq!(
            default_checksum_for(Some("http://127.0.0.1:9000")),
            ChecksumMode::WhenRequired
        );
        assert_eq!(default_checksum_for(None), ChecksumMode::Crc32);
    }

    #[test]
    fn defaults() {
        let s = S3Settings::new("b");
        assert_eq!(s.acl.as_deref(), Some("bucket-owner-full-control"));
        assert_eq!(s.multipart_threshold, 16 * MIB);
        assert_eq!(s.part_size, 8 * MIB);
        assert_eq!(s.upload_concurrency, 4);
        assert!(s.if_none_match);
        assert_eq!(s.role_session_name, "flowlog-aggregator");
        assert_eq!(s.operation_timeout, Duration::from_secs(300));
        assert_eq!(s.checksum, ChecksumMode::Crc32);
    }

    #[test]
    fn parts_cover_the_file() {
        assert_eq!(
            part_ranges(12 * MIB, 5 * MIB),
            vec![
                (1, 0, 5 * MIB),
                (2, 5 * MIB, 5 * MIB),
                (3, 10 * MIB, 2 * MIB)
            ]
        );
        assert_eq!(part_ranges(5 * MIB, 5 * MIB), vec![(1, 0, 5 * MIB)]);
        // 100 GiB with 5 MiB parts would be 20,480 parts: the part size grows.
        let big = part_ranges(100 * 1024 * MIB, 5 * MIB);
        assert!(big.len() as u64 <= MAX_PARTS);
        assert_eq!(big.iter().map(|p| p.2).sum::<u64>(), 100 * 1024 * MIB);
    }

    #[test]
    fn service_errors_are_classified() {
        let c =
            |status, code| classify_service_error(Some(status), code, false, "us-east-1", None).0;
        assert_eq!(c(403, Some("AccessDenied")), SinkErrorKind::AccessDenied);
        assert_eq!(
            c(403, Some("SignatureDoesNotMatch")),
            SinkErrorKind::Credentials
        );
        assert_eq!(
            c(403, Some("InvalidAccessKeyId")),
            SinkErrorKind::Credentials
        );
        assert_eq!(c(404, Some("NoSuchBucket")), SinkErrorKind::NoSuchBucket);
        assert_eq!(c(503, Some("SlowDown")), SinkErrorKind::Throttled);
        assert_eq!(c(400, Some("RequestTimeout")), SinkErrorKind::ServerError);
        assert_eq!(c(500, Some("InternalError")), SinkErrorKind::ServerError);
        assert_eq!(c(502, None), SinkErrorKind::ServerError);
        assert_eq!(c(429, None), SinkErrorKind::Throttled);
        assert_eq!(c(400, Some("KMS.NotFoundException")), SinkErrorKind::Kms);
        assert_eq!(
            c(400, Some("KMS.ThrottlingException")),
            SinkErrorKind::Throttled
        );
        assert_eq!(
            c(400, Some("InvalidArgument")),
            SinkErrorKind::InvalidRequest
        );
        assert_eq!(c(301, None), SinkErrorKind::WrongRegion);
        assert_eq!(c(403, None), SinkErrorKind::AccessDenied);
        assert!(c(503, Some("SlowDown")).is_retryable());
        assert!(!c(403, Some("AccessDenied")).is_retryable());

        let (kind, reason) =
            classify_service_error(Some(501), Some("NotImplemented"), true, "us-east-1", None);
        assert_eq!(kind, SinkErrorKind::Unsupported);
        assert!(reason.contains("if_none_match = false"), "{reason}");

        let (kind, reason) = classify_service_error(
            Some(301),
            Some("PermanentRedirect"),
            false,
            "us-east-1",
            Some("eu-west-1"),
        );
        assert_eq!(kind, SinkErrorKind::WrongRegion);
        assert!(reason.contains("the bucket is in eu-west-1"), "{reason}");
    }

    #[test]
    fn region_from_authorization_header_malformed() {
        assert_eq!(
            expected_region_in_message(
                "The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-west-1'"
            ),
            Some("eu-west-1".to_owned())
        );
        assert_eq!(expected_region_in_message("nothing here"), None);
    }
}
