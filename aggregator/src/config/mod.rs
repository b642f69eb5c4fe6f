//! Configuration: a TOML file read once at startup into validated [`Settings`].
//!
//! Every problem is reported at once, each naming its key (`output.window: …`): unknown
//! keys, wrong types and invalid values alike. `docs/configuration.md` documents every key.
//!
//! [`load`] checks the text of the file only. `serve` and `check-config` use
//! [`load_with`] to also read the files `[listen]` names (certificates, key, tokens) and,
//! for `serve`, to require `[listen]`.

use std::fmt;
use std::path::Path;

use flowlog_publish::settings::{self as publish, Problems, section};

mod athena;
mod listen;

pub use athena::{AthenaSettings, DEFAULT_ATHENA_TABLE, validate_athena_name};
pub use flowlog_publish::settings::{ByteSize, OutputFormat, Problem};
pub use listen::{
    DEFAULT_BODY_TIMEOUT, DEFAULT_LISTEN_ADDRESS, DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_RECORDS, DEFAULT_MAX_CALLS_PER_AGENT, DEFAULT_MAX_CALLS_PER_CONNECTION,
    DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_RECORD_AGE, DEFAULT_MAX_RECORD_AHEAD, ListenSettings,
    TlsFiles,
};

/// Validated settings of the aggregator: the publishing pipeline's and its own.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[flow_log]`, `[output]`, `[sink]`, `[state]`, `[service]`: the publishing pipeline.
    pub publish: publish::Settings,
    /// The gRPC endpoint agents push to (`serve` only); `None` when the file has no
    /// `[listen]` section.
    pub listen: Option<ListenSettings>,
    /// What `athena-ddl` generates.
    pub athena: AthenaSettings,
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

/// The aggregator's own sections (the publishing ones are
/// [`flowlog_publish::settings::SECTIONS`]); their keys are the fields of `RawListen` and
/// `RawAthena`.
pub const OWN_SECTIONS: [&str; 2] = ["listen", "athena"];

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

fn validate(table: &toml::Table, options: LoadOptions) -> Result<Settings, Vec<Problem>> {
    let mut p = Problems::new(options.ignore_unknown);
    publish::check_sections(
        table,
        publish::SECTIONS.into_iter().chain(OWN_SECTIONS),
        &mut p,
    );
    let publishing = publish::validate_sections(table, &mut p);
    let athena: athena::RawAthena = section(table, "athena", &mut p);
    let listen: Option<listen::RawListen> = table
        .contains_key("listen")
        .then(|| section(table, "listen", &mut p));
    let athena = athena::validate_athena(athena, &mut p);
    let listen = match listen {
        Some(raw) => listen::validate_listen(raw, &mut p),
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
        p.extend(check(listen));
    }

    match publishing {
        Some(publish) if p.is_empty() => Ok(Settings {
            publish,
            listen,
            athena,
        }),
        _ => Err(p.into_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog_formats::key::KeyLayout;
    use flowlog_publish::settings::SinkSettings;
    use flowlog_publish::wal::FsyncPolicy;
    use std::path::PathBuf;
    use std::time::Duration;

    const MINIMAL: &str = "[flow_log]\nid = \"fl-0123456789abcdef0\"\naccount_id = \"123456789012\"\nregion = \"us-east-1\"\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let s = parse(MINIMAL, "t.toml").unwrap();
        assert_eq!(s.publish.flow_log.id, "fl-0123456789abcdef0");
        assert_eq!(s.publish.output.format, OutputFormat::Text);
        assert!(s.publish.output.log_format.is_aws_default());
        assert_eq!(s.publish.output.layout, KeyLayout::Default);
        assert_eq!(s.publish.output.max_file_bytes, 75_000_000);
        assert_eq!(
            (s.publish.output.window, s.publish.output.grace),
            (Duration::from_secs(300), Duration::from_secs(60))
        );
        assert!(
            matches!(s.publish.sink, SinkSettings::Local { ref path, max_pending_uploads: 16 } if path == Path::new("./flowlogs"))
        );
        assert_eq!(s.publish.state.dir, PathBuf::from("./flowlog-state"));
        assert_eq!(s.publish.state.fsync, FsyncPolicy::Always);
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
            assert!(
                matches!(s.publish.sink, SinkSettings::Local { .. }),
                "{file}"
            );
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
            let SinkSettings::S3 { settings, .. } = s.publish.sink else {
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
            assert_eq!(s.publish.state.fsync, FsyncPolicy::Interval(want), "{text}");
        }
        let s = parse(&format!("{MINIMAL}[state]\nfsync = \"never\"\n"), "t.toml").unwrap();
        assert_eq!(s.publish.state.fsync, FsyncPolicy::Never);
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
