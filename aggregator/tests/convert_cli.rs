//! End-to-end tests of `flowlog-aggregator convert`, run as a real process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use flate2::Compression;
use flate2::write::GzEncoder;

const BIN: &str = env!("CARGO_BIN_EXE_flowlog-aggregator");

const DEFAULT_FILE: &str = "\
version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status
2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK
2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA
2 123456789010 eni-1235b8ca123456789 2001:db8:1234:a100:8d6e:3477:df66:f105 2001:db8:1234:a102:3304:8879:34cf:4071 34892 22 6 54 8855 1477913708 1477913820 ACCEPT OK
";

const V5_FILE: &str = "\
version srcaddr dstaddr srcport dstport protocol start end type packets bytes account-id vpc-id subnet-id instance-id interface-id region az-id sublocation-type sublocation-id action tcp-flags pkt-srcaddr pkt-dstaddr pkt-src-aws-service pkt-dst-aws-service traffic-path flow-direction log-status
5 52.95.128.179 10.0.0.71 80 34210 6 1616729292 1616729349 IPv4 14 15044 123456789012 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b eni-1235b8ca123456789 ap-southeast-2 apse2-az3 - - ACCEPT 19 52.95.128.179 10.0.0.71 S3 - - ingress OK
5 10.0.0.71 52.95.128.179 34210 80 6 1616729292 1616729349 IPv4 7 471 123456789012 vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b eni-1235b8ca123456789 ap-southeast-2 apse2-az3 - - ACCEPT 3 10.0.0.71 52.95.128.179 - S3 8 egress OK
";

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(BIN)
        .arg("convert")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flowlog-aggregator");
    let mut pipe = child.stdin.take().expect("stdin");
    pipe.write_all(stdin.unwrap_or_default())
        .expect("write stdin");
    drop(pipe);
    child.wait_with_output().expect("wait")
}

fn ok(args: &[&str]) -> Output {
    let out = run(args, None);
    assert!(
        out.status.success(),
        "convert {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(text.as_bytes()).expect("gzip");
    gz.finish().expect("gzip")
}

fn gunzip(path: &Path) -> String {
    let mut s = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).expect("open"))
        .read_to_string(&mut s)
        .expect("gunzip");
    s
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

#[test]
fn text_to_text_and_through_parquet_is_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [("default", DEFAULT_FILE), ("v5", V5_FILE)] {
        let input = dir.path().join(format!("{name}.log.gz"));
        std::fs::write(&input, gzip(content)).unwrap();

        let plain = dir.path().join(format!("{name}.txt"));
        ok(&["--output-format", "text", s(&input), "--output", s(&plain)]);
        assert_eq!(
            std::fs::read_to_string(&plain).unwrap(),
            content,
            "{name}: text → text"
        );

        let pq = dir.path().join(format!("{name}.log.parquet"));
        ok(&["--output-format", "parquet", s(&input), "--output", s(&pq)]);
        assert_eq!(&std::fs::read(&pq).unwrap()[..4], b"PAR1");

        let back = dir.path().join(format!("{name}-back.log.gz"));
        ok(&["--output-format", "text", s(&pq), "--output", s(&back)]);
        assert_eq!(gunzip(&back), content, "{name}: text → Parquet → text");
    }
}

#[test]
fn custom_format_down_to_default_on_stdout_from_stdin() {
    let out = run(
        &[
            "--output-format",
            "text",
            "--log-format",
            flowlog_formats::DEFAULT_FORMAT,
            "-",
            "--output",
            "-",
        ],
        Some(V5_FILE.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status",
            "2 123456789012 eni-1235b8ca123456789 52.95.128.179 10.0.0.71 80 34210 6 14 15044 1616729292 1616729349 ACCEPT OK",
            "2 123456789012 eni-1235b8ca123456789 10.0.0.71 52.95.128.179 34210 80 6 7 471 1616729292 1616729349 ACCEPT OK",
        ]
    );
}

