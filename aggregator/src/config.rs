//! Configuration: a TOML file read once at startup into validated [`Settings`].
//!
//! Every problem is reported at once, each naming its key (`output.window: …`): unknown
//! keys, wrong types and invalid values alike. `docs/configuration.md` documents every key.
//!
//! [`load`] checks the text of the file only. `serve` and `check-config` use
//! [`load_with`] to also read the files `[listen]` names (certificates, key, tokens) and,
//! for `serve`, to require `[listen]`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use flowlog_formats::LogFormat;
use flowlog_formats::key::{
    KeyLayout, KeyPrefix, validate_account_id, validate_flow_log_id, validate_region,
};
use flowlog_formats::parquet::ParquetOptions;
use flowlog_runtime::service;
use serde::Deserialize;

pub use crate::sink::SinkSettings;
use crate::sink::s3::{ChecksumMode, S3Settings, Sse};
use crate::telemetry::LogOutput;
use crate::wal::FsyncPolicy;

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

/// Validated settings of the aggregator (and of the agent's standalone mode).
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
    /// The gRPC endpoint agents push to (`serve` only); `None` when the file has no
    /// `[listen]` section.
    pub listen: Option<ListenSettings>,
    /// What `athena-ddl` generates.
    pub athena: AthenaSettings,
}

/// Default `athena.table`.
pub const DEFAULT_ATHENA_TABLE: &str = "vpc_flow_logs";

/// `[athena]`: the table `athena-ddl` describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AthenaSettings {
    /// Table name (lowercase letters, digits, `_`).
    pub table: String,
    /// Database the table is created in; `None` = the session's current database.
    pub database: Option<String>,
    /// Account ids the partition projection enumerates; empty = those found in the
    /// output plus `[flow_log] account_id`.
    pub accounts: Vec<String>,
    /// Regions the partition projection enumerates; empty = those found in the output
    /// plus `[flow_log] region`.
    pub regions: Vec<String>,
    /// First day the partition projection covers; `None` = the earliest day in the
    /// output (today when it is empty).
    pub since: Option<chrono::NaiveDate>,
}

impl Default for AthenaSettings {
    fn default() -> Self {
        AthenaSettings {
            table: DEFAULT_ATHENA_TABLE.to_owned(),
            database: None,
            accounts: Vec::new(),
            regions: Vec::new(),
            since: None,
        }
    }
}

/// Default `listen.address`.
pub const DEFAULT_LISTEN_ADDRESS: &str = "0.0.0.0:7443";

/// `[listen]`: the gRPC ingest endpoint of `serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenSettings {
    /// Address the server binds (port 0: any free port, logged at startup).
    pub address: SocketAddr,
    /// TLS files; `None` = plaintext (`insecure = true`).
    pub tls: Option<TlsFiles>,
    /// `agent-id token` lines.
    pub tokens_file: PathBuf,
    /// Largest push accepted (after decompression).
    pub max_batch_bytes: usize,
    /// Records accepted but not yet in the WAL, at most.
    pub max_pending_records: u32,
    /// Pushes being received and handled at once, at most.
    pub max_concurrent_pushes: usize,
    /// How long a push waits for room before it is refused as busy.
    pub push_timeout: Duration,
    /// Most records one push may hold (counted before any record is decoded).
    pub max_batch_records: u32,
    /// How long the body of a push may take to arrive once the call is admitted.
    pub body_timeout: Duration,
    /// Open connections at most; more are closed at once.
    pub max_connections: usize,
    /// Calls in progress on one connection at most (HTTP/2 `max_concurrent_streams`).
    pub max_calls_per_connection: u32,
    /// Calls of one agent (token) in progress at once, at most.
    pub max_calls_per_agent: usize,
    /// Records whose `start`/`end` lie further back than this are quarantined.
    pub max_record_age: Duration,
    /// Records whose `start`/`end` lie further ahead of the clock are quarantined.
    pub max_record_ahead: Duration,
}

/// The TLS files of `[listen]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// CA that client certificates must be signed by; `None` = no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// `[flow_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLogSettings {
    /// Flow log id (`fl-…`), in every file name.
    pub id: String,
    /// Account used when a record has no `account-id`.
    pub account_id: String,
    /// Region used when a record has no `region`.
    pub region: String,
}

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

/// `[state]`.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// Directory of the WAL, staged files and the manifest.
    pub dir: PathBuf,
    /// When WAL appends are made durable.
    pub fsync: FsyncPolicy,
    /// Size of WAL segment files.
    pub wal_segment_bytes: u64,
    /// Writer id in every file's hash; `None` = derived once and kept in the state dir.
    pub writer_id: Option<String>,
    /// Beyond this WAL size, the streams holding its oldest records are sealed.
    pub max_wal_bytes: u64,
    /// Most bytes of quarantined records kept under `quarantine/`; past it, records that
    /// cannot be published are counted and dropped.
    pub max_quarantine_bytes: u64,
}

