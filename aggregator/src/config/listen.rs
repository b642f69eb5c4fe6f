//! `[listen]`: the gRPC ingest endpoint of `serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use flowlog_publish::settings::{ByteSize, Problems, duration};
use serde::Deserialize;

/// Default `listen.address`.
pub const DEFAULT_LISTEN_ADDRESS: &str = "0.0.0.0:7443";

/// `[listen]`: the gRPC ingest endpoint of `serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSettings {
    /// Address the server binds (port 0: any free port, logged at startup).
    pub address: SocketAddr,
    /// TLS files; `None` = plaintext (`insecure = true`).
    pub tls: Option<TlsFiles>,
    /// `agent-id token` lines.
    pub tokens_file: PathBuf,
    /// Largest push accepted (after decompression).
    pub max_batch_bytes: usize,
    /// Records accepted but not yet in the WAL, at most.
    pub max_pending_records: u32,
    /// Pushes being received and handled at once, at most.
    pub max_concurrent_pushes: usize,
    /// How long a push waits for room before it is refused as busy.
    pub push_timeout: Duration,
    /// Most records one push may hold (counted before any record is decoded).
    pub max_batch_records: u32,
    /// How long the body of a push may take to arrive once the call is admitted.
    pub body_timeout: Duration,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Calls in progress on one connection at most (HTTP/2 `max_concurrent_streams`).
    pub max_calls_per_connection: u32,
    /// Calls of one agent (token) in progress at once, at most.
    pub max_calls_per_agent: usize,
    /// Records whose `start`/`end` lie further back than this are quarantined.
    pub max_record_age: Duration,
    /// Records whose `start`/`end` lie further ahead of the clock are quarantined.
    pub max_record_ahead: Duration,
}

/// The TLS files of `[listen]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA that client certificates must be signed by; `None` = no client certificates.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct RawListen {
    address: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    insecure: Option<bool>,
    max_batch_bytes: Option<ByteSize>,
    max_pending_records: Option<u64>,
    max_concurrent_pushes: Option<usize>,
    push_timeout: Option<String>,
    max_batch_records: Option<u64>,
    body_timeout: Option<String>,
    max_connections: Option<usize>,
    max_calls_per_connection: Option<u64>,
    max_calls_per_agent: Option<usize>,
    max_record_age: Option<String>,
    max_record_ahead: Option<String>,
}

