#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One conformance suite for every [`ObjectSink`]: [`LocalDirSink`] on a temp dir and
//! [`S3Sink`] on moto (a real S3-compatible server with signature checking, started by
//! `flowlog_tests::s3::S3TestServer`), plus S3-only tests of headers (ACL, SSE, storage
//! class, Content-Type), checksum modes, error classification and retries.
//!
//! The S3 tests need the venv from `scripts/setup-test-env.sh`; without it they fail
//! (never skip).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::types::{Permission, ServerSideEncryption, StorageClass, Type};
use flowlog_publish::sink::local::LocalDirSink;
use flowlog_publish::sink::s3::{ChecksumMode, S3Settings, S3Sink, Sse};
use flowlog_publish::sink::{
    Backoff, ObjectSink, PutOutcome, SinkError, SinkErrorKind, put_with_retry,
};
use flowlog_tests::s3::{CannedHttpServer, CannedResponse, FlakyProxy, S3TestServer};
use tokio_util::sync::CancellationToken;

const MIB: usize = 1024 * 1024;
const SMALL_KEY: &str = "my-prefix/AWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/20/\
                         123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz";
const HIVE_KEY: &str = "my-prefix/AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/\
                        aws-region=us-east-1/year=2018/month=06/day=20/hour=16/\
                        123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.parquet";
const BIG_KEY: &str = "my-prefix/AWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/20/\
                       123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1625Z_0a1b2c3d.log.gz";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How a suite reads back what a sink stored: one object, and every key.
struct ReadBack {
    get: Box<dyn Fn(String) -> BoxFuture<Option<Vec<u8>>> + Send + Sync>,
    keys: Box<dyn Fn() -> BoxFuture<Vec<String>> + Send + Sync>,
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for uploads.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn stage(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The suite every sink passes. `second_put`: what putting an existing key again returns
/// (`AlreadyPresent` with conditional writes, `Stored` for an overwrite).
async fn conformance(sink: &dyn ObjectSink, read_back: &ReadBack, second_put: PutOutcome) {
    let staging = tempfile::tempdir().unwrap();

    // The startup check works and leaves nothing behind.
    sink.check().await.unwrap();
    assert_eq!(
        (read_back.keys)().await,
        Vec::<String>::new(),
        "check() left a probe object"
    );

    // A small object, a Hive-layout key (with '='), and a multipart-size object.
    let small = random_bytes(1000, 1);
    let small_path = stage(staging.path(), "small", &small);
    assert_eq!(
        sink.put_file(SMALL_KEY, &small_path).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        (read_back.get)(SMALL_KEY.to_owned()).await.as_deref(),
        Some(&small[..])
    );

    let hive = random_bytes(70_000, 2);
    let hive_path = stage(staging.path(), "hive", &hive);
    assert_eq!(
        sink.put_file(HIVE_KEY, &hive_path).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        (read_back.get)(HIVE_KEY.to_owned()).await.as_deref(),
        Some(&hive[..])
    );

    let big = random_bytes(12 * MIB, 3);
    let big_path = stage(staging.path(), "big", &big);
    assert_eq!(
        sink.put_file(BIG_KEY, &big_path).await.unwrap(),
        PutOutcome::Stored
    );
    assert!(
        (read_back.get)(BIG_KEY.to_owned()).await == Some(big.clone()),
        "12 MiB object differs"
    );

    // Same key again (a retry after a crash): identical bytes, no second object.
    assert_eq!(
        sink.put_file(SMALL_KEY, &small_path).await.unwrap(),
        second_put
    );
    assert_eq!(sink.put_file(BIG_KEY, &big_path).await.unwrap(), second_put);
    assert_eq!(
        (read_back.get)(SMALL_KEY.to_owned()).await.as_deref(),
        Some(&small[..])
    );
    assert!(
        (read_back.get)(BIG_KEY.to_owned()).await == Some(big),
        "12 MiB object changed"
    );

    // Exactly the three objects: no temp files, no probe.
    let mut expected = vec![
        SMALL_KEY.to_owned(),
        HIVE_KEY.to_owned(),
        BIG_KEY.to_owned(),
    ];
    expected.sort();
    assert_eq!((read_back.keys)().await, expected);

    // The staged files are only read.
    assert!(small_path.exists() && hive_path.exists() && big_path.exists());

    // A missing staged file is a permanent error naming it.
    let missing = staging.path().join("missing");
    let err = sink
        .put_file("my-prefix/x.log.gz", &missing)
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

fn local_read_back(root: PathBuf) -> ReadBack {
    let get_root = root.clone();
    ReadBack {
        get: Box::new(move |key| {
            let path = get_root.join(key);
            Box::pin(async move { std::fs::read(path).ok() })
        }),
        keys: Box::new(move || {
            let root = root.clone();
            Box::pin(async move {
                fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
                    for entry in std::fs::read_dir(dir).unwrap() {
                        let path = entry.unwrap().path();
                        if path.is_dir() {
                            walk(root, &path, out);
                        } else {
                            out.push(
                                path.strip_prefix(root)
                                    .unwrap()
                                    .to_string_lossy()
                                    .into_owned(),
                            );
                        }
                    }
                }
                let mut out = Vec::new();
                walk(&root, &root, &mut out);
                out.sort();
                out
            })
        }),
    }
}

fn s3_read_back(server: &'static S3TestServer, bucket: String) -> ReadBack {
    let get_bucket = bucket.clone();
    ReadBack {
        get: Box::new(move |key| {
            let bucket = get_bucket.clone();
            Box::pin(async move { server.get(&bucket, &key).await.ok() })
        }),
        keys: Box::new(move || {
            let bucket = bucket.clone();
            Box::pin(async move { server.list_keys(&bucket).await.unwrap() })
        }),
    }
}

fn server() -> &'static S3TestServer {
    S3TestServer::shared().expect("the S3 test server is required")
}

/// Settings for moto: explicit keys, path style, multipart from 5 MiB in 5 MiB parts.
fn moto_settings(server: &S3TestServer, bucket: &str) -> S3Settings {
    let mut s = S3Settings::new(bucket);
    s.region = Some(server.region.clone());
    s.endpoint_url = Some(server.endpoint.clone());
    s.force_path_style = true;
    s.static_credentials = Some(server.credentials());
    s.checksum = ChecksumMode::default_for(s.endpoint_url.as_deref());
    s.multipart_threshold = 5 * MIB as u64;
    s.part_size = 5 * MIB as u64;
    s
}

fn fast_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
        permanent_max: Duration::from_millis(500),
    }
}

