//! Shutdown keeps its word: SIGTERM during `flowlog-aggregator import` or `serve`, with
//! thousands of streams waiting (2 accounts × 1,000 five-minute windows, 20,000 records)
//! and a slow S3 (moto behind a proxy that adds 300 ms to every request), ends the
//! process within `[service] shutdown_grace`; whatever was not sealed or uploaded stays
//! in the WAL / staging and is published at the next start (straight to moto), every
//! record exactly once.
//!
//! The two tests take turns (a lock), so that neither times the other's load on a small
//! machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flowlog_formats::text::{TextWriter, encode_line};
use flowlog_formats::{Action, FlowRecord, LogFormat, LogStatus};
use flowlog_tests::pki::TestPki;
use flowlog_tests::s3::S3TestServer;
use flowlog_tests::slow_proxy::SlowProxy;
use flowlog_transport::pb::ingest_client::IngestClient;
use flowlog_transport::pb::{PushReply, PushRequest};
use flowlog_transport::{AUTHORIZATION, encode_batch};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// `[service] shutdown_grace` of the interrupted runs.
const GRACE: Duration = Duration::from_secs(5);
/// What the exit may take beyond the grace: process exit, runtime teardown, a loaded
/// machine.
const SLACK: Duration = Duration::from_secs(3);
/// Latency the proxy adds to every request to S3.
const LATENCY: Duration = Duration::from_millis(300);

/// Accounts × 5-minute windows = streams of the backlog.
const ACCOUNTS: [&str; 2] = ["123456789012", "210987654321"];
const WINDOWS: u64 = 1_000;
/// Records per stream.
const PER_STREAM: u64 = 10;
/// 2024-01-01T00:00:00Z.
const T0: u64 = 1_704_067_200;

/// The agent of the serve test and its token.
const AGENT: &str = "agent-a";
const TOKEN: &str = "tok-a-0123456789abcdef";

fn aggregator_bin() -> PathBuf {
    flowlog_tests::binaries()
        .expect("building the binaries")
        .join("flowlog-aggregator")
}

/// Serializes the tests of this file.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `PER_STREAM` records in each of `ACCOUNTS.len() × WINDOWS` streams, in time order
/// (the accounts interleaved); every record is distinct (`bytes` is its index).
fn backlog_records() -> Vec<FlowRecord> {
    let mut out = Vec::new();
    for w in 0..WINDOWS {
        for j in 0..PER_STREAM {
            for account in ACCOUNTS {
                let i = out.len() as u64;
                let end = T0 + w * 300 + 10 + j * 20;
                out.push(FlowRecord {
                    account_id: Some(account.into()),
                    interface_id: Some(format!("eni-{:017x}", i % 7).into()),
                    srcaddr: Some(
                        Ipv4Addr::new(10, 0, (i / 250 % 250) as u8, (i % 250) as u8).into(),
                    ),
                    dstaddr: Some(Ipv4Addr::new(198, 51, 100, (i % 200) as u8).into()),
                    srcport: Some(443),
                    dstport: Some(32_768 + (i % 20_000) as u16),
                    protocol: Some(6),
                    packets: Some(1 + i % 10),
                    bytes: Some(1_000_000 + i),
                    start: Some(end - 5),
                    end: Some(end),
                    action: Some(if i.is_multiple_of(13) {
                        Action::Reject
                    } else {
                        Action::Accept
                    }),
                    log_status: Some(LogStatus::Ok),
                    ..FlowRecord::default()
                });
            }
        }
    }
    out
}

fn streams() -> usize {
    ACCOUNTS.len() * WINDOWS as usize
}

/// Writes records as a plain text file in the AWS default format (with its header).
fn write_input(path: &Path, records: &[FlowRecord]) {
    let file = std::io::BufWriter::new(fs::File::create(path).unwrap());
    let mut w = TextWriter::new(file, LogFormat::aws_default()).unwrap();
    for r in records {
        w.write_record(r).unwrap();
    }
    std::io::Write::flush(&mut w.finish().unwrap()).unwrap();
}

