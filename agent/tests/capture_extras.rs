//! Live capture beyond the basics (see `capture_veth.rs` for those): interfaces that appear
//! and disappear while the agent runs, PACKET_FANOUT threads, kernel drops and a full
//! output queue turning into SKIPDATA, promiscuous mode, and the capture counters.
//!
//! Each test makes its own network namespace `A` and veth pairs between `A` and the test's
//! namespace. The agent binary runs inside `A` (`ip netns exec`), so it sees only the
//! test's interfaces; traffic is sent from this process to addresses in `A`. The last test
//! runs capture in this process instead, to read its counters. Needs root
//! (CAP_NET_ADMIN, CAP_NET_RAW), `ip` and `ping`; under CI=true a missing privilege or tool
//! fails the tests instead of skipping them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowlog_agent::capture;
use flowlog_agent::config::default_interface_id;
use flowlog_formats::text::TextReader;
use flowlog_formats::{FlowDirection, FlowRecord, LogStatus};

mod common;

use common::{Netns, Veth, run, sh};

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-agent");

const LOG_FORMAT: &str = "${version} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${tcp-flags} ${flow-direction} ${action} ${log-status}";

/// True if the test can run; otherwise fails under CI=true, or prints why and skips.
fn can_run() -> bool {
    common::live_test_can_run("live capture tests", &[("ip", "-V"), ("ping", "-V")])
}

/// A namespace `A` for the agent, with veth pairs to the test's namespace. Dropping it
/// deletes the namespace, and with it every pair.
struct TestNet {
    ns: Netns,
    id: u32,
}

/// One veth pair: `inside` in the namespace, `outside` here.
struct Link {
    inside: String,
    outside: String,
    /// Address of `inside` (`outside` has `.2` of the same /24), if any.
    inside_addr: Option<Ipv4Addr>,
}

impl Link {
    fn outside_addr(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.inside_addr.unwrap().octets();
        Ipv4Addr::new(a, b, c, 2)
    }
}

