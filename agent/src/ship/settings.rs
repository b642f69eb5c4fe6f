//! The `[aggregator]`, `[spool]` and (in ship mode) `[service]` sections of the agent
//! config: where records are shipped, how, and the disk spool they wait in.
//!
//! Every key is optional but `endpoints`; unknown keys are refused; every problem is listed
//! with its key. Files named by the config (token, CA, client certificate and key) are read
//! here, so a config that loads can connect.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use flowlog_runtime::FsyncPolicyError;
use flowlog_runtime::service::{self, UnknownLogFormat};
use serde::Deserialize;

use crate::capture_config::SizeValue;

/// Default `aggregator.token_file`.
pub const DEFAULT_TOKEN_FILE: &str = "/etc/flowlog/agent.token";
/// Default `aggregator.batch_records`.
pub const DEFAULT_BATCH_RECORDS: usize = 10_000;
/// Default `aggregator.max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Most `aggregator.max_in_flight`.
pub const MAX_IN_FLIGHT: usize = 256;
/// Default `aggregator.connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `aggregator.push_timeout`.
pub const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `aggregator.retry_max`.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);
/// Default `aggregator.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default `spool.dir`.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/flowlog-agent/spool";
/// Default `spool.max_bytes`: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;
/// Default `spool.segment_bytes`: 16 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
/// Smallest `spool.max_bytes` and `spool.segment_bytes`: 4 KiB.
pub const MIN_SPOOL_BYTES: u64 = 4 << 10;

/// Message compression of the pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd (the default).
    Zstd,
    /// gzip.
    Gzip,
    /// Uncompressed.
    None,
}

/// When the spool fsyncs what it writes (see [`SpoolSettings::fsync`]).
pub use flowlog_runtime::FsyncPolicy;

/// Validated `[spool]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// The spool directory (created 0700, locked while the agent runs).
    pub dir: PathBuf,
    /// Bytes of segment files at most; batches that do not fit are replaced by SKIPDATA
    /// records.
    pub max_bytes: u64,
    /// Bytes of one segment file (a new one is started when the next batch does not fit).
    pub segment_bytes: u64,
    /// The fsync policy (`spool.fsync`; a zero interval is refused):
    ///
    /// - [`FsyncPolicy::Always`]: before a batch counts as spooled (the default);
    /// - [`FsyncPolicy::Never`]: never (the OS writes back when it likes; a power loss can
    ///   lose spooled batches);
    /// - [`FsyncPolicy::Interval`]: at most this long after a write.
    pub fsync: FsyncPolicy,
}

/// Format of the log lines on stderr.
pub use flowlog_runtime::LogOutput;

/// `[service]` keys that apply in ship mode.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceSettings {
    /// Address of the `/metrics` and `/healthz` endpoint; `None` = off.
    pub metrics_address: Option<String>,
    /// Log filter (`info`, `debug`, `flowlog_agent=debug,info`); `RUST_LOG` wins when set.
    pub log_level: String,
    /// Log line format.
    pub log_format: LogOutput,
}

/// One aggregator endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSettings {
    /// The URL as configured (`https://agg-1.example:7443`); also the `endpoint` label of
    /// the metrics.
    pub url: String,
    /// True for `https://`.
    pub tls: bool,
}

/// A secret read from a file; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Validated shipping settings: `[aggregator]`, `[spool]` and `[service]`.
#[derive(Debug, Clone)]
pub struct ShipSettings {
    /// Endpoints in order of preference.
    pub endpoints: Vec<EndpointSettings>,
    /// PEM of `ca_file`; `None` = the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of `client_cert` and `client_key` (mTLS).
    pub client_identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The agent's name (`agent_id` of every push).
    pub agent_id: String,
    /// The bearer token (content of `token_file`, trimmed).
    pub token: Secret,
    /// Where the token came from.
    pub token_file: PathBuf,
    /// `http://` endpoints are allowed (plaintext).
    pub insecure: bool,
    /// Message compression.
    pub compression: Compression,
    /// Records per batch at most.
    pub batch_records: usize,
    /// Batches awaiting their reply per endpoint at most.
    pub max_in_flight: usize,
    /// Time allowed to connect (TCP + TLS + HTTP/2).
    pub connect_timeout: Duration,
    /// Time allowed for one push's reply.
    pub push_timeout: Duration,
    /// Cap of the exponential backoff between retries.
    pub retry_max: Duration,
    /// At shutdown, time allowed to deliver what is spooled.
    pub shutdown_grace: Duration,
    /// The spool.
    pub spool: SpoolSettings,
    /// `[service]`.
    pub service: ServiceSettings,
}

