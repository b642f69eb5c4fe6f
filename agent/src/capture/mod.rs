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
//!
//! This module starts capture (interface selection, rescan, threads); the parts live in
//! `counters` (per-interface counters), `merge` (fanout threads' records per interval),
//! `socket` (the socket calls pnet does not make) and `worker` (a capture thread).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowlog_formats::FlowRecord;
use flowlog_formats::record::{Action, LogStatus, Text};
use pnet_datalink::{Channel, Config, DataLinkReceiver, NetworkInterface};

use crate::capture_config::CaptureSettings;
use crate::decode::{LinkType, MAX_WIRE_LEN, SkipReason, decode_captured_frame};
use crate::flow::{FlowTable, FlowTableSettings, InterfaceInfo};
use crate::interface::{InterfaceSettings, default_interface_id};
use crate::nflog::FirewallSettings;

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

mod counters;
mod merge;
mod socket;
mod worker;

use counters::*;
pub use counters::{CaptureStats, InterfaceCounters, InterfaceStats};
use merge::*;
use socket::*;
use worker::*;

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
        interface_id: default_interface_id(&iface.name),
        mac: None,
        primary_v4: None,
        primary_v6: None,
    }
}

fn auto_candidate(iface: &NetworkInterface) -> bool {
    iface.is_up() && !iface.is_loopback() && iface.mac.is_some_and(|m| m.octets() != [0; 6])
}

/// What live capture needs of the agent's settings (`AgentSettings::live`).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    /// Configured interfaces (empty = every up, non-loopback interface with a MAC).
    pub interfaces: Vec<InterfaceSettings>,
    /// `[firewall]`: the NFLOG group REJECT records are learnt from.
    pub firewall: FirewallSettings,
    /// Account of the interfaces.
    pub account_id: Text,
    /// Interval and flow limit of every flow table.
    pub table: FlowTableSettings,
    /// `[capture]`: how the interfaces are read.
    pub capture: CaptureSettings,
}

/// Returns the interfaces to capture on: the configured ones, or every up, non-loopback
/// interface with a MAC address.
pub fn select_interfaces(
    settings: &LiveSettings,
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
    settings: &LiveSettings,
    stop: Arc<AtomicBool>,
    records: SyncSender<Emitted>,
) -> Result<Capture, CaptureError> {
    let stats = Arc::new(CaptureStats::default());
    let threads = Arc::new(Mutex::new(Vec::new()));
    let rejects = crate::nflog::start(&settings.firewall, &stop)?;
    let shared = Arc::new(Shared {
        account_id: settings.account_id.clone(),
        table_settings: settings.table,
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