pub(super) fn validate_listen(raw: RawListen, p: &mut Problems) -> Option<ListenSettings> {
    let address_text = raw
        .address
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_LISTEN_ADDRESS.to_owned());
    let address = p.check(
        "listen.address",
        address_text.parse::<SocketAddr>().map_err(|_| {
            format!("'{address_text}' is not an address such as {DEFAULT_LISTEN_ADDRESS}")
        }),
    );
    let nonempty = |v: Option<PathBuf>| v.filter(|p| !p.as_os_str().is_empty());
    let (cert, key, client_ca) = (
        nonempty(raw.tls_cert),
        nonempty(raw.tls_key),
        nonempty(raw.client_ca),
    );
    let tls = if raw.insecure.unwrap_or(false) {
        for (k, set) in [
            ("tls_cert", cert.is_some()),
            ("tls_key", key.is_some()),
            ("client_ca", client_ca.is_some()),
        ] {
            if set {
                p.add(
                    format!("listen.{k}"),
                    "is not used with insecure = true (plaintext): remove it or set insecure = false",
                );
            }
        }
        Some(None)
    } else {
        const NEEDED: &str =
            "is required (or set insecure = true to serve plaintext, for tests only)";
        if cert.is_none() {
            p.add("listen.tls_cert", NEEDED);
        }
        if key.is_none() {
            p.add("listen.tls_key", NEEDED);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => Some(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            _ => None,
        }
    };
    let tokens_file = nonempty(raw.tokens_file);
    if tokens_file.is_none() {
        p.add(
            "listen.tokens_file",
            "is required: a file of \"agent-id token\" lines",
        );
    }
    let max_batch_bytes = raw.max_batch_bytes.map_or(DEFAULT_MAX_BATCH_BYTES, |b| b.0);
    if max_batch_bytes < 1024 {
        p.add(
            "listen.max_batch_bytes",
            format!("{max_batch_bytes} is too small (at least 1KiB)"),
        );
    }
    let protocol_max = flowlog_transport::MAX_MESSAGE_BYTES as u64;
    if max_batch_bytes > protocol_max {
        p.add(
            "listen.max_batch_bytes",
            format!("{max_batch_bytes} is above the protocol's limit of {protocol_max} bytes"),
        );
    }
    let max_pending_records = raw.max_pending_records.unwrap_or(2_000_000);
    let max_pending_records = match u32::try_from(max_pending_records) {
        Ok(0) => {
            p.add("listen.max_pending_records", "must be at least 1");
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            p.add(
                "listen.max_pending_records",
                format!("{max_pending_records} is too large (at most {})", u32::MAX),
            );
            None
        }
    };
    let max_concurrent_pushes = raw.max_concurrent_pushes.unwrap_or(256);
    if max_concurrent_pushes == 0 {
        p.add("listen.max_concurrent_pushes", "must be at least 1");
    }
    let push_timeout = duration(
        "listen.push_timeout",
        raw.push_timeout.as_deref(),
        Duration::from_secs(10),
        p,
    );
    if push_timeout.is_zero() {
        p.add("listen.push_timeout", "must be longer than 0s");
    }
    let protocol_records = flowlog_transport::MAX_BATCH_RECORDS as u64;
    let max_batch_records = raw
        .max_batch_records
        .unwrap_or(u64::from(DEFAULT_MAX_BATCH_RECORDS));
    if !(1..=protocol_records).contains(&max_batch_records) {
        p.add(
            "listen.max_batch_records",
            format!("{max_batch_records} is not between 1 and {protocol_records}"),
        );
    }
    let body_timeout = duration(
        "listen.body_timeout",
        raw.body_timeout.as_deref(),
        DEFAULT_BODY_TIMEOUT,
        p,
    );
    if body_timeout.is_zero() {
        p.add("listen.body_timeout", "must be longer than 0s");
    }
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        p.add("listen.max_connections", "must be at least 1");
    }
    let max_calls_per_connection = raw
        .max_calls_per_connection
        .unwrap_or(u64::from(DEFAULT_MAX_CALLS_PER_CONNECTION));
    if !(1..=1024).contains(&max_calls_per_connection) {
        p.add(
            "listen.max_calls_per_connection",
            format!("{max_calls_per_connection} is not between 1 and 1024"),
        );
    }
    let max_calls_per_agent = raw
        .max_calls_per_agent
        .unwrap_or(DEFAULT_MAX_CALLS_PER_AGENT);
    if max_calls_per_agent == 0 {
        p.add("listen.max_calls_per_agent", "must be at least 1");
    }
    let max_record_age = duration(
        "listen.max_record_age",
        raw.max_record_age.as_deref(),
        DEFAULT_MAX_RECORD_AGE,
        p,
    );
    let max_record_ahead = duration(
        "listen.max_record_ahead",
        raw.max_record_ahead.as_deref(),
        DEFAULT_MAX_RECORD_AHEAD,
        p,
    );
    Some(ListenSettings {
        address: address?,
        tls: tls?,
        tokens_file: tokens_file?,
        max_batch_bytes: usize::try_from(max_batch_bytes).ok()?,
        max_pending_records: max_pending_records?,
        max_concurrent_pushes: max_concurrent_pushes.max(1),
        push_timeout,
        max_batch_records: u32::try_from(max_batch_records).ok()?,
        body_timeout,
        max_connections,
        max_calls_per_connection: u32::try_from(max_calls_per_connection).ok()?,
        max_calls_per_agent,
        max_record_age,
        max_record_ahead,
    })
}

/// Default `listen.max_batch_records` (ten times an agent's default batch).
pub const DEFAULT_MAX_BATCH_RECORDS: u32 = 100_000;
/// Default `listen.body_timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `listen.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `listen.max_calls_per_connection`.
pub const DEFAULT_MAX_CALLS_PER_CONNECTION: u32 = 16;
/// Default `listen.max_calls_per_agent` (four times an agent's default `max_in_flight`).
pub const DEFAULT_MAX_CALLS_PER_AGENT: usize = 16;
/// Default `listen.max_record_age`: 14 days.
pub const DEFAULT_MAX_RECORD_AGE: Duration = Duration::from_secs(14 * 86_400);
/// Default `listen.max_record_ahead`.
pub use flowlog_publish::pipeline::DEFAULT_MAX_RECORD_AHEAD;

/// Default `listen.max_batch_bytes`: 16 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 16 << 20;
