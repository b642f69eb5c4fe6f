//! `flowlog-aggregator import`: publishes existing flow log files through the pipeline.
//!
//! Each input's progress travels in the WAL with its records, so a crashed or interrupted
//! import re-run with the same command resumes exactly where its records stop, and a
//! finished input is not published again. Account and region of each record come from the
//! record when its format has them, else from the input's AWS-style file name, else from
//! `[flow_log]`.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flowlog_formats::input::InputError;
use flowlog_formats::key::parse_key;
use flowlog_formats::{FlowRecord, LogFormat};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::config::Settings;
use crate::convert::{Input, flow_log_stem};
use flowlog_publish::pipeline::batch::{ImportMark, WalBatch};
use flowlog_publish::pipeline::window::check_publishable;
use flowlog_publish::pipeline::{Pipeline, PipelineError};
use flowlog_publish::quarantine::{Quarantined, REASON_OUT_OF_RANGE};

/// Records per WAL entry during an import.
pub const IMPORT_BATCH_RECORDS: usize = 16_384;

/// How many malformed lines are logged one by one (the rest are counted).
const LOGGED_BAD_LINES: u64 = 20;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Inputs read (fully or the rest of them).
    pub inputs_read: usize,
    /// Inputs skipped because an earlier run already imported them.
    pub inputs_already_done: usize,
    /// Records sent to the pipeline by this run.
    pub records: u64,
    /// Records skipped because an interrupted earlier run had already imported them.
    pub records_resumed: u64,
    /// Malformed lines or rows left out.
    pub bad_records: u64,
    /// Records that parse but cannot be published (a time after year 9999, `start` after
    /// `end`, a counter above `bigint`), set aside under the state directory's `quarantine/`.
    pub quarantined: u64,
    /// Bytes of input read.
    pub input_bytes: u64,
    /// True if the run was interrupted (SIGINT/SIGTERM) before the end of its inputs.
    pub interrupted: bool,
}

