//! The log subscriber both binaries install: stderr, text or JSON, a `tracing` filter from
//! the config that `RUST_LOG` replaces when set.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::LogOutput;

/// The log filter cannot be parsed.
#[derive(Debug, thiserror::Error)]
#[error("invalid log filter '{filter}' (from {origin})")]
pub struct LogFilterError {
    /// The filter text.
    pub filter: String,
    /// Where it came from: `RUST_LOG` or the configuration.
    pub origin: &'static str,
    /// The parse error.
    #[source]
    pub source: tracing_subscriber::filter::ParseError,
}

/// Builds the filter: `RUST_LOG` (when set and not blank) wins over `filter`.
pub fn build_filter(filter: &str, rust_log: Option<String>) -> Result<EnvFilter, LogFilterError> {
    let (text, origin) = match rust_log {
        Some(env) if !env.trim().is_empty() => (env, "RUST_LOG"),
        _ => (filter.to_owned(), "the configuration"),
    };
    EnvFilter::try_new(&text).map_err(|source| LogFilterError {
        filter: text,
        origin,
        source,
    })
}

/// Installs the global `tracing` subscriber, writing to stderr in `format`.
///
/// `filter` is an [`EnvFilter`] directive such as `info` or `info,flowlog_publish=debug`;
/// the `RUST_LOG` environment variable replaces it when set. Safe to call more than once:
/// when a global subscriber is already installed the call does nothing and returns `Ok`
/// (the filter is still validated).
pub fn init(format: LogOutput, filter: &str) -> Result<(), LogFilterError> {
    let env_filter = build_filter(filter, std::env::var("RUST_LOG").ok())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogOutput::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogOutput::Json => builder.json().with_current_span(true).try_init(),
    };
    // The only failure is "a global subscriber (or `log` logger) is already set":
    // a second call is a no-op by contract.
    let _already_set = result;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_prefers_rust_log() {
        assert!(build_filter("info", None).is_ok());
        assert!(build_filter("info,flowlog_publish=debug", Some("  ".into())).is_ok());
        let e = build_filter("info,x=notalevel", None).unwrap_err();
        assert!(
            e.to_string()
                .contains("'info,x=notalevel' (from the configuration)"),
            "{e}"
        );
        // RUST_LOG wins, even over a bad configured filter.
        assert!(build_filter("x=notalevel", Some("debug".into())).is_ok());
        let e = build_filter("info", Some("y=bogus".into())).unwrap_err();
        assert!(e.to_string().contains("from RUST_LOG"), "{e}");
    }
}
