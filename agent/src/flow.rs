//! The per-interface flow table: aggregates decoded packets into VPC flow log records.
//!
//! Semantics (spec §1.1, §3, §7):
//!
//! - Time is cut into aggregation intervals aligned to UTC multiples of
//!   [`FlowTableSettings::interval_secs`]: `[t, t + interval)` with `t % interval == 0`.
//! - Within an interval there is one record per (direction, 5-tuple): packets, bytes (sum of
//!   IP lengths), `start`/`end` = Unix seconds of the flow's first/last packet in the
//!   interval, `tcp-flags` = OR of the AWS flag value of every packet (TCP only; absent for
//!   other protocols), `action` ACCEPT, `log-status` OK.
//! - Direction: egress when the frame's source MAC is the interface's MAC (or a Linux cooked
//!   capture says "outgoing"), else ingress. `srcaddr`/`dstaddr` follow the ENI rule: the
//!   interface side shows the interface's primary address of the packet's family (the
//!   packet's own address if the interface has none of that family); `pkt-srcaddr` /
//!   `pkt-dstaddr` are the packet's addresses.
//! - An interval in which the interface saw no packet yields one NODATA record; an interval
//!   in which packets were not accounted (table full, [`FlowTable::record_loss`]) yields one
//!   SKIPDATA record besides its OK records. Their `end` is the last second of the interval.
//!
//! The table is pure: time is passed in, it does no I/O and starts no thread. One table
//! serves one interface and is owned by that interface's capture thread.
//!
//! Performance: a packet of a known flow costs one hash of a packed 40-byte key (foldhash)
//! and one probe of a small index; the flows themselves sit in one vector (72 bytes each),
//! sorted in place when their interval closes and handed out one record at a time to a
//! [`RecordSink`], so that no interval's records are ever all held at once.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use flowlog_formats::record::{
    Action, FlowDirection, FlowRecord, LogStatus, Text, TrafficType, aws_tcp_flags,
};

use crate::decode::{Fragment, PacketMeta};

/// Most NODATA records emitted for a run of idle intervals (1440 = one day of 60 s
/// intervals). Older idle intervals of a longer run get none.
pub const MAX_IDLE_INTERVALS: u64 = 1440;

/// Entries of the fragment cache (first fragments whose ports later fragments borrow).
pub const FRAGMENT_CACHE_CAPACITY: usize = 1024;

/// Linux cooked capture packet type "outgoing" (sent by this host).
const SLL_OUTGOING: u16 = 4;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_ICMPV6: u8 = 58;

/// Direction of traffic relative to the interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Received by the interface.
    Ingress,
    /// Sent by the interface.
    Egress,
}

impl From<Direction> for FlowDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => FlowDirection::Ingress,
            Direction::Egress => FlowDirection::Egress,
        }
    }
}

/// The interface whose traffic a [`FlowTable`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    /// ENI id (`eni-…`), written as `interface-id`.
    pub interface_id: Text,
    /// Owner account, written as `account-id`.
    pub account_id: Text,
    /// The interface's MAC address: frames from it are egress.
    pub mac: [u8; 6],
    /// Primary private IPv4 address (the interface side of IPv4 records).
    pub primary_v4: Option<Ipv4Addr>,
    /// Primary IPv6 address (the interface side of IPv6 records).
    pub primary_v6: Option<Ipv6Addr>,
}

/// What identifies a flow among an interface's records of one interval: (direction,
/// protocol, packet source, packet destination, source port, destination port).
pub type RecordKey = (
    Option<FlowDirection>,
    Option<u8>,
    Option<IpAddr>,
    Option<IpAddr>,
    Option<u16>,
    Option<u16>,
);

/// Returns the [`RecordKey`] of a record (capture's fanout merge and the firewall ledger
/// match records by it).
pub fn record_key(r: &FlowRecord) -> RecordKey {
    (
        r.flow_direction,
        r.protocol,
        r.pkt_srcaddr,
        r.pkt_dstaddr,
        r.srcport,
        r.dstport,
    )
}

/// Tuning of a [`FlowTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTableSettings {
    /// Aggregation interval in seconds: 60 or 600 in VPC Flow Logs (any value >= 1 works;
    /// 0 is taken as 1).
    pub interval_secs: u64,
    /// Most flows tracked per interval; packets of further flows are counted as skipped
    /// (SKIPDATA).
    pub max_flows: usize,
}

/// Receives the records of closed intervals, one at a time, as a [`FlowTable`] produces
/// them.
///
/// A [`FlowRecord`] is several hundred bytes and an interval can have a million flows: a
/// sink that encodes or forwards each record as it comes keeps memory flat, where a
/// `Vec<FlowRecord>` (which implements this trait) holds a whole interval.
pub trait RecordSink {
    /// Takes the next record.
    fn push_record(&mut self, record: FlowRecord);
}

impl RecordSink for Vec<FlowRecord> {
    fn push_record(&mut self, record: FlowRecord) {
        self.push(record);
    }
}

/// A flow: direction and the packet's 5-tuple, packed into 40 bytes.
///
/// Addresses are kept as numbers: an IPv6 address as its high and low 64 bits, an IPv4
/// address in `*_hi` (with `*_lo` 0); `v6` tells the family (a packet's two addresses
/// always share one). The order ([`Ord`]) is that of (direction, protocol, source
/// [`IpAddr`], destination [`IpAddr`], source port, destination port): IPv4 before IPv6,
/// then by address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKey {
    src_hi: u64,
    src_lo: u64,
    dst_hi: u64,
    dst_lo: u64,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    direction: Direction,
    v6: bool,
}

impl Hash for FlowKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Three wide words instead of nine fields: fewer rounds of the hasher.
        state.write_u128((u128::from(self.src_hi) << 64) | u128::from(self.src_lo));
        state.write_u128((u128::from(self.dst_hi) << 64) | u128::from(self.dst_lo));
        state.write_u64(
            u64::from(self.src_port)
                | (u64::from(self.dst_port) << 16)
                | (u64::from(self.protocol) << 32)
                | ((self.direction as u64) << 40)
                | (u64::from(self.v6) << 48),
        );
    }
}

impl Ord for FlowKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Direction, protocol and family packed in one word, the ports in another: the
        // order of the fields, with fewer comparisons.
        let order = |k: &FlowKey| {
            (
                ((k.direction as u32) << 16) | (u32::from(k.protocol) << 8) | u32::from(k.v6),
                k.src_hi,
                k.src_lo,
                k.dst_hi,
                k.dst_lo,
                (u32::from(k.src_port) << 16) | u32::from(k.dst_port),
            )
        };
        order(self).cmp(&order(other))
    }
}

impl PartialOrd for FlowKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl FlowKey {
    #[inline]
    fn new(
        direction: Direction,
        protocol: u8,
        src: IpAddr,
        dst: IpAddr,
        ports: (u16, u16),
    ) -> Self {
        let (v6, src_hi, src_lo) = pack_addr(src);
        let (_, dst_hi, dst_lo) = pack_addr(dst);
        FlowKey {
            src_hi,
            src_lo,
            dst_hi,
            dst_lo,
            src_port: ports.0,
            dst_port: ports.1,
            protocol,
            direction,
            v6,
        }
    }

    fn src(&self) -> IpAddr {
        unpack_addr(self.v6, self.src_hi, self.src_lo)
    }

    fn dst(&self) -> IpAddr {
        unpack_addr(self.v6, self.dst_hi, self.dst_lo)
    }
}

/// An address as (is IPv6, high 64 bits, low 64 bits); IPv4 is all in the high part.
#[inline]
fn pack_addr(addr: IpAddr) -> (bool, u64, u64) {
    match addr {
        IpAddr::V4(a) => (false, u64::from(u32::from(a)), 0),
        IpAddr::V6(a) => {
            let n = u128::from(a);
            // Truncations intended: the two halves of the address.
            (true, (n >> 64) as u64, n as u64)
        }
    }
}

fn unpack_addr(v6: bool, hi: u64, lo: u64) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo)))
    } else {
        IpAddr::V4(Ipv4Addr::from(u32::try_from(hi).unwrap_or(0)))
    }
}

/// The hasher of flow keys.
///
/// Not SipHash: hashing dominates a packet's aggregation and SipHash costs several times
/// more per key. foldhash is fast, high quality, and seeded at random per table, so the
/// slots a key lands in cannot be predicted by whoever sends the packets; and `max_flows`
/// bounds the table whatever happens.
type FlowHasher = foldhash::fast::RandomState;

/// Fewest slots of a [`FlowMap`]'s index once it has a flow.
const MIN_INDEX_SLOTS: usize = 1024;

/// Packets worth keying ([`FlowTable::key_packet`]) before counting them
/// ([`FlowTable::observe_keyed`]): enough for their flows' memory accesses to overlap.
pub const OBSERVE_BATCH: usize = 16;

