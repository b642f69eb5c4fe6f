//! `flowlog-aggregator import` to a real S3-compatible server (moto, signature checking on)
//! on 127.0.0.1: exact keys, ACL and SSE stored, a wrong secret refused at startup, and an
//! outage during the upload that loses and doubles nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use flowlog_formats::LogFormat;
use flowlog_formats::key::{KeyLayout, KeyPrefix};
use flowlog_tests::s3::{FlakyProxy, S3TestServer};

const A: &str = "123456789012";
const B: &str = "210987654321";

fn s3_config(
    dir: &Path,
    bucket: &str,
    endpoint: &str,
    extra_sink: &str,
    extra_output: &str,
) -> std::path::PathBuf {
    let config = dir.join("s3.toml");
    std::fs::write(
        &config,
        format!(
            "[flow_log]\nid = \"fl-0123456789abcdef0\"\naccount_id = \"{A}\"\nregion = \"us-east-1\"\n\n[output]\n{extra_output}\n\n\
             [sink]\ntype = \"s3\"\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n{extra_sink}\n\n\
             [state]\ndir = \"{}\"\nwriter_id = \"test-writer\"\n\n[service]\nlog_level = \"warn\"\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    config
}

fn import(config: &Path, input: &Path, key_id: &str, secret: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["import", "--config"])
        .arg(config)
        .arg(input)
        .env("AWS_ACCESS_KEY_ID", key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Reads every object of the bucket back and counts its records by line.
fn bucket_lines(
    rt: &tokio::runtime::Runtime,
    s3: &S3TestServer,
    bucket: &str,
    dir: &Path,
) -> std::collections::BTreeMap<String, usize> {
    let download = dir.join("download");
    for key in rt.block_on(s3.list_keys(bucket)).unwrap() {
        let path = download.join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, rt.block_on(s3.get(bucket, &key)).unwrap()).unwrap();
    }
    published_lines(&download, &LogFormat::aws_default())
}

#[test]
fn keys_acl_and_encryption_are_exact_in_the_bucket() {
    let rt = rt();
    let s3 = S3TestServer::start().unwrap();
    let bucket = rt.block_on(s3.unique_bucket("keys-acl-sse")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = s3_config(
        dir.path(),
        &bucket,
        &s3.endpoint,
        "sse = \"AES256\"",
        "layout = \"hive\"\nprefix = \"team/flows\"",
    );
    let recs = records(2_000, 2, &[A, B], false, 21);
    let input = dir.path().join("in.log");
    write_text(&input, &LogFormat::aws_default(), &recs);
    let out = import(&config, &input, &s3.access_key_id, &s3.secret_access_key)
        .output()
        .unwrap();
    assert_ok(&out);

    let keys = rt.block_on(s3.list_keys(&bucket)).unwrap();
    assert_eq!(
        keys,
        expected_keys(
            &recs,
            KeyLayout::Hive,
            &KeyPrefix::parse("team/flows").unwrap(),
            "us-east-1"
        ),
        "no probe object may remain"
    );
    assert!(keys[0].starts_with("team/flows/AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=us-east-1/year=2024/month=01/day=01/"), "{keys:?}");
    for key in &keys {
        let head = rt.block_on(s3.head(&bucket, key)).unwrap();
        assert_eq!(
            head.server_side_encryption().map(|s| s.as_str()),
            Some("AES256"),
            "{key}"
        );
        assert_eq!(head.content_type(), Some("application/gzip"), "{key}");
        assert_eq!(head.content_encoding(), None, "{key}");
        let acl = rt.block_on(s3.object_acl(&bucket, key)).unwrap();
        let full_control = acl
            .grants()
            .iter()
            .any(|g| g.permission().map(|p| p.as_str()) == Some("FULL_CONTROL"));
        assert!(full_control, "{key}: {acl:?}");
    }
    assert_eq!(
        bucket_lines(&rt, &s3, &bucket, dir.path()),
        expected_lines(&recs, &LogFormat::aws_default())
    );
}

#[test]
fn a_wrong_secret_is_refused_at_startup_with_a_clear_error() {
    let rt = rt();
    let s3 = S3TestServer::start().unwrap();
    let bucket = rt.block_on(s3.unique_bucket("wrong-secret")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = s3_config(dir.path(), &bucket, &s3.endpoint, "", "");
    let input = dir.path().join("in.log");
    write_text(
        &input,
        &LogFormat::aws_default(),
        &records(10, 1, &[A], false, 1),
    );
    let out: Output = import(&config, &input, &s3.access_key_id, "not-the-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("startup check of s3://") && err.contains(&bucket),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("signature") || err.to_lowercase().contains("credentials"),
        "{err}"
    );
    assert!(rt.block_on(s3.list_keys(&bucket)).unwrap().is_empty());

    let missing = s3_config(dir.path(), "no-such-bucket-here", &s3.endpoint, "", "");
    let out = import(&missing, &input, &s3.access_key_id, &s3.secret_access_key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-bucket-here") && err.to_lowercase().contains("bucket"),
        "{err}"
    );
}

#[test]
fn s3_down_for_a_while_then_back_loses_and_doubles_nothing() {
    let rt = rt();
    let s3 = S3TestServer::start().unwrap();
    let bucket = rt.block_on(s3.unique_bucket("outage")).unwrap();
    let proxy = rt
        .block_on(FlakyProxy::start(s3.addr().unwrap(), true))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = s3_config(
        dir.path(),
        &bucket,
        &proxy.endpoint(),
        "",
        "max_file_bytes = 65536",
    );
    let recs = records(60_000, 6, &[A, B], true, 5);
    let input = dir.path().join("in.log");
    write_text(&input, &LogFormat::aws_default(), &recs);

    let child = import(&config, &input, &s3.access_key_id, &s3.secret_access_key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the startup check through (the pipeline creates its WAL only after it), then
    // take S3 away for a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("state/wal").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    rt.block_on(proxy.set_up(false)).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    rt.block_on(proxy.set_up(true)).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("retry"),
        "uploads should have been retried during the outage: {err}"
    );
    let keys = rt.block_on(s3.list_keys(&bucket)).unwrap();
    assert!(keys.len() > 10, "{keys:?}");
    assert_eq!(
        bucket_lines(&rt, &s3, &bucket, dir.path()),
        expected_lines(&recs, &LogFormat::aws_default())
    );
}
