//! Frames built by `flowlog_tests::frames` decode to what they were built from.

mod tests {
    use crate::decode::{Fragment, LinkType, PacketMeta, decode_frame};
    use flowlog_tests::frames::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
    const B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];
    const V4A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
    const V4B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

    fn v6(last: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last)
    }

    fn decode(link: LinkType, frame: &[u8]) -> PacketMeta {
        match decode_frame(link, frame) {
            Ok(m) => m,
            Err(e) => panic!("{e:?} decoding {frame:02x?}"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        m: &PacketMeta,
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
        sport: u16,
        dport: u16,
        ip_len: u32,
        flags: u8,
    ) {
        assert_eq!(m.src, src);
        assert_eq!(m.dst, dst);
        assert_eq!(m.protocol, protocol);
        assert_eq!(m.src_port, sport);
        assert_eq!(m.dst_port, dport);
        assert_eq!(m.ip_len, ip_len);
        assert_eq!(m.tcp_flags, flags);
    }

    #[test]
    fn checksum_of_known_header() {
        // RFC 1071 style example: a header whose checksum field is filled verifies to 0.
        let p = ipv4(V4A, V4B, PROTO_TCP, 0x1c46, 0, false, &[]);
        assert_eq!(internet_checksum(&p[..20]), 0);
        let m = icmp_echo(true, 7, 9, 33);
        assert_eq!(internet_checksum(&m), 0);
        assert_eq!(internet_checksum(&[0xff]), 0x00ff);
    }

    /// Verifies the transport checksum of a frame from a convenience builder: summing the
    /// pseudo-header and segment with the checksum in place gives 0.
    fn transport_checksum_ok(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> bool {
        let mut copy = segment.to_vec();
        set_transport_checksum(src, dst, protocol, &mut copy);
        copy == segment && segment.iter().any(|b| *b != 0)
    }

    #[test]
    fn transport_checksums() {
        // Known value: TCP SYN 10.0.0.1:40000 -> 10.0.0.2:443, seq 0, win 65535, as
        // computed by tcpdump.
        let f = tcp_v4(
            A,
            B,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            40000,
            443,
            TCP_SYN,
            0,
        );
        assert_eq!(&f[14 + 20 + 16..14 + 20 + 18], &[0xfd, 0xe4]);
        let f = udp_v6(A, B, v6(1), v6(2), 5353, 53, 10);
        assert!(transport_checksum_ok(
            v6(1).into(),
            v6(2).into(),
            PROTO_UDP,
            &f[54..]
        ));
        let f = icmp_v6(A, B, v6(1), v6(2), true, 10);
        assert!(transport_checksum_ok(
            v6(1).into(),
            v6(2).into(),
            PROTO_ICMPV6,
            &f[54..]
        ));
        let f = udp_v4(A, B, V4A, V4B, 1, 2, 3);
        assert!(transport_checksum_ok(
            V4A.into(),
            V4B.into(),
            PROTO_UDP,
            &f[34..]
        ));
        // Other protocols and mixed families are left alone.
        let mut seg = [1u8; 8];
        set_transport_checksum(V4A.into(), v6(1).into(), PROTO_UDP, &mut seg);
        set_transport_checksum(V4A.into(), V4B.into(), PROTO_ICMP, &mut seg);
        assert_eq!(seg, [1u8; 8]);
    }

    #[test]
    fn tcp_v4_decodes() {
        let f = tcp_v4(A, B, V4A, V4B, 40000, 443, TCP_SYN | TCP_ACK, 100);
        assert_eq!(f.len(), 14 + 20 + 20 + 100);
        let m = decode(LinkType::Ethernet, &f);
        check(&m, V4A.into(), V4B.into(), PROTO_TCP, 40000, 443, 140, 0x12);
        assert_eq!(m.src_mac, Some(A));
        assert_eq!(m.dst_mac, Some(B));
        assert_eq!(m.vlan, None);
        assert_eq!(m.fragment, Fragment::None);
    }

    #[test]
    fn udp_and_icmp_v4_decode() {
        let m = decode(LinkType::Ethernet, &udp_v4(A, B, V4A, V4B, 53000, 53, 30));
        check(
            &m,
            V4A.into(),
            V4B.into(),
            PROTO_UDP,
            53000,
            53,
            20 + 8 + 30,
            0,
        );
        let m = decode(LinkType::Ethernet, &icmp_v4(B, A, V4B, V4A, true, 56));
        check(&m, V4B.into(), V4A.into(), PROTO_ICMP, 0, 0, 20 + 8 + 56, 0);
        assert_eq!(m.src_mac, Some(B));
    }

    #[test]
    fn v6_frames_decode() {
        let m = decode(
            LinkType::Ethernet,
            &tcp_v6(A, B, v6(1), v6(2), 1234, 22, TCP_FIN | TCP_ACK, 10),
        );
        check(
            &m,
            v6(1).into(),
            v6(2).into(),
            PROTO_TCP,
            1234,
            22,
            40 + 20 + 10,
            0x11,
        );
        let m = decode(
            LinkType::Ethernet,
            &udp_v6(A, B, v6(1), v6(2), 5353, 5353, 0),
        );
        check(&m, v6(1).into(), v6(2).into(), PROTO_UDP, 5353, 5353, 48, 0);
        let m = decode(LinkType::Ethernet, &icmp_v6(B, A, v6(2), v6(1), false, 8));
        check(
            &m,
            v6(2).into(),
            v6(1).into(),
            PROTO_ICMPV6,
            0,
            0,
            40 + 16,
            0,
        );
    }

    #[test]
    fn vlan_tag_decodes() {
        let ip = ipv4(V4A, V4B, PROTO_UDP, 0, 0, false, &udp(1, 2, 3));
        let f = vlan(A, B, 42, ETHERTYPE_IPV4, &ip);
        let m = decode(LinkType::Ethernet, &f);
        assert_eq!(m.vlan, Some(42));
        check(&m, V4A.into(), V4B.into(), PROTO_UDP, 1, 2, 31, 0);
    }

    #[test]
    fn ipv4_fragments_decode() {
        let seg = tcp(40000, 80, TCP_ACK, 1480 - 20);
        let first = ipv4(V4A, V4B, PROTO_TCP, 777, 0, true, &seg[..1480]);
        let m = decode(LinkType::Ethernet, &ethernet(A, B, ETHERTYPE_IPV4, &first));
        assert_eq!(m.fragment, Fragment::First { id: 777 });
        assert_eq!((m.src_port, m.dst_port), (40000, 80));
        assert_eq!(m.ip_len, 1500);

        let later = ipv4(V4A, V4B, PROTO_TCP, 777, 1480, false, &[0; 100]);
        let m = decode(LinkType::Ethernet, &ethernet(A, B, ETHERTYPE_IPV4, &later));
        assert_eq!(m.fragment, Fragment::Later { id: 777 });
        assert_eq!((m.src_port, m.dst_port), (0, 0));
        assert_eq!(m.protocol, PROTO_TCP);
        assert_eq!(m.ip_len, 120);
    }

    #[test]
    fn ipv6_fragments_decode() {
        let first = ipv6_fragment(PROTO_UDP, 0, true, 0xdead_beef, &udp(4000, 4001, 1000));
        let f = ethernet(
            A,
            B,
            ETHERTYPE_IPV6,
            &ipv6(v6(1), v6(2), PROTO_IPV6_FRAGMENT, &first),
        );
        let m = decode(LinkType::Ethernet, &f);
        assert_eq!(m.fragment, Fragment::First { id: 0xdead_beef });
        assert_eq!(m.protocol, PROTO_UDP);
        assert_eq!((m.src_port, m.dst_port), (4000, 4001));

        let later = ipv6_fragment(PROTO_UDP, 1008, false, 0xdead_beef, &[0; 64]);
        let f = ethernet(
            A,
            B,
            ETHERTYPE_IPV6,
            &ipv6(v6(1), v6(2), PROTO_IPV6_FRAGMENT, &later),
        );
        let m = decode(LinkType::Ethernet, &f);
        assert_eq!(m.fragment, Fragment::Later { id: 0xdead_beef });
        assert_eq!(m.protocol, PROTO_UDP);
        assert_eq!((m.src_port, m.dst_port), (0, 0));
        assert_eq!(m.ip_len, 40 + 8 + 64);
    }

    #[test]
    fn linux_cooked_and_raw_ip_decode() {
        let ip = ipv4(V4A, V4B, PROTO_TCP, 0, 0, false, &tcp(1, 2, TCP_RST, 0));
        let m = decode(
            LinkType::LinuxSll,
            &linux_sll(SLL_OUTGOING, A, ETHERTYPE_IPV4, &ip),
        );
        assert_eq!(m.sll_packet_type, Some(SLL_OUTGOING));
        check(&m, V4A.into(), V4B.into(), PROTO_TCP, 1, 2, 40, TCP_RST);

        let m = decode(
            LinkType::LinuxSll2,
            &linux_sll2(SLL_HOST, B, 3, ETHERTYPE_IPV4, &ip),
        );
        assert_eq!(m.sll_packet_type, Some(SLL_HOST));
        check(&m, V4A.into(), V4B.into(), PROTO_TCP, 1, 2, 40, TCP_RST);

        let m = decode(LinkType::RawIp, &ip);
        assert_eq!(m.src_mac, None);
        check(&m, V4A.into(), V4B.into(), PROTO_TCP, 1, 2, 40, TCP_RST);
    }

    #[test]
    fn qinq_options_and_extension_headers_decode() {
        let ip = ipv4_with_options(
            V4A,
            V4B,
            PROTO_UDP,
            5,
            0,
            false,
            &IPV4_OPTION_ROUTER_ALERT,
            &udp(7, 9, 10),
        );
        assert_eq!(ip[0], 0x46);
        assert_eq!(internet_checksum(&ip[..24]), 0);
        let f = ethernet_tagged(
            A,
            B,
            &[(ETHERTYPE_QINQ, 300), (ETHERTYPE_VLAN, 42)],
            ETHERTYPE_IPV4,
            &ip,
        );
        assert_eq!(
            &f[12..22],
            &[0x88, 0xa8, 0x01, 0x2c, 0x81, 0x00, 0, 42, 0x08, 0x00]
        );
        let m = decode(LinkType::Ethernet, &f);
        assert_eq!(m.vlan, Some(300));
        check(&m, V4A.into(), V4B.into(), PROTO_UDP, 7, 9, 24 + 18, 0);
        // Odd option lengths are padded; IHL never exceeds 15.
        assert_eq!(
            ipv4_with_options(V4A, V4B, 1, 0, 0, false, &[1], &[]).len(),
            24
        );
        assert_eq!(
            ipv4_with_options(V4A, V4B, 1, 0, 0, false, &[1; 50], &[])[0],
            0x4f
        );

        let seg = ipv6_options(
            PROTO_IPV6_DSTOPTS,
            &ipv6_options(PROTO_TCP, &tcp(1, 2, TCP_SYN, 0)),
        );
        let f = ethernet(
            A,
            B,
            ETHERTYPE_IPV6,
            &ipv6(v6(1), v6(2), PROTO_IPV6_HOPOPTS, &seg),
        );
        let m = decode(LinkType::Ethernet, &f);
        check(
            &m,
            v6(1).into(),
            v6(2).into(),
            PROTO_TCP,
            1,
            2,
            40 + 16 + 20,
            TCP_SYN,
        );
    }

    #[test]
    fn non_ip_is_skipped() {
        let f = ethernet(A, B, ETHERTYPE_ARP, &[0; 28]);
        assert!(decode_frame(LinkType::Ethernet, &f).is_err());
    }
}
