//! `flowlog-benches`: deterministic, realistic VPC flow records for the encoder
//! benchmarks (`benches/encode.rs`) and the `encode_report` binary.
//!
//! [`default_format_records`] and [`v5_records`] return the same traffic for the same
//! seed; the first fills only the 14 fields of the AWS default format, the second also
//! every field of [`V5_FORMAT`]. The output depends only on `(n, seed)`: no clock, no
//! thread, no external randomness ([`SplitMix64`] is the only source of entropy).
//!
//! # The simulated VPC
//!
//! - Three accounts in `us-east-1`, one VPC each (`10.<account>.0.0/16`, an IPv6 `/56`
//!   under `2600:1f18::/32`), 16 network interfaces in total spread over three AZs.
//!   Account, VPC, subnet, instance, interface, region and AZ ids are built once and
//!   shared as [`Text`] (`Arc<str>`) by every record, as an agent would stamp them.
//! - Interfaces have roles: web servers (443/80 from the internet), application servers
//!   (clients of internal services, of public HTTPS APIs and of S3/DynamoDB), databases
//!   (5432/3306/6379 from inside the VPC), a bastion (22) and a NAT gateway (no
//!   instance; `pkt-srcaddr`/`pkt-dstaddr` carry the original internal address).
//! - Peers: hosts of the same VPC (`traffic-path` 1) and of the peered VPCs (4), a
//!   Zipf-like skewed pool of public servers (some in AWS ranges, tagged `S3`,
//!   `DYNAMODB`, `AMAZON`, `EC2`, `CLOUDFRONT`, `ROUTE53_HEALTHCHECKS` in
//!   `pkt-*-aws-service`; S3/DynamoDB go through the gateway endpoint, path 7, other
//!   public traffic through the internet gateway, path 8), returning and one-off
//!   internet clients, and internet scanners.
//! - About 5% of the conversations are IPv6 (`type` `IPv6`, ICMPv6 is protocol 58).
//! - Server ports are well-known (443, 80, 22, 53, 123, 5432, 3306, 6379, 8080, 9092,
//!   2049, …), client ports ephemeral (32768–60999). Protocols: mostly TCP (6), UDP (17)
//!   for DNS/NTP, some ICMP (1).
//! - A conversation gives two records, one per direction (`flow-direction` `ingress` /
//!   `egress` as seen from the interface; `traffic-path` only on egress), except for
//!   about 8% one-way flows. TCP flags follow the phase of the connection in the
//!   interval (SYN+FIN 3 / 19, opening 2 / 18, mid-connection 0, closing 1, reset).
//! - `packets` is Pareto-distributed (α ≈ 1.1, capped at 2 M); `bytes` is packets times
//!   a per-direction packet size (requests small, responses up to 1448 bytes), never
//!   below the header size.
//! - Time: 60 s aggregation windows starting at 2024-01-01 00:00:00 UTC; every 2,500
//!   records the window moves on by 60 s. `start` is inside the window, `end` is at or
//!   after `start` and at most 60 s after the window start.
//! - About 2% of the rows are `REJECT` (inbound scans of 22, 23, 3389, 445, … with one to
//!   three SYNs) and about 1% are `NODATA` rows (account, interface, times; in v5 also
//!   the interface's VPC, subnet, instance, region and AZ).
//! - `sublocation-type` and `sublocation-id` are absent (`-`), as for any interface
//!   outside Wavelength/Outposts/Local Zones.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowlog_formats::{Action, FlowDirection, FlowRecord, LogStatus, Text, TrafficType};

/// The AWS version 5 format with all 29 fields, in the order of AWS's documentation.
pub const V5_FORMAT: &str = "${version} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${start} ${end} ${type} ${packets} ${bytes} ${account-id} ${vpc-id} ${subnet-id} ${instance-id} ${interface-id} ${region} ${az-id} ${sublocation-type} ${sublocation-id} ${action} ${tcp-flags} ${pkt-srcaddr} ${pkt-dstaddr} ${pkt-src-aws-service} ${pkt-dst-aws-service} ${traffic-path} ${flow-direction} ${log-status}";

/// Start of the first aggregation window: 2024-01-01T00:00:00Z.
pub const FIRST_WINDOW_START: u64 = 1_704_067_200;

/// Records per 60 s aggregation window.
pub const RECORDS_PER_WINDOW: usize = 2_500;

/// Returns `n` records with the 14 fields of the AWS default format set (the other fields
/// are absent), deterministic for `seed`.
pub fn default_format_records(n: usize, seed: u64) -> Vec<FlowRecord> {
    Generator::new(seed, false).generate(n)
}

