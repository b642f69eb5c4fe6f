//! The Athena DDL and named queries of `flowlog-aggregator athena-ddl` on real engines,
//! and flowlogs-reader's S3 reader on our S3 output (`tests/python/athena_proof.py`).
//!
//! - Apache Spark (pyspark, local mode, Hive support, Derby metastore) runs the generated
//!   DDL (`--no-projection --partitions`), and the full DDL with partition projection; every
//!   named query returns exactly the results computed from the input records, for text
//!   with the default format, text with a custom format and Parquet, each in the default
//!   and the Hive layout. DuckDB reads the same files and agrees.
//! - flowlogs-reader 5.0.1 (`S3FlowLogsReader`) reads our default-layout text and Parquet
//!   objects from the S3 test server and returns every record, NODATA rows included.
//! - A query the format cannot answer is refused with exit status 64, naming the field.
//!
//! Needs the venv of `scripts/setup-test-env.sh` (pyspark, duckdb, flowlogs_reader, moto)
//! and a Java runtime for Spark. Without them these tests fail with a message saying what
//! is missing: they never pass without running.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flowlog_tests::s3::{S3TestServer, venv_dir, workspace_root};
use serde_json::json;

const FLOW_LOG_ID: &str = "fl-0123456789abcdef0";
/// `[flow_log]` identity: the generated records carry their own accounts and regions
/// (111122223333 / 444455556666, us-east-1 / eu-west-1); their NODATA rows have no
/// region and are filed under this one.
const ACCOUNT: &str = "111122223333";
const REGION: &str = "ap-south-1";

/// The AWS default format (version 2).
const DEFAULT_FIELDS: &[&str] = &[
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
];

/// A custom format: reordered, with `region` and `type`, without `version`.
const CUSTOM_FIELDS: &[&str] = &[
    "region",
    "az-id",
    "account-id",
    "interface-id",
    "flow-direction",
    "type",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "tcp-flags",
    "log-status",
];

/// Every field of the generated input.
const ALL_FIELDS: &[&str] = &[
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
    "vpc-id",
    "subnet-id",
    "instance-id",
    "tcp-flags",
    "type",
    "pkt-srcaddr",
    "pkt-dstaddr",
    "region",
    "az-id",
    "flow-direction",
];

/// How long the Python side may take before the test gives up on it.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(600);

fn log_format(fields: &[&str]) -> String {
    fields
        .iter()
        .map(|f| format!("${{{f}}}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds (if needed) and returns `flowlog-aggregator`: this crate's tests run another
/// crate's executable, which cargo only builds for that crate's own tests.
fn aggregator() -> PathBuf {
    flowlog_tests::binaries()
        .expect("building the binaries")
        .join("flowlog-aggregator")
}

fn setup_hint() -> &'static str {
    if std::env::var("CI").as_deref() == Ok("true") {
        "CI=true: these tests must run; run scripts/setup-test-env.sh before cargo test"
    } else {
        "run scripts/setup-test-env.sh and re-run the tests"
    }
}

/// Returns the venv's python; fails the test (never skips it) when it is missing.
fn python() -> PathBuf {
    let python = venv_dir().join("bin/python");
    assert!(
        python.exists(),
        "cannot run the Athena engine tests: {} is missing ({})",
        python.display(),
        setup_hint()
    );
    python
}

/// Fails the test unless a Java runtime (needed by Spark) runs.
fn require_java() {
    let java = std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .unwrap_or_else(|| PathBuf::from("java"));
    let ok = Command::new(&java)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "cannot run the Spark test: `{} -version` does not run; install a Java 17+ runtime \
         (Debian: openjdk-17-jre-headless) ({})",
        java.display(),
        setup_hint()
    );
}

fn script() -> PathBuf {
    workspace_root().join("tests/python/athena_proof.py")
}

/// Runs a command to completion within `timeout`, killing it after that.
fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the deterministic input flow log and returns its path.
fn generate_input(dir: &Path) -> PathBuf {
    let input = dir.join("input.log");
    let out = output_within(
        Command::new(python())
            .arg(script())
            .arg("gen")
            .arg(&input)
            .current_dir(dir),
        PYTHON_TIMEOUT,
    );
    assert_ok("athena_proof.py gen", &out);
    input
}

/// Writes an aggregator config; `output` and `sink` are the bodies of those sections.
fn write_config(dir: &Path, name: &str, output: &str, sink: &str) -> PathBuf {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[flow_log]\nid = \"{FLOW_LOG_ID}\"\naccount_id = \"{ACCOUNT}\"\nregion = \"{REGION}\"\n\n\
             [output]\n{output}\n\n[sink]\n{sink}\n\n\
             [state]\ndir = \"{}\"\nwriter_id = \"athena-test\"\n\n\
             [service]\nlog_level = \"warn\"\n",
            dir.join(format!("state-{name}")).display()
        ),
    )
    .unwrap();
    config
}

