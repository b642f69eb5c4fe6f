//! Standalone mode, run as a real process: the agent's records go through the publishing
//! pipeline into `AWSLogs/...` files (text and Parquet) with the exact keys an AWS flow log
//! would have, and hold exactly the records `--stdout` prints for the same input. The live
//! test captures on a veth pair in a namespace of its own and checks that SIGINT seals and
//! writes the open window. Live capture needs root; under CI=true its absence fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowlog_agent::pcap::PcapWriter;
use flowlog_formats::input::RecordSource;
use flowlog_formats::text::TextReader;
use flowlog_formats::{FlowRecord, LogFormat, LogStatus};
use flowlog_tests::frames::{self, TCP_ACK, TCP_FIN, TCP_SYN};

mod common;

use common::sh;

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-agent");
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
/// 2024-01-01T00:00:00Z.
const T0: u64 = 1_704_067_200;
const FLOW_LOG: &str = "fl-0a1b2c3d4e5f60718";
const ACCOUNT: &str = "123456789012";

fn write_config(dir: &Path, extra_output: &str, interfaces: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    let text = format!(
        "[flow_log]\nid = \"{FLOW_LOG}\"\naccount_id = \"{ACCOUNT}\"\nregion = \"eu-west-3\"\nmax_aggregation_interval = \"60s\"\n\
         [output]\n{extra_output}\n\
         [sink]\npath = \"{out}\"\n\
         [state]\ndir = \"{state}\"\nfsync = \"never\"\n\
         {interfaces}",
        out = dir.join("flowlogs").display(),
        state = dir.join("state").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

const REPLAY_INTERFACE: &str = "[[interface]]\nname = \"eth0\"\ninterface_id = \"eni-0123456789abcdef0\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.10\"]\n";

/// A capture spanning two 5-minute windows: TCP and UDP in minute 0, DNS in minute 7.
fn write_pcap(path: &Path) {
    let (client, host, dns) = (
        Ipv4Addr::new(203, 0, 113, 5),
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 0, 2),
    );
    let at = |s: u64, ms: u64| Duration::from_secs(T0 + s) + Duration::from_millis(ms);
    let mut w = PcapWriter::create(path).unwrap();
    let inbound =
        |flags, len| frames::tcp_v4(GW_MAC, HOST_MAC, client, host, 40_000, 443, flags, len);
    let outbound =
        |flags, len| frames::tcp_v4(HOST_MAC, GW_MAC, host, client, 443, 40_000, flags, len);
    w.write(at(1, 0), &inbound(TCP_SYN, 0)).unwrap();
    w.write(at(1, 1), &outbound(TCP_SYN | TCP_ACK, 0)).unwrap();
    w.write(at(1, 2), &inbound(TCP_ACK, 200)).unwrap();
    w.write(at(2, 0), &outbound(TCP_FIN | TCP_ACK, 0)).unwrap();
    w.write(at(2, 1), &inbound(TCP_FIN | TCP_ACK, 0)).unwrap();
    for i in 0..5 {
        w.write(
            at(420 + i, 0),
            &frames::udp_v4(HOST_MAC, GW_MAC, host, dns, 50_000, 53, 40),
        )
        .unwrap();
    }
    w.finish().unwrap();
}

/// Every file under `root`, by key relative to it.
fn published(root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(key, p);
            }
        }
    }
    out
}