/// Returns `n` records with every field of [`V5_FORMAT`] set where it applies,
/// deterministic for `seed`. Same traffic as [`default_format_records`] for the same seed.
pub fn v5_records(n: usize, seed: u64) -> Vec<FlowRecord> {
    Generator::new(seed, true).generate(n)
}

/// SplitMix64: a tiny, fast, deterministic 64-bit PRNG (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Seeds the generator; every seed (including 0) is fine.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a value in `0..n` (`0` if `n` is 0), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Returns a value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Returns a uniform float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Returns true with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Returns an index in `0..n` skewed towards 0 (a cheap Zipf-like popularity).
    pub fn skewed(&mut self, n: usize) -> usize {
        let u = self.unit();
        ((u * u * u) * n as f64) as usize
    }

    /// Returns a Pareto-distributed integer `≥ 1` with shape `alpha`, capped at `cap`.
    pub fn pareto(&mut self, alpha: f64, cap: u64) -> u64 {
        let u = 1.0 - self.unit(); // (0, 1]
        let x = u.powf(-1.0 / alpha);
        if x >= cap as f64 { cap } else { x as u64 }
    }

    /// Picks one item by weight.
    pub fn weighted<T: Copy>(&mut self, items: &[(u32, T)]) -> T {
        let total: u32 = items.iter().map(|(w, _)| w).sum();
        let mut pick = self.below(u64::from(total)) as u32;
        for (w, item) in items {
            if pick < *w {
                return *item;
            }
            pick -= w;
        }
        items[items.len() - 1].1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Web,
    App,
    Db(u16),
    Bastion,
    Nat,
}

#[derive(Debug)]
struct Eni {
    account: usize,
    account_id: Text,
    interface_id: Text,
    vpc_id: Text,
    subnet_id: Text,
    instance_id: Option<Text>,
    az_id: Text,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    role: Role,
}

#[derive(Debug, Clone)]
struct PublicServer {
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    service: Option<Text>,
    /// Reached through the S3/DynamoDB gateway endpoint (path 7) rather than the IGW (8).
    gateway_endpoint: bool,
}

/// The other end of a conversation, as seen from the interface.
#[derive(Debug, Clone)]
struct Peer {
    addr: IpAddr,
    service: Option<Text>,
    /// `traffic-path` of egress records towards this peer.
    path: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Complete,
    Opening,
    Mid,
    Closing,
    Reset,
}

/// One conversation between an interface and a peer.
#[derive(Debug)]
struct Conversation {
    eni: usize,
    peer: Peer,
    /// The peer opened the conversation (the interface is the server).
    inbound: bool,
    protocol: u8,
    server_port: u16,
    client_port: u16,
    /// NAT gateway: the internal host behind the interface's address.
    behind_nat: Option<IpAddr>,
    /// Packet sizes (bytes) of the request and response directions.
    request_size: (u64, u64),
    response_size: (u64, u64),
    /// Maximum packets of the request direction.
    packet_cap: u64,
    one_way: bool,
}

#[derive(Debug)]
struct Generator {
    rng: SplitMix64,
    v5: bool,
    region: Text,
    enis: Vec<Eni>,
    /// Per account: hosts of its VPC that are not among `enis`.
    internal: Vec<Vec<Ipv4Addr>>,
    /// Per account: its DNS forwarders.
    dns: Vec<Vec<Ipv4Addr>>,
    public_servers: Vec<PublicServer>,
    returning_clients: Vec<Ipv4Addr>,
    admins: Vec<Ipv4Addr>,
    services: Vec<Text>,
    out: Vec<FlowRecord>,
}

