//! The netlink / nfnetlink_log wire format: the configuration request that binds a group
//! ([`config_request`]) and the messages the socket receives ([`NetlinkMessages`]); pure,
//! and panic-free on any bytes.

/// Bytes of each dropped packet the kernel copies to the agent: enough for the IP header
/// (with options or IPv6 extension headers) and the transport header; byte counts come
/// from the IP header's length field, not from the copy.
pub const COPY_RANGE_BYTES: u32 = 256;

/// How long the kernel may hold logged packets before sending them, in hundredths of a
/// second (the kernel's default is 1 s). Short, so that an event reaches the agent before
/// capture writes the interval of its packet.
pub const FLUSH_TIMEOUT_CENTISECONDS: u32 = 1;

// Netlink and nfnetlink_log constants (linux/netlink.h, linux/netfilter/nfnetlink*.h).
const NLMSG_HDR_BYTES: usize = 16;
const NFGENMSG_BYTES: usize = 4;
const NLA_HDR_BYTES: usize = 4;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_ACK: u16 = libc::NLM_F_ACK as u16;
const NLA_TYPE_MASK: u16 = libc::NLA_TYPE_MASK as u16;
const NFNETLINK_V0: u8 = libc::NFNETLINK_V0 as u8;
const NFNL_SUBSYS_ULOG: u16 = libc::NFNL_SUBSYS_ULOG as u16;
/// Message type of a logged packet: subsystem in the high byte, message in the low.
pub(super) const MSG_PACKET: u16 = (NFNL_SUBSYS_ULOG << 8) | libc::NFULNL_MSG_PACKET as u16;
const MSG_CONFIG: u16 = (NFNL_SUBSYS_ULOG << 8) | libc::NFULNL_MSG_CONFIG as u16;
pub(super) const NFULA_PACKET_HDR: u16 = libc::NFULA_PACKET_HDR as u16;
pub(super) const NFULA_IFINDEX_INDEV: u16 = libc::NFULA_IFINDEX_INDEV as u16;
pub(super) const NFULA_IFINDEX_OUTDEV: u16 = libc::NFULA_IFINDEX_OUTDEV as u16;
pub(super) const NFULA_PAYLOAD: u16 = libc::NFULA_PAYLOAD as u16;
pub(super) const NFULA_SEQ: u16 = libc::NFULA_SEQ as u16;
const NFULA_CFG_CMD: u16 = libc::NFULA_CFG_CMD as u16;
const NFULA_CFG_MODE: u16 = libc::NFULA_CFG_MODE as u16;
const NFULA_CFG_TIMEOUT: u16 = libc::NFULA_CFG_TIMEOUT as u16;
const NFULA_CFG_FLAGS: u16 = libc::NFULA_CFG_FLAGS as u16;
const NFULNL_CFG_CMD_BIND: u8 = libc::NFULNL_CFG_CMD_BIND as u8;
const NFULNL_COPY_PACKET: u8 = libc::NFULNL_COPY_PACKET as u8;
const NFULNL_CFG_F_SEQ: u16 = libc::NFULNL_CFG_F_SEQ as u16;

/// Builds the configuration request that binds `group` to the sending socket, copies
/// [`COPY_RANGE_BYTES`] of each packet, flushes after [`FLUSH_TIMEOUT_CENTISECONDS`] and
/// numbers messages (`NFULA_SEQ`); the kernel acknowledges it with an `NLMSG_ERROR` whose
/// sequence number is `seq`.
pub fn config_request(group: u16, seq: u32) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(&0u32.to_ne_bytes()); // length, set below
    msg.extend_from_slice(&MSG_CONFIG.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    // nfgenmsg: any family (the group is bound for all), version 0, resource id = group.
    msg.push(libc::AF_UNSPEC as u8);
    msg.push(NFNETLINK_V0);
    msg.extend_from_slice(&group.to_be_bytes());
    put_attribute(&mut msg, NFULA_CFG_CMD, &[NFULNL_CFG_CMD_BIND]);
    let mut mode = COPY_RANGE_BYTES.to_be_bytes().to_vec();
    mode.extend_from_slice(&[NFULNL_COPY_PACKET, 0]);
    put_attribute(&mut msg, NFULA_CFG_MODE, &mode);
    put_attribute(
        &mut msg,
        NFULA_CFG_TIMEOUT,
        &FLUSH_TIMEOUT_CENTISECONDS.to_be_bytes(),
    );
    put_attribute(&mut msg, NFULA_CFG_FLAGS, &NFULNL_CFG_F_SEQ.to_be_bytes());
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    msg[..4].copy_from_slice(&len.to_ne_bytes());
    msg
}

