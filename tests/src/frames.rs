//! Builders of valid link-layer frames, for tests, fuzzing seeds and benchmarks (the
//! agent's decoder reads what they build: `agent/src/frames_decode_tests.rs`).
//!
//! Every builder returns the encoded bytes of one header followed by its payload, so frames
//! are composed inside out:
//!
//! ```
//! use std::net::Ipv4Addr;
//! use flowlog_tests::frames;
//!
//! let tcp = frames::tcp(40000, 443, frames::TCP_SYN, 0);
//! let ip = frames::ipv4(
//!     Ipv4Addr::new(10, 0, 0, 1),
//!     Ipv4Addr::new(10, 0, 0, 2),
//!     frames::PROTO_TCP,
//!     1,
//!     0,
//!     false,
//!     &tcp,
//! );
//! let frame = frames::ethernet([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], frames::ETHERTYPE_IPV4, &ip);
//! assert_eq!(frame.len(), 14 + 20 + 20);
//! // Or in one call:
//! let same = frames::tcp_v4(
//!     [2, 0, 0, 0, 0, 1],
//!     [2, 0, 0, 0, 0, 2],
//!     Ipv4Addr::new(10, 0, 0, 1),
//!     Ipv4Addr::new(10, 0, 0, 2),
//!     40000,
//!     443,
//!     frames::TCP_SYN,
//!     0,
//! );
//! assert_eq!(same.len(), frame.len());
//! ```
//!
//! Checksums: the IPv4 header and ICMPv4 checksums are always correct. The transport
//! builders ([`tcp`], [`udp`], [`icmpv6_echo`]) leave theirs 0, since they cover a
//! pseudo-header with addresses they do not see; the convenience builders ([`tcp_v4`],
//! [`udp_v6`], …) fill them in with [`set_transport_checksum`], so their frames are valid
//! for any tool. The decoder checks no checksum. Payload bytes are zeros.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType (TPID) of an IEEE 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType (TPID) of an IEEE 802.1ad service VLAN tag (QinQ outer tag).
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

/// IPv6 next-header value of the Hop-by-Hop Options extension header.
pub const PROTO_IPV6_HOPOPTS: u8 = 0;
/// IPv6 next-header value of the Destination Options extension header.
pub const PROTO_IPV6_DSTOPTS: u8 = 60;
/// IP protocol number of GRE.
pub const PROTO_GRE: u8 = 47;
/// IP protocol number of ESP (IPsec).
pub const PROTO_ESP: u8 = 50;
/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IPv6 next-header value of the Fragment extension header.
pub const PROTO_IPV6_FRAGMENT: u8 = 44;
/// IP protocol number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP PSH flag.
pub const TCP_PSH: u8 = 0x08;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// Linux cooked capture packet type: sent to us.
pub const SLL_HOST: u16 = 0;
/// Linux cooked capture packet type: sent by us.
pub const SLL_OUTGOING: u16 = 4;