const ACCOUNTS: [&str; 3] = ["123456789010", "210987654321", "555566667777"];
const AZS: [&str; 3] = ["use1-az1", "use1-az2", "use1-az4"];
/// Roles of the 16 interfaces and the account each belongs to.
const ENI_LAYOUT: [(usize, Role); 16] = [
    (0, Role::Web),
    (0, Role::Web),
    (0, Role::Web),
    (0, Role::App),
    (0, Role::App),
    (0, Role::App),
    (0, Role::Db(5432)),
    (0, Role::Nat),
    (1, Role::App),
    (1, Role::App),
    (1, Role::Db(3306)),
    (1, Role::Db(6379)),
    (1, Role::Bastion),
    (2, Role::Web),
    (2, Role::App),
    (2, Role::Db(5432)),
];
/// Two first octets of public server ranges, with the AWS service they belong to.
const PUBLIC_RANGES: [([u8; 2], Option<&str>, bool); 22] = [
    ([52, 216], Some("S3"), true),
    ([3, 5], Some("S3"), true),
    ([52, 94], Some("DYNAMODB"), true),
    ([54, 239], Some("AMAZON"), false),
    ([3, 218], Some("EC2"), false),
    ([54, 80], Some("EC2"), false),
    ([13, 32], Some("CLOUDFRONT"), false),
    ([54, 243], Some("ROUTE53_HEALTHCHECKS"), false),
    ([142, 250], None, false),
    ([172, 217], None, false),
    ([104, 16], None, false),
    ([151, 101], None, false),
    ([140, 82], None, false),
    ([185, 199], None, false),
    ([20, 42], None, false),
    ([23, 45], None, false),
    ([31, 13], None, false),
    ([93, 184], None, false),
    ([81, 2], None, false),
    ([45, 33], None, false),
    ([199, 232], None, false),
    ([35, 186], None, false),
];
const V6_PREFIXES: [[u16; 2]; 6] = [
    [0x2606, 0x4700],
    [0x2a00, 0x1450],
    [0x2600, 0x9000],
    [0x2001, 0x4860],
    [0x2a03, 0x2880],
    [0x2400, 0xcb00],
];
const SCAN_PORTS: [u16; 14] = [
    22, 23, 3389, 445, 1433, 8080, 5900, 80, 443, 8443, 6379, 9200, 2375, 25,
];
const SERVICE_NAMES: [&str; 6] = [
    "S3",
    "DYNAMODB",
    "AMAZON",
    "EC2",
    "CLOUDFRONT",
    "ROUTE53_HEALTHCHECKS",
];

fn aws_id(rng: &mut SplitMix64, prefix: &str) -> Text {
    // New-style ids: 17 lowercase hex digits, usually starting with 0.
    Text::from(format!("{prefix}-0{:016x}", rng.next_u64()))
}

/// Returns a random globally routable IPv4 address.
fn random_public_v4(rng: &mut SplitMix64) -> Ipv4Addr {
    loop {
        let ip = Ipv4Addr::from(rng.next_u64() as u32);
        let [a, b, _, _] = ip.octets();
        let reserved = a == 0
            || a == 10
            || a == 127
            || a >= 224
            || (a == 100 && (64..128).contains(&b))
            || (a == 169 && b == 254)
            || (a == 172 && (16..32).contains(&b))
            || (a == 192 && b == 168)
            || (a == 198 && (18..20).contains(&b));
        if !reserved {
            return ip;
        }
    }
}

fn random_public_v6(rng: &mut SplitMix64) -> Ipv6Addr {
    const CLIENT_PREFIXES: [u16; 5] = [0x2001, 0x2a01, 0x2600, 0x2804, 0x2409];
    let p = CLIENT_PREFIXES[rng.below(CLIENT_PREFIXES.len() as u64) as usize];
    let r = rng.next_u64();
    let s = rng.next_u64();
    Ipv6Addr::new(
        p,
        r as u16,
        (r >> 16) as u16,
        (r >> 32) as u16,
        s as u16,
        (s >> 16) as u16,
        (s >> 32) as u16,
        (s >> 48) as u16,
    )
}

