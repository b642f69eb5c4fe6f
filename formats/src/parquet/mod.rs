//! Parquet objects (`.log.parquet`) as AWS writes them for VPC flow logs, readable by
//! Athena, pyarrow and the pure-Python `parquet` 1.3.1 package that flowlogs-reader uses.
//!
//! One column per format field, in format order, named [`FieldId::column_name`]
//! (`log_status`); INT32, INT64 or UTF8-annotated BYTE_ARRAY as [`FieldId::parquet_type`]
//! says; every column optional, absent values null. Pages are GZIP'd data pages v1
//! (`PARQUET_1_0`), PLAIN-encoded unless [`ParquetOptions::dictionary`] is set.
//!
//! Reading is lenient about physical types: integer fields may come as INT32, INT64 or
//! string columns (older files hold ports as strings), text fields as string columns.
//! Empty and `-` strings read as absent values, as in text files.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, Int64Builder, StringBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, Int32Array, Int64Array, LargeStringArray, RecordBatch, StringArray,
    StringViewArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader,
    ParquetRecordBatchReaderBuilder,
};
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::basic::{Compression, GzipLevel};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::reader::ChunkReader;

use crate::field::{FieldId, ParquetType};
use crate::format::{FormatError, LogFormat};
use crate::record::{FlowRecord, Text, Value, ValueError};
use crate::text::CountingWriter;

mod prescan;

pub use prescan::ThriftProblem;

/// Default gzip level of Parquet pages.
pub const DEFAULT_GZIP_LEVEL: u32 = 6;

/// Default bound on the rows of one row group.
pub const DEFAULT_MAX_ROW_GROUP_ROWS: usize = 131_072;

/// Rows collected in Arrow builders before they go to the Parquet encoder as one batch.
const BATCH_ROWS: usize = 8192;

/// A data page is closed once it holds this many rows (checked between writes of at most
/// [`BATCH_ROWS`] rows).
const PAGE_ROW_LIMIT: usize = 20_000;

/// Most rows an open data page can hold.
const PAGE_ROWS_MAX: u64 = (PAGE_ROW_LIMIT + BATCH_ROWS) as u64;

/// Footer allowances for [`ParquetWriter::buffered_bytes_estimate`], in bytes: fixed file
/// metadata and tail, per column (schema element, column order), per row group, per column
/// chunk (chunk metadata with statistics truncated to 64 bytes) and per page (page header,
/// gzip wrapper, column and offset index entries).
const FOOTER_FIXED: u64 = 1024;
const PER_COLUMN: u64 = 96;
const PER_ROW_GROUP: u64 = 64;
const PER_CHUNK: u64 = 640;
const PER_PAGE: u64 = 256;

/// Options of [`ParquetWriter`].
#[derive(Debug, Clone)]
pub struct ParquetOptions {
    /// Dictionary-encode columns (smaller files for repetitive columns). parquet-rs then
    /// writes RLE_DICTIONARY pages, which only newer readers accept (Athena, pyarrow, Spark),
    /// not the `parquet` Python package flowlogs-reader uses. Off by default.
    pub dictionary: bool,
    /// Gzip level of pages, 0–9 (default 6).
    pub gzip_level: u32,
    /// Most rows in one row group (default 131 072).
    pub max_row_group_rows: usize,
}

impl Default for ParquetOptions {
    fn default() -> Self {
        ParquetOptions {
            dictionary: false,
            gzip_level: DEFAULT_GZIP_LEVEL,
            max_row_group_rows: DEFAULT_MAX_ROW_GROUP_ROWS,
        }
    }
}

/// Failure while writing or reading a Parquet object.
#[derive(Debug, thiserror::Error)]
pub enum ParquetError {
    /// The Parquet encoder or decoder failed (corrupt or unsupported file, bad option).
    #[error("parquet encoding or decoding failed")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Converting between records and Arrow arrays failed.
    #[error("arrow conversion failed")]
    Arrow(#[from] ArrowError),
    /// Writing the object failed.
    #[error("i/o failed")]
    Io(#[from] io::Error),
    /// A column is not named after a catalog field.
    #[error("unknown column '{name}'{}", hint(.suggestion))]
    UnknownColumn {
        /// The column name as found.
        name: String,
        /// The closest known field, if any is close.
        suggestion: Option<FieldId>,
    },
    /// A column's type cannot hold its field.
    #[error(
        "column '{column}' has unsupported type {data_type}; integer fields need int32, int64 or string columns, text fields string columns"
    )]
    UnsupportedColumnType {
        /// The column name.
        column: String,
        /// Its Arrow type.
        data_type: String,
    },
    /// The columns do not form a valid format (none, or a field twice).
    #[error("the columns do not form a valid log format")]
    Format(#[from] FormatError),
    /// The footer describes a column chunk that cannot exist (a negative offset or size),
    /// which the Parquet decoder would not survive.
    #[error("row group {row_group}, column {column}: {problem}")]
    ColumnChunk {
        /// 0-based row group index.
        row_group: usize,
        /// 0-based column index.
        column: usize,
        /// What is wrong.
        problem: String,
    },
    /// The footer's Thrift structure is malformed or declares more than its bytes hold.
    #[error("footer: {problem}")]
    Footer {
        /// What is wrong, with the byte offset inside the footer.
        problem: ThriftProblem,
    },
    /// One row holds a value that does not fit its field; reading goes on with the next row.
    #[error("row {row}: {problem}")]
    Row {
        /// 1-based row number in the file.
        row: u64,
        /// The offending value (part of the message, so not repeated as a source).
        problem: ValueError,
    },
}

impl ParquetError {
    /// Returns true if reading can go on after this error (a single bad row).
    pub fn is_row_error(&self) -> bool {
        matches!(self, ParquetError::Row { .. })
    }
}

fn hint(suggestion: &Option<FieldId>) -> String {
    suggestion.map_or_else(String::new, |f| {
        format!("; did you mean '{}'?", f.column_name())
    })
}

/// Returns the Arrow schema of Parquet objects in `format`: one nullable column per field,
/// named [`FieldId::column_name`], typed Int32, Int64 or Utf8.
pub fn arrow_schema(format: &LogFormat) -> Schema {
    Schema::new(
        format
            .fields()
            .iter()
            .map(|f| {
                let data_type = match f.parquet_type() {
                    ParquetType::Int32 => DataType::Int32,
                    ParquetType::Int64 => DataType::Int64,
                    ParquetType::Utf8 => DataType::Utf8,
                };
                Field::new(f.column_name(), data_type, true)
            })
            .collect::<Vec<_>>(),
    )
}

/// Appends `value` formatted as a string and returns its PLAIN-encoded size.
fn append_display(builder: &mut StringBuilder, value: impl std::fmt::Display) -> usize {
    let before = builder.values_slice().len();
    // Formatting into an Arrow builder cannot fail.
    let _ = write!(builder, "{value}");
    builder.append_value("");
    4 + builder.values_slice().len() - before
}

/// One column being filled for the next record batch.
#[derive(Debug)]
enum ColumnBuilder {
    Int32(Int32Builder),
    Int64(Int64Builder),
    Utf8(StringBuilder),
}

impl ColumnBuilder {
    fn new(field: FieldId, rows: usize) -> Self {
        match field.parquet_type() {
            ParquetType::Int32 => Self::Int32(Int32Builder::with_capacity(rows)),
            ParquetType::Int64 => Self::Int64(Int64Builder::with_capacity(rows)),
            ParquetType::Utf8 => Self::Utf8(StringBuilder::with_capacity(rows, 16 * rows)),
        }
    }

