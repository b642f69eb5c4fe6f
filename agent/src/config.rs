//! Agent configuration: a TOML file read once at startup into validated [`AgentSettings`].
//! Unknown keys are refused and every problem is listed with its key.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use flowlog_formats::key::{validate_account_id, validate_flow_log_id, validate_region};
use flowlog_formats::{Action, LogFormat, Text};

pub use crate::interface::{InterfaceSettings, default_interface_id};
use flowlog_runtime::keys::deserialize_with_unknown;
use serde::Deserialize;

/// Which records a flow log keeps (AWS `TrafficType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficFilter {
    /// Every record.
    All,
    /// Accepted traffic only (NODATA/SKIPDATA rows are always kept).
    Accept,
    /// Rejected traffic only (NODATA/SKIPDATA rows are always kept).
    Reject,
}

impl TrafficFilter {
    /// Returns true if a record with `action` is kept.
    pub fn keeps(self, action: Option<Action>) -> bool {
        match (self, action) {
            (TrafficFilter::All, _) | (_, None) => true,
            (TrafficFilter::Accept, Some(a)) => a == Action::Accept,
            (TrafficFilter::Reject, Some(a)) => a == Action::Reject,
        }
    }
}

/// Validated agent settings.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Flow log id.
    pub flow_log_id: String,
    /// Account of the interfaces.
    pub account_id: Text,
    /// Region.
    pub region: Text,
    /// Aggregation interval in seconds (60 or 600).
    pub interval_secs: u64,
    /// Traffic filter.
    pub traffic_type: TrafficFilter,
    /// Record format.
    pub log_format: LogFormat,
    /// Flows tracked per interface and interval at most.
    pub max_flows: usize,
    /// Configured interfaces (empty = every up, non-loopback interface, for live capture).
    pub interfaces: Vec<InterfaceSettings>,
    /// `[firewall]`: the NFLOG group that host firewall drops are learnt from (`action`
    /// REJECT); none by default.
    pub firewall: crate::nflog::FirewallSettings,
    /// `[capture]`: how live capture reads the interfaces (promiscuous mode, fanout
    /// threads, interface rescan, socket buffer).
    pub capture: crate::capture_config::CaptureSettings,
    /// `[metadata]` and the `subnet_id`/`vpc_id` of `[[interface]]`: the ids, AWS services
    /// and traffic paths written in records (see [`crate::metadata`]).
    pub metadata: crate::metadata::MetadataSettings,
    /// `[aggregator]`, `[spool]` and `[service]` when records are shipped to aggregators
    /// (`[aggregator]` set); `None` = standalone mode or `--stdout`.
    pub ship: Option<crate::ship::settings::ShipSettings>,
    /// Standalone mode's publishing pipeline: `[output]` file keys, `[sink]`, `[state]`,
    /// `[service]`, as in the aggregator's config (defaults when `[aggregator]` is set).
    #[cfg(feature = "standalone")]
    pub publish: flowlog_publish::Settings,
}

impl AgentSettings {
    /// The settings that decide which records a replay yields, as text (part of a replay
    /// input's identity in the spool: `ship::replay_input_tag`). The form is fixed: a
    /// change would make spooled replays look like new inputs.
    pub fn replay_identity(&self) -> String {
        format!(
            "\0{}\0{:?}\0{}\0{:?}\0{}\0{}\0{}",
            self.interval_secs,
            self.traffic_type,
            self.max_flows,
            self.interfaces,
            self.account_id,
            self.region,
            self.flow_log_id
        )
    }

    /// What live capture needs of these settings.
    pub fn live(&self) -> crate::capture::LiveSettings {
        crate::capture::LiveSettings {
            interfaces: self.interfaces.clone(),
            firewall: self.firewall,
            account_id: self.account_id.clone(),
            table: crate::flow::FlowTableSettings {
                interval_secs: self.interval_secs,
                max_flows: self.max_flows,
            },
            capture: self.capture,
        }
    }
}

