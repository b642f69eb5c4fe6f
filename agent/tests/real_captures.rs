//! Captures as they come from real capture setups (link-type fields with FCS bits, …):
//! each written byte by byte, replayed through the library's replay, and decoded packet
//! by packet next to tshark's reading of the same file. Under CI=true a missing tshark
//! fails the test instead of skipping the comparison.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use flowlog_agent::config::AgentSettings;
use flowlog_agent::decode::{PacketMeta, decode_captured_frame};
use flowlog_agent::pcap::PcapPackets;
use flowlog_agent::replay::{ReplayStats, replay};
use flowlog_formats::FlowRecord;
use flowlog_tests::frames::{self, TCP_ACK};

const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
/// 2024-01-01T00:00:00Z, a multiple of 60.
const T0: u32 = 1_704_067_200;

/// A little-endian microsecond pcap file with the given link-type field (link type and
/// FCS bits), one record per frame (captured whole), a millisecond apart.
fn raw_pcap(path: &Path, linktype_field: u32, frames: &[Vec<u8>]) {
    let mut bytes = Vec::new();
    for v in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65535, linktype_field] {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        let len = f.len() as u32;
        for v in [T0 + 1, 1_000 * i as u32, len, len] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        bytes.extend_from_slice(f);
    }
    std::fs::write(path, bytes).unwrap();
}

fn settings(dir: &Path) -> AgentSettings {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\n\
         region = \"eu-west-3\"\nmax_aggregation_interval = \"60s\"\n\
         [[interface]]\nname = \"eth0\"\ninterface_id = \"eni-0123456789abcdef0\"\n\
         mac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.10\"]\n",
    )
    .unwrap();
    flowlog_agent::config::load(&path).unwrap()
}

fn replay_file(dir: &Path, pcap: &Path) -> (ReplayStats, Vec<FlowRecord>) {
    let mut got = Vec::new();
    let stats = replay(&settings(dir), pcap, &mut |r| {
        got.push(r);
        Ok(())
    })
    .unwrap();
    (stats, got)
}

/// Every packet of the file as the replay decodes it (`None`: skipped).
fn decoded(pcap: &Path) -> Vec<Option<PacketMeta>> {
    let mut r = PcapPackets::open(pcap).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_ref() {
        let p = p.unwrap();
        out.push(
            p.link
                .and_then(|link| decode_captured_frame(link, p.data, p.original_len as usize).ok()),
        );
    }
    out
}

const TSHARK_FIELDS: [&str; 10] = [
    "ip.src",
    "ip.dst",
    "ip.len",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.plen",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
];

/// tshark's fields of every packet (the [`TSHARK_FIELDS`] then `extra`, empty when
/// absent); `None` (skip) when tshark is missing outside CI.
fn tshark(pcap: &Path, extra: &[&str]) -> Option<Vec<Vec<String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(pcap).args([
        "-n",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=f",
    ]);
    for f in TSHARK_FIELDS.iter().chain(extra) {
        cmd.args(["-e", f]);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => {
            let why = format!("tshark is needed (run scripts/setup-test-env.sh): {e}");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("SKIPPING: {why}");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect(),
    )
}

/// Compares every packet the replay decodes with tshark's reading of it (addresses, IP
/// length, ports); returns (packets decoded, packets tshark read).
fn agree_with_tshark(pcap: &Path, ours: &[Option<PacketMeta>]) -> Option<(usize, usize)> {
    let theirs = tshark(pcap, &[])?;
    assert_eq!(theirs.len(), ours.len(), "packets in {}", pcap.display());
    let mut agreed = 0;
    for (n, (meta, t)) in ours.iter().zip(&theirs).enumerate() {
        let Some(m) = meta else { continue };
        let field = |name: &str| {
            let i = TSHARK_FIELDS.iter().position(|f| *f == name).unwrap();
            t.get(i).cloned().unwrap_or_default()
        };
        let (src, dst, len) = if m.src.is_ipv4() {
            let len: u32 = field("ip.len").parse().unwrap();
            (field("ip.src"), field("ip.dst"), len)
        } else {
            let plen: u32 = field("ipv6.plen").parse().unwrap();
            (field("ipv6.src"), field("ipv6.dst"), 40 + plen)
        };
        let packet = n + 1;
        assert_eq!(src.parse::<IpAddr>().unwrap(), m.src, "packet {packet}");
        assert_eq!(dst.parse::<IpAddr>().unwrap(), m.dst, "packet {packet}");
        assert_eq!(len, m.ip_len, "packet {packet}");
        let (sp, dp) = match m.protocol {
            6 => (field("tcp.srcport"), field("tcp.dstport")),
            17 => (field("udp.srcport"), field("udp.dstport")),
            _ => ("0".into(), "0".into()),
        };
        assert_eq!(
            (sp.parse::<u16>().unwrap(), dp.parse::<u16>().unwrap()),
            (m.src_port, m.dst_port),
            "packet {packet}"
        );
        agreed += 1;
    }
    Some((agreed, theirs.len()))
}

