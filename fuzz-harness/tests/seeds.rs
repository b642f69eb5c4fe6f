//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`, built
//! with the project's own writers (frames, pcap, batches, WAL, spool, text, Parquet) so
//! that fuzzing starts from inputs the parsers accept. Not part of the normal test run:
//!
//! ```sh
//! cargo test -p flowlog-fuzz-harness --test seeds -- --ignored
//! ```
//!
//! `fuzz/run.sh` minimises the corpora afterwards, which renames what it keeps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flowlog_agent::pcap::{DLT_EN10MB, PcapWriter, Resolution};
use flowlog_agent::ship::settings::{FsyncPolicy, SpoolSettings};
use flowlog_agent::ship::spool::{Mark, Spool};
use flowlog_formats::parquet::{ParquetOptions, ParquetWriter};
use flowlog_formats::text::{GzipTextWriter, TextWriter};
use flowlog_formats::{FlowRecord, LogFormat};
use flowlog_publish::wal::{Wal, WalSettings};
use flowlog_tests::frames::{self, ETHERTYPE_IPV4, ETHERTYPE_IPV6, PROTO_TCP, PROTO_UDP};
use flowlog_transport::{encode_batch, pb};
use prost::Message;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

const V3_FORMAT: &str = "${version} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${account-id} ${type} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${pkt-srcaddr} ${pkt-dstaddr} ${protocol} ${bytes} ${packets} ${start} ${end} ${action} ${tcp-flags} ${log-status}";
const V5_FORMAT: &str = "${version} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${start} ${end} ${type} ${packets} ${bytes} ${account-id} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${region} ${az-id} ${sublocation-type} ${sublocation-id} ${action} ${tcp-flags} ${pkt-srcaddr} ${pkt-dstaddr} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${traffic-path} ${flow-direction} ${log-status}";
const V8_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${ecs-cluster-name} ${reject-reason} ${instance-tag} ${encryption-status} ${next-hop-interface-id}";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn corpus(target: &str) -> PathBuf {
    let dir = root().join("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn seed(target: &str, name: &str, data: &[u8]) {
    std::fs::write(corpus(target).join(format!("seed-{name}")), data).unwrap();
}

fn example_records() -> Vec<FlowRecord> {
    let text = std::fs::read(root().join("examples/aws-examples.log")).unwrap();
    let source =
        flowlog_formats::input::RecordSource::from_reader(std::io::Cursor::new(text), None)
            .unwrap();
    let mut records: Vec<FlowRecord> = source.map(Result::unwrap).collect();
    records.push(rich_record());
    records
}

fn rich_record() -> FlowRecord {
    FlowRecord {
        account_id: Some("123456789012".into()),
        interface_id: Some("eni-1235b8ca123456789".into()),
        srcaddr: Some("2001:db8::1".parse().unwrap()),
        dstaddr: Some("2001:db8::2".parse().unwrap()),
        srcport: Some(443),
        dstport: Some(50000),
        protocol: Some(6),
        packets: Some(10),
        bytes: Some(8400),
        start: Some(1_700_000_000),
        end: Some(1_700_000_060),
        action: Some(flowlog_formats::Action::Accept),
        log_status: Some(flowlog_formats::LogStatus::Ok),
        vpc_id: Some("vpc-abcdefab012345678".into()),
        region: Some("eu-west-1".into()),
        az_id: Some("euw1-az1".into()),
        tcp_flags: Some(19),
        traffic_type: Some(flowlog_formats::TrafficType::IPv6),
        flow_direction: Some(flowlog_formats::FlowDirection::Egress),
        traffic_path: Some(8),
        ecs_cluster_name: Some("cluster one".into()),
        reject_reason: Some("BPA".into()),
        instance_tag: Some("name=web 100%".into()),
        encryption_status: Some(1),
        next_hop_interface_id: Some("eni-0123456789abcdef0".into()),
        ..FlowRecord::default()
    }
}

