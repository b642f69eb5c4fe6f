//! Opening any flow log file: a gzip'd text object (`.log.gz`), a Parquet object
//! (`.log.parquet`) or plain text. The kind is detected from the content (gzip and
//! Parquet magic bytes), not from the name, so renamed or extension-less files work.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::read::MultiGzDecoder;

use crate::format::LogFormat;
#[cfg(feature = "parquet")]
use crate::parquet::{ParquetError, ParquetReader};
use crate::record::FlowRecord;
use crate::text::{TextError, TextReader};

/// What a file holds, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// gzip'd text (starts with `1f 8b`).
    GzipText,
    /// Parquet (starts with `PAR1`).
    Parquet,
    /// Anything else is read as plain text.
    Text,
}

impl InputKind {
    /// Classifies a file from its first bytes (at least 4 when the file has them).
    pub fn detect(prefix: &[u8]) -> Self {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            InputKind::GzipText
        } else if prefix.starts_with(b"PAR1") {
            InputKind::Parquet
        } else {
            InputKind::Text
        }
    }
}

/// Failure while reading an input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be opened or read.
    #[error("cannot read input")]
    Io(#[from] io::Error),
    /// A text input failed (bad header, bad line, read error).
    #[error(transparent)]
    Text(#[from] TextError),
    /// A Parquet input failed (bad schema, bad row, corrupt file).
    #[cfg(feature = "parquet")]
    #[error(transparent)]
    Parquet(#[from] ParquetError),
    /// The input is Parquet but this build has no Parquet support.
    #[cfg(not(feature = "parquet"))]
    #[error("the input is a Parquet file; this build reads text only")]
    ParquetUnsupported,
}

impl InputError {
    /// Returns true if only one record is affected and reading can go on.
    pub fn is_record_error(&self) -> bool {
        match self {
            InputError::Text(e) => e.is_line_error(),
            #[cfg(feature = "parquet")]
            InputError::Parquet(e) => e.is_row_error(),
            #[cfg(not(feature = "parquet"))]
            InputError::ParquetUnsupported => false,
            InputError::Io(_) => false,
        }
    }
}

type BoxedBufRead = Box<dyn BufRead + Send>;

/// Records from one input, whatever its kind.
#[derive(Debug)]
pub enum RecordSource {
    /// Text (gzip'd or plain).
    Text(TextReader<BufReaderDyn>),
    /// Parquet.
    #[cfg(feature = "parquet")]
    Parquet(ParquetReader),
}

/// A boxed buffered reader (named so that [`RecordSource`] can derive `Debug`).
pub struct BufReaderDyn(BoxedBufRead);

impl std::fmt::Debug for BufReaderDyn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BufReaderDyn")
    }
}

impl Read for BufReaderDyn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl BufRead for BufReaderDyn {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.0.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.0.consume(amt);
    }
}

const READ_BUFFER: usize = 256 * 1024;

impl RecordSource {
    /// Opens a file. `headerless` gives the format of text input that has no header line
    /// (CloudWatch Logs exports); `None` reads the format from line 1. Parquet files always
    /// carry their format in their schema.
    pub fn open_path(path: &Path, headerless: Option<LogFormat>) -> Result<Self, InputError> {
        let mut reader = BufReader::with_capacity(READ_BUFFER, File::open(path)?);
        match InputKind::detect(peek(&mut reader)?) {
            InputKind::Parquet => Self::parquet_file(path),
            kind => Self::text(kind, Box::new(reader), headerless),
        }
    }

    /// Reads from a stream such as stdin. A Parquet stream is read whole into memory, since
    /// Parquet needs random access.
    pub fn from_reader(
        reader: impl Read + Send + 'static,
        headerless: Option<LogFormat>,
    ) -> Result<Self, InputError> {
        let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
        match InputKind::detect(peek(&mut reader)?) {
            InputKind::Parquet => {
                let mut data = Vec::new();
                reader.read_to_end(&mut data)?;
                Self::parquet_bytes(data)
            }
            kind => Self::text(kind, Box::new(reader), headerless),
        }
    }

    #[cfg(feature = "parquet")]
    fn parquet_file(path: &Path) -> Result<Self, InputError> {
        Ok(RecordSource::Parquet(ParquetReader::open(File::open(
            path,
        )?)?))
    }

    #[cfg(feature = "parquet")]
    fn parquet_bytes(data: Vec<u8>) -> Result<Self, InputError> {
        Ok(RecordSource::Parquet(ParquetReader::new(
            bytes::Bytes::from(data),
        )?))
    }

    #[cfg(not(feature = "parquet"))]
    fn parquet_file(_path: &Path) -> Result<Self, InputError> {
        Err(InputError::ParquetUnsupported)
    }

    #[cfg(not(feature = "parquet"))]
    fn parquet_bytes(_data: Vec<u8>) -> Result<Self, InputError> {
        Err(InputError::ParquetUnsupported)
    }

    fn text(
        kind: InputKind,
        reader: BoxedBufRead,
        headerless: Option<LogFormat>,
    ) -> Result<Self, InputError> {
        let reader = match kind {
            InputKind::GzipText => BufReaderDyn(Box::new(BufReader::with_capacity(
                READ_BUFFER,
                MultiGzDecoder::new(reader),
            ))),
            _ => BufReaderDyn(reader),
        };
        Ok(RecordSource::Text(match headerless {
            Some(format) => TextReader::with_format(reader, format),
            None => TextReader::with_header(reader)?,
        }))
    }

    /// Returns the format of the records (from the header, the schema, or as given).
    pub fn format(&self) -> &LogFormat {
        match self {
            RecordSource::Text(r) => r.format(),
            #[cfg(feature = "parquet")]
            RecordSource::Parquet(r) => r.format(),
        }
    }

    /// Returns "line" for text inputs and "row" for Parquet, for messages.
    pub fn unit(&self) -> &'static str {
        match self {
            RecordSource::Text(_) => "line",
            #[cfg(feature = "parquet")]
            RecordSource::Parquet(_) => "row",
        }
    }
}

fn peek<R: Read>(reader: &mut BufReader<R>) -> io::Result<&[u8]> {
    // A single fill_buf may return fewer bytes than the magic numbers are long only at the
    // end of the input, in which case the short prefix is the whole file.
    reader.fill_buf()
}

impl Iterator for RecordSource {
    type Item = Result<FlowRecord, InputError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            RecordSource::Text(r) => r.next().map(|x| x.map_err(InputError::from)),
            #[cfg(feature = "parquet")]
            RecordSource::Parquet(r) => r.next().map(|x| x.map_err(InputError::from)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_kinds_by_magic() {
        assert_eq!(InputKind::detect(&[0x1f, 0x8b, 8, 0]), InputKind::GzipText);
        assert_eq!(InputKind::detect(b"PAR1\x15"), InputKind::Parquet);
        assert_eq!(InputKind::detect(b"version account-id"), InputKind::Text);
        assert_eq!(InputKind::detect(b""), InputKind::Text);
    }

    #[test]
    fn reads_gzip_and_plain_text_alike() {
        let text = "version srcport\n2 22\n2 -\n";
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        for data in [text.as_bytes().to_vec(), gz] {
            let source = RecordSource::from_reader(std::io::Cursor::new(data), None).unwrap();
            assert_eq!(source.format().header(), "version srcport");
            let ports: Vec<Option<u16>> = source.map(|r| r.unwrap().srcport).collect();
            assert_eq!(ports, vec![Some(22), None]);
        }
    }
}
