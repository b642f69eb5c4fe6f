//! `flowlog-formats`: the byte-level contract of VPC flow logs, shared by the agent and
//! the aggregator.
//!
//! ```text
//! agent: capture ─▶ decode ─▶ flow table ─▶ interval close ─▶ FlowRecord ─┐
//! aggregator: ingest ─▶ WAL ─▶ window ─▶ encode (text gz / Parquet) ─▶ object key ─▶ sink
//!                                          ▲ this crate: records, formats, codecs, keys
//! ```
//!
//! - [`field`]: the field catalog (ids, versions, Parquet and Athena types);
//! - [`record`]: [`FlowRecord`], typed, with NODATA/SKIPDATA rows;
//! - [`format`]: [`LogFormat`], `${field}` format strings, the `version` rule, headers;
//! - [`text`]: text lines, gzip'd objects, and their decoder;
//! - `parquet` (feature `parquet`, on by default): Parquet objects readable by Athena,
//!   pyarrow and flowlogs-reader;
//! - [`key`]: the four S3 key layouts and AWS file names;
//! - [`input`]: opening any flow log file (`.log.gz`, `.log.parquet`, plain text).
//!
//! Everything here is pure: no clocks, no network; I/O only through the readers and
//! writers callers hand in.

pub mod field;
pub mod format;
pub mod input;
pub mod key;
#[cfg(feature = "parquet")]
pub mod parquet;
pub mod record;
pub mod text;

pub use field::{FieldId, ParquetType};
pub use format::{DEFAULT_FORMAT, FormatError, LogFormat};
pub use record::{
    Action, FlowDirection, FlowRecord, LogStatus, Text, TrafficType, Value, ValueError,
};