/// A decoded packet whose flow key is computed and whose index slot is being loaded:
/// made by [`FlowTable::key_packet`], counted by [`FlowTable::observe_keyed`] of the same
/// table.
#[derive(Debug, Clone, Copy)]
pub struct KeyedPacket {
    key: FlowKey,
    hash: u64,
    now: Duration,
    ip_len: u32,
    /// AWS TCP flag value (0 for other protocols).
    flags: u16,
}

/// The flows of the open interval: `(key, counters)` in arrival order in one vector, and a
/// hash index of positions in it.
///
/// The index is open addressing with linear probing, at most 3/4 full, 4 bytes a slot: 0
/// when empty, else the flow's position + 1 in the low `pos_bits` bits and a tag (as many
/// high bits of the key's hash as fit) above. A lookup reads one slot (rarely a few, in
/// the same cache line) and the one flow whose tag matches. Compared with a
/// `HashMap<FlowKey, FlowState>` (72-byte slots, at most 7/8 full, all resident), only the
/// vector's used part is resident, the index is small enough to stay in the CPU caches,
/// and it grows without moving the flows; closing an interval sorts them in place.
#[derive(Debug)]
struct FlowMap {
    entries: Vec<(FlowKey, FlowState)>,
    slots: Vec<u32>,
    /// Bits of a slot holding position + 1: enough for `max_flows` + 1.
    pos_bits: u32,
}

/// Where [`FlowMap::find`] ended: at the flow, or at the empty slot where it would go.
enum Probe {
    Found(usize),
    Vacant(usize),
}

impl FlowMap {
    /// An empty map for at most `max_flows` flows (less than `u32::MAX`).
    fn new(max_flows: usize) -> FlowMap {
        let most = u64::try_from(max_flows)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        FlowMap {
            entries: Vec::new(),
            slots: Vec::new(),
            pos_bits: (u64::BITS - most.leading_zeros()).clamp(1, 32),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The slot where the probe for `hash` starts; `slots` must not be empty.
    fn home(&self, hash: u64) -> usize {
        // Truncation intended: the low bits of the hash pick the slot.
        (hash as usize) & (self.slots.len() - 1)
    }

    /// The tag bits of `hash`, in place in a slot (above the position bits).
    fn tag(&self, hash: u64) -> u32 {
        // The high 32 bits of the hash, shifted out of the position bits.
        let high = (hash >> 32) as u32;
        high.checked_shl(self.pos_bits).unwrap_or(0)
    }

    /// The position a non-empty slot points at.
    fn position(&self, slot: u32) -> usize {
        let mask = u32::MAX.checked_shr(32 - self.pos_bits).unwrap_or(u32::MAX);
        ((slot & mask) as usize).wrapping_sub(1)
    }

    /// Starts loading the index slot of `hash` into the cache.
    #[inline]
    fn prefetch_slot(&self, hash: u64) {
        if !self.slots.is_empty() {
            prefetch(self.slots.as_ptr().wrapping_add(self.home(hash)));
        }
    }

    /// Starts loading the flow the index slot of `hash` points at (if its tag matches).
    #[inline]
    fn prefetch_flow(&self, hash: u64) {
        if self.slots.is_empty() {
            return;
        }
        let slot = self.slots.get(self.home(hash)).copied().unwrap_or(0);
        if slot != 0 && self.matches(slot, hash) {
            prefetch(self.entries.as_ptr().wrapping_add(self.position(slot)));
        }
    }

    /// Whether the tag of a non-empty `slot` is that of `hash`.
    fn matches(&self, slot: u32, hash: u64) -> bool {
        let tag_mask = u32::MAX.checked_shl(self.pos_bits).unwrap_or(0);
        slot & tag_mask == self.tag(hash)
    }

    /// Looks `key` (whose hash is `hash`) up; `slots` must not be empty.
    #[inline]
    fn find(&self, hash: u64, key: &FlowKey) -> Probe {
        let mask = self.slots.len() - 1;
        let mut i = self.home(hash);
        loop {
            let slot = self.slots.get(i).copied().unwrap_or(0);
            if slot == 0 {
                return Probe::Vacant(i);
            }
            if self.matches(slot, hash) {
                let at = self.position(slot);
                if self.entries.get(at).is_some_and(|e| e.0 == *key) {
                    return Probe::Found(at);
                }
            }
            i = (i + 1) & mask;
        }
    }

    /// The counters of `key`, whose hash is `hash`.
    #[inline]
    fn get_mut_hashed(&mut self, hash: u64, key: &FlowKey) -> Option<&mut FlowState> {
        if self.slots.is_empty() {
            return None;
        }
        match self.find(hash, key) {
            Probe::Found(at) => self.entries.get_mut(at).map(|e| &mut e.1),
            Probe::Vacant(_) => None,
        }
    }

    /// Adds a flow that is not in the map (the caller looked it up); the map holds fewer
    /// than its `max_flows`.
    fn insert_new(&mut self, hasher: &FlowHasher, hash: u64, key: FlowKey, state: FlowState) {
        if (self.entries.len() + 1) * 4 > self.slots.len() * 3 {
            self.grow(hasher);
        }
        // Positions + 1 fit in `pos_bits`: `FlowTable` stops adding at `max_flows`.
        let slot = self.tag(hash) | (self.entries.len() as u32 + 1);
        if let Probe::Vacant(i) = self.find(hash, &key)
            && let Some(s) = self.slots.get_mut(i)
        {
            *s = slot;
            self.entries.push((key, state));
        }
    }

    /// Doubles the index (at least [`MIN_INDEX_SLOTS`]) and re-indexes every flow.
    fn grow(&mut self, hasher: &FlowHasher) {
        let size = (self.slots.len() * 2).max(MIN_INDEX_SLOTS);
        let mask = size - 1;
        let mut slots = vec![0u32; size];
        for (at, e) in self.entries.iter().enumerate() {
            let hash = hasher.hash_one(e.0);
            // Keys are distinct: the first empty slot from home is the flow's.
            let mut i = (hash as usize) & mask;
            while slots[i] != 0 {
                i = (i + 1) & mask;
            }
            slots[i] = self.tag(hash) | (at as u32 + 1);
        }
        self.slots = slots;
    }

    /// Sorts the flows in output order (first packet's second, then key). The index no
    /// longer matches: [`FlowMap::clear`] the map before using it again.
    fn sort_for_output(&mut self) -> &[(FlowKey, FlowState)] {
        // A flow is added when its first packet arrives: with packets in time order the
        // flows already are in order of their first second, and sorting each second's
        // flows (a few thousand, which fit in the CPU caches) by key is enough.
        if self.entries.is_sorted_by_key(|e| e.1.first) {
            for second in self.entries.chunk_by_mut(|a, b| a.1.first == b.1.first) {
                second.sort_unstable_by_key(|e| e.0);
            }
        } else {
            self.entries
                .sort_unstable_by(|a, b| (a.1.first, &a.0).cmp(&(b.1.first, &b.0)));
        }
        &self.entries
    }

    /// Empties the map, keeping room for about as many flows as it had.
    fn clear(&mut self) {
        let n = self.entries.len();
        self.entries.clear();
        self.entries.shrink_to(n + n / 4);
        let slots = ((n + n / 4) * 4 / 3 + 1)
            .next_power_of_two()
            .max(MIN_INDEX_SLOTS);
        if n == 0 {
            self.slots = Vec::new();
        } else if self.slots.len() > slots {
            self.slots = vec![0; slots];
        } else {
            self.slots.fill(0);
        }
    }
}

/// Starts loading the cache line at `p` (a hint: results do not depend on it).
#[inline(always)]
#[allow(unsafe_code)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has; a prefetch neither
    // faults nor changes memory, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Counters of one flow in the open interval.
#[derive(Debug, Clone, Copy)]
struct FlowState {
    packets: u64,
    bytes: u64,
    /// Seconds from the interval start to the first / last packet.
    first: u32,
    last: u32,
    /// OR of [`aws_tcp_flags`] over the flow's packets.
    flags: u16,
}

/// Identifies a fragmented datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FragKey {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    id: u32,
}

/// Bounded map from fragmented datagrams to the ports seen in their first fragment; the
/// oldest entry is evicted first.
#[derive(Debug, Default)]
struct FragmentCache {
    ports: HashMap<FragKey, (u16, u16)>,
    order: VecDeque<FragKey>,
}

impl FragmentCache {
    fn insert(&mut self, key: FragKey, ports: (u16, u16)) {
        if let Some(p) = self.ports.get_mut(&key) {
            *p = ports;
            return;
        }
        if self.order.len() >= FRAGMENT_CACHE_CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.ports.remove(&old);
        }
        self.ports.insert(key, ports);
        self.order.push_back(key);
    }

    fn get(&self, key: &FragKey) -> Option<(u16, u16)> {
        self.ports.get(key).copied()
    }
}

/// The open interval.
#[derive(Debug)]
struct Interval {
    /// Unix seconds of its start (a multiple of the interval length).
    start: u64,
    flows: FlowMap,
    /// Packets seen (accounted or not).
    seen: u64,
    /// Packets not accounted: table full, or lost before reaching the table.
    skipped: u64,
}

