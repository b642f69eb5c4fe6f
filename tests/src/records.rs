//! Flow records for tests: a deterministic generator and records spread over windows.

use std::net::Ipv4Addr;

use flowlog_formats::{Action, FlowRecord, LogStatus};

/// The account most tests publish under.
pub const A_ACCOUNT: &str = "123456789012";

/// 2024-01-01T00:00:00Z.
pub const T0: u64 = 1_704_067_200;

/// A deterministic generator (xorshift).
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` records spread over `windows` 5-minute windows from T0, for the given accounts.
/// With `random_addresses` the addresses and counters are random (text compresses badly).
pub fn records(
    n: usize,
    windows: u64,
    accounts: &[&str],
    random_addresses: bool,
    seed: u64,
) -> Vec<FlowRecord> {
    let mut rng = Rng(seed | 1);
    (0..n)
        .map(|i| {
            let end = T0 + (i as u64 * windows * 300) / n as u64;
            let mut r = FlowRecord {
                account_id: Some(accounts[i % accounts.len()].into()),
                interface_id: Some(format!("eni-{:017x}", i % 7).into()),
                start: Some(end - 10),
                end: Some(end),
                log_status: Some(LogStatus::Ok),
                ..FlowRecord::default()
            };
            if i % 97 == 0 {
                r.log_status = Some(LogStatus::NoData);
                return r;
            }
            let (a, b) = if random_addresses {
                (rng.next_u64() as u32, rng.next_u64() as u32)
            } else {
                (
                    0x0a00_0000 | (i as u32 % 50),
                    0xc633_6400 | (i as u32 % 200),
                )
            };
            r.srcaddr = Some(Ipv4Addr::from(a).into());
            r.dstaddr = Some(Ipv4Addr::from(b).into());
            r.srcport = Some(if random_addresses {
                rng.next_u64() as u16
            } else {
                443
            });
            r.dstport = Some(32768 + (i % 20_000) as u16);
            r.protocol = Some(6);
            r.packets = Some(
                1 + if random_addresses {
                    rng.next_u64() % 100_000
                } else {
                    i as u64 % 10
                },
            );
            r.bytes = Some(
                40 + if random_addresses {
                    rng.next_u64() % 100_000_000
                } else {
                    i as u64 % 1500
                },
            );
            r.action = Some(if i % 13 == 0 {
                Action::Reject
            } else {
                Action::Accept
            });
            r
        })
        .collect()
}
