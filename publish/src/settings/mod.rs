//! The publishing pipeline's settings: `[flow_log]`, `[output]`, `[sink]`, `[state]` and
//! `[service]`, one module per section, validated with every problem listed under its key.
//!
//! Programs embed these sections in their own config file: the aggregator adds `[listen]`
//! and `[athena]`, the agent's standalone mode its capture sections. They call
//! [`parse_table`] with the publishing sections, or the per-section functions through
//! [`Sections`], and report the [`Problem`]s together with their own.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

mod flow_log;
mod output;
mod service;
mod sink;
mod state;

pub use flow_log::FlowLogSettings;
pub use output::{
    DEFAULT_MAX_FILE_BYTES, DEFAULT_MEMORY_BUDGET, OutputFormat, OutputSettings, default_workers,
};
pub use service::ServiceSettings;
pub use state::{DEFAULT_MAX_QUARANTINE_BYTES, DEFAULT_MAX_WAL_BYTES, StateSettings};

pub use crate::sink::SinkSettings;

/// Validated settings of the publishing pipeline (`serve`, `import`, the agent's standalone
/// mode).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Identity used in keys when records do not say otherwise.
    pub flow_log: FlowLogSettings,
    /// What is written and how files are cut.
    pub output: OutputSettings,
    /// Where finished files go.
    pub sink: SinkSettings,
    /// Local state: WAL, staging, manifest.
    pub state: StateSettings,
    /// Logs, metrics, shutdown.
    pub service: ServiceSettings,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`output.window`), or `(file)` for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A byte size: an integer, or a string with a unit (`"64MiB"`, `"75MB"`, `"512KiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    /// Parses the text form ([`flowlog_runtime::parse_size`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        flowlog_runtime::parse_size(s)
            .map(ByteSize)
            .map_err(|e| e.to_string())
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(ByteSize(n)),
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The publishing sections and their keys; anything else is refused. Programs that embed
/// these sections in a config of their own use it to split their file.
pub const SECTIONS: &[(&str, &[&str])] = &[
    ("flow_log", &["id", "account_id", "region"]),
    (
        "output",
        &[
            "format",
            "log_format",
            "layout",
            "prefix",
            "max_file_bytes",
            "window",
            "grace",
            "gzip_level",
            "parquet_dictionary",
            "parquet_row_group_rows",
            "workers",
            "memory_budget",
            "max_open_files",
        ],
    ),
    (
        "sink",
        &[
            "type",
            "path",
            "max_pending_uploads",
            "bucket",
            "region",
            "endpoint_url",
            "force_path_style",
            "role_arn",
            "external_id",
            "role_session_name",
            "sse",
            "kms_key_id",
            "bucket_key_enabled",
            "acl",
            "storage_class",
            "checksum",
            "multipart_threshold",
            "part_size",
            "upload_concurrency",
            "if_none_match",
        ],
    ),
    (
        "state",
        &[
            "dir",
            "fsync",
            "wal_segment_bytes",
            "writer_id",
            "max_wal_bytes",
            "max_quarantine_bytes",
        ],
    ),
    (
        "service",
        &[
            "shutdown_grace",
            "metrics_address",
            "log_format",
            "log_level",
        ],
    ),
];

/// Returns a key as it is written in TOML: bare if it can be, else quoted, so that a
/// problem names even an empty or odd key (`[""]` is the section `""`).
pub fn toml_key(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// Collects problems while validating.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Runs `check` and records its error under `key`; returns the value if valid.
    pub fn check<T, E: fmt::Display>(&mut self, key: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.add(key, e.to_string())).ok()
    }
}

pub fn section<T: for<'de> Deserialize<'de> + Default>(
    table: &toml::Table,
    name: &str,
    problems: &mut Problems,
) -> T {
    match table.get(name) {
        None => T::default(),
        Some(value) => match value.clone().try_into::<T>() {
            Ok(v) => v,
            Err(e) => {
                problems.add(name, e.message().to_owned());
                T::default()
            }
        },
    }
}

pub fn duration(
    key: &str,
    value: Option<&str>,
    default: Duration,
    problems: &mut Problems,
) -> Duration {
    match value {
        None => default,
        Some(s) => problems
            .check(
                key,
                flowlog_runtime::parse_duration(s).map_err(|e| {
                    format!("'{s}' is not a duration such as \"60s\" or \"5m\" ({e})")
                }),
            )
            .unwrap_or(default),
    }
}

pub fn required(key: &str, value: Option<String>, p: &mut Problems) -> Option<String> {
    match value {
        Some(v) if !v.trim().is_empty() => Some(v),
        _ => {
            p.add(key, "is required");
            None
        }
    }
}

/// Validates config text that holds the publishing sections only (tests, tools): unknown
/// sections and keys are problems too.
pub fn parse(text: &str) -> Result<Settings, Vec<Problem>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        vec![Problem {
            key: "(syntax)".into(),
            message: e.to_string().trim().to_owned(),
        }]
    })?;
    parse_table(&table)
}

/// Adds a problem for every section of `table` not in `sections`, every key a section does
/// not have, and every section that is not a table.
pub fn check_keys<'a>(
    table: &toml::Table,
    sections: impl Iterator<Item = &'a (&'static str, &'static [&'static str])> + Clone,
    p: &mut Problems,
) {
    for (name, value) in table {
        match sections.clone().find(|(s, _)| s == name) {
            None => p.add(
                toml_key(name),
                format!(
                    "unknown section; expected one of {}",
                    sections
                        .clone()
                        .map(|(s, _)| *s)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Some((_, keys)) => match value.as_table() {
                None => p.add(name.as_str(), "must be a table ([section])"),
                Some(t) => {
                    for key in t.keys().filter(|k| !keys.contains(&k.as_str())) {
                        p.add(format!("{name}.{}", toml_key(key)), "unknown key");
                    }
                }
            },
        }
    }
}

/// Validates a parsed config table that holds the publishing sections only (the agent
/// splits its file into its own sections and these); unknown sections and keys are
/// problems too. Returns every problem otherwise.
pub fn parse_table(table: &toml::Table) -> Result<Settings, Vec<Problem>> {
    let mut p = Problems::default();
    check_keys(table, SECTIONS.iter(), &mut p);
    let settings = validate_sections(table, &mut p);
    match settings {
        Some(s) if p.0.is_empty() => Ok(s),
        _ => Err(p.0),
    }
}

/// Validates the publishing sections of `table` into `p`; `None` when a section without a
/// usable default is invalid (its problems are in `p`).
pub fn validate_sections(table: &toml::Table, p: &mut Problems) -> Option<Settings> {
    let own = |name: &str| known_only(table, name, section_keys(name).unwrap_or(&[]));
    let flow: flow_log::RawFlowLog = section(&own("flow_log"), "flow_log", p);
    let out: output::RawOutput = section(&own("output"), "output", p);
    let raw_sink: sink::RawSink = section(&own("sink"), "sink", p);
    let raw_state: state::RawState = section(&own("state"), "state", p);
    let raw_service: service::RawService = section(&own("service"), "service", p);
    let flow_log = flow_log::validate_flow_log(flow, p);
    let output = output::validate_output(out, p);
    let sink = sink::validate_sink(raw_sink, &output, p);
    let state = state::validate_state(raw_state, p);
    let service = service::validate_service(raw_service, p);
    Some(Settings {
        flow_log: flow_log?,
        output: output?,
        sink: sink?,
        state,
        service,
    })
}

/// The keys of [`SECTIONS`] a section `name` may hold.
pub fn section_keys(name: &str) -> Option<&'static [&'static str]> {
    SECTIONS.iter().find(|(s, _)| *s == name).map(|(_, k)| *k)
}

/// A table holding only section `name` of `table`, with only the given keys (unknown ones
/// are reported once, by the caller's check of the whole file).
pub fn known_only(table: &toml::Table, name: &str, keys: &[&str]) -> toml::Table {
    let mut t = toml::Table::new();
    if let Some(toml::Value::Table(section)) = table.get(name) {
        for (k, v) in section.iter().filter(|(k, _)| keys.contains(&k.as_str())) {
            t.insert(k.clone(), v.clone());
        }
    }
    let mut outer = toml::Table::new();
    outer.insert(name.to_owned(), toml::Value::Table(t));
    outer
}