impl Generator {
    fn new(seed: u64, v5: bool) -> Self {
        let mut rng = SplitMix64::new(seed);
        let region = Text::from("us-east-1");
        let accounts: Vec<Text> = ACCOUNTS.iter().map(|a| Text::from(*a)).collect();
        let azs: Vec<Text> = AZS.iter().map(|a| Text::from(*a)).collect();
        let vpcs: Vec<Text> = (0..ACCOUNTS.len())
            .map(|_| aws_id(&mut rng, "vpc"))
            .collect();
        let vpc_v6: Vec<u16> = (0..ACCOUNTS.len()).map(|_| rng.next_u64() as u16).collect();
        // One subnet per account and AZ.
        let subnets: Vec<Vec<Text>> = (0..ACCOUNTS.len())
            .map(|_| (0..AZS.len()).map(|_| aws_id(&mut rng, "subnet")).collect())
            .collect();

        let mut enis = Vec::with_capacity(ENI_LAYOUT.len());
        for (i, (account, role)) in ENI_LAYOUT.iter().copied().enumerate() {
            let az = i % AZS.len();
            let v4 = Ipv4Addr::new(
                10,
                account as u8,
                (az * 16) as u8 + rng.below(4) as u8,
                rng.range(4, 250) as u8,
            );
            let r = rng.next_u64();
            let v6 = Ipv6Addr::new(
                0x2600,
                0x1f18,
                vpc_v6[account],
                (az as u16) << 8,
                r as u16,
                (r >> 16) as u16,
                (r >> 32) as u16,
                (r >> 48) as u16,
            );
            let instance_id = (role != Role::Nat).then(|| aws_id(&mut rng, "i"));
            enis.push(Eni {
                account,
                account_id: accounts[account].clone(),
                interface_id: aws_id(&mut rng, "eni"),
                vpc_id: vpcs[account].clone(),
                subnet_id: subnets[account][az].clone(),
                instance_id,
                az_id: azs[az].clone(),
                v4,
                v6,
                role,
            });
        }

        let internal = (0..ACCOUNTS.len())
            .map(|account| {
                (0..200)
                    .map(|_| {
                        Ipv4Addr::new(
                            10,
                            account as u8,
                            (rng.below(3) * 16 + rng.below(4)) as u8,
                            rng.range(4, 250) as u8,
                        )
                    })
                    .collect()
            })
            .collect();
        let dns = (0..ACCOUNTS.len())
            .map(|account| {
                vec![
                    Ipv4Addr::new(10, account as u8, 0, 10),
                    Ipv4Addr::new(10, account as u8, 16, 10),
                ]
            })
            .collect();

        let services: Vec<Text> = SERVICE_NAMES.iter().map(|s| Text::from(*s)).collect();
        let public_servers = (0..3000)
            .map(|_| {
                let (prefix, service, gateway_endpoint) =
                    PUBLIC_RANGES[rng.skewed(PUBLIC_RANGES.len() * 3) % PUBLIC_RANGES.len()];
                let v4 = Ipv4Addr::new(
                    prefix[0],
                    prefix[1],
                    rng.below(256) as u8,
                    rng.range(1, 254) as u8,
                );
                let v6p = V6_PREFIXES[rng.below(V6_PREFIXES.len() as u64) as usize];
                let r = rng.next_u64();
                let v6 = Ipv6Addr::new(
                    v6p[0],
                    v6p[1],
                    r as u16 & 0x0fff,
                    0,
                    0,
                    0,
                    (r >> 16) as u16 & 0xff,
                    (r >> 32) as u16,
                );
                let service = service.and_then(|s| services.iter().find(|t| &***t == s).cloned());
                PublicServer {
                    v4,
                    v6,
                    service,
                    gateway_endpoint,
                }
            })
            .collect();
        let returning_clients = (0..20_000).map(|_| random_public_v4(&mut rng)).collect();
        let admins = (0..6).map(|_| random_public_v4(&mut rng)).collect();

        Generator {
            rng,
            v5,
            region,
            enis,
            internal,
            dns,
            public_servers,
            returning_clients,
            admins,
            services,
            out: Vec::new(),
        }
    }

    fn generate(mut self, n: usize) -> Vec<FlowRecord> {
        // Per draw: NODATA 1.9%, REJECT 3.7%, otherwise a conversation of ~1.92 rows, so
        // that about 1% of the rows are NODATA and 2% REJECT.
        self.out = Vec::with_capacity(n + 1);
        while self.out.len() < n {
            let u = self.rng.unit();
            if u < 0.019 {
                self.no_data();
            } else if u < 0.019 + 0.037 {
                self.reject();
            } else {
                let c = self.conversation();
                self.emit(&c);
            }
        }
        self.out.truncate(n);
        self.out
    }

    fn window_start(&self) -> u64 {
        FIRST_WINDOW_START + 60 * (self.out.len() / RECORDS_PER_WINDOW) as u64
    }

    fn pick_eni(&mut self) -> usize {
        self.rng.skewed(self.enis.len() * 2) % self.enis.len()
    }

    fn ephemeral(&mut self) -> u16 {
        self.rng.range(32768, 60999) as u16
    }

    /// A record stamped with the interface's metadata.
    fn base_record(&self, eni: usize) -> FlowRecord {
        let e = &self.enis[eni];
        let mut r = FlowRecord {
            account_id: Some(e.account_id.clone()),
            interface_id: Some(e.interface_id.clone()),
            ..FlowRecord::default()
        };
        if self.v5 {
            r.vpc_id = Some(e.vpc_id.clone());
            r.subnet_id = Some(e.subnet_id.clone());
            r.instance_id = e.instance_id.clone();
            r.region = Some(self.region.clone());
            r.az_id = Some(e.az_id.clone());
        }
        r
    }

