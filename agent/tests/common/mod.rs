//! Helpers shared by the agent's live tests (network namespaces, veth pairs, tools).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

/// Runs a command and returns its output (panics if it cannot be started).
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True when the test may send traffic through namespaces it creates: running as root with
/// every `(tool, version flag)` present. Otherwise it fails under `CI=true`, or prints why
/// and returns false so the test is skipped.
pub fn live_test_can_run(what: &str, tools: &[(&str, &str)]) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, flag)| Command::new(tool).arg(flag).output().is_err())
        .map(|(tool, _)| *tool)
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = format!(
        "{what} needs root and {} (root: {root}, missing: {missing:?}); run scripts/setup-test-env.sh as root",
        tools
            .iter()
            .map(|(t, _)| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPING: {why}");
    false
}

/// A network namespace the test created. Dropping it deletes it, and with it every veth
/// end inside it (a veth pair goes when either end does).
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace `name`, with its loopback up.
    pub fn add(name: String) -> Netns {
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.sh(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run(&full)
    }

    /// Runs a command inside the namespace that must succeed.
    pub fn sh(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        sh(&full);
    }

    /// Runs a bash script inside the namespace (failures, such as refused traffic, are the
    /// caller's to judge).
    pub fn bash(&self, script: &str) -> Output {
        self.run(&["bash", "-c", script])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A veth pair between the test's namespace (`here`) and a [`Netns`] (`there`), both ends
/// up, IPv6 off on both (its neighbour discovery would be traffic of its own). It goes with
/// the namespace.
pub struct Veth {
    pub here: String,
    pub there: String,
}

impl Veth {
    /// Creates the pair `here` – `there`, `there` inside `ns`.
    pub fn add(ns: &Netns, here: String, there: String) -> Veth {
        sh(&[
            "ip",
            "link",
            "add",
            &here,
            "type",
            "veth",
            "peer",
            "name",
            &there,
            "netns",
            ns.name(),
        ]);
        sh(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{here}.disable_ipv6=1"),
        ]);
        ns.sh(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv6.conf.{there}.disable_ipv6=1"),
        ]);
        sh(&["ip", "link", "set", &here, "up"]);
        ns.sh(&["ip", "link", "set", &there, "up"]);
        Veth { here, there }
    }

    /// Gives `here` `{prefix}.{here_host}/24` and `there` `{prefix}.{there_host}/24`.
    pub fn address(&self, ns: &Netns, prefix: &str, here_host: u8, there_host: u8) {
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{prefix}.{here_host}/24"),
            "dev",
            &self.here,
        ]);
        ns.sh(&[
            "ip",
            "addr",
            "add",
            &format!("{prefix}.{there_host}/24"),
            "dev",
            &self.there,
        ]);
    }
}

/// An in-process aggregator `Ingest` service over TLS on 127.0.0.1 that records what it
/// receives and dedupes batches by `(spool_id, seq)` as the real one does.
pub mod ingest {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    use flowlog_formats::FlowRecord;
    use flowlog_tests::pki::TestPki;
    use flowlog_transport::pb::ingest_server::{Ingest, IngestServer};
    use flowlog_transport::pb::{PushReply, PushRequest};
    use flowlog_transport::{AUTHORIZATION, MAX_MESSAGE_BYTES, decode_batch};
    use tonic::codec::CompressionEncoding;
    use tonic::transport::server::TcpIncoming;
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    use tonic::{Request, Response, Status};

    /// What the server does with a push (after checking the token).
    #[derive(Debug, Clone)]
    pub enum Action {
        /// Store it (or ack a duplicate) and reply OK.
        Accept,
        /// Wait, then accept.
        DelayThenAccept(Duration),
        /// Store it, then sleep before replying (a reply that comes too late or never).
        RecordThenSleep(Duration),
        /// Reply with this status; nothing stored.
        Refuse(tonic::Code, String),
    }

    /// Decides the action per push: `(request, how many pushes of this seq came before)`.
    pub type Behavior = Arc<dyn Fn(&PushRequest, usize) -> Action + Send + Sync>;

    /// One push as the server saw it.
    #[derive(Debug, Clone)]
    pub struct Push {
        /// `agent_id` of the request.
        pub agent_id: String,
        /// `spool_id`.
        pub spool_id: u64,
        /// `seq`.
        pub seq: u64,
        /// `acked_below`.
        pub acked_below: u64,
        /// `ok`, `duplicate`, or the refusal code.
        pub outcome: String,
        /// When.
        pub at: Instant,
    }

    /// What the server received.
    #[derive(Debug, Default)]
    pub struct Store {
        /// Every push, in order.
        pub pushes: Vec<Push>,
        /// Stored batches by `(spool_id, seq)`.
        pub batches: BTreeMap<(u64, u64), Vec<FlowRecord>>,
    }

    impl Store {
        /// Seqs stored.
        pub fn seqs(&self) -> Vec<u64> {
            self.batches.keys().map(|(_, s)| *s).collect()
        }

        /// Pushes of `seq` and their outcomes.
        pub fn outcomes(&self, seq: u64) -> Vec<String> {
            self.pushes
                .iter()
                .filter(|p| p.seq == seq)
                .map(|p| p.outcome.clone())
                .collect()
        }
    }