impl TestNet {
    /// `tag` (one letter) keeps the names of concurrently running tests apart.
    fn create(tag: char) -> TestNet {
        let id = std::process::id() % 10_000;
        let ns = Netns::add(format!("fx{tag}{id}"));
        // No IPv6 on the test links (its neighbour discovery would be traffic), and ICMP
        // errors not rate-limited, so that the same traffic gives the same records.
        for (key, value) in [
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.icmp_ratelimit", "0"),
            ("net.ipv4.icmp_msgs_per_sec", "1000000"),
            ("net.ipv4.icmp_msgs_burst", "1000000"),
        ] {
            ns.sh(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
        }
        TestNet { ns, id }
    }

    /// Adds a veth pair; with `subnet`, `inside` gets 10.196.{subnet}.1/24 and `outside`
    /// .2.
    fn link(&self, tag: char, subnet: Option<u8>) -> Link {
        let veth = Veth::add(
            &self.ns,
            format!("fx{tag}{}b", self.id),
            format!("fx{tag}{}a", self.id),
        );
        if let Some(s) = subnet {
            veth.address(&self.ns, &format!("10.196.{s}"), 2, 1);
        }
        Link {
            inside: veth.there,
            outside: veth.here,
            inside_addr: subnet.map(|s| Ipv4Addr::new(10, 196, s, 1)),
        }
    }

    /// `ip -d link show` of an interface in the namespace.
    fn link_details(&self, name: &str) -> String {
        let out = run(&[
            "ip",
            "-n",
            self.ns.name(),
            "-d",
            "link",
            "show",
            "dev",
            name,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The interface's flags as sysfs shows them inside the namespace.
    fn link_flags(&self, name: &str) -> u32 {
        let out = self
            .ns
            .run(&["cat", &format!("/sys/class/net/{name}/flags")]);
        let text = String::from_utf8_lossy(&out.stdout);
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).unwrap()
    }
}

fn config(interfaces: &[&str], extra: &str) -> tempfile::NamedTempFile {
    let mut text = format!(
        "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\nmax_aggregation_interval = \"60s\"\n\
         [output]\nlog_format = \"{LOG_FORMAT}\"\n"
    );
    for name in interfaces {
        text.push_str(&format!("[[interface]]\nname = \"{name}\"\n"));
    }
    text.push_str(extra);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

/// The agent binary running in a namespace, its output collected as it comes.
struct Agent {
    child: Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: std::thread::JoinHandle<()>,
    _config: tempfile::NamedTempFile,
}

impl Agent {
    fn start(net: &TestNet, config: tempfile::NamedTempFile) -> Agent {
        let mut child = Command::new("ip")
            .args(["netns", "exec", net.ns.name(), BIN, "--stdout", "--config"])
            .arg(config.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            out.read_to_end(&mut buf).unwrap();
            buf
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let shared = Arc::clone(&stderr);
        let stderr_thread = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                shared
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Agent {
            child,
            stdout,
            stderr,
            stderr_thread,
            _config: config,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the agent's stderr contains `text`.
    fn wait_for(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.stderr().contains(text) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the agent exited ({status}) before logging {text:?}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not log {text:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: &str) {
        sh(&["kill", &format!("-{signal}"), &self.child.id().to_string()]);
    }

    /// SIGTERM, then the records it wrote and its stderr; asserts a clean, quick exit.
    fn stop(mut self) -> (Vec<FlowRecord>, String) {
        let signalled = Instant::now();
        self.signal("TERM");
        let status = self.child.wait().unwrap();
        let took = signalled.elapsed();
        let stdout = self.stdout.join().unwrap();
        self.stderr_thread.join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "agent failed ({status}):\n{stderr}");
        assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
        let records = TextReader::with_header(&stdout[..])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (records, stderr)
    }
}

/// Sums of the "ended" lines of the agent's capture threads of `interface`, per thread:
/// (packets read, dropped by the kernel).
fn thread_totals(stderr: &str, interface: &str) -> Vec<(u64, u64)> {
    let prefix = format!("capture: {interface} thread ");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let numbers: Vec<u64> = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse().ok())
                .collect();
            // "<n> ended: <packets> packets read, <drops> dropped by the kernel, ..."
            (numbers[1], numbers[2])
        })
        .collect()
}

/// (interface id, direction, srcaddr, dstaddr, srcport, dstport, protocol).
type FlowKey = (
    String,
    Option<FlowDirection>,
    String,
    String,
    Option<u16>,
    Option<u16>,
    Option<u8>,
);

/// Packets, bytes and OR of tcp-flags per flow over the whole run (the traffic may
/// straddle an interval boundary). Ephemeral ports (chosen by the kernel, different in
/// every run) are shown as 0.
fn totals(records: &[FlowRecord]) -> BTreeMap<FlowKey, (u64, u64, u16)> {
    let port = |p: Option<u16>| p.map(|p| if p >= 32768 { 0 } else { p });
    let mut flows = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.log_status == Some(LogStatus::Ok))
    {
        let key = (
            r.interface_id.as_deref().unwrap().to_owned(),
            r.flow_direction,
            r.srcaddr.unwrap().to_string(),
            r.dstaddr.unwrap().to_string(),
            port(r.srcport),
            port(r.dstport),
            r.protocol,
        );
        let e: &mut (u64, u64, u16) = flows.entry(key).or_default();
        e.0 += r.packets.unwrap();
        e.1 += r.bytes.unwrap();
        e.2 |= r.tcp_flags.unwrap_or(0);
    }
    flows
}

/// Per interface and interval start: how many NODATA, SKIPDATA and OK records.
fn status_rows(records: &[FlowRecord]) -> HashMap<(String, u64), [usize; 3]> {
    let mut rows: HashMap<(String, u64), [usize; 3]> = HashMap::new();
    for r in records {
        let start = r.start.unwrap();
        let key = (
            r.interface_id.as_deref().unwrap().to_owned(),
            start - start % 60,
        );
        let i = match r.log_status {
            Some(LogStatus::NoData) => 0,
            Some(LogStatus::SkipData) => 1,
            _ => 2,
        };
        rows.entry(key).or_default()[i] += 1;
    }
    rows
}

/// Known traffic from here to `link`'s inside address: pings (some fragmented), UDP
/// datagrams from fixed ports (one of them fragmented), refused TCP connections. Each UDP
/// datagram and the fragmented one's reassembly draws an ICMP port unreachable.
fn send_traffic(link: &Link) {
    let there = link.inside_addr.unwrap().to_string();
    let here = link.outside_addr();
    sh(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &there]);
    sh(&[
        "ping", "-c", "2", "-i", "0.2", "-W", "1", "-s", "3000", &there,
    ]);
    for i in 0..16u16 {
        let socket = UdpSocket::bind((here, 20_000 + i)).unwrap();
        for _ in 0..=i {
            socket
                .send_to(&vec![7u8; 20 * usize::from(i)], (there.as_str(), 5000 + i))
                .unwrap();
        }
    }
    let socket = UdpSocket::bind((here, 20_100)).unwrap();
    socket
        .send_to(&[9u8; 4000], (there.as_str(), 5100))
        .unwrap();
    for i in 0..4u16 {
        let to: SocketAddr = format!("{there}:{}", 6000 + i).parse().unwrap();
        assert!(TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_err());
    }
    // Let the last replies cross the link before the agent stops.
    sh(&["ping", "-c", "1", "-W", "1", &there]);
}

#[test]
fn with_no_interface_yet_the_agent_waits_for_one() {
    if !can_run() {
        return;
    }
    // The namespace has only `lo`: nothing to capture at startup.
    let net = TestNet::create('w');
    let cfg = config(&[], "[capture]\nrescan_interval = \"1s\"\n");
    let mut agent = Agent::start(&net, cfg);
    agent.wait_for("capture: no up, non-loopback interface yet; looking again every 1s");
    let link = net.link('w', Some((net.id % 40 * 6 + 5) as u8));
    agent.wait_for(&format!("capture: started on {} ", link.inside));
    let there = link.inside_addr.unwrap().to_string();
    sh(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &there]);
    let (records, stderr) = agent.stop();
    let eni = default_interface_id(&link.inside);
    let echo_requests: u64 = records
        .iter()
        .filter(|r| {
            r.interface_id.as_deref() == Some(eni.as_str())
                && r.protocol == Some(1)
                && r.flow_direction == Some(FlowDirection::Ingress)
        })
        .filter_map(|r| r.packets)
        .sum();
    assert_eq!(echo_requests, 2, "{records:#?}\n{stderr}");
}

#[test]
fn an_interface_that_appears_is_captured_and_one_that_disappears_ends_its_thread() {
    if !can_run() {
        return;
    }
    let net = TestNet::create('n');
    let first = net.link('f', None);
    let cfg = config(&[], "[capture]\nrescan_interval = \"1s\"\n");
    let mut agent = Agent::start(&net, cfg);
    agent.wait_for(&format!("capture: started on {} ", first.inside));

    // A pair created while the agent runs is captured by the next rescan.
    let late = net.link('l', Some((net.id % 40 * 6) as u8));
    agent.wait_for(&format!("capture: started on {} ", late.inside));
    let there = late.inside_addr.unwrap().to_string();
    sh(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &there]);

