//! Writes a deterministic, realistic Ethernet capture for the agent's replay benchmark
//! (`benches/agent_replay.sh`): the traffic one busy public web server's interface sees.
//!
//! `gen_pcap --out FILE [--packets 5000000] [--seconds 300] [--seed 1]`
//!
//! The host (MAC [`HOST_MAC`], addresses [`HOST_V4`] and [`HOST_V6`]) serves HTTPS and HTTP
//! to internet clients (TCP with handshake, requests, multi-segment responses acknowledged
//! every second segment, FIN teardown or a reset; about 10% over IPv6), QUIC (UDP 443), is
//! pinged by monitors (ICMP echo, ICMPv6 on IPv6), is probed by scanners (a SYN answered by
//! a reset or by nothing), resolves names (UDP 53) and keeps a pool of long-lived database
//! connections (TCP 5432) and a time sync (UDP 123). Now and then the gateway sends an ARP
//! request (not IP: the agent skips it). Frames are 60 to 1514 bytes long (short frames
//! padded as on the wire), timestamps are microseconds from 2024-01-01T00:00:00Z over
//! `--seconds`, so a 300 s file spans five 60 s aggregation intervals.
//!
//! Sessions are added until the file has at least `--packets` packets; the same arguments
//! always give the same bytes. Beside the capture it writes `FILE.stats`, one `key value`
//! per line: `packets`, `sessions`, `flows` (distinct direction + 5-tuple, as the agent
//! keys them), `intervals`, `peak_interval_flows` (the most flows in one 60 s interval,
//! i.e. the most records the agent holds at once), `bytes`.

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use flowlog_agent::pcap::{DLT_EN10MB, PcapWriter, Resolution};
use flowlog_benches::{FIRST_WINDOW_START, SplitMix64};
use flowlog_tests::frames::{self, TCP_ACK, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN};

/// MAC address of the host's interface (put it in the agent's `[[interface]] mac`).
pub const HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
/// MAC address of the VPC router.
const GW_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// Primary IPv4 address of the host.
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 10);
/// Primary IPv6 address of the host.
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2600, 0x1f18, 0x1234, 0x5600, 0, 0, 0, 0x10);

/// Aggregation interval the stats are computed for.
const INTERVAL_SECS: u64 = 60;
/// Largest TCP payload in a 1514-byte frame (IPv4, no TCP options); IPv6 has 20 less.
const MSS_V4: u16 = 1460;
/// Ethernet minimum frame length without the FCS.
const MIN_FRAME: usize = 60;
/// Long-lived database connections of the pool.
const DB_POOL: u32 = 32;