    struct Service {
        store: Arc<Mutex<Store>>,
        token: Arc<Mutex<String>>,
        behavior: Arc<Mutex<Behavior>>,
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[tonic::async_trait]
    impl Ingest for Service {
        async fn push(&self, request: Request<PushRequest>) -> Result<Response<PushReply>, Status> {
            let expected = format!("Bearer {}", lock(&self.token));
            let authorized = request
                .metadata()
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                == Some(expected.as_str());
            let p = request.into_inner();
            let before = lock(&self.store)
                .pushes
                .iter()
                .filter(|q| q.seq == p.seq && q.spool_id == p.spool_id)
                .count();
            let log = |outcome: &str| {
                lock(&self.store).pushes.push(Push {
                    agent_id: p.agent_id.clone(),
                    spool_id: p.spool_id,
                    seq: p.seq,
                    acked_below: p.acked_below,
                    outcome: outcome.to_owned(),
                    at: Instant::now(),
                });
            };
            if !authorized {
                log("unauthenticated");
                return Err(Status::unauthenticated("unknown token"));
            }
            let action = (lock(&self.behavior))(&p, before);
            let records = match p.batch.as_ref().map(decode_batch) {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    log("invalid_argument");
                    return Err(Status::invalid_argument(e.to_string()));
                }
                None => {
                    log("invalid_argument");
                    return Err(Status::invalid_argument("no batch"));
                }
            };
            let mut sleep_after = None;
            match action {
                Action::Refuse(code, message) => {
                    log(&format!("{code:?}"));
                    return Err(Status::new(code, message));
                }
                Action::DelayThenAccept(d) => tokio::time::sleep(d).await,
                Action::RecordThenSleep(d) => sleep_after = Some(d),
                Action::Accept => {}
            }
            let duplicate = {
                let mut store = lock(&self.store);
                let key = (p.spool_id, p.seq);
                let duplicate = store.batches.contains_key(&key);
                if !duplicate {
                    store.batches.insert(key, records);
                }
                duplicate
            };
            log(if duplicate { "duplicate" } else { "ok" });
            if let Some(d) = sleep_after {
                tokio::time::sleep(d).await;
            }
            Ok(Response::new(PushReply { duplicate }))
        }
    }

    /// A test aggregator; stopped (its connections dropped) when dropped.
    pub struct TestIngest {
        /// What it received (kept across restarts).
        pub store: Arc<Mutex<Store>>,
        token: Arc<Mutex<String>>,
        behavior: Arc<Mutex<Behavior>>,
        pki: TestPki,
        client_ca: bool,
        port: u16,
        runtime: Option<tokio::runtime::Runtime>,
    }

    /// A free port on 127.0.0.1 (nothing listens on it when this returns).
    pub fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    impl TestIngest {
        /// Creates a server accepting `token` on a free port; not started.
        pub fn new(pki: &TestPki, token: &str) -> TestIngest {
            // Already installed by another test of the process: fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
            TestIngest {
                store: Arc::default(),
                token: Arc::new(Mutex::new(token.to_owned())),
                behavior: Arc::new(Mutex::new(Arc::new(|_: &PushRequest, _| Action::Accept))),
                pki: pki.clone(),
                client_ca: false,
                port: free_port(),
                runtime: None,
            }
        }

        /// Requires client certificates signed by the test CA (mTLS).
        pub fn require_client_cert(mut self) -> TestIngest {
            self.client_ca = true;
            self
        }

        /// Starts serving (again) on its port.
        pub fn start(&mut self) {
            assert!(self.runtime.is_none(), "already running");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let addr: std::net::SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
            let listener = runtime.block_on(async {
                // The port was just released by a stopped server: retry briefly.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match tokio::net::TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(e) if Instant::now() < deadline => {
                            eprintln!("bind {addr}: {e}; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("bind {addr}: {e}"),
                    }
                }
            });
            let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
                std::fs::read(&self.pki.server_cert).unwrap(),
                std::fs::read(&self.pki.server_key).unwrap(),
            ));
            if self.client_ca {
                tls =
                    tls.client_ca_root(Certificate::from_pem(std::fs::read(&self.pki.ca).unwrap()));
            }
            let service = IngestServer::new(Service {
                store: Arc::clone(&self.store),
                token: Arc::clone(&self.token),
                behavior: Arc::clone(&self.behavior),
            })
            .accept_compressed(CompressionEncoding::Zstd)
            .accept_compressed(CompressionEncoding::Gzip)
            .send_compressed(CompressionEncoding::Zstd)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
            let router = Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(service);
            runtime.spawn(async move {
                let incoming = TcpIncoming::from(listener);
                if let Err(e) = router.serve_with_incoming(incoming).await {
                    eprintln!("test ingest server failed: {e}");
                }
            });
            self.runtime = Some(runtime);
        }

        /// Stops serving at once, dropping every connection (a crash, as the agent sees it).
        pub fn stop(&mut self) {
            if let Some(rt) = self.runtime.take() {
                rt.shutdown_background();
            }
        }

        /// `https://127.0.0.1:PORT`.
        pub fn url(&self) -> String {
            format!("https://127.0.0.1:{}", self.port)
        }

        /// Accepts `token` from now on.
        pub fn set_token(&self, token: &str) {
            *lock(&self.token) = token.to_owned();
        }

        /// Decides what each push gets from now on.
        pub fn set_behavior(
            &self,
            behavior: impl Fn(&PushRequest, usize) -> Action + Send + Sync + 'static,
        ) {
            *lock(&self.behavior) = Arc::new(behavior);
        }

        /// What it received so far.
        pub fn received(&self) -> MutexGuard<'_, Store> {
            lock(&self.store)
        }
    }

    impl Drop for TestIngest {
        fn drop(&mut self) {
            self.stop();
        }
    }

    /// Polls `done` every 20 ms until it holds or `timeout` passes; returns its last value.
    pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