/// Records as counted lines of the AWS default format.
fn counted(records: &[FlowRecord]) -> BTreeMap<String, usize> {
    let format = LogFormat::aws_default();
    let mut out = BTreeMap::new();
    for r in records {
        let mut line = Vec::new();
        encode_line(&mut line, &format, format.version(), r);
        *out.entry(String::from_utf8(line).unwrap()).or_insert(0) += 1;
    }
    out
}

/// Asserts that `got` holds every record of `want` exactly once and nothing else; on a
/// mismatch says how (counts, first missing, first doubled or unexpected).
fn assert_exactly_once(got: &[FlowRecord], want: &[FlowRecord], what: &str) {
    let (g, w) = (counted(got), counted(want));
    if g == w {
        return;
    }
    let missing: Vec<_> = w
        .iter()
        .filter(|(l, n)| g.get(*l).copied().unwrap_or(0) < **n)
        .map(|(l, _)| l.trim_end())
        .collect();
    let extra: Vec<_> = g
        .iter()
        .filter(|(l, n)| w.get(*l).copied().unwrap_or(0) < **n)
        .map(|(l, n)| (l.trim_end(), *n))
        .collect();
    panic!(
        "{what}: the bucket holds {} records, {} expected; {} missing (first 3: {:?}); {} doubled or unexpected (first 3: {:?})",
        got.len(),
        want.len(),
        missing.len(),
        &missing[..missing.len().min(3)],
        extra.len(),
        &extra[..extra.len().min(3)],
    );
}

/// The flow log objects in `bucket` (not the sink's probe objects).
fn flow_log_keys(rt: &tokio::runtime::Runtime, s3: &S3TestServer, bucket: &str) -> Vec<String> {
    rt.block_on(s3.list_keys(bucket))
        .unwrap()
        .into_iter()
        .filter(|k| k.contains("AWSLogs/"))
        .collect()
}

/// Downloads every flow log object of `bucket` into a fresh directory below `dir` and
/// returns the number of objects and their records.
fn bucket_records(
    rt: &tokio::runtime::Runtime,
    s3: &'static S3TestServer,
    bucket: &str,
    dir: &Path,
) -> (usize, Vec<FlowRecord>) {
    let keys = flow_log_keys(rt, s3, bucket);
    let download = tempfile::tempdir_in(dir).unwrap();
    rt.block_on(async {
        let client = s3.client().await;
        let slots = Arc::new(tokio::sync::Semaphore::new(16));
        let mut gets = tokio::task::JoinSet::new();
        for key in &keys {
            let (client, slots) = (client.clone(), Arc::clone(&slots));
            let (bucket, key) = (bucket.to_owned(), key.clone());
            let path = download.path().join(&key);
            gets.spawn(async move {
                let _slot = slots.acquire_owned().await.unwrap();
                let out = client
                    .get_object()
                    .bucket(&bucket)
                    .key(&key)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("get s3://{bucket}/{key}: {e}"));
                let body = out.body.collect().await.unwrap().into_bytes();
                fs::create_dir_all(path.parent().unwrap()).unwrap();
                fs::write(&path, body).unwrap();
            });
        }
        while let Some(done) = gets.join_next().await {
            done.unwrap();
        }
    });
    let (files, records) = flowlog_tests::published_records(download.path()).unwrap();
    assert_eq!(files, keys.len());
    (files, records)
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The last lines of a log file.
fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn stderr_file(path: &Path) -> fs::File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// Sends SIGTERM to `child` and returns its exit status and how long it took from the
/// signal; panics (after kill -9) if it is still running after `GRACE + SLACK`.
fn terminate_within_grace(child: &mut Child, log: &Path, what: &str) -> (ExitStatus, Duration) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "{what} ended before the signal, so the test stopped nothing: make the backlog larger or the proxy slower\n{}",
        log_tail(log)
    );
    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -TERM failed");
    match wait_timeout(child, GRACE + SLACK) {
        Some(status) => (status, signalled.elapsed()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} was still running {:.1} s after SIGTERM with shutdown_grace = {} s (allowed: grace + {} s); killed it\n--- its log (tail) ---\n{}",
                signalled.elapsed().as_secs_f64(),
                GRACE.as_secs(),
                SLACK.as_secs(),
                log_tail(log)
            );
        }
    }
}

