//! Helpers shared by the tests of the nflog submodules: the addresses and interface of the
//! examples, logged-packet messages as the kernel builds them, and views of released
//! records.

use std::net::Ipv4Addr;

use flowlog_formats::FlowRecord;
use flowlog_formats::record::{Action, FlowDirection, LogStatus};

use super::wire::{
    MSG_PACKET, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV, NFULA_PACKET_HDR, NFULA_PAYLOAD,
    NFULA_SEQ, align4, put_attribute,
};
use crate::flow::{FlowTableSettings, InterfaceInfo};
use flowlog_tests::frames::{self, PROTO_TCP, PROTO_UDP, TCP_SYN};

pub(super) const GROUP: u16 = 100;
pub(super) const ENI_MAC: [u8; 6] = [2, 0x11, 0x22, 0x33, 0x44, 0x55];
pub(super) const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
pub(super) const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    put_attribute(&mut v, kind, value);
    v
}

/// A netlink message of `message_type` with body `body`.
pub(super) fn message(message_type: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
    m.extend_from_slice(&message_type.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    m.resize(align4(m.len()), 0);
    m
}

/// A logged-packet message as the kernel builds it.
pub(super) fn packet_message(
    indev: Option<u32>,
    outdev: Option<u32>,
    seq: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = vec![libc::AF_INET as u8, 0];
    body.extend_from_slice(&GROUP.to_be_bytes());
    body.extend(attribute(NFULA_PACKET_HDR, &[0x08, 0x00, 1, 0]));
    body.extend(attribute(2 /* NFULA_MARK */, &7u32.to_be_bytes()));
    if let Some(i) = indev {
        body.extend(attribute(NFULA_IFINDEX_INDEV, &i.to_be_bytes()));
    }
    if let Some(o) = outdev {
        body.extend(attribute(NFULA_IFINDEX_OUTDEV, &o.to_be_bytes()));
    }
    body.extend(attribute(10 /* NFULA_PREFIX */, b"flowlog drop\0"));
    if let Some(s) = seq {
        body.extend(attribute(NFULA_SEQ, &s.to_be_bytes()));
    }
    body.extend(attribute(NFULA_PAYLOAD, payload));
    message(MSG_PACKET, 2 /* NLM_F_MULTI */, 0, &body)
}

pub(super) fn syn_packet(sport: u16) -> Vec<u8> {
    let seg = frames::tcp(sport, 9, TCP_SYN, 0);
    frames::ipv4(REMOTE, HOST, PROTO_TCP, 1, 0, false, &seg)
}

pub(super) fn udp_packet(len: usize) -> Vec<u8> {
    let d = frames::udp(40000, 9999, len);
    frames::ipv4(HOST, REMOTE, PROTO_UDP, 1, 0, false, &d)
}

pub(super) fn info() -> InterfaceInfo {
    InterfaceInfo {
        interface_id: "eni-0123456789abcdef0".into(),
        account_id: "123456789010".into(),
        mac: ENI_MAC,
        primary_v4: Some(HOST),
        primary_v6: None,
    }
}

pub(super) fn settings(max_flows: usize) -> FlowTableSettings {
    FlowTableSettings {
        interval_secs: 60,
        max_flows,
    }
}

pub(super) type Row = (FlowDirection, Action, u64, u64, Option<u16>);

pub(super) fn ok(out: &[FlowRecord]) -> Vec<Row> {
    out.iter()
        .filter(|r| r.log_status == Some(LogStatus::Ok))
        .map(|r| {
            (
                r.flow_direction.unwrap(),
                r.action.unwrap(),
                r.packets.unwrap(),
                r.bytes.unwrap(),
                r.tcp_flags,
            )
        })
        .collect()
}

pub(super) fn statuses(out: &[FlowRecord]) -> Vec<LogStatus> {
    out.iter().map(|r| r.log_status.unwrap()).collect()
}
