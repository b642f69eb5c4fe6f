//! The settings of an [`S3Sink`](super::S3Sink): [`S3Settings`] and its option types
//! ([`Sse`], [`ChecksumMode`] and its parsing), S3's part limits, the checks `connect`
//! makes (`validate_settings`) and the object options every write carries
//! (`apply_object_options!`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::types::ChecksumAlgorithm;

use crate::sink::{SinkError, SinkErrorKind};

pub(super) const MIB: u64 = 1024 * 1024;
/// S3's smallest part (all parts but the last).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3's largest number of parts in one upload.
pub const MAX_PARTS: u64 = 10_000;

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

    pub(super) fn algorithm(self) -> Option<ChecksumAlgorithm> {
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

/// Validated settings of an [`S3Sink`](super::S3Sink). [`S3Settings::new`] gives the defaults.
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
pub(super) use apply_object_options;

pub(super) fn validate_settings(s: &S3Settings) -> Result<(), SinkError> {
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
}