fn read_records(path: &Path) -> Vec<FlowRecord> {
    RecordSource::open_path(path, None)
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn stdout_records(config: &Path, pcap: &Path) -> Vec<FlowRecord> {
    let out = Command::new(BIN)
        .args(["--config"])
        .arg(config)
        .arg("--replay")
        .arg(pcap)
        .arg("--stdout")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    TextReader::with_header(&out.stdout[..])
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

fn sorted(mut records: Vec<FlowRecord>, format: &LogFormat) -> Vec<String> {
    let mut lines: Vec<String> = records
        .drain(..)
        .map(|r| {
            let mut line = Vec::new();
            flowlog_formats::text::encode_line(&mut line, format, format.version(), &r);
            String::from_utf8(line).unwrap()
        })
        .collect();
    lines.sort();
    lines
}

fn replay_to_files(extra_output: &str, extension: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), extra_output, REPLAY_INTERFACE);
    let pcap = dir.path().join("capture.pcap");
    write_pcap(&pcap);

    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--replay")
        .arg(&pcap)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("published 2 file(s)"), "{stderr}");

    let files = published(&dir.path().join("flowlogs"));
    let keys: Vec<&String> = files.keys().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let folder = format!("AWSLogs/{ACCOUNT}/vpcflowlogs/eu-west-3/2024/01/01/");
    for (key, window_end) in keys.iter().zip(["20240101T0005Z", "20240101T0010Z"]) {
        let prefix = format!("{folder}{ACCOUNT}_vpcflowlogs_eu-west-3_{FLOW_LOG}_{window_end}_");
        assert!(
            key.starts_with(&prefix),
            "{key} does not start with {prefix}"
        );
        let hash = &key[prefix.len()..key.len() - extension.len()];
        assert!(key.ends_with(extension), "{key}");
        assert!(
            hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{key}"
        );
    }

    // The files hold exactly what --stdout prints for the same capture.
    let mut in_files = Vec::new();
    let mut format = None;
    for path in files.values() {
        let source = RecordSource::open_path(path, None).unwrap();
        format = Some(source.format().clone());
        in_files.extend(source.map(|r| r.unwrap()));
    }
    let format = format.unwrap();
    let expected = stdout_records(&config, &pcap);
    // TCP both ways in minute 0, NODATA for minutes 1-6, DNS in minute 7.
    assert_eq!(expected.len(), 9, "{expected:?}");
    assert_eq!(sorted(in_files, &format), sorted(expected, &format));
    // The first window's file has the TCP records, the second the DNS one.
    let second = read_records(files.values().nth(1).unwrap());
    assert!(
        second
            .iter()
            .all(|r| r.dstport == Some(53) || r.log_status != Some(LogStatus::Ok)),
        "{second:?}"
    );

    // A rerun with the same state publishes again under the same keys (no duplicates of
    // keys: the hash is deterministic per writer and window).
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--replay")
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(out.status.success());
    let again = published(&dir.path().join("flowlogs"));
    assert!(again.len() >= 2);
}

#[test]
fn replay_publishes_gzip_text_files_under_aws_keys() {
    replay_to_files("", ".log.gz");
}

#[test]
fn replay_publishes_parquet_files_under_aws_keys() {
    replay_to_files("format = \"parquet\"\nlayout = \"default\"", ".log.parquet");
}

#[test]
fn standalone_config_problems_are_all_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"12\"\nregion = \"eu-west-3\"\nmax_aggregation_interval = \"90s\"\n\
         [output]\nformat = \"csv\"\nprefix = \"x/AWSLogs\"\n\
         [sink]\ntype = \"ftp\"\n\
         [state]\nfsync = \"sometimes\"\n\
         [service]\nbogus = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "flow_log.account_id",
        "flow_log.max_aggregation_interval",
        "output.format",
        "output.prefix",
        "sink.type",
        "state.fsync",
        "service.bogus",
    ] {
        assert!(stderr.contains(key), "{key} not reported:\n{stderr}");
    }
    // Reported once, although the agent and the pipeline both read it.
    assert_eq!(stderr.matches("flow_log.account_id").count(), 1, "{stderr}");
}

/// GET `path` from 127.0.0.1:`port`; returns the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

// ---------------------------------------------------------------------------------------
// Live: a veth pair, a ping, SIGINT.
// ---------------------------------------------------------------------------------------

/// A namespace with one veth pair: 10.198.{subnet}.1 here, .2 there.
struct Veth {
    ns: common::Netns,
    here: String,
    subnet: u32,
}