// ---------------------------------------------------------------- the shared suite

#[tokio::test]
async fn local_dir_sink_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalDirSink::new(dir.path().join("out")).unwrap();
    let read_back = local_read_back(sink.root().to_owned());
    conformance(&sink, &read_back, PutOutcome::Stored).await;
    assert_eq!(sink.kind(), "local");
    assert_eq!(sink.describe(), format!("file://{}", sink.root().display()));
}

#[tokio::test]
async fn s3_sink_conforms_on_moto() {
    let server = server();
    let bucket = server
        .unique_bucket("s3_sink_conforms_on_moto")
        .await
        .unwrap();
    let sink = S3Sink::connect(moto_settings(server, &bucket))
        .await
        .unwrap();
    conformance(
        &sink,
        &s3_read_back(server, bucket.clone()),
        PutOutcome::AlreadyPresent,
    )
    .await;
    assert_eq!(sink.kind(), "s3");
    assert_eq!(sink.describe(), format!("s3://{bucket}"));
}

#[tokio::test]
async fn s3_sink_without_if_none_match_overwrites() {
    let server = server();
    let bucket = server
        .unique_bucket("s3_without_if_none_match")
        .await
        .unwrap();
    let mut settings = moto_settings(server, &bucket);
    settings.if_none_match = false;
    let sink = S3Sink::connect(settings).await.unwrap();
    conformance(&sink, &s3_read_back(server, bucket), PutOutcome::Stored).await;
}

// ---------------------------------------------------------------- local only