/// A config file that cannot be used; lists every problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// `(key, problem)` pairs.
    pub problems: Vec<(String, String)>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}", self.path)?;
        for (key, problem) in &self.problems {
            write!(f, "\n  {key}: {problem}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    flow_log: Option<RawFlowLog>,
    output: Option<RawOutput>,
    #[serde(default)]
    interface: Vec<RawInterface>,
    firewall: Option<crate::nflog::FirewallConfig>,
    capture: Option<crate::capture_config::CaptureConfig>,
    metadata: Option<crate::metadata::MetadataConfig>,
}

#[derive(Debug, Deserialize)]
struct RawFlowLog {
    id: Option<String>,
    account_id: Option<String>,
    region: Option<String>,
    max_aggregation_interval: Option<String>,
    traffic_type: Option<String>,
    max_flows: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct RawOutput {
    log_format: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawInterface {
    name: Option<String>,
    interface_id: Option<String>,
    mac: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    subnet_id: Option<String>,
    vpc_id: Option<String>,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    let mut mac = [0u8; 6];
    if parts.len() != 6 {
        return None;
    }
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    Some(mac)
}

/// Reads and validates an agent config file.
pub fn load(path: &Path) -> Result<AgentSettings, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: shown.clone(),
        problems: vec![("(file)".into(), format!("cannot read: {e}"))],
    })?;
    let mut table = parse_toml(&text, &shown)?;
    // With `[metadata] imds = true`, IMDS is asked first (its failure is a problem of
    // `metadata.imds`: the agent must not start with half its metadata), and the account
    // and region it found fill `[flow_log]` where the file leaves them out, so that one
    // validation sees the final values.
    let discovery = crate::metadata::discover(&mut table).map_err(|problems| ConfigError {
        path: shown.clone(),
        problems: problems
            .into_iter()
            .map(|p| ("metadata.imds".to_owned(), p))
            .collect(),
    })?;
    let mut settings = parse_table(table, &shown)?;
    let AgentSettings {
        metadata,
        interfaces,
        ..
    } = &mut settings;
    crate::metadata::complete(metadata, interfaces, discovery);
    Ok(settings)
}

/// Validates config text (nothing is asked of the host); `path` is used in the error only.
pub fn parse(text: &str, path: &str) -> Result<AgentSettings, ConfigError> {
    parse_table(parse_toml(text, path)?, path)
}

fn parse_toml(text: &str, path: &str) -> Result<toml::Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| ConfigError {
        path: path.to_owned(),
        problems: vec![("(syntax)".into(), e.message().to_owned())],
    })
}

