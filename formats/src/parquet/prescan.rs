//! A bounded walk over the Thrift structures of a Parquet object (the footer and every page
//! header) before the parquet decoder reads them.
//!
//! The decoder skips Thrift fields it does not know in ways a few bytes can make
//! arbitrarily slow: a list of booleans is skipped element by element without consuming a
//! byte per element (up to 2^31 iterations per list header), and inside page headers a
//! skipped `double` or UUID past the end of the input succeeds without reading anything,
//! so a list of them loops for its declared length. A file of 3.6 KB kept the decoder busy
//! for minutes. This walk reads every structure once, with every declared length and
//! element count bounded by the bytes left, so its cost is linear in the bytes it walks; a
//! file it refuses is one no Parquet writer produces.
//!
//! Walked: the footer (`FileMetaData`), then for every column chunk of every row group,
//! each page header from the chunk's first byte to its last, stepping over each page body
//! by the header's `compressed_page_size` (field 3). Column chunks must lie inside the file
//! and must not overlap, so the pages walked add up to at most the file's size.

use bytes::Bytes;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::reader::ChunkReader;

use super::ParquetError;

/// Structures nested deeper than this are refused (Parquet's own nest fewer than 10 deep).
pub(super) const MAX_DEPTH: usize = 64;

/// First window read for a page header; doubled while the header does not fit in it.
const FIRST_WINDOW: usize = 16 * 1024;

/// Why a Thrift structure was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThriftProblem {
    /// The bytes end inside the structure.
    #[error("the bytes end inside a structure (byte {at})")]
    Truncated {
        /// Offset where more bytes were needed.
        at: usize,
    },
    /// A varint runs longer than 10 bytes.
    #[error("a varint at byte {at} is longer than 10 bytes")]
    LongVarint {
        /// Offset of the varint.
        at: usize,
    },
    /// A type code that is not a Thrift compact type.
    #[error("type code {code} at byte {at} is not a Thrift type")]
    BadType {
        /// The code found.
        code: u8,
        /// Offset of the byte that holds it.
        at: usize,
    },
    /// A length or element count larger than the bytes that remain.
    #[error("{what} at byte {at} declares {declared}, more than the {left} bytes left")]
    TooLong {
        /// "a binary field of N bytes", "a list of N elements", ...
        what: &'static str,
        /// Offset of the declaration.
        at: usize,
        /// The declared length or count.
        declared: u64,
        /// Bytes left after the declaration.
        left: usize,
    },
    /// Structures nested deeper than [`MAX_DEPTH`].
    #[error("structures nested deeper than {MAX_DEPTH} levels (byte {at})")]
    TooDeep {
        /// Offset where the limit was reached.
        at: usize,
    },
    /// A non-empty collection of booleans, which no Parquet structure has and which the
    /// decoder would skip without consuming its bytes.
    #[error("a collection of {declared} booleans at byte {at}, which no Parquet structure has")]
    BooleanCollection {
        /// Offset of the collection header.
        at: usize,
        /// Its declared size.
        declared: u64,
    },
    /// A field id that does not fit Thrift's 16 bits.
    #[error("field id overflows at byte {at}")]
    FieldId {
        /// Offset of the field header.
        at: usize,
    },
}

impl ThriftProblem {
    /// True when more bytes might have let the walk go on (the structure ran past the end
    /// of the bytes it was given).
    fn wants_more(&self) -> bool {
        matches!(
            self,
            ThriftProblem::Truncated { .. } | ThriftProblem::TooLong { .. }
        )
    }
}

// Thrift compact protocol type codes.
const BOOLEAN_TRUE: u8 = 1;
const BOOLEAN_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;
const UUID: u8 = 13;

