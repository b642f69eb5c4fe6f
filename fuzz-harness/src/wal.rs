//! `wal`: the aggregator's WAL recovery scan, through its public API only.

use flowlog_publish::wal::{FsyncPolicy, Wal, WalSettings};

/// Name of the segment the input becomes: the first segment of a WAL (first LSN 1).
const SEGMENT: &str = "wal-00000000000000000001.seg";

/// Most entries replayed from one input.
const MAX_ENTRIES: usize = 100_000;

/// Writes `data` as the only segment of a WAL directory and opens the WAL (the recovery
/// scan). If it opens, its entries replay with consecutive LSNs from `first_lsn` up to
/// `next_lsn`; an append after them gets `next_lsn`, and reopening finds the same entries
/// plus the new one (recovery is idempotent and keeps what it accepted). Errors carry a
/// message.
pub fn wal(data: &[u8]) {
    let Ok(dir) = tempfile::tempdir() else {
        return;
    };
    if std::fs::write(dir.path().join(SEGMENT), data).is_err() {
        return;
    }
    let settings = WalSettings {
        fsync: FsyncPolicy::Never,
        ..WalSettings::new(dir.path())
    };
    let mut wal = match Wal::open(settings.clone()) {
        Ok(wal) => wal,
        Err(e) => {
            crate::assert_has_message(&e);
            return;
        }
    };
    let entries = replay_all(&wal);
    let next = wal.next_lsn();
    assert_eq!(
        entries.first().map(|(lsn, _)| *lsn).unwrap_or(next),
        wal.first_lsn().min(next),
        "replay does not start at the first lsn"
    );
    for (i, (lsn, _)) in entries.iter().enumerate() {
        assert_eq!(*lsn, wal.first_lsn() + i as u64, "lsns are not consecutive");
    }
    assert_eq!(
        entries.last().map_or(next, |(lsn, _)| lsn + 1),
        next,
        "replay does not end before next_lsn"
    );

    let appended = match wal.append(b"after recovery") {
        Ok(lsn) => lsn,
        Err(e) => panic!("append after a successful open failed: {e}"),
    };
    assert_eq!(appended, next);
    drop(wal);
    let reopened = match Wal::open(settings) {
        Ok(wal) => wal,
        Err(e) => panic!("reopening a recovered wal failed: {e}"),
    };
    let mut expected = entries;
    expected.push((appended, b"after recovery".to_vec()));
    assert_eq!(
        replay_all(&reopened),
        expected,
        "reopen changed the entries"
    );
}

fn replay_all(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    let reader = match wal.replay(0) {
        Ok(reader) => reader,
        Err(e) => panic!("replay of an opened wal failed: {e}"),
    };
    let mut entries = Vec::new();
    for entry in reader.take(MAX_ENTRIES) {
        match entry {
            Ok(entry) => entries.push(entry),
            Err(e) => panic!("replay of an opened wal failed: {e}"),
        }
    }
    entries
}