/// Aggregates the packets of one interface into flow log records (see the module
/// documentation for the semantics).
///
/// Records of an interval come out once the interval is over: from [`FlowTable::observe`]
/// when a packet of a later interval arrives, from [`FlowTable::close_due`] (call it on a
/// timer), or from [`FlowTable::flush_all`] at shutdown. Within an interval, records are
/// sorted by `start`, then by direction, protocol, addresses and ports; a SKIPDATA record
/// comes first.
#[derive(Debug)]
pub struct FlowTable {
    info: InterfaceInfo,
    interval: u64,
    max_flows: usize,
    /// `None` until the first call that tells the time.
    current: Option<Interval>,
    fragments: FragmentCache,
    /// Records of intervals closed by [`FlowTable::record_loss`], which has no output;
    /// handed out by the next call that has.
    pending: Vec<FlowRecord>,
    /// Hashes flow keys for every interval's [`FlowMap`].
    hasher: FlowHasher,
    /// Packets not counted since the table was made because `max_flows` was reached.
    table_full: u64,
}

impl FlowTable {
    /// Creates an empty table. Its first interval is the one containing the time of the
    /// first call ([`FlowTable::observe`], [`FlowTable::close_due`], …); use
    /// [`FlowTable::new_at`] to start it at a known time.
    pub fn new(info: InterfaceInfo, settings: FlowTableSettings) -> Self {
        FlowTable {
            info,
            interval: settings.interval_secs.max(1),
            // The flow map's index stores positions + 1 in 32 bits.
            max_flows: settings.max_flows.min(u32::MAX as usize - 1),
            current: None,
            fragments: FragmentCache::default(),
            pending: Vec::new(),
            hasher: FlowHasher::default(),
            table_full: 0,
        }
    }

    /// Creates an empty table whose first interval is the one containing `now`, so that
    /// it reports NODATA for that interval if no packet arrives.
    pub fn new_at(info: InterfaceInfo, settings: FlowTableSettings, now: Duration) -> Self {
        let mut table = Self::new(info, settings);
        table.current = Some(table.open_interval(table.align(now.as_secs())));
        table
    }

    /// The interface this table records.
    pub fn info(&self) -> &InterfaceInfo {
        &self.info
    }

    /// Packets not counted on any flow since the table was made because `max_flows` flows
    /// were already tracked in their interval (each interval with such packets has a
    /// SKIPDATA record).
    pub fn table_full_packets(&self) -> u64 {
        self.table_full
    }

    /// Flows in the open interval.
    pub fn live_flows(&self) -> usize {
        self.current.as_ref().map_or(0, |i| i.flows.len())
    }

    /// Accounts one decoded packet seen at `now` (Unix time). Appends to `out` the records
    /// of every interval that ended at or before `now`.
    ///
    /// A packet stamped up to one interval before the open interval (capture timestamps
    /// are not strictly ordered) is counted in the open interval at its start; one stamped
    /// earlier than that means the clock was set back: the open interval is closed and a
    /// new one starts at `now`.
    pub fn observe(&mut self, meta: &PacketMeta, now: Duration, out: &mut impl RecordSink) {
        self.hand_out_pending(out);
        let packet = self.key_packet(meta, now);
        self.account(&packet, out);
    }

    /// First half of [`FlowTable::observe`]: computes the flow key of `meta` seen at `now`
    /// and starts loading where the table keeps that flow, without waiting for it.
    ///
    /// Give the results, in the same order, to [`FlowTable::observe_keyed`] of this table
    /// (a key is meaningless to another table): keying [`OBSERVE_BATCH`] packets before
    /// counting them lets their memory accesses overlap instead of waiting for each other.
    /// Keys must be made in packet order (later fragments of a datagram take the ports of
    /// its first).
    #[inline]
    pub fn key_packet(&mut self, meta: &PacketMeta, now: Duration) -> KeyedPacket {
        let direction = self.direction(meta);
        let key = self.flow_key(meta, direction);
        let hash = self.hasher.hash_one(key);
        if let Some(cur) = &self.current {
            cur.flows.prefetch_slot(hash);
        }
        KeyedPacket {
            key,
            hash,
            now,
            ip_len: meta.ip_len,
            flags: if meta.protocol == PROTO_TCP {
                aws_tcp_flags(meta.tcp_flags)
            } else {
                0
            },
        }
    }

    /// Second half of [`FlowTable::observe`]: counts `packets` (from
    /// [`FlowTable::key_packet`] of this table, in order) exactly as [`FlowTable::observe`]
    /// of each would, handing `out` the records of the intervals they close.
    pub fn observe_keyed(&mut self, packets: &[KeyedPacket], out: &mut impl RecordSink) {
        self.hand_out_pending(out);
        if let Some(cur) = &self.current {
            for p in packets {
                cur.flows.prefetch_flow(p.hash);
            }
        }
        for p in packets {
            self.account(p, out);
        }
    }

    /// Counts a keyed packet, closing the intervals that ended before it.
    #[inline]
    fn account(&mut self, p: &KeyedPacket, out: &mut impl RecordSink) {
        let secs = p.now.as_secs();
        // Most packets fall in the open interval: nothing to close.
        let in_open_interval = self
            .current
            .as_ref()
            .is_some_and(|c| secs >= c.start && secs - c.start < self.interval);
        if !in_open_interval {
            self.advance(secs, true, out);
        }
        let flags = p.flags;
        let max_flows = self.max_flows;
        let Some(cur) = self.current.as_mut() else {
            return;
        };
        let offset = u32::try_from(secs.saturating_sub(cur.start)).unwrap_or(u32::MAX);
        cur.seen = cur.seen.saturating_add(1);
        let bytes = u64::from(p.ip_len);
        if let Some(st) = cur.flows.get_mut_hashed(p.hash, &p.key) {
            st.packets = st.packets.saturating_add(1);
            st.bytes = st.bytes.saturating_add(bytes);
            st.first = st.first.min(offset);
            st.last = st.last.max(offset);
            st.flags |= flags;
        } else if cur.flows.len() < max_flows {
            cur.flows.insert_new(
                &self.hasher,
                p.hash,
                p.key,
                FlowState {
                    packets: 1,
                    bytes,
                    first: offset,
                    last: offset,
                    flags,
                },
            );
        } else {
            cur.skipped = cur.skipped.saturating_add(1);
            self.table_full = self.table_full.saturating_add(1);
        }
    }

    /// Closes every interval that ended at or before `now`, appending its records to
    /// `out` (NODATA for intervals without packets). Call it on a timer so that quiet
    /// interfaces still report.
    pub fn close_due(&mut self, now: Duration, out: &mut impl RecordSink) {
        self.hand_out_pending(out);
        self.advance(now.as_secs(), false, out);
    }

    /// Shutdown: closes the intervals due at `now`, then the open (partial) interval too,
    /// appending all their records. A NODATA or SKIPDATA record of the partial interval
    /// ends at `now`. The table then starts afresh with the next call.
    pub fn flush_all(&mut self, now: Duration, out: &mut impl RecordSink) {
        self.close_due(now, out);
        if let Some(mut cur) = self.current.take() {
            let last = self
                .last_second(cur.start)
                .min(now.as_secs().max(cur.start));
            self.emit(&mut cur, last, out);
        }
    }

    /// Accounts `lost_packets` packets that did not reach the table (kernel drops, full
    /// queue) at `now`: the open interval (after closing those due at `now`) gets a
    /// SKIPDATA record. Records of intervals this closes are handed out by the next call
    /// of [`FlowTable::observe`], [`FlowTable::close_due`] or [`FlowTable::flush_all`].
    pub fn record_loss(&mut self, now: Duration, lost_packets: u64) {
        if lost_packets == 0 {
            return;
        }
        let mut closed = std::mem::take(&mut self.pending);
        self.advance(now.as_secs(), false, &mut closed);
        self.pending = closed;
        if let Some(cur) = self.current.as_mut() {
            cur.seen = cur.seen.saturating_add(lost_packets);
            cur.skipped = cur.skipped.saturating_add(lost_packets);
        }
    }

    /// Hands the records held by [`FlowTable::record_loss`] to `out`.
    fn hand_out_pending(&mut self, out: &mut impl RecordSink) {
        if !self.pending.is_empty() {
            for record in self.pending.drain(..) {
                out.push_record(record);
            }
        }
    }

    fn align(&self, secs: u64) -> u64 {
        secs - secs % self.interval
    }

    /// The last second of the interval starting at `start`.
    fn last_second(&self, start: u64) -> u64 {
        start.saturating_add(self.interval - 1)
    }

    fn open_interval(&self, start: u64) -> Interval {
        Interval {
            start,
            flows: FlowMap::new(self.max_flows),
            seen: 0,
            skipped: 0,
        }
    }