fn aggregator_cmd(args: &[&str], config: &Path) -> Command {
    let mut cmd = Command::new(aggregator());
    cmd.args(args.iter().take(1))
        .arg("--config")
        .arg(config)
        .args(args.iter().skip(1));
    cmd
}

struct Case {
    name: &'static str,
    format: &'static str,
    layout: &'static str,
    fields: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "text_default",
        format: "text",
        layout: "default",
        fields: DEFAULT_FIELDS,
    },
    Case {
        name: "text_default_hive",
        format: "text",
        layout: "hive",
        fields: DEFAULT_FIELDS,
    },
    Case {
        name: "text_custom",
        format: "text",
        layout: "default",
        fields: CUSTOM_FIELDS,
    },
    Case {
        name: "text_custom_hive",
        format: "text",
        layout: "hive",
        fields: CUSTOM_FIELDS,
    },
    Case {
        name: "parquet_all_fields",
        format: "parquet",
        layout: "default",
        fields: ALL_FIELDS,
    },
    Case {
        name: "parquet_default_hive",
        format: "parquet",
        layout: "hive",
        fields: DEFAULT_FIELDS,
    },
];

#[test]
fn spark_and_duckdb_run_the_ddl_and_every_named_query_with_the_expected_results() {
    let started = Instant::now();
    python();
    require_java();
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(dir.path());

    let mut cases = Vec::new();
    for case in CASES {
        let out_dir = dir.path().join(format!("out-{}", case.name));
        let config = write_config(
            dir.path(),
            case.name,
            &format!(
                "format = \"{}\"\nlayout = \"{}\"\nlog_format = \"{}\"",
                case.format,
                case.layout,
                log_format(case.fields)
            ),
            &format!("type = \"local\"\npath = \"{}\"", out_dir.display()),
        );
        let out = aggregator_cmd(&["import"], &config)
            .arg(&input)
            .output()
            .unwrap();
        assert_ok(&format!("{}: import", case.name), &out);

        // For engines without partition projection: the table and its partitions.
        let queries = dir.path().join(format!("queries-{}", case.name));
        let out = aggregator_cmd(
            &["athena-ddl", "--no-projection", "--partitions", "--queries"],
            &config,
        )
        .arg(&queries)
        .output()
        .unwrap();
        assert_ok(&format!("{}: athena-ddl --partitions", case.name), &out);
        let ddl = dir.path().join(format!("{}.sql", case.name));
        std::fs::write(&ddl, &out.stdout).unwrap();

        // The full DDL, with projection, as Athena gets it.
        let out = aggregator_cmd(&["athena-ddl"], &config).output().unwrap();
        assert_ok(&format!("{}: athena-ddl", case.name), &out);
        let text = String::from_utf8(out.stdout.clone()).unwrap();
        assert!(
            text.contains("\"projection.enabled\"=\"true\"")
                || text.contains("'projection.enabled'='true'"),
            "{}: no projection in\n{text}",
            case.name
        );
        let ddl_projection = dir.path().join(format!("{}-projection.sql", case.name));
        std::fs::write(&ddl_projection, &out.stdout).unwrap();

        cases.push(json!({
            "name": case.name,
            "ddl": ddl,
            "ddl_projection": ddl_projection,
            "queries": queries,
            "format": case.format,
            "layout": case.layout,
            "fields": case.fields,
        }));
    }
    let manifest = dir.path().join("manifest.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec_pretty(&json!({
            "input": input,
            "account_id": ACCOUNT,
            "region": REGION,
            "cases": cases,
        }))
        .unwrap(),
    )
    .unwrap();
    let prepared = started.elapsed();

    let out = output_within(
        Command::new(python())
            .arg(script())
            .arg("engines")
            .arg(&manifest)
            // Spark's and Derby's scratch files go here, not into the source tree.
            .current_dir(dir.path()),
        PYTHON_TIMEOUT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "athena_proof.py engines: exit {:?}\n{stdout}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("all 36 queries of 6 cases agree on Spark and DuckDB"),
        "{stdout}"
    );
    println!(
        "prepared 6 outputs in {prepared:.1?}, engines done after {:.1?}",
        started.elapsed()
    );
}

