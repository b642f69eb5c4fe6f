//! Capture threads: each reads its socket through pnet, decodes, counts into its flow table,
//! and hands closed intervals to the output channel without ever waiting on it.

use super::*;

/// Why a capture thread ended.
#[derive(Debug)]
pub(super) enum End {
    Stopped,
    InterfaceRemoved,
    OutputClosed,
    Failed(std::io::Error),
}

/// The output channel's receiver is gone.
#[derive(Debug)]
pub(super) struct OutputClosed;

/// One capture thread: a socket, a flow table, and the way to the output.
pub(super) struct Worker {
    pub(super) name: String,
    pub(super) ifindex: i32,
    pub(super) member: usize,
    pub(super) socket: CaptureSocket,
    pub(super) table: FlowTable,
    pub(super) records: SyncSender<Emitted>,
    pub(super) shared: Arc<Shared>,
    pub(super) stats: Arc<InterfaceStats>,
    pub(super) merge: Option<Arc<Mutex<IntervalMerge>>>,
    /// The interface's host firewall drops (NFLOG), merged into released records.
    pub(super) rejects: Option<crate::nflog::RejectHandle>,
    pub(super) running: Arc<AtomicUsize>,
    /// Records the output channel had no room for yet.
    pub(super) pending: Vec<FlowRecord>,
    pub(super) pending_limit: usize,
    /// Counts not yet published to `stats`.
    pub(super) local: LocalCounts,
    /// Counts since the thread started (for its last log line).
    pub(super) totals: LocalCounts,
    pub(super) published_flows: u64,
    /// The flow table's table-full count already added to the shared counters.
    pub(super) published_table_full: u64,
    /// Frames the kernel queued on the socket since it was opened (`PACKET_STATISTICS`).
    pub(super) kernel_queued: u64,
    /// The interface is down (the socket reported ENETDOWN).
    pub(super) down: bool,
    /// Unexplained read errors in a row.
    pub(super) errors: u32,
    pub(super) last_queue_log: Option<Duration>,
}

/// The wire length of a frame read from the packet socket: its own length, unless it filled
/// the read buffer, where the kernel may have cut it and the length is unknown: then no
/// more than [`MAX_WIRE_LEN`], the largest super-packet Linux builds.
pub(super) fn wire_len_of(frame: &[u8]) -> usize {
    if frame.len() >= READ_BUFFER_BYTES {
        MAX_WIRE_LEN
    } else {
        frame.len()
    }
}

/// Counts one frame read at `now` and feeds it to the flow table.
pub(super) fn account_frame(
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
    pub(super) fn run(mut self) {
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
    pub(super) fn tick(&mut self, now: Duration, out: &mut Vec<FlowRecord>) -> Option<End> {
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

    pub(super) fn take_kernel_drops(&mut self, now: Duration) {
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
    pub(super) fn interface_removed(&self) -> bool {
        sys::bound_ifindex(self.socket.fd).is_ok_and(|index| index != self.ifindex)
    }

    /// Handles a read error; returns why the thread must end, if it must.
    pub(super) fn read_failed(&mut self, e: std::io::Error) -> Option<End> {
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
    pub(super) fn deliver(
        &mut self,
        out: &mut Vec<FlowRecord>,
        now: Duration,
    ) -> Result<(), OutputClosed> {
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
    pub(super) fn try_flush(&mut self, now: Duration) -> Result<(), OutputClosed> {
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

    pub(super) fn shed(&mut self, now: Duration) {
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
    pub(super) fn publish(&mut self) {
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
    pub(super) fn finish(mut self, end: End, mut out: Vec<FlowRecord>) {
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
    pub(super) fn drain_queued(&mut self, out: &mut Vec<FlowRecord>) {
        let deadline = Instant::now() + READ_TIMEOUT;
        while Instant::now() < deadline {
            let Ok(frame) = self.socket.rx.next() else {
                break;
            };
            account_frame(&mut self.table, &mut self.local, frame, unix_now(), out);
        }
    }

    /// Sends the held records, waiting for room up to [`SHUTDOWN_SEND_TIMEOUT`].
    pub(super) fn send_last(&mut self) {
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
