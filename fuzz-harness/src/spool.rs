//! `spool`: the agent's spool recovery scan, through its public API only.

use flowlog_agent::ship::settings::{FsyncPolicy, SpoolSettings};
use flowlog_agent::ship::spool::Spool;
use flowlog_formats::FlowRecord;

/// Name of the segment the input becomes: the spool's first segment (seq 1).
const SEGMENT: &str = "00000000000000000001.seg";

/// Creates a spool (so that its meta file exists), closes it, writes `data` as its only
/// segment and opens the spool again (the recovery scan). If it opens, every batch it found reads back (or fails with a message),
/// and its records add up to what the spool reports; a batch appended after recovery reads
/// back, and reopening finds the same batches plus the new one. Errors carry a message.
pub fn spool(data: &[u8]) {
    let Ok(root) = tempfile::tempdir() else {
        return;
    };
    let settings = SpoolSettings {
        dir: root.path().join("spool"),
        max_bytes: 64 << 20,
        segment_bytes: 1 << 20,
        fsync: FsyncPolicy::Never,
    };
    // A fresh spool writes its meta file (spool id, next seq); segments without one are
    // refused before they are scanned.
    match Spool::open(&settings) {
        Ok(mut fresh) => {
            if let Err(e) = fresh.close() {
                panic!("closing a fresh spool failed: {e}");
            }
        }
        Err(e) => panic!("creating a spool failed: {e}"),
    }
    if std::fs::write(settings.dir.join(SEGMENT), data).is_err() {
        return;
    }
    let mut spool = match Spool::open(&settings) {
        Ok(spool) => spool,
        Err(e) => {
            crate::assert_has_message(&e);
            return;
        }
    };
    let seqs: Vec<u64> = spool.seqs().collect();
    assert_eq!(seqs.len(), spool.batches());
    let mut records = 0u64;
    for &seq in &seqs {
        assert!(seq < spool.next_seq(), "batch {seq} at or above next_seq");
        records += u64::from(spool.batch_records(seq).unwrap_or_default());
        if let Err(e) = spool.read_batch(seq) {
            crate::assert_has_message(&e);
        }
    }
    assert_eq!(records, spool.records(), "batch records do not add up");

    let record = FlowRecord {
        packets: Some(1),
        ..FlowRecord::default()
    };
    let seq = match spool.append_encoded(&Spool::encode(&[record]), 1, None) {
        Ok(seq) => seq,
        Err(e) => panic!("append after a successful open failed: {e}"),
    };
    if let Err(e) = spool.read(seq) {
        panic!("the batch appended after recovery does not read back: {e}");
    }
    if let Err(e) = spool.close() {
        panic!("closing a recovered spool failed: {e}");
    }
    drop(spool);
    let reopened = match Spool::open(&settings) {
        Ok(spool) => spool,
        Err(e) => panic!("reopening a recovered spool failed: {e}"),
    };
    let mut expected = seqs;
    expected.push(seq);
    assert_eq!(
        reopened.seqs().collect::<Vec<_>>(),
        expected,
        "reopen changed the batches"
    );
}
