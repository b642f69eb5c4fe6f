//! Fuzzes `flowlog_agent::decode::decode_frame` and `decode_captured_frame` with every link
//! type, checking the decoded fields' invariants, not only the absence of panics.

#![no_main]

use std::net::IpAddr;

use flowlog_agent::decode::{Fragment, LinkType, PacketMeta, decode_captured_frame, decode_frame};
use libfuzzer_sys::fuzz_target;

const LINKS: [LinkType; 4] = [
    LinkType::Ethernet,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::RawIp,
];

fn check(link: LinkType, frame: &[u8], m: &PacketMeta) {
    // Address families agree, and the AWS byte count covers at least the fixed IP header.
    match (m.src, m.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => assert!(m.ip_len >= 20, "IPv4 ip_len < 20: {m:?}"),
        (IpAddr::V6(_), IpAddr::V6(_)) => assert!(m.ip_len >= 40, "IPv6 ip_len < 40: {m:?}"),
        _ => panic!("mixed address families: {m:?}"),
    }
    // Port-less packets.
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
    // Link-layer fields match the link type.
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
        LinkType::RawIp => {
            assert_eq!(
                (m.src_mac, m.dst_mac, m.sll_packet_type, m.vlan),
                (None, None, None, None)
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    for link in LINKS {
        let Ok(full) = decode_frame(link, data) else {
            continue;
        };
        check(link, data, &full);
        assert!(full.ip_len as usize <= data.len(), "ip_len beyond the frame: {full:?}");
        assert_eq!(decode_frame(link, data), Ok(full), "not deterministic");

        // A shorter capture of the same frame either fails or agrees on everything the IP
        // header says; only the ports and flags may be lost.
        for cut in [data.len() / 2, data.len().saturating_sub(1)] {
            let Some(prefix) = data.get(..cut) else {
                continue;
            };
            if let Ok(m) = decode_captured_frame(link, prefix, data.len()) {
                check(link, prefix, &m);
                assert_eq!(
                    (m.src, m.dst, m.protocol, m.ip_len, m.fragment, m.vlan),
                    (
                        full.src,
                        full.dst,
                        full.protocol,
                        full.ip_len,
                        full.fragment,
                        full.vlan
                    ),
                    "prefix of {cut} bytes disagrees"
                );
                assert!(m.src_port == full.src_port || m.src_port == 0);
                assert!(m.dst_port == full.dst_port || m.dst_port == 0);
                assert!(m.tcp_flags == full.tcp_flags || m.tcp_flags == 0);
            }
        }
    }
});
