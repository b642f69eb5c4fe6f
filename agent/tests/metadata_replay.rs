//! The metadata fields (`vpc-id`, `subnet-id`, `instance-id`, `az-id`, sublocation,
//! `pkt-*-aws-service`, `traffic-path`) written by the real `flowlog-agent` binary on a
//! replayed capture: from the `[metadata]` config section, and from EC2 instance metadata
//! (IMDSv2) served by a small HTTP server on 127.0.0.1 that insists on the session token.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowlog_tests::frames::{self, TCP_ACK, TCP_SYN};
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-agent");
const ETH0_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const ETH1_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0b];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x01];
/// 2024-01-01T00:00:00Z, a multiple of 60.
const T0: u64 = 1_704_067_200;

const FORMAT: &str = "${version} ${interface-id} ${srcaddr} ${dstaddr} ${flow-direction} ${log-status} ${account-id} ${region} ${vpc-id} ${subnet-id} ${instance-id} ${az-id} ${sublocation-type} ${sublocation-id} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${traffic-path}";
const HEADER: &str = "version interface-id srcaddr dstaddr flow-direction log-status account-id region vpc-id subnet-id instance-id az-id sublocation-type sublocation-id pkt-src-aws-service pkt-dst-aws-service traffic-path";

/// An extract in the shape of AWS's ip-ranges.json: every specific range is also listed
/// under AMAZON, ranges nest and overlap.
const IP_RANGES: &str = r#"{
  "syncToken": "1704067200",
  "createDate": "2024-01-01-00-00-00",
  "prefixes": [
    {"ip_prefix": "52.94.0.0/15", "region": "GLOBAL", "service": "AMAZON", "network_border_group": "GLOBAL"},
    {"ip_prefix": "52.95.128.0/21", "region": "eu-west-3", "service": "AMAZON", "network_border_group": "eu-west-3"},
    {"ip_prefix": "52.95.128.0/21", "region": "eu-west-3", "service": "S3", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.0.0/16", "region": "eu-west-3", "service": "AMAZON", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.0.0/16", "region": "eu-west-3", "service": "EC2", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.1.0/26", "region": "eu-west-3", "service": "AMAZON", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.1.0/26", "region": "eu-west-3", "service": "ROUTE53_HEALTHCHECKS", "network_border_group": "eu-west-3"}
  ],
  "ipv6_prefixes": [
    {"ipv6_prefix": "2600:1f00::/24", "region": "GLOBAL", "service": "AMAZON", "network_border_group": "GLOBAL"},
    {"ipv6_prefix": "2600:1fa0:4000::/40", "region": "eu-west-3", "service": "AMAZON", "network_border_group": "eu-west-3"},
    {"ipv6_prefix": "2600:1fa0:4000::/40", "region": "eu-west-3", "service": "S3", "network_border_group": "eu-west-3"}
  ]
}"#;

fn at(secs: u64, millis: u64) -> Duration {
    Duration::from_secs(T0 + secs) + Duration::from_millis(millis)
}

fn t(secs: u64) -> String {
    (T0 + secs).to_string()
}

/// Writes a pcapng file with one Ethernet interface per entry of `interfaces` and the
/// frames `(interface, time, frame)`.
fn write_pcapng(path: &Path, interfaces: usize, packets: &[(u32, Duration, Vec<u8>)]) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = PcapNgWriter::new(file).unwrap();
    for _ in 0..interfaces {
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        })
        .unwrap();
    }
    for (interface, ts, frame) in packets {
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: *interface,
            timestamp: *ts,
            original_len: u32::try_from(frame.len()).unwrap(),
            data: Cow::Borrowed(frame),
            options: vec![],
        })
        .unwrap();
    }
}

fn run(config: &Path, replay: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config);
    match replay {
        Some(pcap) => cmd.arg("--replay").arg(pcap).arg("--stdout"),
        None => cmd.arg("--check-config"),
    };
    cmd.output().unwrap()
}

/// Runs a replay and returns the header and the sorted record lines.
fn replay_lines(config: &Path, pcap: &Path) -> (String, Vec<String>) {
    let out = run(config, Some(pcap));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines().map(str::to_owned);
    let header = lines.next().unwrap_or_default();
    let mut records: Vec<String> = lines.collect();
    records.sort();
    (header, records)
}

fn sorted(lines: Vec<String>) -> Vec<String> {
    let mut lines = lines;
    lines.sort();
    lines
}

#[test]
fn configured_metadata_is_written_on_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let ranges = dir.path().join("ip-ranges.json");
    std::fs::write(&ranges, IP_RANGES).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[flow_log]
id = "fl-0a1b2c3d4e5f60718"
account_id = "123456789012"
region = "eu-west-3"
max_aggregation_interval = "60s"