#[tokio::test]
async fn local_sink_refuses_unsafe_keys() {
    let dir = tempfile::tempdir().unwrap();
    let sink = LocalDirSink::new(dir.path().join("out")).unwrap();
    let staged = stage(dir.path(), "staged", b"x");
    for key in [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../b",
        "./a",
        "a//b",
        "a/",
        "a\\b",
        "a/./b",
        "..",
    ] {
        let err = sink.put_file(key, &staged).await.unwrap_err();
        assert_eq!(err.kind(), SinkErrorKind::InvalidKey, "{key:?}: {err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().starts_with("refusing key"), "{err}");
    }
    let read_back = local_read_back(sink.root().to_owned());
    assert_eq!((read_back.keys)().await, Vec::<String>::new());
    assert!(!dir.path().join("escape").exists());
}

// ---------------------------------------------------------------- S3 headers

#[tokio::test]
async fn s3_objects_carry_acl_sse_storage_class_and_content_type() {
    let server = server();
    let staging = tempfile::tempdir().unwrap();
    let small = stage(staging.path(), "small", &random_bytes(2000, 4));
    let big = stage(staging.path(), "big", &random_bytes(11 * MIB, 5));

    // Defaults: bucket-owner-full-control, no SSE header.
    let bucket = server.unique_bucket("s3_headers_default").await.unwrap();
    let sink = S3Sink::connect(moto_settings(server, &bucket))
        .await
        .unwrap();
    for (key, path) in [
        ("a/x.log.gz", &small),
        ("a/big.log.gz", &big),
        ("a/x.log.parquet", &small),
        ("a/x.bin", &small),
    ] {
        sink.put_file(key, path).await.unwrap();
        let head = server.head(&bucket, key).await.unwrap();
        let expected = match key.rsplit('.').next() {
            Some("gz") => "application/gzip",
            Some("parquet") => "application/vnd.apache.parquet",
            _ => "application/octet-stream",
        };
        assert_eq!(head.content_type(), Some(expected), "{key}");
        assert_eq!(head.content_encoding(), None, "{key}: no Content-Encoding");
        let acl = server.object_acl(&bucket, key).await.unwrap();
        let owner_id = acl.owner().and_then(|o| o.id()).unwrap().to_owned();
        assert!(
            acl.grants()
                .iter()
                .any(|g| g.permission() == Some(&Permission::FullControl)
                    && g.grantee().and_then(|x| x.id()) == Some(owner_id.as_str())),
            "{key}: {acl:?}"
        );
    }

    // A canned ACL that differs from the default proves the header is sent at all
    // (moto models bucket-owner-full-control as the owner's FULL_CONTROL, like private).
    let bucket = server.unique_bucket("s3_headers_acl").await.unwrap();
    let mut settings = moto_settings(server, &bucket);
    settings.acl = Some("public-read".to_owned());
    let sink = S3Sink::connect(settings).await.unwrap();
    for (key, path) in [("a/x.log.gz", &small), ("a/big.log.gz", &big)] {
        sink.put_file(key, path).await.unwrap();
        let acl = server.object_acl(&bucket, key).await.unwrap();
        assert!(
            acl.grants()
                .iter()
                .any(|g| g.permission() == Some(&Permission::Read)
                    && g.grantee().map(|x| x.r#type()) == Some(&Type::Group)
                    && g.grantee()
                        .and_then(|x| x.uri())
                        .is_some_and(|u| u.ends_with("/global/AllUsers"))),
            "{key}: {acl:?}"
        );
    }

    // SSE-S3 and a storage class, on PutObject and on multipart.
    let bucket = server.unique_bucket("s3_headers_aes").await.unwrap();
    let mut settings = moto_settings(server, &bucket);
    settings.sse = Sse::Aes256;
    settings.storage_class = Some("STANDARD_IA".to_owned());
    let sink = S3Sink::connect(settings).await.unwrap();
    for (key, path) in [("a/x.log.gz", &small), ("a/big.log.gz", &big)] {
        sink.put_file(key, path).await.unwrap();
        let head = server.head(&bucket, key).await.unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&ServerSideEncryption::Aes256),
            "{key}"
        );
        assert_eq!(
            head.storage_class(),
            Some(&StorageClass::StandardIa),
            "{key}"
        );
    }

    // SSE-KMS with a key id and a bucket key (moto accepts any key id).
    let bucket = server.unique_bucket("s3_headers_kms").await.unwrap();
    let mut settings = moto_settings(server, &bucket);
    let key_id = "arn:aws:kms:us-east-1:123456789012:key/0f1e2d3c-aaaa-bbbb-cccc-0123456789ab";
    settings.sse = Sse::AwsKms {
        key_id: Some(key_id.to_owned()),
        bucket_key: true,
    };
    let sink = S3Sink::connect(settings).await.unwrap();
    sink.check().await.unwrap();
    for (key, path) in [("a/x.log.gz", &small), ("a/big.log.gz", &big)] {
        sink.put_file(key, path).await.unwrap();
        let head = server.head(&bucket, key).await.unwrap();
        assert_eq!(
            head.server_side_encryption(),
            Some(&ServerSideEncryption::AwsKms),
            "{key}"
        );
        assert_eq!(head.ssekms_key_id(), Some(key_id), "{key}");
        if key == "a/x.log.gz" {
            // moto 5.2.5 ignores the bucket-key header on CreateMultipartUpload (it
            // keeps it on PutObject only), so only the single-request object shows it.
            assert_eq!(head.bucket_key_enabled(), Some(true), "{key}");
        }
    }
}

