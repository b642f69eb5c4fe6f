//! `flowlog-aggregator athena-ddl` on real output: the partitions it lists are the folders
//! `import` wrote (local directory and a real S3-compatible server), the projection covers
//! the accounts and first day found, and bad requests are refused naming the culprit.
//! The DDL and queries are run on real engines by `tests/tests/athena.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use chrono::{DateTime, Datelike, Timelike};
use common::*;
use flowlog_formats::{FlowRecord, LogFormat};
use flowlog_tests::s3::S3TestServer;

const B_ACCOUNT: &str = "210987654321";

/// Records over two accounts whose window ends fall on two days and several hours:
/// 2024-01-01 00:00–00:10, and 23:50–00:05 around the next midnight.
fn input_records() -> Vec<FlowRecord> {
    let mut recs = records(600, 2, &[A_ACCOUNT, B_ACCOUNT], false, 5);
    let late = records(400, 3, &[B_ACCOUNT], false, 7);
    for mut r in late {
        let shift = 86_400 - 600; // 23:50 the same day
        r.start = r.start.map(|s| s + shift);
        r.end = r.end.map(|e| e + shift);
        recs.push(r);
    }
    recs
}

/// `(account, "yyyy/MM/dd", hour)` of the folder each record is written to.
fn expected_partitions(
    recs: &[FlowRecord],
    hourly: bool,
) -> BTreeSet<(String, String, Option<u32>)> {
    recs.iter()
        .map(|r| {
            let window_end = (r.end.unwrap() / 300 + 1) * 300;
            let ts = DateTime::from_timestamp(window_end as i64, 0).unwrap();
            (
                r.account_id.as_deref().unwrap().to_owned(),
                format!("{:04}/{:02}/{:02}", ts.year(), ts.month(), ts.day()),
                hourly.then_some(ts.hour()),
            )
        })
        .collect()
}

fn ddl(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(["athena-ddl", "--config"])
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// Parses the `ALTER TABLE … PARTITION (…) LOCATION '…';` lines into
/// `(account, day, hour, location)`.
fn parse_partitions(sql: &str, hive: bool) -> Vec<(String, String, Option<u32>, String)> {
    sql.lines()
        .filter(|l| l.starts_with("ALTER TABLE"))
        .map(|l| {
            let spec = l.split_once("PARTITION (").unwrap().1;
            let (spec, rest) = spec.split_once(") LOCATION '").unwrap();
            let location = rest.trim_end_matches("';").to_owned();
            let values: Vec<(&str, &str)> = spec
                .split(", ")
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k, v.trim_matches('\''))
                })
                .collect();
            let get = |k: &str| values.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
            let day = if hive {
                format!(
                    "{}/{}/{}",
                    get("year").unwrap(),
                    get("month").unwrap(),
                    get("day").unwrap()
                )
            } else {
                get("day").unwrap().to_owned()
            };
            (
                get("accid").unwrap().to_owned(),
                day,
                get("hour").map(|h| h.parse().unwrap()),
                location,
            )
        })
        .collect()
}

#[test]
fn local_hourly_partitions_are_the_folders_written() {
    let setup = Setup::local("layout = \"hourly\"");
    let recs = input_records();
    let input = setup.input("in.log");
    write_text(&input, &LogFormat::aws_default(), &recs);
    assert_ok(&setup.import(&[&input]));

    let out = ddl(&setup.config, &["--partitions"], &[]);
    assert_ok(&out);
    let sql = String::from_utf8(out.stdout).unwrap();
    let found = parse_partitions(&sql, false);
    let got: BTreeSet<_> = found
        .iter()
        .map(|(a, d, h, _)| (a.clone(), d.clone(), *h))
        .collect();
    assert_eq!(got, expected_partitions(&recs, true));
    assert_eq!(found.len(), got.len(), "a partition listed twice:\n{sql}");
    // Every LOCATION is a folder that exists and holds files.
    for (_, _, _, location) in &found {
        let path = location.strip_prefix("file://").unwrap();
        assert!(
            std::fs::read_dir(path).unwrap().next().is_some(),
            "{location}"
        );
    }
    // The projection enumerates both accounts and starts on the first day.
    assert!(
        sql.contains(&format!(
            "\"projection.accid.values\"=\"{A_ACCOUNT},{B_ACCOUNT}\""
        )),
        "{sql}"
    );
    assert!(
        sql.contains("\"projection.day.range\"=\"2024/01/01,NOW\""),
        "{sql}"
    );
    assert!(sql.contains("\"projection.hour.digits\"=\"2\""), "{sql}");

    // [athena] wins over what is found.
    let config = std::fs::read_to_string(&setup.config).unwrap()
        + "\n[athena]\ntable = \"flows\"\ndatabase = \"net\"\naccounts = [\"111122223333\"]\nregions = [\"us-east-1\", \"eu-west-3\"]\nsince = \"2023-06-01\"\n";
    std::fs::write(&setup.config, config).unwrap();
    let out = ddl(&setup.config, &[], &[]);
    assert_ok(&out);
    let sql = String::from_utf8(out.stdout).unwrap();
    assert!(
        sql.starts_with("CREATE EXTERNAL TABLE IF NOT EXISTS `net`.`flows` ("),
        "{sql}"
    );
    assert!(
        sql.contains("\"projection.accid.values\"=\"111122223333\""),
        "{sql}"
    );
    assert!(
        sql.contains("\"projection.awsregion.values\"=\"eu-west-3,us-east-1\""),
        "{sql}"
    );
    assert!(
        sql.contains("\"projection.day.range\"=\"2023/06/01,NOW\""),
        "{sql}"
    );
    assert!(!sql.contains("ALTER TABLE"), "{sql}");
}