fn inbound(payload: usize) -> Vec<u8> {
    frames::tcp_v4(GW_MAC, HOST_MAC, REMOTE, HOST, 40_000, 22, TCP_ACK, payload)
}

fn outbound(payload: usize) -> Vec<u8> {
    frames::tcp_v4(HOST_MAC, GW_MAC, HOST, REMOTE, 22, 40_000, TCP_ACK, payload)
}

/// The packets and bytes of the records of the flow from `src`.
fn flow_totals(records: &[FlowRecord], src: IpAddr) -> (u64, u64) {
    records
        .iter()
        .filter(|r| r.pkt_srcaddr == Some(src) && r.packets.is_some())
        .fold((0, 0), |(p, b), r| {
            (p + r.packets.unwrap_or(0), b + r.bytes.unwrap_or(0))
        })
}

/// libpcap's link-type field: the low 16 bits name the link type; with the F bit
/// (0x04000000) set, bits 28-31 count the 16-bit words of FCS ending every frame.
#[test]
fn ethernet_with_fcs_bits_in_the_link_type_field() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("fcs.pcap");
    let fcs = [0xde, 0xad, 0xbe, 0xef];
    let with_fcs = |mut f: Vec<u8>| {
        f.extend_from_slice(&fcs);
        f
    };
    // An IPv4 total length that would count the FCS too: past the frame once the FCS is
    // taken off.
    let mut lying = inbound(0);
    lying[14 + 2..14 + 4].copy_from_slice(&44u16.to_be_bytes());
    let frames = vec![
        with_fcs(inbound(100)),
        with_fcs(outbound(1000)),
        with_fcs(inbound(0)),
        with_fcs(lying),
    ];
    raw_pcap(&pcap, 0x0400_0000 | (2 << 28) | 1, &frames);

    let (stats, records) = replay_file(dir.path(), &pcap);
    assert_eq!(stats.packets, 4);
    assert_eq!(stats.skipped.get("bad_ip_header"), Some(&1), "{stats:?}");
    assert_eq!(stats.skipped.get("unsupported_link_type"), None);
    assert_eq!(flow_totals(&records, REMOTE.into()), (2, 140 + 40));
    assert_eq!(flow_totals(&records, HOST.into()), (1, 1040));

    let ours = decoded(&pcap);
    assert_eq!(ours.iter().flatten().count(), 3);
    if let Some((agreed, read)) = agree_with_tshark(&pcap, &ours) {
        assert_eq!((agreed, read), (3, 4));
        // tshark reads the same 4 bytes as the FCS.
        let theirs = tshark(&pcap, &["eth.fcs"]).unwrap();
        for t in &theirs {
            assert_eq!(t.last().map(String::as_str), Some("0xdeadbeef"), "{t:?}");
        }
    }
}

/// Bits 16-25 of the link-type field carry no FCS information and do not change the
/// link type.
#[test]
fn link_type_field_bits_without_fcs() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("bits.pcap");
    raw_pcap(&pcap, 0x0042_0001, &[inbound(10), outbound(20)]);
    let (stats, records) = replay_file(dir.path(), &pcap);
    assert_eq!(stats.packets, 2);
    assert!(stats.skipped.is_empty(), "{stats:?}");
    assert_eq!(flow_totals(&records, REMOTE.into()), (1, 50));
    // tshark refuses such a file ("network type reserved field not zero"); libpcap, and
    // the replay, ignore those bits.
    assert_eq!(decoded(&pcap).iter().flatten().count(), 2);
}