#[test]
fn flowlogs_reader_reads_every_record_of_our_s3_text_and_parquet_objects() {
    python();
    let dir = tempfile::tempdir().unwrap();
    let input = generate_input(dir.path());
    let s3 = S3TestServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bucket = rt.block_on(s3.unique_bucket("flowlogs-reader")).unwrap();

    for (name, output, prefix, fields) in [
        // The AWS default: text, default format, default layout.
        (
            "text",
            "format = \"text\"".to_owned(),
            "text/flows",
            DEFAULT_FIELDS,
        ),
        // Parquet with every field; dictionary pages off (the default), which the pure-Python
        // `parquet` package flowlogs-reader uses needs.
        (
            "parquet",
            format!(
                "format = \"parquet\"\nlog_format = \"{}\"",
                log_format(ALL_FIELDS)
            ),
            "parquet/flows",
            ALL_FIELDS,
        ),
    ] {
        let config = write_config(
            dir.path(),
            &format!("s3-{name}"),
            &format!("{output}\nprefix = \"{prefix}\""),
            &format!(
                "type = \"s3\"\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"",
                s3.endpoint
            ),
        );
        let with_credentials = |cmd: &mut Command| {
            cmd.env("AWS_ACCESS_KEY_ID", &s3.access_key_id)
                .env("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key)
                .env_remove("AWS_PROFILE")
                .env_remove("AWS_SESSION_TOKEN")
                .env("AWS_EC2_METADATA_DISABLED", "true");
        };
        let mut import = aggregator_cmd(&["import"], &config);
        import.arg(&input);
        with_credentials(&mut import);
        assert_ok(&format!("{name}: import"), &import.output().unwrap());

        let keys = rt.block_on(s3.list_keys(&bucket)).unwrap();
        let suffix = if name == "text" {
            ".log.gz"
        } else {
            ".log.parquet"
        };
        let ours: Vec<_> = keys.iter().filter(|k| k.starts_with(prefix)).collect();
        assert!(
            !ours.is_empty() && ours.iter().all(|k| k.ends_with(suffix)),
            "{keys:?}"
        );

        // The table of an S3 sink points at the bucket and prefix.
        let mut ddl = aggregator_cmd(&["athena-ddl"], &config);
        with_credentials(&mut ddl);
        let out = ddl.output().unwrap();
        assert_ok(&format!("{name}: athena-ddl"), &out);
        let text = String::from_utf8_lossy(&out.stdout);
        let location = format!("LOCATION 's3://{bucket}/{prefix}/AWSLogs/'");
        assert!(text.contains(&location), "no {location} in\n{text}");

        let mut reader = Command::new(python());
        reader
            .arg(script())
            .arg("flowlogs-reader")
            .arg("--input")
            .arg(&input)
            .args(["--location", &format!("{bucket}/{prefix}")])
            .args(["--endpoint", &s3.endpoint])
            .args(["--region", &s3.region])
            .args(["--fields", &fields.join(",")])
            .args(["--format", name])
            .current_dir(dir.path());
        with_credentials(&mut reader);
        let out = output_within(&mut reader, PYTHON_TIMEOUT);
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!("{stdout}");
        assert!(
            out.status.success(),
            "athena_proof.py flowlogs-reader ({name}): exit {:?}\n{stdout}\n--- stderr ---\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_query_the_format_cannot_answer_is_refused_with_exit_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "tiny",
        &format!(
            "log_format = \"{}\"",
            log_format(&[
                "account-id",
                "interface-id",
                "srcaddr",
                "dstaddr",
                "dstport",
                "action",
                "packets"
            ])
        ),
        &format!(
            "type = \"local\"\npath = \"{}\"",
            dir.path().join("out").display()
        ),
    );

    let queries = dir.path().join("asked");
    let out = aggregator_cmd(
        &["athena-ddl", "--query", "top-talkers", "--queries"],
        &config,
    )
    .arg(&queries)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("top-talkers") && stderr.contains("bytes"),
        "{stderr}"
    );
    let written = std::fs::read_dir(&queries).map_or(0, |d| d.count());
    assert_eq!(written, 0, "nothing may be written after the refusal");

    // Without --query, exactly the queries the format can answer are written.
    let queries = dir.path().join("all");
    let out = aggregator_cmd(&["athena-ddl", "--queries"], &config)
        .arg(&queries)
        .output()
        .unwrap();
    assert_ok("athena-ddl --queries", &out);
    let mut files: Vec<String> = std::fs::read_dir(&queries)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["rejected-traffic.sql", "ssh-rdp-traffic.sql"]);
    // Without `protocol`, the SSH/RDP query cannot restrict itself to TCP.
    let ssh = std::fs::read_to_string(queries.join("ssh-rdp-traffic.sql")).unwrap();
    assert!(
        ssh.contains("IN (22, 3389)") && !ssh.contains("protocol = 6"),
        "{ssh}"
    );
}
