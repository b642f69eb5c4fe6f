//! The `[capture]` section of the agent config: how live capture reads the interfaces.
//!
//! ```toml
//! [capture]
//! promiscuous = false        # also capture frames addressed to other hosts
//! fanout_threads = 1         # capture threads per interface (PACKET_FANOUT when > 1)
//! rescan_interval = "10s"    # look for new interfaces this often ("0s": never)
//! socket_buffer = "32MiB"    # kernel receive buffer of each packet socket
//! ```
//!
//! Every key is optional; unknown keys are refused (`config` lists them all). [`CaptureConfig::validate`] lists every
//! problem with its key.

use std::time::Duration;

use flowlog_runtime::{parse_duration, parse_size};
use serde::Deserialize;

/// Default [`CaptureSettings::fanout_threads`].
pub const DEFAULT_FANOUT_THREADS: usize = 1;
/// Most capture threads per interface.
pub const MAX_FANOUT_THREADS: usize = 64;
/// Default [`CaptureSettings::rescan_interval`].
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// Shortest non-zero [`CaptureSettings::rescan_interval`].
pub const MIN_RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`CaptureSettings::socket_buffer_bytes`]: 32 MiB.
///
/// The kernel charges about 830 bytes per queued 64-byte frame and doubles the value asked
/// for, so 32 MiB queues about 80,000 frames: a quarter of a second at 300,000 packets/s
/// during which the capture thread may be kept off its CPU without a drop. With 8 MiB
/// (70 ms) `benches/live_capture.sh` saw occasional drops at 300,000 packets/s on a busy
/// two-core machine; with 32 MiB none up to 600,000. Memory is only used while frames wait.
pub const DEFAULT_SOCKET_BUFFER_BYTES: usize = 32 << 20;
/// Smallest [`CaptureSettings::socket_buffer_bytes`]: 4 KiB (the kernel's floor is about
/// that).
pub const MIN_SOCKET_BUFFER_BYTES: usize = 4 << 10;
/// Largest [`CaptureSettings::socket_buffer_bytes`]: 1 GiB (the kernel doubles the value
/// into a C `int`).
pub const MAX_SOCKET_BUFFER_BYTES: usize = 1 << 30;

/// Validated `[capture]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSettings {
    /// Put the interfaces in promiscuous mode while capturing (frames addressed to other
    /// hosts are captured too). Default false.
    pub promiscuous: bool,
    /// Capture threads per interface: with more than one, the interface's packets are
    /// spread over the threads by flow hash (`PACKET_FANOUT_HASH`), each thread with its
    /// own flow table, and their records are merged per interval. Default 1, at most
    /// [`MAX_FANOUT_THREADS`].
    pub fanout_threads: usize,
    /// How often to look for new interfaces when no `[[interface]]` is configured; zero
    /// disables the rescan. Default 10 s, otherwise at least 1 s.
    pub rescan_interval: Duration,
    /// Receive buffer of each packet socket in bytes (`SO_RCVBUF`, forced past
    /// `net.core.rmem_max` when the agent may). Packets arriving while it is full are
    /// dropped by the kernel and reported as SKIPDATA. Default 32 MiB
    /// ([`DEFAULT_SOCKET_BUFFER_BYTES`]).
    pub socket_buffer_bytes: usize,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            promiscuous: false,
            fanout_threads: DEFAULT_FANOUT_THREADS,
            rescan_interval: DEFAULT_RESCAN_INTERVAL,
            socket_buffer_bytes: DEFAULT_SOCKET_BUFFER_BYTES,
        }
    }
}

/// A size given as a number of bytes or as text with a unit (`"8MiB"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// Bytes.
    Bytes(i64),
    /// Text such as `"512KiB"`, `"8MiB"`, `"1GiB"`, `"64kB"`, `"4096"`.
    Text(String),
}

/// The raw `[capture]` section as written in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CaptureConfig {
    /// See [`CaptureSettings::promiscuous`].
    pub promiscuous: Option<bool>,
    /// See [`CaptureSettings::fanout_threads`].
    pub fanout_threads: Option<i64>,
    /// See [`CaptureSettings::rescan_interval`]; a human duration (`"10s"`, `"1m"`).
    pub rescan_interval: Option<String>,
    /// See [`CaptureSettings::socket_buffer_bytes`].
    pub socket_buffer: Option<SizeValue>,
}

