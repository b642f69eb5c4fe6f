//! `flowlog-runtime`: small helpers shared by the agent and the aggregator.
//!
//! Both binaries parse the same kinds of config values, report errors the same way and
//! retry the same way; each helper lives here once, so that the two cannot drift apart:
//!
//! - [`error_chain`]: an error and its causes on one line;
//! - [`backoff`]: exponential backoff with full jitter ([`Backoff`], [`jitter`]);
//! - [`parse_size`]: byte sizes (`65536`, `"64MiB"`, `"75MB"`);
//! - [`parse_duration`]: durations (`"10s"`, `"1m"`, `"200ms"`, `"0.5s"`);
//! - [`FsyncPolicy`]: `always`, `never` or `interval:<duration>` (the aggregator's WAL and
//!   the agent's spool), and [`sync_dir`], the directory fsync every rename needs;
//! - [`service`]: the `[service]` keys both binaries have (`log_format` as [`LogOutput`],
//!   `log_level`, `metrics_address`);
//! - [`keys`]: config keys as written, and unknown keys collected from the settings structs;
//! - [`logs`]: the log subscriber (stderr, text or JSON, `RUST_LOG` over the config);
//! - [`http`]: the `/metrics` and `/healthz` endpoint, answering from a [`http::Status`].
//!
//! The value helpers are std plus `thiserror` and `humantime`; `keys`, `logs` and
//! `http` add `serde`, `toml`, `tracing-subscriber`, `tokio` and `axum`, which both binaries
//! link anyway.

#![warn(missing_docs)]

pub mod backoff;
pub mod duration;
pub mod error;
pub mod fsync;
pub mod http;
pub mod keys;
pub mod logs;
pub mod service;
pub mod size;

pub use backoff::{Backoff, jitter};
pub use duration::{DurationError, parse_duration};
pub use error::error_chain;
pub use fsync::{FsyncPolicy, FsyncPolicyError, sync_dir};
pub use service::{LogOutput, UnknownLogFormat};
pub use size::{SizeError, parse_size};
