//! Records that cannot be published go to a dead-letter file instead of stopping anything.
//!
//! A record is quarantined when a value would make its file impossible to name or to read
//! (a time past year 9999, a counter above the `bigint` range), when `serve` finds its
//! times outside the window it accepts around its clock (`[listen] max_record_age` /
//! `max_record_ahead`), or when a record already in the WAL turns out unpublishable on
//! replay. The rest of its batch goes on as usual.
//!
//! Each quarantined record is one JSON line in `<state dir>/quarantine/<UTC date>.jsonl`:
//!
//! ```json
//! {"time":"2026-12-07T17:10:57Z","source":"agent web-1 spool 00ab… seq 42","record_index":3,
//!  "field":"end","problem":"…","record":{"srcaddr":"10.0.0.1","end":253402300800,…}}
//! ```
//!
//! The lines are fsync'd before the batch they came from is acknowledged. At most
//! `[state] max_quarantine_bytes` are kept (files of earlier days count too); past that,
//! records are counted in `flowlog_quarantined_records_total` and logged, not written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use flowlog_formats::FlowRecord;

use crate::telemetry::Metrics;

/// Directory under the state directory.
pub const DIR: &str = "quarantine";

/// One record set aside, and why.
#[derive(Debug)]
pub struct Quarantined<'a> {
    /// Where the record came from (agent and batch, or input file).
    pub source: &'a str,
    /// Index of the record within its batch or input.
    pub index: u64,
    /// Field (flow log name) that is wrong.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
    /// The record.
    pub record: &'a FlowRecord,
    /// `reason` label of `flowlog_quarantined_records_total`.
    pub reason: &'static str,
}

/// All `reason` label values (telemetry owns the metric's labels).
pub use crate::telemetry::QUARANTINE_REASONS as REASONS;
/// `reason`: a time outside the window `serve` accepts around its clock.
pub const REASON_TIME_WINDOW: &str = REASONS[0];
/// `reason`: a value no output can hold (year > 9999, counter above `bigint`).
pub const REASON_OUT_OF_RANGE: &str = REASONS[1];

/// The quarantine cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write quarantined records to {path}")]
pub struct QuarantineError {
    /// The file.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

#[derive(Debug)]
struct Open {
    day: String,
    path: PathBuf,
    file: File,
}

#[derive(Debug)]
struct State {
    open: Option<Open>,
    /// Bytes in the directory (measured at start, then counted).
    used: u64,
    /// Whether the limit has been logged since start.
    full_logged: bool,
}

/// The dead-letter files of one state directory.
#[derive(Debug)]
pub struct Quarantine {
    dir: PathBuf,
    max_bytes: u64,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(std::fs::Metadata::is_file)
            .map(|m| m.len())
            .sum()
    })
}

/// The record as a JSON object of its present fields (exact values: counters as they came).
fn record_json(record: &FlowRecord) -> serde_json::Value {
    match serde_json::to_value(record) {
        Ok(serde_json::Value::Object(map)) => {
            serde_json::Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect())
        }
        Ok(other) => other,
        Err(e) => serde_json::Value::String(format!("(cannot be shown: {e})")),
    }
}

impl Quarantine {
    /// The quarantine of the state directory `state_dir` (its directory is created when the
    /// first record is quarantined).
    pub fn new(state_dir: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> Quarantine {
        let dir = state_dir.join(DIR);
        let used = dir_bytes(&dir);
        Quarantine {
            dir,
            max_bytes,
            metrics,
            state: Mutex::new(State {
                open: None,
                used,
                full_logged: false,
            }),
        }
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `records` (one JSON line each) and makes them durable. Every record is logged
    /// at ERROR naming its source, index and field, and counted.
    pub fn put(&self, records: &[Quarantined<'_>]) -> Result<(), QuarantineError> {
        if records.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now();
        let time = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut lines = Vec::new();
        for q in records {
            tracing::error!(
                source = q.source,
                record = q.index,
                field = q.field,
                problem = %q.problem,
                "quarantined a record that cannot be published"
            );
            self.metrics.observe_quarantined(q.reason);
            let line = serde_json::json!({
                "time": time,
                "source": q.source,
                "record_index": q.index,
                "field": q.field,
                "problem": q.problem,
                "record": record_json(q.record),
            });
            lines.extend(line.to_string().bytes());
            lines.push(b'\n');
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let len = lines.len() as u64;
        if state.used.saturating_add(len) > self.max_bytes {
            self.metrics.quarantine_dropped.inc_by(records.len() as u64);
            if !state.full_logged {
                state.full_logged = true;
                tracing::error!(
                    dir = %self.dir.display(),
                    limit = self.max_bytes,
                    "the quarantine is full (state.max_quarantine_bytes): further records that cannot be published are counted and dropped; inspect and remove old files"
                );
            }
            return Ok(());
        }
        let day = now.format("%Y-%m-%d").to_string();
        if state.open.as_ref().is_none_or(|o| o.day != day) {
            let path = self.dir.join(format!("{day}.jsonl"));
            let file = open_append(&self.dir, &path).map_err(|source| QuarantineError {
                path: path.clone(),
                source,
            })?;
            state.open = Some(Open { day, path, file });
        }
        let Some(open) = state.open.as_mut() else {
            return Ok(());
        };
        let written = open
            .file
            .write_all(&lines)
            .and_then(|()| open.file.sync_data());
        if let Err(source) = written {
            let path = open.path.clone();
            state.open = None;
            return Err(QuarantineError { path, source });
        }
        state.used += len;
        Ok(())
    }
}

fn open_append(dir: &Path, path: &Path) -> std::io::Result<File> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    // A new file's directory entry is made durable too.
    flowlog_runtime::sync_dir(dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_source_field_and_keep_exact_values() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let q = Quarantine::new(dir.path(), 1 << 20, Arc::clone(&metrics));
        let mut record = FlowRecord::no_data(Some("123456789012".into()), None, 1, 2);
        record.packets = Some(u64::MAX);
        q.put(&[Quarantined {
            source: "agent web-1 seq 7",
            index: 3,
            field: "packets",
            problem: "too large".into(),
            record: &record,
            reason: REASON_OUT_OF_RANGE,
        }])
        .unwrap();
        let files: Vec<_> = std::fs::read_dir(q.dir()).unwrap().collect();
        assert_eq!(files.len(), 1);
        let path = files[0].as_ref().unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["source"], "agent web-1 seq 7");
        assert_eq!(line["record_index"], 3);
        assert_eq!(line["field"], "packets");
        assert_eq!(line["record"]["packets"], u64::MAX);
        assert_eq!(line["record"]["account_id"], "123456789012");
        assert!(line["record"].get("srcaddr").is_none());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(metrics.quarantined_total(), 1);
    }

    #[test]
    fn past_the_limit_records_are_counted_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let q = Quarantine::new(dir.path(), 10, Arc::clone(&metrics));
        let record = FlowRecord::default();
        let entry = Quarantined {
            source: "import x.log",
            index: 0,
            field: "end",
            problem: "year 10000".into(),
            record: &record,
            reason: REASON_OUT_OF_RANGE,
        };
        q.put(&[entry]).unwrap();
        assert!(!q.dir().exists());
        assert_eq!(metrics.quarantine_dropped.get(), 1);
        assert_eq!(metrics.quarantined_total(), 1);
    }
}
