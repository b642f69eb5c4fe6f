//! Live capture: packet sockets read through pnet, one or more threads per interface, each
//! thread owning a [`FlowTable`]; closed intervals' records go to the caller over a bounded
//! channel.
//!
//! What pnet 0.35 does not do, and how this module makes up for it:
//!
//! - **Drop counters.** The agent opens each `AF_PACKET` socket itself (bound to the
//!   interface, receive buffer sized by `capture.socket_buffer`) and hands it to pnet with
//!   `Config::socket_fd`; pnet binds it again to the same interface (a no-op), optionally
//!   adds promiscuous membership, makes it non-blocking and owns it from then on (it
//!   closes it when the receiver is dropped). The agent keeps the descriptor number to
//!   read `PACKET_STATISTICS` every [`READ_TIMEOUT`]: the kernel's drops since the last
//!   read (the counters reset on read) go to [`FlowTable::record_loss`], so the interval
//!   in which they were noticed gets a SKIPDATA record.
//! - **Truncation.** pnet reads into a 4 KiB buffer by default and silently cuts longer
//!   frames; the buffer here is [`READ_BUFFER_BYTES`], enough for GRO/TSO super-frames.
//! - **Timestamps.** pnet gives none; frames are stamped with the system clock when read.
//! - **Direction.** pnet drops the kernel's incoming/outgoing flag; the flow table tells
//!   direction by the frame's source MAC.
//!
//! Threads and intervals:
//!
//! - Every read waits at most [`READ_TIMEOUT`], so a thread notices shutdown (the `stop`
//!   flag) and closes due intervals on time even on a quiet interface.
//! - With `capture.fanout_threads` N > 1 an interface gets N sockets in one
//!   `PACKET_FANOUT_HASH` group whose id the kernel picks (packets of a flow normally
//!   reach the same socket), one thread and one flow table each. Their records go through
//!   a per-interface merge that releases an interval once every thread has closed it: one
//!   record per flow (summed should a flow have reached two threads, e.g. its fragments
//!   and its whole packets, or a socket's packets after the kernel changed its transmit
//!   hash), one SKIPDATA if any thread lost packets, and one NODATA only if no thread saw
//!   a packet. The kernel's `FLAG_DEFRAG` is not used: with it the group would receive
//!   reassembled datagrams, and fragments would no longer be counted as packets the way a
//!   single socket counts them.
//! - When no `[[interface]]` is configured, every up, non-loopback interface with a MAC is
//!   captured, and a rescan every `capture.rescan_interval` starts threads for interfaces
//!   that appeared since. A thread whose interface disappears emits its records, logs a
//!   line to stderr and ends; the agent goes on.
//! - The output channel is never waited on while capturing: when it is full, records wait
//!   in the thread (at most about one interval's worth); beyond that the oldest are
//!   dropped, counted, and accounted as lost packets (SKIPDATA in the open interval).
//! - At shutdown a thread reads what is still queued on its socket (for at most
//!   [`READ_TIMEOUT`]); frames the kernel queued but nobody read are counted as lost too.
//!   Then it emits the partial interval and waits up to [`SHUTDOWN_SEND_TIMEOUT`] for room
//!   in the channel.
//!
//! Counters for metrics are in [`CaptureStats`] ([`Capture::stats`]); threads publish them
//! every [`READ_TIMEOUT`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowlog_formats::FlowRecord;
use flowlog_formats::record::{Action, FlowDirection, LogStatus, Text};
use pnet_datalink::{Channel, Config, DataLinkReceiver, NetworkInterface};

use crate::capture_config::CaptureSettings;
use crate::config::{AgentSettings, InterfaceSettings};
use crate::decode::{LinkType, MAX_WIRE_LEN, SkipReason, decode_captured_frame};
use crate::flow::{FlowTable, FlowTableSettings, InterfaceInfo};

/// How long a read waits before the thread checks for shutdown, reads the kernel's drop
/// counter, closes due intervals and publishes its counters (it does the same at this
/// pace while packets keep coming).
pub const READ_TIMEOUT: Duration = Duration::from_millis(250);

/// Bytes of the read buffer: the largest GRO/TSO frame plus headroom.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Longest a stopping thread waits for room in the output channel for its last records.
pub const SHUTDOWN_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Records a thread keeps while the output channel is full, beyond `flow_log.max_flows`.
pub const PENDING_RECORDS_SLACK: usize = 1024;

/// Unexplained read errors in a row after which a capture thread gives up.
const MAX_CONSECUTIVE_ERRORS: u32 = 100;