/// `[service]`.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// How long shutdown may take to seal and upload before exiting anyway.
    pub shutdown_grace: Duration,
    /// Address of the `/metrics` and `/healthz` endpoint; `None` = off.
    pub metrics_address: Option<String>,
    /// Log output format.
    pub log_format: LogOutput,
    /// Log filter (`info`, `debug`, `flowlog_aggregator=debug,info`, …).
    pub log_level: String,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key (`output.window`), or `(file)` for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A config file that cannot be used; lists every problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// Every problem found.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}", self.path)?;
        for p in &self.problems {
            write!(f, "\n  {}: {}", p.key, p.message)?;
        }
        Ok(())
    }
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlowLog {
    id: Option<String>,
    account_id: Option<String>,
    region: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawOutput {
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

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(rename = "type")]
    kind: Option<String>,
    path: Option<PathBuf>,
    max_pending_uploads: Option<usize>,
    bucket: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
    force_path_style: Option<bool>,
    role_arn: Option<String>,
    external_id: Option<String>,
    role_session_name: Option<String>,
    sse: Option<String>,
    kms_key_id: Option<String>,
    bucket_key_enabled: Option<bool>,
    acl: Option<String>,
    storage_class: Option<String>,
    checksum: Option<String>,
    multipart_threshold: Option<ByteSize>,
    part_size: Option<ByteSize>,
    upload_concurrency: Option<usize>,
    if_none_match: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
    fsync: Option<String>,
    wal_segment_bytes: Option<ByteSize>,
    writer_id: Option<String>,
    max_wal_bytes: Option<ByteSize>,
    max_quarantine_bytes: Option<ByteSize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    address: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    tokens_file: Option<PathBuf>,
    insecure: Option<bool>,
    max_batch_bytes: Option<ByteSize>,
    max_pending_records: Option<u64>,
    max_concurrent_pushes: Option<usize>,
    push_timeout: Option<String>,
    max_batch_records: Option<u64>,
    body_timeout: Option<String>,
    max_connections: Option<usize>,
    max_calls_per_connection: Option<u64>,
    max_calls_per_agent: Option<usize>,
    max_record_age: Option<String>,
    max_record_ahead: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAthena {
    table: Option<String>,
    database: Option<String>,
    accounts: Option<Vec<String>>,
    regions: Option<Vec<String>>,
    since: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawService {
    shutdown_grace: Option<String>,
    metrics_address: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
}

/// Sections and their keys; anything else is refused. Programs that embed these sections
/// in a config of their own (the agent's standalone mode) use it to split their file.
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
    (
        "listen",
        &[
            "address",
            "tls_cert",
            "tls_key",
            "client_ca",
            "tokens_file",
            "insecure",
            "max_batch_bytes",
            "max_pending_records",
            "max_concurrent_pushes",
            "push_timeout",
            "max_batch_records",
            "body_timeout",
            "max_connections",
            "max_calls_per_connection",
            "max_calls_per_agent",
            "max_record_age",
            "max_record_ahead",
        ],
    ),
    (
        "athena",
        &["table", "database", "accounts", "regions", "since"],
    ),
];

/// Checks the files `[listen]` names (certificates, key, tokens file) and returns every
/// problem, each under its key: `serve::check_listen_files`. The config does not depend on
/// the server; whoever loads a config for `serve` passes it.
pub type ListenFilesCheck = fn(&ListenSettings) -> Vec<Problem>;

/// What [`load_with`] checks beyond the text of the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// `[listen]` must be present (`serve`).
    pub require_listen: bool,
    /// Read the files `[listen]` names with this check (`serve`, `check-config`).
    pub check_files: Option<ListenFilesCheck>,
    /// Accept sections and keys of other programs (`athena-ddl` reading the agent's
    /// standalone config, which also has `[capture]` and agent keys).
    pub ignore_unknown: bool,
}

/// Returns a key as it is written in TOML: bare if it can be, else quoted, so that a
/// problem names even an empty or odd key (`[""]` is the section `""`).
fn toml_key(key: &str) -> String {
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
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Runs `check` and records its error under `key`; returns the value if valid.
    fn check<T, E: fmt::Display>(&mut self, key: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.add(key, e.to_string())).ok()
    }
}

fn section<T: for<'de> Deserialize<'de> + Default>(
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

fn duration(
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

/// Reads and validates a config file (its text only: files named in `[listen]` are not
/// read; see [`load_with`]).
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    load_with(path, LoadOptions::default())
}

/// Reads and validates a config file, with the extra checks of `options`; every problem
/// is listed.
pub fn load_with(path: &Path, options: LoadOptions) -> Result<Settings, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: shown.clone(),
        problems: vec![Problem {
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse_with(&text, &shown, options)
}

/// Validates config text; `path` is used in the error only.
pub fn parse(text: &str, path: &str) -> Result<Settings, ConfigError> {
    parse_with(text, path, LoadOptions::default())
}

/// Validates config text with the extra checks of `options`; `path` is used in the error
/// only.
pub fn parse_with(text: &str, path: &str, options: LoadOptions) -> Result<Settings, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError {
        path: path.to_owned(),
        problems,
    };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        fail(vec![Problem {
            key: "(syntax)".into(),
            message: e.to_string().trim().to_owned(),
        }])
    })?;
    validate(&table, options).map_err(fail)
}