    /// Appends `value` and returns its PLAIN-encoded size. The catalog guarantees that
    /// integer fields hold [`Value::Int`] (u8/u16 for INT32 columns) and text and address
    /// fields [`Value::Str`] / [`Value::Ip`]; the fallbacks only keep this total.
    fn append(&mut self, value: Value<'_>) -> usize {
        match (self, value) {
            (Self::Int32(b), Value::Int(v)) => {
                b.append_value(i32::try_from(v).unwrap_or(i32::MAX));
                4
            }
            (Self::Int64(b), Value::Int(v)) => {
                b.append_value(v);
                8
            }
            (Self::Utf8(b), Value::Str(s)) => {
                b.append_value(s);
                4 + s.len()
            }
            (Self::Utf8(b), Value::Ip(ip)) => {
                let mut buf = Vec::with_capacity(48);
                crate::text::push_ip(&mut buf, ip);
                // An address in text form is ASCII.
                let text = std::str::from_utf8(&buf).unwrap_or_default();
                b.append_value(text);
                4 + text.len()
            }
            (Self::Utf8(b), Value::Int(v)) => append_display(b, v),
            (Self::Utf8(b), _) => {
                b.append_null();
                0
            }
            (Self::Int32(b), _) => {
                b.append_null();
                0
            }
            (Self::Int64(b), _) => {
                b.append_null();
                0
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
        }
    }
}

/// Streams records into a Parquet object. Records are collected in Arrow builders and
/// handed to the Parquet encoder every 8192 rows; row groups are written out as they fill.
///
/// ```
/// use flowlog_formats::parquet::{ParquetOptions, ParquetReader, ParquetWriter};
/// use flowlog_formats::{FieldId, FlowRecord, LogFormat};
///
/// let mut accepted = FlowRecord::default();
/// accepted.set_str(FieldId::SrcAddr, "10.0.0.1")?;
/// accepted.set_str(FieldId::DstAddr, "2001:db8::1")?;
/// accepted.set_int(FieldId::DstPort, 443)?;
/// accepted.set_str(FieldId::Action, "ACCEPT")?;
/// let idle = FlowRecord::no_data(Some("123456789010".into()), Some("eni-1".into()), 10, 70);
///
/// let mut writer = ParquetWriter::new(Vec::new(), LogFormat::aws_default(), &ParquetOptions::default())?;
/// writer.write_record(&accepted)?;
/// writer.write_record(&idle)?;
/// let bytes = writer.finish()?;
///
/// let reader = ParquetReader::new(bytes.into())?;
/// assert_eq!(reader.format(), &LogFormat::aws_default());
/// assert_eq!(reader.rows(), 2);
/// let back = reader.collect::<Result<Vec<_>, _>>()?;
/// assert_eq!(back, [accepted, idle]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ParquetWriter<W: Write + Send> {
    writer: ArrowWriter<CountingWriter<W>>,
    schema: SchemaRef,
    format: LogFormat,
    version: i64,
    columns: Vec<ColumnBuilder>,
    max_row_group_rows: u64,
    /// Rows in the builders, and their PLAIN-encoded size.
    pending_rows: usize,
    pending_bytes: u64,
    /// PLAIN-encoded size of the rows already handed to the encoder.
    encoded_bytes: u64,
    records: u64,
}

impl<W: Write + Send> ParquetWriter<W> {
    /// Starts a Parquet object in `format`. Fails on an invalid option (gzip level above 9).
    pub fn new(
        inner: W,
        format: LogFormat,
        options: &ParquetOptions,
    ) -> Result<Self, ParquetError> {
        Self::with_rows_hint(inner, format, options, BATCH_ROWS)
    }

    /// Like [`ParquetWriter::new`] for an object expected to hold about `rows` rows: the
    /// column buffers start that small (they grow as needed), which saves allocating and
    /// faulting in megabytes for each of many small objects.
    pub fn with_rows_hint(
        inner: W,
        format: LogFormat,
        options: &ParquetOptions,
        rows: usize,
    ) -> Result<Self, ParquetError> {
        let rows = rows.clamp(1, BATCH_ROWS);
        let max_row_group_rows = options.max_row_group_rows.max(1);
        let properties = WriterProperties::builder()
            .set_writer_version(WriterVersion::PARQUET_1_0)
            .set_compression(Compression::GZIP(GzipLevel::try_new(options.gzip_level)?))
            .set_dictionary_enabled(options.dictionary)
            .set_max_row_group_row_count(Some(max_row_group_rows))
            .set_data_page_row_count_limit(PAGE_ROW_LIMIT)
            .build();
        let schema = Arc::new(arrow_schema(&format));
        // No embedded Arrow schema: the Parquet types say everything, as in AWS's objects.
        let writer_options = ArrowWriterOptions::new()
            .with_properties(properties)
            .with_skip_arrow_metadata(true);
        let writer = ArrowWriter::try_new_with_options(
            CountingWriter::new(inner),
            Arc::clone(&schema),
            writer_options,
        )?;
        Ok(ParquetWriter {
            writer,
            schema,
            version: i64::from(format.version()),
            columns: format
                .fields()
                .iter()
                .map(|f| ColumnBuilder::new(*f, rows))
                .collect(),
            format,
            max_row_group_rows: max_row_group_rows as u64,
            pending_rows: 0,
            pending_bytes: 0,
            encoded_bytes: 0,
            records: 0,
        })
    }

