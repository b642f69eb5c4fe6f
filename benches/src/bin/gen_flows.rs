//! Writes N realistic default-format records as a flow log text file (header first).
//!
//! ```text
//! gen_flows --records N --out FILE [--seed S] [--hours H] [--order sorted|random] [--accounts K]
//! ```
//!
//! Without the last three options the records keep the generator's natural layout: time
//! order, 2,500 records a minute from 2024-01-01T00:00:00Z (`N / 2,500` minutes in all),
//! streamed, so memory stays flat whatever N is. The options change that:
//!
//! - `--hours H`: spreads the records' ends evenly over H hours from
//!   2024-01-01T00:00:00Z, in ascending order: record `i` of N ends at `⌊i·H·3600/N⌋`
//!   seconds after that instant, and its start moves with its end (its duration is kept).
//!   H = 26 gives exactly 312 five-minute windows whatever N is.
//! - `--accounts K`: each record's `account-id` is one of K distinct 12-digit accounts
//!   (`100000000000`, `100000000001`, …), drawn uniformly from the seed and the record's
//!   index, instead of the generator's three.
//! - `--order sorted`: ascending `end` (ties in generation order). `--order random`: the
//!   same records shuffled (Fisher-Yates, seeded by `--seed`).
//!
//! Record `i` depends only on the seed, N, H, K and `i`, so a sorted and a random file
//! written with the same options hold the same records. The random order, and the sorted
//! order without `--hours`, hold every encoded line in memory until they are written:
//! about the size of the file plus 12 bytes a record (~1.1 GB for 10 M records). The other
//! layouts stream.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;

use flowlog_benches::{FIRST_WINDOW_START, RECORDS_PER_WINDOW, SplitMix64, default_format_records};
use flowlog_formats::text::{TextWriter, encode_line};
use flowlog_formats::{FlowRecord, LogFormat, Text};

const CHUNK: usize = 100_000;

const USAGE: &str = "usage: gen_flows --records N --out FILE [--seed S] [--hours H] \
                     [--order sorted|random] [--accounts K]";

/// Step of the SplitMix64 sequence: `SplitMix64::new(s + i * GOLDEN)` gives the `i`-th
/// value of the stream seeded `s` without drawing the ones before it.
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// Keep the account draws and the shuffle independent of the generator's own stream.
const ACCOUNT_SALT: u64 = 0xACC0_0A7E_5EED_0001;
const SHUFFLE_SALT: u64 = 0x5A0F_F1E5_5EED_0002;

/// Most accounts `--accounts` takes.
const MAX_ACCOUNTS: usize = 1_000_000;
/// Longest `--hours` (ten years).
const MAX_HOURS: f64 = 24.0 * 366.0 * 10.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Sorted,
    Random,
}

#[derive(Debug)]
struct Options {
    records: usize,
    out: String,
    seed: u64,
    /// Seconds the records' ends are spread over (`--hours`).
    span_secs: Option<u64>,
    order: Option<Order>,
    accounts: Option<usize>,
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match generate(&options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}: {e}", options.out);
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
        v.parse()
            .map_err(|_| format!("{flag}: '{v}' is not a valid number"))
    }
    let mut o = Options {
        records: 1_000_000,
        out: String::new(),
        seed: 1,
        span_secs: None,
        order: None,
        accounts: None,
    };
    let mut out = None;
    while let Some(a) = args.next() {
        let Some(v) = args.next() else {
            return Err(format!("{a}: missing value"));
        };
        match a.as_str() {
            "--records" => o.records = number(&a, &v)?,
            "--out" => out = Some(v),
            "--seed" => o.seed = number(&a, &v)?,
            "--hours" => {
                let h: f64 = number(&a, &v)?;
                if !(h > 0.0 && h <= MAX_HOURS) {
                    return Err(format!("--hours: {v} is not in (0, {MAX_HOURS}]"));
                }
                o.span_secs = Some(((h * 3600.0).round() as u64).max(1));
            }
            "--order" => {
                o.order = Some(match v.as_str() {
                    "sorted" => Order::Sorted,
                    "random" => Order::Random,
                    _ => return Err(format!("--order: '{v}' is not sorted or random")),
                });
            }
            "--accounts" => {
                let k: usize = number(&a, &v)?;
                if !(1..=MAX_ACCOUNTS).contains(&k) {
                    return Err(format!("--accounts: {k} is not in 1..={MAX_ACCOUNTS}"));
                }
                o.accounts = Some(k);
            }
            _ => return Err(format!("unknown option {a}")),
        }
    }
    o.out = out.ok_or("--out is required")?;
    if needs_reorder(&o) && u32::try_from(o.records).is_err() {
        return Err(format!("--order: at most {} records", u32::MAX));
    }
    Ok(o)
}

/// True if the records must be held and reordered rather than streamed: generation order
/// is already ascending `end` with `--hours`, not in the natural layout.
fn needs_reorder(o: &Options) -> bool {
    match o.order {
        None => false,
        Some(Order::Sorted) => o.span_secs.is_none(),
        Some(Order::Random) => true,
    }
}