/// Validates a parsed config table; `path` is used in the error only.
pub fn parse_table(table: toml::Table, path: &str) -> Result<AgentSettings, ConfigError> {
    let mut problems: Vec<(String, String)> = Vec::new();
    let (table, ship_sections, mut ship_problems) = split_shipping(table);
    let (agent_table, publish_table) = split_publishing(table);
    // Unknown keys are those the settings structs pass over: every one is listed.
    let (raw, unknown) = deserialize_with_unknown::<RawConfig>(toml::Value::Table(agent_table));
    for key in unknown {
        let what = if key.contains(['.', '[']) {
            "unknown key"
        } else {
            "unknown section"
        };
        problems.push((key, what.to_owned()));
    }
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(("(config)".into(), e.message().to_owned()));
            return Err(ConfigError {
                path: path.to_owned(),
                problems,
            });
        }
    };
    let publish = publish_settings(&publish_table);
    let mut add = |key: &str, problem: String| problems.push((key.to_owned(), problem));
    let flow = raw.flow_log.unwrap_or(RawFlowLog {
        id: None,
        account_id: None,
        region: None,
        max_aggregation_interval: None,
        traffic_type: None,
        max_flows: None,
    });
    let required = |key: &str,
                    v: Option<String>,
                    check: fn(&str) -> Result<(), flowlog_formats::key::KeyError>,
                    add: &mut dyn FnMut(&str, String)|
     -> String {
        match v {
            Some(v) if !v.is_empty() => {
                if let Err(e) = check(&v) {
                    add(key, e.to_string());
                }
                v
            }
            _ => {
                add(key, "is required".into());
                String::new()
            }
        }
    };
    let flow_log_id = required("flow_log.id", flow.id, validate_flow_log_id, &mut add);
    let account_id = required(
        "flow_log.account_id",
        flow.account_id,
        validate_account_id,
        &mut add,
    );
    let region = required("flow_log.region", flow.region, validate_region, &mut add);
    let interval_secs = match flow.max_aggregation_interval.as_deref() {
        None | Some("600s" | "10m") => 600,
        Some("60s" | "1m") => 60,
        Some(other) => {
            add(
                "flow_log.max_aggregation_interval",
                format!("'{other}' is not one of 60s, 600s"),
            );
            600
        }
    };
    let traffic_type = match flow.traffic_type.as_deref() {
        None | Some("ALL") => TrafficFilter::All,
        Some("ACCEPT") => TrafficFilter::Accept,
        Some("REJECT") => TrafficFilter::Reject,
        Some(other) => {
            add(
                "flow_log.traffic_type",
                format!("'{other}' is not one of ALL, ACCEPT, REJECT"),
            );
            TrafficFilter::All
        }
    };
    let log_format = match raw.output.and_then(|o| o.log_format) {
        None => LogFormat::aws_default(),
        Some(s) => LogFormat::parse(&s).unwrap_or_else(|e| {
            add("output.log_format", e.to_string());
            LogFormat::aws_default()
        }),
    };
    let mut metadata = crate::metadata::MetadataSettings::from_config(raw.metadata, &mut add);
    let mut interfaces = Vec::new();
    for (i, iface) in raw.interface.into_iter().enumerate() {
        let at = |k: &str| format!("interface[{i}].{k}");
        let Some(name) = iface.name.filter(|n| !n.is_empty()) else {
            add(&at("name"), "is required".into());
            continue;
        };
        let mac = iface.mac.as_deref().and_then(|m| {
            let parsed = parse_mac(m);
            if parsed.is_none() {
                add(
                    &at("mac"),
                    format!("'{m}' is not a MAC address such as 02:00:00:00:00:0a"),
                );
            }
            parsed
        });
        let (mut primary_v4, mut primary_v6) = (None, None);
        for a in &iface.addresses {
            let plain = a.split('/').next().unwrap_or(a);
            match plain.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) if !a.contains('/') => primary_v4 = primary_v4.or(Some(v4)),
                Ok(IpAddr::V6(v6)) if !a.contains('/') => primary_v6 = primary_v6.or(Some(v6)),
                Ok(_) => {}
                Err(_) => add(&at("addresses"), format!("'{a}' is not an address or CIDR")),
            }
        }
        let interface_id = iface
            .interface_id
            .unwrap_or_else(|| default_interface_id(&name));
        let (subnet_id, vpc_id) = (iface.subnet_id.as_ref(), iface.vpc_id.as_ref());
        metadata.set_interface_ids(i, &name, subnet_id, vpc_id, &mut add);
        interfaces.push(InterfaceSettings {
            name,
            interface_id,
            mac,
            primary_v4,
            primary_v6,
        });
    }
    metadata.bind(&interfaces);
    let firewall = crate::nflog::validate_config(raw.firewall, &mut add);
    let max_flows = flow.max_flows.unwrap_or(1 << 20);
    let capture = raw.capture.unwrap_or_default().validate(&mut problems);
    let ship = ship_sections.and_then(|(aggregator, spool, service)| {
        let mut add = |key: &str, problem: String| ship_problems.push((key.to_owned(), problem));
        let aggregator = crate::ship::settings::section(aggregator, "aggregator", &mut add);
        let spool = crate::ship::settings::section(spool, "spool", &mut add);
        let service = crate::ship::settings::section(service, "service", &mut add);
        crate::ship::settings::validate(
            aggregator.unwrap_or_default(),
            spool.unwrap_or_default(),
            service.unwrap_or_default(),
            &mut add,
        )
    });
    problems.append(&mut ship_problems);
    // The publishing sections share `flow_log` and `output.log_format` with the agent: a
    // problem there is reported once.
    for (key, problem) in publish.problems {
        if !problems.iter().any(|(k, _)| *k == key) {
            problems.push((key, problem));
        }
    }
    #[cfg(feature = "standalone")]
    let Some(publish) = publish.settings else {
        problems.push(("(publishing)".into(), "invalid".into()));
        return Err(ConfigError {
            path: path.to_owned(),
            problems,
        });
    };
    if !problems.is_empty() {
        return Err(ConfigError {
            path: path.to_owned(),
            problems,
        });
    }
    Ok(AgentSettings {
        flow_log_id,
        account_id: account_id.as_str().into(),
        region: region.as_str().into(),
        interval_secs,
        traffic_type,
        log_format,
        max_flows,
        interfaces,
        firewall,
        capture,
        metadata,
        ship,
        #[cfg(feature = "standalone")]
        publish,
    })
}

