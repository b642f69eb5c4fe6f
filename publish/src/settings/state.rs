//! `[state]`: the local state directory (WAL, staged files, manifest, quarantine).

use std::path::PathBuf;

use serde::Deserialize;

use super::{ByteSize, Problems};
use crate::wal::FsyncPolicy;

/// `[state]`.
#[derive(Debug, Clone)]
pub struct StateSettings {
    /// Directory of the WAL, staged files and the manifest.
    pub dir: PathBuf,
    /// When WAL appends are made durable.
    pub fsync: FsyncPolicy,
    /// Size of WAL segment files.
    pub wal_segment_bytes: u64,
    /// Writer id in every file's hash; `None` = derived once and kept in the state dir.
    pub writer_id: Option<String>,
    /// Beyond this WAL size, the streams holding its oldest records are sealed.
    pub max_wal_bytes: u64,
    /// Most bytes of quarantined records kept under `quarantine/`; past it, records that
    /// cannot be published are counted and dropped.
    pub max_quarantine_bytes: u64,
}

/// `[service]`.

#[derive(Debug, Deserialize, Default)]
pub(crate) struct RawState {
    dir: Option<PathBuf>,
    fsync: Option<String>,
    wal_segment_bytes: Option<ByteSize>,
    writer_id: Option<String>,
    max_wal_bytes: Option<ByteSize>,
    max_quarantine_bytes: Option<ByteSize>,
}

pub(crate) fn validate_state(raw: RawState, p: &mut Problems) -> StateSettings {
    let fsync = match raw.fsync.as_deref() {
        None => FsyncPolicy::Always,
        Some(s) => p
            .check("state.fsync", s.parse::<FsyncPolicy>())
            .unwrap_or(FsyncPolicy::Always),
    };
    let writer_id = raw.writer_id.filter(|w| !w.is_empty());
    if let Some(w) = &writer_id
        && (!w
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || w.len() > 64)
    {
        p.add(
            "state.writer_id",
            format!("'{w}' must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        );
    }
    let wal_segment_bytes = raw.wal_segment_bytes.map_or(64 << 20, |b| b.0);
    if wal_segment_bytes < 1 << 20 {
        p.add("state.wal_segment_bytes", "must be at least 1 MiB");
    }
    let max_wal_bytes = raw.max_wal_bytes.map_or(DEFAULT_MAX_WAL_BYTES, |b| b.0);
    if max_wal_bytes < 2 * wal_segment_bytes {
        p.add(
            "state.max_wal_bytes",
            format!(
                "{max_wal_bytes} bytes is less than two WAL segments ({} bytes)",
                2 * wal_segment_bytes
            ),
        );
    }
    StateSettings {
        dir: raw.dir.unwrap_or_else(|| PathBuf::from("./flowlog-state")),
        fsync,
        wal_segment_bytes,
        writer_id,
        max_wal_bytes,
        max_quarantine_bytes: raw
            .max_quarantine_bytes
            .map_or(DEFAULT_MAX_QUARANTINE_BYTES, |b| b.0),
    }
}

/// Default of `[state] max_quarantine_bytes`.
pub const DEFAULT_MAX_QUARANTINE_BYTES: u64 = 1 << 30;

/// Default of `[state] max_wal_bytes`.
pub const DEFAULT_MAX_WAL_BYTES: u64 = 8 << 30;
