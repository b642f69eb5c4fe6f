//! What the stage hands on: a sealed file (its key, path, records, positions), why it was
//! sealed, and the stage's errors. The stager and the encoders both use these; neither
//! owns them.

use std::path::{Path, PathBuf};

use flowlog_formats::parquet::ParquetError;

use super::window::StreamKey;

/// Why a file was sealed (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealReason {
    /// Its window closed (end + grace passed), or a late file's grace passed.
    WindowClosed,
    /// The next record would have exceeded the size cap.
    SizeCap,
    /// Memory for waiting records and open files ran over `memory_budget`.
    MemoryBudget,
    /// The WAL ran over `max_wal_bytes`.
    WalLimit,
    /// Shutdown or the end of an import.
    Flush,
}

impl SealReason {
    /// Returns the metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SealReason::WindowClosed => "window_closed",
            SealReason::SizeCap => "size_cap",
            SealReason::MemoryBudget => "memory_budget",
            SealReason::WalLimit => "wal_limit",
            SealReason::Flush => "shutdown",
        }
    }
}

/// A finished file ready for upload.
#[derive(Debug, Clone)]
pub struct SealedFile {
    /// Final object key.
    pub key: String,
    /// Where the file is staged.
    pub path: PathBuf,
    /// Size in bytes.
    pub bytes: u64,
    /// Records in it.
    pub records: u64,
    /// Its stream.
    pub stream: StreamKey,
    /// Position of its first record.
    pub first: u64,
    /// Position of its last record.
    pub last: u64,
    /// Why it was sealed.
    pub reason: SealReason,
}

/// Failure of the stage (local disk or encoder); the records stay in the WAL.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Local file I/O failed.
    #[error("staging file {path} failed")]
    Io {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Parquet encoding failed.
    #[error("encoding {path} as Parquet failed")]
    Parquet {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: ParquetError,
    },
    /// The key could not be built (invalid identity).
    #[error("cannot build the object key")]
    Key(#[from] flowlog_formats::key::KeyError),
}

/// Maps an I/O error on `path` to [`StageError::Io`].
pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.display().to_string(),
        source,
    }
}
