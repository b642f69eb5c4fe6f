//! An S3-compatible server for tests: moto's server mode on 127.0.0.1 with signature
//! checking on (`tests/python/s3_server.py`), plus read-back helpers and a
//! [`FlakyProxy`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use flowlog_tests::s3::S3TestServer;
//! let s3 = S3TestServer::shared()?;                 // or S3TestServer::start()? for a private one
//! let bucket = s3.unique_bucket("my_test").await?;  // a fresh bucket per test
//! // ... point the code under test at s3.endpoint with s3.credentials() ...
//! assert!(s3.list_keys(&bucket).await?.is_empty());
//! # Ok(()) }
//! ```
//!
//! The server needs the venv from `scripts/setup-test-env.sh` (`$FLOWLOG_VENV`, default
//! `<workspace>/target/test-venv`) with `moto[server]` installed. Without it
//! [`S3TestServer::start`] returns an error saying so: S3 tests fail loudly, they never
//! skip.

use std::io::{BufRead, BufReader, Read, Seek};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::operation::get_object_acl::GetObjectAclOutput;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the server may take to print its endpoint.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Returns the workspace root (the parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Returns the test venv: `$FLOWLOG_VENV`, else `<workspace>/target/test-venv`.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("FLOWLOG_VENV")
        .map_or_else(|| workspace_root().join("target/test-venv"), PathBuf::from)
}

fn setup_hint() -> &'static str {
    if std::env::var("CI").as_deref() == Ok("true") {
        "CI=true: the S3 tests must run; run scripts/setup-test-env.sh before cargo test"
    } else {
        "run scripts/setup-test-env.sh (creates the venv and installs moto[server]) and re-run the tests"
    }
}