/// The sections of shipping mode: `[aggregator]`, `[spool]`, `[service]`.
type ShipSections = (
    Option<toml::Value>,
    Option<toml::Value>,
    Option<toml::Value>,
);

/// Takes `[aggregator]` and `[spool]` (and, with `[aggregator]`, `[service]`) out of the
/// config. With `[aggregator]` the records go to the aggregator, so standalone mode's
/// sections (`[sink]`, `[state]`, the file keys of `[output]`) are refused.
fn split_shipping(
    mut table: toml::Table,
) -> (toml::Table, Option<ShipSections>, Vec<(String, String)>) {
    let mut problems = Vec::new();
    let aggregator = table.remove("aggregator");
    let spool = table.remove("spool");
    let Some(aggregator) = aggregator else {
        if spool.is_some() {
            problems.push((
                "spool".to_owned(),
                "needs [aggregator]: the spool holds the batches shipped to aggregators".to_owned(),
            ));
        }
        return (table, None, problems);
    };
    let service = table.remove("service");
    let standalone_only = |what: &str| {
        format!(
            "[aggregator] is set, so records go to the aggregator; {what} applies to \
             standalone mode only (remove it, or remove [aggregator])"
        )
    };
    for name in ["sink", "state", "athena"] {
        if table.remove(name).is_some() {
            problems.push((name.to_owned(), standalone_only(&format!("[{name}]"))));
        }
    }
    if let Some(toml::Value::Table(output)) = table.get_mut("output") {
        for (key, _) in take_file_keys(output) {
            problems.push((
                format!("output.{key}"),
                standalone_only(&format!("output.{key}")),
            ));
        }
    }
    (table, Some((Some(aggregator), spool, service)), problems)
}

/// Sections of the publishing pipeline (standalone mode; `[athena]` is read by
/// `flowlog-aggregator athena-ddl`); the agent shares
/// `flow_log.{id,account_id,region}` and `output.log_format` with them.
const PUBLISH_SECTIONS: [&str; 4] = ["sink", "state", "service", "athena"];

/// Whether `[output] key` is a file key of the publishing pipeline (not the agent's
/// `log_format`): asked of the pipeline's own settings struct.
#[cfg(feature = "standalone")]
fn is_file_key(key: &str, value: &toml::Value) -> bool {
    key != "log_format" && flowlog_publish::settings::is_publishing_key("output", key, value)
}

/// Without standalone output every `[output]` key but `log_format` is one this build cannot
/// use, and is reported as such.
#[cfg(not(feature = "standalone"))]
fn is_file_key(key: &str, _value: &toml::Value) -> bool {
    key != "log_format"
}

