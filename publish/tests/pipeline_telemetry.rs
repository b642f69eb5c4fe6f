//! The pipeline in-process: its metrics move as records flow, and a sink that refuses
//! permanently turns `/healthz` unhealthy while the data stays staged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flowlog_publish::pipeline::Pipeline;
use flowlog_publish::pipeline::batch::WalBatch;
use flowlog_publish::settings;
use flowlog_publish::sink::local::LocalDirSink;
use flowlog_publish::sink::{ObjectSink, PutOutcome, SinkError};
use flowlog_publish::telemetry::{Health, Metrics};
use flowlog_tests::records::{A_ACCOUNT, records};
use tokio_util::sync::CancellationToken;

fn settings(dir: &Path) -> settings::Settings {
    let text = format!(
        "[flow_log]\nid = \"fl-1\"\naccount_id = \"{A_ACCOUNT}\"\nregion = \"us-east-1\"\n[sink]\npath = \"{}\"\n[state]\ndir = \"{}\"\n",
        dir.join("out").display(),
        dir.join("state").display()
    );
    settings::parse(&text).unwrap()
}

fn batch(n: usize, windows: u64) -> WalBatch {
    WalBatch {
        flow_log_id: "fl-1".into(),
        account_id: A_ACCOUNT.into(),
        region: "us-east-1".into(),
        import: None,
        records: records(n, windows, &[A_ACCOUNT], false, 3),
    }
}

fn metric(metrics: &Metrics, line_start: &str) -> String {
    let text = metrics.encode();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .unwrap_or_else(|| panic!("{line_start} missing in\n{text}"))
        .to_owned()
}

#[test]
fn metrics_follow_records_files_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sink: Arc<dyn ObjectSink> = Arc::new(LocalDirSink::new(dir.path().join("out")).unwrap());
    let metrics = Metrics::new();
    let health = Health::default();
    let cancel = CancellationToken::new();
    let pipeline = Pipeline::start(
        &settings,
        sink,
        Arc::clone(&metrics),
        health.clone(),
        rt.handle().clone(),
        cancel.clone(),
    )
    .unwrap();
    pipeline.submit_acked(batch(1_000, 2)).unwrap();
    pipeline.seal_all().unwrap();
    assert!(pipeline.wait_published(Duration::from_secs(30)).unwrap());
    let stats = pipeline.stop().unwrap();
    assert_eq!(
        (
            stats.records_in,
            stats.files_published,
            stats.records_published
        ),
        (1_000, 2, 1_000)
    );
    assert_eq!(
        metric(&metrics, "flowlog_records_in_total"),
        "flowlog_records_in_total 1000"
    );
    assert_eq!(
        metric(&metrics, "flowlog_files_published_total{sink=\"local\"}"),
        "flowlog_files_published_total{sink=\"local\"} 2"
    );
    assert_eq!(
        metric(&metrics, "flowlog_records_published_total{sink=\"local\"}"),
        "flowlog_records_published_total{sink=\"local\"} 1000"
    );
    assert_eq!(
        metric(&metrics, "flowlog_bytes_published_total{sink=\"local\"}"),
        format!(
            "flowlog_bytes_published_total{{sink=\"local\"}} {}",
            stats.bytes_published
        )
    );
    assert_eq!(
        metric(&metrics, "flowlog_sealed_files_total{reason=\"shutdown\"}"),
        "flowlog_sealed_files_total{reason=\"shutdown\"} 2"
    );
    assert!(health.is_healthy());
    cancel.cancel();
}

/// A destination that refuses every object permanently (e.g. a bucket policy that denies
/// the writer): the outermost edge, faked.
#[derive(Debug)]
struct RefusingSink;

#[async_trait::async_trait]
impl ObjectSink for RefusingSink {
    async fn put_file(&self, key: &str, _path: &Path) -> Result<PutOutcome, SinkError> {
        Err(SinkError::InvalidKey {
            key: key.to_owned(),
            reason: "refused by policy",
        })
    }
    async fn check(&self) -> Result<(), SinkError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "refusing://".into()
    }
    fn kind(&self) -> &'static str {
        "local"
    }
}

#[test]
fn a_permanent_sink_error_makes_health_fail_and_keeps_the_data_staged() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = Metrics::new();
    let health = Health::default();
    let cancel = CancellationToken::new();
    let pipeline = Pipeline::start(
        &settings,
        Arc::new(RefusingSink),
        Arc::clone(&metrics),
        health.clone(),
        rt.handle().clone(),
        cancel.clone(),
    )
    .unwrap();
    pipeline.submit_acked(batch(100, 1)).unwrap();
    pipeline.seal_all().unwrap();
    assert!(
        !pipeline.wait_published(Duration::from_secs(2)).unwrap(),
        "nothing can be published"
    );
    assert!(!health.is_healthy());
    assert!(
        health
            .reasons()
            .iter()
            .any(|(c, r)| *c == "sink" && r.contains("refused by policy")),
        "{:?}",
        health.reasons()
    );
    assert_eq!(
        metric(
            &metrics,
            "flowlog_upload_retries_total{sink=\"local\",class=\"permanent\"}"
        ),
        "flowlog_upload_retries_total{sink=\"local\",class=\"permanent\"} 1"
    );
    cancel.cancel();
    pipeline.stop().unwrap();
    let staged = std::fs::read_dir(dir.path().join("state/staging/sealed"))
        .unwrap()
        .count();
    assert_eq!(staged, 1, "the sealed file stays staged for the next start");
}
