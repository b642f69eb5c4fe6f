//! Shared helpers of the aggregator's end-to-end tests.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::DateTime;
use flowlog_formats::input::RecordSource;
use flowlog_formats::key::{FileKind, KeyLayout, KeyParts, KeyPrefix, hash8, object_key};
use flowlog_formats::text::{TextWriter, encode_line};
use flowlog_formats::{FlowRecord, LogFormat};

pub const BIN: &str = env!("CARGO_BIN_EXE_flowlog-aggregator");

pub use flowlog_tests::records::{A_ACCOUNT, Rng, T0, records};

/// Writes records as a plain text file with a header in `format`.
pub fn write_text(path: &Path, format: &LogFormat, records: &[FlowRecord]) {
    let mut w = TextWriter::new(
        std::io::BufWriter::new(std::fs::File::create(path).unwrap()),
        format.clone(),
    )
    .unwrap();
    for r in records {
        w.write_record(r).unwrap();
    }
    std::io::Write::flush(&mut w.finish().unwrap()).unwrap();
}

/// Every file below `root` (recursively), as paths relative to `root`.
pub fn files_below(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            // Hidden entries (`.flowlog-tmp`, `.flowlog-probe`) are the sink's scratch
            // space, not published objects.
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Lines (in `format`) of every record published below `root`, counted.
pub fn published_lines(root: &Path, format: &LogFormat) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for f in files_below(root) {
        let source = RecordSource::open_path(&root.join(&f), None).unwrap();
        for r in source {
            *out.entry(line(format, &r.unwrap())).or_insert(0) += 1;
        }
    }
    out
}

/// Counted lines of `records` in `format`.
pub fn expected_lines(records: &[FlowRecord], format: &LogFormat) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in records {
        *out.entry(line(format, r)).or_insert(0) += 1;
    }
    out
}

pub fn line(format: &LogFormat, r: &FlowRecord) -> String {
    let mut out = Vec::new();
    encode_line(&mut out, format, format.version(), r);
    String::from_utf8(out).unwrap()
}

/// A test directory with a config for the local sink.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub out: PathBuf,
    pub state: PathBuf,
}

impl Setup {
    /// `extra_output` is appended to `[output]`.
    pub fn local(extra_output: &str) -> Setup {
        Setup::local_in(&std::env::temp_dir(), extra_output)
    }

    /// Like [`Setup::local`], with the scratch directory below `parent` (e.g. a tmpfs, where
    /// the many fsyncs of a test about file counts cost nothing).
    pub fn local_in(parent: &Path, extra_output: &str) -> Setup {
        let dir = tempfile::tempdir_in(parent).unwrap();
        let out = dir.path().join("out");
        let state = dir.path().join("state");
        let config = dir.path().join("aggregator.toml");
        std::fs::write(
            &config,
            format!(
                "[flow_log]\nid = \"fl-0123456789abcdef0\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\n\n\
                 [output]\n{extra_output}\n\n[sink]\ntype = \"local\"\npath = \"{}\"\n\n[state]\ndir = \"{}\"\nwriter_id = \"test-writer\"\nwal_segment_bytes = \"1MiB\"\n\n\
                 [service]\nshutdown_grace = \"20s\"\nlog_level = \"warn\"\n",
                out.display(),
                state.display()
            ),
        )
        .unwrap();
        Setup {
            dir,
            config,
            out,
            state,
        }
    }

    pub fn input(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn import(&self, inputs: &[&Path]) -> Output {
        Command::new(BIN)
            .args(["import", "--config"])
            .arg(&self.config)
            .args(inputs)
            .output()
            .expect("run flowlog-aggregator import")
    }
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The keys the pipeline must produce for `records` imported in one batch by a fresh state
/// directory with writer id `test-writer`: one text file per (account, window), hashed from
/// the position of its first record (LSN 1, index i).
pub fn expected_keys(
    records: &[FlowRecord],
    layout: KeyLayout,
    prefix: &KeyPrefix,
    region: &str,
) -> Vec<String> {
    let mut first: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        let window_end = (r.end.unwrap() / 300 + 1) * 300;
        first
            .entry((r.account_id.as_deref().unwrap().to_owned(), window_end))
            .or_insert((1u64 << 24) | i as u64);
    }
    let mut keys: Vec<String> = first
        .into_iter()
        .map(|((account, window_end), pos)| {
            let hash = hash8(format!("test-writer/{window_end}/{pos}").as_bytes());
            let parts = KeyParts {
                account_id: &account,
                region,
                flow_log_id: "fl-0123456789abcdef0",
                file_timestamp: DateTime::from_timestamp(window_end as i64, 0).unwrap(),
                hash8: &hash,
                kind: FileKind::Text,
            };
            object_key(layout, prefix, &parts).unwrap()
        })
        .collect();
    keys.sort();
    keys
}
