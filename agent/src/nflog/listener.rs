//! The listener: [`start`] opens the `NETLINK_NETFILTER` socket, binds the group, and runs
//! the thread `nflog-<group>` that reads it, counts lost events, and hands each event to
//! the [`RejectRouter`].

use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::config::FirewallSettings;
use super::counters::COUNTERS;
use super::ledger::{RejectRouter, reject_event};
use super::wire::{NetlinkMessage, NetlinkMessages, NflogPacket, config_request};

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
    use flowlog_formats::FlowRecord;
    use flowlog_formats::record::{Action, FlowDirection, LogStatus};

    use super::*;
    use crate::nflog::test_support::{
        GROUP, info, ok, packet_message, settings, statuses, syn_packet,
    };

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
}
