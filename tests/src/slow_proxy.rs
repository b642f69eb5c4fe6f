//! A TCP proxy on 127.0.0.1 that adds latency: every chunk a client sends reaches the
//! upstream (e.g. the moto server of [`crate::s3`]) a configurable time after it
//! arrived, so each request takes at least that long. Responses pass through at once.
//!
//! It is a delay line, not a bandwidth limit: chunks are timestamped when they are read
//! and written out in order once their time has come, so a request split into several
//! chunks is delayed once, not once per chunk.
//!
//! ```no_run
//! # async fn demo(upstream: std::net::SocketAddr) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use flowlog_tests::slow_proxy::SlowProxy;
//! let proxy = SlowProxy::start(upstream, Duration::from_millis(300)).await?;
//! // ... point the code under test at proxy.endpoint() ...
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// A latency-adding TCP proxy; forwarding stops (and open connections are cut) when it
/// is dropped.
#[derive(Debug)]
pub struct SlowProxy {
    addr: SocketAddr,
    latency_ms: Arc<AtomicU64>,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Stats {
    connections: AtomicU64,
    chunks: AtomicU64,
}

impl SlowProxy {
    /// Starts a proxy forwarding to `upstream`, delaying client-to-upstream data by
    /// `latency`. Needs a tokio runtime.
    pub async fn start(upstream: SocketAddr, latency: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the slow proxy")?;
        let addr = listener.local_addr()?;
        let latency_ms = Arc::new(AtomicU64::new(millis(latency)));
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            Arc::clone(&latency_ms),
            Arc::clone(&stats),
        ));
        Ok(Self {
            addr,
            latency_ms,
            stats,
            task,
        })
    }

    /// Returns `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the latency of data read from now on.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms.store(millis(latency), Ordering::SeqCst);
    }

    /// Returns how many connections were accepted so far.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Returns how many client-to-upstream chunks were forwarded so far (about one per
    /// HTTP request for small requests).
    pub fn chunks(&self) -> u64 {
        self.stats.chunks.load(Ordering::SeqCst)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    latency_ms: Arc<AtomicU64>,
    stats: Arc<Stats>,
) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            conn = listener.accept() => {
                if let Ok((client, _)) = conn {
                    stats.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(forward(
                        client,
                        upstream,
                        Arc::clone(&latency_ms),
                        Arc::clone(&stats),
                    ));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(
    client: TcpStream,
    upstream: SocketAddr,
    latency_ms: Arc<AtomicU64>,
    stats: Arc<Stats>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    let (line_tx, line_rx) = mpsc::unbounded_channel();
    let mut halves = JoinSet::new();
    halves.spawn(read_into_line(client_rx, line_tx, latency_ms, stats));
    halves.spawn(write_from_line(line_rx, server_tx));
    halves.spawn(copy_through(server_rx, client_tx));
    // Each half ends at EOF or an error on its side; a closed side closes the other
    // direction in turn (the write halves shut down), so all three end.
    while halves.join_next().await.is_some() {}
}

/// Reads client data and queues it with the time it may be sent upstream.
async fn read_into_line(
    mut rx: OwnedReadHalf,
    line: mpsc::UnboundedSender<(Instant, Vec<u8>)>,
    latency_ms: Arc<AtomicU64>,
    stats: Arc<Stats>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let due = Instant::now() + Duration::from_millis(latency_ms.load(Ordering::SeqCst));
                stats.chunks.fetch_add(1, Ordering::SeqCst);
                if line.send((due, buf[..n].to_vec())).is_err() {
                    return;
                }
            }
        }
    }
}

/// Writes queued data upstream once its time has come; closes the upstream's write side
/// when the client's has closed and the line is empty.
async fn write_from_line(
    mut line: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    mut tx: OwnedWriteHalf,
) {
    while let Some((due, chunk)) = line.recv().await {
        tokio::time::sleep_until(due).await;
        if tx.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = tx.shutdown().await;
}

/// Copies upstream data to the client as it comes.
async fn copy_through(mut rx: OwnedReadHalf, mut tx: OwnedWriteHalf) {
    let _ = tokio::io::copy(&mut rx, &mut tx).await;
    let _ = tx.shutdown().await;
}
