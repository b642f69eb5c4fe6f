//! `flowlog-aggregator`: the central service of flowlog.
//!
//! ```text
//! ingest ─▶ WAL ─▶ window ─▶ encode (text gz / Parquet) ─▶ stage ─▶ upload (local dir / S3)
//! ```
//!
//! - [`athena`]: the Athena table, partitions and named queries for the output;
//! - [`serve`]: the gRPC endpoint agents push batches to (auth, TLS, dedupe, group commit);
//! - [`convert`]: rewrites existing flow log files between formats;
//! - [`config`]: the TOML config and its validation;
//! - [`pipeline`]: WAL → windows → staged files → uploads, exactly once;
//! - [`import`]: publishing existing files through the pipeline;
//! - [`wal`]: the append-only write-ahead log records pass through;
//! - [`sink`]: where finished objects go (local directory, S3);
//! - [`telemetry`]: logs, Prometheus metrics, health and signals.

pub mod athena;
pub mod config;
pub mod convert;
pub mod file_modes;
pub mod import;
pub mod pipeline;
pub mod quarantine;
pub mod serve;
pub mod sink;
pub mod telemetry;
pub mod wal;
