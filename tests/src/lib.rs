//! `flowlog-tests`: cross-crate end-to-end tests and the harness other crates' tests use.
//!
//! - [`s3`]: an S3-compatible server on 127.0.0.1 (moto in server mode, signature
//!   checking on) started per test process, helpers to read what landed in it, and a
//!   [`s3::FlakyProxy`] that simulates an endpoint going down and coming back.
//! - [`slow_proxy`]: a TCP proxy that adds latency to every request (a slow S3).
//! - [`pki`]: a throw-away CA with server and client certificates for TLS tests.
//! - [`records`]: deterministic flow records spread over windows.
//! - [`frames`]: valid link-layer frames, built inside out (Ethernet, VLAN, IPv4/IPv6, TCP, UDP, ICMP).
//! - [`published_records`]: every record of every flow log file below a directory.
//! - [`binaries`]: builds the workspace's executables the end-to-end tests run.
//!
//! The Python side lives in the venv `scripts/setup-test-env.sh` creates (`$FLOWLOG_VENV`,
//! by default `target/test-venv`); the integration tests under `tests/` use it too.

pub mod frames;
pub mod pki;
pub mod records;
pub mod s3;
pub mod slow_proxy;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use flowlog_formats::FlowRecord;
use flowlog_formats::input::RecordSource;

/// Builds (if needed) `flowlog-agent`, `flowlog-aggregator` and `gen_pcap` in the profile
/// of the running test, and returns the directory holding them (`target/<profile>`).
///
/// This crate's tests run the other crates' executables, which cargo only builds for
/// their own packages' tests. Every test asks for the same set, so cargo resolves the
/// same features each time and nothing is rebuilt between tests.
pub fn binaries() -> anyhow::Result<&'static Path> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = DIR.get() {
        return Ok(dir);
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "flowlog-agent",
            "-p",
            "flowlog-aggregator",
            "-p",
            "flowlog-benches",
            "--bin",
            "flowlog-agent",
            "--bin",
            "flowlog-aggregator",
            "--bin",
            "gen_pcap",
        ])
        .current_dir(s3::workspace_root())
        // `cargo test` sets it for the test process; handed on, it changes what some build
        // scripts (ring's) see, and everything above them would be built again, and again
        // back by the next ordinary cargo command.
        .env_remove("CARGO_MANIFEST_DIR")
        .status()
        .context("running cargo build")?;
    anyhow::ensure!(status.success(), "building the binaries failed: {status}");
    // target/<profile>/deps/<test executable> → target/<profile>
    let exe = std::env::current_exe().context("locating the test executable")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?
        .to_path_buf();
    for bin in ["flowlog-agent", "flowlog-aggregator", "gen_pcap"] {
        anyhow::ensure!(
            dir.join(bin).exists(),
            "{} is missing",
            dir.join(bin).display()
        );
    }
    Ok(DIR.get_or_init(|| dir))
}

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