/// Takes the publishing pipeline's file keys out of the agent's `[output]`.
fn take_file_keys(output: &mut toml::Table) -> toml::Table {
    let keys: Vec<String> = output
        .iter()
        .filter(|(k, v)| is_file_key(k, v))
        .map(|(k, _)| k.clone())
        .collect();
    keys.into_iter()
        .filter_map(|k| output.remove(&k).map(|v| (k, v)))
        .collect()
}

/// Splits a config into the agent's own keys and the publishing pipeline's: `[sink]`,
/// `[state]`, `[service]`, the file keys of `[output]`, plus copies of the shared keys.
fn split_publishing(mut table: toml::Table) -> (toml::Table, toml::Table) {
    let mut publish = toml::Table::new();
    for name in PUBLISH_SECTIONS {
        if let Some(section) = table.remove(name) {
            publish.insert(name.to_owned(), section);
        }
    }
    let mut output = toml::Table::new();
    if let Some(toml::Value::Table(agent_output)) = table.get_mut("output") {
        output = take_file_keys(agent_output);
        if let Some(v) = agent_output.get("log_format") {
            output.insert("log_format".to_owned(), v.clone());
        }
    }
    publish.insert("output".to_owned(), toml::Value::Table(output));
    let mut flow_log = toml::Table::new();
    if let Some(toml::Value::Table(agent_flow_log)) = table.get("flow_log") {
        for key in ["id", "account_id", "region"] {
            if let Some(v) = agent_flow_log.get(key) {
                flow_log.insert(key.to_owned(), v.clone());
            }
        }
    }
    publish.insert("flow_log".to_owned(), toml::Value::Table(flow_log));
    (table, publish)
}

/// The publishing pipeline's settings, or the problems of its sections.
struct Publish {
    #[cfg(feature = "standalone")]
    settings: Option<flowlog_publish::Settings>,
    problems: Vec<(String, String)>,
}

#[cfg(feature = "standalone")]
fn publish_settings(table: &toml::Table) -> Publish {
    // `[athena]` is read by `flowlog-aggregator athena-ddl --config`, which checks it.
    let mut table = table.clone();
    table.remove("athena");
    match flowlog_publish::settings::parse_table(&table) {
        Ok(settings) => Publish {
            settings: Some(settings),
            problems: Vec::new(),
        },
        Err(found) => Publish {
            settings: None,
            problems: found.into_iter().map(|p| (p.key, p.message)).collect(),
        },
    }
}