    // The first pair disappears: its thread reports and ends, the agent goes on.
    sh(&["ip", "link", "del", &first.outside]);
    agent.wait_for(&format!("capture: {} disappeared", first.inside));
    agent.wait_for(&format!("capture: {} thread 0 ended", first.inside));
    sh(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &there]);

    let (records, stderr) = agent.stop();
    let flows = totals(&records);
    let eni = default_interface_id(&late.inside);
    let here = late.outside_addr().to_string();
    let icmp = |dir, src: &str, dst: &str| {
        flows
            .get(&(
                eni.clone(),
                Some(dir),
                src.to_owned(),
                dst.to_owned(),
                Some(0),
                Some(0),
                Some(1),
            ))
            .map(|t| (t.0, t.1))
    };
    let shown = format!("{flows:#?}\n{stderr}");
    assert_eq!(
        icmp(FlowDirection::Ingress, &here, &there),
        Some((5, 5 * 84)),
        "echo requests on the new interface, before and after the other one left\n{shown}"
    );
    assert_eq!(
        icmp(FlowDirection::Egress, &there, &here),
        Some((5, 5 * 84)),
        "echo replies\n{shown}"
    );
    // The vanished interface reported (NODATA for its partial interval) before it left.
    let gone = default_interface_id(&first.inside);
    assert!(
        records
            .iter()
            .any(|r| r.interface_id.as_deref() == Some(gone.as_str())),
        "{shown}"
    );
}