#[tokio::test]
async fn s3_checksum_modes_round_trip() {
    let server = server();
    let staging = tempfile::tempdir().unwrap();
    let small = random_bytes(3000, 6);
    let big = random_bytes(12 * MIB, 7);
    let small_path = stage(staging.path(), "small", &small);
    let big_path = stage(staging.path(), "big", &big);
    for mode in [
        ChecksumMode::WhenRequired,
        ChecksumMode::Crc32,
        ChecksumMode::Crc32c,
        ChecksumMode::Md5,
    ] {
        let bucket = server
            .unique_bucket(&format!("checksum_{mode}"))
            .await
            .unwrap();
        let mut settings = moto_settings(server, &bucket);
        settings.checksum = mode;
        let sink = S3Sink::connect(settings).await.unwrap();
        sink.check().await.unwrap_or_else(|e| panic!("{mode}: {e}"));
        sink.put_file("k/small.log.gz", &small_path)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        sink.put_file("k/big.log.gz", &big_path)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(
            server.get(&bucket, "k/small.log.gz").await.unwrap(),
            small,
            "{mode}"
        );
        assert!(
            server.get(&bucket, "k/big.log.gz").await.unwrap() == big,
            "{mode}: 12 MiB object differs"
        );
        assert_eq!(
            server.list_keys(&bucket).await.unwrap(),
            vec!["k/big.log.gz", "k/small.log.gz"],
            "{mode}"
        );

        // The checksum the store recorded for the single-request object shows what was sent.
        let head = server
            .client()
            .await
            .head_object()
            .bucket(&bucket)
            .key("k/small.log.gz")
            .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
            .send()
            .await
            .unwrap();
        let sent = (
            head.checksum_crc32().is_some(),
            head.checksum_crc32_c().is_some(),
        );
        let expected = match mode {
            ChecksumMode::Crc32 => (true, false),
            ChecksumMode::Crc32c => (false, true),
            _ => (false, false),
        };
        assert_eq!(
            sent, expected,
            "{mode}: (crc32, crc32c) recorded by the store"
        );
    }
}