/// The IP packet inside an Ethernet frame built by `flowlog_tests::frames`.
fn ip_of(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// BSD loopback captures (`DLT_NULL`: the address family in the capturing host's byte
/// order, either one; `DLT_LOOP`: network byte order) and PPP captures (with and without
/// the address and control field, with a 2- and a 1-byte protocol) are decoded to their
/// IP packets.
#[test]
fn loopback_and_ppp_link_types() {
    let dir = tempfile::tempdir().unwrap();
    let v6 = frames::ethernet(
        GW_MAC,
        HOST_MAC,
        frames::ETHERTYPE_IPV6,
        &frames::ipv6(
            "2001:db8::5".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
            frames::PROTO_UDP,
            &frames::udp(5353, 53, 30),
        ),
    );
    let with = |head: &[u8], frame: &[u8]| [head, ip_of(frame)].concat();
    let cases: [(&str, u32, Vec<Vec<u8>>); 3] = [
        (
            "null.pcap",
            0,
            vec![
                with(&2u32.to_le_bytes(), &inbound(100)),
                with(&2u32.to_be_bytes(), &outbound(1000)),
                with(&24u32.to_le_bytes(), &v6),
                with(&28u32.to_le_bytes(), &v6),
                with(&30u32.to_be_bytes(), &v6),
                // AF_APPLETALK: not IP.
                with(&16u32.to_le_bytes(), &inbound(0)),
            ],
        ),
        (
            "loop.pcap",
            108,
            vec![
                with(&2u32.to_be_bytes(), &inbound(100)),
                with(&2u32.to_be_bytes(), &outbound(1000)),
                with(&24u32.to_be_bytes(), &v6),
                with(&28u32.to_be_bytes(), &v6),
                with(&30u32.to_be_bytes(), &v6),
                with(&16u32.to_be_bytes(), &inbound(0)),
            ],
        ),
        (
            "ppp.pcap",
            9,
            vec![
                with(&[0xff, 0x03, 0x00, 0x21], &inbound(100)),
                with(&[0x00, 0x21], &outbound(1000)),
                with(&[0xff, 0x03, 0x00, 0x57], &v6),
                with(&[0x57], &v6),
                with(&[0xff, 0x03, 0x57], &v6),
                // LCP: not IP.
                [0xff, 0x03, 0xc0, 0x21, 1, 1, 0, 4].to_vec(),
            ],
        ),
    ];
    for (name, dlt, frames) in cases {
        let pcap = dir.path().join(name);
        raw_pcap(&pcap, dlt, &frames);
        let (stats, records) = replay_file(dir.path(), &pcap);
        assert_eq!(stats.packets, 6, "{name}");
        assert_eq!(stats.skipped.get("not_ip"), Some(&1), "{name}: {stats:?}");
        assert_eq!(stats.skipped.len(), 1, "{name}: {stats:?}");
        assert_eq!(flow_totals(&records, REMOTE.into()), (1, 140), "{name}");
        assert_eq!(flow_totals(&records, HOST.into()), (1, 1040), "{name}");
        let v6_src: IpAddr = "2001:db8::5".parse().unwrap();
        assert_eq!(flow_totals(&records, v6_src), (3, 3 * 78), "{name}");

        let ours = decoded(&pcap);
        assert_eq!(ours.iter().flatten().count(), 5, "{name}");
        if let Some((agreed, read)) = agree_with_tshark(&pcap, &ours) {
            assert_eq!((agreed, read), (5, 6), "{name}");
        }
    }
}

/// An Ethernet frame from the gateway carrying `payload` under `ethertype`, behind a VLAN
/// tag when `vlan` is given.
fn eth_to_host(vlan: Option<u16>, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    match vlan {
        Some(id) => frames::ethernet_tagged(
            GW_MAC,
            HOST_MAC,
            &[(frames::ETHERTYPE_VLAN, id)],
            ethertype,
            payload,
        ),
        None => frames::ethernet(GW_MAC, HOST_MAC, ethertype, payload),
    }
}

/// MPLS label stacks (unicast and multicast `EtherTypes`, one to three labels) and PPPoE
/// sessions, bare and behind a VLAN tag, are decoded to their IP packets.
#[test]
fn mpls_and_pppoe_encapsulations() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("encap.pcap");
    let label = |bottom: bool| [0x00, 0x12, 0x30 | u8::from(bottom), 64];
    let stack = |n: usize| -> Vec<u8> { (0..n).flat_map(|i| label(i + 1 == n)).collect() };
    let pppoe = |protocol: u16, packet: &[u8]| {
        let mut b = vec![0x11, 0x00, 0x00, 0x2a];
        b.extend_from_slice(&((packet.len() + 2) as u16).to_be_bytes());
        b.extend_from_slice(&protocol.to_be_bytes());
        b.extend_from_slice(packet);
        b
    };
    let ip = inbound(100)[14..].to_vec();
    let v6 = frames::ipv6(
        "2001:db8::5".parse().unwrap(),
        "2001:db8::10".parse().unwrap(),
        frames::PROTO_UDP,
        &frames::udp(5353, 53, 30),
    );
    let mut list = Vec::new();
    for vlan in [None, Some(100)] {
        list.push(eth_to_host(vlan, 0x8847, &[stack(1), ip.clone()].concat()));
        list.push(eth_to_host(vlan, 0x8847, &[stack(3), v6.clone()].concat()));
        list.push(eth_to_host(vlan, 0x8848, &[stack(2), ip.clone()].concat()));
        list.push(eth_to_host(vlan, 0x8864, &pppoe(0x0021, &ip)));
        list.push(eth_to_host(vlan, 0x8864, &pppoe(0x0057, &v6)));
        // LCP echo in a PPPoE session: not IP.
        list.push(eth_to_host(
            vlan,
            0x8864,
            &pppoe(0xc021, &[9, 1, 0, 8, 0, 0, 0, 0]),
        ));
    }
    raw_pcap(&pcap, 1, &list);
    let (stats, records) = replay_file(dir.path(), &pcap);
    assert_eq!(stats.packets, 12);
    assert_eq!(stats.skipped.get("not_ip"), Some(&2), "{stats:?}");
    assert_eq!(stats.skipped.len(), 1, "{stats:?}");
    assert_eq!(flow_totals(&records, REMOTE.into()), (6, 6 * 140));
    let v6_src: IpAddr = "2001:db8::5".parse().unwrap();
    assert_eq!(flow_totals(&records, v6_src), (4, 4 * 78));

    let ours = decoded(&pcap);
    assert_eq!(ours.iter().flatten().count(), 10);
    assert_eq!(ours[6].and_then(|m| m.vlan), Some(100));
    if let Some((agreed, read)) = agree_with_tshark(&pcap, &ours) {
        assert_eq!((agreed, read), (10, 12));
    }
}

