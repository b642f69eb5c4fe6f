//! Ground truth for the agent's records. One capture file holds known flows: TCP sessions
//! over IPv4 and IPv6 (handshake, data, teardown both ways, a reset), UDP both ways, ICMP
//! and ICMPv6 echo, GRE and ESP, 802.1Q and QinQ tags, IPv4 options, IPv4 and IPv6
//! fragments (matched and orphaned), IPv6 extension headers, TSO/BIG TCP super-packets,
//! traffic from secondary and routed addresses, and flows that span intervals across an
//! idle gap. The real `flowlog-agent --replay` reads it, and:
//!
//! 1. every record and every field is compared with expectations written out here by hand;
//! 2. Debian's `tshark` reads the same file, the test aggregates its per-packet fields per
//!    interval, direction and 5-tuple, and packets, bytes, tcp-flags, start and end must
//!    agree exactly with the agent's records, NODATA intervals included. Under CI=true a
//!    missing `tshark` fails the test (scripts/setup-test-env.sh installs it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flowlog_agent::pcap::PcapWriter;
use flowlog_tests::frames::{
    self, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, PROTO_ESP, PROTO_GRE,
    PROTO_ICMP, PROTO_ICMPV6, PROTO_IPV6_FRAGMENT, PROTO_IPV6_HOPOPTS, PROTO_TCP, PROTO_UDP,
    TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN,
};

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-agent");

/// 2024-01-01T00:00:00Z, a multiple of 60: intervals are [T0 + 60k, T0 + 60k + 60).
const T0: u64 = 1_704_067_200;
const INTERVAL: u64 = 60;

/// The host's interface, its gateway, and another machine on the same link.
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const HOST_MAC_TEXT: &str = "02:00:00:00:00:0a";

/// Primary and secondary IPv4 address; 10.244.1.0/24 is routed to the host (pods).
const PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const SECONDARY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);

/// Every field the agent fills, in the spec's table order (version 5).
const FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${tcp-flags} ${type} ${pkt-srcaddr} ${pkt-dstaddr} ${region} ${flow-direction}";
const HEADER: &str = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status tcp-flags type pkt-srcaddr pkt-dstaddr region flow-direction";

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

fn primary_v6() -> Ipv6Addr {
    v6("2001:db8::10")
}

fn secondary_v6() -> Ipv6Addr {
    v6("2001:db8::11")
}

/// `ms` milliseconds after T0.
fn at(ms: u64) -> Duration {
    Duration::from_millis(T0 * 1000 + ms)
}

/// Which way a frame crosses the host's interface.
#[derive(Clone, Copy)]
enum Way {
    /// Sent by the host (source MAC = the interface's).
    Out,
    /// Received from the gateway.
    In,
    /// Received from another machine on the link.
    InFromPeer,
}

impl Way {
    fn macs(self) -> ([u8; 6], [u8; 6]) {
        match self {
            Way::Out => (HOST_MAC, GW_MAC),
            Way::In => (GW_MAC, HOST_MAC),
            Way::InFromPeer => (PEER_MAC, HOST_MAC),
        }
    }
}

/// The frames of the capture, in any order; written sorted by time.
#[derive(Default)]
struct Capture {
    frames: Vec<(Duration, Vec<u8>)>,
}