fn generate(o: &Options) -> io::Result<()> {
    let format = LogFormat::aws_default();
    let mut file = BufWriter::with_capacity(1 << 20, File::create(&o.out)?);
    let accounts: Vec<Text> = (0..o.accounts.unwrap_or(0))
        .map(|k| Text::from(format!("{:012}", 100_000_000_000 + k as u64)))
        .collect();

    if !needs_reorder(o) {
        let mut w = TextWriter::new(file, format)?;
        for_each_record(o, &accounts, |r| w.write_record(r))?;
        return w.finish()?.flush();
    }

    // Every line encoded back to back; line i is lines[starts[i]..starts[i + 1]].
    let version = format.version();
    let sorted = o.order == Some(Order::Sorted);
    let mut lines = Vec::new();
    let mut starts: Vec<u64> = Vec::with_capacity(o.records + 1);
    let mut ends: Vec<u64> = Vec::with_capacity(if sorted { o.records } else { 0 });
    for_each_record(o, &accounts, |r| {
        starts.push(lines.len() as u64);
        encode_line(&mut lines, &format, version, r);
        if sorted {
            ends.push(r.end.or(r.start).unwrap_or(0));
        }
        Ok(())
    })?;
    starts.push(lines.len() as u64);

    // `parse_args` made sure that every index fits in a u32.
    let mut order: Vec<u32> = (0..o.records as u32).collect();
    if sorted {
        order.sort_by_key(|&i| ends[i as usize]);
    } else {
        let mut rng = SplitMix64::new(o.seed ^ SHUFFLE_SALT);
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
    }
    drop(ends);

    file.write_all(format.header().as_bytes())?;
    file.write_all(b"\n")?;
    for i in order {
        let i = i as usize;
        file.write_all(&lines[starts[i] as usize..starts[i + 1] as usize])?;
    }
    file.flush()
}

/// Calls `f` with each of the `o.records` records, in generation order.
fn for_each_record(
    o: &Options,
    accounts: &[Text],
    mut f: impl FnMut(&FlowRecord) -> io::Result<()>,
) -> io::Result<()> {
    // Natural layout: each chunk covers CHUNK / RECORDS_PER_WINDOW minutes; later chunks
    // are shifted so the whole file stays in time order.
    let chunk_secs = (CHUNK / RECORDS_PER_WINDOW) as u64 * 60;
    let account_base = o.seed ^ ACCOUNT_SALT;
    let mut index = 0usize;
    let mut chunk = 0u64;
    while index < o.records {
        let n = CHUNK.min(o.records - index);
        for mut r in default_format_records(n, o.seed.wrapping_add(chunk)) {
            match o.span_secs {
                None => {
                    let shift = chunk * chunk_secs;
                    r.start = r.start.map(|t| t + shift);
                    r.end = r.end.map(|t| t + shift);
                }
                Some(span) => {
                    let offset = (index as u128 * u128::from(span) / o.records as u128) as u64;
                    let end = FIRST_WINDOW_START + offset;
                    if let Some(old_end) = r.end {
                        r.start = r
                            .start
                            .map(|s| end.saturating_sub(old_end.saturating_sub(s)));
                    }
                    r.end = Some(end);
                }
            }
            if !accounts.is_empty() {
                let draw =
                    SplitMix64::new(account_base.wrapping_add((index as u64).wrapping_mul(GOLDEN)))
                        .below(accounts.len() as u64);
                r.account_id = Some(accounts[draw as usize].clone());
            }
            f(&r)?;
            index += 1;
        }
        chunk += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::collections::HashSet;

    fn options(records: usize, order: Option<Order>, out: String) -> Options {
        Options {
            records,
            out,
            seed: 1,
            span_secs: Some(26 * 3600),
            order,
            accounts: Some(2),
        }
    }

    #[test]
    fn twenty_six_hours_and_two_accounts_make_624_streams() {
        let o = options(20_000, None, String::new());
        let mut streams = HashSet::new();
        let mut last_end = 0;
        for_each_record(
            &o,
            &[Text::from("100000000000"), Text::from("100000000001")],
            |r| {
                let end = r.end.unwrap();
                assert!(end >= last_end.max(FIRST_WINDOW_START));
                assert!(end < FIRST_WINDOW_START + 26 * 3600);
                assert!(r.start.unwrap() <= end);
                last_end = end;
                streams.insert((r.account_id.clone().unwrap(), end / 300));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(streams.len(), 312 * 2);
    }

    #[test]
    fn random_order_holds_the_sorted_records() {
        let dir = std::env::temp_dir();
        let path = |o: &str| {
            dir.join(format!("gen_flows-test-{}-{o}.log", std::process::id()))
                .display()
                .to_string()
        };
        let read = |o: Order| {
            let opts = options(5_000, Some(o), path(&format!("{o:?}")));
            generate(&opts).unwrap();
            let text = std::fs::read_to_string(&opts.out).unwrap();
            std::fs::remove_file(&opts.out).unwrap();
            text.lines().map(str::to_owned).collect::<Vec<_>>()
        };
        let sorted = read(Order::Sorted);
        let random = read(Order::Random);
        assert_eq!(sorted.len(), 5_001);
        assert_eq!(sorted[0], random[0], "header");
        assert_ne!(sorted, random);
        let end = |l: &String| l.split(' ').nth(11).unwrap().parse::<u64>().unwrap();
        assert!(sorted[1..].windows(2).all(|w| end(&w[0]) <= end(&w[1])));
        let (mut a, mut b) = (sorted, random);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }
}