/// A cursor over Thrift compact protocol bytes that checks every declaration against the
/// bytes left.
struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Walk<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Walk { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8, ThriftProblem> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(ThriftProblem::Truncated { at: self.pos })?;
        self.pos += 1;
        Ok(b)
    }

    fn skip(&mut self, n: usize) -> Result<(), ThriftProblem> {
        if n > self.left() {
            return Err(ThriftProblem::Truncated { at: self.buf.len() });
        }
        self.pos += n;
        Ok(())
    }

    fn varint(&mut self) -> Result<u64, ThriftProblem> {
        let at = self.pos;
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ThriftProblem::LongVarint { at })
    }

    fn zigzag(&mut self) -> Result<i64, ThriftProblem> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    /// Reads a declared count or length and refuses it when `per_item` bytes per item do
    /// not fit in what is left.
    fn declared(
        &self,
        what: &'static str,
        at: usize,
        declared: u64,
        per_item: u64,
    ) -> Result<usize, ThriftProblem> {
        let left = self.left();
        match declared.checked_mul(per_item) {
            Some(need) if need <= left as u64 => Ok(declared as usize),
            _ => Err(ThriftProblem::TooLong {
                what,
                at,
                declared,
                left,
            }),
        }
    }

    /// Walks one value of type `code`.
    fn value(&mut self, code: u8, depth: usize) -> Result<(), ThriftProblem> {
        match code {
            BOOLEAN_TRUE | BOOLEAN_FALSE => Ok(()),
            BYTE => self.skip(1),
            I16 | I32 | I64 => self.varint().map(drop),
            DOUBLE => self.skip(8),
            UUID => self.skip(16),
            BINARY => {
                let at = self.pos;
                let len = self.varint()?;
                let len = self.declared("a binary field", at, len, 1)?;
                self.skip(len)
            }
            LIST | SET => self.list(depth),
            MAP => self.map(depth),
            STRUCT => self.structure(depth, |_, _, _| Ok(false)).map(drop),
            code => Err(ThriftProblem::BadType {
                code,
                at: self.pos.saturating_sub(1),
            }),
        }
    }

    fn deeper(&self, depth: usize) -> Result<usize, ThriftProblem> {
        if depth >= MAX_DEPTH {
            return Err(ThriftProblem::TooDeep { at: self.pos });
        }
        Ok(depth + 1)
    }

    fn list(&mut self, depth: usize) -> Result<(), ThriftProblem> {
        let depth = self.deeper(depth)?;
        let at = self.pos;
        let header = self.byte()?;
        if header == 0 {
            return Ok(());
        }
        let element = header & 0x0f;
        let size = match header >> 4 {
            15 => self.varint()?,
            n => u64::from(n),
        };
        if size > i32::MAX as u64 {
            return Err(ThriftProblem::TooLong {
                what: "a list",
                at,
                declared: size,
                left: self.left(),
            });
        }
        if size == 0 {
            return Ok(());
        }
        if !(BOOLEAN_TRUE..=UUID).contains(&element) {
            return Err(ThriftProblem::BadType { code: element, at });
        }
        if element == BOOLEAN_TRUE || element == BOOLEAN_FALSE {
            return Err(ThriftProblem::BooleanCollection { at, declared: size });
        }
        // Every other element takes at least one byte.
        let size = self.declared("a list", at, size, 1)?;
        for _ in 0..size {
            self.value(element, depth)?;
        }
        Ok(())
    }

    fn map(&mut self, depth: usize) -> Result<(), ThriftProblem> {
        let depth = self.deeper(depth)?;
        let at = self.pos;
        let size = self.varint()?;
        if size == 0 {
            return Ok(());
        }
        if size > i32::MAX as u64 {
            return Err(ThriftProblem::TooLong {
                what: "a map",
                at,
                declared: size,
                left: self.left(),
            });
        }
        let at_types = self.pos;
        let types = self.byte()?;
        let (key, value) = (types >> 4, types & 0x0f);
        for code in [key, value] {
            if !(BOOLEAN_TRUE..=UUID).contains(&code) {
                return Err(ThriftProblem::BadType { code, at: at_types });
            }
            if code == BOOLEAN_TRUE || code == BOOLEAN_FALSE {
                return Err(ThriftProblem::BooleanCollection { at, declared: size });
            }
        }
        let size = self.declared("a map", at, size, 2)?;
        for _ in 0..size {
            self.value(key, depth)?;
            self.value(value, depth)?;
        }
        Ok(())
    }

    /// Walks a struct. `top` sees each field of this struct (id, type code, walker) before
    /// it is walked and returns true when it consumed the value itself.
    fn structure(
        &mut self,
        depth: usize,
        mut top: impl FnMut(&mut Self, i16, u8) -> Result<bool, ThriftProblem>,
    ) -> Result<(), ThriftProblem> {
        let depth = self.deeper(depth)?;
        let mut last: i16 = 0;
        loop {
            let at = self.pos;
            let header = self.byte()?;
            let code = header & 0x0f;
            if code == 0 {
                return Ok(());
            }
            let delta = header >> 4;
            let id = if delta == 0 {
                let id = self.zigzag()?;
                i16::try_from(id).map_err(|_| ThriftProblem::FieldId { at })?
            } else {
                last.checked_add(i16::from(delta))
                    .ok_or(ThriftProblem::FieldId { at })?
            };
            last = id;
            if !top(self, id, code)? {
                self.value(code, depth)?;
            }
        }
    }
}

