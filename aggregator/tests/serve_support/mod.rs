//! Helpers of the `serve` end-to-end tests: a state directory with a config, tokens and a
//! test PKI; a real `flowlog-aggregator serve` process; a tonic client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowlog_formats::input::RecordSource;
use flowlog_formats::{FlowRecord, LogStatus};
use flowlog_tests::pki::TestPki;
use flowlog_transport::pb::ingest_client::IngestClient;
use flowlog_transport::pb::{PushReply, PushRequest, RecordBatch};
use flowlog_transport::{AUTHORIZATION, encode_batch};
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub const BIN: &str = env!("CARGO_BIN_EXE_flowlog-aggregator");

/// 2024-01-01T00:00:00Z.
pub const T0: u64 = 1_704_067_200;

/// Agents of the tokens file and their tokens.
pub const AGENT_A: (&str, &str) = ("agent-a", "tok-a-0123456789abcdef");
pub const AGENT_B: (&str, &str) = ("agent-b", "tok-b-fedcba9876543210");

/// A directory with a PKI, a tokens file and a `serve` config.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: TestPki,
    pub config: PathBuf,
    pub tokens: PathBuf,
    pub out: PathBuf,
    pub state: PathBuf,
}

impl Env {
    /// `listen` is the body of `[listen]` after `address` and `tokens_file`; use
    /// [`Env::tls_listen`] for the usual TLS keys.
    pub fn new(listen: impl FnOnce(&TestPki) -> String) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
        let out = dir.path().join("out");
        let state = dir.path().join("state");
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!(
                "# test fleet\n{} {}\n{} {}\n",
                AGENT_A.0, AGENT_A.1, AGENT_B.0, AGENT_B.1
            ),
        )
        .unwrap();
        let config = dir.path().join("aggregator.toml");
        std::fs::write(
            &config,
            format!(
                "[flow_log]\nid = \"fl-0123456789abcdef0\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\n\n\
                 [sink]\ntype = \"local\"\npath = \"{}\"\n\n[state]\ndir = \"{}\"\nwriter_id = \"test-writer\"\nwal_segment_bytes = \"1MiB\"\n\n\
                 [service]\nshutdown_grace = \"20s\"\nlog_level = \"info\"\n\n\
                 [listen]\naddress = \"127.0.0.1:0\"\ntokens_file = \"{}\"\n# Test records are of 2024.\nmax_record_age = \"3650d\"\n{}\n",
                out.display(),
                state.display(),
                tokens.display(),
                listen(&pki)
            ),
        )
        .unwrap();
        Env {
            dir,
            pki,
            config,
            tokens,
            out,
            state,
        }
    }

    /// A TLS endpoint without client certificates.
    pub fn tls() -> Env {
        Env::new(tls_listen)
    }

    /// Starts `flowlog-aggregator serve` and waits until it listens.
    pub fn serve(&self) -> Server {
        Server::start(&self.config)
    }

    /// Every record published below `out`, by its `bytes` value (which tests make unique).
    pub fn published(&self) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for f in files_below(&self.out) {
            for r in RecordSource::open_path(&f, None).unwrap() {
                *out.entry(r.unwrap().bytes.unwrap()).or_insert(0) += 1;
            }
        }
        out
    }
}

/// The usual `[listen]` TLS keys for `pki`.
pub fn tls_listen(pki: &TestPki) -> String {
    format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display()
    )
}

pub fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A running `serve` process; killed (-9) when dropped.
pub struct Server {
    child: Child,
    pub address: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub fn start(config: &Path) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flowlog-aggregator serve");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let mut server = Server {
            child,
            address: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let line = server.wait_for_log(": listening address=", Duration::from_secs(60));
        let address = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("address="))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        server.address = address.parse().unwrap();
        server
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory of the process so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib / 1024
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until a log line contains `needle` (after any earlier occurrence count
    /// `after`), returning the line.
    pub fn wait_for_log_n(&mut self, needle: &str, nth: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().filter(|l| l.contains(needle)).nth(nth) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "serve exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {timeout:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_n(needle, 0, timeout)
    }

    /// Sends `signal` (`TERM`, `HUP`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        self.signal("TERM");
        let status = self.wait(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(100));
        (status, self.log())
    }

    /// kill -9.
    pub fn kill(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.log()
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not exit within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `https://` URL of the server.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.address)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A single-threaded runtime for the client side.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// How the test client connects.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA to trust; `None` = plaintext (`http://`).
    pub ca: Option<PathBuf>,
    /// Client certificate and key (mTLS).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTls {
    pub fn trusting(pki: &TestPki) -> ClientTls {
        ClientTls {
            ca: Some(pki.ca.clone()),
            identity: None,
        }
    }

    pub fn with_identity(mut self, cert: &Path, key: &Path) -> ClientTls {
        self.identity = Some((cert.to_owned(), key.to_owned()));
        self
    }
}

