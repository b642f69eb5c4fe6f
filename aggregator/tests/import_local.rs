//! `flowlog-aggregator import` to the local-directory sink, run as a real process: exact
//! keys for every layout, the size cap, late files, resuming, and `kill -9` at any point.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use flowlog_formats::LogFormat;
use flowlog_formats::key::{KeyLayout, KeyPrefix, parse_key};

const A: &str = "123456789012";
const B: &str = "210987654321";

#[test]
fn keys_and_names_are_exact_for_every_layout() {
    let recs = records(3_000, 3, &[A, B], false, 7);
    for (layout, prefix) in [
        (KeyLayout::Default, ""),
        (KeyLayout::Hourly, "my/logs"),
        (KeyLayout::Hive, ""),
        (KeyLayout::HiveHourly, "x"),
    ] {
        let s = Setup::local(&format!("layout = \"{layout}\"\nprefix = \"{prefix}\""));
        let input = s.input("in.log");
        write_text(&input, &LogFormat::aws_default(), &recs);
        let out = s.import(&[&input]);
        assert_ok(&out);
        let keys = files_below(&s.out);
        assert_eq!(
            keys,
            expected_keys(
                &recs,
                layout,
                &KeyPrefix::parse(prefix).unwrap(),
                "eu-west-3"
            ),
            "{layout}"
        );
        assert_eq!(keys.len(), 6);
        for k in &keys {
            let parsed = parse_key(k).unwrap();
            assert_eq!(parsed.layout, Some(layout));
            assert_eq!(parsed.file_timestamp.timestamp() % 300, 0);
        }
        // First window: records of 00:00:00-00:04:59 in the file stamped 00:05.
        assert!(
            keys.iter().any(|k| k.contains("_20240101T0005Z_")),
            "{keys:?}"
        );
        assert_eq!(
            published_lines(&s.out, &LogFormat::aws_default()),
            expected_lines(&recs, &LogFormat::aws_default())
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("published 6 file(s), 3000 records"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn no_file_exceeds_the_cap_even_with_incompressible_data() {
    for (format, cap, n) in [
        ("text", 65_536u64, 40_000usize),
        ("parquet", 300_000, 40_000),
    ] {
        let s = Setup::local(&format!("format = \"{format}\"\nmax_file_bytes = {cap}"));
        let recs = records(n, 1, &[A], true, 11);
        let input = s.input("random.log");
        write_text(&input, &LogFormat::aws_default(), &recs);
        assert_ok(&s.import(&[&input]));
        let files = files_below(&s.out);
        assert!(
            files.len() >= 5,
            "{format}: expected rollover, got {files:?}"
        );
        let sizes: Vec<u64> = files
            .iter()
            .map(|f| std::fs::metadata(s.out.join(f)).unwrap().len())
            .collect();
        assert!(
            sizes.iter().all(|&b| b <= cap),
            "{format}: {sizes:?} exceed {cap}"
        );
        // Files are cut close to the cap, not far below it (text is exact to a line; the
        // Parquet estimate counts buffered rows uncompressed and a footer allowance).
        let near = if format == "text" {
            cap * 9 / 10
        } else {
            cap * 6 / 10
        };
        let full = sizes.iter().filter(|&&b| b >= near).count();
        assert!(full + 1 >= files.len(), "{format}: {sizes:?}");
        assert_eq!(
            published_lines(&s.out, &LogFormat::aws_default()),
            expected_lines(&recs, &LogFormat::aws_default()),
            "{format}"
        );
    }
}

#[test]
fn records_for_a_closed_window_go_to_an_extra_file_and_reruns_publish_nothing() {
    let s = Setup::local("");
    let recs = records(2_000, 1, &[A], false, 3);
    let (first, second) = recs.split_at(1_200);
    let (in1, in2) = (s.input("one.log"), s.input("two.log"));
    write_text(&in1, &LogFormat::aws_default(), first);
    write_text(&in2, &LogFormat::aws_default(), second);
    assert_ok(&s.import(&[&in1]));
    assert_ok(&s.import(&[&in1, &in2]));
    let files = files_below(&s.out);
    assert_eq!(files.len(), 2, "{files:?}");
    let (p1, p2) = (parse_key(&files[0]).unwrap(), parse_key(&files[1]).unwrap());
    assert_eq!(p1.file_timestamp, p2.file_timestamp);
    assert_ne!(p1.hash8, p2.hash8);
    assert_eq!(
        published_lines(&s.out, &LogFormat::aws_default()),
        expected_lines(&recs, &LogFormat::aws_default())
    );

    let again = s.import(&[&in1, &in2]);
    assert_ok(&again);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("2 already imported") && err.contains("nothing new to publish"),
        "{err}"
    );
    assert_eq!(files_below(&s.out), files);
}

#[test]
fn identity_comes_from_records_then_file_name_then_config() {
    let s = Setup::local(
        "format = \"parquet\"\nlog_format = \"${version} ${srcaddr} ${dstaddr} ${start} ${end} ${log-status}\"",
    );
    let recs = records(500, 1, &[A], false, 5);
    let narrow = LogFormat::parse("${srcaddr} ${dstaddr} ${start} ${end} ${log-status}").unwrap();
    let named =
        s.input("210987654321_vpcflowlogs_ap-south-1_fl-1234abcd_20240101T0005Z_abcdef12.log");
    let plain = s.input("plain.log");
    let body: String = recs.iter().map(|r| line(&narrow, r)).collect();
    std::fs::write(&named, &body).unwrap();
    std::fs::write(&plain, &body).unwrap();
    let out = Command::new(BIN)
        .args(["import", "--config"])
        .arg(&s.config)
        .args([
            "--input-format",
            "${srcaddr} ${dstaddr} ${start} ${end} ${log-status}",
        ])
        .arg(&named)
        .arg(&plain)
        .output()
        .unwrap();
    assert_ok(&out);
    let files = files_below(&s.out);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].starts_with("AWSLogs/123456789012/vpcflowlogs/eu-west-3/2024/01/01/123456789012_vpcflowlogs_eu-west-3_fl-0123456789abcdef0_20240101T0005Z_"), "{files:?}");
    assert!(files[1].starts_with("AWSLogs/210987654321/vpcflowlogs/ap-south-1/2024/01/01/210987654321_vpcflowlogs_ap-south-1_fl-0123456789abcdef0_20240101T0005Z_"), "{files:?}");
    assert!(files.iter().all(|f| f.ends_with(".log.parquet")));
}

#[test]
fn bad_config_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[flow_log]\nid = \"fl-1\"\n[output]\nwindow = \"7m\"\nlayout = \"daily\"\n[sink]\ntype = \"ftp\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "flow_log.account_id: is required",
        "flow_log.region: is required",
        "output.window: 7m",
        "output.layout:",
        "sink.type: 'ftp'",
    ] {
        assert!(err.contains(needle), "{needle} missing in {err}");
    }
    let ok = Setup::local("");
    let out = Command::new(BIN)
        .args(["import", "--check-config", "--config"])
        .arg(&ok.config)
        .arg("unused")
        .output()
        .unwrap();
    assert_ok(&out);
}