#[test]
fn two_fanout_threads_give_the_same_records_as_one() {
    if !can_run() {
        return;
    }
    let net = TestNet::create('f');
    let traffic = net.link('t', Some((net.id % 40 * 6 + 1) as u8));
    let idle = net.link('i', None);
    let mut runs = Vec::new();
    for threads in [1, 2] {
        let cfg = config(
            &[&traffic.inside, &idle.inside],
            &format!("[capture]\nfanout_threads = {threads}\n"),
        );
        let mut agent = Agent::start(&net, cfg);
        let started = if threads == 1 {
            format!("capture: started on {} (", traffic.inside)
        } else {
            "2 thread(s), fanout group".to_owned()
        };
        agent.wait_for(&started);
        agent.wait_for(&format!("capture: started on {} (", idle.inside));
        // Not promiscuous unless asked.
        assert!(net.link_details(&traffic.inside).contains("promiscuity 0"));
        send_traffic(&traffic);
        runs.push(agent.stop());
    }

    let (one, one_log) = &runs[0];
    let (two, two_log) = &runs[1];
    let shown = format!(
        "one thread:\n{:#?}\n{one_log}\ntwo threads:\n{:#?}\n{two_log}",
        totals(one),
        totals(two)
    );
    assert_eq!(totals(one), totals(two), "{shown}");

    // The traffic is what was sent (so the comparison is not between two empty sets).
    let eni = default_interface_id(&traffic.inside);
    let (there, here) = (
        traffic.inside_addr.unwrap().to_string(),
        traffic.outside_addr().to_string(),
    );
    let udp = |sport: u16, dport: u16| {
        totals(two)
            .get(&(
                eni.clone(),
                Some(FlowDirection::Ingress),
                here.clone(),
                there.clone(),
                Some(sport),
                Some(dport),
                Some(17),
            ))
            .map(|t| t.0)
    };
    for i in 0..16u16 {
        assert_eq!(udp(20_000 + i, 5000 + i), Some(u64::from(i) + 1), "{shown}");
    }
    // Three fragments, counted as three packets of the flow by either thread count.
    assert_eq!(udp(20_100, 5100), Some(3), "{shown}");

    // Status rows: one NODATA per idle interval, none where there was traffic, no loss.
    for (records, log) in [(one, one_log), (two, two_log)] {
        let rows = status_rows(records);
        let idle_eni = default_interface_id(&idle.inside);
        let idle_rows: Vec<_> = rows.iter().filter(|(k, _)| k.0 == idle_eni).collect();
        assert!(!idle_rows.is_empty(), "{log}");
        for (key, counts) in idle_rows {
            assert_eq!(*counts, [1, 0, 0], "idle interval {key:?}\n{shown}");
        }
        for (key, [nodata, skipdata, ok]) in rows.iter().filter(|(k, _)| k.0 == eni) {
            assert_eq!(*skipdata, 0, "{key:?}\n{shown}");
            assert!(*nodata <= 1, "{key:?}\n{shown}");
            assert!(
                *nodata == 0 || *ok == 0,
                "NODATA beside traffic {key:?}\n{shown}"
            );
        }
    }
    // Both threads of the fanout group got a share of the traffic.
    let per_thread = thread_totals(two_log, &traffic.inside);
    assert_eq!(per_thread.len(), 2, "{two_log}");
    assert!(per_thread.iter().all(|t| t.0 > 0), "{two_log}");
}