/// The raw `[aggregator]` section.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AggregatorConfig {
    endpoints: Option<Vec<String>>,
    ca_file: Option<String>,
    agent_id: Option<String>,
    token_file: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    insecure: Option<bool>,
    compression: Option<String>,
    batch_records: Option<i64>,
    max_in_flight: Option<i64>,
    connect_timeout: Option<String>,
    push_timeout: Option<String>,
    retry_max: Option<String>,
    shutdown_grace: Option<String>,
}

/// The raw `[spool]` section.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SpoolConfig {
    dir: Option<String>,
    max_bytes: Option<SizeValue>,
    segment_bytes: Option<SizeValue>,
    fsync: Option<String>,
}

/// The raw `[service]` section in ship mode.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ServiceConfig {
    metrics_address: Option<String>,
    log_level: Option<String>,
    log_format: Option<String>,
    shutdown_grace: Option<toml::Value>,
}

/// Deserializes one section, reporting a problem (and returning the default) if it does
/// not fit.
pub fn section<T: Default + serde::de::DeserializeOwned>(
    value: Option<toml::Value>,
    name: &str,
    add: &mut dyn FnMut(&str, String),
) -> Option<T> {
    let value = value?;
    let (result, unknown) = flowlog_runtime::keys::deserialize_with_unknown::<T>(value);
    for key in unknown {
        add(&format!("{name}.{key}"), "unknown key".to_owned());
    }
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            add(name, e.message().to_owned());
            Some(T::default())
        }
    }
}

fn duration(
    key: &str,
    text: Option<&str>,
    default: Duration,
    add: &mut dyn FnMut(&str, String),
) -> Duration {
    match text {
        None => default,
        Some(t) => match flowlog_runtime::parse_duration(t) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                add(key, format!("'{t}' must be longer than 0s"));
                default
            }
            Err(e) => {
                add(key, format!("'{t}' is not a duration such as \"10s\": {e}"));
                default
            }
        },
    }
}

fn size(
    key: &str,
    value: Option<&SizeValue>,
    default: u64,
    add: &mut dyn FnMut(&str, String),
) -> u64 {
    let parsed = match value {
        None => return default,
        Some(SizeValue::Bytes(n)) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
        Some(SizeValue::Text(t)) => flowlog_runtime::parse_size(t).map_err(|e| e.to_string()),
    };
    match parsed {
        Ok(n) if n >= MIN_SPOOL_BYTES => n,
        Ok(n) => {
            add(key, format!("{n} bytes is less than the minimum of 4KiB"));
            default
        }
        Err(e) => {
            add(key, e);
            default
        }
    }
}

fn read_file(key: &str, path: &Path, add: &mut dyn FnMut(&str, String)) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
            add(key, format!("{} is empty", path.display()));
            None
        }
        Ok(bytes) => Some(bytes),
        Err(e) => {
            add(key, format!("cannot read {}: {e}", path.display()));
            None
        }
    }
}

/// Who besides the agent can read a token file of `mode` owned by group `file_gid`, for an
/// agent running with effective group `agent_gid`: `None` when nobody else can (0600, or
/// 0640 with the agent's own group), else a warning naming `path` and the fix.
#[must_use]
pub fn token_file_exposure(
    path: &Path,
    mode: u32,
    file_gid: u32,
    agent_gid: u32,
) -> Option<String> {
    let others = mode & 0o004 != 0;
    let group = mode & 0o040 != 0 && file_gid != agent_gid;
    let who = match (others, group) {
        (false, false) => return None,
        (true, _) => "every user".to_owned(),
        (false, true) => format!("group {file_gid}, which the agent does not run as"),
    };
    let shown = path.display();
    Some(format!(
        "token file {shown} is readable by {who} (mode {:04o}); run chmod 600 {shown} \
         (or 640 with the agent's group)",
        mode & 0o7777
    ))
}

/// The warning of [`token_file_exposure`] for the token file at `path` and this process,
/// or `None` when only the agent can read it or its metadata cannot be read (reading the
/// token itself reports that).
#[must_use]
pub fn token_file_warning(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let agent_gid = rustix::process::getegid().as_raw();
    token_file_exposure(path, meta.mode(), meta.gid(), agent_gid)
}

