//! `action = REJECT` from real host firewall drops: a network namespace with a veth pair
//! and nftables rules that log to an NFLOG group and drop TCP to port 9 (input) and UDP to
//! port 9999 (output); the real `flowlog-agent` runs inside the namespace with
//! `[firewall] nflog_group`, known traffic crosses the pair (a dropped TCP connect whose SYN
//! is retransmitted, a UDP datagram dropped on its way out, an accepted ping), then SIGTERM;
//! the records are checked field by field, once with `traffic_type = ALL` and once with
//! `REJECT` and several capture threads per interface. Needs root, `ip`, `ping`, `nft` and
//! the kernel's nfnetlink_log; under CI=true a missing one fails the test instead of
//! skipping it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flowlog_formats::text::TextReader;
use flowlog_formats::{Action, FlowDirection, FlowRecord, LogStatus};

mod common;

use common::sh;

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-agent");
const ENI: &str = "eni-0000000000000000c";

/// (direction, srcaddr, dstaddr, srcport, dstport, protocol, action).
type FlowKey = (
    Option<FlowDirection>,
    String,
    String,
    Option<u16>,
    Option<u16>,
    Option<u8>,
    Option<Action>,
);
/// (packets, bytes, OR of tcp-flags; `None` if no record had the field).
type Totals = (u64, u64, Option<u16>);

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Fails under CI, else prints why the test is skipped.
fn cannot_run(why: &str) {
    assert!(!in_ci(), "{why}");
    eprintln!("SKIPPING: {why}");
}

/// A namespace holding one end of a veth pair (`inside`, address .2) whose other end
/// (`outside`, .1) stays here, and an nftables table that logs to `group` and drops.
struct TestNet {
    ns: common::Netns,
    inside: String,
    subnet: u32,
    group: u16,
}

