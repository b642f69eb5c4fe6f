//! `parquet`: reading a Parquet flow log, as `flowlog-aggregator import` does.

use flowlog_formats::FlowRecord;
use flowlog_formats::parquet::{ParquetOptions, ParquetReader, ParquetWriter};

/// Most records written back per input (writing is the slow part).
const MAX_ROUND_TRIP: usize = 256;

/// Reads `data` as a Parquet object. Errors carry a message; the reader ends after an
/// error that is not about one row; the records read are written to a new Parquet object
/// in the same format and read back to the same records.
pub fn parquet(data: &[u8]) {
    let mut reader = match ParquetReader::new(bytes::Bytes::copy_from_slice(data)) {
        Ok(reader) => reader,
        Err(e) => {
            crate::assert_has_message(&e);
            return;
        }
    };
    let format = reader.format().clone();
    assert!(!format.is_empty());
    let mut records: Vec<FlowRecord> = Vec::new();
    for _ in 0..crate::MAX_RECORDS {
        match reader.next() {
            None => break,
            Some(Ok(record)) => {
                if records.len() < MAX_ROUND_TRIP {
                    records.push(record);
                }
            }
            Some(Err(e)) => {
                crate::assert_has_message(&e);
                if !e.is_row_error() {
                    assert!(reader.next().is_none(), "a row after a file error");
                    break;
                }
            }
        }
    }

    let mut writer = match ParquetWriter::new(Vec::new(), format, &ParquetOptions::default()) {
        Ok(writer) => writer,
        Err(e) => panic!("cannot start a Parquet object: {e}"),
    };
    for record in &records {
        if let Err(e) = writer.write_record(record) {
            panic!("a record read from Parquet cannot be written back: {e}: {record:?}");
        }
    }
    let written = match writer.finish() {
        Ok(written) => written,
        Err(e) => panic!("cannot finish a Parquet object: {e}"),
    };
    let again = ParquetReader::new(bytes::Bytes::from(written))
        .map_err(|e| e.to_string())
        .and_then(|r| r.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string()));
    assert_eq!(again.as_ref(), Ok(&records), "records do not round-trip");
}