/// The host name (`/proc/sys/kernel/hostname`), the default `agent_id`.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The agent id: `configured` (`aggregator.agent_id`, empty = unset), else the host name.
/// Either must follow the aggregator's rule ([`flowlog_transport::validate_agent_id`]).
///
/// # Errors
///
/// The problem, for the `aggregator.agent_id` key: which rule the id breaks, and for a
/// host name that breaks it, that `agent_id` must be set.
pub fn agent_id_from(
    configured: Option<String>,
    host_name: Option<String>,
) -> Result<String, String> {
    match configured.filter(|s| !s.is_empty()) {
        Some(id) => match flowlog_transport::validate_agent_id(&id) {
            Ok(()) => Ok(id),
            Err(e) => Err(e.to_string()),
        },
        None => match host_name {
            None => Err("the host name is unknown; set agent_id".into()),
            Some(host) => match flowlog_transport::validate_agent_id(&host) {
                Ok(()) => Ok(host),
                Err(e) => Err(format!(
                    "the host name '{}' is not a valid default agent id ({e}); set agent_id \
                     in [aggregator] to the name the aggregator's tokens file gives this agent",
                    host.escape_debug()
                )),
            },
        },
    }
}

/// Parses an endpoint URL: `https://host:port` (or `http://` with `insecure`).
fn endpoint(url: &str, insecure: bool) -> Result<EndpointSettings, String> {
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|e| format!("'{url}' is not a URL such as https://aggregator:7443: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if insecure => false,
        Some("http") => {
            return Err(format!(
                "'{url}' is plaintext http://; use https:// or set aggregator.insecure = true"
            ));
        }
        _ => {
            return Err(format!(
                "'{url}' must start with https:// (or http:// with insecure = true)"
            ));
        }
    };
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("'{url}' names no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "'{url}' has a path; give scheme, host and port only"
        ));
    }
    Ok(EndpointSettings {
        url: url.to_owned(),
        tls,
    })
}