/// Walks a serialized `FileMetaData` (the footer).
pub(super) fn check_footer(footer: &[u8]) -> Result<(), ThriftProblem> {
    Walk::new(footer).structure(0, |_, _, _| Ok(false))
}

/// Walks one serialized `PageHeader` at the start of `bytes`; returns its length and its
/// `compressed_page_size` (field 3), if present.
pub(super) fn check_page_header(bytes: &[u8]) -> Result<(usize, Option<i64>), ThriftProblem> {
    let mut walk = Walk::new(bytes);
    let mut compressed = None;
    walk.structure(0, |walk, id, code| {
        if id == 3 && code == I32 {
            compressed = Some(walk.zigzag()?);
            return Ok(true);
        }
        Ok(false)
    })?;
    Ok((walk.pos, compressed))
}

/// Refuses a footer that cannot be walked. `input` is the whole object; objects without a
/// plain Parquet tail (`PAR1`) are left to the decoder, which refuses them.
pub(super) fn check_file_footer<T: ChunkReader>(input: &T) -> Result<(), ParquetError> {
    let len = input.len();
    if len < 12 {
        return Ok(());
    }
    let tail = input.get_bytes(len - 8, 8)?;
    if &tail[4..] != b"PAR1" {
        return Ok(());
    }
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if footer_len + 8 > len {
        return Ok(());
    }
    let footer = input.get_bytes(len - 8 - footer_len, footer_len as usize)?;
    check_footer(&footer).map_err(|problem| ParquetError::Footer { problem })
}

/// Refuses column chunks that overlap or reach past the file, and walks every page header
/// of every column chunk.
pub(super) fn check_pages<T: ChunkReader>(
    input: &T,
    metadata: &ParquetMetaData,
) -> Result<(), ParquetError> {
    let file_len = input.len();
    let mut chunks = Vec::new();
    for (row_group, group) in metadata.row_groups().iter().enumerate() {
        for (column, chunk) in group.columns().iter().enumerate() {
            // Negative values were refused by `check_column_chunks`.
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset())
                .max(0) as u64;
            let len = chunk.compressed_size().max(0) as u64;
            let bad = |problem: String| ParquetError::ColumnChunk {
                row_group,
                column,
                problem,
            };
            let end = start
                .checked_add(len)
                .filter(|end| *end <= file_len)
                .ok_or_else(|| {
                    bad(format!(
                        "bytes {start}..{start}+{len} reach past the end of the {file_len}-byte file"
                    ))
                })?;
            chunks.push((start, end, row_group, column));
        }
    }
    chunks.sort_unstable();
    for pair in chunks.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.0 < a.1 {
            return Err(ParquetError::ColumnChunk {
                row_group: b.2,
                column: b.3,
                problem: format!(
                    "bytes {}..{} overlap those of row group {}, column {} ({}..{})",
                    b.0, b.1, a.2, a.3, a.0, a.1
                ),
            });
        }
    }
    for (start, end, row_group, column) in chunks {
        check_chunk_pages(input, start, end).map_err(|problem| ParquetError::ColumnChunk {
            row_group,
            column,
            problem,
        })?;
    }
    Ok(())
}