#[test]
fn s3_hive_hourly_partitions_are_listed_from_the_bucket() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s3 = S3TestServer::start().unwrap();
    let bucket = rt.block_on(s3.unique_bucket("athena-ddl")).unwrap();
    let setup = Setup::local("layout = \"hive-hourly\"\nprefix = \"team/flows\"");
    // Point the sink at the bucket.
    let config = std::fs::read_to_string(&setup.config).unwrap().replace(
        &format!("[sink]\ntype = \"local\"\npath = \"{}\"\n", setup.out.display()),
        &format!(
            "[sink]\ntype = \"s3\"\nbucket = \"{bucket}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\n",
            s3.endpoint
        ),
    );
    assert!(config.contains("type = \"s3\""));
    std::fs::write(&setup.config, config).unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", s3.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_access_key.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let recs = input_records();
    let input = setup.input("in.log");
    write_text(&input, &LogFormat::aws_default(), &recs);
    let out = Command::new(BIN)
        .args(["import", "--config"])
        .arg(&setup.config)
        .arg(&input)
        .envs(env)
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert_ok(&out);

    let out = ddl(&setup.config, &["--partitions", "--no-projection"], &env);
    assert_ok(&out);
    let sql = String::from_utf8(out.stdout).unwrap();
    assert!(!sql.contains("projection"), "{sql}");
    assert!(
        sql.contains(&format!("LOCATION 's3://{bucket}/team/flows/AWSLogs/'")),
        "{sql}"
    );
    let found = parse_partitions(&sql, true);
    let got: BTreeSet<_> = found
        .iter()
        .map(|(a, d, h, _)| (a.clone(), d.clone(), *h))
        .collect();
    assert_eq!(got, expected_partitions(&recs, true));
    // Each LOCATION is the folder of objects in the bucket.
    let keys = rt.block_on(s3.list_keys(&bucket)).unwrap();
    for (_, _, _, location) in &found {
        let folder = location.strip_prefix(&format!("s3://{bucket}/")).unwrap();
        assert!(
            keys.iter()
                .any(|k| k.strip_prefix(folder).is_some_and(|f| !f.contains('/'))),
            "no object directly in {location}"
        );
    }
}

#[test]
fn queries_the_format_cannot_answer_are_refused_by_name() {
    let setup = Setup::local(
        "log_format = \"${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${dstport} ${packets} ${start} ${end} ${log-status}\"",
    );
    let dir = setup.dir.path().join("queries");

    // Asked for by name: refused, naming the query and the missing field; nothing written.
    let out = ddl(
        &setup.config,
        &["--queries", dir.to_str().unwrap(), "--query", "top-talkers"],
        &[],
    );
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("query 'top-talkers' needs the field(s) bytes"),
        "{err}"
    );
    assert!(!dir.exists());

    // All queries: the possible ones are written, the others listed with their fields.
    let out = ddl(&setup.config, &["--queries", dir.to_str().unwrap()], &[]);
    assert_ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    for line in [
        "not written: top-talkers.sql (the format lacks bytes)",
        "not written: rejected-traffic.sql (the format lacks action)",
        "not written: interface-traffic-by-day.sql (the format lacks bytes)",
        "not written: total-bytes.sql (the format lacks bytes)",
    ] {
        assert!(err.contains(line), "{line} missing from {err}");
    }
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    assert_eq!(written, ["ssh-rdp-traffic.sql"]);

    let out = ddl(&setup.config, &["--query", "top-talker"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("unknown query 'top-talker'; expected one of top-talkers,")
    );
}

#[test]
fn a_bad_athena_section_is_refused_with_every_problem() {
    let setup = Setup::local("");
    let config = std::fs::read_to_string(&setup.config).unwrap()
        + "\n[athena]\ntable = \"Flow-Logs\"\naccounts = [\"12\"]\nregions = [\"Mars 1\"]\nsince = \"yesterday\"\ncolour = \"blue\"\n";
    std::fs::write(&setup.config, config).unwrap();
    let out = ddl(&setup.config, &[], &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "athena.table",
        "athena.accounts",
        "athena.regions",
        "athena.since",
        "athena.colour",
    ] {
        assert!(err.contains(key), "{key} missing from {err}");
    }
    let out = ddl(&setup.config.with_file_name("nope.toml"), &[], &[]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn an_agent_standalone_config_is_read_for_what_the_table_needs() {
    let example = flowlog_tests::s3::workspace_root().join("docs/agent.example.toml");
    let out = ddl(&example, &["--no-projection"], &[]);
    assert_ok(&out);
    let sql = String::from_utf8(out.stdout).unwrap();
    assert!(
        sql.starts_with("CREATE EXTERNAL TABLE IF NOT EXISTS `vpc_flow_logs` ("),
        "{sql}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not used by athena-ddl: capture"), "{err}");

    // A real problem is still refused, with the unknown keys listed beside it.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    std::fs::write(
        &bad,
        text.replacen("layout = \"default\"", "layout = \"sideways\"", 1),
    )
    .unwrap();
    let out = ddl(&bad, &[], &[]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("output.layout"), "{err}");
}
