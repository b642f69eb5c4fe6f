//! `flowlog-publish`: the publishing pipeline both binaries share.
//!
//! ```text
//! records ─▶ WAL ─▶ streams (account, region, flow log, window) ─▶ encoders (text gz / Parquet)
//!         ─▶ staged file ─▶ manifest ─▶ sink (local dir / S3) ─▶ WAL reclaimed
//! ```
//!
//! - [`Publisher`]: the start / seal / stop sequence (runtime, sink, `/metrics`, pipeline);
//! - [`settings`]: the `[flow_log]`, `[output]`, `[sink]`, `[state]` and `[service]` sections;
//! - [`pipeline`]: WAL → windows → staged files → uploads, exactly once;
//! - [`wal`]: the append-only write-ahead log records pass through;
//! - [`sink`]: where finished objects go (local directory, S3);
//! - [`quarantine`]: records that cannot be published, kept aside;
//! - [`telemetry`]: logs, Prometheus metrics, `/metrics` and `/healthz`, signals.

pub mod file_modes;
pub mod pipeline;
mod publisher;
pub mod quarantine;
pub mod settings;
pub mod sink;
pub mod telemetry;
pub mod wal;

pub use publisher::{Finished, PublishError, Publisher, PublisherOptions, Wait};
pub use settings::Settings;
