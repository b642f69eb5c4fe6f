//! Building the client of an [`S3Sink`] and keeping it pointed at the bucket's region:
//! credentials (default chain or static keys, AssumeRole with external id), endpoint and
//! path style, timeouts and checksum behaviour ([`S3Sink::connect`]); region discovery at
//! connect time and the switch to the bucket's region when a response names it
//! ([`S3Sink::classify`]).

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    Region, RequestChecksumCalculation, ResponseChecksumValidation, StalledStreamProtectionConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::S3Sink;
use super::errors::{bucket_region_header, classify_sdk_error, root_cause};
use super::settings::{ChecksumMode, S3Settings, validate_settings};
use crate::sink::{SinkError, SinkErrorKind};

/// Bound on the region discovery at connect time (it must not hold up startup for long
/// when the store is unreachable; the first request redirects later anyway).
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(20);

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
    pub(super) fn endpoint(&self) -> String {
        match &self.settings.endpoint_url {
            Some(url) => url.clone(),
            None => format!("s3.{}.amazonaws.com", self.region()),
        }
    }

    /// Classifies an SDK error; with an automatic region, a response naming the bucket's
    /// region switches the client there and makes the error a retryable
    /// [`SinkErrorKind::RegionRedirect`].
    pub(super) fn classify<E>(
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
}
