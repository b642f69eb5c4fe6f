//! `flowlog-agent --config F --replay X.pcap` with `[aggregator]`, run as a real process
//! against an in-process aggregator over TLS: every record arrives, equal to what
//! `--stdout` prints for the same file; after `kill -9` in the middle, running the same
//! command again delivers every record exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::ingest::{Action, TestIngest, wait_until};
use flowlog_agent::pcap::PcapWriter;
use flowlog_formats::LogFormat;
use flowlog_formats::text::TextWriter;
use flowlog_tests::frames::{self, TCP_ACK};
use flowlog_tests::pki::TestPki;

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-agent");
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
/// 2024-01-01T00:00:00Z, a multiple of 60.
const T0: u64 = 1_704_067_200;
const FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${flow-direction} ${region}";

/// `intervals` 60-second intervals of `flows` flows each, both directions, then a gap of
/// three idle intervals (NODATA) and one more flow.
fn capture(path: &Path, intervals: u64, flows: u32) {
    let host = Ipv4Addr::new(10, 0, 0, 10);
    let mut w = PcapWriter::create(path).unwrap();
    for interval in 0..intervals {
        for f in 0..flows {
            let remote = Ipv4Addr::from(0xcb00_7100 + f);
            let port = 20_000 + u16::try_from(f).unwrap();
            let at =
                Duration::from_secs(T0 + interval * 60) + Duration::from_millis(u64::from(f) * 5);
            let inbound = frames::tcp_v4(GW_MAC, HOST_MAC, remote, host, port, 443, TCP_ACK, 100);
            let outbound = frames::tcp_v4(HOST_MAC, GW_MAC, host, remote, 443, port, TCP_ACK, 1000);
            w.write(at, &inbound).unwrap();
            w.write(at + Duration::from_millis(1), &outbound).unwrap();
        }
    }
    let at = Duration::from_secs(T0 + (intervals + 3) * 60);
    let ping = frames::tcp_v4(
        GW_MAC,
        HOST_MAC,
        Ipv4Addr::new(198, 51, 100, 1),
        host,
        1,
        2,
        TCP_ACK,
        0,
    );
    w.write(at, &ping).unwrap();
    w.finish().unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    pki: TestPki,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
        Setup { dir, pki }
    }

    fn config(&self, endpoint: &str, spool_extra: &str) -> PathBuf {
        let token = self.dir.path().join("agent.token");
        std::fs::write(&token, "replay-token\n").unwrap();
        let path = self.dir.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\nmax_aggregation_interval = \"60s\"\n\
                 [output]\nlog_format = \"{FORMAT}\"\n\
                 [[interface]]\nname = \"eth0\"\ninterface_id = \"eni-0123456789abcdef0\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.10\"]\n\
                 [aggregator]\nendpoints = [\"{endpoint}\"]\nca_file = \"{}\"\nagent_id = \"replayer\"\ntoken_file = \"{}\"\n\
                 batch_records = 100\nmax_in_flight = 2\nretry_max = \"1s\"\npush_timeout = \"5s\"\n\
                 [spool]\ndir = \"{}\"\n{spool_extra}\n\
                 [service]\nlog_level = \"info\"\n",
                self.pki.ca.display(),
                token.display(),
                self.dir.path().join("spool").display(),
            ),
        )
        .unwrap();
        path
    }
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "flowlog-agent did not finish: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// What `--stdout` prints for the file (the header line first).
fn stdout_lines(config: &Path, pcap: &Path) -> Vec<String> {
    let out = run(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--replay".as_ref(),
        pcap.as_os_str(),
        "--stdout".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The server's batches of spool `spool_id`, in seq order, as text lines.
fn received_lines(server: &TestIngest, spool_id: u64) -> Vec<String> {
    let mut w = TextWriter::new(Vec::new(), LogFormat::parse(FORMAT).unwrap()).unwrap();
    let store = server.received();
    for ((spool, _), records) in &store.batches {
        assert_eq!(*spool, spool_id);
        for r in records {
            w.write_record(r).unwrap();
        }
    }
    String::from_utf8(w.finish().unwrap())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn single_spool(server: &TestIngest) -> u64 {
    let store = server.received();
    let ids: std::collections::BTreeSet<u64> = store.batches.keys().map(|(s, _)| *s).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    *ids.iter().next().unwrap()
}

#[test]
fn replay_ships_every_record_and_exits_once_they_are_acked() {
    let setup = Setup::new();
    let mut server = TestIngest::new(&setup.pki, "replay-token");
    server.start();
    let config = setup.config(&server.url(), "");
    let pcap = setup.dir.path().join("flows.pcap");
    capture(&pcap, 4, 120);
    let expected = stdout_lines(&config, &pcap);
    assert!(expected.len() > 900, "{}", expected.len());

    let out = run(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--replay".as_ref(),
        pcap.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("every record is acknowledged"), "{err}");
    let spool_id = single_spool(&server);
    assert_eq!(received_lines(&server, spool_id), expected);
    // Batches hold at most batch_records records and never mix intervals.
    let store = server.received();
    for records in store.batches.values() {
        assert!(records.len() <= 100);
        let intervals: std::collections::BTreeSet<u64> =
            records.iter().map(|r| r.end.unwrap() / 60).collect();
        assert_eq!(intervals.len(), 1, "{intervals:?}");
    }
    assert!(store.pushes.iter().all(|p| p.agent_id == "replayer"));
    drop(store);

    // The same file again: already shipped, nothing sent twice.
    let pushes = server.received().pushes.len();
    let out = run(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--replay".as_ref(),
        pcap.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("spooled by an earlier run"), "{err}");
    assert_eq!(server.received().pushes.len(), pushes);
}

#[test]
fn kill_9_in_the_middle_then_the_same_command_delivers_every_record_exactly_once() {
    let setup = Setup::new();
    let mut server = TestIngest::new(&setup.pki, "replay-token");
    server.start();
    // A slow aggregator and a small spool: the replay waits for acks, so the kill lands
    // while the file is still being read and batches are in flight.
    server.set_behavior(|_, _| Action::DelayThenAccept(Duration::from_millis(40)));
    let config = setup.config(
        &server.url(),
        "max_bytes = \"48KiB\"\nsegment_bytes = \"8KiB\"\n",
    );
    let pcap = setup.dir.path().join("flows.pcap");
    capture(&pcap, 12, 150);
    let expected = stdout_lines(&config, &pcap);
    assert!(expected.len() > 3000, "{}", expected.len());

    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--replay")
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || server
        .received()
        .batches
        .len()
        >= 8));
    child.kill().unwrap(); // SIGKILL
    let killed = child.wait_with_output().unwrap();
    assert!(!killed.status.success());
    let first_run = server.received().batches.len();
    assert!(
        first_run < 30,
        "the kill came after most batches ({first_run}): {}",
        String::from_utf8_lossy(&killed.stderr)
    );

    server.set_behavior(|_, _| Action::Accept);
    let out = run(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--replay".as_ref(),
        pcap.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("second run after the kill:\n{err}");
    assert!(out.status.success(), "{err}");
    assert!(err.contains("resuming: the first"), "{err}");
    let spool_id = single_spool(&server);
    // Exactly once, in the replay's order: the stored batches (deduped by seq) are the
    // `--stdout` output.
    assert_eq!(received_lines(&server, spool_id), expected);
    // Batches the first run had in flight were sent again under their old seq.
    let store = server.received();
    let seqs = store.seqs();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no seq skipped or reused"
    );
    drop(store);

    // Once more: a finished input says so, sends nothing, exits 0.
    let pushes = server.received().pushes.len();
    let out = run(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--replay".as_ref(),
        pcap.as_os_str(),
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("spooled by an earlier run"));
    assert_eq!(server.received().pushes.len(), pushes);
}

#[test]
fn check_config_validates_the_shipping_sections() {
    let setup = Setup::new();
    let config = setup.config("https://127.0.0.1:7443", "");
    let out = run(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--check-config".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let bad = setup.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        text.replace("https://127.0.0.1:7443", "http://127.0.0.1:7443")
            .replace(
                &setup.dir.path().join("agent.token").display().to_string(),
                "/nonexistent/agent.token",
            )
            + "[sink]\npath = \"./out\"\n",
    )
    .unwrap();
    let out = run(&[
        "--config".as_ref(),
        bad.as_os_str(),
        "--check-config".as_ref(),
    ]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "aggregator.endpoints[0]: 'http://127.0.0.1:7443' is plaintext",
        "aggregator.token_file: cannot read /nonexistent/agent.token",
        "sink: [aggregator] is set",
    ] {
        assert!(err.contains(needle), "{needle} missing: {err}");
    }
}