#[cfg(not(feature = "standalone"))]
fn publish_settings(table: &toml::Table) -> Publish {
    let mut problems = Vec::new();
    for (name, value) in table {
        let Some(section) = value.as_table() else {
            continue;
        };
        let keys: Vec<String> = if name == "output" {
            section
                .keys()
                .filter(|k| *k != "log_format")
                .map(|k| format!("output.{k}"))
                .collect()
        } else if name == "flow_log" {
            Vec::new()
        } else {
            vec![name.clone()]
        };
        for key in keys {
            problems.push((
                key,
                "this flowlog-agent is built without standalone output (cargo feature \
                 `standalone`): set [aggregator] to ship records to an aggregator, or use \
                 --stdout"
                    .to_owned(),
            ));
        }
    }
    Publish { problems }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const GOOD: &str = r#"
[flow_log]
id = "fl-0a1b2c3d4e5f60718"
account_id = "123456789012"
region = "eu-west-3"
max_aggregation_interval = "60s"
traffic_type = "ALL"
[output]
log_format = "${version} ${interface-id} ${srcaddr} ${dstaddr} ${flow-direction}"
[[interface]]
name = "eth0"
interface_id = "eni-0123456789abcdef0"
mac = "02:00:00:00:00:0a"
addresses = ["10.0.0.10", "10.244.1.0/24", "2001:db8:1:1::/64", "2001:db8:1:1::10"]
"#;

    #[test]
    fn the_documented_example_parses() {
        let s = parse(GOOD, "agent.toml").unwrap();
        assert_eq!(s.interval_secs, 60);
        assert_eq!(s.log_format.version(), 5);
        let eth0 = &s.interfaces[0];
        assert_eq!(eth0.mac, Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(eth0.primary_v4, Some(Ipv4Addr::new(10, 0, 0, 10)));
        assert_eq!(eth0.primary_v6, "2001:db8:1:1::10".parse().ok());
    }

    #[test]
    fn every_problem_is_listed() {
        let bad = "[flow_log]\nid = \"x\"\nmax_aggregation_interval = \"5m\"\ntraffic_type = \"SOME\"\n[output]\nlog_format = \"${srcadr}\"\n[[interface]]\nmac = \"zz\"\n";
        let e = parse(bad, "bad.toml").unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "flow_log.id",
            "flow_log.account_id",
            "flow_log.region",
            "flow_log.max_aggregation_interval",
            "flow_log.traffic_type",
            "output.log_format",
            "interface[0].name",
        ] {
            assert!(keys.contains(&k), "{k} missing: {e}");
        }
        assert!(
            parse("[flow_log]\nbogus = 1\n", "t")
                .unwrap_err()
                .to_string()
                .contains("flow_log.bogus: unknown key")
        );
    }

    #[test]
    fn default_interface_ids_are_stable_and_eni_shaped() {
        let id = default_interface_id("eth0");
        assert_eq!(id, default_interface_id("eth0"));
        assert_ne!(id, default_interface_id("eth1"));
        assert_eq!(id.len(), "eni-".len() + 17);
        assert!(id.starts_with("eni-") && id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn traffic_filter_keeps_status_rows() {
        assert!(TrafficFilter::Reject.keeps(None));
        assert!(!TrafficFilter::Reject.keeps(Some(Action::Accept)));
        assert!(TrafficFilter::Accept.keeps(Some(Action::Accept)));
    }

    const EXAMPLE: &str = include_str!("../../docs/agent.example.toml");

    /// The config the packages install as /etc/flowlog/agent.toml.
    const PACKAGED: &str = include_str!("../../packaging/config/agent.toml");

    /// The fleet-mode variant of `config` (the example or the packaged config), as its
    /// comments say to make it: standalone-only keys removed, `[aggregator]` and `[spool]`
    /// uncommented, files pointed at `dir`.
    fn fleet_variant(config: &str, dir: &std::path::Path) -> String {
        let (standalone, fleet) = config.split_once("# Fleet mode").unwrap();
        let mut out = String::new();
        let mut section = "";
        for line in standalone.lines() {
            if line.starts_with('[') {
                section = line;
            }
            let key = line.split('=').next().unwrap_or("").trim();
            let is_key = line.contains(" = ") && !line.starts_with('#');
            let standalone_only = match section {
                "[sink]" | "[state]" => true,
                "[output]" => is_key && key != "log_format",
                "[service]" => key == "shutdown_grace",
                _ => false,
            };
            if standalone_only {
                continue;
            }
            out.push_str(line);
            out.push('\n');
        }
        for line in fleet.lines() {
            if let Some(l) = line.strip_prefix("# ")
                && ((l.starts_with('[') && l.ends_with(']'))
                    || (l.contains(" = ") && l.starts_with(|c: char| c.is_ascii_lowercase())))
            {
                out.push_str(l);
                out.push('\n');
            }
        }
        let pki = flowlog_tests::pki::TestPki::generate(&dir.join("pki")).unwrap();
        let token = dir.join("agent.token");
        std::fs::write(&token, "t0ken\n").unwrap();
        out.replace("/etc/flowlog/tls/ca.pem", &pki.ca.display().to_string())
            .replace("/etc/flowlog/agent.token", &token.display().to_string())
    }

    fn fleet_example(dir: &std::path::Path) -> String {
        fleet_variant(EXAMPLE, dir)
    }

    #[test]
    fn the_example_and_the_packaged_config_parse_in_both_modes() {
        for (name, config) in [
            ("agent.example.toml", EXAMPLE),
            ("packaging/config/agent.toml", PACKAGED),
        ] {
            #[cfg(feature = "standalone")]
            {
                let s = parse(config, name).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(s.ship.is_none(), "{name}");
            }
            let dir = tempfile::tempdir().unwrap();
            let fleet = fleet_variant(config, dir.path());
            let s = parse(&fleet, name).unwrap_or_else(|e| panic!("{name}: {e}\n{fleet}"));
            let ship = s.ship.unwrap();
            assert_eq!(ship.endpoints.len(), 2, "{name}");
            assert_eq!(ship.agent_id, "web-01", "{name}");
            assert_eq!(ship.token.expose(), "t0ken", "{name}");
            assert_eq!(ship.service.log_level, "info", "{name}");
        }
    }

    /// The packaged config shows every key: with each commented-out key and section of
    /// standalone mode uncommented (S3 keys included, the sink switched to S3), every one
    /// is accepted.
    #[cfg(feature = "standalone")]
    #[test]
    fn every_key_of_the_packaged_config_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = dir.path().join("ip-ranges.json");
        std::fs::write(&ranges, r#"{"prefixes": [], "ipv6_prefixes": []}"#).unwrap();
        let (standalone, _) = PACKAGED.split_once("# Fleet mode").unwrap();
        let mut text = String::new();
        let mut uncommented = 0;
        for line in standalone.lines() {
            let line = match line
                .strip_prefix("# s3: ")
                .or_else(|| line.strip_prefix("# "))
            {
                Some(l)
                    if (l.starts_with('[')
                        && l.split('#').next().unwrap().trim_end().ends_with(']'))
                        || (l.contains(" = ")
                            && l.starts_with(|c: char| c.is_ascii_lowercase())) =>
                {
                    uncommented += 1;
                    l
                }
                _ => line,
            };
            if line.starts_with("path = \"/var/lib/flowlog-agent/flowlogs\"") {
                continue;
            }
            text.push_str(&line.replace("type = \"local\"", "type = \"s3\""));
            text.push('\n');
        }
        // Alternatives the comments describe: a KMS key needs sse = "aws:kms", and a
        // sublocation replaces the host's az_id (az_id stays in [[metadata.subnet]]).
        let text = text
            .replace(
                "/var/lib/flowlog-agent/ip-ranges.json",
                &ranges.display().to_string(),
            )
            .replace("sse = \"none\"", "sse = \"aws:kms\"")
            .replace("az_id = \"use1-az1\"\nsublocation_type", "sublocation_type");
        assert!(uncommented > 40, "{uncommented} lines uncommented");
        let s = parse(&text, "packaged.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(s.firewall.nflog_group, Some(100));
        assert_eq!(s.interfaces.len(), 1);
        assert!(s.metadata.ip_ranges.is_some());
        assert!(matches!(
            s.publish.sink,
            flowlog_publish::settings::SinkSettings::S3 { .. }
        ));
    }

    #[test]
    fn with_an_aggregator_standalone_sections_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = fleet_example(dir.path());
        let e = parse(
            &format!("{fleet}\n[sink]\npath = \"x\"\n[state]\ndir = \"y\"\n")
                .replace("\n[output]\n", "\n[output]\nformat = \"parquet\"\n")
                .replace("\n[service]\n", "\n[service]\nshutdown_grace = \"5s\"\n"),
            "fleet.toml",
        )
        .unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|(k, _)| k.as_str()).collect();
        for k in ["sink", "state", "output.format", "service.shutdown_grace"] {
            assert!(keys.contains(&k), "{k} missing: {e}");
        }
        assert!(
            e.to_string().contains("records go to the aggregator"),
            "{e}"
        );
        // [spool] without [aggregator] makes no sense.
        let e = parse(&format!("{GOOD}[spool]\ndir = \"s\"\n"), "t").unwrap_err();
        assert!(e.problems.iter().any(|(k, _)| k == "spool"), "{e}");
    }
}