/// Appends one netlink attribute, padded to 4 bytes.
pub(super) fn put_attribute(msg: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(NLA_HDR_BYTES + value.len()).unwrap_or(u16::MAX);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(value);
    msg.resize(align4(msg.len()), 0);
}

pub(super) fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// One packet logged to the group (`NFULNL_MSG_PACKET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NflogPacket<'a> {
    /// The group it was logged to.
    pub group: u16,
    /// The packet's link-layer protocol (0x0800 IPv4, 0x86dd IPv6), 0 if not sent.
    pub hw_protocol: u16,
    /// Netfilter hook of the rule (inet: 0 prerouting, 1 input, 2 forward, 3 output,
    /// 4 postrouting), 0 if not sent.
    pub hook: u8,
    /// Index of the interface the packet arrived on.
    pub indev: Option<u32>,
    /// Index of the interface the packet was to leave through.
    pub outdev: Option<u32>,
    /// The packet from its IP header on, cut at the copy range.
    pub payload: Option<&'a [u8]>,
    /// Per-group sequence number (when numbering was asked for).
    pub seq: Option<u32>,
}

/// One netlink message received on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetlinkMessage<'a> {
    /// A logged packet.
    Packet(NflogPacket<'a>),
    /// An acknowledgement (`errno` 0) or error (a negative errno) for request `seq`.
    Ack {
        /// Sequence number of the request.
        seq: u32,
        /// 0, or the negated errno.
        errno: i32,
    },
    /// End of a multi-part batch.
    Done,
    /// Any other message type.
    Other {
        /// Its `nlmsg_type`.
        message_type: u16,
    },
}

/// A message that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NflogParseError {
    /// The netlink header is cut off or gives a length outside the datagram; the rest of
    /// the datagram cannot be framed.
    #[error("netlink message header at byte {offset} is truncated or has a bad length")]
    BadHeader {
        /// Offset of the message in the datagram.
        offset: usize,
    },
    /// The message body is shorter than its fixed part, or an attribute's length is out
    /// of bounds; the next message is still read.
    #[error("netlink message of type {message_type:#06x} at byte {offset} is malformed")]
    BadBody {
        /// Offset of the message in the datagram.
        offset: usize,
        /// Its `nlmsg_type`.
        message_type: u16,
    },
}

/// Iterator over the netlink messages of one received datagram. It never panics: a
/// malformed message yields an error; after a framing error ([`NflogParseError::BadHeader`])
/// the iteration ends.
#[derive(Debug, Clone)]
pub struct NetlinkMessages<'a> {
    datagram: &'a [u8],
    offset: usize,
}

impl<'a> NetlinkMessages<'a> {
    /// Iterates over the messages of `datagram`.
    pub fn new(datagram: &'a [u8]) -> Self {
        NetlinkMessages {
            datagram,
            offset: 0,
        }
    }
}

impl<'a> Iterator for NetlinkMessages<'a> {
    type Item = Result<NetlinkMessage<'a>, NflogParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let offset = self.offset;
        let rest = self.datagram.get(offset..)?;
        if rest.is_empty() {
            return None;
        }
        let bad_header = NflogParseError::BadHeader { offset };
        let Some(header) = rest.first_chunk::<NLMSG_HDR_BYTES>() else {
            self.offset = self.datagram.len();
            return Some(Err(bad_header));
        };
        let len = usize::try_from(ne_u32(&header[0..4])).unwrap_or(usize::MAX);
        let message_type = ne_u16(&header[4..6]);
        let seq = ne_u32(&header[8..12]);
        let Some(message) = rest.get(..len).filter(|_| len >= NLMSG_HDR_BYTES) else {
            self.offset = self.datagram.len();
            return Some(Err(bad_header));
        };
        self.offset = offset.saturating_add(align4(len)).min(self.datagram.len());
        let body = message.get(NLMSG_HDR_BYTES..).unwrap_or_default();
        let bad_body = NflogParseError::BadBody {
            offset,
            message_type,
        };
        Some(match message_type {
            MSG_PACKET => parse_packet(body)
                .ok_or(bad_body)
                .map(NetlinkMessage::Packet),
            NLMSG_ERROR => body
                .first_chunk::<4>()
                .map(|e| NetlinkMessage::Ack {
                    seq,
                    errno: i32::from_ne_bytes(*e),
                })
                .ok_or(bad_body),
            NLMSG_DONE => Ok(NetlinkMessage::Done),
            _ => Ok(NetlinkMessage::Other { message_type }),
        })
    }
}

