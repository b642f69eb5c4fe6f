//! Limits that protect the server from many or misbehaving peers before any call is read:
//! the connection cap (`listen.max_connections`) and rate-limited logging of refusals.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

use flowlog_publish::telemetry::{Metrics, REFUSED_CONNECTIONS};

/// At most one log line per reason in this interval; the others are counted and the count
/// is added to the next line.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Rate-limits log lines per reason, so that a flood of refused calls cannot flood the log
/// (the metrics count every refusal).
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl LogLimiter {
    /// Returns `Some(suppressed)` when a line for `reason` may be logged now (`suppressed`:
    /// lines of that reason left out since the last one), `None` when it must be left out.
    pub fn allow(&self, reason: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        match last.get_mut(reason) {
            Some((at, suppressed)) if now.duration_since(*at) < LOG_INTERVAL => {
                *suppressed += 1;
                None
            }
            Some((at, suppressed)) => {
                *at = now;
                Some(std::mem::take(suppressed))
            }
            None => {
                last.insert(reason, (now, 0));
                Some(0)
            }
        }
    }
}

/// Descriptors `serve` needs beside its connections (WAL, staging, sink, metrics, runtime).
pub const OTHER_DESCRIPTORS: u64 = 256;

/// Raises the soft limit of open files to the hard limit (the default soft limit, often
/// 1024, is below `listen.max_connections`), and warns when even that is too low for
/// `max_connections` connections. Returns the soft limit in force.
#[allow(unsafe_code)]
pub fn raise_open_files_limit(max_connections: usize) -> u64 {
    let wanted = (max_connections as u64).saturating_add(OTHER_DESCRIPTORS);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } != 0 {
        return 0;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            limit.rlim_cur = limit.rlim_max;
        }
    }
    let soft = limit.rlim_cur;
    if soft < wanted {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-files limit is below listen.max_connections + {OTHER_DESCRIPTORS}: connections past it fail to be accepted; raise LimitNOFILE or lower listen.max_connections"
        );
    }
    soft
}

/// An accepted connection holding one of the `listen.max_connections` slots until it closes.
#[derive(Debug)]
pub struct CappedStream {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for CappedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The listener's connections, at most `max` open at once: a connection beyond the cap is
/// closed as soon as it is accepted (counted and logged, rate-limited). Accept errors
/// (such as running out of file descriptors) are logged and accepting goes on after a
/// short pause, as a server must not stop on them.
#[derive(Debug)]
pub struct CappedIncoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max: usize,
    metrics: Arc<Metrics>,
    log: Arc<LogLimiter>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl CappedIncoming {
    /// Accepts from `listener`, at most `max` connections open at once.
    pub fn new(
        listener: TcpListener,
        max: usize,
        metrics: Arc<Metrics>,
        log: Arc<LogLimiter>,
    ) -> CappedIncoming {
        CappedIncoming {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            max,
            metrics,
            log,
            pause: None,
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.max - self.slots.available_permits()
    }
}

impl futures_core::Stream for CappedIncoming {
    type Item = io::Result<CappedStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pause) = self.pause.as_mut() {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
            }
            let (stream, peer) = match self.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => {
                    if self.log.allow("accept").is_some() {
                        tracing::warn!(error = %e, "cannot accept a connection; retrying");
                    }
                    self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(50))));
                    continue;
                }
            };
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => {
                    // Small pushes are answered at once rather than held back by Nagle.
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Some(Ok(CappedStream {
                        stream,
                        _slot: slot,
                    })));
                }
                Err(_) => {
                    self.metrics.observe_refused(REFUSED_CONNECTIONS);
                    if let Some(suppressed) = self.log.allow(REFUSED_CONNECTIONS) {
                        tracing::warn!(
                            %peer,
                            max = self.max,
                            suppressed,
                            "closed a connection: listen.max_connections connections are open"
                        );
                    }
                    drop(stream);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_and_interval() {
        let log = LogLimiter::default();
        assert_eq!(log.allow("a"), Some(0));
        assert_eq!(log.allow("a"), None);
        assert_eq!(log.allow("a"), None);
        assert_eq!(log.allow("b"), Some(0));
        // Once the interval has passed, the next line says how many were left out.
        if let Some(entry) = log.last.lock().unwrap().get_mut("a") {
            entry.0 = Instant::now().checked_sub(LOG_INTERVAL).unwrap();
        }
        assert_eq!(log.allow("a"), Some(2));
    }

    fn next(
        incoming: &mut CappedIncoming,
    ) -> impl Future<Output = Option<io::Result<CappedStream>>> + '_ {
        use futures_core::Stream;
        std::future::poll_fn(move |cx| Pin::new(&mut *incoming).poll_next(cx))
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Metrics::new();
        let mut incoming = CappedIncoming::new(
            listener,
            1,
            Arc::clone(&metrics),
            Arc::new(LogLimiter::default()),
        );
        let _first = TcpStream::connect(address).await.unwrap();
        let held = next(&mut incoming).await.unwrap().unwrap();
        assert_eq!(incoming.open_connections(), 1);
        let mut second = TcpStream::connect(address).await.unwrap();
        // The second is closed by the server while the first holds the only slot.
        let mut buf = [0u8; 1];
        tokio::select! {
            n = second.read(&mut buf) => assert_eq!(n.unwrap_or(0), 0, "closed by the server"),
            _ = next(&mut incoming) => panic!("accepted past the cap"),
        }
        drop(held);
        let _third = TcpStream::connect(address).await.unwrap();
        let accepted = next(&mut incoming).await.unwrap().unwrap();
        assert_eq!(incoming.open_connections(), 1);
        drop(accepted);
        assert_eq!(incoming.open_connections(), 0);
        let refused = metrics
            .ingest_refused
            .get_or_create(&flowlog_publish::telemetry::ReasonLabels {
                reason: REFUSED_CONNECTIONS,
            })
            .get();
        assert!(refused >= 1, "{refused}");
    }
}