impl Capture {
    fn add(&mut self, ms: u64, frame: Vec<u8>) {
        self.frames.push((at(ms), frame));
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp4(
        &mut self,
        ms: u64,
        way: Way,
        src: (Ipv4Addr, u16),
        dst: (Ipv4Addr, u16),
        flags: u8,
        payload: usize,
    ) {
        let (smac, dmac) = way.macs();
        let f = frames::tcp_v4(smac, dmac, src.0, dst.0, src.1, dst.1, flags, payload);
        self.add(ms, f);
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp6(
        &mut self,
        ms: u64,
        way: Way,
        src: (Ipv6Addr, u16),
        dst: (Ipv6Addr, u16),
        flags: u8,
        payload: usize,
    ) {
        let (smac, dmac) = way.macs();
        let f = frames::tcp_v6(smac, dmac, src.0, dst.0, src.1, dst.1, flags, payload);
        self.add(ms, f);
    }

    fn udp4(&mut self, ms: u64, way: Way, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), n: usize) {
        let (smac, dmac) = way.macs();
        let f = frames::udp_v4(smac, dmac, src.0, dst.0, src.1, dst.1, n);
        self.add(ms, f);
    }

    /// An IPv4 packet of any protocol, `payload` as given, untagged.
    fn ip4(&mut self, ms: u64, way: Way, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) {
        let (smac, dmac) = way.macs();
        let ip = frames::ipv4(src, dst, proto, 0x0101, 0, false, payload);
        self.add(ms, frames::ethernet(smac, dmac, ETHERTYPE_IPV4, &ip));
    }

    /// An IPv6 packet whose payload starts with `next_header`, untagged.
    fn ip6(&mut self, ms: u64, way: Way, src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) {
        let (smac, dmac) = way.macs();
        let ip = frames::ipv6(src, dst, next, payload);
        self.add(ms, frames::ethernet(smac, dmac, ETHERTYPE_IPV6, &ip));
    }

    fn write(mut self, path: &Path) -> usize {
        self.frames.sort_by_key(|(t, _)| *t);
        let mut w = PcapWriter::create(path).unwrap();
        for (t, f) in &self.frames {
            w.write(*t, f).unwrap();
        }
        w.finish().unwrap();
        self.frames.len()
    }
}

/// The capture with known flows. Returns the number of frames written.
fn write_capture(path: &Path) -> usize {
    let mut c = Capture::default();
    let client = Ipv4Addr::new(203, 0, 113, 5);
    let web = Ipv4Addr::new(198, 51, 100, 20);
    let dns = Ipv4Addr::new(10, 0, 0, 2);
    let pinger = Ipv4Addr::new(198, 51, 100, 7);
    let gre_peer = Ipv4Addr::new(192, 0, 2, 50);
    let esp_peer = Ipv4Addr::new(192, 0, 2, 60);
    let far = Ipv4Addr::new(192, 0, 2, 99);
    let frag_dst = Ipv4Addr::new(192, 0, 2, 80);
    let frag_src = Ipv4Addr::new(192, 0, 2, 81);
    let ntp = Ipv4Addr::new(192, 0, 2, 123);
    let db = Ipv4Addr::new(192, 0, 2, 200);
    let bulk = Ipv4Addr::new(203, 0, 113, 9);

    // ---- interval 0: [T0, T0 + 60) ----

    // SSH from a client: handshake, data both ways, FIN from each side.
    let ssh_in = (client, 40_000);
    let ssh_host = (PRIMARY, 22);
    c.tcp4(1_000, Way::In, ssh_in, ssh_host, TCP_SYN, 0);
    c.tcp4(1_001, Way::Out, ssh_host, ssh_in, TCP_SYN | TCP_ACK, 0);
    c.tcp4(1_002, Way::In, ssh_in, ssh_host, TCP_ACK, 0);
    c.tcp4(2_000, Way::In, ssh_in, ssh_host, TCP_PSH | TCP_ACK, 100);
    c.tcp4(2_100, Way::Out, ssh_host, ssh_in, TCP_PSH | TCP_ACK, 300);
    c.tcp4(2_200, Way::In, ssh_in, ssh_host, TCP_ACK, 0);
    c.tcp4(3_000, Way::In, ssh_in, ssh_host, TCP_FIN | TCP_ACK, 0);
    c.tcp4(3_001, Way::Out, ssh_host, ssh_in, TCP_ACK, 0);
    c.tcp4(3_002, Way::Out, ssh_host, ssh_in, TCP_FIN | TCP_ACK, 0);
    c.tcp4(3_500, Way::In, ssh_in, ssh_host, TCP_ACK, 0);

    // A connection attempt answered with a reset.
    c.tcp4(5_000, Way::Out, (PRIMARY, 41_000), (web, 443), TCP_SYN, 0);
    c.tcp4(
        5_200,
        Way::In,
        (web, 443),
        (PRIMARY, 41_000),
        TCP_RST | TCP_ACK,
        0,
    );

    // DNS from the secondary address, and its answer.
    c.udp4(10_000, Way::Out, (SECONDARY, 5353), (dns, 53), 30);
    c.udp4(10_050, Way::In, (dns, 53), (SECONDARY, 5353), 120);

    // Ping: the request 802.1Q-tagged, the reply QinQ-tagged.
    let request = frames::ipv4(
        pinger,
        PRIMARY,
        PROTO_ICMP,
        7,
        0,
        false,
        &frames::icmp_echo(true, 1, 1, 56),
    );
    c.add(
        20_000,
        frames::vlan(GW_MAC, HOST_MAC, 42, ETHERTYPE_IPV4, &request),
    );
    let reply = frames::ipv4(
        PRIMARY,
        pinger,
        PROTO_ICMP,
        8,
        0,
        false,
        &frames::icmp_echo(false, 1, 1, 56),
    );
    c.add(
        20_001,
        frames::ethernet_tagged(
            HOST_MAC,
            GW_MAC,
            &[(ETHERTYPE_QINQ, 100), (ETHERTYPE_VLAN, 42)],
            ETHERTYPE_IPV4,
            &reply,
        ),
    );
    // ARP: not IP, skipped.
    c.add(
        21_000,
        frames::ethernet(GW_MAC, [0xff; 6], frames::ETHERTYPE_ARP, &[0; 28]),
    );

    // GRE out (an experimental protocol type inside, so nothing is dissected further) and
    // ESP in from another machine on the link.
    let mut gre = vec![0, 0, 0x88, 0xb5];
    gre.resize(4 + 100, 0x47);
    c.ip4(30_000, Way::Out, PRIMARY, gre_peer, PROTO_GRE, &gre);
    c.ip4(31_000, Way::Out, PRIMARY, gre_peer, PROTO_GRE, &gre);
    let mut esp = vec![0, 0, 0x10, 0x01, 0, 0, 0, 1];
    esp.resize(8 + 64, 0xe5);
    c.ip4(32_000, Way::InFromPeer, esp_peer, PRIMARY, PROTO_ESP, &esp);

    // A pod behind the host (routed prefix) sends with a Router Alert option; the answer
    // comes back without options.
    let mut dgram = frames::udp(6000, 7000, 20);
    frames::set_transport_checksum(POD.into(), far.into(), PROTO_UDP, &mut dgram);
    let ip = frames::ipv4_with_options(
        POD,
        far,
        PROTO_UDP,
        3,
        0,
        false,
        &frames::IPV4_OPTION_ROUTER_ALERT,
        &dgram,
    );
    c.add(
        40_000,
        frames::ethernet(HOST_MAC, GW_MAC, ETHERTYPE_IPV4, &ip),
    );
    c.udp4(40_500, Way::In, (far, 7000), (POD, 6000), 12);

    // A 2008-byte UDP datagram sent in two fragments, then an orphan later fragment of a
    // datagram whose first fragment never arrives.
    let datagram = frames::udp(5000, 5001, 2000);
    let first = frames::ipv4(
        PRIMARY,
        frag_dst,
        PROTO_UDP,
        0x1111,
        0,
        true,
        &datagram[..1480],
    );
    let second = frames::ipv4(
        PRIMARY,
        frag_dst,
        PROTO_UDP,
        0x1111,
        1480,
        false,
        &datagram[1480..],
    );
    c.add(
        45_000,
        frames::ethernet(HOST_MAC, GW_MAC, ETHERTYPE_IPV4, &first),
    );
    c.add(
        45_001,
        frames::ethernet(HOST_MAC, GW_MAC, ETHERTYPE_IPV4, &second),
    );
    let orphan = frames::ipv4(frag_src, PRIMARY, PROTO_UDP, 0x2222, 1480, false, &[0; 100]);
    c.add(
        46_000,
        frames::ethernet(GW_MAC, HOST_MAC, ETHERTYPE_IPV4, &orphan),
    );

    // A TSO / BIG TCP super-packet captured on the host: IPv4 total length 0, 80,040 bytes.
    let mut big = frames::tcp_v4(
        HOST_MAC,
        GW_MAC,
        PRIMARY,
        bulk,
        443,
        50_123,
        TCP_PSH | TCP_ACK,
        80_000,
    );
    big[14 + 2..14 + 4].copy_from_slice(&[0, 0]);
    big[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let sum = frames::internet_checksum(&big[14..14 + 20]);
    big[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    c.add(50_000, big);

    // NTP, a flow that comes back in intervals 1 and 4.
    let ntp_host = (PRIMARY, 123);
    c.udp4(55_000, Way::Out, ntp_host, (ntp, 123), 48);
    c.udp4(55_010, Way::In, (ntp, 123), ntp_host, 48);

    // ---- interval 1: [T0 + 60, T0 + 120) ----

    c.udp4(65_000, Way::Out, ntp_host, (ntp, 123), 48);
    c.udp4(65_010, Way::In, (ntp, 123), ntp_host, 48);

    // HTTPS over IPv6 from a client, closed by the host first.
    let client6 = (v6("2001:db8:ffff::1"), 50_000);
    let https6 = (primary_v6(), 443);
    c.tcp6(61_000, Way::In, client6, https6, TCP_SYN, 0);
    c.tcp6(61_001, Way::Out, https6, client6, TCP_SYN | TCP_ACK, 0);
    c.tcp6(61_002, Way::In, client6, https6, TCP_ACK, 0);
    c.tcp6(62_000, Way::In, client6, https6, TCP_PSH | TCP_ACK, 200);
    c.tcp6(62_100, Way::Out, https6, client6, TCP_PSH | TCP_ACK, 1000);
    c.tcp6(63_000, Way::Out, https6, client6, TCP_FIN | TCP_ACK, 0);
    c.tcp6(63_100, Way::In, client6, https6, TCP_FIN | TCP_ACK, 0);
    c.tcp6(63_200, Way::Out, https6, client6, TCP_ACK, 0);

    // ICMPv6 echo from the host and its reply.
    let pinged6 = v6("2001:db8:ffff::2");
    let (smac, dmac) = Way::Out.macs();
    c.add(
        70_000,
        frames::icmp_v6(smac, dmac, primary_v6(), pinged6, true, 56),
    );
    let (smac, dmac) = Way::In.macs();
    c.add(
        70_010,
        frames::icmp_v6(smac, dmac, pinged6, primary_v6(), false, 56),
    );

    // UDP from the secondary IPv6 address behind a Hop-by-Hop Options header.
    let dhcp6 = v6("2001:db8:ffff::3");
    let mut dgram = frames::udp(546, 547, 20);
    frames::set_transport_checksum(secondary_v6().into(), dhcp6.into(), PROTO_UDP, &mut dgram);
    let hbh = frames::ipv6_options(PROTO_UDP, &dgram);
    c.ip6(
        72_000,
        Way::Out,
        secondary_v6(),
        dhcp6,
        PROTO_IPV6_HOPOPTS,
        &hbh,
    );

    // A 1808-byte UDP datagram received in two IPv6 fragments, and an orphan later
    // fragment behind a Hop-by-Hop header.
    let sender6 = v6("2001:db8:ffff::4");
    let datagram = frames::udp(6000, 6001, 1800);
    let first = frames::ipv6_fragment(PROTO_UDP, 0, true, 0xdead_beef, &datagram[..1232]);
    let second = frames::ipv6_fragment(PROTO_UDP, 1232, false, 0xdead_beef, &datagram[1232..]);
    c.ip6(
        73_000,
        Way::In,
        sender6,
        primary_v6(),
        PROTO_IPV6_FRAGMENT,
        &first,
    );
    c.ip6(
        73_001,
        Way::In,
        sender6,
        primary_v6(),
        PROTO_IPV6_FRAGMENT,
        &second,
    );
    let orphan = frames::ipv6_options(
        PROTO_IPV6_FRAGMENT,
        &frames::ipv6_fragment(PROTO_UDP, 1232, false, 7, &[0; 64]),
    );
    c.ip6(
        74_000,
        Way::In,
        v6("2001:db8:ffff::5"),
        primary_v6(),
        PROTO_IPV6_HOPOPTS,
        &orphan,
    );

    // An IPv6 BIG TCP super-packet: payload length 0, 70,060 bytes.
    let mut big6 = frames::tcp_v6(
        HOST_MAC,
        GW_MAC,
        primary_v6(),
        v6("2001:db8:ffff::1"),
        443,
        50_001,
        TCP_ACK,
        70_000,
    );
    big6[14 + 4..14 + 6].copy_from_slice(&[0, 0]);
    c.add(75_000, big6);

    // A database connection opened now, used and closed after a two-interval silence.
    let db_host = (PRIMARY, 45_000);
    let db_srv = (db, 5432);
    c.tcp4(100_000, Way::Out, db_host, db_srv, TCP_SYN, 0);
    c.tcp4(100_001, Way::In, db_srv, db_host, TCP_SYN | TCP_ACK, 0);
    c.tcp4(100_002, Way::Out, db_host, db_srv, TCP_ACK, 0);

    // ---- intervals 2 and 3: [T0 + 120, T0 + 240), nothing at all ----

    // ---- interval 4: [T0 + 240, ...) ----

    c.tcp4(245_000, Way::Out, db_host, db_srv, TCP_PSH | TCP_ACK, 500);
    c.tcp4(245_100, Way::In, db_srv, db_host, TCP_PSH | TCP_ACK, 50);
    c.tcp4(250_000, Way::Out, db_host, db_srv, TCP_FIN | TCP_ACK, 0);
    c.tcp4(250_100, Way::In, db_srv, db_host, TCP_FIN | TCP_ACK, 0);
    c.tcp4(250_200, Way::Out, db_host, db_srv, TCP_ACK, 0);
    c.udp4(251_000, Way::Out, ntp_host, (ntp, 123), 48);
    c.udp4(251_010, Way::In, (ntp, 123), ntp_host, 48);

    c.write(path)
}

/// The records the capture must give, written by hand from the frames above. Each line is
/// `srcaddr dstaddr srcport dstport protocol packets bytes start end tcp-flags type
/// pkt-srcaddr pkt-dstaddr flow-direction`, with start and end in seconds after T0; a
/// line `NODATA start end` is an idle interval.
const EXPECTED: &[&str] = &[
    // Interval 0. SSH: in SYN, ACK, 140-byte data, ACK, FIN, ACK (5 × 40 + 140); out
    // SYN-ACK, 340-byte data, ACK, FIN (3 × 40 + 340). Client side SYN|FIN = 3, server side
    // SYN-ACK|FIN = 19.
    "203.0.113.5 10.0.0.10 40000 22 6 6 340 1 3 3 IPv4 203.0.113.5 10.0.0.10 ingress",
    "10.0.0.10 203.0.113.5 22 40000 6 4 460 1 3 19 IPv4 10.0.0.10 203.0.113.5 egress",
    // Reset: SYN out (2), RST-ACK in (4; ACK without SYN adds nothing).
    "10.0.0.10 198.51.100.20 41000 443 6 1 40 5 5 2 IPv4 10.0.0.10 198.51.100.20 egress",
    "198.51.100.20 10.0.0.10 443 41000 6 1 40 5 5 4 IPv4 198.51.100.20 10.0.0.10 ingress",
    // DNS from the secondary address: the interface side shows the primary (20 + 8 + 30,
    // 20 + 8 + 120).
    "10.0.0.10 10.0.0.2 5353 53 17 1 58 10 10 - IPv4 10.0.0.11 10.0.0.2 egress",
    "10.0.0.2 10.0.0.10 53 5353 17 1 148 10 10 - IPv4 10.0.0.2 10.0.0.11 ingress",
    // Ping through VLAN tags: 20 + 8 + 56 each way, ports 0.
    "198.51.100.7 10.0.0.10 0 0 1 1 84 20 20 - IPv4 198.51.100.7 10.0.0.10 ingress",
    "10.0.0.10 198.51.100.7 0 0 1 1 84 20 20 - IPv4 10.0.0.10 198.51.100.7 egress",
    // GRE: 2 × (20 + 104); ESP: 20 + 72.
    "10.0.0.10 192.0.2.50 0 0 47 2 248 30 31 - IPv4 10.0.0.10 192.0.2.50 egress",
    "192.0.2.60 10.0.0.10 0 0 50 1 92 32 32 - IPv4 192.0.2.60 10.0.0.10 ingress",
    // Pod traffic: 24-byte header with the option + 8 + 20; the answer 20 + 8 + 12.
    "10.0.0.10 192.0.2.99 6000 7000 17 1 52 40 40 - IPv4 10.244.1.7 192.0.2.99 egress",
    "192.0.2.99 10.0.0.10 7000 6000 17 1 40 40 40 - IPv4 192.0.2.99 10.244.1.7 ingress",
    // Fragments: 1500 + (20 + 528) on the datagram's ports; the orphan on ports 0.
    "10.0.0.10 192.0.2.80 5000 5001 17 2 2048 45 45 - IPv4 10.0.0.10 192.0.2.80 egress",
    "192.0.2.81 10.0.0.10 0 0 17 1 120 46 46 - IPv4 192.0.2.81 10.0.0.10 ingress",
    // The super-packet: 20 + 20 + 80,000 bytes, PSH|ACK counts nothing.
    "10.0.0.10 203.0.113.9 443 50123 6 1 80040 50 50 0 IPv4 10.0.0.10 203.0.113.9 egress",
    // NTP: 20 + 8 + 48 each way.
    "10.0.0.10 192.0.2.123 123 123 17 1 76 55 55 - IPv4 10.0.0.10 192.0.2.123 egress",
    "192.0.2.123 10.0.0.10 123 123 17 1 76 55 55 - IPv4 192.0.2.123 10.0.0.10 ingress",
    // Interval 1. NTP again.
    "10.0.0.10 192.0.2.123 123 123 17 1 76 65 65 - IPv4 10.0.0.10 192.0.2.123 egress",
    "192.0.2.123 10.0.0.10 123 123 17 1 76 65 65 - IPv4 192.0.2.123 10.0.0.10 ingress",
    // HTTPS over IPv6: in SYN, ACK, 260-byte data, FIN (3 × 60 + 260); out SYN-ACK,
    // 1060-byte data, FIN, ACK (3 × 60 + 1060).
    "2001:db8:ffff::1 2001:db8::10 50000 443 6 4 440 61 63 3 IPv6 2001:db8:ffff::1 2001:db8::10 ingress",
    "2001:db8::10 2001:db8:ffff::1 443 50000 6 4 1240 61 63 19 IPv6 2001:db8::10 2001:db8:ffff::1 egress",
    // ICMPv6 echo: 40 + 8 + 56 each way.
    "2001:db8::10 2001:db8:ffff::2 0 0 58 1 104 70 70 - IPv6 2001:db8::10 2001:db8:ffff::2 egress",
    "2001:db8:ffff::2 2001:db8::10 0 0 58 1 104 70 70 - IPv6 2001:db8:ffff::2 2001:db8::10 ingress",
    // From the secondary IPv6 address, behind Hop-by-Hop: 40 + 8 + 8 + 20.
    "2001:db8::10 2001:db8:ffff::3 546 547 17 1 76 72 72 - IPv6 2001:db8::11 2001:db8:ffff::3 egress",
    // IPv6 fragments: (40 + 8 + 1232) + (40 + 8 + 576); the orphan 40 + 8 + 8 + 64.
    "2001:db8:ffff::4 2001:db8::10 6000 6001 17 2 1904 73 73 - IPv6 2001:db8:ffff::4 2001:db8::10 ingress",
    "2001:db8:ffff::5 2001:db8::10 0 0 17 1 120 74 74 - IPv6 2001:db8:ffff::5 2001:db8::10 ingress",
    // The IPv6 super-packet: 40 + 20 + 70,000.
    "2001:db8::10 2001:db8:ffff::1 443 50001 6 1 70060 75 75 0 IPv6 2001:db8::10 2001:db8:ffff::1 egress",
    // The database handshake: out SYN + ACK (2), in SYN-ACK (18).
    "10.0.0.10 192.0.2.200 45000 5432 6 2 80 100 100 2 IPv4 10.0.0.10 192.0.2.200 egress",
    "192.0.2.200 10.0.0.10 5432 45000 6 1 40 100 100 18 IPv4 192.0.2.200 10.0.0.10 ingress",
    // Intervals 2 and 3: idle.
    "NODATA 120 179",
    "NODATA 180 239",
    // Interval 4 (the last, cut at the last packet). The database teardown: out 540-byte
    // data, FIN, ACK; in 90-byte data, FIN.
    "10.0.0.10 192.0.2.200 45000 5432 6 3 620 245 250 1 IPv4 10.0.0.10 192.0.2.200 egress",
    "192.0.2.200 10.0.0.10 5432 45000 6 2 130 245 250 1 IPv4 192.0.2.200 10.0.0.10 ingress",
    "10.0.0.10 192.0.2.123 123 123 17 1 76 251 251 - IPv4 10.0.0.10 192.0.2.123 egress",
    "192.0.2.123 10.0.0.10 123 123 17 1 76 251 251 - IPv4 192.0.2.123 10.0.0.10 ingress",
];

/// Frames in the capture that are not IP (the ARP frame).
const NOT_IP_FRAMES: usize = 1;

/// A line of [`EXPECTED`] as the agent must print it.
fn expected_line(spec: &str) -> String {
    let f: Vec<&str> = spec.split(' ').collect();
    let t = |s: &str| T0 + s.parse::<u64>().unwrap();
    if f[0] == "NODATA" {
        return format!(
            "5 123456789012 eni-0123456789abcdef0 - - - - - - - {} {} - NODATA - - - - eu-west-3 -",
            t(f[1]),
            t(f[2])
        );
    }
    assert_eq!(f.len(), 14, "{spec}");
    format!(
        "5 123456789012 eni-0123456789abcdef0 {} {} {} {} {} {} {} {} {} ACCEPT OK {} {} {} {} eu-west-3 {}",
        f[0],
        f[1],
        f[2],
        f[3],
        f[4],
        f[5],
        f[6],
        t(f[7]),
        t(f[8]),
        f[9],
        f[10],
        f[11],
        f[12],
        f[13]
    )
}

fn write_config(dir: &Path) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\nmax_aggregation_interval = \"60s\"\n\
             [output]\nlog_format = \"{FORMAT}\"\n\
             [[interface]]\nname = \"eth0\"\ninterface_id = \"eni-0123456789abcdef0\"\nmac = \"{HOST_MAC_TEXT}\"\n\
             addresses = [\"{PRIMARY}\", \"{SECONDARY}\", \"10.244.1.0/24\", \"{}\", \"{}\"]\n",
            primary_v6(),
            secondary_v6()
        ),
    )
    .unwrap();
    path
}