    fn no_data(&mut self) {
        let eni = self.rng.below(self.enis.len() as u64) as usize;
        let start = self.window_start() + self.rng.below(3);
        let mut r = self.base_record(eni);
        r.start = Some(start);
        r.end = Some(start + 60);
        r.log_status = Some(LogStatus::NoData);
        self.out.push(r);
    }

    fn reject(&mut self) {
        let eni = self.pick_eni();
        let v6 = self.rng.chance(0.05);
        let scanner = if v6 {
            IpAddr::V6(random_public_v6(&mut self.rng))
        } else {
            IpAddr::V4(random_public_v4(&mut self.rng))
        };
        let local = if v6 {
            IpAddr::V6(self.enis[eni].v6)
        } else {
            IpAddr::V4(self.enis[eni].v4)
        };
        let tcp = self.rng.chance(0.9);
        let dstport = if self.rng.chance(0.8) {
            SCAN_PORTS[self.rng.below(SCAN_PORTS.len() as u64) as usize]
        } else {
            self.rng.range(1, 65535) as u16
        };
        let packets = self.rng.weighted(&[(70, 1), (20, 2), (10, 3)]);
        let header = if v6 { 60 } else { 40 };
        let per_packet = if tcp { header + 4 } else { header - 12 };
        let ws = self.window_start();
        let start = ws + self.rng.below(60);
        let mut r = self.base_record(eni);
        r.srcaddr = Some(scanner);
        r.dstaddr = Some(local);
        r.srcport = Some(self.rng.range(1024, 65535) as u16);
        r.dstport = Some(dstport);
        r.protocol = Some(if tcp { 6 } else { 17 });
        r.packets = Some(packets);
        r.bytes = Some(packets * per_packet);
        r.start = Some(start);
        r.end = Some((start + packets - 1).min(ws + 60));
        r.action = Some(Action::Reject);
        r.log_status = Some(LogStatus::Ok);
        if self.v5 {
            r.traffic_type = Some(if v6 {
                TrafficType::IPv6
            } else {
                TrafficType::IPv4
            });
            r.tcp_flags = Some(if tcp { 2 } else { 0 });
            r.pkt_srcaddr = r.srcaddr;
            r.pkt_dstaddr = r.dstaddr;
            r.flow_direction = Some(FlowDirection::Ingress);
        }
        self.out.push(r);
    }

    fn public_server(&mut self, v6: bool, want_aws: Option<bool>) -> Peer {
        let n = self.public_servers.len();
        let mut tries = 0;
        loop {
            let s = &self.public_servers[self.rng.skewed(n)];
            tries += 1;
            if want_aws.is_none_or(|aws| s.service.is_some() == aws) || tries > 8 {
                return Peer {
                    addr: if v6 {
                        IpAddr::V6(s.v6)
                    } else {
                        IpAddr::V4(s.v4)
                    },
                    // IPv6 addresses of the pool are not in AWS ranges.
                    service: if v6 { None } else { s.service.clone() },
                    path: if s.gateway_endpoint && !v6 { 7 } else { 8 },
                };
            }
        }
    }

    fn internet_client(&mut self, v6: bool) -> Peer {
        let addr = if v6 {
            IpAddr::V6(random_public_v6(&mut self.rng))
        } else if self.rng.chance(0.5) {
            let n = self.returning_clients.len();
            IpAddr::V4(self.returning_clients[self.rng.skewed(n)])
        } else {
            IpAddr::V4(random_public_v4(&mut self.rng))
        };
        // A few clients are AWS health checkers.
        let service = (!v6 && self.rng.chance(0.03)).then(|| self.services[5].clone());
        Peer {
            addr,
            service,
            path: 8,
        }
    }

    /// A host inside the VPC of `account` (another interface or one of its hosts), or,
    /// one time in ten, of a peered VPC.
    fn internal_host(&mut self, account: usize, v6: bool, exclude: usize) -> Peer {
        let peered = self.rng.chance(0.1);
        let account = if peered {
            (account + 1 + self.rng.below(ACCOUNTS.len() as u64 - 1) as usize) % ACCOUNTS.len()
        } else {
            account
        };
        let path = if peered { 4 } else { 1 };
        let candidates: Vec<usize> = (0..self.enis.len())
            .filter(|i| *i != exclude && self.enis[*i].account == account)
            .collect();
        if v6 && !candidates.is_empty() {
            let e = candidates[self.rng.below(candidates.len() as u64) as usize];
            return Peer {
                addr: IpAddr::V6(self.enis[e].v6),
                service: None,
                path,
            };
        }
        let addr = if !candidates.is_empty() && self.rng.chance(0.4) {
            self.enis[candidates[self.rng.below(candidates.len() as u64) as usize]].v4
        } else {
            let hosts = &self.internal[account];
            hosts[self.rng.skewed(hosts.len())]
        };
        Peer {
            addr: IpAddr::V4(addr),
            service: None,
            path,
        }
    }