    /// Makes the interval containing `secs` the open one, emitting the records of the
    /// intervals this closes. `packet` says whether a packet at `secs` follows (then a
    /// clock set far back restarts the table).
    fn advance(&mut self, secs: u64, packet: bool, out: &mut impl RecordSink) {
        let target = self.align(secs);
        let Some(cur_start) = self.current.as_ref().map(|c| c.start) else {
            self.current = Some(self.open_interval(target));
            return;
        };
        if target > cur_start {
            if let Some(mut cur) = self.current.take() {
                self.emit(&mut cur, self.last_second(cur_start), out);
                // Reuse the map's allocation, sized for about as many flows as this
                // interval had.
                cur.flows.clear();
                self.current = Some(Interval {
                    start: target,
                    flows: cur.flows,
                    seen: 0,
                    skipped: 0,
                });
            }
            // Idle intervals strictly between the closed one and the new one.
            let first_idle = cur_start + self.interval;
            let idle = (target - first_idle) / self.interval;
            let skip = idle.saturating_sub(MAX_IDLE_INTERVALS);
            let mut t = first_idle + skip * self.interval;
            while t < target {
                out.push_record(FlowRecord::no_data(
                    Some(self.info.account_id.clone()),
                    Some(self.info.interface_id.clone()),
                    t,
                    self.last_second(t),
                ));
                t += self.interval;
            }
        } else if packet && target.saturating_add(self.interval) < cur_start {
            // The clock went back by more than an interval: close what we have and restart.
            if let Some(mut cur) = self.current.take() {
                self.emit(&mut cur, self.last_second(cur_start), out);
            }
            self.current = Some(self.open_interval(target));
        }
    }

    /// Hands out the records of `interval`, one at a time; its NODATA / SKIPDATA record
    /// ends at `last`. Leaves the interval's flows sorted and unindexed (clear them before
    /// reuse).
    fn emit(&self, interval: &mut Interval, last: u64, out: &mut impl RecordSink) {
        let account = &self.info.account_id;
        let iface = &self.info.interface_id;
        if interval.seen == 0 {
            out.push_record(FlowRecord::no_data(
                Some(account.clone()),
                Some(iface.clone()),
                interval.start,
                last,
            ));
            return;
        }
        if interval.skipped > 0 {
            out.push_record(FlowRecord::skip_data(
                Some(account.clone()),
                Some(iface.clone()),
                interval.start,
                last,
            ));
        }
        let start = interval.start;
        for (key, st) in interval.flows.sort_for_output() {
            out.push_record(self.record(start, key, st));
        }
    }

    fn record(&self, interval_start: u64, key: &FlowKey, st: &FlowState) -> FlowRecord {
        let (src, dst) = (key.src(), key.dst());
        let (srcaddr, dstaddr) = match key.direction {
            Direction::Egress => (self.own_address(src), dst),
            Direction::Ingress => (src, self.own_address(dst)),
        };
        FlowRecord {
            account_id: Some(self.info.account_id.clone()),
            interface_id: Some(self.info.interface_id.clone()),
            srcaddr: Some(srcaddr),
            dstaddr: Some(dstaddr),
            srcport: Some(key.src_port),
            dstport: Some(key.dst_port),
            protocol: Some(key.protocol),
            packets: Some(st.packets),
            bytes: Some(st.bytes),
            start: Some(interval_start.saturating_add(u64::from(st.first))),
            end: Some(interval_start.saturating_add(u64::from(st.last))),
            action: Some(Action::Accept),
            log_status: Some(LogStatus::Ok),
            tcp_flags: (key.protocol == PROTO_TCP).then_some(st.flags),
            traffic_type: Some(if key.v6 {
                TrafficType::IPv6
            } else {
                TrafficType::IPv4
            }),
            pkt_srcaddr: Some(src),
            pkt_dstaddr: Some(dst),
            flow_direction: Some(key.direction.into()),
            ..FlowRecord::default()
        }
    }

    /// The interface's primary address of `packet_addr`'s family, else `packet_addr`.
    fn own_address(&self, packet_addr: IpAddr) -> IpAddr {
        match packet_addr {
            IpAddr::V4(_) => self.info.primary_v4.map_or(packet_addr, IpAddr::V4),
            IpAddr::V6(_) => self.info.primary_v6.map_or(packet_addr, IpAddr::V6),
        }
    }

    #[inline]
    fn direction(&self, meta: &PacketMeta) -> Direction {
        if meta.src_mac == Some(self.info.mac) || meta.sll_packet_type == Some(SLL_OUTGOING) {
            Direction::Egress
        } else {
            Direction::Ingress
        }
    }

    #[inline]
    fn flow_key(&mut self, meta: &PacketMeta, direction: Direction) -> FlowKey {
        let (mut src_port, mut dst_port) = (meta.src_port, meta.dst_port);
        match meta.fragment {
            Fragment::None => {}
            Fragment::First { id } => self.fragments.insert(
                FragKey {
                    src: meta.src,
                    dst: meta.dst,
                    protocol: meta.protocol,
                    id,
                },
                (src_port, dst_port),
            ),
            Fragment::Later { id } => {
                let key = FragKey {
                    src: meta.src,
                    dst: meta.dst,
                    protocol: meta.protocol,
                    id,
                };
                (src_port, dst_port) = self.fragments.get(&key).unwrap_or((0, 0));
            }
        }
        if matches!(meta.protocol, PROTO_ICMP | PROTO_ICMPV6) {
            (src_port, dst_port) = (0, 0);
        }
        FlowKey::new(
            direction,
            meta.protocol,
            meta.src,
            meta.dst,
            (src_port, dst_port),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::decode::{LinkType, decode_frame};
    use flowlog_tests::frames::{self, TCP_ACK, TCP_FIN, TCP_PSH, TCP_SYN};

    /// Start of a 60 s interval (1_699_999_980 % 60 == 0).
    const T0: u64 = 1_699_999_980;
    const ENI_MAC: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
    const GW_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    const PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
    const SECONDARY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 77);
    const REMOTE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);

    fn info() -> InterfaceInfo {
        InterfaceInfo {
            interface_id: "eni-0123456789abcdef0".into(),
            account_id: "123456789010".into(),
            mac: ENI_MAC,
            primary_v4: Some(PRIMARY),
            primary_v6: None,
        }
    }

    fn table(max_flows: usize) -> FlowTable {
        FlowTable::new(
            info(),
            FlowTableSettings {
                interval_secs: 60,
                max_flows,
            },
        )
    }

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn meta(frame: &[u8]) -> PacketMeta {
        decode_frame(LinkType::Ethernet, frame).unwrap()
    }

    /// TCP from the interface (egress) or to it (ingress), IPv4, 0-byte payload unless
    /// given.
    fn tcp_out(src: Ipv4Addr, sport: u16, dport: u16, flags: u8, len: usize) -> PacketMeta {
        meta(&frames::tcp_v4(
            ENI_MAC, GW_MAC, src, REMOTE, sport, dport, flags, len,
        ))
    }
    fn tcp_in(dst: Ipv4Addr, sport: u16, dport: u16, flags: u8, len: usize) -> PacketMeta {
        meta(&frames::tcp_v4(
            GW_MAC, ENI_MAC, REMOTE, dst, sport, dport, flags, len,
        ))
    }

    fn ok_records(out: &[FlowRecord]) -> Vec<&FlowRecord> {
        out.iter()
            .filter(|r| r.log_status == Some(LogStatus::Ok))
            .collect()
    }

    fn status_records(out: &[FlowRecord], status: LogStatus) -> Vec<(u64, u64)> {
        out.iter()
            .filter(|r| r.log_status == Some(status))
            .map(|r| (r.start.unwrap(), r.end.unwrap()))
            .collect()
    }

    fn find(out: &[FlowRecord], direction: FlowDirection, start: u64) -> Vec<&FlowRecord> {
        out.iter()
            .filter(|r| r.flow_direction == Some(direction))
            .filter(|r| r.start.unwrap() / 60 == start / 60)
            .collect()
    }

