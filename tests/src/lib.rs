//! `flowlog-tests`: cross-crate end-to-end tests and the harness other crates' tests use.
//!
//! - [`s3`]: an S3-compatible server on 127.0.0.1 (moto in server mode, signature
//!   checking on) started per test process, helpers to read what landed in it, and a
//!   [`s3::FlakyProxy`] that simulates an endpoint going down and coming back.
//! - [`pki`]: a throw-away CA with server and client certificates for TLS tests.
//! - [`published_records`]: every record of every flow log file below a directory.
//!
//! The Python side lives in the venv `scripts/setup-test-env.sh` creates (`$FLOWLOG_VENV`,
//! by default `target/test-venv`); the integration tests under `tests/` use it too.

pub mod pki;
pub mod s3;

use std::path::Path;

use anyhow::Context;
use flowlog_formats::FlowRecord;
use flowlog_formats::input::RecordSource;

/// Reads every flow log file (text, gzip'd or not, or Parquet) below `root`, skipping
/// entries whose name starts with `.` (temporary copies); returns the number of files and
/// their records. An unreadable directory or file is an error naming it.
pub fn published_records(root: &Path) -> anyhow::Result<(usize, Vec<FlowRecord>)> {
    let mut files = 0;
    let mut records = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let path = entry.with_context(|| dir.display().to_string())?.path();
            let hidden = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let source =
                RecordSource::open_path(&path, None).with_context(|| path.display().to_string())?;
            for record in source {
                records.push(record.with_context(|| path.display().to_string())?);
            }
        }
    }
    Ok((files, records))
}
