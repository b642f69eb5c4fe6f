//! Live capture shipped to an aggregator: the agent captures on a veth pair whose other end
//! is in a network namespace this test creates, serves `/metrics` and `/healthz`, and on
//! SIGTERM spools the open interval and delivers it to the in-process aggregator (TLS on
//! 127.0.0.1) before exiting. Needs root; under CI=true a missing privilege fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::ingest::{TestIngest, free_port, wait_until};
use common::sh;
use flowlog_formats::{FlowDirection, LogStatus};
use flowlog_tests::pki::TestPki;

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-agent");

/// A namespace with one veth pair: 10.198.{subnet}.1 here, .2 there.
struct TestNet {
    ns: common::Netns,
    here: String,
    subnet: u32,
}

impl TestNet {
    fn create() -> Option<TestNet> {
        if !common::live_test_can_run("the live shipping test", &[("ip", "-V"), ("ping", "-V")]) {
            return None;
        }
        let id = std::process::id() % 10_000;
        let ns = common::Netns::add(format!("fls{id}"));
        let veth = common::Veth::add(&ns, format!("flsa{id}"), format!("flsb{id}"));
        let subnet = 1 + id % 250;
        veth.address(&ns, &format!("10.198.{subnet}"), 1, 2);
        Some(TestNet {
            ns,
            here: veth.here,
            subnet,
        })
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn live_records_are_shipped_and_the_open_interval_is_delivered_at_sigterm() {
    let Some(net) = TestNet::create() else { return };
    let s = net.subnet;
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
    let mut server = TestIngest::new(&pki, "live-token");
    server.start();
    let token = dir.path().join("agent.token");
    std::fs::write(&token, "live-token").unwrap();
    let metrics_port = free_port();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\nmax_aggregation_interval = \"60s\"\n\
             [[interface]]\nname = \"{}\"\ninterface_id = \"eni-0000000000000000c\"\n\
             [aggregator]\nendpoints = [\"{}\"]\nca_file = \"{}\"\ntoken_file = \"{}\"\nagent_id = \"live-01\"\nshutdown_grace = \"10s\"\n\
             [spool]\ndir = \"{}\"\n\
             [service]\nmetrics_address = \"127.0.0.1:{metrics_port}\"\n",
            net.here,
            server.url(),
            pki.ca.display(),
            token.display(),
            dir.path().join("spool").display(),
        ),
    )
    .unwrap();
    let mut agent = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let up = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok()
            && http_get(metrics_port, "/metrics").contains(&format!(
                "flowlog_agent_endpoint_up{{endpoint=\"{}\"}} 1",
                server.url()
            ))
    });
    if !up {
        let _ = agent.kill();
        let out = agent.wait_with_output().unwrap();
        panic!("not connected: {}", String::from_utf8_lossy(&out.stderr));
    }
    let health = http_get(metrics_port, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            net.ns.name(),
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            &format!("10.198.{s}.1"),
        ])
        .output();
    std::thread::sleep(Duration::from_millis(300));

    let signalled = Instant::now();
    sh(&["kill", "-TERM", &agent.id().to_string()]);
    let out = agent.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    assert!(
        stderr.contains("every spooled record is acknowledged"),
        "{stderr}"
    );
    let store = server.received();
    let records: Vec<_> = store.batches.values().flatten().collect();
    let echo_requests: u64 = records
        .iter()
        .filter(|r| {
            r.log_status == Some(LogStatus::Ok)
                && r.flow_direction == Some(FlowDirection::Ingress)
                && r.protocol == Some(1)
                && r.interface_id.as_deref() == Some("eni-0000000000000000c")
        })
        .map(|r| r.packets.unwrap())
        .sum();
    assert_eq!(echo_requests, 3, "{records:?}\n{stderr}");
    assert!(
        records
            .iter()
            .all(|r| r.region.as_deref() == Some("eu-west-3"))
    );
    assert!(store.pushes.iter().all(|p| p.agent_id == "live-01"));
    // The spool is empty after a clean delivery.
    let left = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert_eq!(left, 0);
}