    #[test]
    fn handshake_and_teardown_in_one_interval() {
        let mut t = table(100);
        let mut out = Vec::new();
        let c = 40000;
        let s = 443;
        let pkts = [
            (5, tcp_out(PRIMARY, c, s, TCP_SYN, 0)),
            (5, tcp_in(PRIMARY, s, c, TCP_SYN | TCP_ACK, 0)),
            (6, tcp_out(PRIMARY, c, s, TCP_ACK, 0)),
            (6, tcp_out(PRIMARY, c, s, TCP_PSH | TCP_ACK, 100)),
            (7, tcp_in(PRIMARY, s, c, TCP_PSH | TCP_ACK, 1000)),
            (8, tcp_out(PRIMARY, c, s, TCP_FIN | TCP_ACK, 0)),
            (8, tcp_in(PRIMARY, s, c, TCP_FIN | TCP_ACK, 0)),
            (9, tcp_out(PRIMARY, c, s, TCP_ACK, 0)),
        ];
        for (dt, m) in &pkts {
            t.observe(m, at(T0 + dt), &mut out);
        }
        assert!(out.is_empty(), "nothing is due inside the interval");
        assert_eq!(t.live_flows(), 2);
        t.close_due(at(T0 + 59), &mut out);
        assert!(out.is_empty(), "the interval ends at T0+60");
        t.close_due(at(T0 + 60), &mut out);
        assert_eq!(out.len(), 2, "{out:#?}");
        // Both flows start at T0+5; ties are broken by direction, ingress first.
        let (server, client) = (&out[0], &out[1]);
        assert_eq!(client.flow_direction, Some(FlowDirection::Egress));
        assert_eq!(client.tcp_flags, Some(3));
        assert_eq!(server.tcp_flags, Some(19));
        assert_eq!(client.packets, Some(5));
        assert_eq!(client.bytes, Some(5 * 40 + 100));
        assert_eq!(server.packets, Some(3));
        assert_eq!(server.bytes, Some(3 * 40 + 1000));
        assert_eq!((client.start, client.end), (Some(T0 + 5), Some(T0 + 9)));
        assert_eq!((server.start, server.end), (Some(T0 + 5), Some(T0 + 8)));
        for r in [client, server] {
            assert_eq!(r.action, Some(Action::Accept));
            assert_eq!(r.log_status, Some(LogStatus::Ok));
            assert_eq!(r.protocol, Some(6));
            assert_eq!(r.traffic_type, Some(TrafficType::IPv4));
            assert_eq!(r.account_id.as_deref(), Some("123456789010"));
            assert_eq!(r.interface_id.as_deref(), Some("eni-0123456789abcdef0"));
        }
        assert_eq!(server.flow_direction, Some(FlowDirection::Ingress));
        assert_eq!(client.srcaddr, Some(PRIMARY.into()));
        assert_eq!(client.dstaddr, Some(REMOTE.into()));
        assert_eq!((client.srcport, client.dstport), (Some(c), Some(s)));
        assert_eq!(server.srcaddr, Some(REMOTE.into()));
        assert_eq!(server.dstaddr, Some(PRIMARY.into()));
        assert_eq!((server.srcport, server.dstport), (Some(s), Some(c)));
        assert_eq!(t.live_flows(), 0);
    }

    #[test]
    fn connection_spanning_two_intervals() {
        let mut t = table(100);
        let mut out = Vec::new();
        let (c, s) = (40001, 22);
        t.observe(&tcp_out(PRIMARY, c, s, TCP_SYN, 0), at(T0 + 50), &mut out);
        t.observe(
            &tcp_in(PRIMARY, s, c, TCP_SYN | TCP_ACK, 0),
            at(T0 + 50),
            &mut out,
        );
        t.observe(&tcp_out(PRIMARY, c, s, TCP_ACK, 0), at(T0 + 51), &mut out);
        t.observe(
            &tcp_in(PRIMARY, s, c, TCP_PSH | TCP_ACK, 500),
            at(T0 + 58),
            &mut out,
        );
        assert!(out.is_empty());
        // The first packet of the next interval closes the first.
        t.observe(&tcp_out(PRIMARY, c, s, TCP_ACK, 0), at(T0 + 61), &mut out);
        assert_eq!(out.len(), 2);
        let e = find(&out, FlowDirection::Egress, T0);
        let i = find(&out, FlowDirection::Ingress, T0);
        assert_eq!((e[0].tcp_flags, i[0].tcp_flags), (Some(2), Some(18)));
        assert_eq!((e[0].start, e[0].end), (Some(T0 + 50), Some(T0 + 51)));
        assert_eq!((i[0].start, i[0].end), (Some(T0 + 50), Some(T0 + 58)));
        out.clear();
        t.observe(
            &tcp_out(PRIMARY, c, s, TCP_FIN | TCP_ACK, 0),
            at(T0 + 70),
            &mut out,
        );
        t.observe(
            &tcp_in(PRIMARY, s, c, TCP_FIN | TCP_ACK, 0),
            at(T0 + 71),
            &mut out,
        );
        t.observe(&tcp_out(PRIMARY, c, s, TCP_ACK, 0), at(T0 + 72), &mut out);
        t.close_due(at(T0 + 125), &mut out);
        assert_eq!(out.len(), 2, "{out:#?}");
        let e = find(&out, FlowDirection::Egress, T0 + 60);
        let i = find(&out, FlowDirection::Ingress, T0 + 60);
        assert_eq!((e[0].tcp_flags, i[0].tcp_flags), (Some(1), Some(1)));
        assert_eq!((e[0].start, e[0].end), (Some(T0 + 61), Some(T0 + 72)));
        assert_eq!(e[0].packets, Some(3));
        assert_eq!((i[0].start, i[0].end), (Some(T0 + 71), Some(T0 + 71)));
    }

    #[test]
    fn direction_and_eni_address_rule() {
        let mut t = table(100);
        let mut out = Vec::new();
        // Egress from a secondary address, ingress to a secondary address.
        t.observe(&tcp_out(SECONDARY, 1000, 80, TCP_SYN, 0), at(T0), &mut out);
        t.observe(
            &tcp_in(SECONDARY, 80, 1000, TCP_SYN | TCP_ACK, 0),
            at(T0 + 1),
            &mut out,
        );
        // A Linux cooked capture: outgoing by packet type, whatever the address says.
        let ip = frames::ipv4(PRIMARY, REMOTE, 17, 0, 0, false, &frames::udp(5, 6, 0));
        let sll = frames::linux_sll(frames::SLL_OUTGOING, [9; 6], frames::ETHERTYPE_IPV4, &ip);
        let m = decode_frame(LinkType::LinuxSll, &sll).unwrap();
        t.observe(&m, at(T0 + 2), &mut out);
        let sll = frames::linux_sll(frames::SLL_HOST, [9; 6], frames::ETHERTYPE_IPV4, &ip);
        let m = decode_frame(LinkType::LinuxSll, &sll).unwrap();
        t.observe(&m, at(T0 + 3), &mut out);
        t.close_due(at(T0 + 60), &mut out);
        assert_eq!(out.len(), 4, "{out:#?}");

        let r = &out[0];
        assert_eq!(r.flow_direction, Some(FlowDirection::Egress));
        assert_eq!(r.srcaddr, Some(PRIMARY.into()));
        assert_eq!(r.dstaddr, Some(REMOTE.into()));
        assert_eq!(r.pkt_srcaddr, Some(SECONDARY.into()));
        assert_eq!(r.pkt_dstaddr, Some(REMOTE.into()));

        let r = &out[1];
        assert_eq!(r.flow_direction, Some(FlowDirection::Ingress));
        assert_eq!(r.srcaddr, Some(REMOTE.into()));
        assert_eq!(r.dstaddr, Some(PRIMARY.into()));
        assert_eq!(r.pkt_srcaddr, Some(REMOTE.into()));
        assert_eq!(r.pkt_dstaddr, Some(SECONDARY.into()));

        assert_eq!(out[2].flow_direction, Some(FlowDirection::Egress));
        assert_eq!(out[2].protocol, Some(17));
        // Packet type "to us" with the same addresses: ingress; the interface side is the
        // destination, shown as the primary address.
        assert_eq!(out[3].flow_direction, Some(FlowDirection::Ingress));
        assert_eq!(out[3].srcaddr, Some(PRIMARY.into()));
        assert_eq!(out[3].dstaddr, Some(PRIMARY.into()));
        assert_eq!(out[3].pkt_dstaddr, Some(REMOTE.into()));
    }