    fn conversation(&mut self) -> Conversation {
        #[derive(Clone, Copy)]
        enum Kind {
            InPublic(u16),
            InInternal(u16),
            InAdmin,
            OutPublic(u16),
            OutAws,
            OutInternal(u16),
            Dns,
            PublicDns,
            Ntp,
            Icmp,
            Nat,
        }
        let eni = self.pick_eni();
        let role = self.enis[eni].role;
        let account = self.enis[eni].account;
        let kind = match role {
            Role::Web => self.rng.weighted(&[
                (56, Kind::InPublic(443)),
                (14, Kind::InPublic(80)),
                (8, Kind::OutInternal(5432)),
                (4, Kind::OutInternal(6379)),
                (3, Kind::OutInternal(8080)),
                (7, Kind::Dns),
                (4, Kind::OutPublic(443)),
                (2, Kind::Ntp),
                (2, Kind::Icmp),
            ]),
            Role::App => self.rng.weighted(&[
                (25, Kind::OutPublic(443)),
                (15, Kind::OutAws),
                (10, Kind::OutInternal(443)),
                (6, Kind::OutInternal(9092)),
                (5, Kind::OutInternal(3306)),
                (4, Kind::OutInternal(2049)),
                (15, Kind::Dns),
                (12, Kind::InInternal(8080)),
                (3, Kind::InInternal(22)),
                (3, Kind::Ntp),
                (2, Kind::Icmp),
            ]),
            Role::Db(port) => self.rng.weighted(&[
                (85, Kind::InInternal(port)),
                (5, Kind::OutAws),
                (5, Kind::Dns),
                (3, Kind::InInternal(22)),
                (2, Kind::Icmp),
            ]),
            Role::Bastion => self.rng.weighted(&[
                (50, Kind::InAdmin),
                (30, Kind::OutInternal(22)),
                (10, Kind::Dns),
                (5, Kind::OutPublic(443)),
                (5, Kind::Icmp),
            ]),
            Role::Nat => self.rng.weighted(&[
                (70, Kind::Nat),
                (10, Kind::PublicDns),
                (10, Kind::Ntp),
                (10, Kind::OutPublic(80)),
            ]),
        };
        let v6 = role != Role::Nat && self.rng.chance(0.05);
        let mut c = Conversation {
            eni,
            peer: Peer {
                addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                service: None,
                path: 1,
            },
            inbound: false,
            protocol: 6,
            server_port: 443,
            client_port: self.ephemeral(),
            behind_nat: None,
            request_size: (52, 600),
            response_size: (200, 1448),
            packet_cap: 2_000_000,
            one_way: self.rng.chance(0.08),
        };
        match kind {
            Kind::InPublic(port) => {
                c.peer = self.internet_client(v6);
                c.inbound = true;
                c.server_port = port;
            }
            Kind::InInternal(port) => {
                c.peer = self.internal_host(account, v6, eni);
                c.inbound = true;
                c.server_port = port;
                c.request_size = (52, 400);
                c.response_size = (52, 1448);
            }
            Kind::InAdmin => {
                let n = self.admins.len();
                let addr = self.admins[self.rng.skewed(n)];
                c.peer = Peer {
                    addr: IpAddr::V4(addr),
                    service: None,
                    path: 8,
                };
                c.inbound = true;
                c.server_port = 22;
                c.request_size = (52, 160);
                c.response_size = (52, 700);
            }
            Kind::OutPublic(port) => {
                c.peer = self.public_server(v6, Some(false));
                c.server_port = port;
            }
            Kind::OutAws => {
                c.peer = self.public_server(v6, Some(true));
                c.server_port = 443;
            }
            Kind::OutInternal(port) => {
                c.peer = self.internal_host(account, v6, eni);
                c.server_port = port;
                c.request_size = (52, 900);
                c.response_size = (52, 1448);
            }
            Kind::Dns | Kind::PublicDns => {
                c.peer = if matches!(kind, Kind::Dns) && !v6 {
                    let servers = &self.dns[account];
                    Peer {
                        addr: IpAddr::V4(servers[self.rng.below(servers.len() as u64) as usize]),
                        service: None,
                        path: 1,
                    }
                } else {
                    let addr = if self.rng.chance(0.5) {
                        Ipv4Addr::new(8, 8, 8, 8)
                    } else {
                        Ipv4Addr::new(1, 1, 1, 1)
                    };
                    Peer {
                        addr: IpAddr::V4(addr),
                        service: None,
                        path: 8,
                    }
                };
                c.protocol = if self.rng.chance(0.97) { 17 } else { 6 };
                c.server_port = 53;
                c.request_size = (60, 90);
                c.response_size = (76, 400);
                c.packet_cap = 4;
            }
            Kind::Ntp => {
                c.peer = self.public_server(false, Some(false));
                c.protocol = 17;
                c.server_port = 123;
                c.client_port = if self.rng.chance(0.5) {
                    123
                } else {
                    c.client_port
                };
                c.request_size = (76, 76);
                c.response_size = (76, 76);
                c.packet_cap = 2;
            }
            Kind::Icmp => {
                c.peer = self.internal_host(account, v6, eni);
                c.inbound = self.rng.chance(0.5);
                c.protocol = if v6 { 58 } else { 1 };
                c.server_port = 0;
                c.client_port = 0;
                c.request_size = (84, 84);
                c.response_size = (84, 84);
                c.packet_cap = 10;
            }
            Kind::Nat => {
                c.peer = self.public_server(false, None);
                c.server_port = if self.rng.chance(0.8) { 443 } else { 80 };
                let hosts = &self.internal[account];
                c.behind_nat = Some(IpAddr::V4(hosts[self.rng.skewed(hosts.len())]));
            }
        }
        if c.peer.path == 8 && c.server_port == 443 && c.protocol == 6 && self.rng.chance(0.02) {
            // QUIC.
            c.protocol = 17;
        }
        c
    }