/// Validates `[aggregator]`, `[spool]` and the ship-mode `[service]`; every problem is
/// passed to `add` as `(key, problem)`. Returns `None` when a problem was found.
pub fn validate(
    aggregator: AggregatorConfig,
    spool: SpoolConfig,
    service: ServiceConfig,
    add: &mut dyn FnMut(&str, String),
) -> Option<ShipSettings> {
    let found = std::cell::Cell::new(false);
    let mut add = |key: &str, problem: String| {
        found.set(true);
        add(key, problem);
    };
    let a = aggregator;
    let insecure = a.insecure.unwrap_or(false);
    let mut endpoints = Vec::new();
    match &a.endpoints {
        None => add("aggregator.endpoints", "is required".into()),
        Some(list) if list.is_empty() => {
            add("aggregator.endpoints", "lists no endpoint".into());
        }
        Some(list) => {
            for (i, url) in list.iter().enumerate() {
                match endpoint(url, insecure) {
                    Ok(e) if endpoints.iter().any(|o: &EndpointSettings| o.url == e.url) => add(
                        &format!("aggregator.endpoints[{i}]"),
                        format!("'{url}' is listed twice"),
                    ),
                    Ok(e) => endpoints.push(e),
                    Err(p) => add(&format!("aggregator.endpoints[{i}]"), p),
                }
            }
        }
    }
    let any_tls = endpoints.iter().any(|e| e.tls);
    let ca_pem = match a.ca_file.as_deref().filter(|f| !f.is_empty()) {
        Some(f) if any_tls => read_file("aggregator.ca_file", Path::new(f), &mut add),
        _ => None,
    };
    let cert = a.client_cert.as_deref().filter(|f| !f.is_empty());
    let key = a.client_key.as_deref().filter(|f| !f.is_empty());
    let client_identity = match (cert, key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let cert = read_file("aggregator.client_cert", Path::new(c), &mut add);
            let key = read_file("aggregator.client_key", Path::new(k), &mut add);
            cert.zip(key)
        }
        (Some(_), None) => {
            add(
                "aggregator.client_key",
                "is required with client_cert".into(),
            );
            None
        }
        (None, Some(_)) => {
            add(
                "aggregator.client_cert",
                "is required with client_key".into(),
            );
            None
        }
    };
    let host = if a.agent_id.as_deref().is_none_or(str::is_empty) {
        host_name()
    } else {
        None
    };
    let agent_id = agent_id_from(a.agent_id, host).unwrap_or_else(|problem| {
        add("aggregator.agent_id", problem);
        String::new()
    });
    let token_file = PathBuf::from(
        a.token_file
            .filter(|f| !f.is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_FILE.to_owned()),
    );
    let token = match read_file("aggregator.token_file", &token_file, &mut add) {
        Some(bytes) => match String::from_utf8(bytes) {
            Ok(text) => {
                let token = text.trim().to_owned();
                if token.bytes().all(|b| b.is_ascii_graphic()) {
                    token
                } else {
                    add(
                        "aggregator.token_file",
                        format!(
                            "{}: the token must be printable characters without spaces",
                            token_file.display()
                        ),
                    );
                    String::new()
                }
            }
            Err(_) => {
                add(
                    "aggregator.token_file",
                    format!("{} is not UTF-8 text", token_file.display()),
                );
                String::new()
            }
        },
        None => String::new(),
    };
    let compression = match a.compression.as_deref() {
        None | Some("zstd") => Compression::Zstd,
        Some("gzip") => Compression::Gzip,
        Some("none") => Compression::None,
        Some(other) => {
            add(
                "aggregator.compression",
                format!("'{other}' is not one of zstd, gzip, none"),
            );
            Compression::Zstd
        }
    };
    let max_batch = flowlog_transport::MAX_BATCH_RECORDS;
    let batch_records = match a.batch_records {
        None => DEFAULT_BATCH_RECORDS,
        Some(n) => match usize::try_from(n) {
            Ok(n) if (1..=max_batch).contains(&n) => n,
            _ => {
                add(
                    "aggregator.batch_records",
                    format!("{n} is not between 1 and {max_batch}"),
                );
                DEFAULT_BATCH_RECORDS
            }
        },
    };
    let max_in_flight = match a.max_in_flight {
        None => DEFAULT_MAX_IN_FLIGHT,
        Some(n) => match usize::try_from(n) {
            Ok(n) if (1..=MAX_IN_FLIGHT).contains(&n) => n,
            _ => {
                add(
                    "aggregator.max_in_flight",
                    format!("{n} is not between 1 and {MAX_IN_FLIGHT}"),
                );
                DEFAULT_MAX_IN_FLIGHT
            }
        },
    };
    let connect_timeout = duration(
        "aggregator.connect_timeout",
        a.connect_timeout.as_deref(),
        DEFAULT_CONNECT_TIMEOUT,
        &mut add,
    );
    let push_timeout = duration(
        "aggregator.push_timeout",
        a.push_timeout.as_deref(),
        DEFAULT_PUSH_TIMEOUT,
        &mut add,
    );
    let retry_max = duration(
        "aggregator.retry_max",
        a.retry_max.as_deref(),
        DEFAULT_RETRY_MAX,
        &mut add,
    );
    let shutdown_grace = duration(
        "aggregator.shutdown_grace",
        a.shutdown_grace.as_deref(),
        DEFAULT_SHUTDOWN_GRACE,
        &mut add,
    );
    let spool = validate_spool(spool, &mut add);
    let service = validate_service(service, &mut add);
    if found.get() {
        return None;
    }
    let settings = ShipSettings {
        endpoints,
        ca_pem,
        client_identity,
        agent_id,
        token: Secret(token),
        token_file,
        insecure,
        compression,
        batch_records,
        max_in_flight,
        connect_timeout,
        push_timeout,
        retry_max,
        shutdown_grace,
        spool,
        service,
    };
    // The TLS material must parse: check it as the sender will use it.
    if let Some(ep) = settings.endpoints.iter().find(|e| e.tls) {
        let ca_only = ShipSettings {
            client_identity: None,
            ..settings.clone()
        };
        if let Err(e) = build_endpoint(&ca_only, ep) {
            let key = if settings.ca_pem.is_some() {
                "aggregator.ca_file"
            } else {
                "aggregator.endpoints"
            };
            add(key, flowlog_runtime::error_chain(&e));
            return None;
        }
        if settings.client_identity.is_some()
            && let Err(e) = build_endpoint(&settings, ep)
        {
            add(
                "aggregator.client_cert",
                format!(
                    "client_cert and client_key are not a certificate and its key: {}",
                    flowlog_runtime::error_chain(&e)
                ),
            );
            return None;
        }
    }
    Some(settings)
}