/// Shortest time between two "output queue full" log lines of a thread.
const QUEUE_FULL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Failure to start capturing.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A configured interface does not exist.
    #[error("interface {0} does not exist on this host")]
    NoSuchInterface(String),
    /// No interface to capture on.
    #[error(
        "no interface to capture on: none is configured and no up, non-loopback interface exists"
    )]
    NoInterfaces,
    /// The interface has no MAC address, so direction cannot be told.
    #[error("interface {0} has no MAC address; set `mac` in its [[interface]] section")]
    NoMac(String),
    /// Opening or setting up the packet socket failed (usually: not root / no CAP_NET_RAW).
    #[error("cannot capture on {interface} (needs CAP_NET_RAW)")]
    Open {
        /// The interface.
        interface: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Joining the interface's sockets into one `PACKET_FANOUT` group failed.
    #[error("cannot spread capture on {interface} over {threads} threads (PACKET_FANOUT)")]
    Fanout {
        /// The interface.
        interface: String,
        /// `capture.fanout_threads`.
        threads: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// pnet returned a channel type other than Ethernet.
    #[error("interface {0} does not give Ethernet frames")]
    NotEthernet(String),
    /// The host firewall's NFLOG group (`[firewall] nflog_group`) could not be listened to.
    #[error(transparent)]
    Nflog(#[from] crate::nflog::NflogError),
    /// A capture thread could not be started.
    #[error("cannot start a capture thread for {interface}")]
    Spawn {
        /// The interface.
        interface: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Records emitted by a capture thread, tagged with its interface name.
pub type Emitted = (String, Vec<FlowRecord>);

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A thread that panicked while holding the lock leaves consistent data behind (every
    // update is a single step), so the lock stays usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn skip_index(reason: SkipReason) -> usize {
    SkipReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Counters

/// Live counters of one interface, shared by its capture threads.
#[derive(Debug, Default)]
pub struct InterfaceStats {
    packets: AtomicU64,
    bytes: AtomicU64,
    skipped: [AtomicU64; SkipReason::ALL.len()],
    kernel_drops: AtomicU64,
    queue_dropped_records: AtomicU64,
    table_full: AtomicU64,
    live_flows: AtomicU64,
    threads: AtomicU64,
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
    interfaces: Mutex<BTreeMap<String, Arc<InterfaceStats>>>,
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

    fn register(&self, name: &str) -> Arc<InterfaceStats> {
        Arc::clone(lock(&self.interfaces).entry(name.to_owned()).or_default())
    }
}

/// Counts of one thread, published to its [`InterfaceStats`] every [`READ_TIMEOUT`].
#[derive(Debug, Default)]
struct LocalCounts {
    packets: u64,
    bytes: u64,
    skipped: [u64; SkipReason::ALL.len()],
    kernel_drops: u64,
    queue_dropped_records: u64,
}

// ---------------------------------------------------------------------------------------
// Merge of the records of an interface's fanout threads

/// (direction, protocol, packet source, packet destination, source port, destination port).
type MergeKey = (
    Option<FlowDirection>,
    Option<u8>,
    Option<IpAddr>,
    Option<IpAddr>,
    Option<u16>,
    Option<u16>,
);

fn merge_key(r: &FlowRecord) -> MergeKey {
    (
        r.flow_direction,
        r.protocol,
        r.pkt_srcaddr,
        r.pkt_dstaddr,
        r.srcport,
        r.dstport,
    )
}

/// What the members reported for one interval.
#[derive(Debug, Default)]
struct MergeSlot {
    nodata: Option<FlowRecord>,
    skipdata: Option<FlowRecord>,
    flows: HashMap<MergeKey, FlowRecord>,
}

impl MergeSlot {
    fn add(&mut self, r: FlowRecord) {
        let status_row = |kept: &mut Option<FlowRecord>, r: FlowRecord| match kept {
            Some(k) => k.end = k.end.max(r.end),
            None => *kept = Some(r),
        };
        match r.log_status {
            Some(LogStatus::NoData) => status_row(&mut self.nodata, r),
            Some(LogStatus::SkipData) => status_row(&mut self.skipdata, r),
            Some(LogStatus::Ok) | None => match self.flows.entry(merge_key(&r)) {
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
    fn emit(self, out: &mut Vec<FlowRecord>) {
        if self.skipdata.is_none() && self.flows.is_empty() {
            out.extend(self.nodata);
            return;
        }
        out.extend(self.skipdata);
        let mut flows: Vec<FlowRecord> = self.flows.into_values().collect();
        flows.sort_unstable_by_key(|r| (r.start, merge_key(r)));
        out.append(&mut flows);
    }
}

/// Merges the records of the N flow tables of one interface, interval by interval.
///
/// Every member hands over whole intervals, in time order. An interval is released once
/// every member has handed over that interval or a later one (or has finished), so a
/// member that is still inside it holds it back for at most one read timeout.
#[derive(Debug)]
struct IntervalMerge {
    interval_secs: u64,
    /// Per member: start of the latest interval it handed over; `u64::MAX` once finished.
    horizon: Vec<Option<u64>>,
    slots: BTreeMap<u64, MergeSlot>,
}

impl IntervalMerge {
    fn new(members: usize, interval_secs: u64) -> Self {
        IntervalMerge {
            interval_secs: interval_secs.max(1),
            horizon: vec![None; members],
            slots: BTreeMap::new(),
        }
    }

    /// Takes `records` from `member` (`finished`: it will hand over nothing more) and
    /// returns the records of every interval that is now complete.
    fn deposit(
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

// ---------------------------------------------------------------------------------------
// Packet sockets

/// The few socket calls pnet does not make. Each function documents what it passes to
/// the kernel; the descriptors come from [`open_packet_socket`] and are owned by pnet's
/// receiver while in use.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::mem;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
        if ret == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }

    fn socklen<T>() -> libc::socklen_t {
        libc::socklen_t::try_from(mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
    }

    fn set_int(
        fd: RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: passes a pointer to a live `c_int` and its exact size; the kernel only
        // reads it.
        check(unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const value).cast::<libc::c_void>(),
                socklen::<libc::c_int>(),
            )
        })
        .map(drop)
    }

    fn get_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
        let mut value: libc::c_int = 0;
        let mut len = socklen::<libc::c_int>();
        // SAFETY: passes a pointer to a live `c_int` with its size in `len`; the kernel
        // writes at most `len` bytes and updates `len`.
        check(unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                (&raw mut value).cast::<libc::c_void>(),
                &raw mut len,
            )
        })?;
        Ok(value)
    }

    /// Opens an `AF_PACKET` raw socket that receives every protocol on interface
    /// `ifindex` only, with a receive buffer of about `buffer_bytes` (forced past
    /// `net.core.rmem_max` when the process has CAP_NET_ADMIN). Returns the socket and the
    /// kernel's actual buffer size.
    pub fn open_packet_socket(ifindex: u32, buffer_bytes: usize) -> io::Result<(OwnedFd, usize)> {
        // Protocol 0: the socket receives nothing until it is bound to the interface
        // below (created with ETH_P_ALL it would see every interface's traffic until then).
        // SAFETY: socket(2) with constant arguments; no memory is passed.
        let fd = check(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = socket.as_raw_fd();
        let size = libc::c_int::try_from(buffer_bytes).unwrap_or(libc::c_int::MAX);
        if set_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, size).is_err() {
            set_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF, size)?;
        }
        let index = libc::c_int::try_from(ifindex)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let address = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as libc::c_ushort,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
            sll_ifindex: index,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: passes a pointer to a live `sockaddr_ll` and its exact size; the kernel
        // only reads it.
        check(unsafe {
            libc::bind(
                raw,
                (&raw const address).cast::<libc::sockaddr>(),
                socklen::<libc::sockaddr_ll>(),
            )
        })?;
        let actual = get_int(raw, libc::SOL_SOCKET, libc::SO_RCVBUF)?;
        Ok((socket, usize::try_from(actual).unwrap_or(0)))
    }

    /// Puts socket `fd` into a `PACKET_FANOUT_HASH` group: a new group with an id chosen
    /// by the kernel when `group` is `None`, else the given one. Returns the group id.
    pub fn join_fanout(fd: RawFd, group: Option<u16>) -> io::Result<u16> {
        let hash = libc::PACKET_FANOUT_HASH;
        let arg = match group {
            None => (hash | libc::PACKET_FANOUT_FLAG_UNIQUEID) << 16,
            Some(id) => (hash << 16) | u32::from(id),
        };
        set_int(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_FANOUT,
            libc::c_int::from_ne_bytes(arg.to_ne_bytes()),
        )?;
        // The kernel answers `id | type << 16 | flags << 24`.
        let value = get_int(fd, libc::SOL_PACKET, libc::PACKET_FANOUT)?;
        u16::try_from(value & 0xffff).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
    }

    /// Returns the packets the kernel queued on socket `fd` and those it dropped (buffer
    /// full) since the previous call (`PACKET_STATISTICS` resets on read).
    pub fn take_stats(fd: RawFd) -> io::Result<(u64, u64)> {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = socklen::<libc::tpacket_stats>();
        // SAFETY: passes a pointer to a live `tpacket_stats` with its size in `len`; the
        // kernel writes at most `len` bytes.
        check(unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast::<libc::c_void>(),
                &raw mut len,
            )
        })?;
        // The kernel reports `tp_packets` with the drops included.
        let drops = u64::from(stats.tp_drops);
        Ok((u64::from(stats.tp_packets).saturating_sub(drops), drops))
    }

    /// Returns and clears the pending error of socket `fd` (0: none).
    pub fn take_error(fd: RawFd) -> io::Result<i32> {
        get_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
    }

    /// Returns the interface index socket `fd` is bound to; the kernel sets it to -1 when
    /// the interface is unregistered.
    pub fn bound_ifindex(fd: RawFd) -> io::Result<i32> {
        let mut address = libc::sockaddr_ll {
            sll_family: 0,
            sll_protocol: 0,
            sll_ifindex: 0,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        let mut len = socklen::<libc::sockaddr_ll>();
        // SAFETY: passes a pointer to a live `sockaddr_ll` with its size in `len`; the
        // kernel writes at most `len` bytes.
        check(unsafe {
            libc::getsockname(
                fd,
                (&raw mut address).cast::<libc::sockaddr>(),
                &raw mut len,
            )
        })?;
        Ok(address.sll_ifindex)
    }
}

/// A packet socket read through pnet.
struct CaptureSocket {
    rx: Box<dyn DataLinkReceiver>,
    /// The socket `rx` reads: owned (and closed) by `rx`, so only used while `rx` lives.
    fd: RawFd,
    /// The kernel's receive buffer size.
    buffer_bytes: usize,
}

fn open_capture_socket(
    iface: &NetworkInterface,
    capture: &CaptureSettings,
) -> Result<CaptureSocket, CaptureError> {
    let open_error = |source| CaptureError::Open {
        interface: iface.name.clone(),
        source,
    };
    let (socket, buffer_bytes) =
        sys::open_packet_socket(iface.index, capture.socket_buffer_bytes).map_err(open_error)?;
    // From here pnet owns the descriptor: it closes it on its own errors and when the
    // receiver is dropped.
    let fd = socket.into_raw_fd();
    let config = Config {
        read_timeout: Some(READ_TIMEOUT),
        read_buffer_size: READ_BUFFER_BYTES,
        promiscuous: capture.promiscuous,
        socket_fd: Some(fd),
        ..Config::default()
    };
    match pnet_datalink::channel(iface, config) {
        Ok(Channel::Ethernet(_tx, rx)) => Ok(CaptureSocket {
            rx,
            fd,
            buffer_bytes,
        }),
        Ok(_) => Err(CaptureError::NotEthernet(iface.name.clone())),
        Err(source) => Err(open_error(source)),
    }
}

// ---------------------------------------------------------------------------------------
// Starting

/// What every capture thread shares. It holds the output sender: the channel closes once
/// every thread (and the rescan) has ended.
#[derive(Debug)]
struct Shared {
    account_id: Text,
    table_settings: FlowTableSettings,
    capture: CaptureSettings,
    stop: Arc<AtomicBool>,
    records: SyncSender<Emitted>,
    stats: Arc<CaptureStats>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Captured interfaces by index, with their running thread count.
    running: Mutex<HashMap<u32, Arc<AtomicUsize>>>,
    /// Host firewall drops (NFLOG), merged into each interface's records.
    rejects: Option<Arc<crate::nflog::RejectRouter>>,
}

/// Running capture: its counters, and its threads to wait for.
#[derive(Debug)]
pub struct Capture {
    stats: Arc<CaptureStats>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    rescan: Option<JoinHandle<()>>,
}

impl Capture {
    /// Returns the capture counters (shared, live).
    pub fn stats(&self) -> Arc<CaptureStats> {
        Arc::clone(&self.stats)
    }

    /// Waits until every capture thread has ended: after `stop` was set, or after every
    /// interface disappeared (when no rescan runs), or the output channel was closed.
    pub fn join(self) {
        if let Some(rescan) = self.rescan {
            let _ = rescan.join();
        }
        loop {
            let Some(handle) = lock(&self.threads).pop() else {
                break;
            };
            let _ = handle.join();
        }
    }
}

fn default_interface_settings(iface: &NetworkInterface) -> InterfaceSettings {
    InterfaceSettings {
        name: iface.name.clone(),
        interface_id: crate::config::default_interface_id(&iface.name),
        mac: None,
        primary_v4: None,
        primary_v6: None,
    }
}

fn auto_candidate(iface: &NetworkInterface) -> bool {
    iface.is_up() && !iface.is_loopback() && iface.mac.is_some_and(|m| m.octets() != [0; 6])
}

/// Returns the interfaces to capture on: the configured ones, or every up, non-loopback
/// interface with a MAC address.
pub fn select_interfaces(
    settings: &AgentSettings,
) -> Result<Vec<(NetworkInterface, InterfaceSettings)>, CaptureError> {
    let all = pnet_datalink::interfaces();
    if settings.interfaces.is_empty() {
        let chosen: Vec<_> = all
            .into_iter()
            .filter(auto_candidate)
            .map(|i| {
                let s = default_interface_settings(&i);
                (i, s)
            })
            .collect();
        return if chosen.is_empty() {
            Err(CaptureError::NoInterfaces)
        } else {
            Ok(chosen)
        };
    }
    settings
        .interfaces
        .iter()
        .map(|s| {
            all.iter()
                .find(|i| i.name == s.name)
                .cloned()
                .map(|i| (i, s.clone()))
                .ok_or_else(|| CaptureError::NoSuchInterface(s.name.clone()))
        })
        .collect()
}

/// Completes an interface's identity from the system: MAC and primary addresses unless
/// configured.
fn interface_info(
    account_id: &Text,
    iface: &NetworkInterface,
    s: &InterfaceSettings,
) -> Result<InterfaceInfo, CaptureError> {
    let mac = s
        .mac
        .or_else(|| iface.mac.map(|m| m.octets()))
        .ok_or_else(|| CaptureError::NoMac(iface.name.clone()))?;
    let primary_v4 = s.primary_v4.or_else(|| {
        iface.ips.iter().find_map(|n| match n.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    });
    let primary_v6 = s.primary_v6.or_else(|| {
        iface.ips.iter().find_map(|n| match n.ip() {
            IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80 => Some(v6),
            _ => None,
        })
    });
    Ok(InterfaceInfo {
        interface_id: s.interface_id.as_str().into(),
        account_id: account_id.clone(),
        mac,
        primary_v4,
        primary_v6,
    })
}

/// An interface whose sockets are open, ready for its threads.
struct Prepared {
    iface: NetworkInterface,
    info: InterfaceInfo,
    sockets: Vec<CaptureSocket>,
    group: Option<u16>,
}

/// Opens the sockets of one interface (a fanout group of `capture.fanout_threads`).
fn prepare_interface(
    shared: &Shared,
    iface: &NetworkInterface,
    s: &InterfaceSettings,
) -> Result<Prepared, CaptureError> {
    let info = interface_info(&shared.account_id, iface, s)?;
    let threads = shared.capture.fanout_threads;
    let mut sockets = vec![open_capture_socket(iface, &shared.capture)?];
    let mut group = None;
    if threads > 1 {
        let fanout_error = |source| CaptureError::Fanout {
            interface: iface.name.clone(),
            threads,
            source,
        };
        let id = sys::join_fanout(sockets[0].fd, None).map_err(fanout_error)?;
        for _ in 1..threads {
            let socket = open_capture_socket(iface, &shared.capture)?;
            sys::join_fanout(socket.fd, Some(id)).map_err(fanout_error)?;
            sockets.push(socket);
        }
        group = Some(id);
    }
    Ok(Prepared {
        iface: iface.clone(),
        info,
        sockets,
        group,
    })
}

/// Starts the threads of a prepared interface, and registers it for host firewall drops
/// when NFLOG is configured.
fn launch_interface(shared: &Arc<Shared>, prepared: Prepared) {
    let Prepared {
        iface,
        info,
        sockets,
        group,
    } = prepared;
    let members = sockets.len();
    let buffer_bytes = sockets.first().map_or(0, |s| s.buffer_bytes);
    let stats = shared.stats.register(&iface.name);
    let running = Arc::new(AtomicUsize::new(members));
    let merge = (members > 1).then(|| {
        Arc::new(Mutex::new(IntervalMerge::new(
            members,
            shared.table_settings.interval_secs,
        )))
    });
    // Every table of the interface starts in the same interval, so that the merge sees
    // each member close the same intervals.
    let now = unix_now();
    let ifindex = i32::try_from(iface.index).unwrap_or(-1);
    let rejects = shared
        .rejects
        .as_ref()
        .map(|r| r.register(iface.index, info.clone(), shared.table_settings));
    let mut handles = Vec::with_capacity(members);
    for (member, socket) in sockets.into_iter().enumerate() {
        let worker = Worker {
            name: iface.name.clone(),
            ifindex,
            member,
            socket,
            table: FlowTable::new_at(info.clone(), shared.table_settings, now),
            records: shared.records.clone(),
            shared: Arc::clone(shared),
            stats: Arc::clone(&stats),
            merge: merge.clone(),
            rejects: rejects.clone(),
            running: Arc::clone(&running),
            pending: Vec::new(),
            pending_limit: shared
                .table_settings
                .max_flows
                .saturating_add(PENDING_RECORDS_SLACK),
            local: LocalCounts::default(),
            totals: LocalCounts::default(),
            published_flows: 0,
            published_table_full: 0,
            kernel_queued: 0,
            down: false,
            errors: 0,
            last_queue_log: None,
        };
        stats.threads.fetch_add(1, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name(format!("capture-{}-{member}", iface.name))
            .spawn(move || worker.run());
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                // The worker (and its socket) is gone; make sure it holds nothing back.
                stats.threads.fetch_sub(1, Ordering::Relaxed);
                running.fetch_sub(1, Ordering::Relaxed);
                if let Some(m) = &merge {
                    let _ = lock(m).deposit(member, Vec::new(), true);
                }
                let err = CaptureError::Spawn {
                    interface: iface.name.clone(),
                    source: e,
                };
                eprintln!("error: {err}");
            }
        }
    }
    lock(&shared.threads).extend(handles);
    lock(&shared.running).insert(iface.index, running);
    let fanout = group.map_or(String::new(), |g| format!(", fanout group {g}"));
    eprintln!(
        "capture: started on {} (ifindex {}, {members} thread(s){fanout}, promiscuous {}, socket buffer {buffer_bytes} bytes)",
        iface.name, iface.index, shared.capture.promiscuous
    );
}

/// Starts capturing: `capture.fanout_threads` threads per interface (the configured ones,
/// or every up, non-loopback interface with a MAC, plus those that appear later). Threads
/// send closed intervals' records on `records` and stop when `stop` is set, after emitting
/// the records of the current (partial) interval; the channel closes when all have ended.
///
/// Every interface's sockets are opened before any thread starts, so an error leaves
/// nothing running.
pub fn start(
    settings: &AgentSettings,
    stop: Arc<AtomicBool>,
    records: SyncSender<Emitted>,
) -> Result<Capture, CaptureError> {
    let stats = Arc::new(CaptureStats::default());
    let threads = Arc::new(Mutex::new(Vec::new()));
    let rejects = crate::nflog::start(&settings.firewall, &stop)?;
    let shared = Arc::new(Shared {
        account_id: settings.account_id.clone(),
        table_settings: FlowTableSettings {
            interval_secs: settings.interval_secs,
            max_flows: settings.max_flows,
        },
        capture: settings.capture,
        stop,
        records,
        stats: Arc::clone(&stats),
        threads: Arc::clone(&threads),
        running: Mutex::new(HashMap::new()),
        rejects,
    });
    let rescans = settings.interfaces.is_empty() && !settings.capture.rescan_interval.is_zero();
    let selected = match select_interfaces(settings) {
        // Nothing to capture yet, but interfaces that come up are picked up: wait for them.
        Err(CaptureError::NoInterfaces) if rescans => {
            eprintln!(
                "capture: no up, non-loopback interface yet; looking again every {}",
                humantime::format_duration(settings.capture.rescan_interval)
            );
            Vec::new()
        }
        other => other?,
    };
    let prepared = selected
        .iter()
        .map(|(iface, s)| prepare_interface(&shared, iface, s))
        .collect::<Result<Vec<_>, _>>()?;
    for p in prepared {
        launch_interface(&shared, p);
    }
    let rescan = if rescans {
        let shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("capture-rescan".into())
            .spawn(move || rescan_loop(&shared));
        match spawned {
            Ok(handle) => Some(handle),
            Err(e) => {
                eprintln!(
                    "error: cannot start the interface rescan; new interfaces will not be captured: {e}"
                );
                None
            }
        }
    } else {
        None
    };
    Ok(Capture {
        stats,
        threads,
        rescan,
    })
}

/// Every `capture.rescan_interval`, starts capturing on up, non-loopback interfaces with a
/// MAC that are not captured yet.
fn rescan_loop(shared: &Arc<Shared>) {
    let every = shared.capture.rescan_interval;
    let mut next = Instant::now() + every;
    // Interfaces that failed to start are reported once (retried at every rescan).
    let mut failed: HashSet<u32> = HashSet::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(READ_TIMEOUT));
            continue;
        }
        next = now + every;
        lock(&shared.running).retain(|_, threads| threads.load(Ordering::Relaxed) > 0);
        for iface in pnet_datalink::interfaces() {
            if !auto_candidate(&iface) || lock(&shared.running).contains_key(&iface.index) {
                continue;
            }
            let s = default_interface_settings(&iface);
            match prepare_interface(shared, &iface, &s) {
                Ok(p) => {
                    failed.remove(&iface.index);
                    launch_interface(shared, p);
                }
                Err(e) => {
                    if failed.insert(iface.index) {
                        eprintln!("error: new interface {}: {e}", iface.name);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Capture threads

/// Why a capture thread ended.
#[derive(Debug)]
enum End {
    Stopped,
    InterfaceRemoved,
    OutputClosed,
    Failed(std::io::Error),
}

/// The output channel's receiver is gone.
#[derive(Debug)]
struct OutputClosed;

/// One capture thread: a socket, a flow table, and the way to the output.
struct Worker {
    name: String,
    ifindex: i32,
    member: usize,
    socket: CaptureSocket,
    table: FlowTable,
    records: SyncSender<Emitted>,
    shared: Arc<Shared>,
    stats: Arc<InterfaceStats>,
    merge: Option<Arc<Mutex<IntervalMerge>>>,
    /// The interface's host firewall drops (NFLOG), merged into released records.
    rejects: Option<crate::nflog::RejectHandle>,
    running: Arc<AtomicUsize>,
    /// Records the output channel had no room for yet.
    pending: Vec<FlowRecord>,
    pending_limit: usize,
    /// Counts not yet published to `stats`.
    local: LocalCounts,
    /// Counts since the thread started (for its last log line).
    totals: LocalCounts,
    published_flows: u64,
    /// The flow table's table-full count already added to the shared counters.
    published_table_full: u64,
    /// Frames the kernel queued on the socket since it was opened (`PACKET_STATISTICS`).
    kernel_queued: u64,
    /// The interface is down (the socket reported ENETDOWN).
    down: bool,
    /// Unexplained read errors in a row.
    errors: u32,
    last_queue_log: Option<Duration>,
}

/// The wire length of a frame read from the packet socket: its own length, unless it filled
/// the read buffer, where the kernel may have cut it and the length is unknown: then no
/// more than [`MAX_WIRE_LEN`], the largest super-packet Linux builds.
fn wire_len_of(frame: &[u8]) -> usize {
    if frame.len() >= READ_BUFFER_BYTES {
        MAX_WIRE_LEN
    } else {
        frame.len()
    }
}

/// Counts one frame read at `now` and feeds it to the flow table.
fn account_frame(
    table: &mut FlowTable,
    local: &mut LocalCounts,
    frame: &[u8],
    now: Duration,
    out: &mut Vec<FlowRecord>,
) {
    local.packets += 1;
    local.bytes += frame.len() as u64;
    match decode_captured_frame(LinkType::Ethernet, frame, wire_len_of(frame)) {
        Ok(meta) => table.observe(&meta, now, out),
        Err(reason) => local.skipped[skip_index(reason)] += 1,
    }
}

impl Worker {
    fn run(mut self) {
        let mut out: Vec<FlowRecord> = Vec::new();
        let mut next_tick = unix_now() + READ_TIMEOUT;
        let end = loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break End::Stopped;
            }
            let now = match self.socket.rx.next() {
                Ok(frame) => {
                    let now = unix_now();
                    account_frame(&mut self.table, &mut self.local, frame, now, &mut out);
                    if self.down {
                        self.down = false;
                        eprintln!("capture: {} is up again", self.name);
                    }
                    self.errors = 0;
                    now
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                            | std::io::ErrorKind::WouldBlock
                    ) =>
                {
                    self.errors = 0;
                    unix_now()
                }
                Err(e) => {
                    if let Some(end) = self.read_failed(e) {
                        break end;
                    }
                    unix_now()
                }
            };
            // Housekeeping every READ_TIMEOUT (or at once if the clock went back).
            if now >= next_tick || now + 2 * READ_TIMEOUT < next_tick {
                next_tick = now + READ_TIMEOUT;
                if let Some(end) = self.tick(now, &mut out) {
                    break end;
                }
            }
            if !out.is_empty() && self.deliver(&mut out, now).is_err() {
                break End::OutputClosed;
            }
        };
        self.finish(end, out);
    }

    /// Reads the kernel's drops, closes due intervals, notices a removed interface,
    /// publishes counters and retries records held back.
    fn tick(&mut self, now: Duration, out: &mut Vec<FlowRecord>) -> Option<End> {
        self.take_kernel_drops(now);
        self.table.close_due(now, out);
        self.publish();
        if self.interface_removed() {
            return Some(End::InterfaceRemoved);
        }
        if self.try_flush(now).is_err() {
            return Some(End::OutputClosed);
        }
        None
    }

    fn take_kernel_drops(&mut self, now: Duration) {
        let Ok((queued, drops)) = sys::take_stats(self.socket.fd) else {
            return;
        };
        self.kernel_queued += queued;
        if drops > 0 {
            self.table.record_loss(now, drops);
            self.local.kernel_drops += drops;
        }
    }

    /// The socket's interface was unregistered (the kernel unbinds the socket).
    fn interface_removed(&self) -> bool {
        sys::bound_ifindex(self.socket.fd).is_ok_and(|index| index != self.ifindex)
    }

    /// Handles a read error; returns why the thread must end, if it must.
    fn read_failed(&mut self, e: std::io::Error) -> Option<End> {
        // pnet reports a pending socket error (poll says POLLERR) without reading it, so
        // read (and clear) it here.
        let errno = e
            .raw_os_error()
            .or_else(|| sys::take_error(self.socket.fd).ok().filter(|&c| c != 0));
        if self.interface_removed() {
            return Some(End::InterfaceRemoved);
        }
        if errno == Some(libc::ENETDOWN) {
            if !self.down {
                self.down = true;
                eprintln!(
                    "capture: {} is down; capture resumes when it is up again",
                    self.name
                );
            }
            self.errors = 0;
            return None;
        }
        self.errors += 1;
        if self.errors >= MAX_CONSECUTIVE_ERRORS {
            return Some(End::Failed(e));
        }
        std::thread::sleep(Duration::from_millis(10));
        None
    }

    /// Hands `out` to the merge (fanout) or straight to the output.
    fn deliver(&mut self, out: &mut Vec<FlowRecord>, now: Duration) -> Result<(), OutputClosed> {
        let released = match &self.merge {
            None => std::mem::take(out),
            Some(m) => lock(m).deposit(self.member, out.drain(..), false),
        };
        let released = match &self.rejects {
            Some(r) => r.apply(released, now),
            None => released,
        };
        if self.pending.is_empty() {
            self.pending = released;
        } else {
            self.pending.extend(released);
        }
        self.try_flush(now)
    }

    /// Sends the held records if the channel has room; if not, keeps them, dropping the
    /// oldest beyond the limit (accounted as lost packets, so as SKIPDATA).
    fn try_flush(&mut self, now: Duration) -> Result<(), OutputClosed> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        match self.records.try_send((self.name.clone(), batch)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full((_, batch))) => {
                self.pending = batch;
                self.shed(now);
                Ok(())
            }
            Err(TrySendError::Disconnected(_)) => Err(OutputClosed),
        }
    }

    fn shed(&mut self, now: Duration) {
        let Some(excess) = self.pending.len().checked_sub(self.pending_limit) else {
            return;
        };
        if excess == 0 {
            return;
        }
        let lost: u64 = self
            .pending
            .drain(..excess)
            .map(|r| r.packets.unwrap_or(0))
            .sum();
        // A lost NODATA or SKIPDATA row carries no packet count; it is still a loss.
        self.table.record_loss(now, lost.max(1));
        self.local.queue_dropped_records += excess as u64;
        let due = self
            .last_queue_log
            .is_none_or(|t| now >= t + QUEUE_FULL_LOG_EVERY);
        if due {
            self.last_queue_log = Some(now);
            eprintln!(
                "error: {}: output queue full, {excess} records dropped (reported as SKIPDATA)",
                self.name
            );
        }
    }

    /// Publishes the local counts to the interface's shared counters.
    fn publish(&mut self) {
        let add = |a: &AtomicU64, n: u64| {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        let l = std::mem::take(&mut self.local);
        add(&self.stats.packets, l.packets);
        add(&self.stats.bytes, l.bytes);
        for (a, n) in self.stats.skipped.iter().zip(l.skipped) {
            add(a, n);
        }
        add(&self.stats.kernel_drops, l.kernel_drops);
        add(&self.stats.queue_dropped_records, l.queue_dropped_records);
        self.totals.packets += l.packets;
        self.totals.kernel_drops += l.kernel_drops;
        self.totals.queue_dropped_records += l.queue_dropped_records;
        let table_full = self.table.table_full_packets();
        add(
            &self.stats.table_full,
            table_full.saturating_sub(self.published_table_full),
        );
        self.published_table_full = table_full;
        let flows = self.table.live_flows() as u64;
        if flows != self.published_flows {
            // Wrapping add of the signed difference.
            self.stats
                .live_flows
                .fetch_add(flows.wrapping_sub(self.published_flows), Ordering::Relaxed);
            self.published_flows = flows;
        }
    }

    /// Emits the last (partial) interval and ends the thread.
    fn finish(mut self, end: End, mut out: Vec<FlowRecord>) {
        if matches!(end, End::Stopped | End::InterfaceRemoved) {
            self.drain_queued(&mut out);
        }
        let now = unix_now();
        self.take_kernel_drops(now);
        // Frames the kernel queued that were not read (the drain ran out of time) are lost
        // with the socket: loss, like drops.
        let read = self.totals.packets + self.local.packets;
        let unread = self.kernel_queued.saturating_sub(read);
        if unread > 0 {
            self.table.record_loss(now, unread);
        }
        self.table.flush_all(now, &mut out);
        let released = match &self.merge {
            None => out,
            Some(m) => lock(m).deposit(self.member, out, true),
        };
        let released = match &self.rejects {
            Some(r) => r.apply(released, now),
            None => released,
        };
        self.pending.extend(released);
        self.publish();
        if !matches!(end, End::OutputClosed) {
            self.send_last();
        }
        match &end {
            End::Stopped | End::OutputClosed => {}
            End::InterfaceRemoved => {
                eprintln!("capture: {} disappeared; its capture ended", self.name);
            }
            End::Failed(e) => eprintln!("error: capture on {} stopped: {e}", self.name),
        }
        eprintln!(
            "capture: {} thread {} ended: {} packets read, {} dropped by the kernel, {} records dropped (output queue full), {unread} left unread at the end",
            self.name,
            self.member,
            self.totals.packets,
            self.totals.kernel_drops,
            self.totals.queue_dropped_records
        );
        self.running.fetch_sub(1, Ordering::Relaxed);
        self.stats.threads.fetch_sub(1, Ordering::Relaxed);
    }

    /// At shutdown: counts the frames that arrived before it and still wait in the socket,
    /// for at most [`READ_TIMEOUT`] (a read that times out ends it earlier).
    fn drain_queued(&mut self, out: &mut Vec<FlowRecord>) {
        let deadline = Instant::now() + READ_TIMEOUT;
        while Instant::now() < deadline {
            let Ok(frame) = self.socket.rx.next() else {
                break;
            };
            account_frame(&mut self.table, &mut self.local, frame, unix_now(), out);
        }
    }

    /// Sends the held records, waiting for room up to [`SHUTDOWN_SEND_TIMEOUT`].
    fn send_last(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_SEND_TIMEOUT;
        while !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            match self.records.try_send((self.name.clone(), batch)) {
                Ok(()) => return,
                Err(TrySendError::Full((_, batch))) => {
                    self.pending = batch;
                    if Instant::now() >= deadline {
                        let n = self.pending.len() as u64;
                        self.totals.queue_dropped_records += n;
                        self.stats
                            .queue_dropped_records
                            .fetch_add(n, Ordering::Relaxed);
                        eprintln!(
                            "error: {}: output queue full at shutdown, the last {n} records are lost",
                            self.name
                        );
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