#[test]
fn kernel_drops_become_skipdata() {
    if !can_run() {
        return;
    }
    let net = TestNet::create('d');
    let link = net.link('d', Some((net.id % 40 * 6 + 2) as u8));
    // The smallest socket buffer holds a handful of frames.
    let cfg = config(&[&link.inside], "[capture]\nsocket_buffer = \"4KiB\"\n");
    let mut agent = Agent::start(&net, cfg);
    agent.wait_for(&format!("capture: started on {} (", link.inside));
    let there = link.inside_addr.unwrap();
    sh(&["ping", "-c", "1", "-W", "1", &there.to_string()]);

    // Frozen, the agent reads nothing: the burst overflows its socket buffer and the
    // kernel drops the rest (deterministically: nothing can drain the buffer meanwhile).
    const BURST: u64 = 3000;
    agent.signal("STOP");
    let socket = UdpSocket::bind((link.outside_addr(), 0)).unwrap();
    for i in 0..BURST {
        socket.send_to(&[1u8; 32], (there, 9)).unwrap();
        if i % 100 == 99 {
            // Short pauses keep the kernel's per-CPU input backlog (1000 packets) far from
            // full, so every datagram reaches the packet socket.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    agent.signal("CONT");
    let (records, stderr) = agent.stop();

    let eni = default_interface_id(&link.inside);
    let shown = format!("{records:#?}\n{stderr}");
    assert!(
        records
            .iter()
            .any(|r| r.interface_id.as_deref() == Some(eni.as_str())
                && r.log_status == Some(LogStatus::SkipData)),
        "SKIPDATA for the kernel's drops\n{shown}"
    );
    let counted: u64 = records
        .iter()
        .filter(|r| r.protocol == Some(17) && r.dstport == Some(9))
        .map(|r| r.packets.unwrap())
        .sum();
    let dropped: u64 = thread_totals(&stderr, &link.inside)
        .iter()
        .map(|t| t.1)
        .sum();
    assert!(counted < BURST, "{shown}");
    assert!(dropped > 0, "{shown}");
    // Every datagram was either counted or dropped by the kernel (the ping and ICMP
    // errors are other flows).
    assert!(counted + dropped >= BURST, "{counted} + {dropped}\n{shown}");
}

#[test]
fn promiscuous_mode_is_on_only_while_capturing_and_only_when_configured() {
    if !can_run() {
        return;
    }
    let net = TestNet::create('p');
    let link = net.link('p', Some((net.id % 40 * 6 + 3) as u8));
    const IFF_PROMISC: u32 = 0x100;
    for (promiscuous, threads) in [(false, 1), (true, 2)] {
        let cfg = config(
            &[&link.inside],
            &format!("[capture]\npromiscuous = {promiscuous}\nfanout_threads = {threads}\n"),
        );
        let mut agent = Agent::start(&net, cfg);
        agent.wait_for(&format!("capture: started on {} (", link.inside));
        let details = net.link_details(&link.inside);
        let flags = net.link_flags(&link.inside);
        let (records, stderr) = agent.stop();
        let shown = format!("{details}\n{stderr}");
        if promiscuous {
            // One membership per socket of the fanout group. (`ip link` lists PROMISC
            // among the flags only when set with `ip link set promisc on`; packet socket
            // memberships show as the promiscuity count and in the kernel's flags.)
            assert!(details.contains("promiscuity 2"), "{shown}");
            assert_ne!(flags & IFF_PROMISC, 0, "{flags:#x}\n{shown}");
        } else {
            assert!(details.contains("promiscuity 0"), "{shown}");
            assert_eq!(flags & IFF_PROMISC, 0, "{flags:#x}\n{shown}");
        }
        assert!(!records.is_empty());
        // Closing the sockets ends promiscuous mode.
        assert!(
            net.link_details(&link.inside).contains("promiscuity 0"),
            "{}",
            net.link_details(&link.inside)
        );
    }
}

#[test]
fn a_full_output_queue_becomes_skipdata_and_counters_move() {
    if !can_run() {
        return;
    }
    let net = TestNet::create('q');
    let link = net.link('q', Some((net.id % 40 * 6 + 4) as u8));
    // Capture in this process, on this side of the pair, with 1-second intervals and a
    // queue nobody reads at first.
    let text = format!(
        "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\nmax_flows = 1200\n\
         [[interface]]\nname = \"{}\"\n",
        link.outside
    );
    let mut settings = flowlog_agent::config::parse(&text, "test.toml").unwrap();
    settings.interval_secs = 1;
    let there = link.inside_addr.unwrap();
    sh(&["ping", "-c", "1", "-W", "1", &there.to_string()]);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::sync_channel(0);
    let capture = capture::start(&settings.live(), Arc::clone(&stop), tx).unwrap();
    let stats = capture.stats();

    // 1000 flows a burst: records pile up in the capture thread (at most max_flows +
    // PENDING_RECORDS_SLACK of them), then the oldest are dropped.
    let socket = UdpSocket::bind((link.outside_addr(), 0)).unwrap();
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats
        .interface(&link.outside)
        .unwrap()
        .queue_dropped_records
        == 0
    {
        assert!(Instant::now() < deadline, "{:?}", stats.interfaces());
        for port in 10_000..11_000u16 {
            socket.send_to(&[0u8; 8], (there, port)).unwrap();
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let reader = std::thread::spawn(move || rx.iter().flat_map(|(_, r)| r).collect::<Vec<_>>());
    stop.store(true, Ordering::Relaxed);
    capture.join();
    let records = reader.join().unwrap();

    let c = stats.interface(&link.outside).unwrap();
    assert!(c.packets >= sent, "{c:?} sent {sent}");
    // Frames of 14 + 20 + 8 + 8 bytes.
    assert!(c.bytes >= sent * 50, "{c:?}");
    assert!(c.queue_dropped_records > 0, "{c:?}");
    assert_eq!(c.threads, 0, "{c:?}");
    assert_eq!(c.live_flows, 0, "{c:?}");
    assert!(
        records
            .iter()
            .any(|r| r.log_status == Some(LogStatus::SkipData)),
        "SKIPDATA for the dropped records: {} records",
        records.len()
    );
    // The records that got through are records of this interface only.
    let eni = default_interface_id(&link.outside);
    assert!(
        records
            .iter()
            .all(|r| r.interface_id.as_deref() == Some(eni.as_str()))
    );
}
