//! `[sink]`: where finished files go (a local directory or S3).

use std::path::PathBuf;

use serde::Deserialize;

use super::{ByteSize, OutputSettings, Problems, required};
use crate::sink::SinkSettings;
use crate::sink::s3::{ChecksumMode, S3Settings, Sse};

#[derive(Debug, Deserialize, Default)]
pub(crate) struct RawSink {
    #[serde(rename = "type")]
    kind: Option<String>,
    path: Option<PathBuf>,
    max_pending_uploads: Option<usize>,
    bucket: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    force_path_style: Option<bool>,
    role_arn: Option<String>,
    external_id: Option<String>,
    role_session_name: Option<String>,
    sse: Option<String>,
    kms_key_id: Option<String>,
    bucket_key_enabled: Option<bool>,
    acl: Option<String>,
    storage_class: Option<String>,
    checksum: Option<String>,
    multipart_threshold: Option<ByteSize>,
    part_size: Option<ByteSize>,
    upload_concurrency: Option<usize>,
    if_none_match: Option<bool>,
}

pub(crate) fn validate_sink(
    raw: RawSink,
    output: &Option<OutputSettings>,
    p: &mut Problems,
) -> Option<SinkSettings> {
    let max_pending_uploads = raw.max_pending_uploads.unwrap_or(16);
    if max_pending_uploads == 0 {
        p.add("sink.max_pending_uploads", "must be at least 1");
    }
    let s3_only: [(&str, bool); 17] = [
        ("bucket", raw.bucket.is_some()),
        ("region", raw.region.is_some()),
        ("endpoint_url", raw.endpoint_url.is_some()),
        ("force_path_style", raw.force_path_style.is_some()),
        ("role_arn", raw.role_arn.is_some()),
        ("external_id", raw.external_id.is_some()),
        ("role_session_name", raw.role_session_name.is_some()),
        ("sse", raw.sse.is_some()),
        ("kms_key_id", raw.kms_key_id.is_some()),
        ("bucket_key_enabled", raw.bucket_key_enabled.is_some()),
        ("acl", raw.acl.is_some()),
        ("storage_class", raw.storage_class.is_some()),
        ("checksum", raw.checksum.is_some()),
        ("multipart_threshold", raw.multipart_threshold.is_some()),
        ("part_size", raw.part_size.is_some()),
        ("upload_concurrency", raw.upload_concurrency.is_some()),
        ("if_none_match", raw.if_none_match.is_some()),
    ];
    match raw.kind.as_deref().unwrap_or("local") {
        "local" => {
            for (key, _) in s3_only.iter().filter(|(_, set)| *set) {
                p.add(format!("sink.{key}"), "applies to type = \"s3\" only");
            }
            let path = raw.path.unwrap_or_else(|| PathBuf::from("./flowlogs"));
            Some(SinkSettings::Local {
                path,
                max_pending_uploads: max_pending_uploads.max(1),
            })
        }
        "s3" => {
            if raw.path.is_some() {
                p.add("sink.path", "applies to type = \"local\" only");
            }
            let bucket = required("sink.bucket", raw.bucket, p)?;
            if bucket.starts_with("s3://") || bucket.contains('/') {
                p.add(
                    "sink.bucket",
                    format!("'{bucket}' must be a bare bucket name (put folders in output.prefix)"),
                );
            }
            let mut s = S3Settings::new(bucket);
            s.region = raw.region;
            s.checksum = ChecksumMode::default_for(raw.endpoint_url.as_deref());
            s.endpoint_url = raw.endpoint_url;
            s.force_path_style = raw.force_path_style.unwrap_or(s.endpoint_url.is_some());
            s.role_arn = raw.role_arn;
            s.external_id = raw.external_id;
            if let Some(name) = raw.role_session_name {
                s.role_session_name = name;
            }
            if s.external_id.is_some() && s.role_arn.is_none() {
                p.add("sink.external_id", "needs sink.role_arn");
            }
            let bucket_key = raw.bucket_key_enabled.unwrap_or(false);
            s.sse = match raw.sse.as_deref() {
                None | Some("none") => {
                    if raw.kms_key_id.is_some() {
                        p.add("sink.kms_key_id", "needs sse = \"aws:kms\"");
                    }
                    Sse::None
                }
                Some("AES256") => Sse::Aes256,
                Some("aws:kms") => Sse::AwsKms {
                    key_id: raw.kms_key_id,
                    bucket_key,
                },
                Some(other) => {
                    p.add(
                        "sink.sse",
                        format!("'{other}' is not one of none, AES256, aws:kms"),
                    );
                    Sse::None
                }
            };
            match raw.acl.as_deref() {
                None => {}
                Some("none" | "") => s.acl = None,
                Some(acl) => s.acl = Some(acl.to_owned()),
            }
            s.storage_class = raw.storage_class;
            if let Some(mode) = raw
                .checksum
                .and_then(|c| p.check("sink.checksum", c.parse::<ChecksumMode>()))
            {
                s.checksum = mode;
            }
            if let Some(t) = raw.multipart_threshold {
                s.multipart_threshold = t.0;
            }
            if let Some(size) = raw.part_size {
                if size.0 < 5 * 1024 * 1024 {
                    p.add(
                        "sink.part_size",
                        format!("{} is below S3's 5 MiB minimum part size", size.0),
                    );
                }
                s.part_size = size.0;
            }
            if let Some(c) = raw.upload_concurrency {
                if c == 0 {
                    p.add("sink.upload_concurrency", "must be at least 1");
                }
                s.upload_concurrency = c.max(1);
            }
            if let Some(b) = raw.if_none_match {
                s.if_none_match = b;
            }
            if let Some(o) = output {
                s.probe_prefix = if o.prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}/", o.prefix.as_str())
                };
            }
            Some(SinkSettings::S3 {
                settings: Box::new(s),
                max_pending_uploads: max_pending_uploads.max(1),
            })
        }
        other => {
            p.add("sink.type", format!("'{other}' is not one of local, s3"));
            None
        }
    }
}