    fn emit(&mut self, c: &Conversation) {
        let e = &self.enis[c.eni];
        let v6 = c.peer.addr.is_ipv6();
        let local = if v6 {
            IpAddr::V6(e.v6)
        } else {
            IpAddr::V4(e.v4)
        };
        let header = if v6 { 60 } else { 40 };
        let ws = self.window_start();
        let start = ws + self.rng.below(60);
        let packets = self.rng.pareto(1.1, c.packet_cap);
        let long = packets > 3;
        let end = if long {
            start + self.rng.below(ws + 61 - start)
        } else {
            start + self.rng.below(2).min(ws + 60 - start)
        };
        let phase = if c.protocol != 6 {
            Phase::Mid
        } else if packets == 1 {
            Phase::Opening
        } else {
            self.rng.weighted(&[
                (45, Phase::Complete),
                (15, Phase::Opening),
                (25, Phase::Mid),
                (10, Phase::Closing),
                (5, Phase::Reset),
            ])
        };
        let (fwd_flags, rev_flags) = match phase {
            Phase::Complete => (3, 19),
            Phase::Opening => (2, 18),
            Phase::Mid => (0, 0),
            Phase::Closing => (1, 1),
            Phase::Reset => (2, 22),
        };
        let rev_packets = if c.packet_cap <= 4 {
            packets
        } else {
            ((packets as f64 * (0.6 + self.rng.unit())) as u64).max(1)
        };
        let req_size = self
            .rng
            .range(c.request_size.0, c.request_size.1)
            .max(header);
        let resp_size = self
            .rng
            .range(c.response_size.0, c.response_size.1)
            .max(header);

        // Direction 0: initiator → responder; direction 1: the reply.
        for dir in 0..2 {
            if dir == 1 && c.one_way {
                break;
            }
            let from_peer = c.inbound == (dir == 0);
            let (srcport, dstport) = if dir == 0 {
                (c.client_port, c.server_port)
            } else {
                (c.server_port, c.client_port)
            };
            let (n, size) = if dir == 0 {
                (packets, req_size)
            } else {
                (rev_packets, resp_size)
            };
            let mut r = self.base_record(c.eni);
            let (src, dst) = if from_peer {
                (c.peer.addr, local)
            } else {
                (local, c.peer.addr)
            };
            r.srcaddr = Some(src);
            r.dstaddr = Some(dst);
            r.srcport = Some(srcport);
            r.dstport = Some(dstport);
            r.protocol = Some(c.protocol);
            r.packets = Some(n);
            r.bytes = Some(n * size);
            r.start = Some(if dir == 1 && end > start {
                start + 1
            } else {
                start
            });
            r.end = Some(end);
            r.action = Some(Action::Accept);
            r.log_status = Some(LogStatus::Ok);
            if self.v5 {
                r.traffic_type = Some(if v6 {
                    TrafficType::IPv6
                } else {
                    TrafficType::IPv4
                });
                r.tcp_flags = Some(if dir == 0 { fwd_flags } else { rev_flags });
                r.pkt_srcaddr = Some(src);
                r.pkt_dstaddr = Some(dst);
                if let Some(inner) = c.behind_nat {
                    if from_peer {
                        r.pkt_dstaddr = Some(inner);
                    } else {
                        r.pkt_srcaddr = Some(inner);
                    }
                }
                if from_peer {
                    r.pkt_src_aws_service = c.peer.service.clone();
                    r.flow_direction = Some(FlowDirection::Ingress);
                } else {
                    r.pkt_dst_aws_service = c.peer.service.clone();
                    r.flow_direction = Some(FlowDirection::Egress);
                    r.traffic_path = Some(c.peer.path);
                }
            }
            self.out.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use flowlog_formats::LogFormat;
    use flowlog_formats::text::{TextReader, TextWriter};

    #[test]
    fn deterministic_and_sized() {
        assert_eq!(v5_records(5000, 7), v5_records(5000, 7));
        assert_ne!(v5_records(100, 7), v5_records(100, 8));
        assert_eq!(default_format_records(1234, 1).len(), 1234);
        assert!(v5_records(0, 1).is_empty());
    }

    #[test]
    fn default_records_are_v5_records_restricted() {
        let fmt = LogFormat::aws_default();
        for (d, v) in default_format_records(2000, 3)
            .iter()
            .zip(v5_records(2000, 3).iter())
        {
            for f in fmt.fields() {
                assert_eq!(d.get(*f), v.get(*f), "{f}");
            }
            assert_eq!(d.vpc_id, None);
            assert_eq!(d.flow_direction, None);
        }
    }

    #[test]
    fn mix_is_realistic() {
        let n = 200_000;
        let recs = v5_records(n, 42);
        let share = |pred: &dyn Fn(&FlowRecord) -> bool| {
            recs.iter().filter(|r| pred(r)).count() as f64 / n as f64
        };
        let reject = share(&|r| r.action == Some(Action::Reject));
        let nodata = share(&|r| r.log_status == Some(LogStatus::NoData));
        let v6 = share(&|r| r.traffic_type == Some(TrafficType::IPv6));
        let tcp = share(&|r| r.protocol == Some(6));
        let udp = share(&|r| r.protocol == Some(17));
        assert!((0.015..0.025).contains(&reject), "reject {reject}");
        assert!((0.007..0.013).contains(&nodata), "nodata {nodata}");
        assert!((0.03..0.07).contains(&v6), "v6 {v6}");
        assert!(tcp > 0.7, "tcp {tcp}");
        assert!(udp > 0.05, "udp {udp}");
        for r in &recs {
            let (start, end) = (r.start.unwrap(), r.end.unwrap());
            assert!(end >= start && end - start <= 60);
            match r.flow_direction {
                Some(FlowDirection::Ingress) => assert_eq!(r.traffic_path, None),
                Some(FlowDirection::Egress) => assert!(r.traffic_path.is_some()),
                None => assert_eq!(r.log_status, Some(LogStatus::NoData)),
            }
            if let (Some(p), Some(b)) = (r.packets, r.bytes) {
                assert!(p >= 1 && b >= 28 * p);
            }
            assert_eq!(r.sublocation_type, None);
        }
        let times: Vec<u64> = recs.iter().map(|r| r.start.unwrap()).collect();
        assert!(times.last().unwrap() > times.first().unwrap());
        // Heavy tail: the largest flow dwarfs the median.
        let mut packets: Vec<u64> = recs.iter().filter_map(|r| r.packets).collect();
        packets.sort_unstable();
        assert!(packets[packets.len() - 1] > 1000 * packets[packets.len() / 2]);
    }

    #[test]
    fn round_trips_through_text() {
        let fmt = LogFormat::parse(V5_FORMAT).unwrap();
        assert_eq!(fmt.len(), 29);
        assert_eq!(fmt.version(), 5);
        let recs = v5_records(3000, 9);
        let mut w = TextWriter::new(Vec::new(), fmt).unwrap();
        for r in &recs {
            w.write_record(r).unwrap();
        }
        let bytes = w.finish().unwrap();
        let back: Vec<FlowRecord> = TextReader::with_header(&bytes[..])
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(back, recs);
    }
}
