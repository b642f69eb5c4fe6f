//! Counters of the NFLOG listener and ledgers, for metrics: [`NflogCounters`], one set per
//! process in [`COUNTERS`].

use std::sync::atomic::AtomicU64;

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