fn main() -> ExitCode {
    let usage = "usage: gen_pcap --out FILE [--packets N] [--seconds S] [--seed SEED]";
    let mut packets = 5_000_000u64;
    let mut seconds = 300u64;
    let mut seed = 1u64;
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        let ok = match (a.as_str(), value) {
            ("--packets", Some(v)) => v.parse().map(|v| packets = v).is_ok(),
            ("--seconds", Some(v)) => v.parse().map(|v| seconds = v).is_ok(),
            ("--seed", Some(v)) => v.parse().map(|v| seed = v).is_ok(),
            ("--out", Some(v)) => {
                out = Some(PathBuf::from(v));
                true
            }
            _ => false,
        };
        if !ok {
            eprintln!("{usage}");
            return ExitCode::from(64);
        }
    }
    let Some(out) = out else {
        eprintln!("{usage}");
        return ExitCode::from(64);
    };
    if seconds == 0 {
        eprintln!("{usage} (--seconds must be at least 1)");
        return ExitCode::from(64);
    }
    let traffic = Traffic::generate(packets, seconds, seed);
    match traffic.write(&out) {
        Ok(stats) => {
            eprintln!(
                "{}: {} packets, {} sessions, {} flows, peak {} flows in one {INTERVAL_SECS} s interval, {} bytes",
                out.display(),
                stats.packets,
                stats.sessions,
                stats.flows,
                stats.peak_interval_flows,
                stats.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}

/// Transport of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    Icmp,
    /// An ARP request from the router (one frame, not IP).
    Arp,
}

/// One conversation between the host and a peer.
#[derive(Debug, Clone, Copy)]
struct Session {
    proto: Proto,
    /// The host's address (same family as `remote`).
    local: IpAddr,
    remote: IpAddr,
    local_port: u16,
    remote_port: u16,
}

/// One packet to write: when, of which session, which way, TCP flags, payload length.
#[derive(Debug, Clone, Copy)]
struct Pkt {
    /// Microseconds since the capture start.
    t_us: u64,
    session: u32,
    payload: u16,
    flags: u8,
    egress: bool,
}

#[derive(Debug, Default)]
struct Stats {
    packets: u64,
    sessions: u64,
    flows: u64,
    intervals: u64,
    peak_interval_flows: u64,
    bytes: u64,
}

/// All sessions and their packets.
struct Traffic {
    rng: SplitMix64,
    span_us: u64,
    sessions: Vec<Session>,
    packets: Vec<Pkt>,
    /// Popular internet clients (returning visitors, NAT gateways).
    regulars: Vec<IpAddr>,
    /// Factor on the database pool's pauses between queries: 1 from 5M packets up, more
    /// for smaller captures, so that the pool stays a small part of the traffic.
    stretch: u64,
}

impl Traffic {
    fn generate(packets: u64, seconds: u64, seed: u64) -> Traffic {
        let mut rng = SplitMix64::new(seed);
        let regulars = (0..20_000)
            .map(|i| {
                if i % 10 == 0 {
                    IpAddr::V6(public_v6(&mut rng))
                } else {
                    IpAddr::V4(public_v4(&mut rng))
                }
            })
            .collect();
        let mut t = Traffic {
            rng,
            span_us: seconds * 1_000_000,
            sessions: Vec::new(),
            packets: Vec::with_capacity(usize::try_from(packets).unwrap_or(0) + 100_000),
            regulars,
            stretch: (5_000_000 / packets.max(1)).max(1),
        };
        t.db_pool();
        t.time_sync();
        while (t.packets.len() as u64) < packets {
            let start = t.rng.below(t.span_us);
            match t.rng.below(1000) {
                0..=359 => t.web(start, 443),
                360..=409 => t.web(start, 80),
                410..=579 => t.dns(start),
                580..=619 => t.quic(start),
                620..=719 => t.ping(start),
                720..=998 => t.scan(start),
                _ => t.arp(start),
            }
        }
        // Time order; a session's packets have distinct times, so (time, session) is unique.
        t.packets.sort_unstable_by_key(|p| (p.t_us, p.session));
        t
    }

    fn add_session(&mut self, s: Session) -> u32 {
        self.sessions.push(s);
        u32::try_from(self.sessions.len() - 1).unwrap_or(u32::MAX)
    }

    /// Adds a packet if it falls inside the capture.
    fn push(&mut self, session: u32, t_us: u64, egress: bool, flags: u8, payload: u16) {
        if t_us < self.span_us {
            self.packets.push(Pkt {
                t_us,
                session,
                payload,
                flags,
                egress,
            });
        }
    }

    /// A payload length in `lo..=hi`.
    fn len(&mut self, lo: u64, hi: u64) -> u16 {
        u16::try_from(self.rng.range(lo, hi)).unwrap_or(u16::MAX)
    }

    fn ephemeral(&mut self) -> u16 {
        u16::try_from(self.rng.range(32_768, 60_999)).unwrap_or(40_000)
    }

    /// An internet client: a regular (skewed popularity) or a one-off visitor.
    fn client(&mut self) -> IpAddr {
        if self.rng.chance(0.4) {
            let i = self.rng.skewed(self.regulars.len());
            self.regulars[i]
        } else if self.rng.chance(0.1) {
            IpAddr::V6(public_v6(&mut self.rng))
        } else {
            IpAddr::V4(public_v4(&mut self.rng))
        }
    }

    /// Round-trip time to an internet peer, in µs: 5 to 300 ms, most below 60 ms.
    fn internet_rtt(&mut self) -> u64 {
        5_000 + self.rng.pareto(1.5, 60).saturating_mul(5_000)
    }

    /// TCP segment payload limit for the session's family.
    fn mss(s: &Session) -> u16 {
        if s.remote.is_ipv6() {
            MSS_V4 - 20
        } else {
            MSS_V4
        }
    }

    /// `bytes` of data sent in full segments at `t`, 12 µs apart, acknowledged every
    /// second segment by the receiver one RTT later. Returns the time of the last packet.
    fn transfer(&mut self, id: u32, t: u64, from_host: bool, bytes: u64, rtt: u64) -> u64 {
        let s = self.sessions[id as usize];
        let mss = u64::from(Self::mss(&s));
        let segments = bytes.div_ceil(mss).max(1);
        let mut last = t;
        for i in 0..segments {
            let len = if i + 1 == segments {
                bytes - i * mss
            } else {
                mss
            };
            let at = t + i * 12;
            let flags = if i + 1 == segments {
                TCP_ACK | TCP_PSH
            } else {
                TCP_ACK
            };
            self.push(id, at, from_host, flags, u16::try_from(len).unwrap_or(0));
            if i % 2 == 1 || i + 1 == segments {
                self.push(id, at + rtt, !from_host, TCP_ACK, 0);
                last = last.max(at + rtt);
            }
        }
        last
    }

    /// An HTTPS or HTTP session from an internet client: handshake, a few requests with
    /// heavy-tailed responses, then a FIN teardown (or a reset).
    fn web(&mut self, start: u64, port: u16) {
        let remote = self.client();
        let local = match remote {
            IpAddr::V4(_) => IpAddr::V4(HOST_V4),
            IpAddr::V6(_) => IpAddr::V6(HOST_V6),
        };
        let remote_port = self.ephemeral();
        let id = self.add_session(Session {
            proto: Proto::Tcp,
            local,
            remote,
            local_port: port,
            remote_port,
        });
        let rtt = self.internet_rtt();
        let mut t = start;
        self.push(id, t, false, TCP_SYN, 0);
        self.push(id, t + 40, true, TCP_SYN | TCP_ACK, 0);
        t += rtt;
        self.push(id, t, false, TCP_ACK, 0);
        if port == 443 {
            // TLS: ClientHello, server flight, client Finished.
            let len = self.len(250, 600);
            self.push(id, t + 5, false, TCP_ACK | TCP_PSH, len);
            let flight = self.rng.range(2_500, 5_000);
            t = self.transfer(id, t + 300, true, flight, rtt);
            let len = self.len(60, 120);
            self.push(id, t + 5, false, TCP_ACK | TCP_PSH, len);
            t += 10;
        }
        let requests = self.rng.pareto(1.3, 40);
        for _ in 0..requests {
            let think = if self.rng.chance(0.7) {
                self.rng.below(200_000)
            } else {
                self.rng.below(8_000_000)
            };
            t += think;
            let len = self.len(80, 900);
            self.push(id, t, false, TCP_ACK | TCP_PSH, len);
            let response = if self.rng.chance(0.6) {
                self.rng.range(100, 1_400)
            } else {
                // Pages and images: a heavy tail up to ~1 MB.
                self.rng.pareto(1.2, 700).saturating_mul(1_500)
            };
            let served = t + rtt / 2 + self.rng.range(200, 20_000);
            t = self.transfer(id, served, true, response, rtt);
        }
        t += self.rng.below(2_000_000);
        if self.rng.chance(0.1) {
            self.push(id, t, false, TCP_RST | TCP_ACK, 0);
        } else {
            self.push(id, t, false, TCP_FIN | TCP_ACK, 0);
            self.push(id, t + 60, true, TCP_FIN | TCP_ACK, 0);
            self.push(id, t + rtt, false, TCP_ACK, 0);
        }
    }

    /// A DNS lookup to the VPC resolver (query and answer; 2% get no answer and retry).
    fn dns(&mut self, start: u64) {
        let local_port = self.ephemeral();
        let id = self.add_session(Session {
            proto: Proto::Udp,
            local: IpAddr::V4(HOST_V4),
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            local_port,
            remote_port: 53,
        });
        let query = self.len(28, 70);
        self.push(id, start, true, 0, query);
        if self.rng.chance(0.02) {
            self.push(id, start + 1_000_000, true, 0, query);
        }
        let answer = self.len(60, 480);
        let delay = self.rng.range(300, 3_000);
        self.push(id, start + delay, false, 0, answer);
    }

    /// A QUIC (HTTP/3) connection: datagrams both ways, the server's mostly full size.
    fn quic(&mut self, start: u64) {
        let remote = self.client();
        let local = match remote {
            IpAddr::V4(_) => IpAddr::V4(HOST_V4),
            IpAddr::V6(_) => IpAddr::V6(HOST_V6),
        };
        let remote_port = self.ephemeral();
        let id = self.add_session(Session {
            proto: Proto::Udp,
            local,
            remote,
            local_port: 443,
            remote_port,
        });
        let rtt = self.internet_rtt();
        let mut t = start;
        self.push(id, t, false, 0, 1_200);
        let rounds = self.rng.pareto(1.1, 400);
        for _ in 0..rounds {
            let n = self.rng.range(1, 8);
            for k in 0..n {
                let len = self.len(900, 1_350);
                self.push(id, t + 50 + k * 15, true, 0, len);
            }
            t += rtt;
            let len = self.len(30, 200);
            self.push(id, t, false, 0, len);
            t += self.rng.below(300_000);
        }
    }

    /// A monitor pinging the host a few times, one second apart.
    fn ping(&mut self, start: u64) {
        let remote = self.client();
        let local = match remote {
            IpAddr::V4(_) => IpAddr::V4(HOST_V4),
            IpAddr::V6(_) => IpAddr::V6(HOST_V6),
        };
        let id = self.add_session(Session {
            proto: Proto::Icmp,
            local,
            remote,
            local_port: 0,
            remote_port: 0,
        });
        let payload = if self.rng.chance(0.8) { 56 } else { 1_400 };
        for k in 0..self.rng.range(1, 5) {
            let t = start + k * 1_000_000;
            self.push(id, t, false, 0, payload);
            self.push(id, t + 30, true, 0, payload);
        }
    }

    /// A scanner probing a port: a SYN, answered by a reset (closed port) or by nothing
    /// (filtered), sometimes retried.
    fn scan(&mut self, start: u64) {
        let remote = IpAddr::V4(public_v4(&mut self.rng));
        let local_port = u16::try_from(self.rng.range(1, 65_535)).unwrap_or(1);
        let remote_port = self.ephemeral();
        let id = self.add_session(Session {
            proto: Proto::Tcp,
            local: IpAddr::V4(HOST_V4),
            remote,
            local_port,
            remote_port,
        });
        let answered = self.rng.chance(0.7);
        let tries = if answered { 1 } else { self.rng.range(1, 2) };
        for k in 0..tries {
            let t = start + k * 1_000_000;
            self.push(id, t, false, TCP_SYN, 0);
            if answered {
                self.push(id, t + 25, true, TCP_RST | TCP_ACK, 0);
            }
        }
    }

    /// The router asking who has the host's address.
    fn arp(&mut self, start: u64) {
        let id = self.add_session(Session {
            proto: Proto::Arp,
            local: IpAddr::V4(HOST_V4),
            remote: IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
            local_port: 0,
            remote_port: 0,
        });
        self.push(id, start, false, 0, 28);
    }

    /// Long-lived connections to the database, busy over the whole capture.
    fn db_pool(&mut self) {
        for i in 0..DB_POOL {
            let remote = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 20 + (i % 4) as u8));
            let local_port = self.ephemeral();
            let id = self.add_session(Session {
                proto: Proto::Tcp,
                local: IpAddr::V4(HOST_V4),
                remote,
                local_port,
                remote_port: 5432,
            });
            let rtt = self.rng.range(150, 600);
            let mut t = self.rng.below(100_000);
            while t < self.span_us {
                let len = self.len(60, 400);
                self.push(id, t, true, TCP_ACK | TCP_PSH, len);
                let rows = self.rng.pareto(1.4, 200).saturating_mul(120);
                t = self.transfer(id, t + rtt, false, rows, rtt);
                t += self.rng.range(1_000, 200_000) * self.stretch;
            }
        }
    }

    /// NTP to the link-local time service every 16 s.
    fn time_sync(&mut self) {
        let id = self.add_session(Session {
            proto: Proto::Udp,
            local: IpAddr::V4(HOST_V4),
            remote: IpAddr::V4(Ipv4Addr::new(169, 254, 169, 123)),
            local_port: 123,
            remote_port: 123,
        });
        let mut t = self.rng.below(16_000_000);
        while t < self.span_us {
            self.push(id, t, true, 0, 48);
            self.push(id, t + 400, false, 0, 48);
            t += 16_000_000;
        }
    }

    /// Writes the capture and `<out>.stats`.
    fn write(&self, out: &Path) -> Result<Stats, Box<dyn std::error::Error>> {
        let mut w = PcapWriter::create_with(out, Resolution::Micro, DLT_EN10MB)?;
        let start = Duration::from_secs(FIRST_WINDOW_START);
        let mut stats = Stats {
            packets: self.packets.len() as u64,
            sessions: self.sessions.len() as u64,
            ..Stats::default()
        };
        let mut flows = HashSet::new();
        let mut interval_flows = HashSet::new();
        let mut interval = None;
        for p in &self.packets {
            let s = &self.sessions[p.session as usize];
            let frame = build_frame(s, p);
            stats.bytes += frame.len() as u64;
            w.write(start + Duration::from_micros(p.t_us), &frame)?;
            if s.proto == Proto::Arp {
                continue;
            }
            let key = flow_key(s, p.egress);
            let this = p.t_us / 1_000_000 / INTERVAL_SECS;
            if interval != Some(this) {
                stats.peak_interval_flows =
                    stats.peak_interval_flows.max(interval_flows.len() as u64);
                interval_flows.clear();
                interval = Some(this);
                stats.intervals += 1;
            }
            interval_flows.insert(key);
            flows.insert(key);
        }
        stats.peak_interval_flows = stats.peak_interval_flows.max(interval_flows.len() as u64);
        stats.flows = flows.len() as u64;
        w.finish()?;
        let mut side = out.as_os_str().to_owned();
        side.push(".stats");
        let mut f = std::fs::File::create(PathBuf::from(side))?;
        writeln!(f, "packets {}", stats.packets)?;
        writeln!(f, "sessions {}", stats.sessions)?;
        writeln!(f, "flows {}", stats.flows)?;
        writeln!(f, "intervals {}", stats.intervals)?;
        writeln!(f, "peak_interval_flows {}", stats.peak_interval_flows)?;
        writeln!(f, "bytes {}", stats.bytes)?;
        Ok(stats)
    }
}