/// Waits up to `timeout` until a flow log object is in the bucket (uploads are under
/// way); returns whether one is. Panics if the aggregator exits meanwhile.
fn wait_for_first_object(
    rt: &tokio::runtime::Runtime,
    s3: &S3TestServer,
    bucket: &str,
    child: &mut Child,
    log: &Path,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while flow_log_keys(rt, s3, bucket).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the aggregator exited ({status}) before publishing anything\n{}",
                log_tail(log)
            );
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// A config with an S3 sink at `endpoint`; `extra` is appended (e.g. `[listen]`).
fn write_config(
    path: &Path,
    state: &Path,
    bucket: &str,
    endpoint: &str,
    grace: Duration,
    extra: &str,
) {
    fs::write(
        path,
        format!(
            "[flow_log]\nid = \"fl-0123456789abcdef0\"\naccount_id = \"{account}\"\nregion = \"us-east-1\"\n\n\
             [sink]\ntype = \"s3\"\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\n\
             [state]\ndir = \"{state}\"\nwriter_id = \"test-writer\"\n\n\
             [service]\nshutdown_grace = \"{grace}s\"\nlog_level = \"info\"\n\n{extra}",
            account = ACCOUNTS[0],
            state = state.display(),
            grace = grace.as_secs(),
        ),
    )
    .unwrap();
}

/// `flowlog-aggregator <args>` with the S3 server's credentials and nothing else from
/// the environment's AWS setup; stderr appended to `log`.
fn aggregator(s3: &S3TestServer, args: &[&str], log: &Path) -> Command {
    let mut cmd = Command::new(aggregator_bin());
    cmd.args(args)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("RUST_LOG")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file(log));
    cmd
}

