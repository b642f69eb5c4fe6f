//! The publishing pipeline's settings: `[flow_log]`, `[output]`, `[sink]`, `[state]` and
//! `[service]`, one module per section, validated with every problem listed under its key.
//!
//! Programs embed these sections in their own config file: the aggregator adds `[listen]`
//! and `[athena]`, the agent's standalone mode its capture sections. The agent calls
//! [`parse_table`] with the publishing sections it split off ([`is_publishing_key`]); the
//! aggregator calls [`check_sections`] and [`validate_sections`] on its whole file and adds
//! its own [`Problem`]s. A section's keys are the fields of its settings struct: unknown
//! keys are those serde passes over ([`section`]).

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

/// The publishing sections. Their keys are the fields of each section's settings struct:
/// a key the struct does not have is reported as unknown ([`section`]), and
/// [`is_publishing_key`] tells programs that embed these sections which keys are theirs.
pub const SECTIONS: [&str; 5] = ["flow_log", "output", "sink", "state", "service"];

pub use flowlog_runtime::keys::toml_key;

/// Collects problems while validating.
#[derive(Debug, Default)]
pub struct Problems {
    found: Vec<Problem>,
    ignore_unknown: bool,
}

impl Problems {
    /// Collects problems; with `ignore_unknown`, unknown sections and keys are passed over
    /// (a program reading the sections it needs from another program's file).
    pub fn new(ignore_unknown: bool) -> Problems {
        Problems {
            found: Vec::new(),
            ignore_unknown,
        }
    }

    /// Records a problem under `key`.
    pub fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.found.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Records problems found elsewhere (checks of the files a config names).
    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.found.extend(problems);
    }

    /// Records an unknown section or key, unless those are ignored.
    pub fn unknown(&mut self, key: impl Into<String>, message: impl Into<String>) {
        if !self.ignore_unknown {
            self.add(key, message);
        }
    }

    /// Runs `check` and records its error under `key`; returns the value if valid.
    pub fn check<T, E: fmt::Display>(&mut self, key: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.add(key, e.to_string())).ok()
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    /// Every problem found, in the order found.
    pub fn into_vec(self) -> Vec<Problem> {
        self.found
    }
}

/// Deserializes section `name` of `table` into its settings struct `T`. A key `T` has no
/// field for is an unknown key, a section that is not a table or a value of the wrong type
/// is a problem under its key; `T::default()` stands in for a section that cannot be read.
pub fn section<T: serde::de::DeserializeOwned + Default>(
    table: &toml::Table,
    name: &str,
    problems: &mut Problems,
) -> T {
    let Some(value) = table.get(name) else {
        return T::default();
    };
    if !value.is_table() {
        problems.add(name, "must be a table ([section])");
        return T::default();
    }
    let (result, unknown) = flowlog_runtime::keys::deserialize_with_unknown::<T>(value.clone());
    for key in unknown {
        problems.unknown(format!("{name}.{key}"), "unknown key");
    }
    match result {
        Ok(v) => v,
        Err(e) => {
            problems.add(name, e.message().to_owned());
            T::default()
        }
    }
}

/// Adds an "unknown section" problem for every top-level name of `table` not in `known`.
pub fn check_sections<'a>(
    table: &toml::Table,
    known: impl Iterator<Item = &'a str> + Clone,
    p: &mut Problems,
) {
    for name in table.keys() {
        if !known.clone().any(|s| s == name) {
            p.unknown(
                toml_key(name),
                format!(
                    "unknown section; expected one of {}",
                    known.clone().collect::<Vec<_>>().join(", ")
                ),
            );
        }
    }
}

