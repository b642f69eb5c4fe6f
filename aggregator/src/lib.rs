//! `flowlog-aggregator`: the central service of flowlog.
//!
//! ```text
//! ingest ─▶ WAL ─▶ window ─▶ encode (text gz / Parquet) ─▶ stage ─▶ upload (local dir / S3)
//! ```
//!
//! - [`athena`]: the Athena table, partitions and named queries for the output;
//! - [`serve`]: the gRPC endpoint agents push batches to (auth, TLS, dedupe, group commit);
//! - [`convert`]: rewrites existing flow log files between formats;
//! - [`config`]: the TOML config (the publishing sections are `flowlog_publish::settings`);
//! - [`import`]: publishing existing files through the pipeline (`flowlog_publish`);

pub mod athena;
pub mod config;
pub mod convert;
pub mod import;
pub mod serve;
