//! What one WAL entry holds: a batch of records with the identity they are published under.
//!
//! An entry has one of two forms:
//!
//! - `postcard(WalBatch)`, optionally followed by extensions such as a [`DeliveryMark`]
//!   (imports, the agent's standalone mode);
//! - a batch pushed by an agent: [`PUSHED_MARKER`], `postcard` of its identity and
//!   delivery mark, then the `PushRequest` message exactly as it was received (protobuf,
//!   text values once per batch). Keeping the received bytes spares the ingest path a
//!   second encoding; replay decodes them like the server did.

use flowlog_formats::FlowRecord;
use flowlog_transport::pb::PushRequest;
use flowlog_transport::{BatchError, decode_batch};
use prost::Message;
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

/// Where a batch pushed by an agent comes from: `(agent_id, spool_id, seq)` names it, so a
/// copy delivered again is recognised (see `docs/delivery.md`). Carried in the WAL entry
/// with the records, so "already have it?" and the write are one atomic step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryMark {
    /// The agent (its token's agent id).
    pub agent_id: String,
    /// Random id of the agent's spool.
    pub spool_id: u64,
    /// Number of the batch within the spool.
    pub seq: u64,
    /// Every batch of the spool below this number is acknowledged and never sent again.
    pub acked_below: u64,
}

/// Optional parts of a WAL entry that follow the [`WalBatch`]. Entries written before a
/// kind existed simply end after the batch; new kinds are only ever added at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Extension {
    Delivery(DeliveryMark),
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

/// First bytes of a pushed entry. An entry of the other form starts with the length of
/// the flow log id (never 0: ids are `fl-…`), and even an empty id would be followed by the
/// length of a 12-digit account, never 0xFF.
pub const PUSHED_MARKER: [u8; 2] = [0x00, 0xFF];

/// Identity of a pushed entry (what the server adds to the message).
#[derive(Debug, Serialize, Deserialize)]
struct PushedHeader {
    flow_log_id: String,
    account_id: String,
    region: String,
    mark: DeliveryMark,
}

/// A WAL entry that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("WAL entry {lsn} cannot be decoded")]
pub struct BatchDecodeError {
    /// The entry.
    pub lsn: u64,
    /// Why.
    #[source]
    pub source: EntryError,
}

/// Why a WAL entry cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The serialized batch or header is damaged.
    #[error(transparent)]
    Postcard(#[from] postcard::Error),
    /// The pushed message is not a valid `PushRequest`.
    #[error("the pushed message is not a valid PushRequest")]
    Message(#[from] prost::DecodeError),
    /// The pushed records are invalid.
    #[error(transparent)]
    Records(#[from] BatchError),
}

impl WalBatch {
    /// Serializes the batch for the WAL.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// Decodes a WAL entry (ignoring a delivery mark; see [`decode_entry`]).
    pub fn decode(lsn: u64, bytes: &[u8]) -> Result<WalBatch, BatchDecodeError> {
        decode_entry(lsn, bytes).map(|(batch, _)| batch)
    }
}

/// Serializes a WAL entry, the batch and its delivery mark, appending to `buf`.
pub fn encode_entry(
    batch: &WalBatch,
    delivery: Option<&DeliveryMark>,
    buf: Vec<u8>,
) -> Result<Vec<u8>, postcard::Error> {
    let buf = postcard::to_extend(batch, buf)?;
    match delivery {
        None => Ok(buf),
        Some(mark) => postcard::to_extend(&Extension::Delivery(mark.clone()), buf),
    }
}

/// Serializes the head of a pushed entry; the entry is this head followed by the
/// `PushRequest` message as received.
pub fn pushed_entry_head(
    flow_log_id: &str,
    account_id: &str,
    region: &str,
    mark: &DeliveryMark,
) -> Result<Vec<u8>, postcard::Error> {
    let header = PushedHeader {
        flow_log_id: flow_log_id.to_owned(),
        account_id: account_id.to_owned(),
        region: region.to_owned(),
        mark: mark.clone(),
    };
    postcard::to_extend(&header, PUSHED_MARKER.to_vec())
}

/// Decodes a WAL entry: the batch and, for a batch pushed by an agent, its delivery mark.
pub fn decode_entry(
    lsn: u64,
    bytes: &[u8],
) -> Result<(WalBatch, Option<DeliveryMark>), BatchDecodeError> {
    decode_any(bytes).map_err(|source| BatchDecodeError { lsn, source })
}

fn decode_any(bytes: &[u8]) -> Result<(WalBatch, Option<DeliveryMark>), EntryError> {
    if let Some(rest) = bytes.strip_prefix(&PUSHED_MARKER) {
        let (header, message) = postcard::take_from_bytes::<PushedHeader>(rest)?;
        let push = PushRequest::decode(message)?;
        let records = decode_batch(&push.batch.unwrap_or_default())?;
        let batch = WalBatch {
            flow_log_id: header.flow_log_id,
            account_id: header.account_id,
            region: header.region,
            import: None,
            records,
        };
        return Ok((batch, Some(header.mark)));
    }
    let (batch, mut rest) = postcard::take_from_bytes::<WalBatch>(bytes)?;
    let mut delivery = None;
    while !rest.is_empty() {
        let (ext, tail) = postcard::take_from_bytes::<Extension>(rest)?;
        match ext {
            Extension::Delivery(mark) => delivery = Some(mark),
        }
        rest = tail;
    }
    Ok((batch, delivery))
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

    #[test]
    fn delivery_marks_follow_the_batch_and_old_entries_still_decode() {
        let b = WalBatch {
            flow_log_id: "fl-1".into(),
            account_id: "123456789012".into(),
            region: "us-east-1".into(),
            import: None,
            records: vec![FlowRecord::default()],
        };
        let mark = DeliveryMark {
            agent_id: "web-1".into(),
            spool_id: u64::MAX,
            seq: 7,
            acked_below: 5,
        };
        let with = encode_entry(&b, Some(&mark), Vec::new()).unwrap();
        assert_eq!(
            decode_entry(4, &with).unwrap(),
            (b.clone(), Some(mark.clone()))
        );
        assert_eq!(WalBatch::decode(4, &with).unwrap(), b);
        // An entry written without a mark (or before marks existed) is the bare batch.
        let without = encode_entry(&b, None, Vec::new()).unwrap();
        assert_eq!(without, b.encode().unwrap());
        assert_eq!(decode_entry(5, &without).unwrap(), (b.clone(), None));
        // A pushed entry: the message as received after the head.
        let push = PushRequest {
            agent_id: "web-1".into(),
            spool_id: u64::MAX,
            seq: 7,
            acked_below: 5,
            batch: Some(flowlog_transport::encode_batch(&b.records)),
        };
        let mut entry = pushed_entry_head("fl-1", "123456789012", "us-east-1", &mark).unwrap();
        assert!(entry.starts_with(&PUSHED_MARKER));
        entry.extend_from_slice(&push.encode_to_vec());
        assert_eq!(decode_entry(7, &entry).unwrap(), (b.clone(), Some(mark)));
        entry.truncate(entry.len() - 1);
        assert!(decode_entry(7, &entry).is_err());
        // Trailing garbage is an error naming the entry.
        let mut bad = without.clone();
        bad.push(9);
        assert!(
            decode_entry(6, &bad)
                .unwrap_err()
                .to_string()
                .contains("WAL entry 6")
        );
    }
}