    /// Returns the format records are written in.
    pub fn format(&self) -> &LogFormat {
        &self.format
    }

    /// Appends one record; the `version` column gets the format's version.
    pub fn write_record(&mut self, record: &FlowRecord) -> Result<(), ParquetError> {
        for (field, column) in self.format.fields().iter().zip(&mut self.columns) {
            let value = match field {
                FieldId::Version => Value::Int(self.version),
                _ => record.get(*field),
            };
            self.pending_bytes += column.append(value) as u64;
        }
        self.pending_rows += 1;
        self.records += 1;
        if self.pending_rows >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), ParquetError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let columns = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        self.writer.write(&batch)?;
        self.encoded_bytes += self.pending_bytes;
        self.pending_rows = 0;
        self.pending_bytes = 0;
        Ok(())
    }

    /// Returns the number of records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Returns the bytes already handed to the underlying writer.
    pub fn bytes_written(&self) -> u64 {
        self.writer.inner().count()
    }

    /// Returns a conservative upper bound of the bytes [`ParquetWriter::finish`] would still
    /// write: `bytes_written() + buffered_bytes_estimate()` is never below the size of the
    /// finished object. Covers rows in the builders (PLAIN-encoded size), the open row group
    /// (its encoder's estimate), definition levels, gzip overhead, page headers and the
    /// footer (metadata, column and offset indexes).
    pub fn buffered_bytes_estimate(&self) -> u64 {
        let columns = self.columns.len() as u64;
        let open_rows = self.writer.in_progress_rows() as u64;
        let pending_rows = self.pending_rows as u64;
        // Bytes the encoder counted as written that still sit in its internal buffer.
        let unflushed = (self.writer.bytes_written() as u64).saturating_sub(self.bytes_written());
        let data = self.writer.in_progress_size() as u64 + self.pending_bytes;
        // Gzip can expand incompressible pages slightly; definition levels of the open page
        // and of the builder rows are not in the encoder's estimate (≤ 1 bit a row + RLE).
        let overhead =
            data / 256 + columns * ((open_rows.min(PAGE_ROWS_MAX) + pending_rows) / 7 + 64);
        let row_groups = self.writer.flushed_row_groups().len() as u64
            + 1
            + (open_rows + pending_rows) / self.max_row_group_rows;
        // Pages close at PAGE_ROW_LIMIT rows or at 1 MiB of encoded data; one more per chunk.
        let pages = columns * (self.records / PAGE_ROW_LIMIT as u64 + row_groups)
            + (self.encoded_bytes + self.pending_bytes) / (512 * 1024);
        let footer = FOOTER_FIXED
            + columns * PER_COLUMN
            + row_groups * (PER_ROW_GROUP + columns * PER_CHUNK)
            + pages * PER_PAGE;
        unflushed + data + overhead + footer
    }

    /// Writes the buffered rows out as a complete row group, so that
    /// [`ParquetWriter::buffered_bytes_estimate`] shrinks to the footer allowance. Used near a
    /// size cap to decide precisely whether one more row still fits.
    pub fn flush_row_group(&mut self) -> Result<(), ParquetError> {
        self.flush_batch()?;
        self.writer.flush()?;
        Ok(())
    }

    /// Writes the buffered rows and the footer, and returns the underlying writer.
    pub fn finish(mut self) -> Result<W, ParquetError> {
        self.flush_batch()?;
        let mut inner = self.writer.into_inner()?;
        inner.flush()?;
        Ok(inner.into_inner())
    }
}

/// One decoded column of the current record batch.
#[derive(Debug)]
enum Column {
    Int32(Int32Array),
    Int64(Int64Array),
    Utf8(StringArray),
    LargeUtf8(LargeStringArray),
    Utf8View(StringViewArray),
}

/// A non-null cell of a [`Column`].
#[derive(Debug, Clone, Copy)]
enum Cell<'a> {
    Int(i64),
    Str(&'a str),
}

impl Column {
    /// Wraps an array of an accepted type (see [`accepts`]).
    fn new(array: &ArrayRef) -> Option<Self> {
        Some(match array.data_type() {
            DataType::Int32 => Column::Int32(array.as_primitive_opt::<Int32Type>()?.clone()),
            DataType::Int64 => Column::Int64(array.as_primitive_opt::<Int64Type>()?.clone()),
            DataType::Utf8 => Column::Utf8(array.as_string_opt::<i32>()?.clone()),
            DataType::LargeUtf8 => Column::LargeUtf8(array.as_string_opt::<i64>()?.clone()),
            DataType::Utf8View => Column::Utf8View(array.as_string_view_opt()?.clone()),
            _ => return None,
        })
    }

    fn get(&self, i: usize) -> Option<Cell<'_>> {
        match self {
            Column::Int32(a) => a.is_valid(i).then(|| Cell::Int(i64::from(a.value(i)))),
            Column::Int64(a) => a.is_valid(i).then(|| Cell::Int(a.value(i))),
            Column::Utf8(a) => a.is_valid(i).then(|| Cell::Str(a.value(i))),
            Column::LargeUtf8(a) => a.is_valid(i).then(|| Cell::Str(a.value(i))),
            Column::Utf8View(a) => a.is_valid(i).then(|| Cell::Str(a.value(i))),
        }
    }
}

/// Returns true if a column of `data_type` can hold `field`.
fn accepts(field: FieldId, data_type: &DataType) -> bool {
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Int32 | DataType::Int64 => field.is_integer(),
        _ => false,
    }
}

fn column_field(column: &Field) -> Result<FieldId, ParquetError> {
    let name = column.name();
    let field = FieldId::from_column_name(name).ok_or_else(|| ParquetError::UnknownColumn {
        name: name.clone(),
        suggestion: FieldId::closest(name),
    })?;
    if !accepts(field, column.data_type()) {
        return Err(ParquetError::UnsupportedColumnType {
            column: name.clone(),
            data_type: column.data_type().to_string(),
        });
    }
    Ok(field)
}

