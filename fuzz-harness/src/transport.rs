//! `transport`: what the aggregator does with the bytes of one push: prost-decodes a
//! `PushRequest`, then turns its batch into records with `decode_batch`.

use flowlog_transport::{decode_batch, encode_batch, pb};
use prost::Message;

/// Decodes `data` as a `PushRequest` and its batch. A batch that decodes re-encodes (with
/// `encode_batch`, through prost bytes) and decodes again to the same records; a refused
/// batch's error carries a message.
pub fn transport(data: &[u8]) {
    let Ok(request) = pb::PushRequest::decode(data) else {
        return;
    };
    let Some(batch) = request.batch else {
        return;
    };
    match decode_batch(&batch) {
        Ok(records) => {
            assert_eq!(records.len(), batch.records.len());
            let bytes = encode_batch(&records).encode_to_vec();
            let again = pb::RecordBatch::decode(bytes.as_slice())
                .map_err(|e| e.to_string())
                .and_then(|b| decode_batch(&b).map_err(|e| e.to_string()));
            assert_eq!(again.as_ref(), Ok(&records), "batch does not round-trip");
        }
        Err(e) => crate::assert_has_message(&e),
    }
}