/// The capture, and the agent's output lines for it (header first).
struct Replayed {
    _dir: tempfile::TempDir,
    pcap: PathBuf,
    frames: usize,
    lines: Vec<String>,
}

fn replay_known_capture() -> Replayed {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("known.pcap");
    let frames = write_capture(&pcap);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(write_config(dir.path()))
        .arg("--replay")
        .arg(&pcap)
        .arg("--stdout")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let summary = format!(
        "replayed {frames} packets ({NOT_IP_FRAMES} skipped: not_ip {NOT_IP_FRAMES}), {} records",
        lines.len() - 1
    );
    assert!(err.contains(&summary), "want {summary:?} in {err}");
    Replayed {
        _dir: dir,
        pcap,
        frames,
        lines,
    }
}

/// Start of the interval containing `secs`.
fn interval_of(secs: u64) -> u64 {
    secs - secs % INTERVAL
}

/// The agent's output as one map per record, by field name.
fn parse_records(lines: &[String]) -> Vec<HashMap<&str, &str>> {
    let names: Vec<&str> = lines[0].split(' ').collect();
    lines[1..]
        .iter()
        .map(|l| {
            let values: Vec<&str> = l.split(' ').collect();
            assert_eq!(values.len(), names.len(), "{l}");
            names.iter().copied().zip(values).collect()
        })
        .collect()
}