/// Failure of an import.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// An input could not be opened or read.
    #[error("{input}")]
    Input {
        /// The input.
        input: String,
        /// Cause.
        #[source]
        source: InputError,
    },
    /// An input file could not be identified.
    #[error("cannot read {input}")]
    Identify {
        /// The input.
        input: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Returns the identity of an input file: a hash of its absolute path, size, modification
/// time and first MiB, so a re-run finds its progress and a changed file counts as new.
pub fn input_id(path: &Path) -> std::io::Result<String> {
    let abs = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&abs)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut head = Vec::with_capacity(1 << 20);
    File::open(&abs)?.take(1 << 20).read_to_end(&mut head)?;
    let mut h = Sha256::new();
    h.update(abs.to_string_lossy().as_bytes());
    h.update(meta.len().to_le_bytes());
    h.update(mtime.to_le_bytes());
    h.update(&head);
    Ok(h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Imports `inputs` into a running pipeline. `headerless` gives the format of text inputs
/// that have no header line (CloudWatch Logs exports). Stops early, keeping progress,
/// when `stop` is set.
pub fn import(
    pipeline: &Pipeline,
    settings: &Settings,
    inputs: &[Input],
    headerless: Option<&LogFormat>,
    stop: &AtomicBool,
) -> Result<ImportSummary, ImportError> {
    let mut summary = ImportSummary::default();
    let started = Instant::now();
    let bar = progress_bar(inputs.len());
    for (n, input) in inputs.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            summary.interrupted = true;
            break;
        }
        let name = input.name();
        let (id, size) = match input {
            Input::Path(p) => {
                let id = input_id(p).map_err(|source| ImportError::Identify {
                    input: name.clone(),
                    source,
                })?;
                (id, std::fs::metadata(p).map_or(0, |m| m.len()))
            }
            Input::Stdin => (format!("stdin-{}", started.elapsed().as_nanos()), 0),
        };
        let done_before = pipeline.import_progress(&id).cloned();
        if done_before.as_ref().is_some_and(|m| m.done) {
            tracing::info!(input = %name, "already imported; nothing new to publish");
            summary.inputs_already_done += 1;
            continue;
        }
        let resume_at = done_before.map_or(0, |m| m.consumed);
        if resume_at > 0 {
            tracing::info!(input = %name, records = resume_at, "resuming an interrupted import");
        }
        let source = input
            .open(headerless.cloned())
            .map_err(|source| ImportError::Input {
                input: name.clone(),
                source,
            })?;
        let fallback = || {
            (
                settings.publish.flow_log.account_id.clone(),
                settings.publish.flow_log.region.clone(),
            )
        };
        let (account_id, region) = match input {
            Input::Path(p) => identity_from_name(p).unwrap_or_else(fallback),
            Input::Stdin => fallback(),
        };
        let unit = source.unit();
        let new_batch = |consumed: u64, done: bool| WalBatch {
            flow_log_id: settings.publish.flow_log.id.clone(),
            account_id: account_id.clone(),
            region: region.clone(),
            import: Some(ImportMark {
                input: id.clone(),
                consumed,
                done,
            }),
            records: pipeline.record_buffer(IMPORT_BATCH_RECORDS),
        };
        let mut consumed = 0u64;
        let mut batch = new_batch(0, false);
        let quarantine = pipeline.quarantine();
        let source_name = format!("import {name}");
        // Set aside before the batch they were read with is submitted.
        let mut unpublishable: Vec<(u64, &'static str, String, FlowRecord)> = Vec::new();
        let set_aside = |unpublishable: &mut Vec<(u64, &'static str, String, FlowRecord)>| {
            let entries: Vec<Quarantined<'_>> = unpublishable
                .iter()
                .map(|(i, field, problem, record)| Quarantined {
                    source: &source_name,
                    index: *i,
                    field,
                    problem: problem.clone(),
                    record,
                    reason: REASON_OUT_OF_RANGE,
                })
                .collect();
            let result = quarantine.put(&entries);
            unpublishable.clear();
            result.map_err(PipelineError::from)
        };
        let mut interrupted = false;
        for item in source {
            consumed += 1;
            if consumed <= resume_at {
                summary.records_resumed += 1;
                continue;
            }
            match item {
                Ok(record) => match check_publishable(&record) {
                    Ok(()) => batch.records.push(record),
                    Err((field, problem)) => {
                        summary.quarantined += 1;
                        unpublishable.push((consumed - 1, field, problem, record));
                    }
                },
                Err(e) if e.is_record_error() => {
                    summary.bad_records += 1;
                    if summary.bad_records <= LOGGED_BAD_LINES {
                        tracing::warn!(input = %name, error = %e, "skipping a malformed {unit}");
                    }
                }
                Err(source) => {
                    return Err(ImportError::Input {
                        input: name,
                        source,
                    });
                }
            }
            if batch.records.len() >= IMPORT_BATCH_RECORDS
                || unpublishable.len() >= IMPORT_BATCH_RECORDS
            {
                set_aside(&mut unpublishable)?;
                summary.records += batch.records.len() as u64;
                let full = std::mem::replace(&mut batch, new_batch(0, false));
                pipeline.submit(WalBatch {
                    import: Some(ImportMark {
                        input: id.clone(),
                        consumed,
                        done: false,
                    }),
                    ..full
                })?;
                bar.set_position(summary.records);
                bar.set_message(rate_message(&summary, n, inputs.len(), started));
                if stop.load(Ordering::Relaxed) {
                    interrupted = true;
                    break;
                }
            }
        }
        set_aside(&mut unpublishable)?;
        summary.records += batch.records.len() as u64;
        pipeline.submit(WalBatch {
            import: Some(ImportMark {
                input: id.clone(),
                consumed,
                done: !interrupted,
            }),
            ..batch
        })?;
        if interrupted {
            summary.interrupted = true;
            break;
        }
        summary.inputs_read += 1;
        summary.input_bytes += size;
        bar.set_position(summary.records);
        bar.set_message(rate_message(&summary, n + 1, inputs.len(), started));
    }
    bar.finish_and_clear();
    if summary.bad_records > LOGGED_BAD_LINES {
        tracing::warn!(
            count = summary.bad_records - LOGGED_BAD_LINES,
            "further malformed lines skipped without logging"
        );
    }
    Ok(summary)
}

/// Returns the account and region of an AWS-style file name
/// (`{acct}_vpcflowlogs_{region}_{fl-id}_{ts}_{hash}.log.gz`), also when the file was
/// unpacked or renamed to `.log`, `.txt` or `.gz`.
fn identity_from_name(path: &Path) -> Option<(String, String)> {
    let name = path.file_name()?.to_string_lossy();
    let stem = flow_log_stem(&name);
    parse_key(&format!("{stem}.log.gz"))
        .ok()
        .map(|k| (k.account_id, k.region))
}

fn progress_bar(inputs: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {human_pos} records ({per_sec}) {msg}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(format!("0/{inputs} files"));
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

fn rate_message(
    summary: &ImportSummary,
    files_done: usize,
    files: usize,
    started: Instant,
) -> String {
    let secs = started.elapsed().as_secs_f64().max(0.001);
    format!(
        "{files_done}/{files} files, {:.1} MB/s",
        summary.input_bytes as f64 / secs / 1e6
    )
}
