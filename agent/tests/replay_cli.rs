//! `flowlog-agent --replay FILE --stdout`, run as a real process on a capture with known
//! flows: every record checked against what VPC Flow Logs would write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Duration;

use flowlog_agent::pcap::PcapWriter;
use flowlog_tests::frames::{self, TCP_ACK, TCP_FIN, TCP_SYN};

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-agent");
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
/// 2024-01-01T00:00:00Z, a multiple of 60.
const T0: u64 = 1_704_067_200;

const FORMAT: &str = "${version} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${tcp-flags} ${type} ${flow-direction} ${action} ${log-status} ${pkt-srcaddr} ${pkt-dstaddr} ${region}";

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\nmax_aggregation_interval = \"60s\"\n\
             [output]\nlog_format = \"{FORMAT}\"\n\
             [[interface]]\nname = \"eth0\"\ninterface_id = \"eni-0123456789abcdef0\"\nmac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.10\", \"10.0.0.11\", \"2001:db8::10\"]\n"
        ),
    )
    .unwrap();
    path
}

fn at(secs: u64, millis: u64) -> Duration {
    Duration::from_secs(T0 + secs) + Duration::from_millis(millis)
}

#[test]
fn replayed_capture_gives_the_records_vpc_flow_logs_would() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("known.pcap");
    let (client, host, secondary) = (
        Ipv4Addr::new(203, 0, 113, 5),
        Ipv4Addr::new(10, 0, 0, 10),
        Ipv4Addr::new(10, 0, 0, 11),
    );
    let mut w = PcapWriter::create(&pcap).unwrap();
    // Interval [T0, T0+60): an SSH connection opened and closed (client side 3, server side 19).
    let inbound =
        |flags, len| frames::tcp_v4(GW_MAC, HOST_MAC, client, host, 40_000, 22, flags, len);
    let outbound =
        |flags, len| frames::tcp_v4(HOST_MAC, GW_MAC, host, client, 22, 40_000, flags, len);
    w.write(at(1, 0), &inbound(TCP_SYN, 0)).unwrap();
    w.write(at(1, 1), &outbound(TCP_SYN | TCP_ACK, 0)).unwrap();
    w.write(at(1, 2), &inbound(TCP_ACK, 0)).unwrap();
    w.write(at(2, 0), &inbound(TCP_ACK, 100)).unwrap();
    w.write(at(3, 0), &inbound(TCP_FIN | TCP_ACK, 0)).unwrap();
    w.write(at(3, 1), &outbound(TCP_FIN | TCP_ACK, 0)).unwrap();
    // A DNS query sent from a secondary address: srcaddr is the primary, pkt-srcaddr the real one.
    w.write(
        at(10, 0),
        &frames::udp_v4(
            HOST_MAC,
            GW_MAC,
            secondary,
            Ipv4Addr::new(10, 0, 0, 2),
            5353,
            53,
            30,
        ),
    )
    .unwrap();
    // A ping in a VLAN, and an ARP frame (not IP: skipped).
    let ping = frames::ipv4(
        Ipv4Addr::new(198, 51, 100, 7),
        host,
        1,
        9,
        0,
        false,
        &frames::icmp_echo(true, 1, 1, 56),
    );
    w.write(
        at(20, 0),
        &frames::vlan(GW_MAC, HOST_MAC, 42, frames::ETHERTYPE_IPV4, &ping),
    )
    .unwrap();
    w.write(
        at(21, 0),
        &frames::ethernet(GW_MAC, [0xff; 6], frames::ETHERTYPE_ARP, &[0u8; 28]),
    )
    .unwrap();
    // Two idle intervals, then IPv6 traffic in [T0+180, T0+240).
    let v6_peer: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
    w.write(
        at(185, 0),
        &frames::tcp_v6(
            GW_MAC,
            HOST_MAC,
            v6_peer,
            "2001:db8::10".parse().unwrap(),
            50_000,
            443,
            TCP_SYN,
            0,
        ),
    )
    .unwrap();
    w.finish().unwrap();

    let out = Command::new(BIN)
        .args(["--config"])
        .arg(config(dir.path()))
        .arg("--replay")
        .arg(&pcap)
        .arg("--stdout")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let t = |s: u64| (T0 + s).to_string();
    let expected = [
        "version interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end tcp-flags type flow-direction action log-status pkt-srcaddr pkt-dstaddr region".to_owned(),
        format!("5 eni-0123456789abcdef0 203.0.113.5 10.0.0.10 40000 22 6 4 260 {} {} 3 IPv4 ingress ACCEPT OK 203.0.113.5 10.0.0.10 eu-west-3", t(1), t(3)),
        format!("5 eni-0123456789abcdef0 10.0.0.10 203.0.113.5 22 40000 6 2 80 {} {} 19 IPv4 egress ACCEPT OK 10.0.0.10 203.0.113.5 eu-west-3", t(1), t(3)),
        format!("5 eni-0123456789abcdef0 10.0.0.10 10.0.0.2 5353 53 17 1 58 {} {} - IPv4 egress ACCEPT OK 10.0.0.11 10.0.0.2 eu-west-3", t(10), t(10)),
        format!("5 eni-0123456789abcdef0 198.51.100.7 10.0.0.10 0 0 1 1 84 {} {} - IPv4 ingress ACCEPT OK 198.51.100.7 10.0.0.10 eu-west-3", t(20), t(20)),
        format!("5 eni-0123456789abcdef0 - - - - - - - {} {} - - - - NODATA - - eu-west-3", t(60), t(119)),
        format!("5 eni-0123456789abcdef0 - - - - - - - {} {} - - - - NODATA - - eu-west-3", t(120), t(179)),
        format!("5 eni-0123456789abcdef0 2001:db8:ffff::1 2001:db8::10 50000 443 6 1 60 {} {} 2 IPv6 ingress ACCEPT OK 2001:db8:ffff::1 2001:db8::10 eu-west-3", t(185), t(185)),
    ];
    assert_eq!(
        lines,
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert!(
        err.contains(&format!(
            "replayed 10 packets (1 skipped: not_ip 1), {} records",
            expected.len() - 1
        )),
        "{err}"
    );
}

#[test]
fn usage_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success());
    // Standalone output (no --stdout) into a directory that cannot be made: the sink's
    // startup check fails before anything is read, naming the path.
    let unwritable = dir.path().join("unwritable.toml");
    std::fs::write(
        &unwritable,
        format!(
            "{}\n[sink]\npath = \"/proc/flowlog-test/out\"\n[state]\ndir = \"{}\"\n",
            std::fs::read_to_string(&cfg).unwrap(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&unwritable)
        .arg("--replay")
        .arg(dir.path().join("missing.pcap"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc/flowlog-test/out"), "{err}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[flow_log]\nid = \"fl-1\"\nmax_aggregation_interval = \"5m\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&bad)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flow_log.account_id: is required")
            && err.contains("flow_log.max_aggregation_interval"),
        "{err}"
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("--replay")
        .arg(dir.path().join("missing.pcap"))
        .arg("--stdout")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pcap"));
}