fn validate_spool(raw: SpoolConfig, add: &mut dyn FnMut(&str, String)) -> SpoolSettings {
    let dir = PathBuf::from(
        raw.dir
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_SPOOL_DIR.to_owned()),
    );
    let max_bytes = size(
        "spool.max_bytes",
        raw.max_bytes.as_ref(),
        DEFAULT_SPOOL_MAX_BYTES,
        add,
    );
    let segment_bytes = size(
        "spool.segment_bytes",
        raw.segment_bytes.as_ref(),
        DEFAULT_SEGMENT_BYTES,
        add,
    );
    let fsync = match raw
        .fsync
        .as_deref()
        .map(|text| (text, text.parse::<FsyncPolicy>()))
    {
        None => FsyncPolicy::Always,
        Some((_, Ok(FsyncPolicy::Interval(d)))) if !d.is_zero() => FsyncPolicy::Interval(d),
        Some((_, Ok(policy @ (FsyncPolicy::Always | FsyncPolicy::Never)))) => policy,
        Some((other, Ok(FsyncPolicy::Interval(_)) | Err(FsyncPolicyError::Interval { .. }))) => {
            add(
                "spool.fsync",
                format!("'{other}': the interval must be a duration such as \"1s\""),
            );
            FsyncPolicy::Always
        }
        Some((other, Err(FsyncPolicyError::Unknown { .. }))) => {
            add(
                "spool.fsync",
                format!("'{other}' is not one of always, never, interval:<duration>"),
            );
            FsyncPolicy::Always
        }
    };
    SpoolSettings {
        dir,
        max_bytes,
        segment_bytes,
        fsync,
    }
}

fn validate_service(raw: ServiceConfig, add: &mut dyn FnMut(&str, String)) -> ServiceSettings {
    if raw.shutdown_grace.is_some() {
        add(
            "service.shutdown_grace",
            "applies to standalone mode; with [aggregator] set aggregator.shutdown_grace".into(),
        );
    }
    let metrics_address = service::metrics_address(raw.metrics_address).unwrap_or_else(|e| {
        add("service.metrics_address", e.to_string());
        None
    });
    let log_format =
        service::log_format(raw.log_format.as_deref()).unwrap_or_else(|UnknownLogFormat(other)| {
            add(
                "service.log_format",
                format!("'{other}' is not one of text, json"),
            );
            LogOutput::Text
        });
    let log_level = service::log_level(raw.log_level);
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
        add(
            "service.log_level",
            format!("'{log_level}' is not a log filter such as \"info\": {e}"),
        );
    }
    ServiceSettings {
        metrics_address,
        log_level,
        log_format,
    }
}