#[test]
fn sigterm_during_a_slow_s3_import_exits_within_grace_and_the_rerun_publishes_exactly_once() {
    let _serial = serial();
    // Build (if needed) before anything is timed.
    aggregator_bin();
    let test_started = Instant::now();
    let rt = rt();
    let s3 = S3TestServer::shared().unwrap();
    let bucket = rt.block_on(s3.unique_bucket("shutdown-import")).unwrap();
    let proxy = rt
        .block_on(SlowProxy::start(s3.addr().unwrap(), LATENCY))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let records = backlog_records();
    let input = dir.path().join("backlog.log");
    write_input(&input, &records);
    let input = input.to_str().unwrap();

    // 1. Through the slow proxy: SIGTERM once uploads are under way.
    let slow = dir.path().join("slow.toml");
    write_config(&slow, &state, &bucket, &proxy.endpoint(), GRACE, "");
    let log = dir.path().join("import-1.log");
    let started = Instant::now();
    let mut child = aggregator(
        s3,
        &["import", "--config", slow.to_str().unwrap(), input],
        &log,
    )
    .spawn()
    .unwrap();
    assert!(
        wait_for_first_object(&rt, s3, &bucket, &mut child, &log, Duration::from_secs(30)),
        "nothing published within 30 s\n{}",
        log_tail(&log)
    );
    std::thread::sleep(Duration::from_secs(1));
    let published_before = flow_log_keys(&rt, s3, &bucket).len();
    let (status, took) = terminate_within_grace(&mut child, &log, "import");
    let published_after = flow_log_keys(&rt, s3, &bucket).len();
    eprintln!(
        "import: SIGTERM {:.1} s after the start ({published_before} of {} streams published), exit {:?} {:.1} s after it; {published_after} objects in the bucket; {} requests through the proxy",
        (Instant::now() - took - started).as_secs_f64(),
        streams(),
        status.code(),
        took.as_secs_f64(),
        proxy.chunks(),
    );
    let stderr = fs::read_to_string(&log).unwrap();
    assert!(
        matches!(status.code(), Some(1 | 130)),
        "an interrupted import exits 130 (or 1 with files left staged), not {status}\n{}",
        log_tail(&log)
    );
    assert!(
        stderr.contains("interrupted") || stderr.contains("next start"),
        "the import does not say it was interrupted and what is left\n{}",
        log_tail(&log)
    );
    assert!(
        published_after < streams(),
        "every stream was published before the exit: the test interrupted nothing"
    );

    // 2. The same command, straight to moto: the rest goes out, nothing twice.
    let direct = dir.path().join("direct.toml");
    write_config(
        &direct,
        &state,
        &bucket,
        &s3.endpoint,
        Duration::from_secs(60),
        "",
    );
    let log2 = dir.path().join("import-2.log");
    let rerun = Instant::now();
    let mut child = aggregator(
        s3,
        &["import", "--config", direct.to_str().unwrap(), input],
        &log2,
    )
    .spawn()
    .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(60)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the re-run did not finish within 60 s\n{}", log_tail(&log2))
    });
    eprintln!(
        "import re-run: exit {:?} in {:.1} s\n{}",
        status.code(),
        rerun.elapsed().as_secs_f64(),
        log_tail(&log2)
    );
    assert!(status.success(), "the re-run failed\n{}", log_tail(&log2));
    let reading = Instant::now();
    let (objects, got) = bucket_records(&rt, s3, &bucket, dir.path());
    eprintln!(
        "read {objects} objects, {} records back in {:.1} s",
        got.len(),
        reading.elapsed().as_secs_f64()
    );
    assert_exactly_once(
        &got,
        &records,
        "after the interrupted import and its re-run",
    );
    eprintln!(
        "done in {:.1} s (not counting the build)",
        test_started.elapsed().as_secs_f64()
    );
}

/// Sends the backlog as one push of agent `AGENT` (spool 1, seq 1).
fn push_backlog(
    rt: &tokio::runtime::Runtime,
    address: &str,
    ca: &Path,
    records: &[FlowRecord],
) -> PushReply {
    rt.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(fs::read(ca).unwrap()))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{address}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = IngestClient::new(channel).max_encoding_message_size(usize::MAX);
        let mut request = tonic::Request::new(PushRequest {
            agent_id: AGENT.into(),
            spool_id: 1,
            seq: 1,
            acked_below: 1,
            batch: Some(encode_batch(records)),
        });
        request
            .metadata_mut()
            .insert(AUTHORIZATION, format!("Bearer {TOKEN}").parse().unwrap());
        tokio::time::timeout(Duration::from_secs(30), client.push(request))
            .await
            .expect("no reply to the push within 30 s")
            .expect("the push was refused")
            .into_inner()
    })
}