fn decode_frame_and_pcap_frames() -> Vec<(&'static str, u32, Vec<u8>)> {
    let a4 = Ipv4Addr::new(10, 0, 0, 1);
    let b4 = Ipv4Addr::new(10, 0, 0, 2);
    let a6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let b6: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let tcp4 = frames::ipv4(
        a4,
        b4,
        PROTO_TCP,
        7,
        0,
        false,
        &frames::tcp(40000, 443, 0x02, 0),
    );
    let frag4 = frames::ipv4(a4, b4, PROTO_UDP, 9, 0, true, &frames::udp(53, 5353, 16));
    let later4 = frames::ipv4(a4, b4, PROTO_UDP, 9, 24, false, &[0u8; 16]);
    let opts4 = frames::ipv4_with_options(
        a4,
        b4,
        PROTO_TCP,
        8,
        0,
        false,
        &frames::IPV4_OPTION_ROUTER_ALERT,
        &frames::tcp(1, 2, 0x10, 4),
    );
    let udp6 = frames::ipv6(a6, b6, PROTO_UDP, &frames::udp(53, 5353, 8));
    let frag6 = frames::ipv6(
        a6,
        b6,
        frames::PROTO_IPV6_FRAGMENT,
        &frames::ipv6_fragment(PROTO_TCP, 0, true, 77, &frames::tcp(1, 2, 0x02, 0)),
    );
    let hop6 = frames::ipv6(
        a6,
        b6,
        frames::PROTO_IPV6_HOPOPTS,
        &frames::ipv6_options(PROTO_UDP, &frames::udp(1, 2, 0)),
    );
    vec![
        (
            "eth-tcp4",
            1,
            frames::tcp_v4(MAC_A, MAC_B, a4, b4, 40000, 443, 0x12, 20),
        ),
        (
            "eth-udp4",
            1,
            frames::udp_v4(MAC_A, MAC_B, a4, b4, 53, 5353, 30),
        ),
        (
            "eth-icmp4",
            1,
            frames::icmp_v4(MAC_A, MAC_B, a4, b4, true, 8),
        ),
        (
            "eth-tcp6",
            1,
            frames::tcp_v6(MAC_A, MAC_B, a6, b6, 40000, 443, 0x11, 0),
        ),
        (
            "eth-udp6",
            1,
            frames::udp_v6(MAC_A, MAC_B, a6, b6, 53, 5353, 12),
        ),
        (
            "eth-icmp6",
            1,
            frames::icmp_v6(MAC_A, MAC_B, a6, b6, false, 8),
        ),
        (
            "eth-frag4",
            1,
            frames::ethernet(MAC_A, MAC_B, ETHERTYPE_IPV4, &frag4),
        ),
        (
            "eth-later4",
            1,
            frames::ethernet(MAC_A, MAC_B, ETHERTYPE_IPV4, &later4),
        ),
        (
            "eth-opts4",
            1,
            frames::ethernet(MAC_A, MAC_B, ETHERTYPE_IPV4, &opts4),
        ),
        (
            "eth-frag6",
            1,
            frames::ethernet(MAC_A, MAC_B, ETHERTYPE_IPV6, &frag6),
        ),
        (
            "eth-hop6",
            1,
            frames::ethernet(MAC_A, MAC_B, ETHERTYPE_IPV6, &hop6),
        ),
        (
            "vlan-tcp4",
            1,
            frames::vlan(MAC_A, MAC_B, 42, ETHERTYPE_IPV4, &tcp4),
        ),
        (
            "qinq-udp6",
            1,
            frames::ethernet_tagged(
                MAC_A,
                MAC_B,
                &[(frames::ETHERTYPE_QINQ, 100), (frames::ETHERTYPE_VLAN, 200)],
                ETHERTYPE_IPV6,
                &udp6,
            ),
        ),
        (
            "sll-tcp4",
            113,
            frames::linux_sll(frames::SLL_OUTGOING, MAC_A, ETHERTYPE_IPV4, &tcp4),
        ),
        (
            "sll2-udp6",
            276,
            frames::linux_sll2(frames::SLL_HOST, MAC_A, 3, ETHERTYPE_IPV6, &udp6),
        ),
        ("raw-tcp4", 101, tcp4),
        ("raw-udp6", 101, udp6),
    ]
}

fn pcapng(link: u16, frames: &[&[u8]]) -> Vec<u8> {
    fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
        let len = u32::try_from(12 + body.len().next_multiple_of(4)).unwrap();
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(body);
        out.resize(out.len() + body.len().next_multiple_of(4) - body.len(), 0);
        out.extend_from_slice(&len.to_le_bytes());
    }
    let mut out = Vec::new();
    let mut shb = Vec::new();
    shb.extend_from_slice(&0x1a2b_3c4d_u32.to_le_bytes());
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&u64::MAX.to_le_bytes());
    block(&mut out, 0x0a0d_0d0a, &shb);
    let mut idb = Vec::new();
    idb.extend_from_slice(&link.to_le_bytes());
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&65535u32.to_le_bytes());
    // if_tsresol = 9 (nanoseconds), then opt_endofopt.
    idb.extend_from_slice(&[9, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0]);
    block(&mut out, 1, &idb);
    for (i, frame) in frames.iter().enumerate() {
        let ts: u64 = 1_700_000_000_000_000_000 + i as u64;
        let mut epb = Vec::new();
        epb.extend_from_slice(&0u32.to_le_bytes());
        epb.extend_from_slice(&u32::try_from(ts >> 32).unwrap().to_le_bytes());
        epb.extend_from_slice(&u32::try_from(ts & 0xffff_ffff).unwrap().to_le_bytes());
        let len = u32::try_from(frame.len()).unwrap();
        epb.extend_from_slice(&len.to_le_bytes());
        epb.extend_from_slice(&len.to_le_bytes());
        epb.extend_from_slice(frame);
        epb.resize(epb.len().next_multiple_of(4), 0);
        block(&mut out, 6, &epb);
    }
    out
}