/// Records with an out-of-range sub-second timestamp (microseconds of 1,000,000 and more)
/// are skipped and counted; the replay goes on, warns about the first few (file and
/// packet named once each) and sums up the rest in one line.
#[test]
fn bad_records_are_skipped_with_rated_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("bad-ts.pcap");
    let list: Vec<Vec<u8>> = (0..10).map(|_| inbound(100)).collect();
    raw_pcap(&pcap, 1, &list);
    let mut bytes = std::fs::read(&pcap).unwrap();
    let record = 16 + list[0].len();
    // Packets 2, 4, 5, 6, 8 and 9: microseconds 1,000,000 and beyond.
    for n in [2usize, 4, 5, 6, 8, 9] {
        let at = 24 + (n - 1) * record + 4;
        bytes[at..at + 4].copy_from_slice(&(1_000_000 + n as u32).to_le_bytes());
    }
    std::fs::write(&pcap, &bytes).unwrap();

    let (stats, records) = replay_file(dir.path(), &pcap);
    assert_eq!(stats.packets, 10);
    assert_eq!(stats.skipped.get("bad_record"), Some(&6), "{stats:?}");
    assert_eq!(flow_totals(&records, REMOTE.into()), (4, 4 * 140));
    assert_eq!(stats.warnings.len(), 4, "{:#?}", stats.warnings);
    for (w, n) in stats.warnings.iter().zip([2, 4, 5]) {
        assert!(w.contains(&format!("packet {n} skipped")), "{w}");
        assert!(w.contains(&format!("{}", 1_000_000 + n)), "{w}");
        assert_eq!(w.matches("bad-ts.pcap").count(), 1, "{w}");
    }
    let summary = &stats.warnings[3];
    assert!(
        summary.contains("3 more packets skipped") && summary.contains("6 in all"),
        "{summary}"
    );
    assert_eq!(summary.matches("bad-ts.pcap").count(), 1, "{summary}");
}

/// Bytes never exceed a frame's wire length minus its link-layer headers, whatever the
/// encapsulation: an IP total length one byte beyond is malformed, counted once as
/// `bad_ip_header`, and adds nothing to the flow.
#[test]
fn bytes_stay_within_the_frame_under_every_encapsulation() {
    let dir = tempfile::tempdir().unwrap();
    let honest = ip_of(&inbound(100)).to_vec();
    let mut lying = honest.clone();
    lying[2..4].copy_from_slice(&(honest.len() as u16 + 1).to_be_bytes());
    let label = [0x00, 0x12, 0x31, 64];
    for (name, dlt, wrap) in [
        ("null.pcap", 0, 2u32.to_le_bytes().to_vec()),
        ("ppp.pcap", 9, vec![0xff, 0x03, 0x00, 0x21]),
        (
            "mpls.pcap",
            1,
            [&HOST_MAC[..], &GW_MAC, &[0x88, 0x47], &label].concat(),
        ),
    ] {
        let pcap = dir.path().join(name);
        let frames = vec![
            [wrap.as_slice(), &honest].concat(),
            [wrap.as_slice(), &lying].concat(),
        ];
        raw_pcap(&pcap, dlt, &frames);
        let (stats, records) = replay_file(dir.path(), &pcap);
        assert_eq!(stats.packets, 2, "{name}");
        assert_eq!(
            stats.skipped.get("bad_ip_header"),
            Some(&1),
            "{name}: {stats:?}"
        );
        assert_eq!(flow_totals(&records, REMOTE.into()), (1, 140), "{name}");
    }
}