#[test]
fn every_record_and_field_matches_the_known_flows() {
    let r = replay_known_capture();
    assert_eq!(r.lines[0], HEADER);
    let mut got: Vec<String> = r.lines[1..].to_vec();
    let mut want: Vec<String> = EXPECTED.iter().map(|s| expected_line(s)).collect();
    // Records come out interval by interval.
    let records = parse_records(&r.lines);
    let intervals: Vec<u64> = records
        .iter()
        .map(|m| interval_of(m["start"].parse().unwrap()))
        .collect();
    assert!(
        intervals.windows(2).all(|w| w[0] <= w[1]),
        "records out of interval order:\n{}",
        r.lines.join("\n")
    );
    // The order inside an interval is the agent's choice; compare as sorted lists, and
    // show the difference line by line.
    got.sort();
    want.sort();
    let missing: Vec<&String> = want.iter().filter(|l| !got.contains(l)).collect();
    let unexpected: Vec<&String> = got.iter().filter(|l| !want.contains(l)).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "missing records:\n{}\nunexpected records:\n{}",
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        unexpected
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(got, want);
}

// ---- the tshark cross-check ----

/// tshark fields read per frame, in this order.
const TSHARK_FIELDS: [&str; 24] = [
    "frame.time_epoch",
    "frame.len",
    "frame.protocols",
    "eth.src",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.len",
    "ip.id",
    "ip.flags.mf",
    "ip.frag_offset",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.nxt",
    "ipv6.plen",
    "ipv6.hopopts.nxt",
    "ipv6.opt.jumbo",
    "ipv6.fraghdr.nxt",
    "ipv6.fraghdr.offset",
    "ipv6.fraghdr.more",
    "ipv6.fraghdr.ident",
    "tcp.flags",
    "udp.srcport",
    "udp.dstport",
];

