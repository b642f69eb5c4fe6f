//! Packet decoding: from a captured link-layer frame to the fields a VPC flow log record needs.
//!
//! [`decode_frame`] is pure, allocation-free and never panics: every read goes through
//! `get`/`first_chunk`/`split_first_chunk`, so any byte string (truncated captures, garbage,
//! hostile input) yields either a [`PacketMeta`] or a [`SkipReason`].
//!
//! Supported framing:
//!
//! * link layers: Ethernet II, Linux cooked capture v1 (SLL, 16-byte header) and v2 (SLL2,
//!   20-byte header), raw IP (the version nibble picks IPv4 or IPv6), BSD loopback
//!   (`DLT_NULL`, a 4-byte address family in the capturing host's byte order, and
//!   `DLT_LOOP`, the same in network byte order; `AF_INET` 2, `AF_INET6` 24, 28 or 30) and
//!   PPP (an optional `0xff03` address and control, then a 1- or 2-byte protocol: `0x0021`
//!   IPv4, `0x0057` IPv6);
//! * up to [`MAX_VLAN_TAGS`] stacked 802.1Q / 802.1ad (`QinQ`) tags (TPIDs `0x8100`, `0x88a8`,
//!   `0x9100`), after Ethernet or inside a cooked capture;
//! * after the tags, an MPLS label stack (`EtherTypes` `0x8847`, `0x8848`; up to
//!   [`MAX_MPLS_LABELS`] labels, to the bottom of the stack, then IPv4 or IPv6 by the
//!   version nibble) or a PPPoE session header (`0x8864`: 6 bytes, then a PPP protocol,
//!   `0x0021` IPv4 or `0x0057` IPv6);
//! * IPv4 with options, IPv6 with up to [`MAX_IPV6_EXT_HEADERS`] extension headers
//!   (Hop-by-Hop, Routing, Fragment, Destination Options, Authentication);
//! * TCP (ports and flags), UDP, SCTP and UDP-Lite (ports); every other protocol, ICMP and
//!   `ICMPv6` included, has ports 0, as in AWS VPC Flow Logs.
//!
//! Byte counts follow AWS semantics: the IP packet's length as its header declares it (IPv4
//! total length; IPv6 40 + payload length), not the captured length, so a capture with a
//! small snap length still counts whole packets ([`decode_captured_frame`] takes the frame's
//! length on the wire). When the IP header is complete but the transport header was cut off
//! by the capture, the packet is still returned, with ports 0.
//!
//! A declared length is never believed past the frame: a packet whose IP header claims
//! more bytes than the frame had on the wire after its link-layer header (an IPv4 total
//! length or IPv6 payload length beyond the frame, a Jumbo Payload option claiming 4 GiB
//! in a 100-byte frame) is malformed, [`SkipReason::BadIpHeader`], and adds nothing to a
//! flow. A packet's `ip_len` is therefore at most the frame's wire length.
//!
//! Super-packets longer than 16 bits can say are accepted: an IPv4 total length of 0 (a
//! TSO/GSO packet captured on the sending host before segmentation, e.g. Linux BIG TCP)
//! counts the bytes captured from the IP header on; an IPv6 payload length of 0 counts the
//! Hop-by-Hop Jumbo Payload option's length (RFC 2675) when there is one, else, as for
//! IPv6 BIG TCP, the bytes captured.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Wire length to assume for a frame whose length on the wire the capture cannot tell (a
/// read that filled its buffer, a firewall log's partial copy): the largest GSO/GRO
/// super-packet Linux builds (8 × 65,535 bytes, `GSO_MAX_SIZE`) plus 64 bytes of
/// link-layer headers. No packet's `ip_len` exceeds it.
pub const MAX_WIRE_LEN: usize = 8 * 65_535 + 64;

/// Most VLAN tags (802.1Q / `QinQ`) skipped before the frame is given up as [`SkipReason::NotIp`].
pub const MAX_VLAN_TAGS: usize = 4;

/// Most MPLS labels walked; a stack without its bottom by then is [`SkipReason::NotIp`].
pub const MAX_MPLS_LABELS: usize = 8;

/// Most IPv6 extension headers walked; past that the packet is returned with the pending
/// next-header value as its protocol and ports 0.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;
const ETHERTYPE_MPLS_UNICAST: u16 = 0x8847;
const ETHERTYPE_MPLS_MULTICAST: u16 = 0x8848;
const ETHERTYPE_PPPOE_SESSION: u16 = 0x8864;

/// PPP protocol numbers of IPv4 and IPv6.
const PPP_IPV4: u16 = 0x0021;
const PPP_IPV6: u16 = 0x0057;

/// BSD loopback address families: `AF_INET`, and `AF_INET6` as NetBSD/OpenBSD, FreeBSD
/// and macOS number it.
const AF_INET: u32 = 2;
const AF_INET6_BSD: u32 = 24;
const AF_INET6_FREEBSD: u32 = 28;
const AF_INET6_DARWIN: u32 = 30;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_NONE: u8 = 59;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// IPv6 option types: Pad1 (a single byte, no length) and Jumbo Payload.
const IPV6_OPT_PAD1: u8 = 0;
const IPV6_OPT_JUMBO: u8 = 0xc2;

/// Link-layer framing of captured frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// Ethernet II, optionally VLAN-tagged (pcap link type 1).
    Ethernet,
    /// Linux cooked capture v1, 16-byte header (pcap link type 113).
    LinuxSll,
    /// Linux cooked capture v2, 20-byte header (pcap link type 276).
    LinuxSll2,
    /// Bare IPv4 or IPv6 packets; the version nibble decides (pcap link types 101, 12, 14,
    /// 228, 229).
    RawIp,
    /// BSD loopback, `DLT_NULL` (pcap link type 0): a 4-byte address family in the byte
    /// order of the host that captured, then the packet.
    Null,
    /// OpenBSD loopback, `DLT_LOOP` (pcap link type 108): a 4-byte address family in
    /// network byte order, then the packet.
    Loop,
    /// PPP (pcap link type 9): an optional `0xff03` address and control field, a 1- or
    /// 2-byte protocol, then the packet.
    Ppp,
}

impl LinkType {
    /// The link type for a pcap / pcapng `LINKTYPE_*` (or `DLT_*`) value, or `None` when
    /// the decoder does not support it.
    ///
    /// 1 → Ethernet, 113 → Linux SLL, 276 → Linux SLL2, raw IP for 101
    /// (`LINKTYPE_RAW`), 12 and 14 (`DLT_RAW` on various platforms), 228
    /// (`LINKTYPE_IPV4`) and 229 (`LINKTYPE_IPV6`), 0 → BSD loopback (`DLT_NULL`), 108 →
    /// `DLT_LOOP`, 9 → PPP.
    #[must_use]
    pub fn from_pcap_linktype(dlt: u32) -> Option<LinkType> {
        match dlt {
            0 => Some(LinkType::Null),
            9 => Some(LinkType::Ppp),
            108 => Some(LinkType::Loop),
            1 => Some(LinkType::Ethernet),
            113 => Some(LinkType::LinuxSll),
            276 => Some(LinkType::LinuxSll2),
            12 | 14 | 101 | 228 | 229 => Some(LinkType::RawIp),
            _ => None,
        }
    }
}

/// Whether a packet is an IP fragment, and which part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole packet (IPv4 offset 0 without more-fragments; IPv6 without a Fragment header,
    /// or an atomic fragment with offset 0 and M clear).
    None,
    /// The first fragment (offset 0, more-fragments set): it carries the transport header,
    /// so ports are decoded.
    First {
        /// IPv4 identification field, or the IPv6 Fragment header's identification.
        id: u32,
    },
    /// A later fragment (offset > 0): no transport header, ports are 0.
    Later {
        /// IPv4 identification field, or the IPv6 Fragment header's identification.
        id: u32,
    },
}

/// What the flow log needs from one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    /// Source MAC: from Ethernet, or a cooked capture's link-layer address when it is 6
    /// bytes long.
    pub src_mac: Option<[u8; 6]>,
    /// Destination MAC (Ethernet only).
    pub dst_mac: Option<[u8; 6]>,
    /// Linux cooked capture packet type: 0 to us, 1 broadcast, 2 multicast, 3 to another
    /// host, 4 outgoing.
    pub sll_packet_type: Option<u16>,
    /// VLAN id (low 12 bits of the TCI) of the outermost tag.
    pub vlan: Option<u16>,
    /// Source address; same family as `dst`.
    pub src: IpAddr,
    /// Destination address; same family as `src`.
    pub dst: IpAddr,
    /// IPv4 protocol, or IPv6's final next-header after the extension headers.
    pub protocol: u8,
    /// Source port for TCP, UDP, SCTP and UDP-Lite; 0 for other protocols, later
    /// fragments, and transport headers the capture cut off.
    pub src_port: u16,
    /// Destination port; 0 in the same cases as `src_port`.
    pub dst_port: u16,
    /// Bytes as AWS counts them: IPv4 total length, or 40 + IPv6 payload length (for
    /// super-packets, see the [module documentation](self)). At least 20 for IPv4 and 40
    /// for IPv6, and never more than the frame's wire length minus its link-layer header.
    pub ip_len: u32,
    /// The TCP flag byte (FIN 0x01 … CWR 0x80); 0 when not TCP or not captured.
    pub tcp_flags: u8,
    /// Fragmentation state.
    pub fragment: Fragment,
}

/// Why a frame produced no [`PacketMeta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The frame ends before the link-layer or IP headers do (including IPv6 extension
    /// headers).
    Truncated,
    /// Not an IPv4 / IPv6 frame (ARP, LLDP, …), or more VLAN tags than [`MAX_VLAN_TAGS`].
    NotIp,
    /// Malformed IP header: wrong version, IHL < 5, an IPv4 total length shorter than the
    /// header (0 excepted: a TSO/GSO super-packet), an IPv6 extension header running past
    /// the packet's declared end, or a declared length (IPv4 total length, IPv6 payload
    /// length, Jumbo Payload option) longer than the frame was on the wire.
    BadIpHeader,
    /// The capture's link type is not supported.
    ///
    /// [`decode_frame`] never returns it (a [`LinkType`] is always supported); it exists
    /// for callers that map pcap link types with [`LinkType::from_pcap_linktype`].
    UnsupportedLinkType,
}

