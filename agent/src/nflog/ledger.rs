//! Events and the ledger: a logged packet becomes the [`RejectEvent`] of one interface
//! ([`reject_event`]); the [`RejectLedger`] of each captured interface aggregates its drops
//! and merges them into capture's records; the [`RejectRouter`] hands events to the
//! ledgers, and capture threads merge through a [`RejectHandle`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flowlog_formats::FlowRecord;
use flowlog_formats::record::{Action, FlowDirection, LogStatus};

use super::counters::COUNTERS;
use super::wire::NflogPacket;
use crate::decode::{LinkType, MAX_WIRE_LEN, PacketMeta, decode_captured_frame};
use crate::flow::{Direction, FlowTable, FlowTableSettings, InterfaceInfo};
use crate::flow::{RecordKey, record_key};

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
/// in [`NflogCounters::late`](super::counters::NflogCounters::late) and dropped (the packet
/// was counted, as ACCEPT); a late egress event is counted in the next interval.
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
    pub(super) fn route(&self, ifindex: u32, event: &RejectEvent) -> bool {
        let Some(ledger) = self.map().get(&ifindex).cloned() else {
            return false;
        };
        lock(&ledger).observe(event);
        true
    }

    /// Reports `lost` events, whose interfaces are unknown, to every ledger.
    pub(super) fn lose(&self, now: Duration, lost: u64) {
        let ledgers: Vec<_> = self.map().values().cloned().collect();
        for ledger in ledgers {
            lock(&ledger).record_loss(now, lost);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::decode_frame;
    use crate::nflog::test_support::{
        ENI_MAC, GROUP, HOST, REMOTE, info, ok, settings, statuses, syn_packet, udp_packet,
    };
    use crate::nflog::wire::{NetlinkMessage, NetlinkMessages};
    use flowlog_tests::frames::{self, PROTO_TCP, TCP_ACK, TCP_SYN};

    /// Start of a 60 s interval.
    const T0: u64 = 1_699_999_980;
    const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

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

    proptest! {
        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for m in NetlinkMessages::new(&bytes).flatten() {
                if let NetlinkMessage::Packet(p) = m {
                    let _ = reject_event(&p, Duration::ZERO);
                }
            }
        }
    }
}