/// Validates an already parsed config table (the sections of [`SECTIONS`]); returns every
/// problem found otherwise.
pub fn parse_table(table: &toml::Table) -> Result<Settings, Vec<Problem>> {
    validate(table, LoadOptions::default())
}

fn validate(table: &toml::Table, options: LoadOptions) -> Result<Settings, Vec<Problem>> {
    let mut p = Problems::default();

    for (name, value) in table.iter().filter(|_| !options.ignore_unknown) {
        match SECTIONS.iter().find(|(s, _)| s == name) {
            None => p.add(
                toml_key(name),
                format!(
                    "unknown section; expected one of {}",
                    SECTIONS
                        .iter()
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
    let known_only = |name: &str| -> toml::Table {
        let keys = SECTIONS
            .iter()
            .find(|(s, _)| *s == name)
            .map_or(&[][..], |(_, k)| *k);
        let mut t = toml::Table::new();
        if let Some(toml::Value::Table(section)) = table.get(name) {
            for (k, v) in section.iter().filter(|(k, _)| keys.contains(&k.as_str())) {
                t.insert(k.clone(), v.clone());
            }
        }
        let mut outer = toml::Table::new();
        outer.insert(name.to_owned(), toml::Value::Table(t));
        outer
    };
    let flow: RawFlowLog = section(&known_only("flow_log"), "flow_log", &mut p);
    let out: RawOutput = section(&known_only("output"), "output", &mut p);
    let sink: RawSink = section(&known_only("sink"), "sink", &mut p);
    let state: RawState = section(&known_only("state"), "state", &mut p);
    let service: RawService = section(&known_only("service"), "service", &mut p);
    let athena: RawAthena = section(&known_only("athena"), "athena", &mut p);
    let listen: Option<RawListen> = table
        .contains_key("listen")
        .then(|| section(&known_only("listen"), "listen", &mut p));

    let flow_log = validate_flow_log(flow, &mut p);
    let output = validate_output(out, &mut p);
    let sink = validate_sink(sink, &output, &mut p);
    let state = validate_state(state, &mut p);
    let service = validate_service(service, &mut p);
    let athena = validate_athena(athena, &mut p);
    let listen = match listen {
        Some(raw) => validate_listen(raw, &mut p),
        None => {
            if options.require_listen {
                p.add(
                    "listen",
                    "serve needs a [listen] section (at least tls_cert, tls_key and tokens_file)",
                );
            }
            None
        }
    };
    if let (Some(check), Some(listen)) = (options.check_files, &listen) {
        for problem in check(listen) {
            p.0.push(problem);
        }
    }

    match (flow_log, output, sink) {
        (Some(flow_log), Some(output), Some(sink)) if p.0.is_empty() => Ok(Settings {
            flow_log,
            output,
            sink,
            state,
            service,
            listen,
            athena,
        }),
        _ => Err(p.0),
    }
}

fn validate_listen(raw: RawListen, p: &mut Problems) -> Option<ListenSettings> {
    let address_text = raw
        .address
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_LISTEN_ADDRESS.to_owned());
    let address = p.check(
        "listen.address",
        address_text.parse::<SocketAddr>().map_err(|_| {
            format!("'{address_text}' is not an address such as {DEFAULT_LISTEN_ADDRESS}")
        }),
    );
    let nonempty = |v: Option<PathBuf>| v.filter(|p| !p.as_os_str().is_empty());
    let (cert, key, client_ca) = (
        nonempty(raw.tls_cert),
        nonempty(raw.tls_key),
        nonempty(raw.client_ca),
    );
    let tls = if raw.insecure.unwrap_or(false) {
        for (k, set) in [
            ("tls_cert", cert.is_some()),
            ("tls_key", key.is_some()),
            ("client_ca", client_ca.is_some()),
        ] {
            if set {
                p.add(
                    format!("listen.{k}"),
                    "is not used with insecure = true (plaintext): remove it or set insecure = false",
                );
            }
        }
        Some(None)
    } else {
        const NEEDED: &str =
            "is required (or set insecure = true to serve plaintext, for tests only)";
        if cert.is_none() {
            p.add("listen.tls_cert", NEEDED);
        }
        if key.is_none() {
            p.add("listen.tls_key", NEEDED);
        }
        match (cert, key) {
            (Some(cert), Some(key)) => Some(Some(TlsFiles {
                cert,
                key,
                client_ca,
            })),
            _ => None,
        }
    };
    let tokens_file = nonempty(raw.tokens_file);
    if tokens_file.is_none() {
        p.add(
            "listen.tokens_file",
            "is required: a file of \"agent-id token\" lines",
        );
    }
    let max_batch_bytes = raw.max_batch_bytes.map_or(DEFAULT_MAX_BATCH_BYTES, |b| b.0);
    if max_batch_bytes < 1024 {
        p.add(
            "listen.max_batch_bytes",
            format!("{max_batch_bytes} is too small (at least 1KiB)"),
        );
    }
    let protocol_max = flowlog_transport::MAX_MESSAGE_BYTES as u64;
    if max_batch_bytes > protocol_max {
        p.add(
            "listen.max_batch_bytes",
            format!("{max_batch_bytes} is above the protocol's limit of {protocol_max} bytes"),
        );
    }
    let max_pending_records = raw.max_pending_records.unwrap_or(2_000_000);
    let max_pending_records = match u32::try_from(max_pending_records) {
        Ok(0) => {
            p.add("listen.max_pending_records", "must be at least 1");
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            p.add(
                "listen.max_pending_records",
                format!("{max_pending_records} is too large (at most {})", u32::MAX),
            );
            None
        }
    };
    let max_concurrent_pushes = raw.max_concurrent_pushes.unwrap_or(256);
    if max_concurrent_pushes == 0 {
        p.add("listen.max_concurrent_pushes", "must be at least 1");
    }
    let push_timeout = duration(
        "listen.push_timeout",
        raw.push_timeout.as_deref(),
        Duration::from_secs(10),
        p,
    );
    if push_timeout.is_zero() {
        p.add("listen.push_timeout", "must be longer than 0s");
    }
    let protocol_records = flowlog_transport::MAX_BATCH_RECORDS as u64;
    let max_batch_records = raw
        .max_batch_records
        .unwrap_or(u64::from(DEFAULT_MAX_BATCH_RECORDS));
    if !(1..=protocol_records).contains(&max_batch_records) {
        p.add(
            "listen.max_batch_records",
            format!("{max_batch_records} is not between 1 and {protocol_records}"),
        );
    }
    let body_timeout = duration(
        "listen.body_timeout",
        raw.body_timeout.as_deref(),
        DEFAULT_BODY_TIMEOUT,
        p,
    );
    if body_timeout.is_zero() {
        p.add("listen.body_timeout", "must be longer than 0s");
    }
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        p.add("listen.max_connections", "must be at least 1");
    }
    let max_calls_per_connection = raw
        .max_calls_per_connection
        .unwrap_or(u64::from(DEFAULT_MAX_CALLS_PER_CONNECTION));
    if !(1..=1024).contains(&max_calls_per_connection) {
        p.add(
            "listen.max_calls_per_connection",
            format!("{max_calls_per_connection} is not between 1 and 1024"),
        );
    }
    let max_calls_per_agent = raw
        .max_calls_per_agent
        .unwrap_or(DEFAULT_MAX_CALLS_PER_AGENT);
    if max_calls_per_agent == 0 {
        p.add("listen.max_calls_per_agent", "must be at least 1");
    }
    let max_record_age = duration(
        "listen.max_record_age",
        raw.max_record_age.as_deref(),
        DEFAULT_MAX_RECORD_AGE,
        p,
    );
    let max_record_ahead = duration(
        "listen.max_record_ahead",
        raw.max_record_ahead.as_deref(),
        DEFAULT_MAX_RECORD_AHEAD,
        p,
    );
    Some(ListenSettings {
        address: address?,
        tls: tls?,
        tokens_file: tokens_file?,
        max_batch_bytes: usize::try_from(max_batch_bytes).ok()?,
        max_pending_records: max_pending_records?,
        max_concurrent_pushes: max_concurrent_pushes.max(1),
        push_timeout,
        max_batch_records: u32::try_from(max_batch_records).ok()?,
        body_timeout,
        max_connections,
        max_calls_per_connection: u32::try_from(max_calls_per_connection).ok()?,
        max_calls_per_agent,
        max_record_age,
        max_record_ahead,
    })
}

/// Default `listen.max_batch_records` (ten times an agent's default batch).
pub const DEFAULT_MAX_BATCH_RECORDS: u32 = 100_000;
/// Default `listen.body_timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `listen.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `listen.max_calls_per_connection`.
pub const DEFAULT_MAX_CALLS_PER_CONNECTION: u32 = 16;
/// Default `listen.max_calls_per_agent` (four times an agent's default `max_in_flight`).
pub const DEFAULT_MAX_CALLS_PER_AGENT: usize = 16;
/// Default `listen.max_record_age`: 14 days.
pub const DEFAULT_MAX_RECORD_AGE: Duration = Duration::from_secs(14 * 86_400);
/// Default `listen.max_record_ahead`.
pub const DEFAULT_MAX_RECORD_AHEAD: Duration = Duration::from_secs(600);

/// Default `listen.max_batch_bytes`: 16 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 16 << 20;

fn required(key: &str, value: Option<String>, p: &mut Problems) -> Option<String> {
    match value {
        Some(v) if !v.trim().is_empty() => Some(v),
        _ => {
            p.add(key, "is required");
            None
        }
    }
}

/// Checks an Athena table or database name: 1–255 lowercase letters, digits and `_`,
/// not starting with a digit (Athena folds names to lowercase; this refuses the surprise).
pub fn validate_athena_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a table/database name: use 1-255 lowercase letters, digits and '_', not starting with a digit"
        ))
    }
}