/// Runs tshark on `pcap` without reassembly of IP fragments; one field map per frame.
/// `None` (skip) when tshark is missing outside CI.
fn tshark_frames(pcap: &Path) -> Option<Vec<HashMap<&'static str, String>>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(pcap)
        .args([
            "-n",
            "-o",
            "ip.defragment:FALSE",
            "-o",
            "ipv6.defragment:FALSE",
        ])
        // Dissect an IPv6 payload length of 0 without a jumbo option as BIG TCP / TSO (IPv4
        // does so for a total length of 0 by default).
        .args(["-o", "ipv6.tso_support:TRUE"])
        .args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]);
    for f in TSHARK_FIELDS {
        cmd.args(["-e", f]);
    }
    // TCP ports come with the TCP header; read them apart from the other fields so that
    // a missing layer is an empty column.
    cmd.args(["-e", "tcp.srcport", "-e", "tcp.dstport"]);
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
    let names: Vec<&'static str> = TSHARK_FIELDS
        .iter()
        .copied()
        .chain(["tcp.srcport", "tcp.dstport"])
        .collect();
    Some(
        text.lines()
            .map(|l| {
                let values: Vec<&str> = l.split('\t').collect();
                assert_eq!(values.len(), names.len(), "tshark line {l:?}");
                names
                    .iter()
                    .copied()
                    .zip(values)
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k, v.to_owned()))
                    .collect()
            })
            .collect(),
    )
}

