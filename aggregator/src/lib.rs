//! `flowlog-aggregator`: the central service of flowlog.
//!
//! ```text
//! ingest ─▶ WAL ─▶ window ─▶ encode (text gz / Parquet) ─▶ stage ─▶ upload (local dir / S3)
//! ```
//!
//! Today this crate provides [`convert`], which rewrites existing flow log files between
//! formats with the same encoders the publishing pipeline uses.

pub mod convert;