/// Whether `key` (with its `value`) belongs to publishing section `section`: asked of the
/// section's settings struct, so no key list is kept by hand. The agent splits its
/// `[output]` with it.
pub fn is_publishing_key(section: &str, key: &str, value: &toml::Value) -> bool {
    let mut one = toml::Table::new();
    one.insert(key.to_owned(), value.clone());
    let mut wrapped = toml::Table::new();
    wrapped.insert(section.to_owned(), toml::Value::Table(one));
    let mut p = Problems::default();
    match section {
        "flow_log" => {
            let _: flow_log::RawFlowLog = self::section(&wrapped, section, &mut p);
        }
        "output" => {
            let _: output::RawOutput = self::section(&wrapped, section, &mut p);
        }
        "sink" => {
            let _: sink::RawSink = self::section(&wrapped, section, &mut p);
        }
        "state" => {
            let _: state::RawState = self::section(&wrapped, section, &mut p);
        }
        "service" => {
            let _: service::RawService = self::section(&wrapped, section, &mut p);
        }
        _ => return false,
    }
    !p.found
        .iter()
        .any(|problem| problem.message == "unknown key")
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

/// Validates a parsed config table that holds the publishing sections only (the agent
/// splits its file into its own sections and these); unknown sections and keys are
/// problems too. Returns every problem otherwise.
pub fn parse_table(table: &toml::Table) -> Result<Settings, Vec<Problem>> {
    let mut p = Problems::default();
    check_sections(table, SECTIONS.into_iter(), &mut p);
    let settings = validate_sections(table, &mut p);
    match settings {
        Some(s) if p.is_empty() => Ok(s),
        _ => Err(p.into_vec()),
    }
}

/// Validates the publishing sections of `table` into `p` (other sections are the caller's);
/// `None` when a section without a usable default is invalid (its problems are in `p`).
pub fn validate_sections(table: &toml::Table, p: &mut Problems) -> Option<Settings> {
    let flow: flow_log::RawFlowLog = section(table, "flow_log", p);
    let out: output::RawOutput = section(table, "output", p);
    let raw_sink: sink::RawSink = section(table, "sink", p);
    let raw_state: state::RawState = section(table, "state", p);
    let raw_service: service::RawService = section(table, "service", p);
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

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[flow_log]\nid = \"fl-0123456789abcdef0\"\naccount_id = \"123456789012\"\nregion = \"us-east-1\"\n";

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn unknown_keys_come_from_the_structs_and_all_are_listed() {
        // `gzip_level = "high"` stops serde's walk of `[output]`; the unknown keys after it
        // are still reported, each under its own key.
        let text = format!(
            "{MINIMAL}[output]\nbogus = 1\ngzip_level = \"high\"\n\"odd key\" = 2\n[state]\ndri = \"x\"\n[nope]\n"
        );
        let problems = parse(&text).unwrap_err();
        let found = keys(&problems);
        for key in [
            "output.bogus",
            "output.\"odd key\"",
            "output",
            "state.dri",
            "nope",
        ] {
            assert!(found.contains(&key), "{key} not in {found:?}");
        }
        let unknown = problems
            .iter()
            .filter(|p| p.message == "unknown key")
            .count();
        assert_eq!(unknown, 3, "{problems:?}");
    }

    #[test]
    fn a_section_that_is_not_a_table_is_one_problem() {
        let problems = parse(&format!("sink = 3\n{MINIMAL}")).unwrap_err();
        assert_eq!(
            problems,
            vec![Problem {
                key: "sink".into(),
                message: "must be a table ([section])".into()
            }]
        );
    }

    #[test]
    fn unknown_keys_can_be_passed_over() {
        let table: toml::Table = format!("{MINIMAL}[output]\nbogus = 1\n[capture]\nx = 1\n")
            .parse()
            .unwrap();
        let mut p = Problems::new(true);
        check_sections(&table, SECTIONS.into_iter(), &mut p);
        assert!(validate_sections(&table, &mut p).is_some());
        assert!(p.is_empty(), "{:?}", p.into_vec());
    }

    #[test]
    fn publishing_keys_are_asked_of_the_structs() {
        let v = toml::Value::from("parquet");
        assert!(is_publishing_key("output", "format", &v));
        // A wrong type is still the section's key (its value is reported when validated).
        assert!(is_publishing_key("output", "gzip_level", &v));
        assert!(is_publishing_key("output", "log_format", &v));
        assert!(!is_publishing_key("output", "max_aggregation_interval", &v));
        assert!(is_publishing_key("sink", "type", &v));
        assert!(!is_publishing_key("capture", "backend", &v));
    }
}