impl SkipReason {
    /// Every reason, for registering metric label values up front.
    pub const ALL: [SkipReason; 4] = [
        SkipReason::Truncated,
        SkipReason::NotIp,
        SkipReason::BadIpHeader,
        SkipReason::UnsupportedLinkType,
    ];

    /// The metric label value: `truncated`, `not_ip`, `bad_ip_header` or
    /// `unsupported_link_type`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Truncated => "truncated",
            SkipReason::NotIp => "not_ip",
            SkipReason::BadIpHeader => "bad_ip_header",
            SkipReason::UnsupportedLinkType => "unsupported_link_type",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Decodes one frame of the given link type, captured whole: `frame.len()` is its length
/// on the wire, and no packet counts more bytes than that.
///
/// Never panics and never allocates. See the [module documentation](self) for what is
/// supported.
///
/// # Errors
///
/// As [`decode_captured_frame`].
pub fn decode_frame(link: LinkType, frame: &[u8]) -> Result<PacketMeta, SkipReason> {
    decode_captured_frame(link, frame, frame.len())
}

/// Decodes one captured frame of the given link type that was `wire_len` bytes long on the
/// wire (a pcap record's original length); `captured` may be shorter (snap length). A
/// `wire_len` below `captured.len()` counts as `captured.len()`.
///
/// The packet's `ip_len` comes from its IP header but never exceeds `wire_len` minus the
/// link-layer header: a header claiming more is [`SkipReason::BadIpHeader`].
///
/// Never panics and never allocates. See the [module documentation](self) for what is
/// supported and how truncated captures are handled.
///
/// # Errors
///
/// [`SkipReason::Truncated`] when the capture ends inside the link-layer or IP headers,
/// [`SkipReason::NotIp`] for non-IP frames, [`SkipReason::BadIpHeader`] for malformed IP
/// headers, lengths beyond the frame included. A transport header cut off by the capture
/// is not an error (ports are 0).
pub fn decode_captured_frame(
    link: LinkType,
    captured: &[u8],
    wire_len: usize,
) -> Result<PacketMeta, SkipReason> {
    // Bytes the capture cut off the end: the wire length of any slice of `captured` that
    // runs to its end is its own length plus `cut`.
    let cut = wire_len.saturating_sub(captured.len());
    match link {
        LinkType::Ethernet => decode_ethernet(captured, cut),
        LinkType::LinuxSll => decode_sll(captured, cut),
        LinkType::LinuxSll2 => decode_sll2(captured, cut),
        LinkType::RawIp => decode_raw_ip(captured, cut),
        LinkType::Null => decode_loopback(captured, cut, false),
        LinkType::Loop => decode_loopback(captured, cut, true),
        LinkType::Ppp => decode_ppp(captured, cut),
    }
}

/// Link-layer fields collected before the IP header.
#[derive(Clone, Copy, Default)]
struct LinkInfo {
    src_mac: Option<[u8; 6]>,
    dst_mac: Option<[u8; 6]>,
    sll_packet_type: Option<u16>,
    vlan: Option<u16>,
}

fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

fn decode_ethernet(frame: &[u8], cut: usize) -> Result<PacketMeta, SkipReason> {
    let (dst, rest) = frame
        .split_first_chunk::<6>()
        .ok_or(SkipReason::Truncated)?;
    let (src, rest) = rest.split_first_chunk::<6>().ok_or(SkipReason::Truncated)?;
    let (ethertype, rest) = rest.split_first_chunk::<2>().ok_or(SkipReason::Truncated)?;
    let link = LinkInfo {
        src_mac: Some(*src),
        dst_mac: Some(*dst),
        ..LinkInfo::default()
    };
    decode_ethertype(be16(*ethertype), rest, cut, link)
}

fn decode_sll(frame: &[u8], cut: usize) -> Result<PacketMeta, SkipReason> {
    let (h, rest) = frame
        .split_first_chunk::<16>()
        .ok_or(SkipReason::Truncated)?;
    // 0: packet type, 2: ARPHRD type, 4: address length, 6: address (8 bytes), 14: protocol.
    let addr_len = be16([h[4], h[5]]);
    let link = LinkInfo {
        src_mac: (addr_len == 6).then_some([h[6], h[7], h[8], h[9], h[10], h[11]]),
        dst_mac: None,
        sll_packet_type: Some(be16([h[0], h[1]])),
        vlan: None,
    };
    decode_ethertype(be16([h[14], h[15]]), rest, cut, link)
}

fn decode_sll2(frame: &[u8], cut: usize) -> Result<PacketMeta, SkipReason> {
    let (h, rest) = frame
        .split_first_chunk::<20>()
        .ok_or(SkipReason::Truncated)?;
    // 0: protocol, 2: reserved, 4: interface index, 8: ARPHRD type, 10: packet type,
    // 11: address length, 12: address (8 bytes).
    let link = LinkInfo {
        src_mac: (h[11] == 6).then_some([h[12], h[13], h[14], h[15], h[16], h[17]]),
        dst_mac: None,
        sll_packet_type: Some(u16::from(h[10])),
        vlan: None,
    };
    decode_ethertype(be16([h[0], h[1]]), rest, cut, link)
}

fn decode_raw_ip(packet: &[u8], cut: usize) -> Result<PacketMeta, SkipReason> {
    match packet.first().map(|b| b >> 4) {
        None => Err(SkipReason::Truncated),
        Some(4) => decode_ipv4(packet, cut, LinkInfo::default()),
        Some(6) => decode_ipv6(packet, cut, LinkInfo::default()),
        // The link type promises IP, so another version is a broken IP header.
        Some(_) => Err(SkipReason::BadIpHeader),
    }
}

/// BSD loopback: a 4-byte address family, in network byte order (`DLT_LOOP`) or in the
/// capturing host's, which the file does not say (`DLT_NULL`): a value with its upper 16
/// bits set is read the other way round, as libpcap and Wireshark do.
fn decode_loopback(
    frame: &[u8],
    cut: usize,
    network_order: bool,
) -> Result<PacketMeta, SkipReason> {
    let (&family, rest) = frame
        .split_first_chunk::<4>()
        .ok_or(SkipReason::Truncated)?;
    let family = if network_order {
        u32::from_be_bytes(family)
    } else {
        let le = u32::from_le_bytes(family);
        if le & 0xffff_0000 == 0 {
            le
        } else {
            u32::from_be_bytes(family)
        }
    };
    match family {
        AF_INET => decode_ipv4(rest, cut, LinkInfo::default()),
        AF_INET6_BSD | AF_INET6_FREEBSD | AF_INET6_DARWIN => {
            decode_ipv6(rest, cut, LinkInfo::default())
        }
        _ => Err(SkipReason::NotIp),
    }
}

/// PPP: an optional `0xff03` address and control field, then the protocol: one byte when
/// odd (protocol field compression), else two.
fn decode_ppp(frame: &[u8], cut: usize) -> Result<PacketMeta, SkipReason> {
    let rest = match frame {
        [0xff, 0x03, rest @ ..] => rest,
        _ => frame,
    };
    decode_ppp_protocol(rest, cut, LinkInfo::default())
}

/// A PPP protocol field (1 or 2 bytes) and what follows it: IPv4 or IPv6, else not IP.
fn decode_ppp_protocol(frame: &[u8], cut: usize, link: LinkInfo) -> Result<PacketMeta, SkipReason> {
    let &first = frame.first().ok_or(SkipReason::Truncated)?;
    let (protocol, rest) = if first & 1 == 1 {
        (u16::from(first), frame.get(1..).unwrap_or_default())
    } else {
        let (p, rest) = frame
            .split_first_chunk::<2>()
            .ok_or(SkipReason::Truncated)?;
        (be16(*p), rest)
    };
    match protocol {
        PPP_IPV4 => decode_ipv4(rest, cut, link),
        PPP_IPV6 => decode_ipv6(rest, cut, link),
        _ => Err(SkipReason::NotIp),
    }
}

fn is_vlan_tpid(ethertype: u16) -> bool {
    matches!(
        ethertype,
        ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD
    )
}

/// Skips VLAN tags, then dispatches on the `EtherType`.
fn decode_ethertype(
    mut ethertype: u16,
    mut rest: &[u8],
    cut: usize,
    mut link: LinkInfo,
) -> Result<PacketMeta, SkipReason> {
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan_tpid(ethertype) {
            break;
        }
        let (&[t0, t1, e0, e1], tail) =
            rest.split_first_chunk::<4>().ok_or(SkipReason::Truncated)?;
        if link.vlan.is_none() {
            link.vlan = Some(be16([t0, t1]) & 0x0fff);
        }
        ethertype = be16([e0, e1]);
        rest = tail;
    }
    match ethertype {
        // Still tagged after MAX_VLAN_TAGS tags.
        t if is_vlan_tpid(t) => Err(SkipReason::NotIp),
        ETHERTYPE_IPV4 => decode_ipv4(rest, cut, link),
        ETHERTYPE_IPV6 => decode_ipv6(rest, cut, link),
        ETHERTYPE_MPLS_UNICAST | ETHERTYPE_MPLS_MULTICAST => decode_mpls(rest, cut, link),
        ETHERTYPE_PPPOE_SESSION => {
            // Version and type, code, session id, length.
            let (_, ppp) = rest.split_first_chunk::<6>().ok_or(SkipReason::Truncated)?;
            decode_ppp_protocol(ppp, cut, link)
        }
        _ => Err(SkipReason::NotIp),
    }
}

