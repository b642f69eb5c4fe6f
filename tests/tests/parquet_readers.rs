//! Parquet objects written by `ParquetWriter` read back exactly with pyarrow and with the
//! pure-Python `parquet` 1.3.1 package that flowlogs-reader 5.0.1 uses
//! (`tests/python/read_parquet.py`).
//!
//! The readers live in the venv `scripts/setup-test-env.sh` creates (`$FLOWLOG_VENV`, by
//! default `target/test-venv`). Without it these tests are skipped with a note, except
//! under `CI=true`, where they fail.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};
use flowlog_formats::parquet::{ParquetOptions, ParquetWriter};
use flowlog_formats::{FieldId, FlowRecord, LogFormat, ParquetType, Value};
use serde_json::json;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Returns the venv's python, `None` (skip) if it is missing outside CI.
fn venv_python() -> anyhow::Result<Option<PathBuf>> {
    let venv = std::env::var_os("FLOWLOG_VENV")
        .map_or_else(|| workspace_root().join("target/test-venv"), PathBuf::from);
    let python = venv.join("bin/python");
    if python.exists() {
        return Ok(Some(python));
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        bail!(
            "{} is missing: run scripts/setup-test-env.sh first",
            python.display()
        );
    }
    eprintln!(
        "\n*** NOTE: SKIPPING the Python Parquet reader tests: {} is missing.\n\
         *** Run scripts/setup-test-env.sh to install pyarrow and parquet 1.3.1.\n",
        python.display()
    );
    Ok(None)
}

/// The expected-values file of `read_parquet.py`: the schema as an object in column order
/// (built by hand, since `serde_json` maps are sorted) and one object per row.
fn expected_json(format: &LogFormat, records: &[FlowRecord]) -> String {
    let schema: Vec<String> = format
        .fields()
        .iter()
        .map(|f| {
            let kind = match f.parquet_type() {
                ParquetType::Int32 => "int32",
                ParquetType::Int64 => "int64",
                ParquetType::Utf8 => "string",
            };
            format!("{}: \"{kind}\"", json!(f.column_name()))
        })
        .collect();
    let rows: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            let row = format.fields().iter().map(|f| {
                let value = match (f, r.get(*f)) {
                    (FieldId::Version, _) => json!(format.version()),
                    (_, Value::Absent) => serde_json::Value::Null,
                    (_, Value::Int(v)) => json!(v),
                    (_, Value::Str(s)) => json!(s),
                    (_, Value::Ip(ip)) => json!(ip.to_string()),
                };
                (f.column_name(), value)
            });
            serde_json::Value::Object(row.collect())
        })
        .collect();
    format!(
        "{{\"schema\": {{{}}}, \"rows\": {}}}",
        schema.join(", "),
        serde_json::Value::Array(rows)
    )
}

/// Writes `records` as Parquet and has `read_parquet.py` compare what the Python readers
/// see with what was written.
fn check(
    name: &str,
    format: &LogFormat,
    records: &[FlowRecord],
    options: &ParquetOptions,
) -> anyhow::Result<()> {
    let Some(python) = venv_python()? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let parquet = dir.path().join(format!("{name}.log.parquet"));
    let expected = dir.path().join(format!("{name}.json"));
    let mut writer = ParquetWriter::new(
        BufWriter::new(File::create(&parquet)?),
        format.clone(),
        options,
    )?;
    for r in records {
        writer.write_record(r)?;
    }
    writer.finish()?.into_inner().context("flushing the file")?;
    std::fs::write(&expected, expected_json(format, records))?;

    let mut command = Command::new(&python);
    command.arg(workspace_root().join("tests/python/read_parquet.py"));
    if options.dictionary {
        // RLE_DICTIONARY pages are beyond the `parquet` package.
        command.arg("--pyarrow-only");
    }
    let output = command.arg(&parquet).arg(&expected).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "read_parquet.py failed on {name} ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    eprint!("{name}: {stdout}");
    let columns = format.len();
    ensure!(
        stdout.starts_with(&format!("ok: {} rows, {columns} columns", records.len())),
        "unexpected output: {stdout}"
    );
    Ok(())
}

fn record(values: &[(FieldId, &str)]) -> anyhow::Result<FlowRecord> {
    let mut r = FlowRecord::default();
    for (f, v) in values {
        r.set_str(*f, v)?;
    }
    Ok(r)
}

/// A record with every field of `format` set (`version` aside).
fn filled(format: &LogFormat, seed: u64) -> anyhow::Result<FlowRecord> {
    let mut r = FlowRecord::default();
    for f in format.fields() {
        let value = match f {
            FieldId::Version => continue,
            FieldId::SrcAddr | FieldId::PktSrcAddr => format!("10.0.{}.{}", seed % 256, seed % 7),
            FieldId::DstAddr | FieldId::PktDstAddr => format!("2001:db8::{seed:x}"),
            FieldId::Action => "REJECT".to_owned(),
            FieldId::LogStatus => "OK".to_owned(),
            FieldId::Type => "IPv6".to_owned(),
            FieldId::FlowDirection => "egress".to_owned(),
            FieldId::Packets | FieldId::Bytes => (i64::MAX - seed as i64).to_string(),
            f if f.is_integer() => ((seed + f.index() as u64) % 256).to_string(),
            f => format!("{f}-{seed}"),
        };
        r.set_str(*f, &value)?;
    }
    Ok(r)
}

