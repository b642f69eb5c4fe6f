//! What one WAL entry holds: a batch of records with the identity they are published under.

use flowlog_formats::FlowRecord;
use serde::{Deserialize, Serialize};

/// Records per WAL entry at most: a record's position is `lsn << POSITION_BITS | index`.
pub const POSITION_BITS: u32 = 24;

/// Most records one batch may hold.
pub const MAX_BATCH_RECORDS: usize = 1 << POSITION_BITS;

/// Returns the position of record `index` of the batch at `lsn`. Positions grow with every
/// record the writer ever accepts and are never reused.
pub fn position(lsn: u64, index: usize) -> u64 {
    (lsn << POSITION_BITS) | index as u64
}

/// Returns the LSN a position belongs to.
pub fn lsn_of(position: u64) -> u64 {
    position >> POSITION_BITS
}

/// Progress of an import, carried inside the WAL so that it is durable exactly when the
/// records it covers are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportMark {
    /// Identity of the input (see `import::input_id`).
    pub input: String,
    /// Input records (good and malformed) consumed up to and including this batch.
    pub consumed: u64,
    /// True when the input has been read to its end.
    pub done: bool,
}

/// A batch of records and the identity they are published under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WalBatch {
    /// Flow log id of every record of the batch.
    pub flow_log_id: String,
    /// Account used for records without a (valid) `account-id`.
    pub account_id: String,
    /// Region used for records without a (valid) `region`.
    pub region: String,
    /// Import progress, for batches that come from `import`.
    pub import: Option<ImportMark>,
    /// The records.
    pub records: Vec<FlowRecord>,
}

/// A WAL entry that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("WAL entry {lsn} cannot be decoded")]
pub struct BatchDecodeError {
    /// The entry.
    pub lsn: u64,
    /// Why.
    #[source]
    pub source: postcard::Error,
}

impl WalBatch {
    /// Serializes the batch for the WAL.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// Decodes a WAL entry.
    pub fn decode(lsn: u64, bytes: &[u8]) -> Result<WalBatch, BatchDecodeError> {
        postcard::from_bytes(bytes).map_err(|source| BatchDecodeError { lsn, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_and_positions_order_by_lsn_then_index() {
        let mut r = FlowRecord::no_data(Some("123456789012".into()), Some("eni-1".into()), 1, 2);
        r.srcaddr = Some("2001:db8::1".parse().unwrap());
        let b = WalBatch {
            flow_log_id: "fl-1".into(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            import: Some(ImportMark {
                input: "abc".into(),
                consumed: 7,
                done: false,
            }),
            records: vec![r.clone(), FlowRecord::default()],
        };
        assert_eq!(WalBatch::decode(1, &b.encode().unwrap()).unwrap(), b);
        assert!(position(1, MAX_BATCH_RECORDS - 1) < position(2, 0));
        assert_eq!(lsn_of(position(42, 17)), 42);
        assert!(WalBatch::decode(3, b"\xff\xff").is_err());
    }
}