/// Walks an MPLS label stack (4 bytes a label) to its bottom; the packet after it is IP
/// when its first nibble says 4 or 6 (anything else, such as a pseudowire control word,
/// is not IP).
fn decode_mpls(mut rest: &[u8], cut: usize, link: LinkInfo) -> Result<PacketMeta, SkipReason> {
    for _ in 0..MAX_MPLS_LABELS {
        let (label, tail) = rest.split_first_chunk::<4>().ok_or(SkipReason::Truncated)?;
        rest = tail;
        if label[2] & 0x01 != 0 {
            return match rest.first().map(|b| b >> 4) {
                None => Err(SkipReason::Truncated),
                Some(4) => decode_ipv4(rest, cut, link),
                Some(6) => decode_ipv6(rest, cut, link),
                Some(_) => Err(SkipReason::NotIp),
            };
        }
    }
    Err(SkipReason::NotIp)
}

/// Decodes an IPv4 packet captured as `packet`, of which the capture cut `cut` bytes.
fn decode_ipv4(packet: &[u8], cut: usize, link: LinkInfo) -> Result<PacketMeta, SkipReason> {
    let &first = packet.first().ok_or(SkipReason::Truncated)?;
    if first >> 4 != 4 {
        return Err(SkipReason::BadIpHeader);
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return Err(SkipReason::BadIpHeader);
    }
    let h = packet.first_chunk::<20>().ok_or(SkipReason::Truncated)?;
    let total_len = be16([h[2], h[3]]);
    // Total length 0 is what the kernel writes in a TSO/GSO super-packet handed to a packet
    // socket before segmentation (Linux BIG TCP: over 64 KiB, which 16 bits cannot say):
    // the packet is everything captured from its first byte, as tcpdump and Wireshark take it.
    let gso_super_packet = total_len == 0;
    if !gso_super_packet && usize::from(total_len) < header_len {
        return Err(SkipReason::BadIpHeader);
    }
    // A total length beyond what the frame carried on the wire is a lie, not a snap length.
    if usize::from(total_len) > packet.len().saturating_add(cut) {
        return Err(SkipReason::BadIpHeader);
    }
    let id = u32::from(be16([h[4], h[5]]));
    let flags_offset = be16([h[6], h[7]]);
    let protocol = h[9];
    let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
    let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);

    // Bytes past the total length are link-layer padding, not transport header.
    let declared = if gso_super_packet {
        packet
    } else {
        packet.get(..usize::from(total_len)).unwrap_or(packet)
    };
    // `declared` is shorter than the header only when the capture is (total_len >= header_len).
    let l4 = declared.get(header_len..).ok_or(SkipReason::Truncated)?;
    let ip_len = if gso_super_packet {
        // At least `header_len` >= 20: `l4` exists.
        u32::try_from(packet.len()).unwrap_or(u32::MAX)
    } else {
        u32::from(total_len)
    };

    let more_fragments = flags_offset & 0x2000 != 0;
    let fragment = if flags_offset & 0x1fff != 0 {
        Fragment::Later { id }
    } else if more_fragments {
        Fragment::First { id }
    } else {
        Fragment::None
    };
    Ok(packet_meta(
        link,
        IpAddr::V4(src),
        IpAddr::V4(dst),
        protocol,
        ip_len,
        fragment,
        l4,
    ))
}

/// Decodes an IPv6 packet captured as `packet`, of which the capture cut `cut` bytes.
fn decode_ipv6(packet: &[u8], cut: usize, link: LinkInfo) -> Result<PacketMeta, SkipReason> {
    let &first = packet.first().ok_or(SkipReason::Truncated)?;
    if first >> 4 != 6 {
        return Err(SkipReason::BadIpHeader);
    }
    let (h, rest) = packet
        .split_first_chunk::<8>()
        .ok_or(SkipReason::Truncated)?;
    let (src, rest) = rest
        .split_first_chunk::<16>()
        .ok_or(SkipReason::Truncated)?;
    let (dst, rest) = rest
        .split_first_chunk::<16>()
        .ok_or(SkipReason::Truncated)?;
    let payload_len = be16([h[4], h[5]]);
    let mut next = h[6];
    // Bytes the packet had on the wire from its first byte on; no declared length may
    // exceed it.
    let wire_len = packet.len().saturating_add(cut);
    if 40 + usize::from(payload_len) > wire_len {
        return Err(SkipReason::BadIpHeader);
    }

    // Payload length 0 with a payload to come (anything but "no next header") is a jumbogram
    // (RFC 2675: the real length is in a Hop-by-Hop Jumbo Payload option) or a Linux BIG TCP /
    // GSO super-packet captured before segmentation (no option: the packet is everything
    // captured). Either way the captured bytes are used for header walking.
    let jumbo = payload_len == 0 && next != IPPROTO_NONE;
    let mut ip_len = if jumbo {
        40u32.saturating_add(u32::try_from(rest.len()).unwrap_or(u32::MAX))
    } else {
        40 + u32::from(payload_len)
    };
    let (mut data, whole_packet_captured) = if payload_len == 0 {
        (rest, false)
    } else {
        match rest.get(..usize::from(payload_len)) {
            Some(declared) => (declared, true),
            None => (rest, false),
        }
    };
    // An extension header that does not fit: malformed if the whole declared packet is
    // there, otherwise the capture cut it.
    let short = if whole_packet_captured {
        SkipReason::BadIpHeader
    } else {
        SkipReason::Truncated
    };

    let mut fragment = Fragment::None;
    for index in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let &[next_header, len] = data.first_chunk::<2>().ok_or(short)?;
                // AH counts 4-octet units minus 2, the others 8-octet units minus 1.
                let (extra, unit) = if next == IPPROTO_AH { (2, 4) } else { (1, 8) };
                let ext_len = usize::from(len)
                    .checked_add(extra)
                    .and_then(|units| units.checked_mul(unit))
                    .ok_or(SkipReason::BadIpHeader)?;
                let header = data.get(..ext_len).ok_or(short)?;
                // Hop-by-Hop comes first when present; only there can a Jumbo Payload
                // option be.
                if jumbo
                    && index == 0
                    && next == IPPROTO_HOPOPTS
                    && let Some(len) = jumbo_payload_length(header)
                {
                    ip_len = 40u32.saturating_add(len);
                    if usize::try_from(ip_len).unwrap_or(usize::MAX) > wire_len {
                        return Err(SkipReason::BadIpHeader);
                    }
                }
                data = data.get(ext_len..).ok_or(short)?;
                next = next_header;
            }
            IPPROTO_FRAGMENT => {
                let (f, tail) = data.split_first_chunk::<8>().ok_or(short)?;
                let offset_m = be16([f[2], f[3]]);
                let id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                next = f[0];
                data = tail;
                if offset_m >> 3 != 0 {
                    fragment = Fragment::Later { id };
                    break;
                }
                if offset_m & 1 != 0 {
                    fragment = Fragment::First { id };
                }
            }
            _ => break,
        }
    }

    Ok(packet_meta(
        link,
        IpAddr::V6(Ipv6Addr::from(*src)),
        IpAddr::V6(Ipv6Addr::from(*dst)),
        next,
        ip_len,
        fragment,
        data,
    ))
}

/// The Jumbo Payload length (RFC 2675) in a Hop-by-Hop Options `header` (next header and
/// length bytes included), if it carries a valid one (over 65535).
fn jumbo_payload_length(header: &[u8]) -> Option<u32> {
    let mut options = header.get(2..)?;
    while let Some((&kind, rest)) = options.split_first() {
        if kind == IPV6_OPT_PAD1 {
            options = rest;
            continue;
        }
        let (&len, rest) = rest.split_first()?;
        let (value, rest) = rest.split_at_checked(usize::from(len))?;
        if kind == IPV6_OPT_JUMBO
            && let Some(&jumbo) = value.first_chunk::<4>()
        {
            let jumbo = u32::from_be_bytes(jumbo);
            return (jumbo > u32::from(u16::MAX)).then_some(jumbo);
        }
        options = rest;
    }
    None
}

fn packet_meta(
    link: LinkInfo,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    ip_len: u32,
    fragment: Fragment,
    l4: &[u8],
) -> PacketMeta {
    let (src_port, dst_port, tcp_flags) = if matches!(fragment, Fragment::Later { .. }) {
        (0, 0, 0)
    } else {
        transport(protocol, l4)
    };
    PacketMeta {
        src_mac: link.src_mac,
        dst_mac: link.dst_mac,
        sll_packet_type: link.sll_packet_type,
        vlan: link.vlan,
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        ip_len,
        tcp_flags,
        fragment,
    }
}