/// Default-format rows: accepted and rejected IPv4 flows, IPv6, ICMP without ports,
/// NODATA and SKIPDATA rows, then `bulk` generated rows with absent values sprinkled in.
fn default_rows(bulk: u64) -> anyhow::Result<Vec<FlowRecord>> {
    use FieldId::*;
    let account = "123456789010";
    let mut rows = vec![
        record(&[
            (AccountId, account),
            (InterfaceId, "eni-1235b8ca123456789"),
            (SrcAddr, "172.31.16.139"),
            (DstAddr, "172.31.16.21"),
            (SrcPort, "20641"),
            (DstPort, "22"),
            (Protocol, "6"),
            (Packets, "20"),
            (Bytes, "4249"),
            (Start, "1418530010"),
            (End, "1418530070"),
            (Action, "ACCEPT"),
            (LogStatus, "OK"),
        ])?,
        record(&[
            (AccountId, account),
            (InterfaceId, "eni-1235b8ca123456789"),
            (SrcAddr, "2001:db8:1234:a100:8d6e:3477:df66:f105"),
            (DstAddr, "2001:db8:1234:a102:3304:8879:34cf:4071"),
            (SrcPort, "34892"),
            (DstPort, "22"),
            (Protocol, "6"),
            (Packets, "54"),
            (Bytes, "8855"),
            (Start, "1477913708"),
            (End, "1477913820"),
            (Action, "ACCEPT"),
            (LogStatus, "OK"),
        ])?,
        record(&[
            (AccountId, account),
            (InterfaceId, "eni-1235b8ca123456789"),
            (SrcAddr, "203.0.113.12"),
            (DstAddr, "172.31.9.69"),
            (Protocol, "1"),
            (Packets, "4"),
            (Bytes, "336"),
            (Start, "1432917027"),
            (End, "1432917142"),
            (Action, "REJECT"),
            (LogStatus, "OK"),
        ])?,
        FlowRecord::no_data(
            Some(account.into()),
            Some("eni-1a2b3c4d".into()),
            1431280876,
            1431280934,
        ),
        FlowRecord::skip_data(
            Some(account.into()),
            Some("eni-4b118871".into()),
            1431280876,
            1431280934,
        ),
    ];
    for i in 0..bulk {
        let mut r = filled(&LogFormat::aws_default(), i)?;
        if i % 3 == 0 {
            r.srcport = None;
        }
        if i % 7 == 0 {
            r.interface_id = None;
        }
        if i % 1000 == 999 {
            r = FlowRecord::no_data(Some(account.into()), None, i, i + 60);
        }
        rows.push(r);
    }
    Ok(rows)
}

#[test]
fn default_format_with_nodata_and_ipv6() -> anyhow::Result<()> {
    check(
        "default",
        &LogFormat::aws_default(),
        &default_rows(0)?,
        &ParquetOptions::default(),
    )
}

#[test]
fn empty_file() -> anyhow::Result<()> {
    check(
        "empty",
        &LogFormat::aws_default(),
        &[],
        &ParquetOptions::default(),
    )
}

#[test]
fn several_row_groups_and_pages() -> anyhow::Result<()> {
    // 25 000-row groups: the first has two data pages per column (pages close at 20 000).
    let options = ParquetOptions {
        max_row_group_rows: 25_000,
        ..ParquetOptions::default()
    };
    check(
        "bulk",
        &LogFormat::aws_default(),
        &default_rows(30_000)?,
        &options,
    )
}

#[test]
fn aws_v5_format() -> anyhow::Result<()> {
    let format = LogFormat::from_fields(FieldId::ALL[..29].to_vec())?;
    ensure!(format.version() == 5 && format.contains(FieldId::TrafficPath));
    let mut rows = vec![filled(&format, 1)?, filled(&format, 2)?];
    rows.extend(default_rows(0)?);
    check("v5", &format, &rows, &ParquetOptions::default())
}

#[test]
fn full_catalog() -> anyhow::Result<()> {
    let format = LogFormat::from_fields(FieldId::ALL.to_vec())?;
    let mut rows = vec![filled(&format, 1)?, filled(&format, 99)?];
    rows.extend(default_rows(0)?);
    check("full", &format, &rows, &ParquetOptions::default())
}

#[test]
fn dictionary_encoding_is_read_by_pyarrow() -> anyhow::Result<()> {
    let options = ParquetOptions {
        dictionary: true,
        ..ParquetOptions::default()
    };
    check(
        "dictionary",
        &LogFormat::aws_default(),
        &default_rows(2_000)?,
        &options,
    )
}