/// Reads the records of a whole Parquet object. Iteration yields one item per row; a row
/// with a value that does not fit its field yields [`ParquetError::Row`] and iteration goes
/// on with the next row. Any other error ends the iteration.
#[derive(Debug)]
pub struct ParquetReader {
    batches: ParquetRecordBatchReader,
    format: LogFormat,
    /// Per column: the field is free text (shared across rows via `shared`).
    text: Vec<bool>,
    shared: Vec<Option<Text>>,
    rows: u64,
    columns: Vec<Column>,
    batch_rows: usize,
    next_in_batch: usize,
    row: u64,
    failed: bool,
}

impl ParquetReader {
    /// Reads the metadata of the object in `data` and checks its columns.
    pub fn new(data: Bytes) -> Result<Self, ParquetError> {
        Self::build(data)
    }

    /// Reads the metadata of the object in `file` and checks its columns.
    pub fn open(file: File) -> Result<Self, ParquetError> {
        Self::build(file)
    }

    fn build<T: ChunkReader + 'static>(input: T) -> Result<Self, ParquetError> {
        // Ignore an embedded Arrow schema: types follow from the Parquet schema alone, so
        // dictionary or view types some writers record come back as plain columns.
        // Page headers are found by walking each column chunk (no page index), the walk
        // `prescan` checks before the decoder does it.
        let options = ArrowReaderOptions::new()
            .with_skip_arrow_metadata(true)
            .with_page_index_policy(PageIndexPolicy::Skip);
        prescan::check_file_footer(&input)?;
        let metadata = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ArrowReaderMetadata::load(&input, options)
        }))
        .map_err(|panic| ParquetError::Arrow(decoder_panic(&*panic)))??;
        check_column_chunks(metadata.metadata())?;
        prescan::check_pages(&input, metadata.metadata())?;
        let builder = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ParquetRecordBatchReaderBuilder::new_with_metadata(input, metadata)
        }))
        .map_err(|panic| ParquetError::Arrow(decoder_panic(&*panic)))?;
        let rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let fields = builder
            .schema()
            .fields()
            .iter()
            .map(|c| column_field(c))
            .collect::<Result<Vec<_>, _>>()?;
        let format = LogFormat::from_fields(fields)?;
        let text = format
            .fields()
            .iter()
            .map(|f| FlowRecord::is_text_field(*f))
            .collect();
        let batches = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            builder.with_batch_size(BATCH_ROWS).build()
        }))
        .map_err(|panic| ParquetError::Arrow(decoder_panic(&*panic)))??;
        Ok(ParquetReader {
            batches,
            shared: vec![None; format.len()],
            format,
            text,
            rows,
            columns: Vec::new(),
            batch_rows: 0,
            next_in_batch: 0,
            row: 0,
            failed: false,
        })
    }

    /// Returns the format of the records: the fields of the columns, in column order.
    pub fn format(&self) -> &LogFormat {
        &self.format
    }

    /// Returns the number of rows of the object, from its metadata.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn load(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        self.columns = batch
            .columns()
            .iter()
            .zip(batch.schema().fields())
            .map(|(array, column)| {
                Column::new(array).ok_or_else(|| ParquetError::UnsupportedColumnType {
                    column: column.name().clone(),
                    data_type: array.data_type().to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        self.batch_rows = batch.num_rows();
        self.next_in_batch = 0;
        Ok(())
    }

    fn decode_row(&mut self, i: usize) -> Result<FlowRecord, ValueError> {
        let mut record = FlowRecord::default();
        let cells = self
            .format
            .fields()
            .iter()
            .zip(&self.columns)
            .zip(&self.text);
        for (((field, column), text), shared) in cells.zip(&mut self.shared) {
            match column.get(i) {
                None | Some(Cell::Str("" | "-")) => {}
                Some(Cell::Int(v)) => record.set_int(*field, v)?,
                Some(Cell::Str(s)) if *text => {
                    if shared.as_deref() != Some(s) {
                        *shared = Some(Text::from(s));
                    }
                    if let Some(value) = shared {
                        record.set_text_shared(*field, value)?;
                    }
                }
                Some(Cell::Str(s)) => record.set_str(*field, s)?,
            }
        }
        Ok(record)
    }
}

/// Turns a panic of the parquet decoder into the error of the file being read.
fn decoder_panic(panic: &(dyn std::any::Any + Send)) -> ArrowError {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned());
    ArrowError::ParquetError(format!(
        "the parquet decoder failed on a corrupt page: {detail}"
    ))
}

/// Refuses a footer whose column chunks have a negative offset or size, or whose row
/// groups' row counts are negative or add up past what a file can hold: the decoder
/// asserts the former (`ColumnChunkMetaData::byte_range`) and adds up the latter unchecked.
fn check_column_chunks(metadata: &ParquetMetaData) -> Result<(), ParquetError> {
    let mut rows: i64 = 0;
    for (row_group, group) in metadata.row_groups().iter().enumerate() {
        let counted = rows
            .checked_add(group.num_rows())
            .filter(|_| group.num_rows() >= 0);
        let Some(counted) = counted else {
            return Err(ParquetError::ColumnChunk {
                row_group,
                column: 0,
                problem: format!(
                    "row count {} is negative or makes the file's rows overflow",
                    group.num_rows()
                ),
            });
        };
        rows = counted;
        for (column, chunk) in group.columns().iter().enumerate() {
            let bad = |problem: String| ParquetError::ColumnChunk {
                row_group,
                column,
                problem,
            };
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset());
            if start < 0 {
                return Err(bad(format!("negative start offset {start}")));
            }
            if chunk.data_page_offset() < 0 {
                let offset = chunk.data_page_offset();
                return Err(bad(format!("negative data page offset {offset}")));
            }
            if chunk.compressed_size() < 0 {
                let size = chunk.compressed_size();
                return Err(bad(format!("negative compressed size {size}")));
            }
        }
    }
    Ok(())
}