/// The agent's flow key of a session's packet: direction, protocol, addresses, ports
/// (ICMP has ports 0).
fn flow_key(s: &Session, egress: bool) -> (bool, u8, IpAddr, IpAddr, u16, u16) {
    let proto = protocol_number(s);
    let (lp, rp) = (s.local_port, s.remote_port);
    if egress {
        (true, proto, s.local, s.remote, lp, rp)
    } else {
        (false, proto, s.remote, s.local, rp, lp)
    }
}

fn protocol_number(s: &Session) -> u8 {
    match (s.proto, s.remote) {
        (Proto::Tcp, _) => frames::PROTO_TCP,
        (Proto::Udp, _) => frames::PROTO_UDP,
        (Proto::Icmp, IpAddr::V4(_)) => frames::PROTO_ICMP,
        (Proto::Icmp, IpAddr::V6(_)) => frames::PROTO_ICMPV6,
        (Proto::Arp, _) => 0,
    }
}

/// The Ethernet frame of packet `p` of session `s`, padded to the 60-byte minimum.
fn build_frame(s: &Session, p: &Pkt) -> Vec<u8> {
    let (src_mac, dst_mac) = if p.egress {
        (HOST_MAC, GW_MAC)
    } else {
        (GW_MAC, HOST_MAC)
    };
    let (src, dst, sport, dport) = if p.egress {
        (s.local, s.remote, s.local_port, s.remote_port)
    } else {
        (s.remote, s.local, s.remote_port, s.local_port)
    };
    let len = usize::from(p.payload);
    let mut frame = match (s.proto, src, dst) {
        (Proto::Arp, _, _) => {
            let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
            arp.extend_from_slice(&GW_MAC);
            arp.extend_from_slice(&[10, 0, 1, 1]);
            arp.extend_from_slice(&[0; 6]);
            arp.extend_from_slice(&HOST_V4.octets());
            frames::ethernet(GW_MAC, [0xff; 6], frames::ETHERTYPE_ARP, &arp)
        }
        (Proto::Tcp, IpAddr::V4(a), IpAddr::V4(b)) => {
            frames::tcp_v4(src_mac, dst_mac, a, b, sport, dport, p.flags, len)
        }
        (Proto::Tcp, IpAddr::V6(a), IpAddr::V6(b)) => {
            frames::tcp_v6(src_mac, dst_mac, a, b, sport, dport, p.flags, len)
        }
        (Proto::Udp, IpAddr::V4(a), IpAddr::V4(b)) => {
            frames::udp_v4(src_mac, dst_mac, a, b, sport, dport, len)
        }
        (Proto::Udp, IpAddr::V6(a), IpAddr::V6(b)) => {
            frames::udp_v6(src_mac, dst_mac, a, b, sport, dport, len)
        }
        // Inbound pings: the request comes in, the reply goes out.
        (Proto::Icmp, IpAddr::V4(a), IpAddr::V4(b)) => {
            frames::icmp_v4(src_mac, dst_mac, a, b, !p.egress, len)
        }
        (Proto::Icmp, IpAddr::V6(a), IpAddr::V6(b)) => {
            frames::icmp_v6(src_mac, dst_mac, a, b, !p.egress, len)
        }
        // A session's addresses always share a family.
        _ => Vec::new(),
    };
    if frame.len() < MIN_FRAME {
        frame.resize(MIN_FRAME, 0);
    }
    frame
}

/// A random public IPv4 address (no private, loopback, multicast or reserved ranges).
fn public_v4(rng: &mut SplitMix64) -> Ipv4Addr {
    loop {
        let a = Ipv4Addr::from(u32::try_from(rng.below(1 << 32)).unwrap_or(0));
        let o = a.octets();
        let reserved = a.is_private()
            || a.is_loopback()
            || a.is_link_local()
            || a.is_multicast()
            || a.is_broadcast()
            || a.is_documentation()
            || o[0] == 0
            || o[0] >= 224
            || (o[0] == 100 && (64..128).contains(&o[1]));
        if !reserved {
            return a;
        }
    }
}

/// A random global unicast IPv6 address under 2000::/3.
fn public_v6(rng: &mut SplitMix64) -> Ipv6Addr {
    let hi = (rng.next_u64() & 0x1fff_ffff_ffff_ffff) | 0x2000_0000_0000_0000;
    let lo = rng.next_u64();
    Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo))
}