fn validate_athena(raw: RawAthena, p: &mut Problems) -> AthenaSettings {
    let mut athena = AthenaSettings::default();
    if let Some(table) = raw.table
        && p.check("athena.table", validate_athena_name(&table))
            .is_some()
    {
        athena.table = table;
    }
    if let Some(database) = raw.database.filter(|d| !d.is_empty())
        && p.check("athena.database", validate_athena_name(&database))
            .is_some()
    {
        athena.database = Some(database);
    }
    for account in raw.accounts.unwrap_or_default() {
        if p.check("athena.accounts", validate_account_id(&account))
            .is_some()
            && !athena.accounts.contains(&account)
        {
            athena.accounts.push(account);
        }
    }
    for region in raw.regions.unwrap_or_default() {
        if p.check("athena.regions", validate_region(&region))
            .is_some()
            && !athena.regions.contains(&region)
        {
            athena.regions.push(region);
        }
    }
    if let Some(since) = raw.since.filter(|s| !s.is_empty()) {
        athena.since = p.check(
            "athena.since",
            chrono::NaiveDate::parse_from_str(&since, "%Y-%m-%d")
                .map_err(|e| format!("'{since}' is not a date such as 2026-01-01: {e}")),
        );
    }
    athena
}

fn validate_flow_log(raw: RawFlowLog, p: &mut Problems) -> Option<FlowLogSettings> {
    let id = required("flow_log.id", raw.id, p)
        .and_then(|v| p.check("flow_log.id", validate_flow_log_id(&v)).map(|()| v));
    let account_id = required("flow_log.account_id", raw.account_id, p).and_then(|v| {
        p.check("flow_log.account_id", validate_account_id(&v))
            .map(|()| v)
    });
    let region = required("flow_log.region", raw.region, p)
        .and_then(|v| p.check("flow_log.region", validate_region(&v)).map(|()| v));
    Some(FlowLogSettings {
        id: id?,
        account_id: account_id?,
        region: region?,
    })
}

