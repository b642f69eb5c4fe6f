//! When data written to disk is made durable: `always`, `never` or `interval:<duration>`.
//!
//! The aggregator's WAL (`[state] fsync`) and the agent's spool (`[spool] fsync`) take the
//! same policy; what each policy means for each of them is documented where they use it
//! (`WalSettings::fsync`, `SpoolSettings::fsync`).

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::duration::{DurationError, parse_duration};

/// When writes are fsync'd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Sync before a write counts as done: what was acknowledged survives a power loss.
    /// The default.
    #[default]
    Always,
    /// Sync when the last sync is older than the interval: a power loss can lose the
    /// writes of the last interval (a process crash loses nothing).
    Interval(Duration),
    /// Never sync on a timer; the OS writes the data back on its own schedule. A power loss
    /// or kernel crash can lose the last seconds of writes; a process crash loses nothing.
    Never,
}

/// A text that is not an [`FsyncPolicy`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FsyncPolicyError {
    /// Neither `always`, `never` nor `interval:…`.
    #[error(
        "invalid fsync policy {input:?}: expected \"always\", \"never\" or \"interval:<n>ms\" / \"interval:<n>s\" (e.g. \"interval:200ms\")"
    )]
    Unknown {
        /// The text as given.
        input: String,
    },
    /// `interval:` followed by something that is not a duration.
    #[error(
        "invalid fsync policy {input:?}: expected \"always\", \"never\" or \"interval:<n>ms\" / \"interval:<n>s\" (e.g. \"interval:200ms\")"
    )]
    Interval {
        /// The text as given.
        input: String,
        /// Why the interval is not a duration.
        #[source]
        source: DurationError,
    },
}

impl fmt::Display for FsyncPolicy {
    /// Formats the policy in the form accepted by [`FsyncPolicy::from_str`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Interval(d) => {
                if d.subsec_nanos() % 1_000_000 != 0 {
                    write!(f, "interval:{}.{:09}s", d.as_secs(), d.subsec_nanos())
                } else if d.subsec_nanos() == 0 && !d.is_zero() {
                    write!(f, "interval:{}s", d.as_secs())
                } else {
                    write!(f, "interval:{}ms", d.as_millis())
                }
            }
        }
    }
}

impl FromStr for FsyncPolicy {
    type Err = FsyncPolicyError;

    /// Parses `always`, `never` or `interval:<duration>`, where the duration is any form
    /// [`parse_duration`] takes (`interval:200ms`, `interval:2s`, `interval:0.5s`,
    /// `interval:1m`). The keywords are case-insensitive; spaces around are ignored. A zero
    /// interval is accepted here; a user that needs a positive one checks it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        const INTERVAL: &str = "interval:";
        if text.eq_ignore_ascii_case("always") {
            Ok(Self::Always)
        } else if text.eq_ignore_ascii_case("never") {
            Ok(Self::Never)
        } else if let Some(prefix) = text.get(..INTERVAL.len())
            && prefix.eq_ignore_ascii_case(INTERVAL)
        {
            parse_duration(&text[INTERVAL.len()..])
                .map(Self::Interval)
                .map_err(|source| FsyncPolicyError::Interval {
                    input: s.to_owned(),
                    source,
                })
        } else {
            Err(FsyncPolicyError::Unknown {
                input: s.to_owned(),
            })
        }
    }
}

/// Makes the entries of `dir` durable (files created, renamed or removed in it): an fsync
/// of the directory itself, which every rename-into-place needs before it is relied on.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policy_from_str() {
        let ok = [
            ("always", FsyncPolicy::Always),
            ("Always", FsyncPolicy::Always),
            (" never ", FsyncPolicy::Never),
            (
                "interval:200ms",
                FsyncPolicy::Interval(Duration::from_millis(200)),
            ),
            ("interval:2s", FsyncPolicy::Interval(Duration::from_secs(2))),
            (
                "INTERVAL:1500MS",
                FsyncPolicy::Interval(Duration::from_millis(1500)),
            ),
            (
                "interval:0.5s",
                FsyncPolicy::Interval(Duration::from_millis(500)),
            ),
            (
                "interval:1.25ms",
                FsyncPolicy::Interval(Duration::from_micros(1250)),
            ),
            (
                "interval: 100 ms",
                FsyncPolicy::Interval(Duration::from_millis(100)),
            ),
            ("interval:0ms", FsyncPolicy::Interval(Duration::ZERO)),
            // Every duration form, as the agent's spool always took them.
            (
                "interval:1m",
                FsyncPolicy::Interval(Duration::from_secs(60)),
            ),
            (
                "interval:1h",
                FsyncPolicy::Interval(Duration::from_secs(3600)),
            ),
            (
                "interval:1m 30s",
                FsyncPolicy::Interval(Duration::from_secs(90)),
            ),
            (
                "interval:250ms",
                FsyncPolicy::Interval(Duration::from_millis(250)),
            ),
        ];
        for (input, want) in ok {
            assert_eq!(input.parse::<FsyncPolicy>().unwrap(), want, "{input}");
            // Display round-trips.
            assert_eq!(want.to_string().parse::<FsyncPolicy>().unwrap(), want);
        }
        assert_eq!(
            FsyncPolicy::Interval(Duration::from_millis(200)).to_string(),
            "interval:200ms"
        );
        assert_eq!(
            FsyncPolicy::Interval(Duration::from_secs(3)).to_string(),
            "interval:3s"
        );
        assert_eq!(
            FsyncPolicy::Interval(Duration::from_secs(60)).to_string(),
            "interval:60s"
        );
        assert_eq!(
            FsyncPolicy::Interval(Duration::new(1, 1)).to_string(),
            "interval:1.000000001s"
        );
        assert_eq!(FsyncPolicy::Always.to_string(), "always");
        assert_eq!(FsyncPolicy::Never.to_string(), "never");
        for bad in [
            "",
            "sometimes",
            "interval",
            "interval:",
            "interval:200",
            "interval:ms",
            "interval:-1s",
            "interval:1.s",
            "interval:.5s",
            "interval:1.0000000001s",
            "interval:99999999999999999999999999999999999999999s",
            "always:1s",
            "intervalé",
        ] {
            let err = bad.parse::<FsyncPolicy>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("\"always\""), "{msg}");
            assert!(msg.contains("\"never\""), "{msg}");
            assert!(msg.contains("interval:<n>ms"), "{msg}");
        }
        assert!(matches!(
            "interval:soon".parse::<FsyncPolicy>(),
            Err(FsyncPolicyError::Interval { .. })
        ));
        assert!(matches!(
            "sometimes".parse::<FsyncPolicy>(),
            Err(FsyncPolicyError::Unknown { .. })
        ));
        assert_eq!(FsyncPolicy::default(), FsyncPolicy::Always);
    }
}