/// (interval start, egress, pkt-srcaddr, pkt-dstaddr, srcport, dstport, protocol).
type Key = (u64, bool, IpAddr, IpAddr, u16, u16, u8);

/// What a record must say: packets, bytes, tcp-flags (TCP only), start, end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Totals {
    packets: u64,
    bytes: u64,
    tcp_flags: Option<u16>,
    start: u64,
    end: u64,
}

fn flag(v: Option<&String>) -> bool {
    matches!(v.map(String::as_str), Some("1" | "True" | "true"))
}

fn num<T: std::str::FromStr>(v: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    v.parse().unwrap_or_else(|e| panic!("{v:?}: {e:?}"))
}

/// The AWS tcp-flags value of one TCP header's flags, by the spec's bit rule (§3.3): FIN 1,
/// SYN 2, RST 4, and 16 only when SYN and ACK are both set.
fn aws_flags(header: u16) -> u16 {
    let (fin, syn, rst, ack) = (
        header & 0x01 != 0,
        header & 0x02 != 0,
        header & 0x04 != 0,
        header & 0x10 != 0,
    );
    u16::from(fin) | (u16::from(syn) << 1) | (u16::from(rst) << 2) | (u16::from(syn && ack) << 4)
}

/// Aggregates tshark's frames the way the spec defines records. Returns the records and
/// the intervals that have packets.
fn aggregate(frames: &[HashMap<&'static str, String>]) -> (BTreeMap<Key, Totals>, Vec<u64>) {
    let mut records: BTreeMap<Key, Totals> = BTreeMap::new();
    // First fragments' ports, by (src, dst, protocol, identification).
    let mut first_fragments: HashMap<(IpAddr, IpAddr, u8, u32), (u16, u16)> = HashMap::new();
    let mut busy = BTreeSet::new();
    for f in frames {
        let get = |k: &str| f.get(k).map(String::as_str);
        let (Some(time), Some(src_mac)) = (get("frame.time_epoch"), get("eth.src")) else {
            panic!("frame without time or Ethernet source: {f:?}");
        };
        let secs: u64 = num(time.split('.').next().unwrap());
        let egress = src_mac == HOST_MAC_TEXT;
        // Link-layer bytes before the IP header: Ethernet plus 4 per VLAN tag.
        let link_len = 14 + 4 * get("frame.protocols").unwrap().matches(":vlan:").count() as u64;
        let frame_len: u64 = num(get("frame.len").unwrap());
        let (src, dst, protocol, bytes, fragment) = if let Some(src) = get("ip.src") {
            let total: u64 = num(get("ip.len").unwrap());
            // Total length 0: a TSO super-packet, as long as the frame says.
            let bytes = if total == 0 {
                frame_len - link_len
            } else {
                total
            };
            let offset: u64 = num(get("ip.frag_offset").unwrap());
            let id =
                u32::from_str_radix(get("ip.id").unwrap().trim_start_matches("0x"), 16).unwrap();
            let fragment = if offset != 0 {
                Some((id, false))
            } else if flag(f.get("ip.flags.mf")) {
                Some((id, true))
            } else {
                None
            };
            (
                IpAddr::V4(num(src)),
                IpAddr::V4(num(get("ip.dst").unwrap())),
                num::<u8>(get("ip.proto").unwrap()),
                bytes,
                fragment,
            )
        } else if let Some(src) = get("ipv6.src") {
            let plen: u64 = num(get("ipv6.plen").unwrap());
            let bytes = match (plen, get("ipv6.opt.jumbo")) {
                (0, Some(jumbo)) => 40 + num::<u64>(jumbo),
                // BIG TCP: no jumbo option, as long as the frame says.
                (0, None) => frame_len - link_len,
                (n, _) => 40 + n,
            };
            // The headers of these frames come in the order fixed, Hop-by-Hop, Fragment:
            // the last next-header is the protocol.
            let protocol = get("ipv6.fraghdr.nxt")
                .or(get("ipv6.hopopts.nxt"))
                .or(get("ipv6.nxt"))
                .unwrap();
            let fragment = get("ipv6.fraghdr.ident").and_then(|ident| {
                let id = u32::from_str_radix(ident.trim_start_matches("0x"), 16).unwrap();
                let offset: u64 = num(get("ipv6.fraghdr.offset").unwrap());
                if offset != 0 {
                    Some((id, false))
                } else if flag(f.get("ipv6.fraghdr.more")) {
                    Some((id, true))
                } else {
                    None
                }
            });
            (
                IpAddr::V6(num(src)),
                IpAddr::V6(num(get("ipv6.dst").unwrap())),
                num::<u8>(protocol),
                bytes,
                fragment,
            )
        } else {
            // Not IP (ARP): no record.
            continue;
        };
        let mut ports = match (get("tcp.srcport"), get("udp.srcport")) {
            (Some(s), _) => (num(s), num(get("tcp.dstport").unwrap())),
            (None, Some(s)) => (num(s), num(get("udp.dstport").unwrap())),
            (None, None) => (0, 0),
        };
        match fragment {
            Some((id, true)) => {
                first_fragments.insert((src, dst, protocol, id), ports);
            }
            // A later fragment has no transport header: the first fragment's ports if it
            // was seen, else 0.
            Some((id, false)) => {
                assert_eq!(ports, (0, 0), "tshark reassembled a fragment: {f:?}");
                ports = first_fragments
                    .get(&(src, dst, protocol, id))
                    .copied()
                    .unwrap_or((0, 0));
            }
            None => {}
        }
        let tcp_flags = (protocol == PROTO_TCP).then(|| {
            get("tcp.flags").map_or(0, |v| {
                aws_flags(u16::from_str_radix(v.trim_start_matches("0x"), 16).unwrap())
            })
        });
        let interval = interval_of(secs);
        busy.insert(interval);
        let key = (interval, egress, src, dst, ports.0, ports.1, protocol);
        let e = records.entry(key).or_insert(Totals {
            packets: 0,
            bytes: 0,
            tcp_flags: tcp_flags.map(|_| 0),
            start: secs,
            end: secs,
        });
        e.packets += 1;
        e.bytes += bytes;
        e.tcp_flags = e.tcp_flags.zip(tcp_flags).map(|(a, b)| a | b);
        e.start = e.start.min(secs);
        e.end = e.end.max(secs);
    }
    (records, busy.into_iter().collect())
}

#[test]
fn records_agree_with_tshark_on_every_flow() {
    let r = replay_known_capture();
    let Some(frames) = tshark_frames(&r.pcap) else {
        return;
    };
    assert_eq!(
        frames.len(),
        r.frames,
        "tshark read a different frame count"
    );
    let (want, busy) = aggregate(&frames);

    let mut got: BTreeMap<Key, Totals> = BTreeMap::new();
    let mut nodata: Vec<(u64, u64)> = Vec::new();
    for m in parse_records(&r.lines) {
        let start: u64 = num(m["start"]);
        let end: u64 = num(m["end"]);
        match m["log-status"] {
            "OK" => {}
            "NODATA" => {
                nodata.push((start, end));
                continue;
            }
            other => panic!("unexpected log-status {other}: {m:?}"),
        }
        let protocol: u8 = num(m["protocol"]);
        let key = (
            interval_of(start),
            m["flow-direction"] == "egress",
            num(m["pkt-srcaddr"]),
            num(m["pkt-dstaddr"]),
            num(m["srcport"]),
            num(m["dstport"]),
            protocol,
        );
        let totals = Totals {
            packets: num(m["packets"]),
            bytes: num(m["bytes"]),
            tcp_flags: (m["tcp-flags"] != "-").then(|| num(m["tcp-flags"])),
            start,
            end,
        };
        assert!(got.insert(key, totals).is_none(), "two records for {key:?}");
    }

    // The same set of records, and the same numbers in each.
    let only_ours: Vec<_> = got.keys().filter(|k| !want.contains_key(k)).collect();
    let only_tshark: Vec<_> = want.keys().filter(|k| !got.contains_key(k)).collect();
    assert!(
        only_ours.is_empty() && only_tshark.is_empty(),
        "records only in ours: {only_ours:#?}\nonly from tshark: {only_tshark:#?}"
    );
    for (key, w) in &want {
        assert_eq!(&got[key], w, "record {key:?}: ours vs tshark's");
    }

    // NODATA exactly for the intervals between the first and the last packet's with no
    // packet, each covering the whole interval.
    let (first, last) = (busy[0], *busy.last().unwrap());
    let idle: Vec<(u64, u64)> = (first..last)
        .step_by(INTERVAL as usize)
        .filter(|i| !busy.contains(i))
        .map(|i| (i, i + INTERVAL - 1))
        .collect();
    assert_eq!(nodata, idle);
    assert_eq!(idle.len(), 2, "the capture has a two-interval gap");
    // The cross-check covers every kind of frame of the capture.
    let protocols: BTreeSet<u8> = want.keys().map(|k| k.6).collect();
    assert_eq!(
        protocols,
        BTreeSet::from([
            PROTO_ICMP,
            PROTO_TCP,
            PROTO_UDP,
            PROTO_GRE,
            PROTO_ESP,
            PROTO_ICMPV6
        ])
    );
}