/// A running moto S3 server; the child process is killed on drop (and exits by itself
/// when its stdin closes, i.e. when the test process dies).
#[derive(Debug)]
pub struct S3TestServer {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Access key id of the IAM user the server was bootstrapped with.
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
    /// Region to sign with: `us-east-1`.
    pub region: String,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl S3TestServer {
    /// Starts a private server (about 1.5 s: Python imports moto and boto3).
    pub fn start() -> anyhow::Result<Self> {
        let python = venv_dir().join("bin/python");
        if !python.exists() {
            bail!("{} is missing: {}", python.display(), setup_hint());
        }
        let script = workspace_root().join("tests/python/s3_server.py");
        let mut stderr_log = tempfile::tempfile().context("creating the server's stderr log")?;
        let mut child = Command::new(&python)
            .arg(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(
                stderr_log
                    .try_clone()
                    .context("cloning the stderr log handle")?,
            )
            .spawn()
            .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
        let stdin = child.stdin.take();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;

        // Read the first line on a thread, so a hung server cannot hang the test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let result = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(result);
        });
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let mut stderr = String::new();
                let _ = stderr_log.rewind();
                let _ = stderr_log.read_to_string(&mut stderr);
                let why = match other {
                    Ok(Ok(_)) => "exited without printing its endpoint".to_owned(),
                    Ok(Err(e)) => format!("stdout read failed: {e}"),
                    Err(_) => format!("printed nothing within {STARTUP_TIMEOUT:?}"),
                };
                let hint = if stderr.contains("No module named") {
                    format!(
                        "\nmoto or boto3 is missing from the venv {}: {}",
                        venv_dir().display(),
                        setup_hint()
                    )
                } else {
                    String::new()
                };
                bail!(
                    "the S3 test server {}: {why}{hint}\n--- its stderr ---\n{stderr}",
                    script.display()
                );
            }
        };
        let info: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("parsing the server's first line {line:?}"))?;
        let field = |name: &str| -> anyhow::Result<String> {
            info.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("the server's line {line:?} has no {name}"))
        };
        Ok(Self {
            endpoint: field("endpoint")?,
            access_key_id: field("access_key_id")?,
            secret_access_key: field("secret_access_key")?,
            region: "us-east-1".to_owned(),
            child,
            stdin,
        })
    }

    /// Returns the server shared by every test of this process (started on first use;
    /// it exits with the process). Tests isolate themselves with
    /// [`S3TestServer::unique_bucket`].
    pub fn shared() -> anyhow::Result<&'static Self> {
        static SHARED: OnceLock<Result<S3TestServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }

    /// Returns the server's `host:port`.
    pub fn addr(&self) -> anyhow::Result<SocketAddr> {
        let hostport = self.endpoint.trim_start_matches("http://");
        hostport
            .parse()
            .with_context(|| format!("parsing {hostport}"))
    }

    /// Returns the access key the server accepts.
    pub fn credentials(&self) -> Credentials {
        Credentials::new(
            &self.access_key_id,
            &self.secret_access_key,
            None,
            None,
            "flowlog-tests",
        )
    }

    /// Returns a path-style client signed with the server's key.
    pub async fn client(&self) -> Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .credentials_provider(self.credentials())
            .build();
        Client::from_conf(config)
    }

    /// Creates a bucket.
    pub async fn create_bucket(&self, name: &str) -> anyhow::Result<()> {
        self.client()
            .await
            .create_bucket()
            .bucket(name)
            .send()
            .await
            .with_context(|| format!("creating bucket {name}"))?;
        Ok(())
    }

    /// Creates and returns a bucket no other test uses, named after `test_name`.
    pub async fn unique_bucket(&self, test_name: &str) -> anyhow::Result<String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut stem: String = test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        stem.truncate(40);
        let stem = stem.trim_matches('-');
        let name = format!(
            "t-{stem}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.create_bucket(&name).await?;
        Ok(name)
    }

    /// Returns every key in `bucket` (all pages), sorted.
    pub async fn list_keys(&self, bucket: &str) -> anyhow::Result<Vec<String>> {
        let client = self.client().await;
        let mut keys = Vec::new();
        let mut pages = client
            .list_objects_v2()
            .bucket(bucket)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.with_context(|| format!("listing bucket {bucket}"))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        keys.sort();
        Ok(keys)
    }

    /// Returns an object's bytes.
    pub async fn get(&self, bucket: &str, key: &str) -> anyhow::Result<Vec<u8>> {
        let out = self
            .client()
            .await
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("getting s3://{bucket}/{key}"))?;
        let body = out
            .body
            .collect()
            .await
            .with_context(|| format!("reading s3://{bucket}/{key}"))?;
        Ok(body.into_bytes().to_vec())
    }

    /// Returns an object's metadata (HeadObject).
    pub async fn head(&self, bucket: &str, key: &str) -> anyhow::Result<HeadObjectOutput> {
        self.client()
            .await
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("head s3://{bucket}/{key}"))
    }

    /// Returns an object's ACL (GetObjectAcl).
    pub async fn object_acl(&self, bucket: &str, key: &str) -> anyhow::Result<GetObjectAclOutput> {
        self.client()
            .await
            .get_object_acl()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .with_context(|| format!("get acl of s3://{bucket}/{key}"))
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on 127.0.0.1 in front of an upstream (e.g. the moto server) that can be
/// switched off (its port refuses connections and open connections are cut) and on
/// again, to test retries against an endpoint that goes down and comes back.
#[derive(Debug)]
pub struct FlakyProxy {
    addr: SocketAddr,
    want_up: watch::Sender<bool>,
    is_up: watch::Receiver<bool>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FlakyProxy {
    /// Starts a proxy forwarding to `upstream`, initially up or down. Needs a tokio
    /// runtime.
    pub async fn start(upstream: SocketAddr, up: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let listener = up.then_some(listener);
        let (want_up, want_rx) = watch::channel(up);
        let (is_up_tx, is_up) = watch::channel(up);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run_proxy(
            addr,
            upstream,
            listener,
            want_rx,
            is_up_tx,
            Arc::clone(&accepted),
        ));
        Ok(Self {
            addr,
            want_up,
            is_up,
            accepted,
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

    /// Returns how many connections were accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Switches the proxy on (listening, forwarding) or off (port closed, connections
    /// cut); returns once the switch took effect.
    pub async fn set_up(&self, up: bool) -> anyhow::Result<()> {
        self.want_up.send_replace(up);
        let mut is_up = self.is_up.clone();
        tokio::time::timeout(Duration::from_secs(10), is_up.wait_for(|now| *now == up))
            .await
            .context("the proxy did not switch within 10 s")?
            .context("the proxy task ended")?;
        Ok(())
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_proxy(
    addr: SocketAddr,
    upstream: SocketAddr,
    mut listener: Option<TcpListener>,
    mut want_up: watch::Receiver<bool>,
    is_up: watch::Sender<bool>,
    accepted: Arc<AtomicU64>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let up = *want_up.borrow_and_update();
        if up && listener.is_none() {
            // Rebind the same port (tokio sets SO_REUSEADDR); retry briefly if the
            // kernel is not ready to hand it back yet.
            for _ in 0..100 {
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        listener = Some(l);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        } else if !up && listener.is_some() {
            listener = None;
            connections.abort_all();
        }
        is_up.send_replace(listener.is_some());

        let accept = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = want_up.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            conn = accept => {
                if let Ok((client, _)) = conn {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(forward(client, upstream));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr) {
    if let Ok(mut server) = TcpStream::connect(upstream).await {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}

/// One canned HTTP response of [`CannedHttpServer`].
#[derive(Debug, Clone)]
pub struct CannedResponse {
    /// Status code, e.g. 501.
    pub status: u16,
    /// Extra headers (name, value).
    pub headers: Vec<(String, String)>,
    /// Body, e.g. an S3 XML error document.
    pub body: String,
}

impl CannedResponse {
    /// Returns an S3-style XML error response.
    pub fn s3_error(status: u16, code: &str, message: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".to_owned(), "application/xml".to_owned())],
            body: format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
                 <RequestId>canned</RequestId></Error>"
            ),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// An HTTP server on 127.0.0.1 answering every request with the same canned response:
/// for behaviours moto does not have (501 to `If-None-Match`, 503 SlowDown, 301 wrong
/// region). It reads each request completely (by Content-Length) before answering.
#[derive(Debug)]
pub struct CannedHttpServer {
    addr: SocketAddr,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl CannedHttpServer {
    /// Starts the server. Needs a tokio runtime.
    pub async fn start(response: CannedResponse) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the canned server")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(answer(conn, response.clone(), Arc::clone(&seen)));
            }
        });
        Ok(Self {
            addr,
            requests,
            task,
        })
    }

    /// Returns `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the request heads received so far (request line and headers).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for CannedHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut conn: TcpStream,
    response: CannedResponse,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Head.
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let content_length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if let Ok(mut r) = seen.lock() {
            r.push(head.clone());
        }
        // Body.
        while buf.len() < head_end + content_length {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + content_length);
        let is_head = head.starts_with("HEAD ");
        let mut out = format!(
            "HTTP/1.1 {} Canned\r\ncontent-length: {}\r\n",
            response.status,
            response.body.len()
        );
        for (name, value) in &response.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        if !is_head {
            out.push_str(&response.body);
        }
        if conn.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}