/// Starts `serve` and returns it with the address it listens on.
fn start_serve(s3: &S3TestServer, config: &Path, log: &Path) -> (Child, String) {
    let mut child = aggregator(s3, &["serve", "--config", config.to_str().unwrap()], log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        let address = text
            .lines()
            .filter(|l| l.contains(" listening"))
            .flat_map(str::split_whitespace)
            .find_map(|w| w.strip_prefix("address="));
        if let Some(address) = address {
            return (child, address.to_owned());
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "serve exited ({status}) before listening\n{}",
                log_tail(log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "serve not listening within 60 s\n{}",
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_during_a_slow_s3_serve_exits_within_grace_and_the_restart_publishes_exactly_once() {
    let _serial = serial();
    // Build (if needed) before anything is timed.
    aggregator_bin();
    let test_started = Instant::now();
    let rt = rt();
    let s3 = S3TestServer::shared().unwrap();
    let bucket = rt.block_on(s3.unique_bucket("shutdown-serve")).unwrap();
    let proxy = rt
        .block_on(SlowProxy::start(s3.addr().unwrap(), LATENCY))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
    let tokens = dir.path().join("tokens");
    fs::write(
        &tokens,
        format!("{AGENT} {TOKEN} account=123456789012,210987654321\n"),
    )
    .unwrap();
    fs::set_permissions(&tokens, fs::Permissions::from_mode(0o600)).unwrap();
    let listen = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\nmax_record_age = \"3650d\"\ntokens_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
        tokens.display(),
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let records = backlog_records();

    // 1. Through the slow proxy: one acked push of every stream, SIGTERM 2 s after the
    //    ack (or as soon as uploads are under way).
    let slow = dir.path().join("slow.toml");
    write_config(&slow, &state, &bucket, &proxy.endpoint(), GRACE, &listen);
    let log = dir.path().join("serve-1.log");
    let (mut child, address) = start_serve(s3, &slow, &log);
    let reply = push_backlog(&rt, &address, &pki.ca, &records);
    assert!(!reply.duplicate, "the first push was taken for a duplicate");
    let acked = Instant::now();
    // The records wait in the WAL and in open streams; uploads may or may not have
    // begun yet (a pipeline may hold streams until their window closes).
    wait_for_first_object(&rt, s3, &bucket, &mut child, &log, Duration::from_secs(2));
    let published_before = flow_log_keys(&rt, s3, &bucket).len();
    let (status, took) = terminate_within_grace(&mut child, &log, "serve");
    let published_after = flow_log_keys(&rt, s3, &bucket).len();
    eprintln!(
        "serve: SIGTERM {:.1} s after the ack ({published_before} of {} streams published), exit {:?} {:.1} s after it; {published_after} objects in the bucket; {} requests through the proxy",
        (Instant::now() - took - acked).as_secs_f64(),
        streams(),
        status.code(),
        took.as_secs_f64(),
        proxy.chunks(),
    );
    assert!(
        status.code().is_some(),
        "serve died of a signal: {status}\n{}",
        log_tail(&log)
    );
    let text = fs::read_to_string(&log).unwrap();
    assert!(!text.contains("panicked"), "serve panicked\n{text}");
    assert!(
        published_after < streams(),
        "every stream was published before the exit: the test interrupted nothing"
    );

    // 2. Restart straight to moto: the acked push is remembered (a retry is a
    //    duplicate), the rest goes out, nothing twice.
    let direct = dir.path().join("direct.toml");
    write_config(
        &direct,
        &state,
        &bucket,
        &s3.endpoint,
        Duration::from_secs(60),
        &listen,
    );
    let log2 = dir.path().join("serve-2.log");
    let restarted = Instant::now();
    let (mut child, address) = start_serve(s3, &direct, &log2);
    let reply = push_backlog(&rt, &address, &pki.ca, &records);
    assert!(
        reply.duplicate,
        "the push acked before the SIGTERM was taken again after the restart"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(60)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!(
            "the restarted serve did not stop within 60 s\n{}",
            log_tail(&log2)
        )
    });
    eprintln!(
        "serve restart: exit {:?} {:.1} s after the start\n{}",
        status.code(),
        restarted.elapsed().as_secs_f64(),
        log_tail(&log2)
    );
    assert!(
        status.success(),
        "the restarted serve failed\n{}",
        log_tail(&log2)
    );
    let reading = Instant::now();
    let (objects, got) = bucket_records(&rt, s3, &bucket, dir.path());
    eprintln!(
        "read {objects} objects, {} records back in {:.1} s",
        got.len(),
        reading.elapsed().as_secs_f64()
    );
    assert_exactly_once(
        &got,
        &records,
        "after the interrupted serve and its restart",
    );
    eprintln!(
        "done in {:.1} s (not counting the build)",
        test_started.elapsed().as_secs_f64()
    );
}