/// Imports a large file, killing the process with SIGKILL at several moments and
/// restarting it with the same command; the published records must equal the input.
#[test]
fn kill_9_at_any_point_then_rerun_publishes_every_record_exactly_once() {
    let s = Setup::local("max_file_bytes = 200000\nmemory_budget = \"16MiB\"");
    let recs = records(400_000, 12, &[A, B], true, 99);
    let input = s.input("big.log");
    write_text(&input, &LogFormat::aws_default(), &recs);
    let mut kills = 0;
    for delay_ms in [150u64, 400, 700, 1000, 1500, 2200, 3000] {
        let mut child = Command::new(BIN)
            .args(["import", "--config"])
            .arg(&s.config)
            .arg(&input)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    let started = Instant::now();
    let out = s.import(&[&input]);
    assert_ok(&out);
    assert!(
        kills >= 3,
        "the import finished too fast to be killed ({kills} kills); make the input larger"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    let published = published_lines(&s.out, &LogFormat::aws_default());
    let expected = expected_lines(&recs, &LogFormat::aws_default());
    let total: usize = published.values().sum();
    assert_eq!(total, recs.len(), "record count after {kills} kills");
    assert!(
        published == expected,
        "published records differ from the input after {kills} kills"
    );
    let files = files_below(&s.out);
    assert!(
        files
            .iter()
            .all(|f| std::fs::metadata(s.out.join(f)).unwrap().len() <= 200_000)
    );
    assert!(files_below(&s.state.join("staging/sealed")).is_empty());
}

/// SIGTERM mid-import: open files are sealed and uploaded, the process exits (130) within
/// the shutdown grace, and the same command then finishes the rest exactly once.
#[test]
fn sigterm_seals_uploads_and_exits_within_the_grace_then_resumes() {
    let s = Setup::local("");
    let recs = records(300_000, 8, &[A], true, 17);
    let input = s.input("big.log");
    write_text(&input, &LogFormat::aws_default(), &recs);
    let child = Command::new(BIN)
        .args(["import", "--config"])
        .arg(&s.config)
        .arg(&input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.state.join("wal").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let took = signalled.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    if out.status.code() == Some(130) {
        assert!(err.contains("interrupted: progress is kept"), "{err}");
        let partial: usize = published_lines(&s.out, &LogFormat::aws_default())
            .values()
            .sum();
        assert!(
            partial > 0 && partial < recs.len(),
            "{partial} records published before the rerun"
        );
        assert!(
            files_below(&s.state.join("staging/sealed")).is_empty(),
            "everything sealed was uploaded"
        );
    } else {
        // The import was faster than the signal; it must then have finished cleanly.
        assert_ok(&out);
    }
    let again = s.import(&[&input]);
    assert_ok(&again);
    assert_eq!(
        published_lines(&s.out, &LogFormat::aws_default()),
        expected_lines(&recs, &LogFormat::aws_default())
    );
}

#[test]
fn unpublishable_records_are_quarantined_and_the_rest_is_published() {
    let s = Setup::local("");
    let mut recs = records(10, 1, &[A], false, 5);
    // Year 10000 (no key can name it), start after end, packets above bigint.
    recs[2].end = Some(253_402_300_800);
    recs[5].start = recs[5].end.map(|e| e + 1);
    recs[7].packets = Some(1 << 63);
    let input = s.input("mixed.log");
    write_text(&input, &LogFormat::aws_default(), &recs);
    // The writer caps counters at the bigint maximum; the input says one more.
    let text = std::fs::read_to_string(&input).unwrap();
    std::fs::write(
        &input,
        text.replace(" 9223372036854775807 ", " 9223372036854775808 "),
    )
    .unwrap();
    let out = s.import(&[&input]);
    assert_ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let good: Vec<_> = recs
        .iter()
        .enumerate()
        .filter(|(i, _)| ![2, 5, 7].contains(i))
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(
        published_lines(&s.out, &LogFormat::aws_default()),
        expected_lines(&good, &LogFormat::aws_default()),
        "{stderr}"
    );
    // packets = 2^63 does not parse as a bigint: a malformed line (skipped, counted); the
    // other two parse but cannot be published: quarantined with file, index and field.
    assert!(
        stderr.contains("1 malformed skipped, 2 unpublishable quarantined"),
        "{stderr}"
    );
    let dir = s.state.join("quarantine");
    let text: String = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["field"], "end");
    assert_eq!(lines[0]["record_index"], 2);
    assert_eq!(lines[0]["record"]["end"], 253_402_300_800u64);
    assert!(
        lines[0]["source"].as_str().unwrap().ends_with("mixed.log"),
        "{text}"
    );
    assert_eq!(lines[1]["field"], "end");
    assert_eq!(lines[1]["record_index"], 5);
}
