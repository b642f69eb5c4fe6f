//! `[output]`: what is written and how files are cut.

use std::time::Duration;

use flowlog_formats::LogFormat;
use flowlog_formats::key::{KeyLayout, KeyPrefix};
use flowlog_formats::parquet::ParquetOptions;
use serde::Deserialize;

use super::{ByteSize, Problems, duration};

/// Output encoding (`[output] format`, `convert --format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Space-separated text with a header line; gzip'd when the output name ends in `.gz`
    /// and always in directory mode (`.log.gz`).
    Text,
    /// Parquet (`.log.parquet`), GZIP codec, the VPC flow logs schema.
    Parquet,
}

/// The most a single object may hold: AWS's historic per-file limit.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 75_000_000;

/// `[output]`.
#[derive(Debug, Clone)]
pub struct OutputSettings {
    /// Text or Parquet.
    pub format: OutputFormat,
    /// Fields of every record.
    pub log_format: LogFormat,
    /// Key layout.
    pub layout: KeyLayout,
    /// Optional folder in front of `AWSLogs/`.
    pub prefix: KeyPrefix,
    /// No object is larger than this (stored bytes).
    pub max_file_bytes: u64,
    /// Width of a file window (divides one hour).
    pub window: Duration,
    /// How long a window stays open after its end for records that arrive late.
    pub grace: Duration,
    /// gzip level of text files.
    pub gzip_level: u32,
    /// Parquet writer options.
    pub parquet: ParquetOptions,
    /// Encoder threads (files of different streams are encoded in parallel).
    pub workers: usize,
    /// Memory for records waiting in streams and for open encoders; beyond it the streams
    /// holding the most go to their encoders, then the largest stream's file is sealed.
    pub memory_budget: u64,
    /// `max_open_files` was set: it no longer has any effect (a warning at start).
    pub max_open_files_set: bool,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct RawOutput {
    format: Option<String>,
    log_format: Option<String>,
    layout: Option<String>,
    prefix: Option<String>,
    max_file_bytes: Option<ByteSize>,
    window: Option<String>,
    grace: Option<String>,
    gzip_level: Option<u32>,
    parquet_dictionary: Option<bool>,
    parquet_row_group_rows: Option<usize>,
    workers: Option<usize>,
    memory_budget: Option<ByteSize>,
    /// No longer used; accepted so that configs written for earlier versions still load.
    max_open_files: Option<usize>,
}

pub(crate) fn validate_output(raw: RawOutput, p: &mut Problems) -> Option<OutputSettings> {
    let format = match raw.format.as_deref() {
        None | Some("text") => Some(OutputFormat::Text),
        Some("parquet") => Some(OutputFormat::Parquet),
        Some(other) => {
            p.add(
                "output.format",
                format!("'{other}' is not one of text, parquet"),
            );
            None
        }
    };
    let log_format = match raw.log_format.as_deref() {
        None => Some(LogFormat::aws_default()),
        Some(s) => p.check("output.log_format", LogFormat::parse(s)),
    };
    let layout = match raw.layout.as_deref() {
        None => Some(KeyLayout::Default),
        Some(s) => p.check("output.layout", s.parse::<KeyLayout>()),
    };
    let prefix = p.check(
        "output.prefix",
        KeyPrefix::parse(raw.prefix.as_deref().unwrap_or("")),
    );
    let max_file_bytes = raw.max_file_bytes.map_or(DEFAULT_MAX_FILE_BYTES, |b| b.0);
    if max_file_bytes < 64 * 1024 {
        p.add(
            "output.max_file_bytes",
            format!("{max_file_bytes} is too small (at least 65536 bytes)"),
        );
    }
    let window = duration(
        "output.window",
        raw.window.as_deref(),
        Duration::from_secs(300),
        p,
    );
    let w = window.as_secs();
    if window.subsec_nanos() != 0 || w < 60 || 3600 % w != 0 {
        p.add(
            "output.window",
            format!("{} does not divide 1h into whole minutes (5m is the AWS value; 1m, 2m, 10m, 15m, … are allowed for tests)", humantime::format_duration(window)),
        );
    }
    let grace = duration(
        "output.grace",
        raw.grace.as_deref(),
        Duration::from_secs(60),
        p,
    );
    let gzip_level = raw.gzip_level.unwrap_or(6);
    if gzip_level > 9 {
        p.add(
            "output.gzip_level",
            format!("{gzip_level} is not a gzip level (0-9)"),
        );
    }
    let mut parquet = ParquetOptions {
        dictionary: raw.parquet_dictionary.unwrap_or(false),
        gzip_level,
        ..ParquetOptions::default()
    };
    if let Some(rows) = raw.parquet_row_group_rows {
        if rows == 0 {
            p.add("output.parquet_row_group_rows", "must be at least 1");
        }
        parquet.max_row_group_rows = rows.max(1);
    }
    let workers = match raw.workers {
        None | Some(0) => default_workers(),
        Some(n) => n,
    };
    if workers > 256 {
        p.add(
            "output.workers",
            format!("{workers} encoder threads: at most 256 (0 = one per core, the default)"),
        );
    }
    let memory_budget = raw.memory_budget.map_or(DEFAULT_MEMORY_BUDGET, |b| b.0);
    if memory_budget < 16 << 20 {
        p.add(
            "output.memory_budget",
            format!("{memory_budget} bytes is too small (at least 16 MiB)"),
        );
    }
    Some(OutputSettings {
        format: format?,
        log_format: log_format?,
        layout: layout?,
        prefix: prefix?,
        max_file_bytes,
        window,
        grace,
        gzip_level,
        parquet,
        workers: workers.clamp(1, 256),
        memory_budget,
        max_open_files_set: raw.max_open_files.is_some(),
    })
}

/// Default of `[output] memory_budget`.
pub const DEFAULT_MEMORY_BUDGET: u64 = 1 << 30;

/// Default of `[output] workers`: the cores this process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
