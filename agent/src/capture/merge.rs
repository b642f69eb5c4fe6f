//! The merge of an interface's fanout threads: an interval's records are released once every
//! thread has closed it, one record per flow, one SKIPDATA if any thread lost packets, one
//! NODATA only if none saw a packet.

use super::*;
use crate::flow::{RecordKey, record_key};

/// What the members reported for one interval.
#[derive(Debug, Default)]
pub(super) struct MergeSlot {
    pub(super) nodata: Option<FlowRecord>,
    pub(super) skipdata: Option<FlowRecord>,
    pub(super) flows: HashMap<RecordKey, FlowRecord>,
}

impl MergeSlot {
    pub(super) fn add(&mut self, r: FlowRecord) {
        let status_row = |kept: &mut Option<FlowRecord>, r: FlowRecord| match kept {
            Some(k) => k.end = k.end.max(r.end),
            None => *kept = Some(r),
        };
        match r.log_status {
            Some(LogStatus::NoData) => status_row(&mut self.nodata, r),
            Some(LogStatus::SkipData) => status_row(&mut self.skipdata, r),
            Some(LogStatus::Ok) | None => match self.flows.entry(record_key(&r)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(r);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let k = o.get_mut();
                    let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
                        (Some(a), Some(b)) => Some(a.saturating_add(b)),
                        (a, b) => a.or(b),
                    };
                    k.packets = sum(k.packets, r.packets);
                    k.bytes = sum(k.bytes, r.bytes);
                    k.start = match (k.start, r.start) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    k.end = k.end.max(r.end);
                    k.tcp_flags = match (k.tcp_flags, r.tcp_flags) {
                        (Some(a), Some(b)) => Some(a | b),
                        (a, b) => a.or(b),
                    };
                    if r.action == Some(Action::Reject) {
                        k.action = Some(Action::Reject);
                    }
                }
            },
        }
    }

    /// Appends the interval's records: SKIPDATA first if any member lost packets, then the
    /// flows in the flow table's order; NODATA only if no member saw anything.
    pub(super) fn emit(self, out: &mut Vec<FlowRecord>) {
        if self.skipdata.is_none() && self.flows.is_empty() {
            out.extend(self.nodata);
            return;
        }
        out.extend(self.skipdata);
        let mut flows: Vec<FlowRecord> = self.flows.into_values().collect();
        flows.sort_unstable_by_key(|r| (r.start, record_key(r)));
        out.append(&mut flows);
    }
}

/// Merges the records of the N flow tables of one interface, interval by interval.
///
/// Every member hands over whole intervals, in time order. An interval is released once
/// every member has handed over that interval or a later one (or has finished), so a
/// member that is still inside it holds it back for at most one read timeout.
#[derive(Debug)]
pub(super) struct IntervalMerge {
    pub(super) interval_secs: u64,
    /// Per member: start of the latest interval it handed over; `u64::MAX` once finished.
    pub(super) horizon: Vec<Option<u64>>,
    pub(super) slots: BTreeMap<u64, MergeSlot>,
}

impl IntervalMerge {
    pub(super) fn new(members: usize, interval_secs: u64) -> Self {
        IntervalMerge {
            interval_secs: interval_secs.max(1),
            horizon: vec![None; members],
            slots: BTreeMap::new(),
        }
    }