/// Walks the page headers of the column chunk at `start..end`.
fn check_chunk_pages<T: ChunkReader>(input: &T, start: u64, end: u64) -> Result<(), String> {
    let mut pos = start;
    let mut page = 0usize;
    while pos < end {
        let left = end - pos;
        let mut window = FIRST_WINDOW.min(left as usize);
        let (header_len, compressed) = loop {
            let bytes: Bytes = input
                .get_bytes(pos, window)
                .map_err(|e| format!("page {page} at byte {pos}: cannot read its header: {e}"))?;
            match check_page_header(&bytes) {
                Ok(found) => break found,
                Err(problem) if problem.wants_more() && (window as u64) < left => {
                    window = window.saturating_mul(2).min(left as usize);
                }
                Err(problem) => {
                    return Err(format!(
                        "page {page} at byte {pos}: bad page header: {problem}"
                    ));
                }
            }
        };
        let Some(compressed) = compressed else {
            return Err(format!(
                "page {page} at byte {pos}: the page header has no compressed_page_size"
            ));
        };
        let body_left = left - header_len as u64;
        if compressed < 0 || compressed as u64 > body_left {
            return Err(format!(
                "page {page} at byte {pos}: a body of {compressed} bytes does not fit the {body_left} bytes left in the column chunk"
            ));
        }
        pos += header_len as u64 + compressed as u64;
        page += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8]) -> Result<(usize, Option<i64>), ThriftProblem> {
        check_page_header(bytes)
    }

    #[test]
    fn a_page_header_yields_its_length_and_body_size() {
        // Field 1 (i32) 0, field 2 (i32) 100, field 3 (i32) 60, field 5 (struct: field 1
        // (i32) 5, stop), stop; then a byte of the page body.
        let bytes = [
            0x15, 0x00, 0x15, 0xc8, 0x01, 0x15, 0x78, 0x2c, 0x15, 0x0a, 0x00, 0x00, 0xff,
        ];
        assert_eq!(header(&bytes), Ok((12, Some(60))));
    }

    #[test]
    fn a_boolean_list_is_refused_at_once() {
        // Field 1 of type list, header 0xf1 (bool elements, size in a varint), 2^31-1.
        let bytes = [0x19, 0xf1, 0xff, 0xff, 0xff, 0xff, 0x07, 0x00];
        assert!(matches!(
            check_footer(&bytes),
            Err(ThriftProblem::BooleanCollection {
                at: 1,
                declared: 2_147_483_647
            })
        ));
        // Boolean map keys alike.
        let bytes = [0x1b, 0x05, 0x15, 0x00];
        assert!(matches!(
            check_footer(&bytes),
            Err(ThriftProblem::BooleanCollection { .. })
        ));
    }

    #[test]
    fn counts_and_lengths_are_bounded_by_the_bytes_left() {
        // A list of 1000 doubles in 10 bytes.
        let bytes = [0x19, 0xf7, 0xe8, 0x07, 0, 0, 0, 0, 0, 0];
        let err = check_footer(&bytes).unwrap_err();
        assert_eq!(
            err,
            ThriftProblem::TooLong {
                what: "a list",
                at: 1,
                declared: 1000,
                left: 6
            }
        );
        assert_eq!(
            err.to_string(),
            "a list at byte 1 declares 1000, more than the 6 bytes left"
        );
        // A binary field of 2^40 bytes.
        let bytes = [0x18, 0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0x00];
        assert!(matches!(
            check_footer(&bytes),
            Err(ThriftProblem::TooLong {
                what: "a binary field",
                ..
            })
        ));
        // A map of 3 entries in 2 bytes.
        let bytes = [0x1b, 0x03, 0x55, 0x00, 0x00];
        assert!(matches!(
            check_footer(&bytes),
            Err(ThriftProblem::TooLong { what: "a map", .. })
        ));
    }

    #[test]
    fn nesting_is_bounded() {
        // Field 1: struct, holding field 1: struct, ... 100 deep.
        let mut bytes = vec![0x1c; 100];
        bytes.extend(vec![0x00; 101]);
        assert!(matches!(
            check_footer(&bytes),
            Err(ThriftProblem::TooDeep { .. })
        ));
        // 20 deep is fine.
        let mut bytes = vec![0x1c; 20];
        bytes.extend(vec![0x00; 21]);
        assert_eq!(check_footer(&bytes), Ok(()));
    }

    #[test]
    fn malformed_bytes_are_named() {
        assert_eq!(
            check_footer(&[0x1f, 0x00]),
            Err(ThriftProblem::BadType { code: 15, at: 0 })
        );
        assert_eq!(
            check_footer(&[
                0x15, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff
            ]),
            Err(ThriftProblem::LongVarint { at: 1 })
        );
        assert_eq!(
            check_footer(&[0x15, 0x02]),
            Err(ThriftProblem::Truncated { at: 2 })
        );
        // Field 32767 (a full id), then a delta past i16::MAX.
        let bytes = [0x05, 0xfe, 0xff, 0x03, 0x00, 0x15, 0x00, 0x00];
        assert_eq!(check_footer(&bytes), Err(ThriftProblem::FieldId { at: 5 }));
        // A list of an unknown element type.
        assert_eq!(
            check_footer(&[0x19, 0x1e, 0x00, 0x00]),
            Err(ThriftProblem::BadType { code: 14, at: 1 })
        );
    }
}