/// Ports and TCP flags from the transport header; zeros for port-less protocols and for
/// whatever the capture cut off (ports need 4 bytes, TCP flags 14).
fn transport(protocol: u8, l4: &[u8]) -> (u16, u16, u8) {
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE => {
            let Some(&[s0, s1, d0, d1]) = l4.first_chunk::<4>() else {
                return (0, 0, 0);
            };
            let flags = if protocol == IPPROTO_TCP {
                l4.get(13).copied().unwrap_or(0)
            } else {
                0
            };
            (be16([s0, s1]), be16([d0, d1]), flags)
        }
        _ => (0, 0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
    const V4_A: [u8; 4] = [10, 0, 0, 1];
    const V4_B: [u8; 4] = [192, 168, 1, 2];
    const V6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    // ---- byte builders ----

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B); // dst
        f.extend_from_slice(&MAC_A); // src
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Ethernet with VLAN tags `(tpid, vid)`, outermost first.
    fn eth_tagged(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&MAC_B);
        f.extend_from_slice(&MAC_A);
        for &(tpid, vid) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            // Priority 5 in the PCP bits, to check they are masked off.
            f.extend_from_slice(&((5 << 13) | vid).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn sll(packet_type: u16, addr: &[u8], protocol: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&packet_type.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
        f.extend_from_slice(&(addr.len() as u16).to_be_bytes());
        let mut a = [0u8; 8];
        a[..addr.len()].copy_from_slice(addr);
        f.extend_from_slice(&a);
        f.extend_from_slice(&protocol.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn sll2(packet_type: u8, addr: &[u8], protocol: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&protocol.to_be_bytes());
        f.extend_from_slice(&[0, 0]); // reserved
        f.extend_from_slice(&7u32.to_be_bytes()); // ifindex
        f.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
        f.push(packet_type);
        f.push(addr.len() as u8);
        let mut a = [0u8; 8];
        a[..addr.len()].copy_from_slice(addr);
        f.extend_from_slice(&a);
        f.extend_from_slice(payload);
        f
    }

    /// An IPv4 packet; `options` must be a multiple of 4 bytes.
    fn ipv4(protocol: u8, id: u16, flags_offset: u16, options: &[u8], payload: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let header_len = 20 + options.len();
        let total = (header_len + payload.len()) as u16;
        let mut p = vec![0x40 | (header_len / 4) as u8, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&flags_offset.to_be_bytes());
        p.extend_from_slice(&[64, protocol, 0, 0]); // TTL, protocol, checksum
        p.extend_from_slice(&V4_A);
        p.extend_from_slice(&V4_B);
        p.extend_from_slice(options);
        p.extend_from_slice(payload);
        p
    }

    /// An IPv6 packet; `payload` includes any extension headers.
    fn ipv6(next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next_header, 64]);
        p.extend_from_slice(&V6_A);
        p.extend_from_slice(&V6_B);
        p.extend_from_slice(payload);
        p
    }

    /// A Hop-by-Hop / Routing / Destination Options header of `8 * (units + 1)` bytes.
    fn ext_header(next_header: u8, units: u8) -> Vec<u8> {
        let mut h = vec![next_header, units];
        // PadN option filling the rest.
        let rest = 8 * (usize::from(units) + 1) - 2;
        h.push(1);
        h.push((rest - 2) as u8);
        h.resize(h.len() + rest - 2, 0);
        h
    }

    fn frag_header(next_header: u8, offset_units: u16, more: bool, id: u32) -> Vec<u8> {
        let mut h = vec![next_header, 0];
        h.extend_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h
    }

    fn tcp(src_port: u16, dst_port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(&src_port.to_be_bytes());
        t.extend_from_slice(&dst_port.to_be_bytes());
        t.extend_from_slice(&1000u32.to_be_bytes()); // seq
        t.extend_from_slice(&0u32.to_be_bytes()); // ack
        t.push(5 << 4); // data offset
        t.push(flags);
        t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
        t.extend_from_slice(payload);
        t
    }

    fn udp(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&src_port.to_be_bytes());
        u.extend_from_slice(&dst_port.to_be_bytes());
        u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    fn icmp_echo() -> Vec<u8> {
        vec![8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g']
    }

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    fn v6(a: [u8; 16]) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(a))
    }

    /// Record-route option (7 bytes) + end-of-options, padded to 12 bytes.
    const IPV4_OPTIONS: [u8; 12] = [7, 7, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];

    fn eth_ipv4_tcp_syn() -> Vec<u8> {
        eth(
            ETHERTYPE_IPV4,
            &ipv4(6, 0x1234, 0x4000, &IPV4_OPTIONS, &tcp(40000, 443, SYN, b"")),
        )
    }

    /// Properties every decoded packet must have (mirrored in the fuzz target).
    fn check_invariants(link: LinkType, m: &PacketMeta) {
        match (m.src, m.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => assert!(m.ip_len >= 20, "{m:?}"),
            (IpAddr::V6(_), IpAddr::V6(_)) => assert!(m.ip_len >= 40, "{m:?}"),
            _ => panic!("mixed address families: {m:?}"),
        }
        if matches!(m.protocol, 1 | 58) || matches!(m.fragment, Fragment::Later { .. }) {
            assert_eq!((m.src_port, m.dst_port), (0, 0), "{m:?}");
        }
        if m.tcp_flags != 0 {
            assert_eq!(m.protocol, 6, "{m:?}");
        }
        match link {
            LinkType::Ethernet => {
                assert!(m.src_mac.is_some() && m.dst_mac.is_some());
                assert_eq!(m.sll_packet_type, None);
            }
            LinkType::LinuxSll | LinkType::LinuxSll2 => {
                assert_eq!(m.dst_mac, None);
                assert!(m.sll_packet_type.is_some());
                if link == LinkType::LinuxSll2 {
                    assert!(m.sll_packet_type.is_some_and(|t| t <= 0xff));
                }
            }
            LinkType::RawIp | LinkType::Null | LinkType::Loop | LinkType::Ppp => {
                assert_eq!((m.src_mac, m.dst_mac), (None, None));
                assert_eq!((m.sll_packet_type, m.vlan), (None, None));
            }
        }
        if let Some(vlan) = m.vlan {
            assert!(vlan <= 0x0fff);
        }
    }

    // ---- tests ----

    #[test]
    fn link_types_and_labels() {
        assert_eq!(LinkType::from_pcap_linktype(1), Some(LinkType::Ethernet));
        assert_eq!(LinkType::from_pcap_linktype(113), Some(LinkType::LinuxSll));
        assert_eq!(LinkType::from_pcap_linktype(276), Some(LinkType::LinuxSll2));
        for raw in [12, 14, 101, 228, 229] {
            assert_eq!(LinkType::from_pcap_linktype(raw), Some(LinkType::RawIp));
        }
        assert_eq!(LinkType::from_pcap_linktype(0), Some(LinkType::Null));
        assert_eq!(LinkType::from_pcap_linktype(108), Some(LinkType::Loop));
        assert_eq!(LinkType::from_pcap_linktype(9), Some(LinkType::Ppp));
        assert_eq!(LinkType::from_pcap_linktype(50), None);
        assert_eq!(LinkType::from_pcap_linktype(105), None);
        let labels: Vec<_> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "truncated",
                "not_ip",
                "bad_ip_header",
                "unsupported_link_type"
            ]
        );
        assert_eq!(SkipReason::NotIp.to_string(), "not_ip");
    }

    #[test]
    fn bsd_loopback_in_either_byte_order() {
        let p4 = ipv4(6, 1, 0, &[], &tcp(40000, 443, SYN, b""));
        let p6 = ipv6(17, &udp(5353, 53, b"q"));
        let with = |family: [u8; 4], packet: &[u8]| [&family[..], packet].concat();
        for (link, family, packet, src) in [
            (LinkType::Null, 2u32.to_le_bytes(), &p4, v4(V4_A)),
            (LinkType::Null, 2u32.to_be_bytes(), &p4, v4(V4_A)),
            (LinkType::Null, 24u32.to_le_bytes(), &p6, v6(V6_A)),
            (LinkType::Null, 28u32.to_be_bytes(), &p6, v6(V6_A)),
            (LinkType::Null, 30u32.to_le_bytes(), &p6, v6(V6_A)),
            (LinkType::Loop, 2u32.to_be_bytes(), &p4, v4(V4_A)),
            (LinkType::Loop, 30u32.to_be_bytes(), &p6, v6(V6_A)),
        ] {
            let frame = with(family, packet);
            let m = decode_frame(link, &frame).unwrap();
            check_invariants(link, &m);
            assert_eq!(m.src, src, "{link:?} {family:?}");
            assert_eq!(m.ip_len as usize, packet.len());
            assert_eq!((m.src_mac, m.vlan), (None, None));
        }
        // DLT_LOOP is network byte order only; other families are not IP.
        assert_eq!(
            decode_frame(LinkType::Loop, &with(2u32.to_le_bytes(), &p4)),
            Err(SkipReason::NotIp)
        );
        assert_eq!(
            decode_frame(LinkType::Null, &with(7u32.to_le_bytes(), &p4)),
            Err(SkipReason::NotIp)
        );
        assert_eq!(
            decode_frame(LinkType::Null, &[2, 0, 0]),
            Err(SkipReason::Truncated)
        );
        // AF_INET with an IPv6 packet: a broken IP header.
        assert_eq!(
            decode_frame(LinkType::Null, &with(2u32.to_le_bytes(), &p6)),
            Err(SkipReason::BadIpHeader)
        );
    }

    #[test]
    fn ppp_with_and_without_address_control_and_compressed_protocol() {
        let p4 = ipv4(17, 1, 0, &[], &udp(5353, 53, b"q"));
        let p6 = ipv6(6, &tcp(40000, 443, ACK, b"abc"));
        for (header, packet, src, dport) in [
            (&[0xff, 0x03, 0x00, 0x21][..], &p4, v4(V4_A), 53),
            (&[0x00, 0x21][..], &p4, v4(V4_A), 53),
            (&[0x21][..], &p4, v4(V4_A), 53),
            (&[0xff, 0x03, 0x21][..], &p4, v4(V4_A), 53),
            (&[0xff, 0x03, 0x00, 0x57][..], &p6, v6(V6_A), 443),
            (&[0x57][..], &p6, v6(V6_A), 443),
        ] {
            let frame = [header, packet.as_slice()].concat();
            let m = decode_frame(LinkType::Ppp, &frame).unwrap();
            check_invariants(LinkType::Ppp, &m);
            assert_eq!((m.src, m.dst_port), (src, dport), "{header:?}");
            assert_eq!(m.ip_len as usize, packet.len());
        }
        // LCP, and frames cut inside the PPP header.
        assert_eq!(
            decode_frame(LinkType::Ppp, &[0xff, 0x03, 0xc0, 0x21, 1, 1, 0, 4]),
            Err(SkipReason::NotIp)
        );
        assert_eq!(
            decode_frame(LinkType::Ppp, &[0xff, 0x03]),
            Err(SkipReason::Truncated)
        );
        assert_eq!(
            decode_frame(LinkType::Ppp, &[0xff, 0x03, 0x00]),
            Err(SkipReason::Truncated)
        );
    }

    /// MPLS labels (bottom of stack bit in the third byte): `labels` labels, the last at
    /// the bottom.
    fn mpls(labels: usize) -> Vec<u8> {
        let mut stack = Vec::new();
        for i in 0..labels {
            let bottom = u8::from(i + 1 == labels);
            stack.extend_from_slice(&[0x00, 0x01, 0x40 | bottom, 64]);
        }
        stack
    }

    #[test]
    fn mpls_label_stacks_and_pppoe_sessions() {
        let p4 = ipv4(6, 1, 0, &[], &tcp(40000, 443, SYN, b""));
        let p6 = ipv6(17, &udp(5353, 53, b"q"));
        for ethertype in [0x8847, 0x8848] {
            for labels in [1, 2, 8] {
                for (packet, src) in [(&p4, v4(V4_A)), (&p6, v6(V6_A))] {
                    let frame = eth(ethertype, &[mpls(labels), packet.clone()].concat());
                    let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
                    check_invariants(LinkType::Ethernet, &m);
                    assert_eq!(m.src, src);
                    assert_eq!(m.ip_len as usize, packet.len());
                }
            }
            // Too deep a stack, no bottom, a control word, a cut stack.
            let deep = eth(ethertype, &[mpls(9), p4.clone()].concat());
            assert_eq!(
                decode_frame(LinkType::Ethernet, &deep),
                Err(SkipReason::NotIp)
            );
            let mut no_bottom = mpls(2);
            no_bottom[6] &= !1;
            let frame = eth(ethertype, &no_bottom);
            assert_eq!(
                decode_frame(LinkType::Ethernet, &frame),
                Err(SkipReason::Truncated)
            );
            let cw = eth(ethertype, &[mpls(1), vec![0; 4], p4.clone()].concat());
            assert_eq!(
                decode_frame(LinkType::Ethernet, &cw),
                Err(SkipReason::NotIp)
            );
            let cut = eth(ethertype, &mpls(1)[..3]);
            assert_eq!(
                decode_frame(LinkType::Ethernet, &cut),
                Err(SkipReason::Truncated)
            );
        }
        // Behind a VLAN tag.
        let frame = eth_tagged(
            &[(ETHERTYPE_VLAN, 7)],
            0x8847,
            &[mpls(2), p4.clone()].concat(),
        );
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!((m.vlan, m.src), (Some(7), v4(V4_A)));

        let pppoe = |protocol: &[u8], packet: &[u8]| {
            let len = (protocol.len() + packet.len()) as u16;
            let mut b = vec![0x11, 0x00, 0x12, 0x34];
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(protocol);
            b.extend_from_slice(packet);
            b
        };
        for (protocol, packet, src) in [
            (&[0x00, 0x21][..], &p4, v4(V4_A)),
            (&[0x00, 0x57][..], &p6, v6(V6_A)),
        ] {
            let frame = eth(0x8864, &pppoe(protocol, packet));
            let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
            check_invariants(LinkType::Ethernet, &m);
            assert_eq!((m.src, m.ip_len as usize), (src, packet.len()));
            let tagged = eth_tagged(
                &[(ETHERTYPE_QINQ, 3), (ETHERTYPE_VLAN, 4)],
                0x8864,
                &pppoe(protocol, packet),
            );
            let m = decode_frame(LinkType::Ethernet, &tagged).unwrap();
            assert_eq!((m.vlan, m.src), (Some(3), src));
        }
        // LCP in a session, a header cut short.
        let lcp = eth(0x8864, &pppoe(&[0xc0, 0x21], &[1, 1, 0, 4]));
        assert_eq!(
            decode_frame(LinkType::Ethernet, &lcp),
            Err(SkipReason::NotIp)
        );
        let cut = eth(0x8864, &[0x11, 0, 0x12, 0x34, 0]);
        assert_eq!(
            decode_frame(LinkType::Ethernet, &cut),
            Err(SkipReason::Truncated)
        );
    }

    /// Behind every link header and encapsulation, a declared IP length is bounded by the
    /// bytes left on the wire after the headers: one byte more is malformed.
    #[test]
    fn declared_lengths_never_exceed_the_frame_after_its_headers() {
        let mut lying = ipv4(6, 1, 0, &[], &tcp(40000, 443, ACK, b"0123"));
        let honest_len = lying.len() as u16;
        lying[2..4].copy_from_slice(&(honest_len + 1).to_be_bytes());
        let mut lying6 = ipv6(17, &udp(5353, 53, b"q"));
        let plen = (lying6.len() - 40) as u16;
        lying6[4..6].copy_from_slice(&(plen + 1).to_be_bytes());
        let pppoe = |protocol: [u8; 2], packet: &[u8]| {
            [&[0x11, 0, 0, 1, 0, 0][..], &protocol, packet].concat()
        };
        let cases: Vec<(LinkType, Vec<u8>)> = vec![
            (LinkType::Null, [&2u32.to_le_bytes()[..], &lying].concat()),
            (LinkType::Loop, [&30u32.to_be_bytes()[..], &lying6].concat()),
            (
                LinkType::Ppp,
                [&[0xff, 0x03, 0x00, 0x21][..], &lying].concat(),
            ),
            (LinkType::Ppp, [&[0x57][..], &lying6].concat()),
            (
                LinkType::Ethernet,
                eth(0x8847, &[mpls(2), lying.clone()].concat()),
            ),
            (
                LinkType::Ethernet,
                eth(0x8848, &[mpls(1), lying6.clone()].concat()),
            ),
            (LinkType::Ethernet, eth(0x8864, &pppoe([0, 0x21], &lying))),
            (
                LinkType::Ethernet,
                eth_tagged(&[(ETHERTYPE_VLAN, 9)], 0x8864, &pppoe([0, 0x57], &lying6)),
            ),
        ];
        for (link, frame) in &cases {
            assert_eq!(
                decode_frame(*link, frame),
                Err(SkipReason::BadIpHeader),
                "{link:?} {frame:?}"
            );
            // A snap length that cut the frame does not make the claim true: the wire
            // length is the frame's.
            assert_eq!(
                decode_captured_frame(*link, &frame[..frame.len() - 2], frame.len()),
                Err(SkipReason::BadIpHeader),
                "{link:?}"
            );
            // One byte more on the wire, and the length is honest.
            let m = decode_captured_frame(*link, frame, frame.len() + 1).unwrap();
            assert!(m.ip_len as usize <= frame.len() + 1);
        }
    }

    #[test]
    fn ethernet_ipv4_tcp_syn_with_options() {
        let frame = eth_ipv4_tcp_syn();
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(
            m,
            PacketMeta {
                src_mac: Some(MAC_A),
                dst_mac: Some(MAC_B),
                sll_packet_type: None,
                vlan: None,
                src: v4(V4_A),
                dst: v4(V4_B),
                protocol: 6,
                src_port: 40000,
                dst_port: 443,
                ip_len: 20 + 12 + 20,
                tcp_flags: SYN,
                fragment: Fragment::None,
            }
        );
    }

    #[test]
    fn ethernet_ipv4_udp_ignores_padding() {
        // A short UDP datagram padded to Ethernet's 60-byte minimum: ip_len is the IP total
        // length, not the frame length.
        let mut frame = eth(ETHERTYPE_IPV4, &ipv4(17, 1, 0, &[], &udp(5353, 53, b"q")));
        frame.resize(60, 0);
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!((m.protocol, m.src_port, m.dst_port), (17, 5353, 53));
        assert_eq!((m.ip_len, m.tcp_flags), (29, 0));
        assert_eq!(m.fragment, Fragment::None);
    }

    #[test]
    fn sctp_and_udplite_ports() {
        for proto in [132, 136] {
            let frame = eth(ETHERTYPE_IPV4, &ipv4(proto, 1, 0, &[], &udp(7, 9, b"xx")));
            let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
            assert_eq!((m.protocol, m.src_port, m.dst_port), (proto, 7, 9));
        }
        // Other protocols (GRE here) have no ports even if bytes are there.
        let frame = eth(ETHERTYPE_IPV4, &ipv4(47, 1, 0, &[], &udp(7, 9, b"xx")));
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!((m.protocol, m.src_port, m.dst_port), (47, 0, 0));
    }

    #[test]
    fn icmp_and_icmpv6_have_no_ports() {
        let frame = eth(ETHERTYPE_IPV4, &ipv4(1, 1, 0, &[], &icmp_echo()));
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(
            (m.protocol, m.src_port, m.dst_port, m.tcp_flags),
            (1, 0, 0, 0)
        );
        assert_eq!(m.ip_len, 20 + 12);

        let frame = eth(ETHERTYPE_IPV6, &ipv6(58, &[128, 0, 0, 0, 0, 1, 0, 1]));
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!((m.protocol, m.src_port, m.dst_port), (58, 0, 0));
        assert_eq!(m.ip_len, 48);
    }

    #[test]
    fn single_vlan_and_qinq() {
        let inner = ipv4(17, 1, 0, &[], &udp(1, 2, b""));
        let frame = eth_tagged(&[(ETHERTYPE_VLAN, 100)], ETHERTYPE_IPV4, &inner);
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!((m.vlan, m.src_port, m.dst_port), (Some(100), 1, 2));
        assert_eq!(m.src_mac, Some(MAC_A));

        for outer in [ETHERTYPE_QINQ, ETHERTYPE_QINQ_OLD] {
            let frame = eth_tagged(
                &[(outer, 200), (ETHERTYPE_VLAN, 100)],
                ETHERTYPE_IPV4,
                &inner,
            );
            let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
            assert_eq!((m.vlan, m.src_port, m.dst_port), (Some(200), 1, 2));
        }

        let four = [
            (ETHERTYPE_QINQ, 4095),
            (ETHERTYPE_VLAN, 3),
            (0x8100, 2),
            (0x8100, 1),
        ];
        let frame = eth_tagged(&four, ETHERTYPE_IPV4, &inner);
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(m.vlan, Some(4095));

        let five = [
            (0x8100, 5),
            (0x8100, 4),
            (0x8100, 3),
            (0x8100, 2),
            (0x8100, 1),
        ];
        let frame = eth_tagged(&five, ETHERTYPE_IPV4, &inner);
        assert_eq!(
            decode_frame(LinkType::Ethernet, &frame),
            Err(SkipReason::NotIp)
        );

        // Cut inside the tag.
        let frame = eth_tagged(&[(ETHERTYPE_VLAN, 100)], ETHERTYPE_IPV4, &inner);
        assert_eq!(
            decode_frame(LinkType::Ethernet, &frame[..16]),
            Err(SkipReason::Truncated)
        );
        // A tagged ARP frame is still not IP.
        let frame = eth_tagged(&[(ETHERTYPE_VLAN, 100)], 0x0806, &[0; 28]);
        assert_eq!(
            decode_frame(LinkType::Ethernet, &frame),
            Err(SkipReason::NotIp)
        );
    }

    #[test]
    fn ipv6_tcp_after_hop_by_hop_and_destination_options() {
        let mut payload = ext_header(60, 0); // Hop-by-Hop → Destination Options
        payload.extend(ext_header(6, 1)); // Destination Options (16 bytes) → TCP
        payload.extend(tcp(50000, 22, SYN | ACK, b"hello"));
        let frame = eth(ETHERTYPE_IPV6, &ipv6(0, &payload));
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(
            m,
            PacketMeta {
                src_mac: Some(MAC_A),
                dst_mac: Some(MAC_B),
                sll_packet_type: None,
                vlan: None,
                src: v6(V6_A),
                dst: v6(V6_B),
                protocol: 6,
                src_port: 50000,
                dst_port: 22,
                ip_len: 40 + 8 + 16 + 20 + 5,
                tcp_flags: SYN | ACK,
                fragment: Fragment::None,
            }
        );
    }

    #[test]
    fn ipv6_routing_and_authentication_headers() {
        let mut payload = ext_header(51, 0); // Routing → AH
        // AH: payload len 4 → (4 + 2) * 4 = 24 bytes.
        let mut ah = vec![17, 4];
        ah.resize(24, 0xaa);
        payload.extend(ah);
        payload.extend(udp(123, 123, b"ntp"));
        let m = decode_frame(LinkType::RawIp, &ipv6(43, &payload)).unwrap();
        assert_eq!((m.protocol, m.src_port, m.dst_port), (17, 123, 123));
    }

    #[test]
    fn ipv6_no_next_header_and_too_many_extension_headers() {
        let m = decode_frame(LinkType::RawIp, &ipv6(0, &ext_header(59, 0))).unwrap();
        assert_eq!(
            (m.protocol, m.src_port, m.dst_port, m.ip_len),
            (59, 0, 0, 48)
        );

        let mut payload = Vec::new();
        for _ in 0..MAX_IPV6_EXT_HEADERS {
            payload.extend(ext_header(60, 0));
        }
        payload.extend(ext_header(17, 0));
        payload.extend(udp(1, 2, b""));
        let m = decode_frame(LinkType::RawIp, &ipv6(60, &payload)).unwrap();
        assert_eq!((m.protocol, m.src_port, m.dst_port), (60, 0, 0));
    }

    #[test]
    fn ipv6_extension_header_overruns() {
        // Declared 16-byte Destination Options header, but the packet ends after 8 bytes and
        // was captured whole: malformed.
        let mut payload = ext_header(6, 1);
        payload.truncate(8);
        let packet = ipv6(60, &payload);
        assert_eq!(
            decode_frame(LinkType::RawIp, &packet),
            Err(SkipReason::BadIpHeader)
        );
        // The capture cut a well-formed header: truncated.
        let mut payload = ext_header(6, 1);
        payload.extend(tcp(1, 2, SYN, b""));
        let packet = ipv6(60, &payload);
        assert_eq!(
            decode_captured_frame(LinkType::RawIp, &packet[..40 + 10], packet.len()),
            Err(SkipReason::Truncated)
        );
    }

    #[test]
    fn ipv6_ip_len_is_40_plus_payload_length() {
        for len in [0usize, 1, 8, 100, 1400] {
            let packet = ipv6(17, &udp(1, 2, &vec![0; len]));
            let m = decode_frame(LinkType::RawIp, &packet).unwrap();
            assert_eq!(m.ip_len, 40 + 8 + len as u32);
            // Captured header only (snap length 40): same count, no ports.
            let m = decode_captured_frame(LinkType::RawIp, &packet[..40], packet.len()).unwrap();
            assert_eq!((m.ip_len, m.src_port), (40 + 8 + len as u32, 0));
        }
        // Payload length 0 and no next header: just the fixed header, Ethernet padding is
        // not counted.
        let mut frame = eth(ETHERTYPE_IPV6, &ipv6(59, &[]));
        frame.resize(60, 0);
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!((m.ip_len, m.protocol), (40, 59));
    }

    #[test]
    fn ipv4_total_length_zero_is_a_gso_super_packet() {
        // Linux BIG TCP: an 80,000-byte TCP segment captured before segmentation.
        let payload = vec![0x5a; 80_000 - 20 - 20];
        let mut packet = ipv4(6, 1, 0x4000, &[], &tcp(40000, 443, ACK | 0x08, &payload));
        packet[2..4].copy_from_slice(&[0, 0]);
        let m = decode_frame(LinkType::Ethernet, &eth(ETHERTYPE_IPV4, &packet)).unwrap();
        assert_eq!(
            (m.ip_len, m.protocol, m.src_port, m.dst_port, m.tcp_flags),
            (80_000, 6, 40000, 443, ACK | 0x08)
        );
        assert_eq!(m.fragment, Fragment::None);
        // With options, and through a cooked capture.
        let mut packet = ipv4(17, 1, 0, &IPV4_OPTIONS, &udp(1, 2, &[0; 70_000]));
        packet[2..4].copy_from_slice(&[0, 0]);
        let frame = sll2(4, &MAC_A, ETHERTYPE_IPV4, &packet);
        let m = decode_frame(LinkType::LinuxSll2, &frame).unwrap();
        assert_eq!((m.ip_len, m.src_port), (32 + 8 + 70_000, 1));
        // Only the header captured: the header's bytes, no ports.
        let m = decode_frame(LinkType::RawIp, &packet[..32]).unwrap();
        assert_eq!((m.ip_len, m.src_port), (32, 0));
        // The header itself cut off: truncated, as with any other length.
        assert_eq!(
            decode_frame(LinkType::RawIp, &packet[..30]),
            Err(SkipReason::Truncated)
        );
        assert_eq!(
            decode_frame(LinkType::RawIp, &packet[..19]),
            Err(SkipReason::Truncated)
        );
    }

    /// A Hop-by-Hop header carrying a Jumbo Payload option of `len` (8 bytes, RFC 2675).
    fn jumbo_hop_by_hop(next_header: u8, len: u32) -> Vec<u8> {
        let mut h = vec![next_header, 0, IPV6_OPT_JUMBO, 4];
        h.extend_from_slice(&len.to_be_bytes());
        h
    }

    #[test]
    fn ipv6_payload_length_zero_is_a_jumbogram_or_big_tcp() {
        // BIG TCP: no Hop-by-Hop header, the capture has the whole packet.
        let mut packet = ipv6(6, &tcp(1, 2, ACK, &[0; 100_000]));
        packet[4..6].copy_from_slice(&[0, 0]);
        let m = decode_frame(LinkType::RawIp, &packet).unwrap();
        assert_eq!(
            (m.ip_len, m.src_port, m.dst_port, m.tcp_flags),
            (40 + 20 + 100_000, 1, 2, ACK)
        );
        // RFC 2675 jumbogram: the option's length counts, even when the capture is cut.
        let mut payload = jumbo_hop_by_hop(6, 8 + 20 + 70_000);
        payload.extend(tcp(5, 6, SYN, &[0; 70_000]));
        let mut packet = ipv6(0, &payload);
        packet[4..6].copy_from_slice(&[0, 0]);
        let frame = eth(ETHERTYPE_IPV6, &packet);
        for cut in [frame.len(), 14 + 40 + 8 + 20, 1514] {
            let m = decode_captured_frame(LinkType::Ethernet, &frame[..cut], frame.len()).unwrap();
            assert_eq!(
                (m.ip_len, m.protocol, m.src_port, m.tcp_flags),
                (40 + 8 + 20 + 70_000, 6, 5, SYN),
                "cut at {cut}"
            );
        }
        // Pad1 and PadN before the option are skipped.
        let mut hbh = vec![17, 1, 0, 1, 2, 0, 0, IPV6_OPT_JUMBO, 4];
        hbh.extend_from_slice(&200_000u32.to_be_bytes());
        hbh.resize(16, 0);
        hbh.extend(udp(7, 8, b""));
        let mut packet = ipv6(0, &hbh);
        packet[4..6].copy_from_slice(&[0, 0]);
        let m = decode_captured_frame(LinkType::RawIp, &packet, 40 + 200_000).unwrap();
        assert_eq!((m.ip_len, m.src_port), (40 + 200_000, 7));
        // An invalid jumbo length (< 65536) or a payload length that is not 0: the option
        // is ignored.
        let mut payload = jumbo_hop_by_hop(17, 1000);
        payload.extend(udp(7, 8, b""));
        let mut packet = ipv6(0, &payload);
        packet[4..6].copy_from_slice(&[0, 0]);
        let m = decode_frame(LinkType::RawIp, &packet).unwrap();
        assert_eq!(m.ip_len, 40 + 8 + 8);
        let mut payload = jumbo_hop_by_hop(17, 200_000);
        payload.extend(udp(7, 8, b""));
        let m = decode_frame(LinkType::RawIp, &ipv6(0, &payload)).unwrap();
        assert_eq!(m.ip_len, 40 + 8 + 8);
        // Options running past their header end the search.
        assert_eq!(
            jumbo_payload_length(&[6, 0, IPV6_OPT_JUMBO, 9, 0, 1, 0, 0]),
            None
        );
        assert_eq!(jumbo_payload_length(&[6, 0, 1]), None);
        assert_eq!(jumbo_payload_length(&[6]), None);
    }

    #[test]
    fn ipv6_fragments() {
        let mut payload = frag_header(17, 0, true, 0xdead_beef);
        payload.extend(udp(4000, 4001, &[0; 16]));
        let frame = eth(ETHERTYPE_IPV6, &ipv6(44, &payload));
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(m.fragment, Fragment::First { id: 0xdead_beef });
        assert_eq!((m.protocol, m.src_port, m.dst_port), (17, 4000, 4001));
        assert_eq!(m.ip_len, 40 + 8 + 24);

        // Later fragment: bytes after the header look like ports but are data.
        let mut payload = frag_header(17, 3, false, 0xdead_beef);
        payload.extend([0x11; 16]);
        let frame = eth(
            ETHERTYPE_IPV6,
            &ipv6(0, &[ext_header(44, 0), payload].concat()),
        );
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(m.fragment, Fragment::Later { id: 0xdead_beef });
        assert_eq!((m.protocol, m.src_port, m.dst_port), (17, 0, 0));

        // Atomic fragment (offset 0, M clear) is a whole packet.
        let mut payload = frag_header(6, 0, false, 9);
        payload.extend(tcp(1, 2, SYN, b""));
        let m = decode_frame(LinkType::RawIp, &ipv6(44, &payload)).unwrap();
        assert_eq!(m.fragment, Fragment::None);
        assert_eq!((m.protocol, m.src_port, m.tcp_flags), (6, 1, SYN));
    }

    #[test]
    fn ipv4_fragments() {
        // First: MF set, offset 0 → ports present.
        let frame = eth(
            ETHERTYPE_IPV4,
            &ipv4(17, 0x4242, 0x2000, &[], &udp(1000, 2000, &[0; 32])),
        );
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(m.fragment, Fragment::First { id: 0x4242 });
        assert_eq!((m.src_port, m.dst_port), (1000, 2000));

        // Later: offset > 0 (MF set or not) → no ports.
        for flags_offset in [0x2000 | 5, 5] {
            let frame = eth(
                ETHERTYPE_IPV4,
                &ipv4(17, 0x4242, flags_offset, &[], &[0x55; 40]),
            );
            let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
            assert_eq!(m.fragment, Fragment::Later { id: 0x4242 });
            assert_eq!(
                (m.protocol, m.src_port, m.dst_port, m.ip_len),
                (17, 0, 0, 60)
            );
        }
        // Later TCP fragment: no flags either.
        let frame = eth(ETHERTYPE_IPV4, &ipv4(6, 7, 10, &[], &[0xff; 40]));
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!((m.fragment, m.tcp_flags), (Fragment::Later { id: 7 }, 0));
        // DF alone is not a fragment.
        let frame = eth(
            ETHERTYPE_IPV4,
            &ipv4(6, 7, 0x4000, &[], &tcp(1, 2, ACK, b"")),
        );
        let m = decode_frame(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(m.fragment, Fragment::None);
    }

    #[test]
    fn sll_and_sll2_outgoing() {
        let inner = ipv4(6, 1, 0, &[], &tcp(33000, 80, ACK, b"GET"));
        let frame = sll(4, &MAC_A, ETHERTYPE_IPV4, &inner);
        let m = decode_frame(LinkType::LinuxSll, &frame).unwrap();
        assert_eq!(m.sll_packet_type, Some(4));
        assert_eq!((m.src_mac, m.dst_mac), (Some(MAC_A), None));
        assert_eq!((m.src_port, m.dst_port, m.tcp_flags), (33000, 80, ACK));

        let inner6 = ipv6(17, &udp(546, 547, b""));
        let frame = sll2(4, &MAC_A, ETHERTYPE_IPV6, &inner6);
        let m = decode_frame(LinkType::LinuxSll2, &frame).unwrap();
        assert_eq!(m.sll_packet_type, Some(4));
        assert_eq!((m.src_mac, m.dst_mac), (Some(MAC_A), None));
        assert_eq!((m.src, m.src_port, m.dst_port), (v6(V6_A), 546, 547));

        // Non-Ethernet link-layer address (e.g. a tunnel, length 0 or 4): no MAC.
        let frame = sll(0, &[1, 2, 3, 4], ETHERTYPE_IPV4, &inner);
        let m = decode_frame(LinkType::LinuxSll, &frame).unwrap();
        assert_eq!((m.src_mac, m.sll_packet_type), (None, Some(0)));
        let frame = sll2(3, &[], ETHERTYPE_IPV4, &inner);
        let m = decode_frame(LinkType::LinuxSll2, &frame).unwrap();
        assert_eq!((m.src_mac, m.sll_packet_type), (None, Some(3)));

        // VLAN tag left in a cooked capture.
        let mut tagged = vec![0x00, 0x2a]; // TCI: VLAN 42
        tagged.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        tagged.extend_from_slice(&inner);
        let frame = sll(0, &MAC_A, ETHERTYPE_VLAN, &tagged);
        let m = decode_frame(LinkType::LinuxSll, &frame).unwrap();
        assert_eq!((m.vlan, m.src_port), (Some(42), 33000));

        // Non-IP and short headers.
        let frame = sll(1, &MAC_A, 0x0806, &[0; 28]);
        assert_eq!(
            decode_frame(LinkType::LinuxSll, &frame),
            Err(SkipReason::NotIp)
        );
        assert_eq!(
            decode_frame(LinkType::LinuxSll, &frame[..15]),
            Err(SkipReason::Truncated)
        );
        let frame = sll2(1, &MAC_A, 0x0806, &[0; 28]);
        assert_eq!(
            decode_frame(LinkType::LinuxSll2, &frame),
            Err(SkipReason::NotIp)
        );
        assert_eq!(
            decode_frame(LinkType::LinuxSll2, &frame[..19]),
            Err(SkipReason::Truncated)
        );
    }

    #[test]
    fn raw_ip_v4_and_v6() {
        let m = decode_frame(LinkType::RawIp, &ipv4(17, 1, 0, &[], &udp(53, 9999, b""))).unwrap();
        assert_eq!((m.src, m.dst), (v4(V4_A), v4(V4_B)));
        assert_eq!((m.src_port, m.dst_port, m.ip_len), (53, 9999, 28));
        assert_eq!(
            (m.src_mac, m.dst_mac, m.sll_packet_type, m.vlan),
            (None, None, None, None)
        );

        let m = decode_frame(LinkType::RawIp, &ipv6(6, &tcp(443, 50000, 0x18, b"data"))).unwrap();
        assert_eq!((m.src, m.dst), (v6(V6_A), v6(V6_B)));
        assert_eq!(
            (m.src_port, m.dst_port, m.tcp_flags, m.ip_len),
            (443, 50000, 0x18, 64)
        );

        assert_eq!(
            decode_frame(LinkType::RawIp, &[]),
            Err(SkipReason::Truncated)
        );
        assert_eq!(
            decode_frame(LinkType::RawIp, &[0x50; 40]),
            Err(SkipReason::BadIpHeader)
        );
    }

    #[test]
    fn arp_and_other_ethertypes_are_not_ip() {
        let arp = [0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 10, 10, 0, 0, 1];
        let frame = eth(0x0806, &arp);
        assert_eq!(
            decode_frame(LinkType::Ethernet, &frame),
            Err(SkipReason::NotIp)
        );
        for ethertype in [0x88cc, 0x8035, 0x0026 /* 802.3 length */] {
            let frame = eth(ethertype, &[0; 46]);
            assert_eq!(
                decode_frame(LinkType::Ethernet, &frame),
                Err(SkipReason::NotIp)
            );
        }
    }

    #[test]
    fn bad_ip_headers() {
        let good = ipv4(6, 1, 0, &[], &tcp(1, 2, SYN, b""));
        // IHL < 5.
        let mut p = good.clone();
        p[0] = 0x44;
        assert_eq!(
            decode_frame(LinkType::RawIp, &p),
            Err(SkipReason::BadIpHeader)
        );
        // Total length < header length.
        let mut p = good.clone();
        p[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            decode_frame(LinkType::RawIp, &p),
            Err(SkipReason::BadIpHeader)
        );
        // With options: total length covers 20 bytes but not the 24-byte header.
        let mut p = ipv4(6, 1, 0, &[1, 1, 1, 0], &[]);
        p[2..4].copy_from_slice(&20u16.to_be_bytes());
        assert_eq!(
            decode_frame(LinkType::RawIp, &p),
            Err(SkipReason::BadIpHeader)
        );
        // EtherType and version disagree.
        let frame = eth(ETHERTYPE_IPV6, &good);
        assert_eq!(
            decode_frame(LinkType::Ethernet, &frame),
            Err(SkipReason::BadIpHeader)
        );
        let frame = eth(ETHERTYPE_IPV4, &ipv6(59, &[]));
        assert_eq!(
            decode_frame(LinkType::Ethernet, &frame),
            Err(SkipReason::BadIpHeader)
        );
        // Total length beyond the capture but within the wire length is a snap length, not
        // an error.
        let mut p = good.clone();
        p[2..4].copy_from_slice(&1500u16.to_be_bytes());
        let m = decode_captured_frame(LinkType::RawIp, &p, 1500).unwrap();
        assert_eq!((m.ip_len, m.src_port, m.tcp_flags), (1500, 1, SYN));
    }

    /// Issue 16: a length field is never believed past the frame it came in.
    #[test]
    fn declared_lengths_beyond_the_frame_are_malformed() {
        // An IPv6 Jumbo Payload option claiming 4 GiB in a frame of a few dozen bytes.
        let mut payload = jumbo_hop_by_hop(17, u32::MAX);
        payload.extend(udp(7, 8, b"x"));
        let mut packet = ipv6(0, &payload);
        packet[4..6].copy_from_slice(&[0, 0]);
        let frame = eth(ETHERTYPE_IPV6, &packet);
        assert_eq!(
            decode_frame(LinkType::Ethernet, &frame),
            Err(SkipReason::BadIpHeader)
        );
        // Nor does a snap length let it through: the frame was short on the wire too.
        assert_eq!(
            decode_captured_frame(LinkType::Ethernet, &frame[..14 + 40 + 8], frame.len()),
            Err(SkipReason::BadIpHeader)
        );
        // A jumbogram is counted when its frame really was that long on the wire, only then.
        let mut payload = jumbo_hop_by_hop(17, 200_000);
        payload.extend(udp(7, 8, b"x"));
        let mut packet = ipv6(0, &payload);
        packet[4..6].copy_from_slice(&[0, 0]);
        assert_eq!(
            decode_captured_frame(LinkType::RawIp, &packet, 40 + 199_999),
            Err(SkipReason::BadIpHeader)
        );
        assert_eq!(
            decode_captured_frame(LinkType::RawIp, &packet, 40 + 200_000)
                .unwrap()
                .ip_len,
            40 + 200_000
        );

        // An IPv4 total length larger than the frame.
        let mut packet = ipv4(6, 1, 0, &[], &tcp(1, 2, SYN, b""));
        packet[2..4].copy_from_slice(&65_535u16.to_be_bytes());
        for link in [LinkType::RawIp, LinkType::Ethernet, LinkType::LinuxSll2] {
            let frame = match link {
                LinkType::Ethernet => eth(ETHERTYPE_IPV4, &packet),
                LinkType::LinuxSll2 => sll2(0, &MAC_A, ETHERTYPE_IPV4, &packet),
                _ => packet.clone(),
            };
            assert_eq!(
                decode_frame(link, &frame),
                Err(SkipReason::BadIpHeader),
                "{link:?}"
            );
            // The link-layer header does not count towards the IP packet: a wire length
            // one byte short of header + total length is still too short.
            let header = frame.len() - packet.len();
            assert_eq!(
                decode_captured_frame(link, &frame, header + 65_534),
                Err(SkipReason::BadIpHeader),
                "{link:?}"
            );
            let m = decode_captured_frame(link, &frame, header + 65_535).unwrap();
            assert_eq!(m.ip_len, 65_535, "{link:?}");
        }
        // Behind VLAN tags too.
        let frame = eth_tagged(&[(ETHERTYPE_VLAN, 5)], ETHERTYPE_IPV4, &packet);
        assert_eq!(
            decode_frame(LinkType::Ethernet, &frame),
            Err(SkipReason::BadIpHeader)
        );

        // An IPv6 payload length larger than the frame.
        let mut packet = ipv6(17, &udp(1, 2, b"abc"));
        packet[4..6].copy_from_slice(&9000u16.to_be_bytes());
        assert_eq!(
            decode_frame(LinkType::RawIp, &packet),
            Err(SkipReason::BadIpHeader)
        );
        assert_eq!(
            decode_captured_frame(LinkType::RawIp, &packet, 40 + 9000)
                .unwrap()
                .ip_len,
            40 + 9000
        );

        // A wire length below the captured length counts as the captured length.
        let packet = ipv4(17, 1, 0, &[], &udp(1, 2, b"abc"));
        let m = decode_captured_frame(LinkType::RawIp, &packet, 0).unwrap();
        assert_eq!(m.ip_len as usize, packet.len());
        // Super-packets without a length count what was captured, which the frame allows.
        let mut packet = ipv4(6, 1, 0, &[], &tcp(1, 2, ACK, &[0; 70_000]));
        packet[2..4].copy_from_slice(&[0, 0]);
        let m = decode_captured_frame(LinkType::RawIp, &packet, MAX_WIRE_LEN).unwrap();
        assert_eq!(m.ip_len as usize, packet.len());
    }

    #[test]
    fn every_truncation_point_of_ethernet_ipv4_tcp() {
        let frame = eth_ipv4_tcp_syn();
        let ip_header_end = 14 + 20 + IPV4_OPTIONS.len();
        let full = decode_frame(LinkType::Ethernet, &frame).unwrap();
        for cut in 0..=frame.len() {
            let result = decode_captured_frame(LinkType::Ethernet, &frame[..cut], frame.len());
            if cut < ip_header_end {
                assert_eq!(result, Err(SkipReason::Truncated), "cut at {cut}");
                continue;
            }
            let m = result.unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            // The byte count comes from the IP header, never from the capture.
            assert_eq!(m.ip_len, full.ip_len, "cut at {cut}");
            assert_eq!((m.src, m.dst, m.protocol), (full.src, full.dst, 6));
            let l4 = cut - ip_header_end;
            if l4 < 4 {
                assert_eq!(
                    (m.src_port, m.dst_port, m.tcp_flags),
                    (0, 0, 0),
                    "cut at {cut}"
                );
            } else {
                assert_eq!((m.src_port, m.dst_port), (40000, 443), "cut at {cut}");
                let flags = if l4 >= 14 { SYN } else { 0 };
                assert_eq!(m.tcp_flags, flags, "cut at {cut}");
            }
        }
    }

    #[test]
    fn every_truncation_point_of_ipv6_with_extension_headers() {
        let mut payload = ext_header(44, 0);
        payload.extend(frag_header(6, 0, true, 77));
        payload.extend(tcp(1, 2, SYN, b""));
        let frame = sll2(0, &MAC_A, ETHERTYPE_IPV6, &ipv6(0, &payload));
        let headers_end = 20 + 40 + 8 + 8;
        for cut in 0..=frame.len() {
            let result = decode_captured_frame(LinkType::LinuxSll2, &frame[..cut], frame.len());
            if cut < headers_end {
                assert_eq!(result, Err(SkipReason::Truncated), "cut at {cut}");
            } else {
                let m = result.unwrap();
                assert_eq!((m.protocol, m.ip_len), (6, 40 + 16 + 20));
                assert_eq!(m.fragment, Fragment::First { id: 77 });
                let ports = if cut >= headers_end + 4 {
                    (1, 2)
                } else {
                    (0, 0)
                };
                assert_eq!((m.src_port, m.dst_port), ports, "cut at {cut}");
            }
        }
    }

    /// xorshift64: deterministic pseudo-random bytes without a dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_bytes_never_panic_and_keep_invariants() {
        const LINKS: [LinkType; 4] = [
            LinkType::Ethernet,
            LinkType::LinuxSll,
            LinkType::LinuxSll2,
            LinkType::RawIp,
        ];
        // Valid frames to mutate, so the random inputs also reach deep decoder paths.
        let mut ext = ext_header(44, 0);
        ext.extend(frag_header(6, 0, true, 1));
        ext.extend(tcp(1, 2, SYN, b""));
        let seeds: [(LinkType, Vec<u8>); 5] = [
            (LinkType::Ethernet, eth_ipv4_tcp_syn()),
            (
                LinkType::Ethernet,
                eth_tagged(
                    &[(ETHERTYPE_QINQ, 1), (ETHERTYPE_VLAN, 2)],
                    ETHERTYPE_IPV6,
                    &ipv6(0, &ext),
                ),
            ),
            (
                LinkType::LinuxSll,
                sll(
                    4,
                    &MAC_A,
                    ETHERTYPE_IPV4,
                    &ipv4(17, 1, 0x2000, &[], &udp(1, 2, b"")),
                ),
            ),
            (
                LinkType::LinuxSll2,
                sll2(4, &MAC_A, ETHERTYPE_IPV6, &ipv6(17, &udp(1, 2, b""))),
            ),
            (
                LinkType::RawIp,
                ipv6(
                    43,
                    &[
                        ext_header(51, 0),
                        vec![17, 1, 0, 0, 0, 0, 0, 0],
                        udp(1, 2, b""),
                    ]
                    .concat(),
                ),
            ),
        ];

        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut buf = [0u8; 256];
        let mut ok = 0usize;
        for i in 0..200_000 {
            let len;
            let wire_len;
            if i % 2 == 0 {
                // Pure random bytes.
                len = rng.below(buf.len() + 1);
                wire_len = len;
                for b in &mut buf[..len] {
                    *b = rng.next() as u8;
                }
            } else {
                // A valid frame with a few random byte changes and a random cut.
                let (_, seed) = &seeds[rng.below(seeds.len())];
                len = rng.below(seed.len() + 1);
                wire_len = seed.len();
                buf[..len].copy_from_slice(&seed[..len]);
                for _ in 0..=rng.below(4) {
                    if len > 0 {
                        buf[rng.below(len)] = rng.next() as u8;
                    }
                }
            }
            for link in LINKS {
                if let Ok(m) = decode_captured_frame(link, &buf[..len], wire_len) {
                    ok += 1;
                    check_invariants(link, &m);
                    assert!(m.ip_len as usize <= wire_len, "{m:?} from {wire_len} bytes");
                }
            }
        }
        // The mutated frames must actually exercise the success paths.
        assert!(ok > 10_000, "only {ok} frames decoded");
    }

    #[test]
    fn valid_frames_keep_invariants() {
        let cases = [
            (LinkType::Ethernet, eth_ipv4_tcp_syn()),
            (
                LinkType::Ethernet,
                eth(ETHERTYPE_IPV4, &ipv4(1, 1, 0, &[], &icmp_echo())),
            ),
            (
                LinkType::LinuxSll,
                sll(4, &MAC_A, ETHERTYPE_IPV6, &ipv6(58, &[1, 2, 3, 4])),
            ),
            (
                LinkType::LinuxSll2,
                sll2(
                    0,
                    &MAC_A,
                    ETHERTYPE_IPV4,
                    &ipv4(17, 1, 0, &[], &udp(1, 2, b"")),
                ),
            ),
            (LinkType::RawIp, ipv6(44, &frag_header(6, 9, false, 1))),
        ];
        for (link, frame) in cases {
            let m = decode_frame(link, &frame).unwrap();
            check_invariants(link, &m);
        }
    }
}