/// Ethernet II frame: destination MAC, source MAC, EtherType, payload (no FCS).
pub fn ethernet(src_mac: [u8; 6], dst_mac: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Ethernet frame with one IEEE 802.1Q tag (TPID 0x8100, priority 0, VLAN id `vlan_id`,
/// 12 bits) in front of `ethertype`.
pub fn vlan(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan_id: u16,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut inner = Vec::with_capacity(4 + payload.len());
    inner.extend_from_slice(&(vlan_id & 0x0fff).to_be_bytes());
    inner.extend_from_slice(&ethertype.to_be_bytes());
    inner.extend_from_slice(payload);
    ethernet(src_mac, dst_mac, ETHERTYPE_VLAN, &inner)
}

/// Ethernet frame with a stack of VLAN tags in front of `ethertype`, outermost first: each
/// `(tpid, vlan_id)` is a tag with that TPID ([`ETHERTYPE_QINQ`] for an 802.1ad service tag,
/// [`ETHERTYPE_VLAN`] for 802.1Q), priority 0 and the 12-bit `vlan_id`.
pub fn ethernet_tagged(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    tags: &[(u16, u16)],
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * tags.len() + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    for &(tpid, vlan_id) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(vlan_id & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Linux cooked capture (DLT 113, `SLL`) header: packet type ([`SLL_HOST`],
/// [`SLL_OUTGOING`], …), the sender's link-layer address (6 bytes, Ethernet) and the
/// protocol (EtherType) of `payload`.
pub fn linux_sll(packet_type: u16, src_mac: [u8; 6], protocol: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(16 + payload.len());
    f.extend_from_slice(&packet_type.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    f.extend_from_slice(&6u16.to_be_bytes());
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&protocol.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Linux cooked capture v2 (DLT 276, `SLL2`) header: as [`linux_sll`], plus the interface
/// index.
pub fn linux_sll2(
    packet_type: u16,
    src_mac: [u8; 6],
    if_index: u32,
    protocol: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(20 + payload.len());
    f.extend_from_slice(&protocol.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // reserved
    f.extend_from_slice(&if_index.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
    // The packet type is one byte in SLL2.
    f.push(u8::try_from(packet_type).unwrap_or(u8::MAX));
    f.push(6);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // After folding, sum <= 0xffff.
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// Offset of the checksum field in a transport header of `protocol`, if it has one that
/// covers a pseudo-header.
fn checksum_offset(protocol: u8) -> Option<usize> {
    match protocol {
        PROTO_TCP => Some(16),
        PROTO_UDP => Some(6),
        PROTO_ICMPV6 => Some(2),
        _ => None,
    }
}

/// Fills in the checksum of a TCP, UDP or ICMPv6 `segment` (header and payload, checksum
/// field as built) sent from `src` to `dst` with protocol `protocol`, over the IPv4 or
/// IPv6 pseudo-header. Other protocols, mixed address families and segments too short for
/// their header are left as they are.
pub fn set_transport_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &mut [u8]) {
    let Some(at) = checksum_offset(protocol) else {
        return;
    };
    if segment.len() < at + 2 {
        return;
    }
    let mut pseudo = Vec::with_capacity(40 + segment.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.push(0);
            pseudo.push(protocol);
            let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
            pseudo.extend_from_slice(&len.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            let len = u32::try_from(segment.len()).unwrap_or(u32::MAX);
            pseudo.extend_from_slice(&len.to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, protocol]);
        }
        _ => return,
    }
    segment[at..at + 2].copy_from_slice(&[0, 0]);
    pseudo.extend_from_slice(segment);
    let mut sum = internet_checksum(&pseudo);
    if sum == 0 && protocol == PROTO_UDP {
        // 0 means "no checksum" in UDP; a computed 0 is sent as all ones.
        sum = 0xffff;
    }
    segment[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// IPv4 packet: 20-byte header (TTL 64, no options, correct checksum) and `payload`.
///
/// `frag_offset_bytes` is the fragment's offset in bytes (a multiple of 8; it is divided by
/// 8 for the header); `more_fragments` sets the MF flag. A packet that is not a fragment has
/// offset 0 and MF clear. The total length field saturates at 65535.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    id: u16,
    frag_offset_bytes: u16,
    more_fragments: bool,
    payload: &[u8],
) -> Vec<u8> {
    ipv4_with_options(
        src,
        dst,
        protocol,
        id,
        frag_offset_bytes,
        more_fragments,
        &[],
        payload,
    )
}

/// IPv4 packet whose header carries `options` (e.g. [`IPV4_OPTION_ROUTER_ALERT`]), padded
/// with end-of-options bytes to a multiple of 4 and cut at 40 bytes (the most IHL can say);
/// otherwise as [`ipv4`].
#[allow(clippy::too_many_arguments)]
pub fn ipv4_with_options(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    id: u16,
    frag_offset_bytes: u16,
    more_fragments: bool,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let options = options.get(..40).unwrap_or(options);
    let header_len = 20 + options.len().div_ceil(4) * 4;
    let total = u16::try_from(header_len + payload.len()).unwrap_or(u16::MAX);
    let mut flags_frag = (frag_offset_bytes / 8) & 0x1fff;
    if more_fragments {
        flags_frag |= 0x2000;
    }
    let mut p = Vec::with_capacity(header_len + payload.len());
    // Version 4 and the header length in 32-bit words (at most 15).
    p.push(0x40 | u8::try_from(header_len / 4).unwrap_or(15));
    p.push(0); // DSCP/ECN
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&flags_frag.to_be_bytes());
    p.push(64); // TTL
    p.push(protocol);
    p.extend_from_slice(&[0, 0]); // checksum, below
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(options);
    p.resize(header_len, 0); // end-of-options padding
    let sum = internet_checksum(&p[..header_len]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// IPv4 Router Alert option (RFC 2113, 4 bytes), for [`ipv4_with_options`].
pub const IPV4_OPTION_ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0, 0];

/// IPv6 packet: 40-byte header (hop limit 64, no flow label) and `payload`, whose first
/// header is `next_header`. The payload length field saturates at 65535.
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
    let mut p = Vec::with_capacity(40 + payload.len());
    p.extend_from_slice(&[0x60, 0, 0, 0]);
    p.extend_from_slice(&len.to_be_bytes());
    p.push(next_header);
    p.push(64);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// IPv6 jumbogram (RFC 2675): payload length 0 and a Hop-by-Hop header whose Jumbo Payload
/// option says `jumbo_len` (which need not match `payload`: for malformed packets), then
/// `payload`, whose first header is `next_header`.
pub fn ipv6_jumbogram(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    jumbo_len: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut hop_by_hop = Vec::with_capacity(8 + payload.len());
    hop_by_hop.extend_from_slice(&[next_header, 0, 0xc2, 4]);
    hop_by_hop.extend_from_slice(&jumbo_len.to_be_bytes());
    hop_by_hop.extend_from_slice(payload);
    let mut p = ipv6(src, dst, PROTO_IPV6_HOPOPTS, &hop_by_hop);
    p[4..6].copy_from_slice(&[0, 0]);
    p
}

/// IPv6 Fragment extension header (8 bytes) followed by `payload`; pass the result to
/// [`ipv6`] with next header [`PROTO_IPV6_FRAGMENT`]. `next_header` is the protocol of the
/// fragmented datagram, `offset_bytes` a multiple of 8.
pub fn ipv6_fragment(
    next_header: u8,
    offset_bytes: u16,
    more_fragments: bool,
    id: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut off = offset_bytes & !0x7;
    if more_fragments {
        off |= 1;
    }
    let mut p = Vec::with_capacity(8 + payload.len());
    p.push(next_header);
    p.push(0);
    p.extend_from_slice(&off.to_be_bytes());
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// IPv6 Hop-by-Hop or Destination Options extension header (8 bytes: `next_header`, length
/// 0 and a 4-byte PadN option) followed by `payload`; pass the result to [`ipv6`] with next
/// header [`PROTO_IPV6_HOPOPTS`] or [`PROTO_IPV6_DSTOPTS`].
pub fn ipv6_options(next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + payload.len());
    p.extend_from_slice(&[next_header, 0, 1, 4, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    p
}

/// TCP segment: 20-byte header (sequence and acknowledgement numbers 0, window 65535, header
/// flags `flags`, e.g. `TCP_SYN | TCP_ACK`) and `payload_len` zero bytes. Checksum 0.
pub fn tcp(src_port: u16, dst_port: u16, flags: u8, payload_len: usize) -> Vec<u8> {
    let mut s = Vec::with_capacity(20 + payload_len);
    s.extend_from_slice(&src_port.to_be_bytes());
    s.extend_from_slice(&dst_port.to_be_bytes());
    s.extend_from_slice(&[0; 8]); // seq, ack
    s.push(5 << 4); // data offset 5 words
    s.push(flags);
    s.extend_from_slice(&u16::MAX.to_be_bytes()); // window
    s.extend_from_slice(&[0; 4]); // checksum, urgent pointer
    s.resize(20 + payload_len, 0);
    s
}

/// UDP datagram: 8-byte header and `payload_len` zero bytes. Checksum 0 (none).
pub fn udp(src_port: u16, dst_port: u16, payload_len: usize) -> Vec<u8> {
    let len = u16::try_from(8 + payload_len).unwrap_or(u16::MAX);
    let mut d = Vec::with_capacity(8 + payload_len);
    d.extend_from_slice(&src_port.to_be_bytes());
    d.extend_from_slice(&dst_port.to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.resize(8 + payload_len, 0);
    d
}

fn icmp_echo_message(kind: u8, id: u16, seq: u16, payload_len: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(8 + payload_len);
    m.push(kind);
    m.push(0);
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.resize(8 + payload_len, 0);
    m
}

/// ICMPv4 echo request (`request`, type 8) or reply (type 0) with identifier `id`, sequence
/// number `seq` and `payload_len` zero bytes; correct checksum.
pub fn icmp_echo(request: bool, id: u16, seq: u16, payload_len: usize) -> Vec<u8> {
    let mut m = icmp_echo_message(if request { 8 } else { 0 }, id, seq, payload_len);
    let sum = internet_checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

/// ICMPv6 echo request (`request`, type 128) or reply (type 129). Checksum 0.
pub fn icmpv6_echo(request: bool, id: u16, seq: u16, payload_len: usize) -> Vec<u8> {
    icmp_echo_message(if request { 128 } else { 129 }, id, seq, payload_len)
}

/// Ethernet + IPv4 (id 0, not fragmented) + TCP frame, checksums filled in.
#[allow(clippy::too_many_arguments)]
pub fn tcp_v4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    let mut seg = tcp(src_port, dst_port, flags, payload_len);
    set_transport_checksum(src.into(), dst.into(), PROTO_TCP, &mut seg);
    let ip = ipv4(src, dst, PROTO_TCP, 0, 0, false, &seg);
    ethernet(src_mac, dst_mac, ETHERTYPE_IPV4, &ip)
}

/// Ethernet + IPv4 (id 0, not fragmented) + UDP frame, checksums filled in.
pub fn udp_v4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
) -> Vec<u8> {
    let mut dgram = udp(src_port, dst_port, payload_len);
    set_transport_checksum(src.into(), dst.into(), PROTO_UDP, &mut dgram);
    let ip = ipv4(src, dst, PROTO_UDP, 0, 0, false, &dgram);
    ethernet(src_mac, dst_mac, ETHERTYPE_IPV4, &ip)
}

/// Ethernet + IPv4 (id 0, not fragmented) + ICMP echo request or reply frame.
pub fn icmp_v4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    request: bool,
    payload_len: usize,
) -> Vec<u8> {
    let msg = icmp_echo(request, 1, 1, payload_len);
    let ip = ipv4(src, dst, PROTO_ICMP, 0, 0, false, &msg);
    ethernet(src_mac, dst_mac, ETHERTYPE_IPV4, &ip)
}

/// Ethernet + IPv6 + TCP frame, checksum filled in.
#[allow(clippy::too_many_arguments)]
pub fn tcp_v6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    src_port: u16,
    dst_port: u16,
    flags: u8,
    payload_len: usize,
) -> Vec<u8> {
    let mut seg = tcp(src_port, dst_port, flags, payload_len);
    set_transport_checksum(src.into(), dst.into(), PROTO_TCP, &mut seg);
    let ip = ipv6(src, dst, PROTO_TCP, &seg);
    ethernet(src_mac, dst_mac, ETHERTYPE_IPV6, &ip)
}

/// Ethernet + IPv6 + UDP frame, checksum filled in.
pub fn udp_v6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    src_port: u16,
    dst_port: u16,
    payload_len: usize,
) -> Vec<u8> {
    let mut dgram = udp(src_port, dst_port, payload_len);
    set_transport_checksum(src.into(), dst.into(), PROTO_UDP, &mut dgram);
    let ip = ipv6(src, dst, PROTO_UDP, &dgram);
    ethernet(src_mac, dst_mac, ETHERTYPE_IPV6, &ip)
}

/// Ethernet + IPv6 + ICMPv6 echo request or reply frame, checksum filled in.
pub fn icmp_v6(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    request: bool,
    payload_len: usize,
) -> Vec<u8> {
    let mut msg = icmpv6_echo(request, 1, 1, payload_len);
    set_transport_checksum(src.into(), dst.into(), PROTO_ICMPV6, &mut msg);
    let ip = ipv6(src, dst, PROTO_ICMPV6, &msg);
    ethernet(src_mac, dst_mac, ETHERTYPE_IPV6, &ip)
}