/// Connects (lazily: a TLS failure shows on the first call) to `server`.
pub async fn client(server: &Server, tls: &ClientTls) -> IngestClient<Channel> {
    IngestClient::new(channel(server, tls))
        .max_encoding_message_size(usize::MAX)
        .accept_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip)
}

/// A lazily connecting channel to `server`.
pub fn channel(server: &Server, tls: &ClientTls) -> Channel {
    channel_at(server.address, tls)
}

/// A lazily connecting channel to the server at `address` (call within a runtime).
pub fn channel_at(address: SocketAddr, tls: &ClientTls) -> Channel {
    let scheme = if tls.ca.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{address}")).unwrap();
    if let Some(ca) = &tls.ca {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
            .domain_name("localhost");
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ));
        }
        endpoint = endpoint.tls_config(config).unwrap();
    }
    endpoint.connect_lazy()
}

/// `n` records of agent `tag`: each `bytes` value is `tag * 1_000_000 + first + i`.
pub fn records(tag: u64, first: u64, n: u64) -> Vec<FlowRecord> {
    (0..n)
        .map(|i| FlowRecord {
            account_id: Some("123456789012".into()),
            interface_id: Some(format!("eni-{:017x}", tag).into()),
            srcaddr: Some("10.0.0.1".parse().unwrap()),
            dstaddr: Some("10.0.0.2".parse().unwrap()),
            srcport: Some(443),
            dstport: Some(40_000),
            protocol: Some(6),
            packets: Some(1),
            bytes: Some(tag * 1_000_000 + first + i),
            start: Some(T0 + i % 300),
            end: Some(T0 + 10 + i % 300),
            action: Some(flowlog_formats::Action::Accept),
            log_status: Some(LogStatus::Ok),
            ..FlowRecord::default()
        })
        .collect()
}

/// A push of `batch`.
pub fn push_request(agent: &str, spool_id: u64, seq: u64, batch: RecordBatch) -> PushRequest {
    PushRequest {
        agent_id: agent.into(),
        spool_id,
        seq,
        acked_below: 1,
        batch: Some(batch),
    }
}

/// Sends a push with `token` (none: no authorization metadata).
pub async fn push(
    client: &mut IngestClient<Channel>,
    token: Option<&str>,
    request: PushRequest,
) -> Result<PushReply, tonic::Status> {
    let mut req = tonic::Request::new(request);
    if let Some(token) = token {
        req.metadata_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    }
    client.push(req).await.map(tonic::Response::into_inner)
}

/// Pushes `records` as agent A's batch `seq` of spool 1.
pub async fn push_a(
    client: &mut IngestClient<Channel>,
    seq: u64,
    records: &[FlowRecord],
) -> Result<PushReply, tonic::Status> {
    push(
        client,
        Some(AGENT_A.1),
        push_request(AGENT_A.0, 1, seq, encode_batch(records)),
    )
    .await
}

/// Counts of `bytes` values.
pub fn counted(records: &[FlowRecord]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        *out.entry(r.bytes.unwrap()).or_insert(0) += 1;
    }
    out
}

/// Sends `bytes` as the message of a `Push` call, as they are (for malformed messages).
pub async fn push_raw(
    server: &Server,
    tls: &ClientTls,
    token: &str,
    bytes: Vec<u8>,
) -> Result<PushReply, tonic::Status> {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Clone, Copy, Default)]
    struct Raw;
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            bytes::BufMut::put_slice(buf, &item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = PushReply;
        type Error = tonic::Status;
        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<PushReply>, tonic::Status> {
            prost::Message::decode(buf)
                .map(Some)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        }
    }
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = PushReply;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }

    let mut grpc = tonic::client::Grpc::new(channel(server, tls));
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(bytes);
    req.metadata_mut()
        .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/flowlog.ingest.v1.Ingest/Push");
    grpc.unary(req, path, Raw)
        .await
        .map(tonic::Response::into_inner)
}