[output]
log_format = "{FORMAT}"

[metadata]
instance_id = "i-0c50d5961bcb2d47b"
vpc_id = "vpc-abcdefab012345678"
az_id = "euw3-az1"
ip_ranges = "{ranges}"

[[metadata.subnet]]
cidr = "10.0.1.0/24"
subnet_id = "subnet-aaaaaaaa012345678"
az_id = "euw3-az2"

[[metadata.subnet]]
cidr = "2001:db8:1::/64"
subnet_id = "subnet-aaaaaaaa012345678"
az_id = "euw3-az2"

[[metadata.subnet]]
cidr = "10.0.9.0/24"
subnet_id = "subnet-cccccccc012345678"
vpc_id = "vpc-0a1b2c3d"
sublocation_type = "outpost"
sublocation_id = "op-0a1b2c3d4e5f60718"

[[metadata.traffic_path]]
cidr = "0.0.0.0/0"
path = 8

[[metadata.traffic_path]]
cidr = "10.0.0.0/16"
path = 1

[[metadata.traffic_path]]
cidr = "52.95.128.0/21"
path = 7

[[metadata.traffic_path]]
cidr = "::/0"
path = 8

[[interface]]
name = "eth0"
interface_id = "eni-0123456789abcdef0"
mac = "02:00:00:00:00:0a"
addresses = ["10.0.1.10", "2001:db8:1::10"]

[[interface]]
name = "eth1"
interface_id = "eni-0fedcba9876543210"
mac = "02:00:00:00:00:0b"
addresses = ["192.168.7.10"]
subnet_id = "subnet-cccccccc012345678"
vpc_id = "vpc-0b1b2c3d"
"#,
            ranges = ranges.display()
        ),
    )
    .unwrap();

    let host = Ipv4Addr::new(10, 0, 1, 10);
    let host6: Ipv6Addr = "2001:db8:1::10".parse().unwrap();
    let s3 = Ipv4Addr::new(52, 95, 128, 179);
    let s3_v6: Ipv6Addr = "2600:1fa0:4000::1".parse().unwrap();
    let peer = Ipv4Addr::new(10, 0, 2, 20);
    let web = Ipv4Addr::new(198, 51, 100, 7);
    let healthcheck = Ipv4Addr::new(3, 5, 1, 10);
    let eth1 = Ipv4Addr::new(192, 168, 7, 10);
    let out0 = |dst: Ipv4Addr| frames::udp_v4(ETH0_MAC, GW_MAC, host, dst, 5000, 53, 20);
    let packets = vec![
        // eth0, interval [T0, T0+60): S3 both ways, a VPC peer, the internet, a health
        // checker, S3 over IPv6.
        (
            0,
            at(1, 0),
            frames::tcp_v4(ETH0_MAC, GW_MAC, host, s3, 40_000, 443, TCP_SYN, 0),
        ),
        (
            0,
            at(1, 1),
            frames::tcp_v4(
                GW_MAC,
                ETH0_MAC,
                s3,
                host,
                443,
                40_000,
                TCP_SYN | TCP_ACK,
                0,
            ),
        ),
        (0, at(2, 0), out0(peer)),
        (
            0,
            at(3, 0),
            frames::tcp_v4(ETH0_MAC, GW_MAC, host, web, 40_001, 80, TCP_SYN, 0),
        ),
        (0, at(4, 0), out0(healthcheck)),
        (
            0,
            at(5, 0),
            frames::tcp_v6(ETH0_MAC, GW_MAC, host6, s3_v6, 40_002, 443, TCP_SYN, 0),
        ),
        // eth1 (subnet and VPC set on its [[interface]]; an Outpost subnet): to eth0.
        (
            1,
            at(6, 0),
            frames::udp_v4(ETH1_MAC, GW_MAC, eth1, host, 5000, 53, 20),
        ),
        // eth0 again after an idle interval: a NODATA row in between.
        (0, at(125, 0), out0(peer)),
    ];
    let pcap = dir.path().join("two-interfaces.pcapng");
    write_pcapng(&pcap, 2, &packets);

    let (header, records) = replay_lines(&config, &pcap);
    assert_eq!(header, HEADER);
    let eth0 = "eni-0123456789abcdef0";
    let ids0 = "123456789012 eu-west-3 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b euw3-az2 - -";
    let eth1_id = "eni-0fedcba9876543210";
    let ids1 = "123456789012 eu-west-3 vpc-0b1b2c3d subnet-cccccccc012345678 i-0c50d5961bcb2d47b - outpost op-0a1b2c3d4e5f60718";
    let mut expected = vec![
        format!("5 {eth0} 10.0.1.10 52.95.128.179 egress OK {ids0} - S3 7"),
        format!("5 {eth0} 52.95.128.179 10.0.1.10 ingress OK {ids0} S3 - -"),
        format!("5 {eth0} 10.0.1.10 10.0.2.20 egress OK {ids0} - - 1"),
        format!("5 {eth0} 10.0.1.10 198.51.100.7 egress OK {ids0} - - 8"),
        format!("5 {eth0} 10.0.1.10 3.5.1.10 egress OK {ids0} - ROUTE53_HEALTHCHECKS 8"),
        format!("5 {eth0} 2001:db8:1::10 2600:1fa0:4000::1 egress OK {ids0} - S3 8"),
        format!("5 {eth0} - - - NODATA {ids0} - - -"),
        format!("5 {eth0} 10.0.1.10 10.0.2.20 egress OK {ids0} - - 1"),
        format!("5 {eth1_id} 192.168.7.10 10.0.1.10 egress OK {ids1} - - 1"),
    ];
    // eth1's table runs until the end of the capture too: idle intervals are NODATA rows.
    let eth1_nodata = records
        .iter()
        .filter(|r| r.starts_with(&format!("5 {eth1_id} - - - NODATA ")))
        .count();
    assert!(eth1_nodata >= 1, "{records:#?}");
    for _ in 0..eth1_nodata {
        expected.push(format!("5 {eth1_id} - - - NODATA {ids1} - - -"));
    }
    assert_eq!(records, sorted(expected), "interval starts: {}", t(0));
}