#[tokio::test]
async fn s3_md5_mode_satisfies_object_lock_buckets() {
    use aws_sdk_s3::types::{
        DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
        ObjectLockRule,
    };
    let server = server();
    let client = server.client().await;
    let bucket = format!("t-object-lock-{}", std::process::id());
    client
        .create_bucket()
        .bucket(&bucket)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap();
    client
        .put_object_lock_configuration()
        .bucket(&bucket)
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(
                    ObjectLockRule::builder()
                        .default_retention(
                            DefaultRetention::builder()
                                .mode(ObjectLockRetentionMode::Governance)
                                .days(1)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let staging = tempfile::tempdir().unwrap();
    let small = stage(staging.path(), "small", &random_bytes(4000, 11));

    // Without Content-MD5 (or an SDK checksum) an Object Lock bucket refuses the put.
    let sink = S3Sink::connect(moto_settings(server, &bucket))
        .await
        .unwrap();
    let err = sink.put_file("k/a.log.gz", &small).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains("Content-MD5"), "{err}");

    let mut settings = moto_settings(server, &bucket);
    settings.checksum = ChecksumMode::Md5;
    let sink = S3Sink::connect(settings).await.unwrap();
    assert_eq!(
        sink.put_file("k/a.log.gz", &small).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        server.get(&bucket, "k/a.log.gz").await.unwrap(),
        random_bytes(4000, 11)
    );
}

#[tokio::test]
async fn s3_key_held_by_a_different_object_is_a_permanent_conflict() {
    let server = server();
    let bucket = server.unique_bucket("s3_key_conflict").await.unwrap();
    let sink = S3Sink::connect(moto_settings(server, &bucket))
        .await
        .unwrap();
    let staging = tempfile::tempdir().unwrap();
    let first = stage(staging.path(), "first", &random_bytes(100, 8));
    let other = stage(staging.path(), "other", &random_bytes(200, 9));
    sink.put_file("k.log.gz", &first).await.unwrap();
    let err = sink.put_file("k.log.gz", &other).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::KeyConflict, "{err}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("s3://{bucket}/k.log.gz")) && msg.contains("different object"),
        "{msg}"
    );
    assert_eq!(
        server.get(&bucket, "k.log.gz").await.unwrap(),
        random_bytes(100, 8)
    );

    // The same through multipart: the conditional CompleteMultipartUpload is refused,
    // the error is permanent, and the refused upload is aborted (none left over).
    let big_first = stage(staging.path(), "big_first", &random_bytes(11 * MIB, 12));
    let big_other = stage(staging.path(), "big_other", &random_bytes(12 * MIB, 13));
    sink.put_file("big.log.gz", &big_first).await.unwrap();
    let err = sink.put_file("big.log.gz", &big_other).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::KeyConflict, "{err}");
    assert!(server.get(&bucket, "big.log.gz").await.unwrap() == random_bytes(11 * MIB, 12));
    let uploads = server
        .client()
        .await
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
}

#[tokio::test]
async fn s3_same_size_different_content_at_the_key_is_a_conflict_not_a_delivery() {
    let server = server();
    let bucket = server.unique_bucket("s3_same_size_conflict").await.unwrap();
    let sink = S3Sink::connect(moto_settings(server, &bucket))
        .await
        .unwrap();
    let staging = tempfile::tempdir().unwrap();

    // Another writer's object of the same size already holds the key.
    let theirs = random_bytes(4000, 21);
    server
        .client()
        .await
        .put_object()
        .bucket(&bucket)
        .key("k.log.gz")
        .body(theirs.clone().into())
        .send()
        .await
        .unwrap();
    let ours = stage(staging.path(), "ours", &random_bytes(4000, 22));
    let err = sink.put_file("k.log.gz", &ours).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::KeyConflict, "{err}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("s3://{bucket}/k.log.gz"))
            && msg.contains("different object of the same size")
            && msg.contains("ETag"),
        "{msg}"
    );
    assert_eq!(server.get(&bucket, "k.log.gz").await.unwrap(), theirs);
    // The same bytes are a delivery made before.
    let same = stage(staging.path(), "same", &theirs);
    assert_eq!(
        sink.put_file("k.log.gz", &same).await.unwrap(),
        PutOutcome::AlreadyPresent
    );

    // Multipart: the composite ETag (MD5 of the part MD5s) is compared.
    let big = random_bytes(11 * MIB, 23);
    let big_first = stage(staging.path(), "big_first", &big);
    let mut altered = big.clone();
    altered[7 * MIB] ^= 0xff;
    let big_other = stage(staging.path(), "big_other", &altered);
    assert_eq!(
        sink.put_file("big.log.gz", &big_first).await.unwrap(),
        PutOutcome::Stored
    );
    assert_eq!(
        sink.put_file("big.log.gz", &big_first).await.unwrap(),
        PutOutcome::AlreadyPresent
    );
    let err = sink.put_file("big.log.gz", &big_other).await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::KeyConflict, "{err}");
    assert!(err.to_string().contains("big.log.gz"), "{err}");
    assert!(server.get(&bucket, "big.log.gz").await.unwrap() == big);
    let uploads = server
        .client()
        .await
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
}

