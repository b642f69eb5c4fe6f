//! Agent → aggregator delivery, end to end, with real processes on 127.0.0.1: the agent
//! (`flowlog-agent --replay` with `[aggregator]`) ships to `flowlog-aggregator serve` over
//! gRPC with TLS, and whatever is killed, restarted or refused, the published files hold
//! exactly the records the agent prints with `--stdout` for the same capture.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use flowlog_formats::text::{TextReader, encode_line};
use flowlog_formats::{FlowRecord, LogFormat};
use flowlog_tests::pki::TestPki;

/// Every field the agent fills for this capture; used by the aggregator's output and by
/// the `--stdout` reference, so the two compare field by field.
const FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status} ${tcp-flags} ${type} ${pkt-srcaddr} ${pkt-dstaddr} ${flow-direction} ${region}";

struct Bins {
    agent: PathBuf,
    aggregator: PathBuf,
    gen_pcap: PathBuf,
}

/// Builds (if needed) and returns the binaries: this crate's tests run the other crates'
/// executables, which cargo only builds for their own packages' tests.
fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let dir = flowlog_tests::binaries().expect("building the binaries");
        Bins {
            agent: dir.join("flowlog-agent"),
            aggregator: dir.join("flowlog-aggregator"),
            gen_pcap: dir.join("gen_pcap"),
        }
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A deterministic capture of a busy web server (benches' generator), `seconds` long.
fn capture(dir: &Path, packets: u64, seconds: u64) -> PathBuf {
    let out = dir.join(format!("capture-{packets}-{seconds}.pcap"));
    let st = Command::new(&bins().gen_pcap)
        .args(["--out", out.to_str().unwrap()])
        .args(["--packets", &packets.to_string()])
        .args(["--seconds", &seconds.to_string()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    out
}

const AGENT_BASE: &str = r#"
[flow_log]
id = "fl-0123456789abcdef0"
account_id = "123456789012"
region = "eu-west-1"
max_aggregation_interval = "60s"

[[interface]]
name = "eth0"
interface_id = "eni-0123456789abcdef0"
mac = "02:00:00:00:00:0a"
addresses = ["10.0.1.10", "2600:1f18:1234:5600::10"]
"#;

/// The records the agent makes of `pcap`, as canonical lines (sorted).
fn reference(dir: &Path, pcap: &Path) -> Vec<String> {
    let config = dir.join("reference.toml");
    fs::write(
        &config,
        format!("{AGENT_BASE}\n[output]\nlog_format = \"{FORMAT}\"\n"),
    )
    .unwrap();
    let out = Command::new(&bins().agent)
        .args(["--config", config.to_str().unwrap()])
        .args(["--replay", pcap.to_str().unwrap(), "--stdout"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reference run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reader = TextReader::with_header(out.stdout.as_slice()).unwrap();
    let mut records = Vec::new();
    while let Some(r) = reader.read_record().unwrap() {
        records.push(r);
    }
    canonical(&records)
}

fn canonical(records: &[FlowRecord]) -> Vec<String> {
    let format = LogFormat::parse(FORMAT).unwrap();
    let mut lines: Vec<String> = records
        .iter()
        .map(|r| {
            let mut line = Vec::new();
            encode_line(&mut line, &format, 5, r);
            String::from_utf8(line).unwrap().trim_end().to_owned()
        })
        .collect();
    lines.sort_unstable();
    lines
}

/// Every record published below `root` (nothing yet when it does not exist), canonical.
fn published(root: &Path) -> Vec<String> {
    if !root.exists() {
        return Vec::new();
    }
    canonical(&flowlog_tests::published_records(root).unwrap().1)
}

/// Compares published and expected lines; on a mismatch says how (counts, doubles, first
/// differences) instead of printing thousands of lines.
fn assert_same(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    fn count(v: &[String]) -> BTreeMap<&str, i64> {
        let mut m: BTreeMap<&str, i64> = BTreeMap::new();
        for l in v {
            *m.entry(l.as_str()).or_default() += 1;
        }
        m
    }
    let (g, w) = (count(got), count(want));
    let missing: Vec<_> = w
        .iter()
        .filter(|(l, n)| g.get(*l).copied().unwrap_or(0) < **n)
        .take(5)
        .collect();
    let extra: Vec<_> = g
        .iter()
        .filter(|(l, n)| w.get(*l).copied().unwrap_or(0) < **n)
        .take(5)
        .collect();
    panic!(
        "{what}: published {} records, expected {}; missing (first 5): {missing:?}; extra or doubled (first 5): {extra:?}",
        got.len(),
        want.len()
    );
}

struct Aggregator {
    config: PathBuf,
    log: PathBuf,
    port: u16,
    metrics_port: u16,
    out: PathBuf,
    child: Option<Child>,
}

impl Aggregator {
    fn new(dir: &Path, pki: &TestPki, tokens: &Path) -> Aggregator {
        let port = free_port();
        let metrics_port = free_port();
        let out = dir.join("out");
        let config = dir.join("aggregator.toml");
        fs::write(
            &config,
            format!(
                r#"
[flow_log]
id = "fl-0123456789abcdef0"
account_id = "123456789012"
region = "eu-west-1"
[output]
log_format = "{FORMAT}"
[sink]
type = "local"
path = "{out}"
[state]
dir = "{state}"
[service]
shutdown_grace = "60s"
log_level = "info"
metrics_address = "127.0.0.1:{metrics_port}"
[listen]
address = "127.0.0.1:{port}"
tls_cert = "{cert}"
tls_key = "{key}"
tokens_file = "{tokens}"
# Test records are of 2024.
max_record_age = "3650d"
"#,
                out = out.display(),
                state = dir.join("state").display(),
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
                tokens = tokens.display(),
            ),
        )
        .unwrap();
        Aggregator {
            config,
            log: dir.join("aggregator.log"),
            port,
            metrics_port,
            out,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&bins().aggregator)
            .args(["serve", "--config", self.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("aggregator exited with {status}: {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "aggregator not listening: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Batches accepted since this process started (`flowlog_ingest_batches_total`), or
    /// None while its metrics endpoint does not answer.
    fn accepted_batches(&self) -> Option<u64> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("flowlog_ingest_batches_total{result=\"accepted\"} "))
            .and_then(|n| n.trim().parse().ok())
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// SIGTERM: seal, publish, exit 0.
    fn stop(&mut self) {
        self.signal("-TERM");
        let mut c = self.child.take().unwrap();
        let status = wait_timeout(&mut c, Duration::from_secs(90))
            .unwrap_or_else(|| panic!("aggregator did not stop: {}", self.log_text()));
        assert!(
            status.success(),
            "aggregator exited with {status}: {}",
            self.log_text()
        );
    }

    fn log_text(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A test directory with a PKI, a tokens file (agent `web-01`) and the agent's token file.
struct Setup {
    dir: tempfile::TempDir,
    pki: TestPki,
    tokens: PathBuf,
    token_file: PathBuf,
}

const TOKEN: &str = "c2VjcmV0LXRva2VuLW9mLXdlYi0wMQ";

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(&dir.path().join("pki")).unwrap();
    let tokens = dir.path().join("tokens");
    fs::write(&tokens, format!("# agent-id token\nweb-01 {TOKEN}\n")).unwrap();
    let token_file = dir.path().join("agent.token");
    fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    Setup {
        dir,
        pki,
        tokens,
        token_file,
    }
}

impl Setup {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An agent config shipping to `endpoints`; `extra` goes into `[aggregator]`.
    fn agent_config(&self, endpoints: &[String], extra: &str) -> PathBuf {
        let config = self.path().join("agent.toml");
        let endpoints: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
        fs::write(
            &config,
            format!(
                r#"{AGENT_BASE}
[aggregator]
endpoints = [{endpoints}]
ca_file = "{ca}"
agent_id = "web-01"
token_file = "{token}"
connect_timeout = "1s"
push_timeout = "5s"
retry_max = "300ms"
{extra}
[spool]
dir = "{spool}"
"#,
                endpoints = endpoints.join(", "),
                ca = self.pki.ca.display(),
                token = self.token_file.display(),
                spool = self.path().join("spool").display(),
            ),
        )
        .unwrap();
        config
    }

    fn spawn_agent(&self, config: &Path, pcap: &Path) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("agent.log"))
            .unwrap();
        Command::new(&bins().agent)
            .args(["--config", config.to_str().unwrap()])
            .args(["--replay", pcap.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn agent_log(&self) -> String {
        let text = fs::read_to_string(self.path().join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn wait_agent_ok(&self, agent: &mut Child, timeout: Duration, aggregator: &Aggregator) {
        let status = wait_timeout(agent, timeout).unwrap_or_else(|| {
            let _ = agent.kill();
            panic!(
                "agent did not finish in {timeout:?}\nagent:\n{}\naggregator:\n{}",
                self.agent_log(),
                aggregator.log_text()
            )
        });
        assert!(
            status.success(),
            "agent exited with {status}\nagent:\n{}\naggregator:\n{}",
            self.agent_log(),
            aggregator.log_text()
        );
    }
}

/// A small xorshift generator for the random kill moments (seed printed for reruns).
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("FLOWLOG_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("FLOWLOG_TEST_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }
}

#[test]
fn aggregator_killed_at_random_moments_loses_and_doubles_nothing() {
    let s = setup();
    let pcap = capture(s.path(), 400_000, 600);
    let want = reference(s.path(), &pcap);
    assert!(
        want.len() > 20_000,
        "capture too small: {} records",
        want.len()
    );
    let mut agg = Aggregator::new(s.path(), &s.pki, &s.tokens);
    agg.start();
    // Small batches, one in flight: many acks, so kills land before, during and after
    // appends, fsyncs and acks.
    let config = s.agent_config(&[agg.url()], "batch_records = 50\nmax_in_flight = 1");
    let mut agent = s.spawn_agent(&config, &pcap);
    let mut rng = Rng::new();
    // A fixed number of kills, each after the aggregator has accepted a random number of
    // batches (1–20) since it started, plus a few milliseconds; one kill in four at a
    // random moment instead (during recovery, before the agent is back), or once 20
    // batches are in. At most ~20 of the ~1,000 batches pass between kills, so the agent
    // cannot finish before the last.
    const KILLS: usize = 30;
    let mut kills = 0;
    let started = Instant::now();
    let finished = |agent: &mut Child| agent.try_wait().unwrap().is_some();
    while kills < KILLS && !finished(&mut agent) {
        let blind = rng.below(4) == 0;
        let batches = if blind { 20 } else { 1 + rng.below(20) };
        let until = Instant::now()
            + if blind {
                rng.millis(0, 300)
            } else {
                Duration::from_secs(120)
            };
        while agg.accepted_batches().unwrap_or(0) < batches && !finished(&mut agent) {
            if Instant::now() >= until {
                assert!(
                    blind,
                    "the aggregator accepted fewer than {batches} batches in 120 s after kill {kills}\nagent:\n{}\naggregator:\n{}",
                    s.agent_log(),
                    agg.log_text()
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !blind {
            std::thread::sleep(rng.millis(0, 5));
        }
        if finished(&mut agent) {
            break;
        }
        agg.kill9();
        kills += 1;
        std::thread::sleep(rng.millis(0, 300));
        agg.start();
    }
    s.wait_agent_ok(&mut agent, Duration::from_secs(300), &agg);
    agg.stop();
    assert_eq!(
        kills, KILLS,
        "the agent finished after only {kills} kills: make the capture larger"
    );
    eprintln!(
        "{kills} kill -9 of the aggregator in {:.1} s, {} records",
        started.elapsed().as_secs_f64(),
        want.len()
    );
    assert_same(&published(&agg.out), &want, "after aggregator kills");
}

#[test]
fn agent_killed_and_restarted_loses_and_doubles_nothing() {
    let s = setup();
    let pcap = capture(s.path(), 200_000, 600);
    let want = reference(s.path(), &pcap);
    let mut agg = Aggregator::new(s.path(), &s.pki, &s.tokens);
    agg.start();
    let config = s.agent_config(&[agg.url()], "batch_records = 200\nmax_in_flight = 2");
    let mut rng = Rng::new();
    for _ in 0..6 {
        let mut agent = s.spawn_agent(&config, &pcap);
        std::thread::sleep(rng.millis(200, 1500));
        let _ = agent.kill();
        agent.wait().unwrap();
    }
    let mut agent = s.spawn_agent(&config, &pcap);
    s.wait_agent_ok(&mut agent, Duration::from_secs(300), &agg);
    // Once more: a finished input sends nothing new.
    let mut agent = s.spawn_agent(&config, &pcap);
    s.wait_agent_ok(&mut agent, Duration::from_secs(120), &agg);
    agg.stop();
    assert_same(&published(&agg.out), &want, "after agent kills");
}

#[test]
fn agent_catches_up_after_the_aggregator_was_down_two_minutes() {
    let s = setup();
    let pcap = capture(s.path(), 50_000, 300);
    let want = reference(s.path(), &pcap);
    let mut agg = Aggregator::new(s.path(), &s.pki, &s.tokens);
    let config = s.agent_config(&[agg.url()], "");
    let mut agent = s.spawn_agent(&config, &pcap);
    std::thread::sleep(Duration::from_secs(120));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent gave up while the aggregator was down: {}",
        s.agent_log()
    );
    let spooled: u64 = fs::read_dir(s.path().join("spool"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        spooled > 0,
        "nothing in the spool while the aggregator is down"
    );
    agg.start();
    s.wait_agent_ok(&mut agent, Duration::from_secs(120), &agg);
    agg.stop();
    assert_same(&published(&agg.out), &want, "after a 2-minute outage");
}

#[test]
fn wrong_token_is_refused_until_the_tokens_file_is_reloaded() {
    let s = setup();
    let pcap = capture(s.path(), 20_000, 120);
    let want = reference(s.path(), &pcap);
    let wrong = "d3JvbmctdG9rZW4tZm9yLXdlYi0wMQ";
    fs::write(&s.token_file, wrong).unwrap();
    let mut agg = Aggregator::new(s.path(), &s.pki, &s.tokens);
    agg.start();
    let config = s.agent_config(&[agg.url()], "");
    let mut agent = s.spawn_agent(&config, &pcap);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = fs::read_to_string(&agg.log).unwrap_or_default();
        if log.contains("127.0.0.1") && log.to_lowercase().contains("unknown") {
            assert!(!log.contains(wrong), "the token was logged: {log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no refusal logged: {}",
            agg.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "agent gave up: {}",
        s.agent_log()
    );
    assert!(
        published(&agg.out).is_empty(),
        "records were accepted with a wrong token"
    );
    // The operator adds the agent's token: SIGHUP, and the agent catches up.
    let mut f = fs::File::create(&s.tokens).unwrap();
    writeln!(f, "web-01 {wrong}").unwrap();
    drop(f);
    agg.signal("-HUP");
    s.wait_agent_ok(&mut agent, Duration::from_secs(120), &agg);
    agg.stop();
    assert_same(&published(&agg.out), &want, "after the token was fixed");
}

#[test]
fn plaintext_agent_against_the_tls_port_is_refused() {
    let s = setup();
    let pcap = capture(s.path(), 5_000, 60);
    let mut agg = Aggregator::new(s.path(), &s.pki, &s.tokens);
    agg.start();
    let url = format!("http://127.0.0.1:{}", agg.port);
    let config = s.agent_config(&[url], "insecure = true");
    let mut agent = s.spawn_agent(&config, &pcap);
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent finished: its records were acked over plaintext: {}",
        s.agent_log()
    );
    let _ = agent.kill();
    agent.wait().unwrap();
    agg.stop();
    assert!(
        published(&agg.out).is_empty(),
        "plaintext records were accepted"
    );
}