impl TestNet {
    fn create() -> Option<TestNet> {
        if !common::live_test_can_run(
            "the firewall test",
            &[("ip", "-V"), ("ping", "-V"), ("nft", "--version")],
        ) {
            return None;
        }
        let id = std::process::id() % 10_000;
        let ns = common::Netns::add(format!("flr{id}"));
        let veth = common::Veth::add(&ns, format!("flra{id}"), format!("flrb{id}"));
        let subnet = 100 + id % 150;
        veth.address(&ns, &format!("10.198.{subnet}"), 1, 2);
        let net = TestNet {
            ns,
            inside: veth.there,
            subnet,
            group: 4000 + u16::try_from(id % 1000).unwrap(),
        };
        let group = net.group;
        let rules = format!(
            "table inet flowlog_test {{\n\
             \tchain input {{\n\
             \t\ttype filter hook input priority filter; policy accept;\n\
             \t\ttcp dport 9 log group {group} drop\n\
             \t}}\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority filter; policy accept;\n\
             \t\tudp dport 9999 log group {group} drop\n\
             \t}}\n\
             }}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", net.ns.name(), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
        let out = nft.wait_with_output().unwrap();
        if !out.status.success() {
            cannot_run(&format!(
                "nft refused the ruleset (kernel without nf_tables / nft_log?): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        Some(net)
    }

    /// Runs `script` in the namespace; failures (dropped traffic) are expected.
    fn exec(&self, script: &str) {
        let _ = self.ns.bash(script);
    }

    /// Reads a file of the namespace's /proc/net.
    fn proc_net(&self, file: &str) -> String {
        let out = self.ns.run(&["cat", &format!("/proc/net/{file}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// What one agent run printed.
struct Run {
    records: Vec<FlowRecord>,
    /// Stdout and stderr, for failure messages.
    shown: String,
}

fn read_all(child: &mut Child) -> (Vec<u8>, String) {
    let mut stdout = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (stdout, stderr)
}

/// Runs the agent in the namespace with `traffic_type` and `fanout_threads` capture
/// threads, sends the known traffic (`connects` dropped connections at once), stops it
/// with SIGTERM. `None` if the agent could not bind the group (skipped outside CI).
fn run_agent(
    net: &TestNet,
    traffic_type: &str,
    fanout_threads: usize,
    connects: usize,
) -> Option<Run> {
    let s = net.subnet;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\n\
             max_aggregation_interval = \"60s\"\ntraffic_type = \"{traffic_type}\"\n\
             [output]\nlog_format = \"${{version}} ${{interface-id}} ${{srcaddr}} ${{dstaddr}} ${{srcport}} ${{dstport}} ${{protocol}} ${{packets}} ${{bytes}} ${{start}} ${{end}} ${{tcp-flags}} ${{flow-direction}} ${{action}} ${{log-status}}\"\n\
             [[interface]]\nname = \"{}\"\ninterface_id = \"{ENI}\"\n\
             [capture]\nfanout_threads = {fanout_threads}\n\
             [firewall]\nnflog_group = {}\n",
            net.inside, net.group
        ),
    )
    .unwrap();
    // Keep each run (about 3.5 s) inside one 60 s interval, so that where the clock falls
    // cannot split a flow or its NFLOG events across intervals.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute >= 50 {
        std::thread::sleep(Duration::from_secs(61 - into_minute));
    }
    let mut agent = Command::new("ip")
        .args(["netns", "exec", net.ns.name(), BIN, "--stdout", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Ready once the group is bound and the packet socket is open.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = agent.try_wait().unwrap() {
            let (_, stderr) = read_all(&mut agent);
            let why = format!("the agent exited at startup ({status}): {stderr}");
            if stderr.contains("nflog") {
                cannot_run(&format!("no NFLOG support here? {why}"));
                return None;
            }
            panic!("{why}");
        }
        let bound = net
            .proc_net("netfilter/nfnetlink_log")
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&net.group.to_string()));
        let capturing = net.proc_net("packet").lines().count() > 1;
        if bound && capturing {
            break;
        }
        assert!(Instant::now() < deadline, "the agent did not get ready");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Accepted: ping from outside (3 requests in, 3 replies out).
    sh(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "1",
        &format!("10.198.{s}.2"),
    ]);
    // Dropped in input: connects to port 9 from outside. Each SYN is sent, retransmitted
    // after the 1 s initial RTO, and the next retransmission (3 s) never comes.
    let tries: Vec<Child> = (0..connects)
        .map(|_| {
            Command::new("timeout")
                .args([
                    "2",
                    "bash",
                    "-c",
                    &format!("exec 3<>/dev/tcp/10.198.{s}.2/9"),
                ])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut t in tries {
        let _ = t.wait();
    }
    // Dropped in output: a datagram from inside (6-byte payload: 34 IP bytes).
    net.exec(&format!("echo hello > /dev/udp/10.198.{s}.1/9999"));
    // The kernel flushes logged packets within 100 ms.
    std::thread::sleep(Duration::from_millis(500));

    let signalled = Instant::now();
    sh(&["kill", "-TERM", &agent.id().to_string()]);
    let status = agent.wait().unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        signalled.elapsed()
    );
    let (stdout, stderr) = read_all(&mut agent);
    assert!(status.success(), "{stderr}");
    let records = TextReader::with_header(&stdout[..])
        .unwrap()
        .map(Result::unwrap)
        .collect();
    Some(Run {
        records,
        shown: format!("{}\n{stderr}", String::from_utf8_lossy(&stdout)),
    })
}

/// Sums the OK records per flow and action: the traffic may straddle an interval boundary.
fn sum_flows(records: &[FlowRecord]) -> HashMap<FlowKey, Totals> {
    let mut flows: HashMap<FlowKey, Totals> = HashMap::new();
    for r in records
        .iter()
        .filter(|r| r.log_status == Some(LogStatus::Ok))
    {
        assert_eq!(r.interface_id.as_deref(), Some(ENI));
        let key = (
            r.flow_direction,
            r.srcaddr.unwrap().to_string(),
            r.dstaddr.unwrap().to_string(),
            r.srcport,
            r.dstport,
            r.protocol,
            r.action,
        );
        let e = flows.entry(key).or_default();
        e.0 += r.packets.unwrap();
        e.1 += r.bytes.unwrap();
        if let Some(f) = r.tcp_flags {
            e.2 = Some(e.2.unwrap_or(0) | f);
        }
    }
    flows
}

/// The record of the dropped connect: ingress to port 9 (its source port is the kernel's
/// choice).
fn dropped_syns(flows: &HashMap<FlowKey, Totals>) -> Vec<(&FlowKey, &Totals)> {
    flows
        .iter()
        .filter(|(k, _)| k.4 == Some(9) && k.5 == Some(6))
        .collect()
}

#[test]
fn firewall_drops_logged_to_nflog_are_reject_records() {
    let Some(net) = TestNet::create() else { return };
    let Some(Run { records, shown }) = run_agent(&net, "ALL", 1, 1) else {
        return;
    };
    let flows = sum_flows(&records);
    let (here, there) = (
        format!("10.198.{}.2", net.subnet),
        format!("10.198.{}.1", net.subnet),
    );
    let key = |dir, src: &str, dst: &str, sport, dport, proto, action| {
        (
            Some(dir),
            src.to_owned(),
            dst.to_owned(),
            Some(sport),
            Some(dport),
            Some(proto),
            Some(action),
        )
    };
    use FlowDirection::{Egress, Ingress};
    assert_eq!(
        flows.get(&key(Ingress, &there, &here, 0, 0, 1, Action::Accept)),
        Some(&(3, 3 * 84, None)),
        "echo requests, accepted\n{shown}"
    );
    assert_eq!(
        flows.get(&key(Egress, &here, &there, 0, 0, 1, Action::Accept)),
        Some(&(3, 3 * 84, None)),
        "echo replies, accepted\n{shown}"
    );
    // The SYN and its retransmission: 60 bytes each (20 IP + 20 TCP + 20 of options), SYN
    // flag only, REJECT, and no RST back (the drop is silent).
    let syns = dropped_syns(&flows);
    assert_eq!(syns.len(), 1, "one flow to port 9\n{shown}");
    let (k, totals) = syns[0];
    assert_eq!(
        (k.0, k.1.as_str(), k.2.as_str(), k.6),
        (
            Some(Ingress),
            there.as_str(),
            here.as_str(),
            Some(Action::Reject)
        ),
        "{shown}"
    );
    assert_eq!(*totals, (2, 2 * 60, Some(2)), "dropped SYNs\n{shown}");
    let udp = flows
        .iter()
        .filter(|(k, _)| k.4 == Some(9999))
        .collect::<Vec<_>>();
    assert_eq!(udp.len(), 1, "one flow to port 9999\n{shown}");
    let (k, totals) = udp[0];
    assert_eq!(
        (k.0, k.1.as_str(), k.2.as_str(), k.5, k.6),
        (
            Some(Egress),
            here.as_str(),
            there.as_str(),
            Some(17),
            Some(Action::Reject)
        ),
        "{shown}"
    );
    assert_eq!(*totals, (1, 20 + 8 + 6, None), "dropped datagram\n{shown}");
    assert_eq!(flows.len(), 4, "no other flow\n{shown}");
    assert!(
        records.iter().all(|r| r.log_status == Some(LogStatus::Ok)),
        "no NODATA or SKIPDATA: nothing was lost\n{shown}"
    );

    // traffic_type = REJECT, with 4 fanout capture threads per interface and 6 connects
    // (their packets spread over the threads): only the REJECT rows, each flow counted
    // once whichever thread saw its packets.
    let Some(Run { records, shown }) = run_agent(&net, "REJECT", 4, 6) else {
        return;
    };
    assert!(
        records.iter().all(|r| r.action == Some(Action::Reject)
            || matches!(r.log_status, Some(LogStatus::NoData | LogStatus::SkipData))),
        "only REJECT rows\n{shown}"
    );
    let flows = sum_flows(&records);
    assert_eq!(flows.len(), 6 + 1, "the SYNs and the datagram\n{shown}");
    let syns = dropped_syns(&flows);
    assert_eq!(syns.len(), 6, "{shown}");
    for (k, totals) in syns {
        assert_eq!(
            (k.0, k.6, *totals),
            (
                Some(FlowDirection::Ingress),
                Some(Action::Reject),
                (2, 2 * 60, Some(2))
            ),
            "{shown}"
        );
    }
    assert!(
        flows
            .iter()
            .any(|(k, v)| k.4 == Some(9999) && *v == (1, 34, None)),
        "{shown}"
    );
}