#[tokio::test]
async fn s3_probe_goes_under_the_prefix_and_is_removed() {
    let server = server();
    let bucket = server.unique_bucket("s3_probe_prefix").await.unwrap();
    let mut settings = moto_settings(server, &bucket);
    settings.probe_prefix = "my/prefix/".to_owned();
    let sink = S3Sink::connect(settings).await.unwrap();
    sink.check().await.unwrap();
    sink.check().await.unwrap();
    assert_eq!(
        server.list_keys(&bucket).await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn s3_region_is_discovered_when_not_configured() {
    let server = server();
    let client = server.client().await;
    let bucket = format!("t-region-discovery-{}", std::process::id());
    client
        .create_bucket()
        .bucket(&bucket)
        .create_bucket_configuration(
            aws_sdk_s3::types::CreateBucketConfiguration::builder()
                .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::EuWest1)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let mut settings = moto_settings(server, &bucket);
    settings.region = None;
    let sink = S3Sink::connect(settings).await.unwrap();
    assert_eq!(sink.region(), "eu-west-1");
    sink.check().await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    sink.put_file("k.log.gz", &stage(staging.path(), "f", b"abc"))
        .await
        .unwrap();
    assert_eq!(server.get(&bucket, "k.log.gz").await.unwrap(), b"abc");
}

// ---------------------------------------------------------------- S3 errors

#[tokio::test]
async fn s3_wrong_secret_fails_check_with_a_credentials_error() {
    let server = server();
    let bucket = server.unique_bucket("s3_wrong_secret").await.unwrap();
    let mut settings = moto_settings(server, &bucket);
    settings.static_credentials = Some(aws_sdk_s3::config::Credentials::new(
        &server.access_key_id,
        format!("{}x", server.secret_access_key),
        None,
        None,
        "wrong",
    ));
    let sink = S3Sink::connect(settings)
        .await
        .expect("connect does not talk to the store");
    let err = sink.check().await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Credentials, "{err}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("check s3://{bucket}/.flowlog-probe/")),
        "{msg}"
    );
    assert!(
        msg.contains("signature") && msg.contains("secret access key"),
        "{msg}"
    );
    assert!(msg.contains("SignatureDoesNotMatch"), "{msg}");

    // Same for an access key id the store does not know.
    let mut settings = moto_settings(server, &bucket);
    settings.static_credentials = Some(aws_sdk_s3::config::Credentials::new(
        "AKIAUNKNOWNKEY000000",
        "secret",
        None,
        None,
        "unknown",
    ));
    let err = S3Sink::connect(settings)
        .await
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Credentials, "{err}");
    assert!(err.to_string().contains("access key id"), "{err}");
    assert!(server.list_keys(&bucket).await.unwrap().is_empty());
}

#[tokio::test]
async fn s3_missing_bucket_fails_check_naming_the_bucket() {
    let server = server();
    let bucket = format!("t-no-such-bucket-{}", std::process::id());
    let sink = S3Sink::connect(moto_settings(server, &bucket))
        .await
        .unwrap();
    let err = sink.check().await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::NoSuchBucket, "{err}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("s3://{bucket}/")) && msg.contains("no such bucket"),
        "{msg}"
    );
}

#[tokio::test]
async fn s3_unreachable_endpoint_is_retryable() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = server();
    let mut settings = moto_settings(server, "unreachable-bucket");
    settings.endpoint_url = Some(format!("http://127.0.0.1:{port}"));
    let sink = S3Sink::connect(settings).await.unwrap();
    let err = sink.check().await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Unreachable, "{err}");
    assert!(err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("cannot reach http://127.0.0.1:{port}")),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("connection refused"), "{msg}");

    let staging = tempfile::tempdir().unwrap();
    let err = sink
        .put_file("k.log.gz", &stage(staging.path(), "f", b"x"))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn s3_store_without_conditional_writes_says_to_turn_if_none_match_off() {
    let fake = CannedHttpServer::start(CannedResponse::s3_error(
        501,
        "NotImplemented",
        "A header you provided implies functionality that is not implemented",
    ))
    .await
    .unwrap();
    let server = server();
    let mut settings = moto_settings(server, "bucket");
    settings.endpoint_url = Some(fake.endpoint());
    let sink = S3Sink::connect(settings).await.unwrap();
    let err = sink.check().await.unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Unsupported, "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("set if_none_match = false"),
        "{err}"
    );
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.to_lowercase().contains("if-none-match: *"))
    );
}