fn ne_u16(b: &[u8]) -> u16 {
    b.first_chunk::<2>().map_or(0, |b| u16::from_ne_bytes(*b))
}

fn ne_u32(b: &[u8]) -> u32 {
    b.first_chunk::<4>().map_or(0, |b| u32::from_ne_bytes(*b))
}

fn be_u32(b: &[u8]) -> Option<u32> {
    b.first_chunk::<4>().map(|b| u32::from_be_bytes(*b))
}

/// Parses the body of an `NFULNL_MSG_PACKET` (nfgenmsg, then attributes).
fn parse_packet(body: &[u8]) -> Option<NflogPacket<'_>> {
    let (nfgen, mut attributes) = body.split_first_chunk::<NFGENMSG_BYTES>()?;
    let mut packet = NflogPacket {
        group: u16::from_be_bytes([nfgen[2], nfgen[3]]),
        hw_protocol: 0,
        hook: 0,
        indev: None,
        outdev: None,
        payload: None,
        seq: None,
    };
    while !attributes.is_empty() {
        let (header, _) = attributes.split_first_chunk::<NLA_HDR_BYTES>()?;
        let len = usize::from(ne_u16(&header[0..2]));
        let kind = ne_u16(&header[2..4]) & NLA_TYPE_MASK;
        let value = attributes.get(NLA_HDR_BYTES..len)?;
        match kind {
            NFULA_PACKET_HDR => {
                let hdr = value.first_chunk::<3>()?;
                packet.hw_protocol = u16::from_be_bytes([hdr[0], hdr[1]]);
                packet.hook = hdr[2];
            }
            NFULA_IFINDEX_INDEV => packet.indev = Some(be_u32(value)?),
            NFULA_IFINDEX_OUTDEV => packet.outdev = Some(be_u32(value)?),
            NFULA_PAYLOAD => packet.payload = Some(value),
            NFULA_SEQ => packet.seq = Some(be_u32(value)?),
            _ => {}
        }
        attributes = attributes.get(align4(len)..).unwrap_or_default();
    }
    Some(packet)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::nflog::test_support::{GROUP, message, packet_message, syn_packet, udp_packet};

    fn parse_all(datagram: &[u8]) -> Vec<Result<NetlinkMessage<'_>, NflogParseError>> {
        NetlinkMessages::new(datagram).collect()
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn config_request_has_the_kernel_layout() {
        let m = config_request(GROUP, 7);
        assert_eq!(m.len(), 16 + 4 + 8 + 12 + 8 + 8);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 56);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0401);
        assert_eq!(u16::from_ne_bytes([m[6], m[7]]), 1 | 4);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(&m[16..20], &[0, 0, 0, 100]);
        // CMD: len 5, type 1, BIND, padding.
        assert_eq!(&m[20..28], &[5, 0, 1, 0, 1, 0, 0, 0][..]);
        // MODE: len 10, type 2, be32 256, COPY_PACKET, pad, padding.
        assert_eq!(&m[28..40], &[10, 0, 2, 0, 0, 0, 1, 0, 2, 0, 0, 0][..]);
        // TIMEOUT: be32 1 (10 ms).
        assert_eq!(&m[40..48], &[8, 0, 4, 0, 0, 0, 0, 1][..]);
        // FLAGS: be16 SEQ.
        assert_eq!(&m[48..56], &[6, 0, 6, 0, 0, 1, 0, 0][..]);
    }

    #[test]
    fn a_batch_of_packets_an_ack_and_done() {
        let syn = syn_packet(40000);
        let mut datagram = packet_message(Some(3), None, Some(0), &syn);
        datagram.extend(packet_message(None, Some(4), Some(1), &syn[..30]));
        let mut ack = Vec::from(0i32.to_ne_bytes());
        ack.extend_from_slice(&config_request(GROUP, 1)[..16]);
        datagram.extend(message(NLMSG_ERROR, 0, 1, &ack));
        datagram.extend(message(NLMSG_DONE, 2, 0, &0i32.to_ne_bytes()));
        datagram.extend(message(0x0001 /* NLMSG_NOOP */, 0, 0, &[]));
        let got = parse_all(&datagram);
        assert_eq!(got.len(), 5, "{got:?}");
        let Ok(NetlinkMessage::Packet(p)) = got[0] else {
            panic!("{got:?}")
        };
        assert_eq!(
            p,
            NflogPacket {
                group: GROUP,
                hw_protocol: 0x0800,
                hook: 1,
                indev: Some(3),
                outdev: None,
                payload: Some(&syn[..]),
                seq: Some(0),
            }
        );
        let Ok(NetlinkMessage::Packet(p)) = got[1] else {
            panic!("{got:?}")
        };
        assert_eq!((p.indev, p.outdev, p.seq), (None, Some(4), Some(1)));
        assert_eq!(p.payload.map(<[u8]>::len), Some(30));
        assert_eq!(got[2], Ok(NetlinkMessage::Ack { seq: 1, errno: 0 }));
        assert_eq!(got[3], Ok(NetlinkMessage::Done));
        assert_eq!(got[4], Ok(NetlinkMessage::Other { message_type: 1 }));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let good = packet_message(Some(3), None, None, &syn_packet(1));
        // Header cut off.
        assert_eq!(
            parse_all(&good[..10]),
            vec![Err(NflogParseError::BadHeader { offset: 0 })]
        );
        // Length beyond the datagram, and below the header size.
        assert_eq!(
            parse_all(&good[..good.len() - 4]),
            vec![Err(NflogParseError::BadHeader { offset: 0 })]
        );
        let mut tiny = good.clone();
        tiny[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert_eq!(
            parse_all(&tiny),
            vec![Err(NflogParseError::BadHeader { offset: 0 })]
        );
        // An attribute whose length runs past the message: that message is bad, the next
        // one is still read.
        let mut bad = good.clone();
        bad[20..22].copy_from_slice(&500u16.to_ne_bytes());
        bad.extend(&good);
        let got = parse_all(&bad);
        assert_eq!(
            got[0],
            Err(NflogParseError::BadBody {
                offset: 0,
                message_type: MSG_PACKET
            })
        );
        assert!(matches!(got[1], Ok(NetlinkMessage::Packet(_))));
        // An attribute shorter than its header; a u32 attribute with 2 bytes; an empty
        // error message.
        for (at, len) in [(20, 2u16), (36, 6)] {
            let mut bad = good.clone();
            bad[at..at + 2].copy_from_slice(&len.to_ne_bytes());
            assert!(
                matches!(parse_all(&bad)[0], Err(NflogParseError::BadBody { .. })),
                "{at}"
            );
        }
        assert!(matches!(
            parse_all(&message(NLMSG_ERROR, 0, 0, &[]))[0],
            Err(NflogParseError::BadBody { .. })
        ));
    }

    proptest! {
        #[test]
        fn damaged_packet_messages_parse_without_panic(
            cut in 0usize..200,
            flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..6),
        ) {
            let mut datagram = packet_message(Some(3), Some(4), Some(9), &syn_packet(1));
            datagram.extend(packet_message(None, Some(4), None, &udp_packet(3)));
            for (at, byte) in flips {
                if let Some(b) = datagram.get_mut(at) {
                    *b = byte;
                }
            }
            datagram.truncate(cut);
            // Every message but a final framing error takes at least a header's bytes.
            let n = NetlinkMessages::new(&datagram).count();
            prop_assert!(n <= datagram.len() / NLMSG_HDR_BYTES + 1);
        }
    }
}