fn validate_output(raw: RawOutput, p: &mut Problems) -> Option<OutputSettings> {
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

fn validate_sink(
    raw: RawSink,
    output: &Option<OutputSettings>,
    p: &mut Problems,
) -> Option<SinkSettings> {
    let max_pending_uploads = raw.max_pending_uploads.unwrap_or(16);
    if max_pending_uploads == 0 {
        p.add("sink.max_pending_uploads", "must be at least 1");
    }
    let s3_only: [(&str, bool); 17] = [
        ("bucket", raw.bucket.is_some()),
        ("region", raw.region.is_some()),
        ("endpoint_url", raw.endpoint_url.is_some()),
        ("force_path_style", raw.force_path_style.is_some()),
        ("role_arn", raw.role_arn.is_some()),
        ("external_id", raw.external_id.is_some()),
        ("role_session_name", raw.role_session_name.is_some()),
        ("sse", raw.sse.is_some()),
        ("kms_key_id", raw.kms_key_id.is_some()),
        ("bucket_key_enabled", raw.bucket_key_enabled.is_some()),
        ("acl", raw.acl.is_some()),
        ("storage_class", raw.storage_class.is_some()),
        ("checksum", raw.checksum.is_some()),
        ("multipart_threshold", raw.multipart_threshold.is_some()),
        ("part_size", raw.part_size.is_some()),
        ("upload_concurrency", raw.upload_concurrency.is_some()),
        ("if_none_match", raw.if_none_match.is_some()),
    ];
    match raw.kind.as_deref().unwrap_or("local") {
        "local" => {
            for (key, _) in s3_only.iter().filter(|(_, set)| *set) {
                p.add(format!("sink.{key}"), "applies to type = \"s3\" only");
            }
            let path = raw.path.unwrap_or_else(|| PathBuf::from("./flowlogs"));
            Some(SinkSettings::Local {
                path,
                max_pending_uploads: max_pending_uploads.max(1),
            })
        }
        "s3" => {
            if raw.path.is_some() {
                p.add("sink.path", "applies to type = \"local\" only");
            }
            let bucket = required("sink.bucket", raw.bucket, p)?;
            if bucket.starts_with("s3://") || bucket.contains('/') {
                p.add(
                    "sink.bucket",
                    format!("'{bucket}' must be a bare bucket name (put folders in output.prefix)"),
                );
            }
            let mut s = S3Settings::new(bucket);
            s.region = raw.region;
            s.checksum = ChecksumMode::default_for(raw.endpoint_url.as_deref());
            s.endpoint_url = raw.endpoint_url;
            s.force_path_style = raw.force_path_style.unwrap_or(s.endpoint_url.is_some());
            s.role_arn = raw.role_arn;
            s.external_id = raw.external_id;
            if let Some(name) = raw.role_session_name {
                s.role_session_name = name;
            }
            if s.external_id.is_some() && s.role_arn.is_none() {
                p.add("sink.external_id", "needs sink.role_arn");
            }
            let bucket_key = raw.bucket_key_enabled.unwrap_or(false);
            s.sse = match raw.sse.as_deref() {
                None | Some("none") => {
                    if raw.kms_key_id.is_some() {
                        p.add("sink.kms_key_id", "needs sse = \"aws:kms\"");
                    }
                    Sse::None
                }
                Some("AES256") => Sse::Aes256,
                Some("aws:kms") => Sse::AwsKms {
                    key_id: raw.kms_key_id,
                    bucket_key,
                },
                Some(other) => {
                    p.add(
                        "sink.sse",
                        format!("'{other}' is not one of none, AES256, aws:kms"),
                    );
                    Sse::None
                }
            };
            match raw.acl.as_deref() {
                None => {}
                Some("none" | "") => s.acl = None,
                Some(acl) => s.acl = Some(acl.to_owned()),
            }
            s.storage_class = raw.storage_class;
            if let Some(mode) = raw
                .checksum
                .and_then(|c| p.check("sink.checksum", c.parse::<ChecksumMode>()))
            {
                s.checksum = mode;
            }
            if let Some(t) = raw.multipart_threshold {
                s.multipart_threshold = t.0;
            }
            if let Some(size) = raw.part_size {
                if size.0 < 5 * 1024 * 1024 {
                    p.add(
                        "sink.part_size",
                        format!("{} is below S3's 5 MiB minimum part size", size.0),
                    );
                }
                s.part_size = size.0;
            }
            if let Some(c) = raw.upload_concurrency {
                if c == 0 {
                    p.add("sink.upload_concurrency", "must be at least 1");
                }
                s.upload_concurrency = c.max(1);
            }
            if let Some(b) = raw.if_none_match {
                s.if_none_match = b;
            }
            if let Some(o) = output {
                s.probe_prefix = if o.prefix.is_empty() {
                    String::new()
                } else {
                    format!("{}/", o.prefix.as_str())
                };
            }
            Some(SinkSettings::S3 {
                settings: Box::new(s),
                max_pending_uploads: max_pending_uploads.max(1),
            })
        }
        other => {
            p.add("sink.type", format!("'{other}' is not one of local, s3"));
            None
        }
    }
}

fn validate_state(raw: RawState, p: &mut Problems) -> StateSettings {
    let fsync = match raw.fsync.as_deref() {
        None => FsyncPolicy::Always,
        Some(s) => p
            .check("state.fsync", s.parse::<FsyncPolicy>())
            .unwrap_or(FsyncPolicy::Always),
    };
    let writer_id = raw.writer_id.filter(|w| !w.is_empty());
    if let Some(w) = &writer_id
        && (!w
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || w.len() > 64)
    {
        p.add(
            "state.writer_id",
            format!("'{w}' must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        );
    }
    let wal_segment_bytes = raw.wal_segment_bytes.map_or(64 << 20, |b| b.0);
    if wal_segment_bytes < 1 << 20 {
        p.add("state.wal_segment_bytes", "must be at least 1 MiB");
    }
    let max_wal_bytes = raw.max_wal_bytes.map_or(DEFAULT_MAX_WAL_BYTES, |b| b.0);
    if max_wal_bytes < 2 * wal_segment_bytes {
        p.add(
            "state.max_wal_bytes",
            format!(
                "{max_wal_bytes} bytes is less than two WAL segments ({} bytes)",
                2 * wal_segment_bytes
            ),
        );
    }
    StateSettings {
        dir: raw.dir.unwrap_or_else(|| PathBuf::from("./flowlog-state")),
        fsync,
        wal_segment_bytes,
        writer_id,
        max_wal_bytes,
        max_quarantine_bytes: raw
            .max_quarantine_bytes
            .map_or(DEFAULT_MAX_QUARANTINE_BYTES, |b| b.0),
    }
}

/// Default of `[output] memory_budget`.
pub const DEFAULT_MEMORY_BUDGET: u64 = 1 << 30;

/// Default of `[state] max_quarantine_bytes`.
pub const DEFAULT_MAX_QUARANTINE_BYTES: u64 = 1 << 30;

/// Default of `[state] max_wal_bytes`.
pub const DEFAULT_MAX_WAL_BYTES: u64 = 8 << 30;

/// Default of `[output] workers`: the cores this process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

fn validate_service(raw: RawService, p: &mut Problems) -> ServiceSettings {
    let shutdown_grace = duration(
        "service.shutdown_grace",
        raw.shutdown_grace.as_deref(),
        Duration::from_secs(30),
        p,
    );
    let log_format = p
        .check(
            "service.log_format",
            service::log_format(raw.log_format.as_deref()),
        )
        .unwrap_or(LogOutput::Text);
    let metrics_address = p
        .check(
            "service.metrics_address",
            service::metrics_address(raw.metrics_address),
        )
        .flatten();
    ServiceSettings {
        shutdown_grace,
        metrics_address,
        log_format,
        log_level: service::log_level(raw.log_level),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[flow_log]\nid = \"fl-0123456789abcdef0\"\naccount_id = \"123456789012\"\nregion = \"us-east-1\"\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let s = parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(s.flow_log.id, "fl-0123456789abcdef0");
        assert_eq!(s.output.format, OutputFormat::Text);
        assert!(s.output.log_format.is_aws_default());
        assert_eq!(s.output.layout, KeyLayout::Default);
        assert_eq!(s.output.max_file_bytes, 75_000_000);
        assert_eq!(
            (s.output.window, s.output.grace),
            (Duration::from_secs(300), Duration::from_secs(60))
        );
        assert!(
            matches!(s.sink, SinkSettings::Local { ref path, max_pending_uploads: 16 } if path == Path::new("./flowlogs"))
        );
        assert_eq!(s.state.dir, PathBuf::from("./flowlog-state"));
        assert_eq!(s.state.fsync, FsyncPolicy::Always);
    }

    /// The example and the config the packages install as /etc/flowlog/aggregator.toml
    /// parse as they are, and with every `# s3: ` key uncommented and the sink switched to
    /// S3.
    #[test]
    fn every_documented_key_is_accepted() {
        for file in [
            "docs/aggregator.example.toml",
            "packaging/config/aggregator.toml",
        ] {
            let text = std::fs::read_to_string(format!("{}/../{file}", env!("CARGO_MANIFEST_DIR")))
                .unwrap();
            let s = parse(&text, file).unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(s.sink, SinkSettings::Local { .. }), "{file}");
            let s3: String = text
                .lines()
                .filter(|l| !l.starts_with("path = "))
                .map(|l| {
                    let l = l.strip_prefix("# s3: ").unwrap_or(l);
                    format!("{}\n", l.replace("type = \"local\"", "type = \"s3\""))
                })
                .collect();
            let uncommented = text.lines().filter(|l| l.starts_with("# s3: ")).count();
            assert!(uncommented >= 16, "{file}: {uncommented} S3 keys");
            // A KMS key needs sse = "aws:kms"; the comments say so.
            let s3 = if s3.contains("kms_key_id = ") {
                s3.replace("sse = \"none\"", "sse = \"aws:kms\"")
            } else {
                s3
            };
            let s = parse(&s3, file).unwrap_or_else(|e| panic!("{e}\n{s3}"));
            let SinkSettings::S3 { settings, .. } = s.sink else {
                panic!("{file}: s3 expected")
            };
            assert_eq!(settings.bucket, "my-bucket", "{file}");
            assert_eq!(
                settings.acl.as_deref(),
                Some("bucket-owner-full-control"),
                "{file}"
            );
        }
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = "[flow_log]\nid = \"x_1\"\naccount_id = \"12345\"\n\n[output]\nwindow = \"7m\"\nformat = \"csv\"\nlog_format = \"${version} ${srcadr}\"\nprefix = \"logs/AWSLogs\"\nbogus = 1\n\n[sink]\ntype = \"local\"\nbucket = \"b\"\n\n[state]\nfsync = \"sometimes\"\n\n[extra]\n";
        let e = parse(text, "bad.toml").unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "extra",
            "output.bogus",
            "flow_log.id",
            "flow_log.account_id",
            "flow_log.region",
            "output.format",
            "output.log_format",
            "output.prefix",
            "output.window",
            "sink.bucket",
            "state.fsync",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let shown = e.to_string();
        assert!(shown.starts_with("invalid config bad.toml\n"), "{shown}");
        assert!(shown.contains("output.log_format: unknown field '${srcadr}' at position 2; did you mean '${srcaddr}'?"), "{shown}");
        assert!(
            shown.contains("output.window: 7m does not divide 1h"),
            "{shown}"
        );
    }

    #[test]
    fn wrong_types_and_syntax_are_reported() {
        let e = parse(
            &format!("{MINIMAL}[output]\nmax_file_bytes = \"lots\"\n"),
            "t",
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "output");
        assert!(
            e.problems[0].message.contains("'lots' is not a size"),
            "{e}"
        );
        let e = parse("[flow_log\n", "t").unwrap_err();
        assert_eq!(e.problems[0].key, "(syntax)");
    }

    #[test]
    fn listen_is_optional_validated_and_listed() {
        let s = parse(MINIMAL, "t.toml").unwrap();
        assert!(s.listen.is_none());
        let e = parse_with(
            MINIMAL,
            "t.toml",
            LoadOptions {
                require_listen: true,
                check_files: Some(crate::serve::check_listen_files),
                ignore_unknown: false,
            },
        )
        .unwrap_err();
        assert_eq!(e.problems[0].key, "listen", "{e}");

        let s = parse(
            &format!(
                "{MINIMAL}[listen]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ntokens_file = \"t\"\n"
            ),
            "t.toml",
        )
        .unwrap();
        let l = s.listen.unwrap();
        assert_eq!(l.address, "0.0.0.0:7443".parse().unwrap());
        assert_eq!(l.max_batch_bytes, 16 << 20);
        assert_eq!(l.max_pending_records, 2_000_000);
        assert_eq!(l.max_concurrent_pushes, 256);
        assert_eq!(l.push_timeout, Duration::from_secs(10));
        assert_eq!(l.tls.unwrap().client_ca, None);

        let text = format!(
            "{MINIMAL}[listen]\naddress = \"nowhere\"\nmax_batch_bytes = \"1GiB\"\nmax_pending_records = 0\npush_timeout = \"soon\"\nbogus = 1\n"
        );
        let e = parse(&text, "t.toml").unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "listen.bogus",
            "listen.address",
            "listen.tls_cert",
            "listen.tls_key",
            "listen.tokens_file",
            "listen.max_batch_bytes",
            "listen.max_pending_records",
            "listen.push_timeout",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }

        let text = format!(
            "{MINIMAL}[listen]\ninsecure = true\nclient_ca = \"ca.pem\"\ntokens_file = \"t\"\n"
        );
        let e = parse(&text, "t.toml").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key, "listen.client_ca");
        let text = format!("{MINIMAL}[listen]\ninsecure = true\ntokens_file = \"t\"\n");
        assert!(
            parse(&text, "t.toml")
                .unwrap()
                .listen
                .unwrap()
                .tls
                .is_none()
        );
    }

    #[test]
    fn listen_files_are_checked_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            "web-1 aaaaaaaaaaaaaaaa\nweb-1 bbbbbbbbbbbbbbbb\nlonely\n",
        )
        .unwrap();
        let text = format!(
            "{MINIMAL}[listen]\ntls_cert = \"{0}/none.pem\"\ntls_key = \"{0}/none.key\"\ntokens_file = \"{1}\"\n",
            dir.path().display(),
            tokens.display()
        );
        // Text only: fine.
        parse(&text, "t.toml").unwrap();
        let e = parse_with(
            &text,
            "t.toml",
            LoadOptions {
                require_listen: true,
                check_files: Some(crate::serve::check_listen_files),
                ignore_unknown: false,
            },
        )
        .unwrap_err();
        let shown = e.to_string();
        assert!(shown.contains("listen.tls_cert: cannot read"), "{shown}");
        assert!(shown.contains("none.pem"), "{shown}");
        assert!(shown.contains("listen.tls_key: cannot read"), "{shown}");
        assert!(
            shown.contains("line 2: agent 'web-1' is already listed on line 1"),
            "{shown}"
        );
        assert!(
            shown.contains("line 3: agent 'lonely' has no token"),
            "{shown}"
        );
        assert!(
            !shown.contains("bbbbbbbb"),
            "tokens are never shown: {shown}"
        );
    }

    /// `[state] fsync = "interval:<duration>"` takes every duration form, as the agent's
    /// `[spool] fsync` does; `interval:1m` used to be refused.
    #[test]
    fn state_fsync_interval_takes_any_duration() {
        for (text, want) in [
            ("interval:1m", Duration::from_secs(60)),
            ("interval:200ms", Duration::from_millis(200)),
            ("interval:0.5s", Duration::from_millis(500)),
            ("interval:2s", Duration::from_secs(2)),
            ("INTERVAL:1500MS", Duration::from_millis(1500)),
        ] {
            let s = parse(&format!("{MINIMAL}[state]\nfsync = \"{text}\"\n"), "t.toml").unwrap();
            assert_eq!(s.state.fsync, FsyncPolicy::Interval(want), "{text}");
        }
        let s = parse(&format!("{MINIMAL}[state]\nfsync = \"never\"\n"), "t.toml").unwrap();
        assert_eq!(s.state.fsync, FsyncPolicy::Never);
        let e = parse(
            &format!("{MINIMAL}[state]\nfsync = \"interval:soon\"\n"),
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].key, "state.fsync");
        assert!(
            e.problems[0]
                .message
                .starts_with("invalid fsync policy \"interval:soon\""),
            "{e}"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!("75000000".parse::<ByteSize>(), Ok(ByteSize(75_000_000)));
        assert_eq!("64MiB".parse::<ByteSize>(), Ok(ByteSize(64 << 20)));
        assert_eq!("75MB".parse::<ByteSize>(), Ok(ByteSize(75_000_000)));
        assert!("5 parsecs".parse::<ByteSize>().is_err());
    }

    /// Fuzzing regression (`fuzz/regressions/aggregator_config/empty-section-name`): an
    /// unknown section named `""` was reported under an empty key, naming nothing.
    #[test]
    fn unknown_sections_and_keys_with_odd_names_are_quoted() {
        let err = parse("[\"\"]\n[output]\n\"a b\" = 1\n", "t.toml").unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"\"\""), "{keys:?}");
        assert!(keys.contains(&"output.\"a b\""), "{keys:?}");
    }
}