#[tokio::test]
async fn s3_throttling_is_retryable_and_a_wrong_region_is_named() {
    let server = server();
    let slow = CannedHttpServer::start(CannedResponse::s3_error(
        503,
        "SlowDown",
        "Please reduce your request rate.",
    ))
    .await
    .unwrap();
    let mut settings = moto_settings(server, "bucket");
    settings.endpoint_url = Some(slow.endpoint());
    let err = S3Sink::connect(settings)
        .await
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::Throttled, "{err}");
    assert!(err.is_retryable());

    let moved = CannedHttpServer::start(
        CannedResponse::s3_error(
            301,
            "PermanentRedirect",
            "The bucket you are attempting to access must be addressed using the specified endpoint.",
        )
        .with_header("x-amz-bucket-region", "eu-west-1"),
    )
    .await
    .unwrap();
    let mut settings = moto_settings(server, "bucket");
    settings.endpoint_url = Some(moved.endpoint());
    let err = S3Sink::connect(settings)
        .await
        .unwrap()
        .check()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SinkErrorKind::WrongRegion, "{err}");
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains("the bucket is in eu-west-1, not us-east-1"),
        "{err}"
    );
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn put_with_retry_succeeds_once_the_endpoint_comes_back() {
    let server = server();
    let bucket = server.unique_bucket("put_with_retry_flaky").await.unwrap();
    let proxy = FlakyProxy::start(server.addr().unwrap(), false)
        .await
        .unwrap();
    let mut settings = moto_settings(server, &bucket);
    settings.endpoint_url = Some(proxy.endpoint());
    let sink = Arc::new(S3Sink::connect(settings).await.unwrap());

    // While down, the startup check fails with a retryable error.
    let err = sink.check().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");

    let staging = tempfile::tempdir().unwrap();
    let data = random_bytes(6 * MIB, 10);
    let path = stage(staging.path(), "f", &data);
    let (failures_tx, mut failures) = tokio::sync::mpsc::unbounded_channel::<(bool, String)>();
    let cancel = CancellationToken::new();
    let upload = {
        let (sink, path, cancel) = (Arc::clone(&sink), path.clone(), cancel.clone());
        tokio::spawn(async move {
            let observe = move |e: &SinkError| {
                let _ = failures_tx.send((e.is_retryable(), e.to_string()));
            };
            put_with_retry(
                &*sink,
                "k/f.log.gz",
                &path,
                &fast_backoff(),
                &cancel,
                &observe,
            )
            .await
        })
    };
    for _ in 0..2 {
        let (retryable, msg) = tokio::time::timeout(Duration::from_secs(60), failures.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(retryable, "{msg}");
    }
    assert_eq!(proxy.accepted(), 0);
    proxy.set_up(true).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(120), upload)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome, Some(PutOutcome::Stored));
    assert!(proxy.accepted() > 0);
    assert!(server.get(&bucket, "k/f.log.gz").await.unwrap() == data);
    sink.check().await.unwrap();
}

#[tokio::test]
async fn put_with_retry_returns_none_when_cancelled() {
    let server = server();
    let proxy = FlakyProxy::start(server.addr().unwrap(), false)
        .await
        .unwrap();
    let mut settings = moto_settings(server, "never");
    settings.endpoint_url = Some(proxy.endpoint());
    let sink = S3Sink::connect(settings).await.unwrap();
    let staging = tempfile::tempdir().unwrap();
    let path = stage(staging.path(), "f", b"x");
    let cancel = CancellationToken::new();
    let observe = |_: &SinkError| cancel.cancel();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        put_with_retry(&sink, "k", &path, &Backoff::default(), &cancel, &observe),
    )
    .await
    .unwrap();
    assert_eq!(outcome, None);
}
