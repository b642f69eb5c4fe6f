//! How many files `flowlog-aggregator import` writes: one per (account, region, flow log,
//! window) stream, whatever the order of the input and however many streams are live at
//! once (plus one more each time a stream reaches the size cap).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use flowlog_formats::LogFormat;
use flowlog_formats::key::parse_key;

const A: &str = "123456789012";
const B: &str = "210987654321";

/// Where the scratch directories go: a tmpfs when there is one, since these tests are
/// about how many files are written, and thousands of fsyncs on a slow disk only cost time.
fn scratch() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = Rng(seed | 1);
    for i in (1..items.len()).rev() {
        items.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
}

/// (account, window end) of every file below `out`.
fn streams_of(out: &std::path::Path) -> (usize, BTreeSet<(String, i64)>) {
    let files = files_below(out);
    let streams = files
        .iter()
        .map(|f| {
            let k = parse_key(f).unwrap();
            (k.account_id, k.file_timestamp.timestamp())
        })
        .collect();
    (files.len(), streams)
}

#[test]
fn random_order_over_26_hours_gives_exactly_one_file_per_stream() {
    // 312 windows x 2 accounts = 624 streams, every one live from the first records on.
    let mut recs = records(100_000, 312, &[A, B], true, 5);
    shuffle(&mut recs, 17);
    let s = Setup::local_in(&scratch(), "");
    let input = s.input("random.log");
    write_text(&input, &LogFormat::aws_default(), &recs);
    let out = s.import(&[&input]);
    assert_ok(&out);
    let (files, streams) = streams_of(&s.out);
    assert_eq!(streams.len(), 624);
    assert_eq!(files, 624, "one file per stream");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("published 624 file(s), 100000 records"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        published_lines(&s.out, &LogFormat::aws_default()),
        expected_lines(&recs, &LogFormat::aws_default())
    );
}

#[test]
fn ten_thousand_live_streams_give_exactly_ten_thousand_files() {
    // 10,000 accounts in one window, three records each, interleaved.
    let accounts: Vec<String> = (0..10_000u64)
        .map(|i| format!("{:012}", 100_000_000_000 + i))
        .collect();
    let refs: Vec<&str> = accounts.iter().map(String::as_str).collect();
    let recs = records(30_000, 1, &refs, false, 9);
    let s = Setup::local_in(&scratch(), "");
    let input = s.input("many.log");
    write_text(&input, &LogFormat::aws_default(), &recs);
    assert_ok(&s.import(&[&input]));
    let (files, streams) = streams_of(&s.out);
    assert_eq!(streams.len(), 10_000);
    assert_eq!(files, 10_000, "one file per stream");
    assert_eq!(
        published_lines(&s.out, &LogFormat::aws_default()),
        expected_lines(&recs, &LogFormat::aws_default())
    );
}

#[test]
fn a_stream_over_the_cap_gets_one_more_file_per_cap_in_random_order_too() {
    // 2 accounts x 3 windows, each stream larger than the cap, shuffled.
    let mut recs = records(60_000, 3, &[A, B], true, 21);
    shuffle(&mut recs, 3);
    let s = Setup::local_in(&scratch(), "max_file_bytes = 200000");
    let input = s.input("big.log");
    write_text(&input, &LogFormat::aws_default(), &recs);
    assert_ok(&s.import(&[&input]));
    let files = files_below(&s.out);
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(s.out.join(f)).unwrap().len())
        .collect();
    assert!(sizes.iter().all(|b| *b <= 200_000), "{sizes:?}");
    // Per stream, every file but the last is filled close to the cap.
    let total: u64 = sizes.iter().sum();
    let full = sizes.iter().filter(|b| **b >= 180_000).count();
    assert_eq!(full + 6, files.len(), "{sizes:?}");
    assert!(files.len() as u64 <= total / 180_000 + 6);
    assert_eq!(
        published_lines(&s.out, &LogFormat::aws_default()),
        expected_lines(&recs, &LogFormat::aws_default())
    );
}
