//! `nflog`: the agent's NFLOG netlink datagram parser.

use std::time::Duration;

use flowlog_agent::decode::LinkType;
use flowlog_agent::nflog::{NetlinkMessage, NetlinkMessages, NflogParseError, reject_event};

/// Parses `data` as one netlink datagram. Checks that the iteration ends within one
/// message per 16 bytes (a message header is 16 bytes), that a framing error ends it,
/// that errors carry a message and point inside the datagram, and that every logged
/// packet that becomes a reject event decodes to a sane packet.
pub fn nflog(data: &[u8]) {
    let mut messages = 0usize;
    let mut framing_error = false;
    for message in NetlinkMessages::new(data) {
        assert!(!framing_error, "a message after a framing error");
        messages += 1;
        assert!(
            messages <= data.len() / 16 + 1,
            "{messages} messages from {} bytes",
            data.len()
        );
        match message {
            Ok(NetlinkMessage::Packet(packet)) => {
                if let Some(payload) = packet.payload {
                    assert!(payload.len() <= data.len());
                }
                if let Some((ifindex, event)) = reject_event(&packet, Duration::from_secs(1)) {
                    assert_ne!(ifindex, 0);
                    if let Some(payload) = packet.payload {
                        crate::decode_frame::check_packet(LinkType::RawIp, payload, &event.meta);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                crate::assert_has_message(&e);
                let (NflogParseError::BadHeader { offset }
                | NflogParseError::BadBody { offset, .. }) = e;
                assert!(
                    offset < data.len(),
                    "error offset {offset} outside the datagram"
                );
                framing_error = matches!(e, NflogParseError::BadHeader { .. });
            }
        }
    }
}