/// Builds the tonic endpoint of `ep` (TLS material parsed here). Validation uses it to
/// refuse an endpoint at config time that the sender could not build.
pub fn build_endpoint(
    settings: &ShipSettings,
    ep: &EndpointSettings,
) -> Result<Endpoint, tonic::transport::Error> {
    let mut endpoint = Endpoint::from_shared(ep.url.clone())?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if ep.tls {
        let mut tls = ClientTlsConfig::new();
        tls = match &settings.ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &settings.client_identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn check(
        aggregator: &str,
        spool: &str,
        service: &str,
    ) -> (Option<ShipSettings>, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let mut add = |k: &str, p: String| problems.push((k.to_owned(), p));
        let a = toml::from_str(aggregator).unwrap();
        let s = toml::from_str(spool).unwrap();
        let v = toml::from_str(service).unwrap();
        let settings = validate(a, s, v, &mut add);
        (settings, problems)
    }

    #[test]
    fn defaults_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "  s3cret\n").unwrap();
        let (s, p) = check(
            &format!(
                "endpoints = [\"https://127.0.0.1:7443\", \"https://b:7443\"]\nagent_id = \"web-01\"\ntoken_file = \"{}\"\n",
                token.display()
            ),
            "",
            "",
        );
        assert!(p.is_empty(), "{p:?}");
        let s = s.unwrap();
        assert_eq!(s.token.expose(), "s3cret");
        assert!(!format!("{s:?}").contains("s3cret"));
        assert_eq!(s.endpoints.len(), 2);
        assert_eq!(s.compression, Compression::Zstd);
        assert_eq!(s.batch_records, DEFAULT_BATCH_RECORDS);
        assert_eq!(s.spool.max_bytes, 1 << 30);
        assert_eq!(s.spool.fsync, FsyncPolicy::Always);
        assert_eq!(s.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
        assert!(s.ca_pem.is_none());
    }

    /// Issue 16: the agent checks its id by the aggregator's rule, the default from the
    /// host name included, and says how to set it.
    #[test]
    fn agent_id_follows_the_aggregators_rule() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(agent_id_from(some("web-01"), None), Ok("web-01".into()));
        assert_eq!(
            agent_id_from(some("svc@ip-10-0-0-1.ec2.internal"), some("ignored host")),
            Ok("svc@ip-10-0-0-1.ec2.internal".into())
        );
        // Unset or empty: the host name, if it follows the rule.
        assert_eq!(agent_id_from(None, some("web-02")), Ok("web-02".into()));
        assert_eq!(agent_id_from(some(""), some("web-02")), Ok("web-02".into()));
        // Printable but refused by the aggregator: the agent refuses it too.
        for bad in ["web/01", "web#1", "db*", "a\"b", "caf\u{e9}"] {
            let problem = agent_id_from(some(bad), None).unwrap_err();
            assert!(problem.contains("use letters, digits"), "{bad}: {problem}");
        }
        assert!(
            agent_id_from(some(&"x".repeat(256)), None)
                .unwrap_err()
                .contains("256 bytes long")
        );
        // A host name that breaks the rule: named, with how to set agent_id.
        let problem = agent_id_from(None, some("build box")).unwrap_err();
        assert!(
            problem.starts_with("the host name 'build box' is not a valid default agent id"),
            "{problem}"
        );
        assert!(
            problem.contains("set agent_id in [aggregator]"),
            "{problem}"
        );
        assert_eq!(
            agent_id_from(None, None),
            Err("the host name is unknown; set agent_id".into())
        );

        // Through the section: the problem is reported on aggregator.agent_id.
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let (s, p) = check(
            &format!(
                "endpoints = [\"https://a:7443\"]\nagent_id = \"web 01\"\ntoken_file = \"{}\"\n",
                token.display()
            ),
            "",
            "",
        );
        assert!(s.is_none());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "aggregator.agent_id");
        assert!(p[0].1.contains("'web 01' holds ' '"), "{p:?}");
    }

    #[test]
    fn token_file_readable_by_others_is_reported() {
        let path = Path::new("/etc/flowlog/agent.token");
        // Only the agent (owner, or its own group) can read: nothing to say.
        assert_eq!(token_file_exposure(path, 0o100600, 0, 990), None);
        assert_eq!(token_file_exposure(path, 0o100400, 0, 990), None);
        assert_eq!(token_file_exposure(path, 0o100640, 990, 990), None);
        // Every user.
        let w = token_file_exposure(path, 0o100644, 990, 990).unwrap();
        assert_eq!(
            w,
            "token file /etc/flowlog/agent.token is readable by every user (mode 0644); run \
             chmod 600 /etc/flowlog/agent.token (or 640 with the agent's group)"
        );
        assert!(token_file_exposure(path, 0o100604, 990, 990).is_some());
        // A group the agent does not run as.
        let w = token_file_exposure(path, 0o100640, 0, 990).unwrap();
        assert!(
            w.contains("readable by group 0, which the agent does not run as"),
            "{w}"
        );
        assert!(w.contains("chmod 600 /etc/flowlog/agent.token"), "{w}");

        // A real file, with this process's group.
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("agent.token");
        std::fs::write(&token, "s3cret\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(token_file_warning(&token), None);
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = token_file_warning(&token).unwrap();
        assert!(w.contains(&token.display().to_string()), "{w}");
        assert!(w.contains("chmod 600"), "{w}");
        assert_eq!(token_file_warning(&dir.path().join("missing")), None);
    }

    #[test]
    fn every_problem_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.token");
        std::fs::write(&empty, "\n").unwrap();
        let (s, p) = check(
            &format!(
                "endpoints = [\"http://a:1\", \"ftp://b\"]\ntoken_file = \"{}\"\nca_file = \"/nonexistent/ca.pem\"\n\
                 client_cert = \"x.pem\"\ncompression = \"lz4\"\nbatch_records = 0\nmax_in_flight = 0\nretry_max = \"soon\"\n",
                empty.display()
            ),
            "max_bytes = 10\nfsync = \"sometimes\"\n",
            "metrics_address = \"nowhere\"\nlog_format = \"xml\"\nshutdown_grace = \"5s\"\n",
        );
        assert!(s.is_none());
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "aggregator.endpoints[0]",
            "aggregator.endpoints[1]",
            "aggregator.token_file",
            "aggregator.client_key",
            "aggregator.compression",
            "aggregator.batch_records",
            "aggregator.max_in_flight",
            "aggregator.retry_max",
            "spool.max_bytes",
            "spool.fsync",
            "service.metrics_address",
            "service.log_format",
            "service.shutdown_grace",
        ] {
            assert!(keys.contains(&k), "{k} missing: {p:?}");
        }
        let token = p
            .iter()
            .find(|(k, _)| k == "aggregator.token_file")
            .unwrap();
        assert!(token.1.contains("empty.token"), "{token:?}");
        assert!(
            p.iter()
                .any(|(k, m)| k == "aggregator.endpoints[0]" && m.contains("insecure")),
            "{p:?}"
        );
        // ca_file is only read when an endpoint uses TLS: here none does.
        assert!(!keys.contains(&"aggregator.ca_file"));
        let (_, p) = check(
            &format!(
                "endpoints = [\"https://a:1\"]\ntoken_file = \"{}\"\nca_file = \"/nonexistent/ca.pem\"\n",
                empty.display()
            ),
            "",
            "",
        );
        assert!(
            p.iter()
                .any(|(k, m)| k == "aggregator.ca_file" && m.contains("/nonexistent/ca.pem")),
            "{p:?}"
        );
    }

    /// `spool.fsync` takes `interval:` with any duration but zero.
    #[test]
    fn spool_fsync_forms() {
        let spool = |fsync: &str| {
            let mut problems = Vec::new();
            let raw = toml::from_str(&format!("fsync = \"{fsync}\"\n")).unwrap();
            let s = validate_spool(raw, &mut |k: &str, p: String| {
                problems.push((k.to_owned(), p));
            });
            (s.fsync, problems)
        };
        for (text, want) in [
            ("always", FsyncPolicy::Always),
            ("never", FsyncPolicy::Never),
            (
                "interval:1m",
                FsyncPolicy::Interval(Duration::from_secs(60)),
            ),
            ("interval:1s", FsyncPolicy::Interval(Duration::from_secs(1))),
            (
                "interval:0.5s",
                FsyncPolicy::Interval(Duration::from_millis(500)),
            ),
        ] {
            assert_eq!(spool(text), (want, Vec::new()), "{text}");
        }
        for bad in ["interval:0s", "interval:soon", "interval:"] {
            let (fsync, problems) = spool(bad);
            assert_eq!(fsync, FsyncPolicy::Always);
            assert_eq!(
                problems,
                [(
                    "spool.fsync".to_owned(),
                    format!("'{bad}': the interval must be a duration such as \"1s\"")
                )]
            );
        }
        assert_eq!(
            spool("sometimes").1,
            [(
                "spool.fsync".to_owned(),
                "'sometimes' is not one of always, never, interval:<duration>".to_owned()
            )]
        );
    }

    #[test]
    fn insecure_allows_http_and_fsync_intervals_parse() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t").unwrap();
        let (s, p) = check(
            &format!(
                "endpoints = [\"http://127.0.0.1:7000\"]\ninsecure = true\ntoken_file = \"{}\"\ncompression = \"none\"\n",
                token.display()
            ),
            "fsync = \"interval:250ms\"\nmax_bytes = \"64KiB\"\nsegment_bytes = 8192\n",
            "log_format = \"json\"\nlog_level = \"debug\"\n",
        );
        assert!(p.is_empty(), "{p:?}");
        let s = s.unwrap();
        assert!(!s.endpoints[0].tls);
        assert_eq!(
            s.spool.fsync,
            FsyncPolicy::Interval(Duration::from_millis(250))
        );
        assert_eq!(s.spool.max_bytes, 64 << 10);
        assert_eq!(s.spool.segment_bytes, 8192);
        assert_eq!(s.service.log_format, LogOutput::Json);
    }
}