// ------------------------------------------------------------------------------------
// IMDSv2 served on loopback
// ------------------------------------------------------------------------------------

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    /// The request carried the issued session token.
    token: bool,
    status: u16,
}

/// A small IMDSv2 server on 127.0.0.1: `PUT /latest/api/token` (requires the TTL header)
/// issues a token; every `GET` without that token is refused with 401.
struct FakeImds {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

const TOKEN: &str = "AQAEAK7f3sWm-test-session-token==";

impl FakeImds {
    fn start(answers: Vec<(&'static str, String)>) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let answers = answers.clone();
                let log = Arc::clone(&log);
                std::thread::spawn(move || serve(stream, &answers, &log));
            }
        });
        FakeImds { port, seen }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves the requests of one connection (keep-alive) until the client closes it.
fn serve(stream: TcpStream, answers: &[(&str, String)], log: &Mutex<Vec<Seen>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let token = header("x-aws-ec2-metadata-token") == Some(TOKEN);
        let (status, extra, content) = if method == "PUT" && path == "/latest/api/token" {
            match header("x-aws-ec2-metadata-token-ttl-seconds") {
                Some(ttl) => (
                    200,
                    format!("x-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"),
                    TOKEN.to_owned(),
                ),
                None => (400, String::new(), String::new()),
            }
        } else if method != "GET" {
            (405, String::new(), String::new())
        } else if !token {
            (401, String::new(), String::new())
        } else {
            match answers.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => (200, String::new(), body.clone()),
                None => (404, String::new(), String::new()),
            }
        };
        log.lock().unwrap().push(Seen {
            method,
            path,
            token,
            status,
        });
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            _ => "Method Not Allowed",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{extra}\r\n{content}",
            content.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn imds_answers() -> Vec<(&'static str, String)> {
    let mac = "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:0a";
    let document = r#"{
  "accountId" : "210987654321",
  "architecture" : "x86_64",
  "availabilityZone" : "eu-central-1b",
  "imageId" : "ami-0a1b2c3d4e5f60718",
  "instanceId" : "i-0feedface0000beef",
  "instanceType" : "t3.micro",
  "pendingTime" : "2024-01-01T00:00:00Z",
  "privateIp" : "10.1.2.10",
  "region" : "eu-central-1",
  "version" : "2017-09-30"
}"#;
    vec![
        (
            "/latest/dynamic/instance-identity/document",
            document.to_owned(),
        ),
        (
            "/latest/meta-data/placement/availability-zone-id",
            "euc1-az3".to_owned(),
        ),
        (
            "/latest/meta-data/network/interfaces/macs/",
            "02:00:00:00:00:0a/\n".to_owned(),
        ),
        (
            leak(format!("{mac}/interface-id")),
            "eni-0aaaabbbbccccdddd".to_owned(),
        ),
        (
            leak(format!("{mac}/subnet-id")),
            "subnet-0aaaabbbbccccdddd".to_owned(),
        ),
        (
            leak(format!("{mac}/vpc-id")),
            "vpc-0aaaabbbbccccdddd".to_owned(),
        ),
    ]
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// A raw GET with optional token header; returns the status code.
fn raw_get(port: u16, path: &str, token: Option<&str>) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let token = token
        .map(|t| format!("x-aws-ec2-metadata-token: {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{token}connection: close\r\n\r\n"
    )
    .unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn imds_config(dir: &Path, endpoint: &str, extra: &str) -> PathBuf {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"[flow_log]
id = "fl-0a1b2c3d4e5f60718"
max_aggregation_interval = "60s"

[output]
log_format = "{FORMAT}"

[metadata]
imds = true
imds_endpoint = "{endpoint}"
imds_timeout = "2s"
{extra}
[[interface]]
name = "eth0"
mac = "02:00:00:00:00:0a"
addresses = ["10.1.2.10"]
"#
        ),
    )
    .unwrap();
    config
}