impl Iterator for ParquetReader {
    type Item = Result<FlowRecord, ParquetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        while self.next_in_batch >= self.batch_rows {
            // The parquet decoder asserts invariants of the pages it reads and panics when
            // a corrupt file breaks them (a dictionary-encoded page without a dictionary
            // page, for one); such a panic is this file's error, not the process's end.
            let batches = &mut self.batches;
            let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batches.next()))
                .unwrap_or_else(|panic| Some(Err(decoder_panic(&*panic))));
            let loaded = match next? {
                Ok(batch) => self.load(&batch),
                Err(e) => Err(e.into()),
            };
            if let Err(e) = loaded {
                self.failed = true;
                return Some(Err(e));
            }
        }
        let i = self.next_in_batch;
        self.next_in_batch += 1;
        self.row += 1;
        let row = self.row;
        Some(
            self.decode_row(i)
                .map_err(|problem| ParquetError::Row { row, problem }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::basic::{ConvertedType, Encoding, LogicalType, Repetition, Type as PhysicalType};
    use parquet::column::page::Page;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use proptest::prelude::*;

    fn write(format: &LogFormat, records: &[FlowRecord], options: &ParquetOptions) -> Vec<u8> {
        let mut w = ParquetWriter::new(Vec::new(), format.clone(), options).unwrap();
        for r in records {
            w.write_record(r).unwrap();
        }
        assert_eq!(w.records(), records.len() as u64);
        w.finish().unwrap()
    }

    fn read(bytes: Vec<u8>) -> (LogFormat, Vec<FlowRecord>) {
        let reader = ParquetReader::new(bytes.into()).unwrap();
        let format = reader.format().clone();
        let rows = reader.rows();
        let records: Vec<FlowRecord> = reader.map(Result::unwrap).collect();
        assert_eq!(records.len() as u64, rows);
        (format, records)
    }

    /// `record` with only the fields of `format`.
    fn project(record: &FlowRecord, format: &LogFormat) -> FlowRecord {
        let mut out = FlowRecord::default();
        for f in format.fields() {
            match record.get(*f) {
                Value::Absent => {}
                Value::Int(v) => out.set_int(*f, v).unwrap(),
                Value::Str(s) => out.set_str(*f, s).unwrap(),
                Value::Ip(ip) => out.set_str(*f, &ip.to_string()).unwrap(),
            }
        }
        out
    }

    fn record(values: &[(FieldId, &str)]) -> FlowRecord {
        let mut r = FlowRecord::default();
        for (f, v) in values {
            r.set_str(*f, v).unwrap();
        }
        r
    }

    /// A record with every field of the catalog set (`version` is not stored).
    fn full_record() -> FlowRecord {
        let mut r = FlowRecord::default();
        for (i, f) in FieldId::ALL.iter().enumerate().skip(1) {
            let value = match f {
                FieldId::SrcAddr | FieldId::PktSrcAddr => "10.0.0.1".to_owned(),
                FieldId::DstAddr | FieldId::PktDstAddr => "2001:db8::1".to_owned(),
                FieldId::Action => "REJECT".to_owned(),
                FieldId::LogStatus => "OK".to_owned(),
                FieldId::Type => "IPv6".to_owned(),
                FieldId::FlowDirection => "egress".to_owned(),
                FieldId::Bytes => i64::MAX.to_string(),
                f if f.is_integer() => i.to_string(),
                f => format!("{f}-{i}"),
            };
            r.set_str(*f, &value).unwrap();
        }
        assert!(FieldId::ALL[1..].iter().all(|f| r.get(*f) != Value::Absent));
        r
    }

    fn samples() -> Vec<FlowRecord> {
        use FieldId::*;
        vec![
            record(&[
                (AccountId, "123456789010"),
                (InterfaceId, "eni-1235b8ca123456789"),
                (SrcAddr, "172.31.16.139"),
                (DstAddr, "172.31.16.21"),
                (SrcPort, "20641"),
                (DstPort, "22"),
                (Protocol, "6"),
                (Packets, "20"),
                (Bytes, "4249"),
                (Start, "1418530010"),
                (End, "1418530070"),
                (Action, "ACCEPT"),
                (LogStatus, "OK"),
            ]),
            record(&[
                (AccountId, "123456789010"),
                (SrcAddr, "2001:db8:1234:a100:8d6e:3477:df66:f105"),
                (DstAddr, "2001:db8:1234:a102:3304:8879:34cf:4071"),
                (Protocol, "58"),
                (Packets, "1"),
                (Bytes, "0"),
                (Action, "REJECT"),
                (LogStatus, "OK"),
                (Type, "IPv6"),
            ]),
            FlowRecord::no_data(Some("123456789010".into()), Some("eni-1".into()), 10, 70),
            FlowRecord::skip_data(None, Some("eni-2".into()), 70, 130),
            full_record(),
            FlowRecord::default(),
        ]
    }

    fn full_catalog() -> LogFormat {
        LogFormat::from_fields(FieldId::ALL.to_vec()).unwrap()
    }

    fn shuffled_subset() -> LogFormat {
        use FieldId::*;
        LogFormat::from_fields(vec![
            LogStatus,
            Bytes,
            PktDstAddr,
            Version,
            TcpFlags,
            FlowDirection,
            AccountId,
            SrcPort,
            EcsTaskArn,
            TrafficPath,
            NextHopVpcId,
        ])
        .unwrap()
    }

    #[test]
    fn records_round_trip_in_every_format() {
        let dictionary = ParquetOptions {
            dictionary: true,
            ..ParquetOptions::default()
        };
        for format in [LogFormat::aws_default(), full_catalog(), shuffled_subset()] {
            for options in [ParquetOptions::default(), dictionary.clone()] {
                let (back_format, back) = read(write(&format, &samples(), &options));
                assert_eq!(back_format, format);
                let expected: Vec<_> = samples().iter().map(|r| project(r, &format)).collect();
                assert_eq!(back, expected, "{format}");
            }
        }
        let (_, back) = read(write(
            &full_catalog(),
            &[full_record()],
            &ParquetOptions::default(),
        ));
        assert_eq!(back, [full_record()]);
    }

    #[test]
    fn schema_follows_the_format() {
        let schema = arrow_schema(&shuffled_subset());
        let columns: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone(), f.is_nullable()))
            .collect();
        assert_eq!(columns[0], ("log_status", DataType::Utf8, true));
        assert_eq!(columns[1], ("bytes", DataType::Int64, true));
        assert_eq!(columns[3], ("version", DataType::Int32, true));
        assert_eq!(columns[9], ("traffic_path", DataType::Int32, true));
        assert_eq!(columns[10], ("next_hop_vpc_id", DataType::Utf8, true));
    }

    #[test]
    fn file_layout_is_readable_by_old_readers() {
        let bytes = write(&full_catalog(), &samples(), &ParquetOptions::default());
        let reader = SerializedFileReader::new(Bytes::from(bytes)).unwrap();
        let meta = reader.metadata();
        assert_eq!(meta.file_metadata().num_rows(), samples().len() as i64);
        let no_arrow_schema = meta
            .file_metadata()
            .key_value_metadata()
            .is_none_or(|kv| kv.iter().all(|kv| kv.key != "ARROW:schema"));
        assert!(no_arrow_schema);
        let schema = meta.file_metadata().schema_descr();
        assert_eq!(schema.num_columns(), FieldId::ALL.len());
        for (i, f) in FieldId::ALL.iter().enumerate() {
            let column = schema.column(i);
            assert_eq!(column.name(), f.column_name());
            assert_eq!(
                column.self_type().get_basic_info().repetition(),
                Repetition::OPTIONAL
            );
            let (physical, converted, logical) = match f.parquet_type() {
                ParquetType::Int32 => (PhysicalType::INT32, ConvertedType::NONE, None),
                ParquetType::Int64 => (PhysicalType::INT64, ConvertedType::NONE, None),
                ParquetType::Utf8 => (
                    PhysicalType::BYTE_ARRAY,
                    ConvertedType::UTF8,
                    Some(LogicalType::String),
                ),
            };
            assert_eq!(column.physical_type(), physical, "{f}");
            assert_eq!(column.converted_type(), converted, "{f}");
            assert_eq!(column.logical_type_ref(), logical.as_ref(), "{f}");
        }
        let row_group = meta.row_group(0);
        for (i, chunk) in row_group.columns().iter().enumerate() {
            assert!(matches!(chunk.compression(), Compression::GZIP(_)));
            assert!(chunk.dictionary_page_offset().is_none());
            let encodings: Vec<_> = chunk.encodings().collect();
            assert!(encodings.contains(&Encoding::PLAIN), "{encodings:?}");
            assert!(!encodings.contains(&Encoding::RLE_DICTIONARY));
            assert!(!encodings.contains(&Encoding::PLAIN_DICTIONARY));
            let pages = reader
                .get_row_group(0)
                .unwrap()
                .get_column_page_reader(i)
                .unwrap();
            for page in pages {
                match page.unwrap() {
                    Page::DataPage {
                        encoding,
                        def_level_encoding,
                        ..
                    } => {
                        assert_eq!(encoding, Encoding::PLAIN);
                        assert_eq!(def_level_encoding, Encoding::RLE);
                    }
                    other => panic!("unexpected page {:?}", other.page_type()),
                }
            }
        }

        let dictionary = ParquetOptions {
            dictionary: true,
            ..ParquetOptions::default()
        };
        let bytes = write(&full_catalog(), &samples(), &dictionary);
        let reader = SerializedFileReader::new(Bytes::from(bytes)).unwrap();
        let chunk = reader.metadata().row_group(0).column(1);
        assert!(chunk.encodings().any(|e| e == Encoding::RLE_DICTIONARY));
    }

    #[test]
    fn bad_options_are_refused() {
        let options = ParquetOptions {
            gzip_level: 10,
            ..ParquetOptions::default()
        };
        assert!(ParquetWriter::new(Vec::new(), LogFormat::aws_default(), &options).is_err());
    }

    #[test]
    fn row_groups_are_bounded() {
        let options = ParquetOptions {
            max_row_group_rows: 100_000,
            ..ParquetOptions::default()
        };
        let mut w = ParquetWriter::new(Vec::new(), LogFormat::aws_default(), &options).unwrap();
        for i in 0..300_000u64 {
            w.write_record(&FlowRecord::no_data(None, Some("eni-1".into()), i, i + 60))
                .unwrap();
        }
        let bytes = Bytes::from(w.finish().unwrap());
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let groups: Vec<_> = reader
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        assert_eq!(groups, [100_000; 3]);
        let reader = ParquetReader::new(bytes).unwrap();
        assert_eq!(reader.rows(), 300_000);
        let last = reader.last().unwrap().unwrap();
        assert_eq!(last.start, Some(299_999));
    }

    /// A deterministic stream of records with hard-to-compress values.
    fn noisy_records(n: usize) -> Vec<FlowRecord> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..n)
            .map(|_| {
                let mut r = FlowRecord::default();
                for f in &FieldId::ALL[1..] {
                    let x = next();
                    if x % 10 == 0 {
                        continue;
                    }
                    let value = match f {
                        FieldId::SrcAddr | FieldId::PktSrcAddr => {
                            std::net::Ipv4Addr::from((x >> 32) as u32).to_string()
                        }
                        FieldId::DstAddr | FieldId::PktDstAddr => {
                            std::net::Ipv6Addr::from(u128::from(x) << 64 | u128::from(next()))
                                .to_string()
                        }
                        FieldId::Action => "ACCEPT".to_owned(),
                        FieldId::LogStatus => "OK".to_owned(),
                        FieldId::Type => "IPv4".to_owned(),
                        FieldId::FlowDirection => "ingress".to_owned(),
                        FieldId::SrcPort | FieldId::DstPort | FieldId::TcpFlags => {
                            (x >> 48).to_string()
                        }
                        f if f.is_integer() && f.parquet_type() == ParquetType::Int32 => {
                            (x >> 56).to_string()
                        }
                        f if f.is_integer() => (x >> 1).to_string(),
                        _ => {
                            let len = (x % 90) as usize + 1;
                            (0..len)
                                .map(|i| char::from(b'!' + ((next() >> (i % 8)) % 94) as u8))
                                .collect()
                        }
                    };
                    r.set_str(*f, &value).unwrap();
                }
                r
            })
            .collect()
    }

    #[test]
    fn size_estimate_bounds_the_final_size() {
        let records = noisy_records(21_000);
        // Level 0 stores pages uncompressed (plus gzip framing): the largest files.
        let stored = ParquetOptions {
            gzip_level: 0,
            ..ParquetOptions::default()
        };
        let small_groups = ParquetOptions {
            max_row_group_rows: 2_500,
            ..stored.clone()
        };
        let dictionary = ParquetOptions {
            dictionary: true,
            ..stored.clone()
        };
        let cases: [(LogFormat, &ParquetOptions, &[usize]); 6] = [
            (full_catalog(), &stored, &[0, 1, 8_193, 21_000]),
            (full_catalog(), &ParquetOptions::default(), &[100]),
            (full_catalog(), &small_groups, &[6_000]),
            (full_catalog(), &dictionary, &[100, 8_193]),
            (LogFormat::aws_default(), &stored, &[1, 21_000]),
            (LogFormat::aws_default(), &small_groups, &[6_000]),
        ];
        for (format, options, counts) in &cases {
            for &n in *counts {
                let mut w = ParquetWriter::new(Vec::new(), format.clone(), options).unwrap();
                for r in &records[..n] {
                    w.write_record(r).unwrap();
                }
                let bound = w.bytes_written() + w.buffered_bytes_estimate();
                let size = w.finish().unwrap().len() as u64;
                assert!(
                    bound >= size,
                    "{n} rows, {options:?}, {} columns: bound {bound} < size {size}",
                    format.len()
                );
                // Conservative, but not absurdly so.
                assert!(
                    bound <= size + size / 2 + 64 * 1024,
                    "{n} rows, {options:?}: bound {bound} vs size {size}"
                );
            }
        }
    }

    /// A Parquet object with arbitrary columns, written by parquet-rs directly.
    fn arrow_file(columns: Vec<(&str, ArrayRef)>) -> Bytes {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut w = ArrowWriter::try_new(Vec::new(), batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        Bytes::from(w.into_inner().unwrap())
    }

    #[test]
    fn reading_is_lenient_about_types_and_skips_bad_rows() {
        let ports = [Some("80"), Some("x"), None, Some("-"), Some("443")];
        let data = arrow_file(vec![
            ("srcport", Arc::new(StringArray::from(ports.to_vec()))),
            (
                "dstport",
                Arc::new(Int64Array::from(vec![1, 2, 3, 70_000, 5])),
            ),
            (
                "srcaddr",
                Arc::new(LargeStringArray::from(vec![
                    "10.0.0.1", "10.0.0.2", "10.0.0", "::1", "-",
                ])),
            ),
            ("version", Arc::new(Int32Array::from(vec![5; 5]))),
            (
                "account_id",
                Arc::new(StringArray::from(vec!["1", "1", "2", "2", ""])),
            ),
        ]);
        let reader = ParquetReader::new(data).unwrap();
        assert_eq!(
            reader.format().header(),
            "srcport dstport srcaddr version account-id"
        );
        let results: Vec<_> = reader.collect();
        assert_eq!(results.len(), 5);
        let first = results[0].as_ref().unwrap();
        assert_eq!(first.srcport, Some(80));
        assert_eq!(first.dstport, Some(1));
        assert_eq!(first.account_id.as_deref(), Some("1"));
        let last = results[4].as_ref().unwrap();
        let expected = FlowRecord {
            srcport: Some(443),
            dstport: Some(5),
            ..FlowRecord::default()
        };
        assert_eq!(last, &expected, "'-' and '' are absent values");
        let errors: Vec<String> = results[1..4]
            .iter()
            .map(|r| {
                let e = r.as_ref().unwrap_err();
                assert!(e.is_row_error());
                e.to_string()
            })
            .collect();
        assert_eq!(
            errors,
            [
                "row 2: field 'srcport': 'x' is not an integer",
                "row 3: field 'srcaddr': '10.0.0' is not an IP address",
                "row 4: field 'dstport': '70000' is out of range 0..=65535",
            ]
        );
    }

    #[test]
    fn foreign_columns_are_refused_with_a_hint() {
        let data = arrow_file(vec![
            ("srcaddr", Arc::new(StringArray::from(vec!["10.0.0.1"]))),
            ("srcadr", Arc::new(StringArray::from(vec!["10.0.0.1"]))),
        ]);
        let e = ParquetReader::new(data).unwrap_err();
        assert!(!e.is_row_error());
        assert_eq!(
            e.to_string(),
            "unknown column 'srcadr'; did you mean 'srcaddr'?"
        );
        let e = ParquetReader::new(arrow_file(vec![(
            "account_id",
            Arc::new(Int64Array::from(vec![1])),
        )]))
        .unwrap_err();
        assert!(
            matches!(&e, ParquetError::UnsupportedColumnType { column, .. } if column == "account_id")
        );
        let e = ParquetReader::new(arrow_file(vec![(
            "srcport",
            Arc::new(arrow_array::Float64Array::from(vec![1.0])),
        )]))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("column 'srcport' has unsupported type Float64")
        );
        let e = ParquetReader::new(Bytes::from_static(b"PAR1 not really")).unwrap_err();
        assert!(matches!(e, ParquetError::Parquet(_)));
    }

    #[test]
    fn string_columns_of_every_arrow_kind_are_read() {
        let arrays: [ArrayRef; 3] = [
            Arc::new(StringArray::from(vec![Some("a"), None])),
            Arc::new(LargeStringArray::from(vec![Some("a"), None])),
            Arc::new(StringViewArray::from(vec![Some("a"), None])),
        ];
        for array in arrays {
            let column = Column::new(&array).unwrap();
            assert!(matches!(column.get(0), Some(Cell::Str("a"))));
            assert!(column.get(1).is_none());
            assert!(accepts(FieldId::SrcPort, array.data_type()));
            assert!(accepts(FieldId::VpcId, array.data_type()));
        }
        assert!(!accepts(FieldId::VpcId, &DataType::Int64));
    }

    fn value_strategy(field: FieldId) -> BoxedStrategy<String> {
        use FieldId::*;
        fn pick(values: &'static [&'static str]) -> BoxedStrategy<String> {
            proptest::sample::select(values)
                .prop_map(str::to_owned)
                .boxed()
        }
        match field {
            SrcAddr | DstAddr | PktSrcAddr | PktDstAddr => any::<std::net::IpAddr>()
                .prop_map(|ip| ip.to_string())
                .boxed(),
            SrcPort | DstPort | TcpFlags => any::<u16>().prop_map(|v| v.to_string()).boxed(),
            Protocol | TrafficPath | EncryptionStatus => {
                any::<u8>().prop_map(|v| v.to_string()).boxed()
            }
            Packets | Bytes | Start | End => (0..=i64::MAX).prop_map(|v| v.to_string()).boxed(),
            Action => pick(&["ACCEPT", "REJECT"]),
            LogStatus => pick(&["OK", "NODATA", "SKIPDATA"]),
            Type => pick(&["IPv4", "IPv6", "EFA"]),
            FlowDirection => pick(&["ingress", "egress"]),
            // A lone `-` is how flow logs write an absent value.
            _ => "[a-z0-9-]{1,12}"
                .prop_filter("absent marker", |s| s != "-")
                .boxed(),
        }
    }

    fn record_strategy() -> impl Strategy<Value = FlowRecord> {
        let fields: Vec<FieldId> = FieldId::ALL[1..].to_vec();
        let values: Vec<_> = fields
            .iter()
            .map(|f| proptest::option::of(value_strategy(*f)))
            .collect();
        values.prop_map(move |values| {
            let mut r = FlowRecord::default();
            for (f, v) in fields.iter().zip(values) {
                if let Some(v) = v {
                    r.set_str(*f, &v).unwrap();
                }
            }
            r
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn arbitrary_records_round_trip(
            records in proptest::collection::vec(record_strategy(), 0..20),
            dictionary in any::<bool>(),
        ) {
            let options = ParquetOptions { dictionary, ..ParquetOptions::default() };
            let (format, back) = read(write(&full_catalog(), &records, &options));
            prop_assert_eq!(format, full_catalog());
            prop_assert_eq!(back, records);
        }
    }

    /// Fuzzing regression (`fuzz/regressions/parquet/negative-column-chunk-offset`): a
    /// footer whose column chunk starts at a negative offset made the Parquet decoder panic
    /// on the first read; it is refused when the file is opened, naming the chunk.
    #[test]
    fn negative_column_chunk_offset_is_refused_at_open() {
        let data = include_bytes!("../../../fuzz/regressions/parquet/negative-column-chunk-offset");
        match ParquetReader::new(Bytes::from_static(data)) {
            Err(e @ ParquetError::ColumnChunk { .. }) => {
                assert!(e.to_string().starts_with("row group "), "{e}");
            }
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => panic!("a column chunk with a negative offset was accepted"),
        }
    }

    /// Fuzzing regression (`fuzz/regressions/parquet/dictionary-page-missing`): a column
    /// chunk whose data page is dictionary-encoded but that has no dictionary page made the
    /// parquet decoder panic ("Decoder for dict should have been set"); the reader returns
    /// the panic as this file's error and stops. (The fuzzed input is now refused earlier,
    /// at open, for a malformed page header further on; the same panic is reached here
    /// through a file whose dictionary page is marked as an index page.)
    #[test]
    fn a_panic_of_the_parquet_decoder_is_an_error_of_the_file() {
        let data = include_bytes!("../../../fuzz/regressions/parquet/dictionary-page-missing");
        let error = ParquetReader::new(Bytes::from_static(data)).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("row group 0, column 4: page 2 at byte 488"),
            "{error}"
        );

        let format = LogFormat::aws_default();
        let options = ParquetOptions {
            dictionary: true,
            ..ParquetOptions::default()
        };
        let mut data = write(&format, &samples(), &options);
        let metadata = SerializedFileReader::new(Bytes::from(data.clone()))
            .unwrap()
            .metadata()
            .clone();
        let chunk = metadata.row_group(0).column(0);
        let at = chunk.dictionary_page_offset().unwrap() as usize;
        // Field 1 of the page header, `type`: DICTIONARY_PAGE (2) becomes INDEX_PAGE (1).
        assert_eq!(&data[at..at + 2], &[0x15, 0x04]);
        data[at + 1] = 0x02;
        let mut reader = ParquetReader::new(Bytes::from(data)).unwrap();
        let error = loop {
            match reader.next() {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the corrupt page was read without an error"),
            }
        };
        assert!(!error.is_row_error());
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(source.contains("corrupt page"), "{source}");
        assert!(reader.next().is_none());
    }

    /// Fuzzing regressions (`fuzz/regressions/parquet/timeout-*`): a few kilobytes whose
    /// Thrift structures declare collections the decoder skips element by element without
    /// consuming bytes (booleans; doubles past the end of a page header), which kept it busy
    /// for seconds to minutes. The pre-scan refuses them when the file is opened, naming
    /// where.
    #[test]
    fn structures_that_declare_more_than_their_bytes_are_refused_at_open() {
        let cases: [(&[u8], &str); 3] = [
            (
                include_bytes!("../../../fuzz/regressions/parquet/timeout-page-header-skip-a"),
                "row group 0, column 1: page 0 at byte 52: bad page header: a collection of 83192897 booleans at byte 3, which no Parquet structure has",
            ),
            (
                include_bytes!("../../../fuzz/regressions/parquet/timeout-page-header-skip-b"),
                "row group 0, column 0: page 0 at byte 4: bad page header: a map at byte 1 declares 91, more than the 45 bytes left",
            ),
            (
                include_bytes!("../../../fuzz/regressions/parquet/timeout-footer-skip"),
                "footer: a collection of 208080757 booleans at byte 359, which no Parquet structure has",
            ),
        ];
        for (data, want) in cases {
            let error = ParquetReader::new(Bytes::from_static(data)).unwrap_err();
            assert_eq!(error.to_string(), want);
        }
    }

    /// Fuzzing regression (`fuzz/regressions/parquet/row-count-overflow`): row groups whose
    /// row counts add up past `usize::MAX` made the decoder's unchecked sum overflow (a
    /// panic in builds with overflow checks); the file is refused when it is opened.
    #[test]
    fn row_counts_that_overflow_are_refused_at_open() {
        let data = include_bytes!("../../../fuzz/regressions/parquet/row-count-overflow");
        match ParquetReader::new(Bytes::from_static(data)) {
            Err(e) => assert!(e.to_string().contains("row group"), "{e}"),
            Ok(_) => panic!("row counts that overflow were accepted"),
        }
    }
}
