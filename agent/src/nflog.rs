//! Host firewall drops, learnt from an NFLOG group: the source of `action = REJECT`.
//!
//! The user's nftables or iptables drop rules log to an NFLOG group (`log group N` /
//! `-j NFLOG --nflog-group N`, see `docs/agent-firewall.md`); the agent binds that group on
//! a `NETLINK_NETFILTER` socket and receives one `NFULNL_MSG_PACKET` message per dropped
//! packet, with the interfaces it came in on / was to go out of and the first
//! [`COPY_RANGE_BYTES`] bytes of the packet from its IP header on.
//!
//! Capture (`AF_PACKET`) sees a received packet *before* netfilter and a sent packet
//! *after* it, hence:
//!
//! - a packet dropped in prerouting, input or forward has an in-device; capture on that
//!   interface already counted it, so the event marks that ingress flow (same 5-tuple, same
//!   interface, open interval) REJECT;
//! - a locally generated packet dropped in output or postrouting has only an out-device
//!   and never reaches the wire: the event counts it as an egress packet of that interface,
//!   REJECT.
//!
//! The drops of an interface are aggregated in its [`RejectLedger`] and merged into the
//! interface's records when capture releases an interval, after the records of all its
//! capture threads came together: which thread counted a packet, and whether the packet or
//! its event came first, do not matter.
//!
//! Lost events (the socket's receive buffer overran: `ENOBUFS`; the sequence numbers the
//! kernel stamps on every message then show how many) are counted in [`COUNTERS`] and
//! reported as loss to every interface's ledger, so their interval gets SKIPDATA.
//!
//! The layout is:
//!
//! - [`FirewallConfig`] → [`FirewallSettings`]: the `[firewall]` config section;
//! - [`config_request`], [`NetlinkMessages`]: the wire format, pure and panic-free on any
//!   bytes;
//! - [`start`]: binds the group, then one thread `nflog-<group>` reads it and hands each
//!   event to the ledger of its interface through the [`RejectRouter`], where capture
//!   registers every interface it starts; capture's threads merge with
//!   [`RejectHandle::apply`].
//!
//! The socket belongs to the network namespace the agent runs in: only rules of that
//! namespace reach it.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowlog_formats::FlowRecord;
use flowlog_formats::record::{Action, FlowDirection, LogStatus};
use serde::Deserialize;

use crate::decode::{LinkType, MAX_WIRE_LEN, PacketMeta, decode_captured_frame};
use crate::flow::{Direction, FlowTable, FlowTableSettings, InterfaceInfo};
use crate::flow::{RecordKey, record_key};

/// Bytes of each dropped packet the kernel copies to the agent: enough for the IP header
/// (with options or IPv6 extension headers) and the transport header; byte counts come
/// from the IP header's length field, not from the copy.
pub const COPY_RANGE_BYTES: u32 = 256;

/// How long the kernel may hold logged packets before sending them, in hundredths of a
/// second (the kernel's default is 1 s). Short, so that an event reaches the agent before
/// capture writes the interval of its packet.
pub const FLUSH_TIMEOUT_CENTISECONDS: u32 = 1;

/// Receive buffer asked of the kernel for the netlink socket (it caps the value at
/// `net.core.rmem_max`); a burst of drops larger than it loses events (counted).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// How long a read waits before the listener checks for shutdown.
pub const READ_TIMEOUT: Duration = Duration::from_millis(250);

/// How long [`start`] waits for the kernel to acknowledge the group's configuration.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes of the buffer one datagram is read into.
const RECEIVE_BUFFER_BYTES: usize = 64 * 1024;

/// Least time between two warnings about lost events.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

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
const MSG_PACKET: u16 = (NFNL_SUBSYS_ULOG << 8) | libc::NFULNL_MSG_PACKET as u16;
const MSG_CONFIG: u16 = (NFNL_SUBSYS_ULOG << 8) | libc::NFULNL_MSG_CONFIG as u16;
const NFULA_PACKET_HDR: u16 = libc::NFULA_PACKET_HDR as u16;
const NFULA_IFINDEX_INDEV: u16 = libc::NFULA_IFINDEX_INDEV as u16;
const NFULA_IFINDEX_OUTDEV: u16 = libc::NFULA_IFINDEX_OUTDEV as u16;
const NFULA_PAYLOAD: u16 = libc::NFULA_PAYLOAD as u16;
const NFULA_SEQ: u16 = libc::NFULA_SEQ as u16;
const NFULA_CFG_CMD: u16 = libc::NFULA_CFG_CMD as u16;
const NFULA_CFG_MODE: u16 = libc::NFULA_CFG_MODE as u16;
const NFULA_CFG_TIMEOUT: u16 = libc::NFULA_CFG_TIMEOUT as u16;
const NFULA_CFG_FLAGS: u16 = libc::NFULA_CFG_FLAGS as u16;
const NFULNL_CFG_CMD_BIND: u8 = libc::NFULNL_CFG_CMD_BIND as u8;
const NFULNL_COPY_PACKET: u8 = libc::NFULNL_COPY_PACKET as u8;
const NFULNL_CFG_F_SEQ: u16 = libc::NFULNL_CFG_F_SEQ as u16;