    #[test]
    fn ipv6_records() {
        let v6 = |last| Ipv6Addr::new(0x2001, 0xdb8, 0x1234, 0xa100, 0, 0, 0, last);
        let remote = Ipv6Addr::new(0x2001, 0xdb8, 0x1234, 0xa102, 0, 0, 0, 0x4071);
        let mut t = table(100);
        let mut out = Vec::new();
        let f = frames::tcp_v6(ENI_MAC, GW_MAC, v6(1), remote, 34892, 22, TCP_SYN, 0);
        t.observe(&meta(&f), at(T0 + 1), &mut out);
        let f = frames::udp_v6(GW_MAC, ENI_MAC, remote, v6(2), 53, 5353, 10);
        t.observe(&meta(&f), at(T0 + 2), &mut out);
        t.close_due(at(T0 + 60), &mut out);
        assert_eq!(out.len(), 2);
        let r = &out[0];
        assert_eq!(r.traffic_type, Some(TrafficType::IPv6));
        assert_eq!(r.flow_direction, Some(FlowDirection::Egress));
        // No primary IPv6 on the interface: the packet's own address.
        assert_eq!(r.srcaddr, Some(v6(1).into()));
        assert_eq!(r.dstaddr, Some(remote.into()));
        assert_eq!(r.bytes, Some(60));
        assert_eq!(r.tcp_flags, Some(2));
        let r = &out[1];
        assert_eq!(r.traffic_type, Some(TrafficType::IPv6));
        assert_eq!(r.tcp_flags, None);
        assert_eq!(r.bytes, Some(40 + 8 + 10));

        // With a primary IPv6 address, the interface side shows it.
        let mut with_v6 = info();
        with_v6.primary_v6 = Some(v6(1));
        let mut t = FlowTable::new(
            with_v6,
            FlowTableSettings {
                interval_secs: 60,
                max_flows: 10,
            },
        );
        let mut out = Vec::new();
        let f = frames::udp_v6(GW_MAC, ENI_MAC, remote, v6(2), 53, 5353, 10);
        t.observe(&meta(&f), at(T0 + 2), &mut out);
        t.flush_all(at(T0 + 3), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].dstaddr, Some(v6(1).into()));
        assert_eq!(out[0].pkt_dstaddr, Some(v6(2).into()));
    }

    #[test]
    fn udp_and_icmp_records() {
        let mut t = table(100);
        let mut out = Vec::new();
        let udp = frames::udp_v4(ENI_MAC, GW_MAC, PRIMARY, REMOTE, 5000, 53, 20);
        t.observe(&meta(&udp), at(T0 + 1), &mut out);
        t.observe(&meta(&udp), at(T0 + 2), &mut out);
        let ping = frames::icmp_v4(GW_MAC, ENI_MAC, REMOTE, PRIMARY, true, 56);
        t.observe(&meta(&ping), at(T0 + 3), &mut out);
        let pong = frames::icmp_v4(ENI_MAC, GW_MAC, PRIMARY, REMOTE, false, 56);
        t.observe(&meta(&pong), at(T0 + 3), &mut out);
        t.close_due(at(T0 + 60), &mut out);
        assert_eq!(out.len(), 3, "{out:#?}");
        let udp = &out[0];
        assert_eq!(udp.protocol, Some(17));
        assert_eq!((udp.srcport, udp.dstport), (Some(5000), Some(53)));
        assert_eq!((udp.packets, udp.bytes), (Some(2), Some(2 * 48)));
        assert_eq!(udp.tcp_flags, None);
        for r in &out[1..] {
            assert_eq!(r.protocol, Some(1));
            assert_eq!((r.srcport, r.dstport), (Some(0), Some(0)));
            assert_eq!(r.tcp_flags, None);
            assert_eq!((r.packets, r.bytes), (Some(1), Some(20 + 8 + 56)));
        }
        // Same start: ingress sorts before egress.
        assert_eq!(out[1].flow_direction, Some(FlowDirection::Ingress));
        assert_eq!(out[2].flow_direction, Some(FlowDirection::Egress));
    }

    fn fragment(id: u16, offset: u16, more: bool, payload: &[u8]) -> PacketMeta {
        let ip = frames::ipv4(REMOTE, PRIMARY, 17, id, offset, more, payload);
        meta(&frames::ethernet(
            GW_MAC,
            ENI_MAC,
            frames::ETHERTYPE_IPV4,
            &ip,
        ))
    }

    #[test]
    fn fragments_follow_their_first_fragment() {
        let mut t = table(100);
        let mut out = Vec::new();
        let dgram = frames::udp(4789, 4789, 2000);
        let first = fragment(7, 0, true, &dgram[..1480]);
        let later = fragment(7, 1480, false, &dgram[1480..]);
        assert!(matches!(first.fragment, Fragment::First { id: 7 }));
        assert!(matches!(later.fragment, Fragment::Later { id: 7 }));
        t.observe(&first, at(T0 + 1), &mut out);
        t.observe(&later, at(T0 + 2), &mut out);
        // A later fragment whose first fragment was never seen.
        let orphan = fragment(8, 1480, false, &[0; 100]);
        t.observe(&orphan, at(T0 + 3), &mut out);
        t.close_due(at(T0 + 60), &mut out);
        assert_eq!(out.len(), 2, "{out:#?}");
        let matched = &out[0];
        assert_eq!((matched.srcport, matched.dstport), (Some(4789), Some(4789)));
        assert_eq!(matched.packets, Some(2));
        assert_eq!(matched.bytes, Some(1500 + 20 + 2008 - 1480));
        assert_eq!((matched.start, matched.end), (Some(T0 + 1), Some(T0 + 2)));
        let orphan = &out[1];
        assert_eq!((orphan.srcport, orphan.dstport), (Some(0), Some(0)));
        assert_eq!(orphan.protocol, Some(17));
        assert_eq!((orphan.packets, orphan.bytes), (Some(1), Some(120)));
    }

    #[test]
    fn fragment_cache_is_bounded() {
        let mut cache = FragmentCache::default();
        let key = |id| FragKey {
            src: REMOTE.into(),
            dst: PRIMARY.into(),
            protocol: 17,
            id,
        };
        for id in 0..(FRAGMENT_CACHE_CAPACITY as u32 + 10) {
            cache.insert(key(id), (1, 2));
        }
        assert_eq!(cache.ports.len(), FRAGMENT_CACHE_CAPACITY);
        assert_eq!(cache.order.len(), FRAGMENT_CACHE_CAPACITY);
        assert_eq!(cache.get(&key(0)), None, "oldest evicted");
        assert_eq!(
            cache.get(&key(FRAGMENT_CACHE_CAPACITY as u32 + 9)),
            Some((1, 2))
        );
        cache.insert(key(20), (3, 4));
        assert_eq!(cache.get(&key(20)), Some((3, 4)));
        assert_eq!(cache.order.len(), FRAGMENT_CACHE_CAPACITY);
    }

    #[test]
    fn nodata_for_idle_intervals() {
        let mut t = table(100);
        let mut out = Vec::new();
        let m = tcp_out(PRIMARY, 1, 2, TCP_ACK, 0);
        t.observe(&m, at(T0 + 10), &mut out);
        // Next packet four intervals later: the first interval's record, then NODATA for
        // the three idle intervals in between.
        t.observe(&m, at(T0 + 4 * 60 + 5), &mut out);
        assert_eq!(out.len(), 4, "{out:#?}");
        assert_eq!(out[0].log_status, Some(LogStatus::Ok));
        assert_eq!(
            status_records(&out, LogStatus::NoData),
            vec![
                (T0 + 60, T0 + 119),
                (T0 + 120, T0 + 179),
                (T0 + 180, T0 + 239)
            ]
        );
        let nodata = &out[1];
        assert_eq!(nodata.account_id.as_deref(), Some("123456789010"));
        assert_eq!(
            nodata.interface_id.as_deref(),
            Some("eni-0123456789abcdef0")
        );
        assert_eq!(nodata.srcaddr, None);
        assert_eq!(nodata.action, None);
        out.clear();
        // close_due: the open interval (with a packet) and then one idle interval.
        t.close_due(at(T0 + 6 * 60), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].start, Some(T0 + 245));
        assert_eq!(
            status_records(&out, LogStatus::NoData),
            vec![(T0 + 300, T0 + 359)]
        );
        out.clear();
        // Calling again at the same time adds nothing; one second later neither.
        t.close_due(at(T0 + 6 * 60), &mut out);
        t.close_due(at(T0 + 6 * 60 + 1), &mut out);
        assert!(out.is_empty());
        // A quiet table reports one NODATA per interval.
        t.close_due(at(T0 + 7 * 60), &mut out);
        assert_eq!(
            status_records(&out, LogStatus::NoData),
            vec![(T0 + 360, T0 + 419)]
        );
    }

    #[test]
    fn nodata_starts_with_the_table_and_is_capped() {
        // A table told the time first at T0+30 reports nothing before T0.
        let mut t = table(10);
        let mut out = Vec::new();
        t.close_due(at(T0 + 30), &mut out);
        assert!(out.is_empty());
        t.close_due(at(T0 + 60), &mut out);
        assert_eq!(status_records(&out, LogStatus::NoData), vec![(T0, T0 + 59)]);
        // new_at: the creation interval counts even if the first call is much later.
        let mut t = FlowTable::new_at(
            info(),
            FlowTableSettings {
                interval_secs: 60,
                max_flows: 10,
            },
            at(T0 + 5),
        );
        let mut out = Vec::new();
        t.close_due(at(T0 + 180), &mut out);
        assert_eq!(out.len(), 3);
        // After a very long silence, at most MAX_IDLE_INTERVALS idle intervals (the most
        // recent) plus the open interval closed.
        let mut out = Vec::new();
        let later = T0 + 180 + 5000 * 60;
        t.close_due(at(later), &mut out);
        assert_eq!(out.len() as u64, 1 + MAX_IDLE_INTERVALS);
        assert_eq!(out[0].start, Some(T0 + 180));
        assert_eq!(out.last().unwrap().end, Some(later - 1));
        assert!(out.windows(2).all(|w| w[0].start < w[1].start));
    }

    #[test]
    fn skipdata_when_the_table_is_full() {
        let mut t = table(2);
        let mut out = Vec::new();
        for port in 0..5 {
            t.observe(
                &tcp_out(PRIMARY, 1000 + port, 80, TCP_SYN, 0),
                at(T0 + 1),
                &mut out,
            );
        }
        // Known flows still count when the table is full.
        t.observe(
            &tcp_out(PRIMARY, 1000, 80, TCP_ACK, 0),
            at(T0 + 2),
            &mut out,
        );
        assert_eq!(t.live_flows(), 2);
        t.close_due(at(T0 + 60), &mut out);
        assert_eq!(out.len(), 3, "{out:#?}");
        assert_eq!(
            status_records(&out, LogStatus::SkipData),
            vec![(T0, T0 + 59)]
        );
        assert_eq!(out[0].log_status, Some(LogStatus::SkipData));
        let ok = ok_records(&out);
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].srcport, Some(1000));
        assert_eq!(ok[0].packets, Some(2));
        assert_eq!(ok[1].srcport, Some(1001));
        // The next interval has room again and no SKIPDATA.
        out.clear();
        t.observe(
            &tcp_out(PRIMARY, 1004, 80, TCP_ACK, 0),
            at(T0 + 61),
            &mut out,
        );
        t.close_due(at(T0 + 120), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].srcport, Some(1004));
    }

    #[test]
    fn skipdata_on_loss() {
        let mut t = table(10);
        let mut out = Vec::new();
        t.observe(&tcp_out(PRIMARY, 1, 2, TCP_ACK, 0), at(T0 + 1), &mut out);
        t.record_loss(at(T0 + 30), 17);
        t.record_loss(at(T0 + 31), 0);
        t.close_due(at(T0 + 60), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            status_records(&out, LogStatus::SkipData),
            vec![(T0, T0 + 59)]
        );
        // Loss in an interval without packets: SKIPDATA instead of NODATA.
        out.clear();
        t.record_loss(at(T0 + 70), 3);
        t.close_due(at(T0 + 120), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            status_records(&out, LogStatus::SkipData),
            vec![(T0 + 60, T0 + 119)]
        );
        // Loss reported after an interval ended: that interval's records are held until
        // the next call with an output.
        out.clear();
        t.observe(&tcp_out(PRIMARY, 1, 2, TCP_ACK, 0), at(T0 + 130), &mut out);
        t.record_loss(at(T0 + 185), 1);
        assert!(out.is_empty());
        t.close_due(at(T0 + 185), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].start, Some(T0 + 130));
        t.close_due(at(T0 + 240), &mut out);
        assert_eq!(
            status_records(&out, LogStatus::SkipData),
            vec![(T0 + 180, T0 + 239)]
        );
    }

    #[test]
    fn intervals_are_aligned() {
        let mut t = table(10);
        let mut out = Vec::new();
        let m = tcp_out(PRIMARY, 1, 2, TCP_ACK, 0);
        t.observe(&m, at(T0 + 59), &mut out);
        t.observe(&m, Duration::new(T0 + 59, 999_999_999), &mut out);
        assert!(out.is_empty());
        t.observe(&m, at(T0 + 60), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start, out[0].end), (Some(T0 + 59), Some(T0 + 59)));
        assert_eq!(out[0].packets, Some(2));
        t.flush_all(at(T0 + 61), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[1].start, out[1].end), (Some(T0 + 60), Some(T0 + 60)));

        // 600 s intervals align to multiples of 600.
        let mut t = FlowTable::new(
            info(),
            FlowTableSettings {
                interval_secs: 600,
                max_flows: 10,
            },
        );
        let mut out = Vec::new();
        let base = T0 - T0 % 600;
        t.observe(&m, at(base + 599), &mut out);
        t.observe(&m, at(base + 600), &mut out);
        assert_eq!(out.len(), 1);
        t.close_due(at(base + 1200), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].start, Some(base + 600));
    }

    #[test]
    fn flush_all_emits_the_partial_interval() {
        let mut t = table(10);
        let mut out = Vec::new();
        t.close_due(at(T0 + 1), &mut out);
        t.flush_all(at(T0 + 20), &mut out);
        assert_eq!(status_records(&out, LogStatus::NoData), vec![(T0, T0 + 20)]);
        out.clear();
        t.observe(&tcp_out(PRIMARY, 1, 2, TCP_ACK, 0), at(T0 + 65), &mut out);
        t.record_loss(at(T0 + 66), 1);
        t.flush_all(at(T0 + 70), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            status_records(&out, LogStatus::SkipData),
            vec![(T0 + 60, T0 + 70)]
        );
        assert_eq!(t.live_flows(), 0);
    }

    #[test]
    fn late_packets_and_clock_jumps() {
        let mut t = table(10);
        let mut out = Vec::new();
        let m = tcp_out(PRIMARY, 1, 2, TCP_ACK, 0);
        t.observe(&m, at(T0 + 61), &mut out);
        assert!(out.is_empty());
        // Slightly late (previous interval): counted in the open one, at its start.
        t.observe(&m, at(T0 + 59), &mut out);
        assert!(out.is_empty());
        // Clock set back by an hour: the open interval is closed and a new one starts.
        t.observe(&m, at(T0 - 3600), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].start, out[0].end), (Some(T0 + 60), Some(T0 + 61)));
        assert_eq!(out[0].packets, Some(2));
        out.clear();
        t.close_due(at(T0 - 3600 + 60), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].start, Some(T0 - 3600));
    }

    #[test]
    fn extreme_times_do_not_panic() {
        let m = tcp_out(PRIMARY, 1, 2, TCP_ACK, 0);
        for interval_secs in [0, 1, 60, 600, u64::MAX] {
            let mut t = FlowTable::new(
                info(),
                FlowTableSettings {
                    interval_secs,
                    max_flows: 10,
                },
            );
            let mut out = Vec::new();
            t.observe(&m, Duration::ZERO, &mut out);
            t.observe(&m, Duration::MAX, &mut out);
            t.record_loss(Duration::MAX, u64::MAX);
            t.close_due(Duration::MAX, &mut out);
            t.observe(&m, Duration::ZERO, &mut out);
            t.flush_all(Duration::MAX, &mut out);
            assert!(!out.is_empty());
            assert!(out.iter().all(|r| r.start <= r.end), "{out:#?}");
        }
    }

    #[test]
    fn output_order_is_reproducible() {
        let run = |order: &[usize]| {
            let mut t = table(100);
            let mut out = Vec::new();
            let metas: Vec<PacketMeta> = (0..6u16)
                .map(|i| {
                    if i % 2 == 0 {
                        tcp_out(PRIMARY, 100 + i, 80, TCP_ACK, 0)
                    } else {
                        tcp_in(PRIMARY, 80, 100 + i, TCP_ACK, 0)
                    }
                })
                .collect();
            for &i in order {
                t.observe(&metas[i], at(T0 + 1 + (i as u64 % 2)), &mut out);
            }
            t.close_due(at(T0 + 60), &mut out);
            out
        };
        let a = run(&[0, 1, 2, 3, 4, 5]);
        let b = run(&[5, 3, 1, 4, 2, 0]);
        assert_eq!(a, b);
        assert!(a.windows(2).all(|w| w[0].start <= w[1].start));
    }

    /// One generated packet: direction, small address/port/protocol choices, size, time
    /// step.
    #[derive(Debug, Clone)]
    struct GenPacket {
        egress: bool,
        remote: u8,
        protocol: u8,
        sport: u16,
        dport: u16,
        payload: usize,
        flags: u8,
        step: u64,
    }

    fn gen_packet() -> impl Strategy<Value = GenPacket> {
        (
            any::<bool>(),
            0u8..3,
            prop_oneof![Just(6u8), Just(17u8), Just(1u8)],
            0u16..3,
            0u16..3,
            0usize..200,
            any::<u8>(),
            prop_oneof![4 => Just(0u64), 4 => 0u64..20, 1 => 0u64..200],
        )
            .prop_map(
                |(egress, remote, protocol, sport, dport, payload, flags, step)| GenPacket {
                    egress,
                    remote,
                    protocol,
                    sport,
                    dport,
                    payload,
                    flags,
                    step,
                },
            )
    }

    fn build(p: &GenPacket) -> PacketMeta {
        let remote = Ipv4Addr::new(198, 51, 100, p.remote);
        let (src_mac, dst_mac, src, dst) = if p.egress {
            (ENI_MAC, GW_MAC, PRIMARY, remote)
        } else {
            (GW_MAC, ENI_MAC, remote, PRIMARY)
        };
        let l4 = match p.protocol {
            6 => frames::tcp(p.sport, p.dport, p.flags, p.payload),
            17 => frames::udp(p.sport, p.dport, p.payload),
            _ => frames::icmp_echo(p.egress, 1, 1, p.payload),
        };
        let ip = frames::ipv4(src, dst, p.protocol, 0, 0, false, &l4);
        meta(&frames::ethernet(
            src_mac,
            dst_mac,
            frames::ETHERTYPE_IPV4,
            &ip,
        ))
    }

    type Key = (u64, FlowDirection, IpAddr, IpAddr, u16, u16, u8);

    proptest! {
        #[test]
        fn conservation_and_bounds(
            start in 0u64..120,
            packets in proptest::collection::vec(gen_packet(), 0..200),
        ) {
            let mut t = table(10_000);
            let mut out = Vec::new();
            let mut expect: BTreeMap<Key, (u64, u64, u16)> = BTreeMap::new();
            let mut now = T0 + start;
            let mut first_interval = None;
            for p in &packets {
                now += p.step;
                first_interval.get_or_insert(now - now % 60);
                let m = build(p);
                t.observe(&m, Duration::new(now, 123), &mut out);
                let dir = if p.egress { FlowDirection::Egress } else { FlowDirection::Ingress };
                let ports = if m.protocol == 1 { (0, 0) } else { (m.src_port, m.dst_port) };
                let key = (now - now % 60, dir, m.src, m.dst, ports.0, ports.1, m.protocol);
                let e = expect.entry(key).or_default();
                e.0 += 1;
                e.1 += u64::from(m.ip_len);
                if m.protocol == 6 {
                    e.2 |= aws_tcp_flags(m.tcp_flags);
                }
            }
            let end = now - now % 60 + 60;
            t.close_due(Duration::from_secs(end), &mut out);
            prop_assert_eq!(t.live_flows(), 0);

            let mut got: BTreeMap<Key, (u64, u64, u16)> = BTreeMap::new();
            let mut status: BTreeMap<u64, LogStatus> = BTreeMap::new();
            for r in &out {
                let s = r.start.unwrap();
                let e = r.end.unwrap();
                let interval = s - s % 60;
                prop_assert!(s <= e, "{:?}", r);
                prop_assert!(e < interval + 60, "{:?}", r);
                let st = r.log_status.unwrap();
                if st != LogStatus::Ok {
                    prop_assert_eq!(s, interval);
                    prop_assert_eq!(e, interval + 59);
                    prop_assert!(status.insert(interval, st).is_none());
                    continue;
                }
                let key = (
                    interval,
                    r.flow_direction.unwrap(),
                    r.pkt_srcaddr.unwrap(),
                    r.pkt_dstaddr.unwrap(),
                    r.srcport.unwrap(),
                    r.dstport.unwrap(),
                    r.protocol.unwrap(),
                );
                prop_assert_eq!(r.tcp_flags.is_some(), r.protocol == Some(6));
                let flags = r.tcp_flags.unwrap_or(0);
                let prev = got.insert(key, (r.packets.unwrap(), r.bytes.unwrap(), flags));
                prop_assert!(prev.is_none(), "one record per flow and interval: {:?}", r);
            }
            prop_assert_eq!(&got, &expect);
            // Every interval from the first to the last has records or exactly one NODATA.
            // (The table starts with its first packet: no packet, no record.)
            let mut i = first_interval.unwrap_or(end);
            prop_assert_eq!(out.is_empty(), packets.is_empty());
            while i < end {
                let has_ok = got.keys().any(|k| k.0 == i);
                prop_assert_eq!(status.get(&i) == Some(&LogStatus::NoData), !has_ok, "interval {}", i);
                i += 60;
            }
            prop_assert!(status.values().all(|s| *s == LogStatus::NoData));
            // Output is in time order across intervals.
            prop_assert!(out.windows(2).all(|w| w[0].start.unwrap() / 60 <= w[1].start.unwrap() / 60));
        }
    }

    /// A packet of flow number `n` of many: TCP, IPv4 or (every fifth) IPv6, ingress or
    /// egress, with distinct remote addresses and ports.
    fn many_flows_packet(n: u32, egress: bool) -> PacketMeta {
        let port = 1024 + (n % 60_000) as u16;
        if n.is_multiple_of(5) {
            let local = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
            let remote = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, (n >> 16) as u16, n as u16);
            let (sm, dm, s, d) = if egress {
                (ENI_MAC, GW_MAC, local, remote)
            } else {
                (GW_MAC, ENI_MAC, remote, local)
            };
            meta(&frames::tcp_v6(sm, dm, s, d, port, 443, TCP_ACK, 10))
        } else {
            let remote = Ipv4Addr::from(0xc633_0000 + n);
            let (sm, dm, s, d) = if egress {
                (ENI_MAC, GW_MAC, PRIMARY, remote)
            } else {
                (GW_MAC, ENI_MAC, remote, PRIMARY)
            };
            meta(&frames::tcp_v4(sm, dm, s, d, port, 443, TCP_ACK, 10))
        }
    }

    #[test]
    fn many_flows_survive_index_growth_and_reuse() {
        // Far more flows than the smallest index holds: it grows several times.
        let n = 5_000u32;
        let mut t = table(1 << 20);
        let mut out = Vec::new();
        for round in 0..2 {
            for i in 0..n {
                t.observe(
                    &many_flows_packet(i, i % 2 == 0),
                    at(T0 + 1 + round),
                    &mut out,
                );
            }
        }
        assert_eq!(t.live_flows(), n as usize);
        // The next interval reuses the map (cleared): fewer flows, each once.
        for i in 0..100 {
            t.observe(&many_flows_packet(i, true), at(T0 + 61), &mut out);
        }
        assert_eq!(out.len(), n as usize);
        assert!(out.iter().all(|r| r.packets == Some(2)));
        let mut keys: Vec<_> = out
            .iter()
            .map(|r| (r.pkt_srcaddr, r.pkt_dstaddr, r.srcport))
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n as usize, "one record per flow");
        out.clear();
        t.flush_all(at(T0 + 62), &mut out);
        assert_eq!(out.len(), 100);
        assert!(out.iter().all(|r| r.packets == Some(1)));
    }

    #[test]
    fn max_flows_is_respected_at_every_index_width() {
        for max_flows in [0, 1, 2, 3, 7, 1000] {
            let mut t = table(max_flows);
            let mut out = Vec::new();
            for i in 0..20 {
                t.observe(&many_flows_packet(i, false), at(T0 + 1), &mut out);
                t.observe(&many_flows_packet(i, false), at(T0 + 2), &mut out);
            }
            assert_eq!(t.live_flows(), max_flows.min(20), "max_flows {max_flows}");
            // Every packet of the flows beyond the limit is counted as table-full.
            assert_eq!(
                t.table_full_packets(),
                2 * (20 - max_flows.min(20)) as u64,
                "max_flows {max_flows}"
            );
            t.close_due(at(T0 + 60), &mut out);
            let ok = ok_records(&out);
            assert_eq!(ok.len(), max_flows.min(20));
            assert!(ok.iter().all(|r| r.packets == Some(2)));
            assert_eq!(
                status_records(&out, LogStatus::SkipData).len(),
                usize::from(max_flows < 20)
            );
        }
    }

    #[test]
    fn a_late_packet_starting_a_flow_is_still_sorted_first() {
        // Flows are normally added in order of their first second; a late packet (counted
        // at the interval's start) breaks that and the records must still be in order.
        let mut t = table(10);
        let mut out = Vec::new();
        t.observe(
            &tcp_out(PRIMARY, 2000, 80, TCP_ACK, 0),
            at(T0 + 65),
            &mut out,
        );
        t.observe(
            &tcp_out(PRIMARY, 1000, 80, TCP_ACK, 0),
            at(T0 + 66),
            &mut out,
        );
        t.observe(
            &tcp_out(PRIMARY, 3000, 80, TCP_ACK, 0),
            at(T0 + 59),
            &mut out,
        );
        t.close_due(at(T0 + 120), &mut out);
        let order: Vec<_> = out
            .iter()
            .map(|r| (r.start.unwrap(), r.srcport.unwrap()))
            .collect();
        assert_eq!(
            order,
            vec![(T0 + 60, 3000), (T0 + 65, 2000), (T0 + 66, 1000)]
        );
    }

    proptest! {
        #[test]
        fn keyed_batches_count_exactly_as_observe(
            start in 0u64..120,
            packets in proptest::collection::vec((gen_packet(), 0u8..20), 0..300),
            batch in 1usize..40,
        ) {
            // The same packets (some late, some far back in time) through observe one by
            // one and through key_packet + observe_keyed in batches.
            let mut one = table(50);
            let mut keyed = table(50);
            let (mut out_one, mut out_keyed) = (Vec::new(), Vec::new());
            let mut now = T0 + start;
            let mut pending = Vec::new();
            for (p, jitter) in &packets {
                now += p.step;
                let t = match jitter {
                    0 => now.saturating_sub(70),
                    1 | 2 => now.saturating_sub(5),
                    _ => now,
                };
                let m = build(p);
                one.observe(&m, Duration::new(t, 7), &mut out_one);
                pending.push(keyed.key_packet(&m, Duration::new(t, 7)));
                if pending.len() == batch {
                    keyed.observe_keyed(&pending, &mut out_keyed);
                    pending.clear();
                }
            }
            keyed.observe_keyed(&pending, &mut out_keyed);
            one.flush_all(Duration::from_secs(now + 1), &mut out_one);
            keyed.flush_all(Duration::from_secs(now + 1), &mut out_keyed);
            prop_assert_eq!(out_one, out_keyed);
        }
    }
}