    /// Takes `records` from `member` (`finished`: it will hand over nothing more) and
    /// returns the records of every interval that is now complete.
    pub(super) fn deposit(
        &mut self,
        member: usize,
        records: impl IntoIterator<Item = FlowRecord>,
        finished: bool,
    ) -> Vec<FlowRecord> {
        for r in records {
            let start = r.start.unwrap_or(0);
            let interval = start - start % self.interval_secs;
            if let Some(h) = self.horizon.get_mut(member) {
                *h = Some(h.map_or(interval, |h| h.max(interval)));
            }
            self.slots.entry(interval).or_default().add(r);
        }
        if finished && let Some(h) = self.horizon.get_mut(member) {
            *h = Some(u64::MAX);
        }
        let mut out = Vec::new();
        let Some(complete) = self
            .horizon
            .iter()
            .try_fold(u64::MAX, |low, h| h.map(|h| low.min(h)))
        else {
            return out;
        };
        while let Some(entry) = self.slots.first_entry() {
            if *entry.key() > complete {
                break;
            }
            entry.remove().emit(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_formats::FlowDirection;
    use std::net::Ipv4Addr;

    const T0: u64 = 1_700_000_040; // a multiple of 60
    const ACCOUNT: &str = "123456789012";
    const ENI: &str = "eni-0123456789abcdef0";

    fn ok(start: u64, end: u64, sport: u16, packets: u64, flags: Option<u16>) -> FlowRecord {
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        FlowRecord {
            account_id: Some(ACCOUNT.into()),
            interface_id: Some(ENI.into()),
            srcaddr: Some(a),
            dstaddr: Some(b),
            pkt_srcaddr: Some(a),
            pkt_dstaddr: Some(b),
            srcport: Some(sport),
            dstport: Some(80),
            protocol: Some(6),
            packets: Some(packets),
            bytes: Some(packets * 100),
            start: Some(start),
            end: Some(end),
            action: Some(Action::Accept),
            log_status: Some(LogStatus::Ok),
            tcp_flags: flags,
            flow_direction: Some(FlowDirection::Egress),
            ..FlowRecord::default()
        }
    }

    fn nodata(start: u64, end: u64) -> FlowRecord {
        FlowRecord::no_data(Some(ACCOUNT.into()), Some(ENI.into()), start, end)
    }

    fn skipdata(start: u64, end: u64) -> FlowRecord {
        FlowRecord::skip_data(Some(ACCOUNT.into()), Some(ENI.into()), start, end)
    }

    #[test]
    fn one_nodata_when_every_member_was_idle() {
        let mut m = IntervalMerge::new(3, 60);
        assert!(m.deposit(0, [nodata(T0, T0 + 59)], false).is_empty());
        assert!(m.deposit(2, [nodata(T0, T0 + 59)], false).is_empty());
        let out = m.deposit(1, [nodata(T0, T0 + 59)], false);
        assert_eq!(out, vec![nodata(T0, T0 + 59)]);
        assert!(m.slots.is_empty());
    }

    #[test]
    fn no_nodata_when_any_member_saw_traffic() {
        let mut m = IntervalMerge::new(2, 60);
        assert!(m.deposit(0, [nodata(T0, T0 + 59)], false).is_empty());
        let out = m.deposit(1, [ok(T0 + 3, T0 + 9, 1000, 4, Some(2))], false);
        assert_eq!(out, vec![ok(T0 + 3, T0 + 9, 1000, 4, Some(2))]);
    }

    #[test]
    fn one_skipdata_when_any_member_lost_packets() {
        let mut m = IntervalMerge::new(2, 60);
        m.deposit(
            0,
            [skipdata(T0, T0 + 59), ok(T0 + 1, T0 + 2, 1, 1, None)],
            false,
        );
        let out = m.deposit(1, [nodata(T0, T0 + 59)], false);
        assert_eq!(
            out,
            vec![skipdata(T0, T0 + 59), ok(T0 + 1, T0 + 2, 1, 1, None)]
        );
        // Both lost: still one SKIPDATA; a loss without packets replaces NODATA.
        m.deposit(0, [skipdata(T0 + 60, T0 + 119)], false);
        let out = m.deposit(1, [skipdata(T0 + 60, T0 + 119)], false);
        assert_eq!(out, vec![skipdata(T0 + 60, T0 + 119)]);
    }

    #[test]
    fn a_flow_seen_by_two_members_is_summed() {
        let mut m = IntervalMerge::new(2, 60);
        m.deposit(
            0,
            [
                ok(T0 + 5, T0 + 7, 1, 2, Some(2)),
                ok(T0 + 9, T0 + 9, 7, 1, Some(0)),
            ],
            false,
        );
        let mut reject = ok(T0 + 2, T0 + 6, 1, 3, Some(1));
        reject.action = Some(Action::Reject);
        let out = m.deposit(1, [reject], false);
        let mut summed = ok(T0 + 2, T0 + 7, 1, 5, Some(3));
        summed.action = Some(Action::Reject);
        // Ordered by start, as a flow table orders them.
        assert_eq!(out, vec![summed, ok(T0 + 9, T0 + 9, 7, 1, Some(0))]);
    }

    #[test]
    fn intervals_wait_for_every_member_and_finished_members_do_not_block() {
        let mut m = IntervalMerge::new(2, 60);
        // Member 0 closes two intervals before member 1 closes the first.
        assert!(
            m.deposit(
                0,
                [ok(T0 + 1, T0 + 1, 1, 1, None), nodata(T0 + 60, T0 + 119)],
                false
            )
            .is_empty()
        );
        let out = m.deposit(1, [nodata(T0, T0 + 59)], false);
        assert_eq!(out, vec![ok(T0 + 1, T0 + 1, 1, 1, None)]);
        // Member 1 ends inside the second interval (shutdown: partial interval).
        let out = m.deposit(1, [nodata(T0 + 60, T0 + 75)], true);
        assert_eq!(out, vec![nodata(T0 + 60, T0 + 119)]);
        // Member 1 is finished: member 0 alone releases the next intervals.
        let out = m.deposit(0, [ok(T0 + 121, T0 + 122, 3, 2, None)], false);
        assert_eq!(out, vec![ok(T0 + 121, T0 + 122, 3, 2, None)]);
        let out = m.deposit(0, [nodata(T0 + 180, T0 + 190)], true);
        assert_eq!(out, vec![nodata(T0 + 180, T0 + 190)]);
        assert!(m.slots.is_empty());
    }
}