// ------------------------------------------------------------------------------------------
// Configuration

/// The `[firewall]` section as written.
///
/// ```toml
/// [firewall]
/// nflog_group = 100
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    /// NFLOG group (0-65535) that the host firewall's drop rules log to. Absent: the agent
    /// does not listen, and every record has `action` ACCEPT.
    pub nflog_group: Option<i64>,
}

/// Validated `[firewall]` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FirewallSettings {
    /// NFLOG group to bind; `None` = firewall drops are not learnt.
    pub nflog_group: Option<u16>,
}

/// Validates the `[firewall]` section, reporting each problem to `add` as `(key, problem)`.
pub fn validate_config(
    raw: Option<FirewallConfig>,
    add: &mut dyn FnMut(&str, String),
) -> FirewallSettings {
    let Some(group) = raw.and_then(|r| r.nflog_group) else {
        return FirewallSettings::default();
    };
    match u16::try_from(group) {
        Ok(group) => FirewallSettings {
            nflog_group: Some(group),
        },
        Err(_) => {
            add(
                "firewall.nflog_group",
                format!("{group} is not an NFLOG group (0-65535)"),
            );
            FirewallSettings::default()
        }
    }
}

// ------------------------------------------------------------------------------------------
// Wire format

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
fn put_attribute(msg: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = u16::try_from(NLA_HDR_BYTES + value.len()).unwrap_or(u16::MAX);
    msg.extend_from_slice(&len.to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(value);
    msg.resize(align4(msg.len()), 0);
}

fn align4(n: usize) -> usize {
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

// ------------------------------------------------------------------------------------------
// Events, and the ledger that merges them into an interface's records

/// A packet the host firewall dropped, for the ledger of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectEvent {
    /// The packet, decoded from its IP header.
    pub meta: PacketMeta,
    /// Ingress: it arrived on the interface; egress: it was to leave through it.
    pub direction: Direction,
    /// When the agent received the event (Unix time).
    pub at: Duration,
}

/// Turns a logged packet into the interface it belongs to and its event: the in-device
/// (ingress) if the packet has one, else the out-device (egress). `None` if it has neither
/// or its payload is not an IP packet.
pub fn reject_event(packet: &NflogPacket<'_>, at: Duration) -> Option<(u32, RejectEvent)> {
    let (ifindex, direction) = match (packet.indev, packet.outdev) {
        (Some(i), _) if i != 0 => (i, Direction::Ingress),
        (_, Some(o)) if o != 0 => (o, Direction::Egress),
        _ => return None,
    };
    // The payload is a partial copy ([`COPY_RANGE_BYTES`]) of a packet the kernel's IP layer
    // already checked; its wire length is not in the message.
    let meta = decode_captured_frame(LinkType::RawIp, packet.payload?, MAX_WIRE_LEN).ok()?;
    Some((
        ifindex,
        RejectEvent {
            meta,
            direction,
            at,
        },
    ))
}

/// Counters of the NFLOG listener, for metrics. Monotonic; relaxed atomics.
#[derive(Debug)]
pub struct NflogCounters {
    /// Packet messages received.
    pub events: AtomicU64,
    /// Events handed to a captured interface's ledger.
    pub routed: AtomicU64,
    /// Events for an interface the agent does not capture (e.g. `lo`).
    pub other_interface: AtomicU64,
    /// Events without an interface or whose payload is not an IP packet, and malformed
    /// messages.
    pub undecodable: AtomicU64,
    /// Ingress events that arrived after capture had already written their interval: the
    /// packet was counted there, with `action` ACCEPT.
    pub late: AtomicU64,
    /// Events lost because the socket's receive buffer overran (seen as gaps in the
    /// kernel's sequence numbers).
    pub lost: AtomicU64,
    /// Receive buffer overruns (`ENOBUFS`), each losing one or more events.
    pub overruns: AtomicU64,
}

impl NflogCounters {
    /// All zero.
    pub const fn new() -> Self {
        NflogCounters {
            events: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            other_interface: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            late: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
        }
    }
}

impl Default for NflogCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's NFLOG counters (one listener per agent).
pub static COUNTERS: NflogCounters = NflogCounters::new();

/// The firewall drops of one interface, aggregated like capture's packets (a flow table
/// of their own) and merged into the interface's records when capture releases an
/// interval ([`RejectLedger::apply`]). Merging at that point, rather than in the capture
/// threads' tables, makes the result independent of which thread counted a packet (fanout)
/// and of whether the event or the packet came first:
///
/// - an ingress drop capture counted: the flow's record gets `action` REJECT, with
///   capture's counts;
/// - an ingress drop capture has no record of (its packet was lost, or the interval is
///   being flushed at shutdown): the drop's own record (packets, bytes, flags from the
///   log), REJECT;
/// - an egress drop (never on the wire): its packets and bytes are added to the flow's
///   record, or make one, REJECT;
/// - lost events: SKIPDATA for the interval. A NODATA row gives way to any of these.
///
/// An ingress event that arrives after capture already released its interval is counted
/// in [`NflogCounters::late`] and dropped (the packet was counted, as ACCEPT); a late egress
/// event is counted in the next interval.
#[derive(Debug)]
pub struct RejectLedger {
    table: FlowTable,
    mac: [u8; 6],
    interval_secs: u64,
    /// Drop records of intervals the ledger closed, by interval start, until capture
    /// releases the same interval.
    closed: BTreeMap<u64, Vec<FlowRecord>>,
    /// End (Unix seconds, exclusive) of the latest interval capture released.
    released_until: u64,
}

impl RejectLedger {
    /// Creates the ledger of the interface `info`, with capture's table settings.
    pub fn new(info: InterfaceInfo, settings: FlowTableSettings) -> Self {
        let mac = info.mac;
        RejectLedger {
            table: FlowTable::new(info, settings),
            mac,
            interval_secs: settings.interval_secs.max(1),
            closed: BTreeMap::new(),
            released_until: 0,
        }
    }

    /// Accounts one dropped packet.
    pub fn observe(&mut self, event: &RejectEvent) {
        let mut at = event.at;
        if at.as_secs() < self.released_until {
            match event.direction {
                Direction::Ingress => {
                    COUNTERS.late.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Direction::Egress => at = Duration::from_secs(self.released_until),
            }
        }
        // The ledger's table tells direction the way capture's does: by the source MAC.
        let mut meta = event.meta;
        meta.src_mac = (event.direction == Direction::Egress).then_some(self.mac);
        meta.dst_mac = None;
        meta.sll_packet_type = None;
        let mut out = Vec::new();
        self.table.observe(&meta, at, &mut out);
        self.stash(out);
    }

    /// Accounts `lost` events (of unknown flows) at `now`: SKIPDATA.
    pub fn record_loss(&mut self, now: Duration, lost: u64) {
        self.table.record_loss(now, lost);
    }

    fn interval_of(&self, r: &FlowRecord) -> u64 {
        let start = r.start.unwrap_or(0);
        start - start % self.interval_secs
    }

    fn stash(&mut self, records: Vec<FlowRecord>) {
        for r in records {
            if r.log_status != Some(LogStatus::NoData) {
                let interval = self.interval_of(&r);
                self.closed.entry(interval).or_default().push(r);
            }
        }
    }

    /// Merges the drops into `released`: the records of the intervals capture has just
    /// closed for this interface (every thread's, after the fanout merge), in time order;
    /// the last interval may be partial when capture stops (it ends after `now`). Returns
    /// them in the same order, an interval's SKIPDATA first.
    pub fn apply(&mut self, released: Vec<FlowRecord>, now: Duration) -> Vec<FlowRecord> {
        let Some(last) = released.iter().map(|r| self.interval_of(r)).max() else {
            return released;
        };
        let end = last.saturating_add(self.interval_secs);
        let mut out = Vec::new();
        if end <= now.as_secs() {
            self.table.close_due(Duration::from_secs(end), &mut out);
        } else {
            self.table.flush_all(now, &mut out);
        }
        self.stash(out);
        self.released_until = self.released_until.max(end);
        let mut result = Vec::with_capacity(released.len());
        let mut run = Vec::new();
        let mut run_interval = None;
        for r in released {
            let interval = self.interval_of(&r);
            if run_interval != Some(interval) {
                self.merge_run(run_interval, &mut run, &mut result);
                run_interval = Some(interval);
            }
            run.push(r);
        }
        self.merge_run(run_interval, &mut run, &mut result);
        // Drops of intervals capture had nothing for any more: written on their own.
        while let Some(entry) = self.closed.first_entry() {
            if *entry.key() >= end {
                break;
            }
            result.extend(merge_interval(Vec::new(), entry.remove()));
        }
        result
    }

    fn merge_run(
        &mut self,
        interval: Option<u64>,
        run: &mut Vec<FlowRecord>,
        result: &mut Vec<FlowRecord>,
    ) {
        let run = std::mem::take(run);
        match interval.and_then(|i| self.closed.remove(&i)) {
            Some(drops) => result.extend(merge_interval(run, drops)),
            None => result.extend(run),
        }
    }
}

/// Merges the drop records of one interval into capture's records of the same interval
/// (see [`RejectLedger`]).
fn merge_interval(mut records: Vec<FlowRecord>, drops: Vec<FlowRecord>) -> Vec<FlowRecord> {
    let mut index: HashMap<RecordKey, usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.log_status == Some(LogStatus::Ok))
        .map(|(i, r)| (record_key(r), i))
        .collect();
    let mut skipdata = None;
    for mut d in drops {
        match d.log_status {
            Some(LogStatus::Ok) => {}
            Some(LogStatus::SkipData) => {
                skipdata = Some(d);
                continue;
            }
            _ => continue,
        }
        let key = record_key(&d);
        let Some(r) = index.get(&key).and_then(|&i| records.get_mut(i)) else {
            d.action = Some(Action::Reject);
            index.insert(key, records.len());
            records.push(d);
            continue;
        };
        r.action = Some(Action::Reject);
        if d.flow_direction == Some(FlowDirection::Egress) {
            r.packets = Some(
                r.packets
                    .unwrap_or(0)
                    .saturating_add(d.packets.unwrap_or(0)),
            );
            r.bytes = Some(r.bytes.unwrap_or(0).saturating_add(d.bytes.unwrap_or(0)));
            r.start = r.start.min(d.start).or(d.start);
            r.end = r.end.max(d.end);
            r.tcp_flags = match (r.tcp_flags, d.tcp_flags) {
                (Some(a), Some(b)) => Some(a | b),
                (a, b) => a.or(b),
            };
        }
    }
    if let Some(skip) = skipdata
        && !records
            .iter()
            .any(|r| r.log_status == Some(LogStatus::SkipData))
    {
        records.push(skip);
    }
    if records
        .iter()
        .any(|r| r.log_status != Some(LogStatus::NoData))
    {
        records.retain(|r| r.log_status != Some(LogStatus::NoData));
    }
    // Stable: capture's order is kept among records of the same start.
    records.sort_by_key(|r| (r.log_status != Some(LogStatus::SkipData), r.start));
    records
}

fn lock(ledger: &Mutex<RejectLedger>) -> MutexGuard<'_, RejectLedger> {
    // A panic while holding the lock leaves a consistent ledger behind (every update is
    // complete before the next begins).
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A capture thread's way to its interface's [`RejectLedger`] (shared by the interface's
/// threads and the listener).
#[derive(Debug, Clone)]
pub struct RejectHandle(Arc<Mutex<RejectLedger>>);

impl RejectHandle {
    /// [`RejectLedger::apply`] on the interface's ledger.
    pub fn apply(&self, released: Vec<FlowRecord>, now: Duration) -> Vec<FlowRecord> {
        if released.is_empty() {
            return released;
        }
        lock(&self.0).apply(released, now)
    }
}

/// Routes the listener's events to the ledgers of the captured interfaces, by interface
/// index. Capture registers each interface it starts ([`RejectRouter::register`]).
#[derive(Debug, Default)]
pub struct RejectRouter {
    ledgers: Mutex<HashMap<u32, Arc<Mutex<RejectLedger>>>>,
}

impl RejectRouter {
    /// Creates the ledger of interface `ifindex` (replacing that of an interface that had
    /// the index before) and returns the handle its capture threads merge with.
    pub fn register(
        &self,
        ifindex: u32,
        info: InterfaceInfo,
        settings: FlowTableSettings,
    ) -> RejectHandle {
        let ledger = Arc::new(Mutex::new(RejectLedger::new(info, settings)));
        self.map().insert(ifindex, Arc::clone(&ledger));
        RejectHandle(ledger)
    }

    fn map(&self) -> MutexGuard<'_, HashMap<u32, Arc<Mutex<RejectLedger>>>> {
        self.ledgers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `event` to the ledger of `ifindex`; false if that interface is not captured.
    fn route(&self, ifindex: u32, event: &RejectEvent) -> bool {
        let Some(ledger) = self.map().get(&ifindex).cloned() else {
            return false;
        };
        lock(&ledger).observe(event);
        true
    }

    /// Reports `lost` events, whose interfaces are unknown, to every ledger.
    fn lose(&self, now: Duration, lost: u64) {
        let ledgers: Vec<_> = self.map().values().cloned().collect();
        for ledger in ledgers {
            lock(&ledger).record_loss(now, lost);
        }
    }
}

/// Failure to listen to the NFLOG group.
#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    /// The netlink socket could not be created or set up.
    #[error("cannot open a netfilter netlink socket for nflog group {group}")]
    Socket {
        /// The group.
        group: u16,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another process (ulogd, a second agent) already listens to the group.
    #[error("nflog group {group} is already bound by another process")]
    Busy {
        /// The group.
        group: u16,
    },
    /// The kernel refused the configuration (no CAP_NET_ADMIN; no nfnetlink_log support).
    #[error("binding nflog group {group} failed (needs CAP_NET_ADMIN and nfnetlink_log)")]
    Bind {
        /// The group.
        group: u16,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The kernel did not acknowledge the configuration within [`BIND_TIMEOUT`].
    #[error("no answer from the kernel when binding nflog group {group}")]
    NoAnswer {
        /// The group.
        group: u16,
    },
    /// The listener thread could not be started.
    #[error("cannot start the listener thread of nflog group {group}")]
    Thread {
        /// The group.
        group: u16,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Starts listening to the configured NFLOG group: binds it (failing if the kernel
/// refuses), then starts the listener thread `nflog-<group>`, which feeds the router's
/// ledgers until `stop` is set or the router is dropped. `None` when `settings` has no
/// group.
pub fn start(
    settings: &FirewallSettings,
    stop: &Arc<AtomicBool>,
) -> Result<Option<Arc<RejectRouter>>, NflogError> {
    let Some(group) = settings.nflog_group else {
        return Ok(None);
    };
    let router = Arc::new(RejectRouter::default());
    let mut listener = Listener {
        group,
        socket: open_socket(group)?,
        router: Arc::clone(&router),
        next_seq: 0,
        loss_credit: 0,
        buffer: vec![0; RECEIVE_BUFFER_BYTES],
        last_warning: None,
        unwarned_lost: 0,
    };
    listener.bind()?;
    let stop = Arc::clone(stop);
    std::thread::Builder::new()
        .name(format!("nflog-{group}"))
        .spawn(move || listener.run(&stop))
        .map_err(|source| NflogError::Thread { group, source })?;
    Ok(Some(router))
}

fn open_socket(group: u16) -> Result<socket2::Socket, NflogError> {
    let err = |source| NflogError::Socket { group, source };
    let socket = socket2::Socket::new(
        socket2::Domain::from(libc::AF_NETLINK),
        socket2::Type::from(libc::SOCK_RAW),
        Some(socket2::Protocol::from(libc::NETLINK_NETFILTER)),
    )
    .map_err(err)?;
    socket.set_read_timeout(Some(READ_TIMEOUT)).map_err(err)?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    Ok(socket)
}

/// The listener thread's state.
#[derive(Debug)]
struct Listener {
    group: u16,
    socket: socket2::Socket,
    router: Arc<RejectRouter>,
    /// Sequence number the next packet message should carry.
    next_seq: u32,
    /// Events already reported lost at an overrun, before the sequence gap showed them.
    loss_credit: u64,
    buffer: Vec<u8>,
    last_warning: Option<Instant>,
    unwarned_lost: u64,
}

/// Sequence number of the configuration request.
const CONFIG_SEQ: u32 = 1;

impl Listener {
    /// Sends the configuration and waits for its acknowledgement.
    fn bind(&mut self) -> Result<(), NflogError> {
        let group = self.group;
        self.socket
            .send(&config_request(group, CONFIG_SEQ))
            .map_err(|source| NflogError::Bind { group, source })?;
        let deadline = Instant::now() + BIND_TIMEOUT;
        while Instant::now() < deadline {
            let n = match (&self.socket).read(&mut self.buffer) {
                Ok(n) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(source) => return Err(NflogError::Bind { group, source }),
            };
            if let Some(errno) = self.handle_datagram(n, unix_now()) {
                return match errno {
                    0 => Ok(()),
                    e if e == -libc::EBUSY => Err(NflogError::Busy { group }),
                    e => Err(NflogError::Bind {
                        group,
                        source: io::Error::from_raw_os_error(e.saturating_neg()),
                    }),
                };
            }
        }
        Err(NflogError::NoAnswer { group })
    }

    fn run(mut self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match (&self.socket).read(&mut self.buffer) {
                Ok(n) => {
                    self.handle_datagram(n, unix_now());
                }
                Err(e) if is_timeout(&e) => {
                    if Arc::strong_count(&self.router) == 1 {
                        return; // capture is gone
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.overrun(unix_now()),
                Err(e) => {
                    eprintln!(
                        "error: nflog group {}: receive failed, firewall drops are no longer seen: {e}",
                        self.group
                    );
                    return;
                }
            }
        }
    }

    /// Handles the datagram in the first `n` bytes of the buffer; returns the errno of the
    /// configuration request's acknowledgement if it is in there.
    fn handle_datagram(&mut self, n: usize, now: Duration) -> Option<i32> {
        let datagram = std::mem::take(&mut self.buffer);
        let mut ack = None;
        for message in NetlinkMessages::new(datagram.get(..n).unwrap_or_default()) {
            match message {
                Ok(NetlinkMessage::Packet(packet)) => self.packet(&packet, now),
                Ok(NetlinkMessage::Ack { seq, errno }) if seq == CONFIG_SEQ => ack = Some(errno),
                Ok(_) => {}
                Err(_) => {
                    COUNTERS.undecodable.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.buffer = datagram;
        ack
    }

    fn packet(&mut self, packet: &NflogPacket<'_>, now: Duration) {
        COUNTERS.events.fetch_add(1, Ordering::Relaxed);
        if let Some(seq) = packet.seq {
            let gap = seq.wrapping_sub(self.next_seq);
            // A gap of more than half the number space is a reordering, not a loss.
            if gap > 0 && gap < 1 << 31 {
                let unreported = u64::from(gap).saturating_sub(self.loss_credit);
                self.loss_credit = 0;
                self.lose(now, unreported);
            }
            self.next_seq = seq.wrapping_add(1);
        }
        let Some((ifindex, event)) = reject_event(packet, now) else {
            COUNTERS.undecodable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.router.route(ifindex, &event) {
            COUNTERS.routed.fetch_add(1, Ordering::Relaxed);
        } else {
            COUNTERS.other_interface.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The receive buffer overran: at least one event is lost. It is reported now (so the
    /// current interval gets SKIPDATA); the sequence gap shows the rest.
    fn overrun(&mut self, now: Duration) {
        COUNTERS.overruns.fetch_add(1, Ordering::Relaxed);
        self.loss_credit = self.loss_credit.saturating_add(1);
        self.lose(now, 1);
    }

    /// Reports `n` lost events to every interface, and warns (at most every
    /// [`WARN_INTERVAL`]).
    fn lose(&mut self, now: Duration, n: u64) {
        if n == 0 {
            return;
        }
        COUNTERS.lost.fetch_add(n, Ordering::Relaxed);
        self.router.lose(now, n);
        self.unwarned_lost = self.unwarned_lost.saturating_add(n);
        let due = self
            .last_warning
            .is_none_or(|at| at.elapsed() >= WARN_INTERVAL);
        if due {
            eprintln!(
                "warning: nflog group {}: receive buffer overrun, {} firewall drop events lost \
                 (their intervals get SKIPDATA); raise net.core.rmem_max",
                self.group, self.unwarned_lost
            );
            self.last_warning = Some(Instant::now());
            self.unwarned_lost = 0;
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::decode::decode_frame;
    use crate::frames::{self, PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_SYN};

    const GROUP: u16 = 100;
    /// Start of a 60 s interval.
    const T0: u64 = 1_699_999_980;
    const ENI_MAC: [u8; 6] = [2, 0x11, 0x22, 0x33, 0x44, 0x55];
    const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

    fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        put_attribute(&mut v, kind, value);
        v
    }

    /// A netlink message of `message_type` with body `body`.
    fn message(message_type: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
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
    fn packet_message(
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

    fn syn_packet(sport: u16) -> Vec<u8> {
        let seg = frames::tcp(sport, 9, TCP_SYN, 0);
        frames::ipv4(REMOTE, HOST, PROTO_TCP, 1, 0, false, &seg)
    }

    fn udp_packet(len: usize) -> Vec<u8> {
        let d = frames::udp(40000, 9999, len);
        frames::ipv4(HOST, REMOTE, PROTO_UDP, 1, 0, false, &d)
    }

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

    #[test]
    fn events_go_to_the_in_device_else_the_out_device() {
        let syn = syn_packet(40000);
        let at = Duration::from_secs(T0 + 1);
        let packet = |indev, outdev, payload| NflogPacket {
            group: GROUP,
            hw_protocol: 0x0800,
            hook: 1,
            indev,
            outdev,
            payload,
            seq: None,
        };
        // Input: in-device only.
        let (i, e) = reject_event(&packet(Some(3), None, Some(&syn[..])), at).unwrap();
        assert_eq!((i, e.direction, e.at), (3, Direction::Ingress, at));
        assert_eq!(
            (e.meta.src_port, e.meta.dst_port, e.meta.ip_len),
            (40000, 9, 40)
        );
        // Forward: both; it was counted on the in-device.
        let (i, e) = reject_event(&packet(Some(3), Some(4), Some(&syn[..])), at).unwrap();
        assert_eq!((i, e.direction), (3, Direction::Ingress));
        // Output: out-device only. The copy range cuts the packet: the IP header's length
        // counts.
        let udp = udp_packet(1000);
        let (i, e) = reject_event(&packet(None, Some(4), Some(&udp[..256])), at).unwrap();
        assert_eq!(
            (i, e.direction, e.meta.ip_len),
            (4, Direction::Egress, 1028)
        );
        assert_eq!(e.meta.dst_port, 9999);
        // No device, no payload, not IP.
        assert!(reject_event(&packet(None, None, Some(&syn[..])), at).is_none());
        assert!(reject_event(&packet(Some(0), Some(0), Some(&syn[..])), at).is_none());
        assert!(reject_event(&packet(Some(3), None, None), at).is_none());
        assert!(reject_event(&packet(Some(3), None, Some(&[0x00, 1, 2][..])), at).is_none());
    }

    fn info() -> InterfaceInfo {
        InterfaceInfo {
            interface_id: "eni-0123456789abcdef0".into(),
            account_id: "123456789010".into(),
            mac: ENI_MAC,
            primary_v4: Some(HOST),
            primary_v6: None,
        }
    }

    fn settings(max_flows: usize) -> FlowTableSettings {
        FlowTableSettings {
            interval_secs: 60,
            max_flows,
        }
    }

    fn at(secs: u64) -> Duration {
        Duration::from_secs(T0 + secs)
    }

    /// Capture's records of the interval [T0, T0 + 60) for Ethernet `frames` seen at
    /// T0 + their second (NODATA if none).
    fn captured(frames: &[(Vec<u8>, u64)]) -> Vec<FlowRecord> {
        let mut t = FlowTable::new_at(info(), settings(10), at(0));
        let mut out = Vec::new();
        for (frame, secs) in frames {
            let meta = decode_frame(LinkType::Ethernet, frame).unwrap();
            t.observe(&meta, at(*secs), &mut out);
        }
        t.close_due(at(60), &mut out);
        out
    }

    fn syn_frame(sport: u16) -> Vec<u8> {
        frames::tcp_v4(GW_MAC, ENI_MAC, REMOTE, HOST, sport, 9, TCP_SYN, 0)
    }

    /// The event of a logged packet (`payload` from its IP header on).
    fn event(payload: &[u8], direction: Direction, secs: u64) -> RejectEvent {
        RejectEvent {
            meta: decode_frame(LinkType::RawIp, payload).unwrap(),
            direction,
            at: at(secs),
        }
    }

    type Row = (FlowDirection, Action, u64, u64, Option<u16>);

    fn ok(out: &[FlowRecord]) -> Vec<Row> {
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

    fn statuses(out: &[FlowRecord]) -> Vec<LogStatus> {
        out.iter().map(|r| r.log_status.unwrap()).collect()
    }

    #[test]
    fn an_ingress_drop_marks_the_record_capture_made() {
        let mut ledger = RejectLedger::new(info(), settings(10));
        // The events may come before or after capture counted the packets: the ledger
        // merges when capture releases the interval.
        ledger.observe(&event(&syn_packet(40000), Direction::Ingress, 2));
        ledger.observe(&event(&syn_packet(40000), Direction::Ingress, 3));
        let released = captured(&[
            (syn_frame(40001), 1),
            (syn_frame(40000), 2),
            (syn_frame(40000), 3),
        ]);
        let out = ledger.apply(released, at(60));
        assert_eq!(
            ok(&out),
            vec![
                (FlowDirection::Ingress, Action::Accept, 1, 40, Some(2)),
                (FlowDirection::Ingress, Action::Reject, 2, 80, Some(2)),
            ]
        );
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].start, out[1].end), (Some(T0 + 2), Some(T0 + 3)));
    }

    #[test]
    fn an_ingress_drop_capture_has_no_record_of_keeps_its_packets() {
        let mut ledger = RejectLedger::new(info(), settings(10));
        ledger.observe(&event(&syn_packet(40000), Direction::Ingress, 5));
        ledger.observe(&event(&syn_packet(40000), Direction::Ingress, 6));
        // Capture saw nothing: its NODATA gives way to the drop's record.
        let released = captured(&[]);
        assert_eq!(statuses(&released), vec![LogStatus::NoData]);
        let out = ledger.apply(released, at(60));
        assert_eq!(
            ok(&out),
            vec![(FlowDirection::Ingress, Action::Reject, 2, 80, Some(2))]
        );
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!((r.start, r.end), (Some(T0 + 5), Some(T0 + 6)));
        assert_eq!(r.srcaddr, Some(REMOTE.into()));
        assert_eq!(r.dstaddr, Some(HOST.into()));
        assert_eq!(r.interface_id.as_deref(), Some("eni-0123456789abcdef0"));
    }

    #[test]
    fn an_output_drop_is_an_egress_packet() {
        let mut ledger = RejectLedger::new(info(), settings(10));
        ledger.observe(&event(&udp_packet(6), Direction::Egress, 2));
        let synack = frames::ipv4(
            HOST,
            REMOTE,
            PROTO_TCP,
            1,
            0,
            false,
            &frames::tcp(40000, 443, TCP_ACK | TCP_SYN, 0),
        );
        ledger.observe(&event(&synack, Direction::Egress, 3));
        // An accepted packet of the same UDP flow went out before the rule matched.
        let released = captured(&[(
            frames::udp_v4(ENI_MAC, GW_MAC, HOST, REMOTE, 40000, 9999, 6),
            1,
        )]);
        let out = ledger.apply(released, at(60));
        assert_eq!(
            ok(&out),
            vec![
                (FlowDirection::Egress, Action::Reject, 2, 68, None),
                (FlowDirection::Egress, Action::Reject, 1, 40, Some(18)),
            ]
        );
        let r = &out[0];
        assert_eq!((r.start, r.end), (Some(T0 + 1), Some(T0 + 2)));
        assert_eq!(r.srcaddr, Some(HOST.into()));
        assert_eq!(
            (r.srcport, r.dstport, r.protocol),
            (Some(40000), Some(9999), Some(17))
        );
    }

    #[test]
    fn late_events_and_later_intervals() {
        let mut ledger = RejectLedger::new(info(), settings(10));
        let out = ledger.apply(captured(&[(syn_frame(40000), 59)]), at(60));
        assert_eq!(ok(&out)[0].1, Action::Accept);
        // The event of that SYN comes after capture wrote its interval: not counted again.
        let late = COUNTERS.late.load(Ordering::Relaxed);
        ledger.observe(&event(&syn_packet(40000), Direction::Ingress, 59));
        assert!(COUNTERS.late.load(Ordering::Relaxed) > late);
        // A late output drop was never counted: it goes to the next interval.
        ledger.observe(&event(&udp_packet(6), Direction::Egress, 59));
        let next = vec![FlowRecord::no_data(
            Some("123456789010".into()),
            Some("eni-0123456789abcdef0".into()),
            T0 + 60,
            T0 + 119,
        )];
        let out = ledger.apply(next, at(120));
        assert_eq!(
            ok(&out),
            vec![(FlowDirection::Egress, Action::Reject, 1, 34, None)]
        );
        assert_eq!(out[0].start, Some(T0 + 60));
        // Nothing is left over.
        let idle = |start| vec![FlowRecord::no_data(None, None, start, start + 59)];
        assert_eq!(
            statuses(&ledger.apply(idle(T0 + 120), at(180))),
            vec![LogStatus::NoData]
        );
    }

    #[test]
    fn lost_events_give_skipdata_and_a_full_ledger_too() {
        let mut ledger = RejectLedger::new(info(), settings(10));
        ledger.record_loss(at(10), 3);
        let out = ledger.apply(captured(&[]), at(60));
        assert_eq!(statuses(&out), vec![LogStatus::SkipData]);
        assert_eq!((out[0].start, out[0].end), (Some(T0), Some(T0 + 59)));

        let mut ledger = RejectLedger::new(info(), settings(1));
        ledger.observe(&event(&syn_packet(1), Direction::Ingress, 2));
        ledger.observe(&event(&syn_packet(2), Direction::Ingress, 2));
        let out = ledger.apply(captured(&[(syn_frame(3), 1)]), at(60));
        assert_eq!(
            statuses(&out),
            vec![LogStatus::SkipData, LogStatus::Ok, LogStatus::Ok]
        );
        assert_eq!(
            ok(&out),
            vec![
                (FlowDirection::Ingress, Action::Accept, 1, 40, Some(2)),
                (FlowDirection::Ingress, Action::Reject, 1, 40, Some(2)),
            ]
        );
    }

    #[test]
    fn the_partial_interval_at_shutdown() {
        let mut ledger = RejectLedger::new(info(), settings(10));
        ledger.observe(&event(&syn_packet(40000), Direction::Ingress, 5));
        ledger.observe(&event(&udp_packet(6), Direction::Egress, 6));
        let mut t = FlowTable::new_at(info(), settings(10), at(0));
        let mut released = Vec::new();
        let meta = decode_frame(LinkType::Ethernet, &syn_frame(40000)).unwrap();
        t.observe(&meta, at(5), &mut released);
        t.flush_all(at(20), &mut released);
        let out = ledger.apply(released, at(20));
        assert_eq!(
            ok(&out),
            vec![
                (FlowDirection::Ingress, Action::Reject, 1, 40, Some(2)),
                (FlowDirection::Egress, Action::Reject, 1, 34, None),
            ]
        );
    }

    #[test]
    fn the_listener_routes_events_and_reports_loss() {
        let router = Arc::new(RejectRouter::default());
        let handle = router.register(3, info(), settings(10));
        let mut listener = Listener {
            group: GROUP,
            socket: socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None)
                .unwrap(),
            router: Arc::clone(&router),
            next_seq: 0,
            loss_credit: 0,
            buffer: Vec::new(),
            last_warning: Some(Instant::now()),
            unwarned_lost: 0,
        };
        let lost = COUNTERS.lost.load(Ordering::Relaxed);
        let now = unix_now();
        let syn = syn_packet(40000);
        let mut datagram = packet_message(Some(3), None, Some(0), &syn);
        // Sequence 1 and 2 missing; 3 is for lo (not captured); 4 has no device.
        datagram.extend(packet_message(Some(1), None, Some(3), &syn));
        datagram.extend(packet_message(None, None, Some(4), &syn));
        datagram.extend(packet_message(Some(3), None, Some(5), &syn));
        datagram.extend(packet_message(Some(3), None, Some(6), &syn));
        listener.buffer = datagram.clone();
        assert_eq!(listener.handle_datagram(datagram.len(), now), None);
        assert_eq!(COUNTERS.lost.load(Ordering::Relaxed) - lost, 2);
        // An overrun reports one loss at once; the gap it leaves is not counted twice.
        listener.overrun(now);
        listener.buffer = packet_message(Some(5), None, Some(9), &syn);
        let n = listener.buffer.len();
        listener.handle_datagram(n, now);
        assert_eq!(COUNTERS.lost.load(Ordering::Relaxed) - lost, 4);
        // The interface's records, as capture releases them at shutdown.
        let start = now.as_secs() - now.as_secs() % 60;
        let released = vec![FlowRecord::no_data(None, None, start, now.as_secs())];
        let out = handle.apply(released, now);
        assert_eq!(
            statuses(&out),
            vec![LogStatus::SkipData, LogStatus::Ok],
            "{out:#?}"
        );
        assert_eq!(
            ok(&out),
            vec![(FlowDirection::Ingress, Action::Reject, 3, 120, Some(2))]
        );
    }

    #[test]
    fn config_section() {
        let mut problems = Vec::new();
        let mut add = |k: &str, p: String| problems.push((k.to_owned(), p));
        assert_eq!(validate_config(None, &mut add), FirewallSettings::default());
        let raw = |g| Some(FirewallConfig { nflog_group: g });
        assert_eq!(
            validate_config(raw(None), &mut add),
            FirewallSettings::default()
        );
        assert_eq!(validate_config(raw(Some(0)), &mut add).nflog_group, Some(0));
        assert_eq!(
            validate_config(raw(Some(65535)), &mut add).nflog_group,
            Some(65535)
        );
        validate_config(raw(Some(65536)), &mut add);
        validate_config(raw(Some(-1)), &mut add);
        assert_eq!(problems.len(), 2);
        assert!(problems.iter().all(|(k, _)| k == "firewall.nflog_group"));
        assert!(problems[0].1.contains("65536"), "{problems:?}");
    }

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for m in NetlinkMessages::new(&bytes).flatten() {
                if let NetlinkMessage::Packet(p) = m {
                    let _ = reject_event(&p, Duration::ZERO);
                }
            }
        }

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