impl CaptureConfig {
    /// Returns the validated settings; every problem found is appended to `problems` as
    /// `(key, problem)` (the settings returned then hold defaults in place of bad values).
    pub fn validate(&self, problems: &mut Vec<(String, String)>) -> CaptureSettings {
        let mut settings = CaptureSettings {
            promiscuous: self.promiscuous.unwrap_or(false),
            ..CaptureSettings::default()
        };
        if let Some(n) = self.fanout_threads {
            match usize::try_from(n) {
                Ok(n) if (1..=MAX_FANOUT_THREADS).contains(&n) => settings.fanout_threads = n,
                _ => problems.push((
                    "capture.fanout_threads".into(),
                    format!("{n} is not between 1 and {MAX_FANOUT_THREADS}"),
                )),
            }
        }
        if let Some(text) = &self.rescan_interval {
            match parse_duration(text) {
                Ok(d) if d.is_zero() || d >= MIN_RESCAN_INTERVAL => settings.rescan_interval = d,
                Ok(_) => problems.push((
                    "capture.rescan_interval".into(),
                    format!("'{text}' is shorter than 1s (use \"0s\" to disable the rescan)"),
                )),
                Err(e) => problems.push((
                    "capture.rescan_interval".into(),
                    format!("'{text}' is not a duration such as \"10s\": {e}"),
                )),
            }
        }
        if let Some(size) = &self.socket_buffer {
            let parsed = match size {
                SizeValue::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n} is negative")),
                SizeValue::Text(t) => parse_size(t).map_err(|e| e.to_string()),
            };
            match parsed.map(usize::try_from) {
                Ok(Ok(n)) if (MIN_SOCKET_BUFFER_BYTES..=MAX_SOCKET_BUFFER_BYTES).contains(&n) => {
                    settings.socket_buffer_bytes = n;
                }
                Ok(_) => problems.push((
                    "capture.socket_buffer".into(),
                    format!("{} is not between 4KiB and 1GiB", shown(size)),
                )),
                Err(e) => problems.push(("capture.socket_buffer".into(), e)),
            }
        }
        settings
    }
}

fn shown(size: &SizeValue) -> String {
    match size {
        SizeValue::Bytes(n) => n.to_string(),
        SizeValue::Text(t) => format!("'{t}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_text: &str) -> (CaptureSettings, Vec<(String, String)>) {
        let raw: CaptureConfig = toml::from_str(toml_text).unwrap();
        let mut problems = Vec::new();
        let s = raw.validate(&mut problems);
        (s, problems)
    }

    #[test]
    fn defaults_and_values() {
        let (s, p) = check("");
        assert!(p.is_empty());
        assert_eq!(s, CaptureSettings::default());
        assert!(!s.promiscuous);
        let (s, p) = check(
            "promiscuous = true\nfanout_threads = 4\nrescan_interval = \"2m\"\nsocket_buffer = \"64MiB\"\n",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            s,
            CaptureSettings {
                promiscuous: true,
                fanout_threads: 4,
                rescan_interval: Duration::from_secs(120),
                socket_buffer_bytes: 64 << 20,
            }
        );
        let (s, p) = check("socket_buffer = 65536\nrescan_interval = \"0s\"\n");
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(s.socket_buffer_bytes, 65536);
        assert!(s.rescan_interval.is_zero());
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let (_, p) = check(
            "fanout_threads = 0\nrescan_interval = \"soon\"\nsocket_buffer = \"8 parsecs\"\n",
        );
        let keys: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "capture.fanout_threads",
                "capture.rescan_interval",
                "capture.socket_buffer"
            ]
        );
        let (_, p) = check("fanout_threads = 65\nrescan_interval = \"200ms\"\nsocket_buffer = 1\n");
        assert_eq!(p.len(), 3, "{p:?}");
        let (_, p) = check("socket_buffer = \"2GiB\"\n");
        assert_eq!(p.len(), 1);
        let (_, unknown) = flowlog_runtime::keys::deserialize_with_unknown::<CaptureConfig>(
            toml::Value::Table("snaplen = 96\n".parse().unwrap()),
        );
        assert_eq!(unknown, ["snaplen"]);
    }
}
