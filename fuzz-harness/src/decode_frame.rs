//! `decode_frame`: the agent's frame decoder on every link type.

use std::net::IpAddr;

use flowlog_agent::decode::{self, Fragment, LinkType, PacketMeta};

const LINKS: [LinkType; 7] = [
    LinkType::Ethernet,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::RawIp,
    LinkType::Null,
    LinkType::Loop,
    LinkType::Ppp,
];

/// Decodes `data` as a frame of every link type. Checks every decoded packet's fields
/// ([`check_packet`]), that no packet counts more bytes than its frame holds, that decoding
/// is deterministic, and that shorter captures of the same frame (a snap length: the wire
/// length stays the frame's) either fail or agree on everything the IP header says.
pub fn decode_frame(data: &[u8]) {
    for link in LINKS {
        let full = match decode::decode_frame(link, data) {
            Ok(full) => full,
            Err(reason) => {
                assert!(!reason.as_str().is_empty());
                continue;
            }
        };
        check_packet(link, data, &full);
        assert!(
            full.ip_len as usize <= data.len(),
            "ip_len beyond the frame: {full:?}"
        );
        assert_eq!(
            decode::decode_frame(link, data),
            Ok(full),
            "not deterministic"
        );

        for cut in [data.len() / 2, data.len().saturating_sub(1)] {
            let Some(prefix) = data.get(..cut) else {
                continue;
            };
            if let Ok(m) = decode::decode_captured_frame(link, prefix, data.len()) {
                check_packet(link, prefix, &m);
                assert_eq!(
                    (m.src, m.dst, m.protocol, m.fragment, m.vlan),
                    (full.src, full.dst, full.protocol, full.fragment, full.vlan),
                    "prefix of {cut} bytes disagrees"
                );
                // A super-packet (IPv4 total length 0, IPv6 payload length 0 without a
                // Jumbo Payload option) counts the bytes captured, so a shorter capture
                // counts exactly the bytes cut off less; any other packet counts what its
                // header declares, whatever was captured.
                let cut_off = u32::try_from(data.len() - cut).unwrap_or(u32::MAX);
                assert!(
                    m.ip_len == full.ip_len || full.ip_len.checked_sub(m.ip_len) == Some(cut_off),
                    "prefix of {cut} bytes counts {} bytes, the whole frame {}",
                    m.ip_len,
                    full.ip_len
                );
                assert!(m.src_port == full.src_port || m.src_port == 0);
                assert!(m.dst_port == full.dst_port || m.dst_port == 0);
                assert!(m.tcp_flags == full.tcp_flags || m.tcp_flags == 0);
            }
        }
    }
}

/// Properties every decoded packet has: address families agree, `ip_len` covers the fixed
/// IP header, port-less packets have no ports, TCP flags only on TCP, and the link-layer
/// fields match the link type. Shared with the NFLOG and pcap targets.
pub(crate) fn check_packet(link: LinkType, frame: &[u8], m: &PacketMeta) {
    match (m.src, m.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => assert!(m.ip_len >= 20, "IPv4 ip_len < 20: {m:?}"),
        (IpAddr::V6(_), IpAddr::V6(_)) => assert!(m.ip_len >= 40, "IPv6 ip_len < 40: {m:?}"),
        _ => panic!("mixed address families: {m:?}"),
    }
    if matches!(m.protocol, 1 | 58) || matches!(m.fragment, Fragment::Later { .. }) {
        assert_eq!(
            (m.src_port, m.dst_port),
            (0, 0),
            "ports on a port-less packet: {m:?}"
        );
    }
    if !matches!(m.protocol, 6 | 17 | 132 | 136) {
        assert_eq!(
            (m.src_port, m.dst_port),
            (0, 0),
            "ports for protocol {}: {m:?}",
            m.protocol
        );
    }
    if m.tcp_flags != 0 {
        assert_eq!(m.protocol, 6, "TCP flags on a non-TCP packet: {m:?}");
    }
    if let Some(vlan) = m.vlan {
        assert!(vlan <= 0x0fff, "VLAN id out of range: {m:?}");
    }
    match link {
        LinkType::Ethernet => {
            assert_eq!(m.dst_mac.as_ref(), frame.first_chunk::<6>());
            assert_eq!(
                m.src_mac.as_ref(),
                frame.get(6..).and_then(|s| s.first_chunk::<6>())
            );
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
            assert_eq!(
                (m.src_mac, m.dst_mac, m.sll_packet_type, m.vlan),
                (None, None, None, None)
            );
        }
    }
}