fn nflog_message(indev: Option<u32>, outdev: Option<u32>, payload: &[u8]) -> Vec<u8> {
    fn attribute(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
        out.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut body = vec![2u8, 0, 0, 100]; // AF_INET, version 0, group 100
    attribute(&mut body, 1, &[0x08, 0x00, 1]); // NFULA_PACKET_HDR: IPv4, hook input
    if let Some(i) = indev {
        attribute(&mut body, 4, &i.to_be_bytes());
    }
    if let Some(o) = outdev {
        attribute(&mut body, 5, &o.to_be_bytes());
    }
    attribute(&mut body, 12, &7u32.to_be_bytes()); // NFULA_SEQ
    attribute(&mut body, 9, payload);
    let mut msg = Vec::new();
    msg.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
    msg.extend_from_slice(&0x0400u16.to_ne_bytes()); // NFNL_SUBSYS_ULOG << 8 | MSG_PACKET
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

fn netlink_control(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::new();
    msg.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&0u16.to_ne_bytes());
    msg.extend_from_slice(&5u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(body);
    msg
}

fn text_file(format: &LogFormat, records: &[FlowRecord]) -> Vec<u8> {
    let mut w = TextWriter::new(Vec::new(), format.clone()).unwrap();
    for r in records {
        w.write_record(r).unwrap();
    }
    w.finish().unwrap()
}

fn formats() -> Vec<(&'static str, LogFormat)> {
    vec![
        ("default", LogFormat::aws_default()),
        ("v3", LogFormat::parse(V3_FORMAT).unwrap()),
        ("v5", LogFormat::parse(V5_FORMAT).unwrap()),
        ("v8", LogFormat::parse(V8_FORMAT).unwrap()),
    ]
}

#[test]
#[ignore = "writes the seed corpora into fuzz/corpus; run by hand"]
fn write_seed_corpora() {
    let frames = decode_frame_and_pcap_frames();
    for (name, _, frame) in &frames {
        seed("decode_frame", name, frame);
    }

    // pcap: classic (micro and nano, every link type) and pcapng.
    let tmp = tempfile::tempdir().unwrap();
    for (dlt, label) in [
        (DLT_EN10MB, "eth"),
        (113, "sll"),
        (276, "sll2"),
        (101, "raw"),
    ] {
        for (resolution, res) in [(Resolution::Micro, "us"), (Resolution::Nano, "ns")] {
            let path = tmp.path().join("seed.pcap");
            let mut w = PcapWriter::create_with(&path, resolution, dlt).unwrap();
            for (i, (_, link, frame)) in frames.iter().enumerate() {
                if *link == dlt {
                    w.write(
                        Duration::from_micros(1_700_000_000_000_000 + i as u64),
                        frame,
                    )
                    .unwrap();
                }
            }
            w.finish().unwrap();
            seed(
                "pcap",
                &format!("{label}-{res}.pcap"),
                &std::fs::read(&path).unwrap(),
            );
        }
        let ng: Vec<&[u8]> = frames
            .iter()
            .filter(|(_, link, _)| *link == dlt)
            .map(|(_, _, f)| f.as_slice())
            .collect();
        seed(
            "pcap",
            &format!("{label}.pcapng"),
            &pcapng(u16::try_from(dlt).unwrap(), &ng),
        );
    }

    // nflog: logged packets (in, out, both), an ack, done, and a batch of several.
    let ip = frames::ipv4(
        Ipv4Addr::new(10, 0, 0, 1),
        Ipv4Addr::new(10, 0, 0, 2),
        PROTO_TCP,
        1,
        0,
        false,
        &frames::tcp(40000, 22, 0x02, 0),
    );
    let ip6 = frames::ipv6(
        "2001:db8::1".parse().unwrap(),
        "2001:db8::2".parse().unwrap(),
        PROTO_UDP,
        &frames::udp(5353, 53, 4),
    );
    let in_packet = nflog_message(Some(2), None, &ip);
    let out_packet = nflog_message(None, Some(3), &ip6);
    seed("nflog", "packet-in", &in_packet);
    seed("nflog", "packet-out", &out_packet);
    seed(
        "nflog",
        "packet-both",
        &nflog_message(Some(2), Some(3), &ip),
    );
    seed("nflog", "ack", &netlink_control(2, &[0, 0, 0, 0]));
    seed("nflog", "done", &netlink_control(3, &[]));
    seed(
        "nflog",
        "batch",
        &[in_packet, out_packet, netlink_control(3, &[])].concat(),
    );

    // transport: pushes of the example records.
    let records = example_records();
    for (name, slice) in [
        ("all", &records[..]),
        ("one", &records[..1]),
        ("rich", &records[records.len() - 1..]),
    ] {
        let request = pb::PushRequest {
            agent_id: "agent-1".into(),
            spool_id: 7,
            seq: 3,
            acked_below: 2,
            batch: Some(encode_batch(slice)),
        };
        seed("transport", name, &request.encode_to_vec());
    }

    // wal: segments written by the WAL itself.
    for (name, payloads) in [
        ("empty", vec![]),
        ("one", vec![Spool::encode(&records)]),
        (
            "three",
            vec![b"a".to_vec(), Vec::new(), Spool::encode(&records[..2])],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(WalSettings::new(dir.path())).unwrap();
        for p in &payloads {
            wal.append(p).unwrap();
        }
        drop(wal);
        let segment = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        seed("wal", name, &std::fs::read(segment).unwrap());
    }

    // spool: segments written by the spool itself.
    for (name, batches) in [("one", 1usize), ("three", 3)] {
        let dir = tempfile::tempdir().unwrap();
        let settings = SpoolSettings {
            dir: dir.path().join("spool"),
            max_bytes: 1 << 20,
            segment_bytes: 1 << 20,
            fsync: FsyncPolicy::Never,
        };
        let mut spool = Spool::open(&settings).unwrap();
        for i in 0..batches {
            let mark = (i == 1).then_some(Mark {
                input: 99,
                records: 2,
                finished: false,
            });
            spool.append(&records[..=i], mark, &|_| {}).unwrap();
        }
        spool.close().unwrap();
        drop(spool);
        let segment = std::fs::read_dir(&settings.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "seg"))
            .unwrap();
        seed("spool", name, &std::fs::read(segment).unwrap());
    }

    // text and parquet: the example records in several formats.
    seed(
        "text",
        "aws-examples.log",
        &std::fs::read(root().join("examples/aws-examples.log")).unwrap(),
    );
    for (name, format) in formats() {
        seed(
            "text",
            &format!("{name}.log"),
            &text_file(&format, &records),
        );
        let mut gz = GzipTextWriter::new(Vec::new(), format.clone(), 6).unwrap();
        for r in &records {
            gz.write_record(r).unwrap();
        }
        seed("text", &format!("{name}.log.gz"), &gz.finish().unwrap());
        for (variant, options) in [
            ("plain", ParquetOptions::default()),
            (
                "dict",
                ParquetOptions {
                    dictionary: true,
                    gzip_level: 1,
                    max_row_group_rows: 2,
                },
            ),
        ] {
            let mut w = ParquetWriter::new(Vec::new(), format.clone(), &options).unwrap();
            for r in &records {
                w.write_record(r).unwrap();
            }
            seed(
                "parquet",
                &format!("{name}-{variant}.parquet"),
                &w.finish().unwrap(),
            );
        }
    }

    // key: keys of every layout, a local path, and prefixes.
    for (i, key) in [
        "AWSLogs/123456789012/vpcflowlogs/us-east-1/2026/01/02/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20260102T0105Z_0123abcd.log.gz",
        "my/prefix/AWSLogs/123456789012/vpcflowlogs/eu-west-1/2026/01/02/05/123456789012_vpcflowlogs_eu-west-1_fl-1234abcd_20260102T0500Z_deadbeef.log.parquet",
        "AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=us-east-1/year=2026/month=01/day=02/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20260102T0105Z_0123abcd.log.parquet",
        "AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=us-east-1/year=2026/month=01/day=02/hour=01/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20260102T0105Z_0123abcd.log.gz",
        "C:\\downloads\\123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20260102T0105Z_Zz09.log.gz",
        "/prefix/with/slashes/",
        "hive-hourly",
    ]
    .iter()
    .enumerate()
    {
        seed("key", &format!("{i}"), key.as_bytes());
    }

    // configs: the documented examples and the packaged defaults.
    for (target, files) in [
        (
            "aggregator_config",
            [
                "docs/aggregator.example.toml",
                "packaging/config/aggregator.toml",
            ],
        ),
        (
            "agent_config",
            ["docs/agent.example.toml", "packaging/config/agent.toml"],
        ),
    ] {
        for file in files {
            let name = file.replace('/', "-");
            seed(target, &name, &std::fs::read(root().join(file)).unwrap());
        }
    }
}
