//! Live capture on a veth pair whose other end is in a network namespace this test creates:
//! known traffic (ping, a refused TCP connection, a UDP datagram) crosses it, then SIGTERM;
//! the records are checked field by field, and an idle interface reports NODATA. Needs
//! root (CAP_NET_ADMIN for the namespace, CAP_NET_RAW for capture); under CI=true a missing
//! privilege or tool fails the test instead of skipping it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::sh;
use flowlog_formats::text::TextReader;
use flowlog_formats::{FlowDirection, FlowRecord, LogStatus};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-agent");

/// (interface id, direction, srcaddr, dstaddr, srcport, dstport, protocol).
type FlowKey = (
    String,
    Option<FlowDirection>,
    String,
    String,
    Option<u16>,
    Option<u16>,
    Option<u8>,
);
/// (packets, bytes, OR of tcp-flags).
type Totals = (u64, u64, u16);

/// A namespace with two veth pairs: `traffic` (addresses .1 here, .2 there) and `idle`.
struct TestNet {
    ns: common::Netns,
    traffic: String,
    idle: String,
    subnet: u32,
}

impl TestNet {
    fn create() -> Option<TestNet> {
        if !common::live_test_can_run("the live capture test", &[("ip", "-V"), ("ping", "-V")]) {
            return None;
        }
        let id = std::process::id() % 10_000;
        let ns = common::Netns::add(format!("flt{id}"));
        let traffic = common::Veth::add(&ns, format!("flta{id}"), format!("fltb{id}"));
        let idle = common::Veth::add(&ns, format!("flti{id}"), format!("fltd{id}"));
        let subnet = 100 + id % 150;
        traffic.address(&ns, &format!("10.199.{subnet}"), 1, 2);
        Some(TestNet {
            ns,
            traffic: traffic.here,
            idle: idle.here,
            subnet,
        })
    }

    fn exec(&self, script: &str) {
        // Failures (refused connection) are expected; only the traffic matters.
        let _ = self.ns.bash(script);
    }
}

#[test]
fn live_capture_on_a_veth_pair_gives_the_expected_records() {
    let Some(net) = TestNet::create() else { return };
    let s = net.subnet;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\nmax_aggregation_interval = \"60s\"\n\
             [output]\nlog_format = \"${{version}} ${{interface-id}} ${{srcaddr}} ${{dstaddr}} ${{srcport}} ${{dstport}} ${{protocol}} ${{packets}} ${{bytes}} ${{start}} ${{end}} ${{tcp-flags}} ${{flow-direction}} ${{action}} ${{log-status}}\"\n\
             [[interface]]\nname = \"{}\"\ninterface_id = \"eni-0000000000000000a\"\n\
             [[interface]]\nname = \"{}\"\ninterface_id = \"eni-0000000000000000b\"\n",
            net.traffic, net.idle
        ),
    )
    .unwrap();
    let mut agent = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("--stdout")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    net.exec(&format!("ping -c 3 -i 0.2 -W 1 10.199.{s}.1"));
    net.exec(&format!("exec 3<>/dev/tcp/10.199.{s}.1/9"));
    net.exec(&format!("echo hello > /dev/udp/10.199.{s}.1/9999"));
    std::thread::sleep(Duration::from_millis(500));

    let signalled = Instant::now();
    sh(&["kill", "-TERM", &agent.id().to_string()]);
    let status = agent.wait().unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    let mut stdout = Vec::new();
    agent
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    agent
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");

    let records: Vec<FlowRecord> = TextReader::with_header(&stdout[..])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    // Sum per (interface, direction, 5-tuple): the traffic may straddle an interval boundary.
    let mut flows: HashMap<FlowKey, Totals> = HashMap::new();
    for r in records
        .iter()
        .filter(|r| r.log_status == Some(LogStatus::Ok))
    {
        let key = (
            r.interface_id.as_deref().unwrap().to_owned(),
            r.flow_direction,
            r.srcaddr.unwrap().to_string(),
            r.dstaddr.unwrap().to_string(),
            r.srcport,
            r.dstport,
            r.protocol,
        );
        let e = flows.entry(key).or_default();
        e.0 += r.packets.unwrap();
        e.1 += r.bytes.unwrap();
        e.2 |= r.tcp_flags.unwrap_or(0);
    }
    let (here, there) = (format!("10.199.{s}.1"), format!("10.199.{s}.2"));
    let eni = "eni-0000000000000000a".to_owned();
    let get = |dir, src: &str, dst: &str, sport, dport, proto| {
        flows
            .get(&(
                eni.clone(),
                Some(dir),
                src.to_owned(),
                dst.to_owned(),
                Some(sport),
                Some(dport),
                Some(proto),
            ))
            .copied()
    };
    let shown = format!("{}\n{stderr}", String::from_utf8_lossy(&stdout));
    assert_eq!(
        get(FlowDirection::Ingress, &there, &here, 0, 0, 1),
        Some((3, 3 * 84, 0)),
        "echo requests\n{shown}"
    );
    assert_eq!(
        get(FlowDirection::Egress, &here, &there, 0, 0, 1).map(|f| (f.0, f.1)),
        Some((3 + 1, 3 * 84 + 56 + 6)),
        "echo replies + port unreachable\n{shown}"
    );
    let syn = flows
        .iter()
        .find(|(k, _)| k.1 == Some(FlowDirection::Ingress) && k.5 == Some(9) && k.6 == Some(6))
        .map(|(_, v)| *v);
    assert_eq!(
        syn.map(|f| (f.0, f.2)),
        Some((1, 2)),
        "SYN to the closed port\n{shown}"
    );
    let rst = flows
        .iter()
        .find(|(k, _)| k.1 == Some(FlowDirection::Egress) && k.4 == Some(9) && k.6 == Some(6))
        .map(|(_, v)| *v);
    assert_eq!(rst.map(|f| (f.0, f.2)), Some((1, 4)), "RST back\n{shown}");
    let udp = flows
        .iter()
        .find(|(k, _)| k.1 == Some(FlowDirection::Ingress) && k.5 == Some(9999))
        .map(|(_, v)| *v);
    assert_eq!(
        udp.map(|f| (f.0, f.1)),
        Some((1, 20 + 8 + 6)),
        "UDP datagram\n{shown}"
    );
    assert!(
        records.iter().any(
            |r| r.interface_id.as_deref() == Some("eni-0000000000000000b")
                && r.log_status == Some(LogStatus::NoData)
        ),
        "NODATA on the idle interface\n{shown}"
    );
    assert!(
        records
            .iter()
            .filter(|r| r.interface_id.as_deref() == Some("eni-0000000000000000b"))
            .all(|r| r.log_status == Some(LogStatus::NoData)),
        "only NODATA on the idle interface\n{shown}"
    );
}