#[test]
fn imds_discovery_fills_the_records_and_configured_values_win() {
    let imds = FakeImds::start(imds_answers());
    // The server is strict: no token, no metadata.
    assert_eq!(
        raw_get(
            imds.port,
            "/latest/dynamic/instance-identity/document",
            None
        ),
        401
    );
    assert_eq!(
        raw_get(
            imds.port,
            "/latest/dynamic/instance-identity/document",
            Some("forged")
        ),
        401
    );
    assert_eq!(
        raw_get(
            imds.port,
            "/latest/dynamic/instance-identity/document",
            Some(TOKEN)
        ),
        200
    );
    imds.seen.lock().unwrap().clear();

    let dir = tempfile::tempdir().unwrap();
    // The AZ id is configured: it beats IMDS's euc1-az3.
    let config = imds_config(dir.path(), &imds.endpoint(), "az_id = \"euc1-az1\"\n");
    let host = Ipv4Addr::new(10, 1, 2, 10);
    let remote = Ipv4Addr::new(198, 51, 100, 7);
    let pcap = dir.path().join("one.pcapng");
    write_pcapng(
        &pcap,
        1,
        &[
            (
                0,
                at(1, 0),
                frames::tcp_v4(ETH0_MAC, GW_MAC, host, remote, 40_000, 443, TCP_SYN, 0),
            ),
            (
                0,
                at(1, 5),
                frames::tcp_v4(
                    GW_MAC,
                    ETH0_MAC,
                    remote,
                    host,
                    443,
                    40_000,
                    TCP_SYN | TCP_ACK,
                    0,
                ),
            ),
        ],
    );
    let (header, records) = replay_lines(&config, &pcap);
    assert_eq!(header, HEADER);
    let ids = "210987654321 eu-central-1 vpc-0aaaabbbbccccdddd subnet-0aaaabbbbccccdddd i-0feedface0000beef euc1-az1 - -";
    assert_eq!(
        records,
        sorted(vec![
            format!("5 eni-0aaaabbbbccccdddd 10.1.2.10 198.51.100.7 egress OK {ids} - - -"),
            format!("5 eni-0aaaabbbbccccdddd 198.51.100.7 10.1.2.10 ingress OK {ids} - - -"),
        ])
    );
    let seen = imds.seen();
    assert_eq!(
        seen.first()
            .map(|s| (s.method.as_str(), s.path.as_str(), s.status)),
        Some(("PUT", "/latest/api/token", 200)),
        "{seen:#?}"
    );
    let gets: Vec<&Seen> = seen.iter().filter(|s| s.method == "GET").collect();
    assert!(gets.iter().all(|s| s.token && s.status != 401), "{seen:#?}");
    for path in [
        "/latest/dynamic/instance-identity/document",
        "/latest/meta-data/placement/availability-zone-id",
        "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:0a/interface-id",
        "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:0a/subnet-id",
        "/latest/meta-data/network/interfaces/macs/02:00:00:00:00:0a/vpc-id",
    ] {
        assert!(
            gets.iter().any(|s| s.path == path && s.status == 200),
            "{path} not asked: {seen:#?}"
        );
    }
}

#[test]
fn imds_failure_stops_the_agent_with_the_url_and_the_cause() {
    // Nothing listens on a port whose listener was just dropped.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = imds_config(dir.path(), &format!("http://127.0.0.1:{port}"), "");
    let out = run(&config, None);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "metadata.imds: instance metadata discovery failed: PUT http://127.0.0.1:{port}/latest/api/token"
        )) && err.to_lowercase().contains("refused"),
        "{err}"
    );

    // A server that answers but has no identity document for this token holder.
    let imds = FakeImds::start(Vec::new());
    let config = imds_config(dir.path(), &imds.endpoint(), "");
    let out = run(&config, None);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "GET {}/latest/dynamic/instance-identity/document answered HTTP 404",
            imds.endpoint()
        )),
        "{err}"
    );
}