#[test]
fn fields_missing_from_the_input_become_dashes() {
    let out = run(
        &[
            "--output-format",
            "text",
            "--log-format",
            "${version} ${srcaddr} ${vpc-id} ${flow-direction} ${log-status}",
            "-",
            "--output",
            "-",
        ],
        Some(DEFAULT_FILE.as_bytes()),
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().nth(1), Some("5 172.31.16.139 - - OK"));
    assert_eq!(text.lines().nth(2), Some("5 - - - NODATA"));
}

#[test]
fn malformed_lines_fail_the_run_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = DEFAULT_FILE.to_owned()
        + "2 123456789010 eni-1 10.0.0.1 10.0.0.2 80 443 6 1 40 1 2 ACCEPT\n"
        + "2 123456789010 eni-1 10.0.0.1 10.0.0.2 eighty 443 6 1 40 1 2 ACCEPT OK\n"
        + "2 123456789010 eni-1 10.0.0.999 10.0.0.2 80 443 6 1 40 1 2 ACCEPT OK\n";
    let input = dir.path().join("bad.log.gz");
    std::fs::write(&input, gzip(&bad)).unwrap();
    let output = dir.path().join("out.log.parquet");

    let out = run(
        &[
            "--output-format",
            "parquet",
            s(&input),
            "--output",
            s(&output),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let name = input.display();
    assert!(
        err.contains("3 malformed line(s); nothing was written"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{name}: line 5: expected 14 fields, found 13")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{name}: line 6: field 'srcport': 'eighty' is not an integer"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{name}: line 7: field 'srcaddr': '10.0.0.999' is not an IP address"
        )),
        "{err}"
    );
    assert!(!output.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file is left behind"
    );

    let out = ok(&[
        "--output-format",
        "parquet",
        "--skip-bad-lines",
        s(&input),
        "--output",
        s(&output),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("3 records (3 malformed lines left out)"),
        "{err}"
    );
    let back = run(
        &["--output-format", "text", s(&output), "--output", "-"],
        None,
    );
    assert_eq!(String::from_utf8(back.stdout).unwrap(), DEFAULT_FILE);
}

#[test]
fn several_inputs_go_to_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir
        .path()
        .join("123456789010_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz");
    let b = dir.path().join("plain.txt");
    std::fs::write(&a, gzip(DEFAULT_FILE)).unwrap();
    std::fs::write(&b, V5_FILE).unwrap();
    let out_dir = dir.path().join("parquet");
    ok(&[
        "--output-format",
        "parquet",
        s(&a),
        s(&b),
        "--output",
        s(&out_dir),
    ]);
    let mut names: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "123456789010_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.parquet",
            "plain.log.parquet"
        ]
    );

    let text_dir = dir.path().join("text");
    ok(&[
        "--output-format",
        "text",
        s(&out_dir.join("plain.log.parquet")),
        "--output",
        &format!("{}/", s(&text_dir)),
    ]);
    assert_eq!(gunzip(&text_dir.join("plain.log.gz")), V5_FILE);
}

#[test]
fn usage_errors_exit_64_with_a_clear_message() {
    let out = run(
        &[
            "--output-format",
            "text",
            "--log-format",
            "${version} ${srcadr}",
            "-",
            "--output",
            "-",
        ],
        Some(b""),
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field '${srcadr}' at position 2; did you mean '${srcaddr}'?"),
        "{err}"
    );

    let out = run(
        &["--output-format", "text", "-", "--output", "-"],
        Some(b"2 123456789010 eni-1 - - - - - - - 1 2 - NODATA\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("<stdin>: line 1 is not a valid header"),
        "{err}"
    );
    assert!(
        err.contains("unknown field '2' in header at position 1"),
        "{err}"
    );

    let out = run(
        &[
            "--output-format",
            "text",
            "/nonexistent/x.log.gz",
            "--output",
            "-",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.log.gz: cannot read input")
    );
}
