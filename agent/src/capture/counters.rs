//! Counters of live capture: per interface, shared by its threads, read by the metrics.

use super::*;

/// Live counters of one interface, shared by its capture threads.
#[derive(Debug, Default)]
pub struct InterfaceStats {
    pub(super) packets: AtomicU64,
    pub(super) bytes: AtomicU64,
    pub(super) skipped: [AtomicU64; SkipReason::ALL.len()],
    pub(super) kernel_drops: AtomicU64,
    pub(super) queue_dropped_records: AtomicU64,
    pub(super) table_full: AtomicU64,
    pub(super) live_flows: AtomicU64,
    pub(super) threads: AtomicU64,
}

/// A snapshot of one interface's capture counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// Frames read from the interface.
    pub packets: u64,
    /// Bytes of the frames read.
    pub bytes: u64,
    /// Frames not counted on any flow because they could not be decoded, by reason
    /// (every [`SkipReason`], in [`SkipReason::ALL`] order).
    pub skipped: Vec<(SkipReason, u64)>,
    /// Packets the kernel dropped before the agent read them (socket buffer full).
    pub kernel_drops: u64,
    /// Records dropped because the output channel stayed full (their packets are
    /// reported as SKIPDATA).
    pub queue_dropped_records: u64,
    /// Packets not counted on a flow because the flow table was full (`max_flows`; they
    /// are reported as SKIPDATA).
    pub table_full: u64,
    /// Flows in the open intervals of the interface's flow tables.
    pub live_flows: u64,
    /// Capture threads running on the interface.
    pub threads: u64,
}

impl InterfaceStats {
    /// Returns the current values.
    pub fn counters(&self) -> InterfaceCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        InterfaceCounters {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            skipped: SkipReason::ALL
                .iter()
                .zip(&self.skipped)
                .map(|(r, n)| (*r, get(n)))
                .collect(),
            kernel_drops: get(&self.kernel_drops),
            queue_dropped_records: get(&self.queue_dropped_records),
            table_full: get(&self.table_full),
            live_flows: get(&self.live_flows),
            threads: get(&self.threads),
        }
    }
}

/// Capture counters of every interface captured since the start, by interface name. An
/// interface that disappears keeps its counters (with no thread running); one that comes
/// back under the same name continues them.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub(super) interfaces: Mutex<BTreeMap<String, Arc<InterfaceStats>>>,
}

impl CaptureStats {
    /// Returns a snapshot of every interface's counters, by name.
    pub fn interfaces(&self) -> Vec<(String, InterfaceCounters)> {
        lock(&self.interfaces)
            .iter()
            .map(|(name, s)| (name.clone(), s.counters()))
            .collect()
    }

    /// Returns a snapshot of one interface's counters.
    pub fn interface(&self, name: &str) -> Option<InterfaceCounters> {
        lock(&self.interfaces).get(name).map(|s| s.counters())
    }

    pub(super) fn register(&self, name: &str) -> Arc<InterfaceStats> {
        Arc::clone(lock(&self.interfaces).entry(name.to_owned()).or_default())
    }
}

/// Counts of one thread, published to its [`InterfaceStats`] every [`READ_TIMEOUT`].
#[derive(Debug, Default)]
pub(super) struct LocalCounts {
    pub(super) packets: u64,
    pub(super) bytes: u64,
    pub(super) skipped: [u64; SkipReason::ALL.len()],
    pub(super) kernel_drops: u64,
    pub(super) queue_dropped_records: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_counters_snapshot() {
        let stats = CaptureStats::default();
        let s = stats.register("veth0");
        s.packets.fetch_add(3, Ordering::Relaxed);
        s.skipped[skip_index(SkipReason::NotIp)].fetch_add(2, Ordering::Relaxed);
        s.live_flows.fetch_add(5, Ordering::Relaxed);
        s.live_flows
            .fetch_add(2u64.wrapping_sub(5), Ordering::Relaxed);
        let c = stats.interface("veth0").unwrap();
        assert_eq!(c.packets, 3);
        assert_eq!(c.live_flows, 2);
        assert!(c.skipped.contains(&(SkipReason::NotIp, 2)));
        assert_eq!(c.skipped.len(), SkipReason::ALL.len());
        // Registering again shares the same counters.
        assert_eq!(stats.register("veth0").counters(), c);
        assert_eq!(stats.interfaces().len(), 1);
        assert!(stats.interface("veth1").is_none());
    }
}
