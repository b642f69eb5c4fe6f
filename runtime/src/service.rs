//! The `[service]` keys the agent (in ship mode) and the aggregator both have:
//! `log_format`, `log_level` and `metrics_address`, parsed the same way by both.

use std::fmt;
use std::str::FromStr;

/// Default `service.log_level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// How log lines are written to stderr (`service.log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogOutput {
    /// Human-readable lines (coloured when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogOutput {
    /// Returns the configuration name: `text` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogOutput::Text => "text",
            LogOutput::Json => "json",
        }
    }
}

/// A log format name other than `text` or `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format '{0}', expected one of: text, json")]
pub struct UnknownLogFormat(pub String);

impl FromStr for LogOutput {
    type Err = UnknownLogFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogOutput::Text),
            "json" => Ok(LogOutput::Json),
            other => Err(UnknownLogFormat(other.to_owned())),
        }
    }
}

impl fmt::Display for LogOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `service.log_format`: `text` (also when unset) or `json`.
///
/// # Errors
///
/// [`UnknownLogFormat`] naming the value for anything else.
pub fn log_format(value: Option<&str>) -> Result<LogOutput, UnknownLogFormat> {
    value.map_or(Ok(LogOutput::Text), str::parse)
}

/// Returns `service.log_level`: the value, or [`DEFAULT_LOG_LEVEL`] when unset.
pub fn log_level(value: Option<String>) -> String {
    value.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned())
}

/// A `service.metrics_address` that is not an IP address and port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not an address such as 127.0.0.1:9464")]
pub struct InvalidMetricsAddress(pub String);

/// Parses `service.metrics_address`: `None` (the endpoint is off) when unset or empty,
/// else an IP address and port such as `127.0.0.1:9464`, returned as given.
///
/// # Errors
///
/// [`InvalidMetricsAddress`] naming the value when it is not an address and port.
pub fn metrics_address(value: Option<String>) -> Result<Option<String>, InvalidMetricsAddress> {
    match value.filter(|a| !a.is_empty()) {
        Some(a) if a.parse::<std::net::SocketAddr>().is_err() => Err(InvalidMetricsAddress(a)),
        address => Ok(address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_output_parses() {
        assert_eq!("text".parse::<LogOutput>().unwrap(), LogOutput::Text);
        assert_eq!("json".parse::<LogOutput>().unwrap(), LogOutput::Json);
        let e = "xml".parse::<LogOutput>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown log format 'xml', expected one of: text, json"
        );
        assert_eq!(e.0, "xml");
        assert_eq!(LogOutput::Json.to_string(), "json");
        assert_eq!(LogOutput::Text.as_str(), "text");
        assert_eq!(LogOutput::default(), LogOutput::Text);
    }

    #[test]
    fn shared_keys() {
        assert_eq!(log_format(None), Ok(LogOutput::Text));
        assert_eq!(log_format(Some("json")), Ok(LogOutput::Json));
        assert_eq!(
            log_format(Some("JSON")),
            Err(UnknownLogFormat("JSON".into()))
        );
        assert_eq!(log_level(None), "info");
        assert_eq!(log_level(Some("debug".into())), "debug");
        assert_eq!(metrics_address(None), Ok(None));
        assert_eq!(metrics_address(Some(String::new())), Ok(None));
        assert_eq!(
            metrics_address(Some("[::1]:9464".into())),
            Ok(Some("[::1]:9464".into()))
        );
        let e = metrics_address(Some("nowhere".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "'nowhere' is not an address such as 127.0.0.1:9464"
        );
    }
}
