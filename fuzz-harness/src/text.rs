//! `text`: reading a text flow log (plain or gzip'd), as `flowlog-aggregator import` does.

use std::io::Cursor;

use flowlog_formats::input::RecordSource;
use flowlog_formats::text::{TextReader, encode_line};

/// Reads `data` as a flow log with a header line (gzip'd if it starts with the gzip magic).
/// Every record read is written back as a line of the same format and read again to the
/// same record; errors carry a message; after an error that is not about one line, nothing
/// more is read.
pub fn text(data: &[u8]) {
    if data.starts_with(b"PAR1") {
        // Parquet inputs are the parquet target's.
        return;
    }
    let mut source = match RecordSource::from_reader(Cursor::new(data.to_vec()), None) {
        Ok(source) => source,
        Err(e) => {
            crate::assert_has_message(&e);
            return;
        }
    };
    let format = source.format().clone();
    assert!(!format.is_empty());
    let mut line = Vec::new();
    for _ in 0..crate::MAX_RECORDS {
        match source.next() {
            None => break,
            Some(Ok(record)) => {
                line.clear();
                encode_line(&mut line, &format, format.version(), &record);
                let mut reader = TextReader::with_format(Cursor::new(&line), format.clone());
                match reader.read_record() {
                    Ok(Some(again)) => assert_eq!(again, record, "line {line:?}"),
                    other => panic!("line {line:?} written for {record:?} reads as {other:?}"),
                }
            }
            Some(Err(e)) => {
                crate::assert_has_message(&e);
                if !e.is_record_error() {
                    break;
                }
            }
        }
    }
}