impl Veth {
    fn create() -> Option<Veth> {
        if !common::live_test_can_run("the live standalone test", &[("ip", "-V"), ("ping", "-V")]) {
            return None;
        }
        let id = std::process::id() % 10_000;
        let ns = common::Netns::add(format!("fls{id}"));
        let veth = common::Veth::add(&ns, format!("flsa{id}"), format!("flsb{id}"));
        let subnet = 100 + (id + 77) % 150;
        veth.address(&ns, &format!("10.198.{subnet}"), 1, 2);
        Some(Veth {
            ns,
            here: veth.here,
            subnet,
        })
    }
}

#[test]
fn live_capture_sigint_seals_and_writes_the_open_window() {
    let Some(veth) = Veth::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let interface = format!(
        "[[interface]]\nname = \"{}\"\ninterface_id = \"eni-0aaaaaaaaaaaaaaa1\"\n",
        veth.here
    );
    // 600 s intervals: nothing closes on its own during the test; SIGINT must write it all.
    let config = write_config(dir.path(), "", &interface);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "max_aggregation_interval = \"60s\"",
        "max_aggregation_interval = \"600s\"",
    ) + &format!("[service]\nmetrics_address = \"127.0.0.1:{port}\"\n");
    std::fs::write(&config, text).unwrap();

    let mut agent = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The agent is ready once its state directory exists and capture threads are up.
    let started = Instant::now();
    while !dir.path().join("state").exists() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(700));
    let s = veth.subnet;
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            veth.ns.name(),
            "ping",
            "-c",
            "4",
            "-i",
            "0.2",
            "-W",
            "1",
        ])
        .arg(format!("10.198.{s}.1"))
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{}",
        String::from_utf8_lossy(&ping.stderr)
    );
    std::thread::sleep(Duration::from_millis(300));
    // The metrics endpoint serves the agent's counters next to the pipeline's.
    let metrics = http_get(port, "/metrics");
    let packets_line = format!(
        "flowlog_agent_packets_total{{interface=\"{}\"}} ",
        veth.here
    );
    let packets: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&packets_line))
        .unwrap_or_else(|| panic!("no {packets_line}in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(packets >= 8, "{metrics}");
    for name in [
        "flowlog_agent_flows_live{",
        "flowlog_agent_kernel_drops_total{",
        "flowlog_agent_skipped_packets_total{",
        "reason=\"table_full\"} 0",
        "flowlog_agent_records_total{log_status=\"NODATA\"} 0",
        "flowlog_records_in_total",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    assert!(http_get(port, "/healthz").starts_with("ok"));
    // kill(1) with SIGINT, as Ctrl-C would.
    sh(&["kill", "-INT", &agent.id().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "agent did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut agent.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{stderr}");

    let files = published(&dir.path().join("flowlogs"));
    assert!(!files.is_empty(), "nothing published: {stderr}");
    let records: Vec<FlowRecord> = files.values().flat_map(|p| read_records(p)).collect();
    let icmp: Vec<&FlowRecord> = records.iter().filter(|r| r.protocol == Some(1)).collect();
    let echo_in = icmp
        .iter()
        .find(|r| r.srcaddr == Some(format!("10.198.{s}.2").parse().unwrap()))
        .unwrap_or_else(|| panic!("no echo request record: {records:?}"));
    assert_eq!(echo_in.packets, Some(4));
    assert_eq!(echo_in.bytes, Some(4 * 84));
    assert_eq!(
        echo_in.interface_id.as_deref(),
        Some("eni-0aaaaaaaaaaaaaaa1")
    );
    let echo_out = icmp
        .iter()
        .find(|r| r.srcaddr == Some(format!("10.198.{s}.1").parse().unwrap()))
        .unwrap_or_else(|| panic!("no echo reply record: {records:?}"));
    assert_eq!(echo_out.packets, Some(4));
    for key in files.keys() {
        assert!(
            key.starts_with(&format!("AWSLogs/{ACCOUNT}/vpcflowlogs/eu-west-3/"))
                && key.ends_with(".log.gz"),
            "{key}"
        );
    }
}
