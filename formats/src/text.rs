//! The plain-text format of S3 flow log files (spec §2, §7 items 1–4): a header line, then
//! one record per line, fields joined by single spaces, `-` for absent values, `\n` after
//! every line; gzip'd as one member for `.log.gz` objects.
//!
//! ```
//! use flowlog_formats::{FlowRecord, LogFormat, text::{TextReader, TextWriter}};
//! let mut w = TextWriter::new(Vec::new(), LogFormat::aws_default()).unwrap();
//! w.write_record(&FlowRecord::no_data(Some("123456789010".into()), Some("eni-1".into()), 10, 70)).unwrap();
//! let bytes = w.finish().unwrap();
//! assert_eq!(
//!     String::from_utf8(bytes.clone()).unwrap().lines().nth(1),
//!     Some("2 123456789010 eni-1 - - - - - - - 10 70 - NODATA")
//! );
//! let back: Vec<FlowRecord> = TextReader::with_header(&bytes[..]).unwrap().map(Result::unwrap).collect();
//! assert_eq!(back[0].start, Some(10));
//! ```

use std::io::{self, BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::field::FieldId;
use crate::format::{FormatError, LogFormat};
use crate::record::{FlowRecord, Text, Value, ValueError};

/// Default gzip level for `.log.gz` objects (the level of `gzip -6`).
pub const DEFAULT_GZIP_LEVEL: u32 = 6;

/// Bytes the gzip trailer and the final empty deflate block add when a stream is finished.
const GZIP_FINISH_BYTES: u64 = 8 + 16;

/// The text writer hands its buffer to the underlying writer once it holds this much.
const FLUSH_AT: usize = 64 * 1024;

/// Appends one record as a text line (with its `\n`) to `out`.
///
/// `version` is the value written for the `version` field (see [`LogFormat::version`]).
/// Whitespace and control characters in text values (which only records built in code
/// can hold: readers refuse them) are percent-encoded so that a line always splits into
/// exactly as many fields as the header has. Every other byte, `%` included, is written as
/// it is, so a value read from a text file (such as a tag AWS percent-encoded) is written
/// back unchanged.
pub fn encode_line(out: &mut Vec<u8>, format: &LogFormat, version: u8, record: &FlowRecord) {
    for (i, field) in format.fields().iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        if *field == FieldId::Version {
            push_int(out, i64::from(version));
            continue;
        }
        match record.get(*field) {
            Value::Absent => out.push(b'-'),
            Value::Int(v) => push_int(out, v),
            Value::Ip(ip) => push_ip(out, ip),
            Value::Str(s) => push_text(out, s),
        }
    }
    out.push(b'\n');
}

/// Returns an upper bound on the length of the line [`encode_line`] writes for `record`
/// (with its `\n`), computed without encoding it.
pub fn line_len_upper_bound(format: &LogFormat, record: &FlowRecord) -> usize {
    let values: usize = format
        .fields()
        .iter()
        .map(|field| match record.get(*field) {
            Value::Absent => 20, // `version` is absent in records and at most 3 digits
            Value::Int(_) => 20,
            Value::Ip(_) => 45,
            Value::Str(s) => 3 * s.len().max(1),
        })
        .sum();
    values + format.len()
}

/// Returns an upper bound on the deflate output for `n` input bytes that were not flushed
/// yet (stored-block expansion plus a block header per 16 KiB and a sync-flush marker).
fn deflate_bound(n: u64) -> u64 {
    n + n / 1024 + 5 * (n / 16_384 + 1) + 16
}

fn push_int(out: &mut Vec<u8>, v: i64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

/// Appends an address in its canonical text form (the same as `Display`: dotted quad, or
/// RFC 5952 IPv6 with `::ffff:a.b.c.d` for IPv4-mapped addresses), without `fmt`.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => push_ipv4(out, v4),
        IpAddr::V6(v6) => push_ipv6(out, v6),
    }
}

fn push_ipv6(out: &mut Vec<u8>, ip: Ipv6Addr) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let g = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        out.extend_from_slice(b"::ffff:");
        push_ipv4(out, v4);
        return;
    }
    // The longest run of at least two zero groups is written `::` (the first on a tie).
    let (mut best_start, mut best_len, mut run_start, mut run_len) = (0, 0, 0, 0);
    for (i, &x) in g.iter().enumerate() {
        if x == 0 {
            if run_len == 0 {
                run_start = i;
            }
            run_len += 1;
            if run_len > best_len {
                (best_start, best_len) = (run_start, run_len);
            }
        } else {
            run_len = 0;
        }
    }
    let push_group = |out: &mut Vec<u8>, x: u16| {
        let mut started = false;
        for shift in [12u16, 8, 4, 0] {
            let d = usize::from((x >> shift) & 0xf);
            if d != 0 || started || shift == 0 {
                out.push(HEX[d]);
                started = true;
            }
        }
    };
    if best_len < 2 {
        for (i, &x) in g.iter().enumerate() {
            if i > 0 {
                out.push(b':');
            }
            push_group(out, x);
        }
        return;
    }
    for (i, &x) in g[..best_start].iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        push_group(out, x);
    }
    out.extend_from_slice(b"::");
    for (i, &x) in g[best_start + best_len..].iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        push_group(out, x);
    }
}

fn push_ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + (octet / 10) % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

fn needs_escape(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

fn push_text(out: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        out.push(b'-');
    } else if !s.bytes().any(needs_escape) {
        out.extend_from_slice(s.as_bytes());
    } else {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for b in s.bytes() {
            if needs_escape(b) {
                out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            } else {
                out.push(b);
            }
        }
    }
}

/// Streams records as text (header first) into any [`Write`].
#[derive(Debug)]
pub struct TextWriter<W: Write> {
    inner: W,
    format: LogFormat,
    version: u8,
    buf: Vec<u8>,
    records: u64,
    bytes: u64,
}

impl<W: Write> TextWriter<W> {
    /// Starts a text stream in `format`; the header line is written first.
    pub fn new(inner: W, format: LogFormat) -> io::Result<Self> {
        let mut buf = Vec::with_capacity(FLUSH_AT + 4096);
        buf.extend_from_slice(format.header().as_bytes());
        buf.push(b'\n');
        let version = format.version();
        Ok(TextWriter {
            inner,
            format,
            version,
            bytes: 0,
            buf,
            records: 0,
        })
    }

    /// Returns the format records are written in.
    pub fn format(&self) -> &LogFormat {
        &self.format
    }

    /// Appends one record.
    pub fn write_record(&mut self, record: &FlowRecord) -> io::Result<()> {
        let before = self.buf.len();
        encode_line(&mut self.buf, &self.format, self.version, record);
        self.bytes += (self.buf.len() - before) as u64;
        self.records += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush_buffer()?;
        }
        Ok(())
    }

    /// Returns the number of records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Returns the uncompressed bytes of the records written so far (header excluded).
    pub fn record_bytes(&self) -> u64 {
        self.bytes
    }

    /// Hands buffered lines to the underlying writer.
    pub fn flush_buffer(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Returns the underlying writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Writes what is buffered and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.flush_buffer()?;
        Ok(self.inner)
    }
}

/// A [`Write`] adapter that counts the bytes that went through it.
#[derive(Debug)]
pub struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W> CountingWriter<W> {
    /// Wraps `inner` with a zero count.
    pub fn new(inner: W) -> Self {
        CountingWriter { inner, count: 0 }
    }

    /// Returns the bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Returns the wrapped writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Unwraps the writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for CountingWriter<W> {
    // Forwarding a partial write and counting what was taken is exactly `write`'s contract.
    #[allow(clippy::disallowed_methods)]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Streams records as a gzip'd text object (`.log.gz`: one gzip member) and reports the
/// compressed bytes written so far, so a caller can cap object sizes.
#[derive(Debug)]
pub struct GzipTextWriter<W: Write> {
    text: TextWriter<GzEncoder<CountingWriter<W>>>,
    /// Uncompressed bytes (header included) handed in since the last sync flush.
    unflushed: u64,
}

impl<W: Write> GzipTextWriter<W> {
    /// Starts a gzip'd text stream in `format` at gzip `level` (0–9).
    pub fn new(inner: W, format: LogFormat, level: u32) -> io::Result<Self> {
        let gz = GzEncoder::new(CountingWriter::new(inner), Compression::new(level.min(9)));
        let text = TextWriter::new(gz, format)?;
        let unflushed = text.buf.len() as u64;
        Ok(GzipTextWriter { text, unflushed })
    }

    /// Appends one record.
    pub fn write_record(&mut self, record: &FlowRecord) -> io::Result<()> {
        let before = self.text.record_bytes();
        self.text.write_record(record)?;
        self.unflushed += self.text.record_bytes() - before;
        Ok(())
    }

    /// Compresses everything handed in so far and writes it out (a deflate sync flush), so
    /// that [`GzipTextWriter::compressed_bytes`] is exact. Costs a few bytes; meant for use
    /// near a size cap, not after every record.
    pub fn sync_flush(&mut self) -> io::Result<()> {
        self.text.flush_buffer()?;
        self.text.inner.flush()?;
        self.unflushed = 0;
        Ok(())
    }

    /// Returns an upper bound on the size of the finished object if it were finished now:
    /// the bytes already written, the worst-case deflate output of the input not flushed
    /// yet, and the trailer. Exact to within a few bytes right after a sync flush.
    pub fn final_size_bound(&self) -> u64 {
        self.compressed_bytes() + deflate_bound(self.unflushed) + GZIP_FINISH_BYTES
    }

    /// Returns the number of records written so far.
    pub fn records(&self) -> u64 {
        self.text.records()
    }

    /// Returns the compressed bytes handed to the underlying writer so far; see
    /// [`GzipTextWriter::final_size_bound`] for how large the finished object can get.
    pub fn compressed_bytes(&self) -> u64 {
        self.text.get_ref().get_ref().count()
    }

    /// Returns the uncompressed bytes of the records written so far.
    pub fn uncompressed_bytes(&self) -> u64 {
        self.text.record_bytes()
    }

    /// Completes the gzip member and returns the underlying writer.
    pub fn finish(self) -> io::Result<W> {
        Ok(self.text.finish()?.finish()?.into_inner())
    }
}

/// A line of a text file that could not be decoded. Other lines are unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct LineError {
    /// 1-based line number in the file (the header is line 1).
    pub line: u64,
    /// What is wrong with the line.
    pub problem: LineProblem,
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    /// The line does not split into as many fields as the format has.
    #[error("expected {expected} fields, found {found}")]
    FieldCount {
        /// Fields in the format.
        expected: usize,
        /// Fields on the line.
        found: usize,
    },
    /// Two spaces in a row (or a leading/trailing space) leave a field empty.
    #[error("field {position} ('{field}') is empty; fields must be separated by exactly one space")]
    EmptyField {
        /// 1-based position.
        position: usize,
        /// The field at that position.
        field: FieldId,
    },
    /// A value does not fit its field.
    #[error("{0}")]
    Value(ValueError),
    /// The line is not valid UTF-8.
    #[error("not valid UTF-8")]
    NotUtf8,
}

/// Failure while reading a text file.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// Reading failed; nothing more can be read.
    #[error("read failed")]
    Io(#[from] io::Error),
    /// The input is empty: there is no header line.
    #[error("the input is empty; expected a header line such as '{}'", LogFormat::aws_default().header())]
    NoHeader,
    /// Line 1 is not a valid header.
    #[error("line 1 is not a valid header")]
    Header(#[source] FormatError),
    /// One line is malformed; reading may continue with the next line.
    #[error(transparent)]
    Line(#[from] LineError),
}

impl TextError {
    /// Returns true if reading can go on after this error (a single bad line).
    pub fn is_line_error(&self) -> bool {
        matches!(self, TextError::Line(_))
    }
}

/// Reads records from a text file: with a header (S3 objects), or header-less with a
/// known format (CloudWatch Logs exports). Blank lines are skipped.
#[derive(Debug)]
pub struct TextReader<R: BufRead> {
    inner: R,
    format: LogFormat,
    line_no: u64,
    buf: Vec<u8>,
    shared: Vec<Option<Text>>,
}

impl<R: BufRead> TextReader<R> {
    /// Reads the header line and returns a reader for the records that follow.
    pub fn with_header(mut inner: R) -> Result<Self, TextError> {
        let mut buf = Vec::new();
        if inner.read_until(b'\n', &mut buf)? == 0 {
            return Err(TextError::NoHeader);
        }
        let line = std::str::from_utf8(&buf).map_err(|_| {
            TextError::Header(FormatError::StrayText {
                text: String::from_utf8_lossy(&buf).into_owned(),
                position: 1,
            })
        })?;
        let format = LogFormat::from_header(line).map_err(TextError::Header)?;
        let mut reader = Self::with_format(inner, format);
        reader.line_no = 1;
        Ok(reader)
    }

    /// Returns a reader for header-less input in `format`.
    pub fn with_format(inner: R, format: LogFormat) -> Self {
        let shared = vec![None; format.len()];
        TextReader {
            inner,
            format,
            line_no: 0,
            buf: Vec::with_capacity(512),
            shared,
        }
    }

    /// Returns the format of the records.
    pub fn format(&self) -> &LogFormat {
        &self.format
    }

    /// Returns the number of the last line read.
    pub fn line_number(&self) -> u64 {
        self.line_no
    }

    /// Reads the next record; `Ok(None)` at the end of the input.
    pub fn read_record(&mut self) -> Result<Option<FlowRecord>, TextError> {
        loop {
            self.buf.clear();
            if self.inner.read_until(b'\n', &mut self.buf)? == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            let mut end = self.buf.len();
            while end > 0 && matches!(self.buf[end - 1], b'\n' | b'\r') {
                end -= 1;
            }
            if end == 0 {
                continue;
            }
            let line_no = self.line_no;
            let line = std::str::from_utf8(&self.buf[..end]).map_err(|_| LineError {
                line: line_no,
                problem: LineProblem::NotUtf8,
            })?;
            return decode_line(line, &self.format, &mut self.shared)
                .map(Some)
                .map_err(|problem| {
                    TextError::Line(LineError {
                        line: line_no,
                        problem,
                    })
                });
        }
    }
}

fn decode_line(
    line: &str,
    format: &LogFormat,
    shared: &mut [Option<Text>],
) -> Result<FlowRecord, LineProblem> {
    let found = line.split(' ').count();
    if found != format.len() {
        return Err(LineProblem::FieldCount {
            expected: format.len(),
            found,
        });
    }
    let mut record = FlowRecord::default();
    for (i, (token, field)) in line.split(' ').zip(format.fields()).enumerate() {
        if token.is_empty() {
            return Err(LineProblem::EmptyField {
                position: i + 1,
                field: *field,
            });
        }
        if token == "-" {
            continue;
        }
        if FlowRecord::is_text_field(*field) {
            let cached = &mut shared[i];
            match cached {
                Some(prev) if &**prev == token => {}
                _ => *cached = Some(Text::from(token)),
            }
            if let Some(value) = cached {
                record
                    .set_text_shared(*field, value)
                    .map_err(LineProblem::Value)?;
            }
        } else {
            record.set_str(*field, token).map_err(LineProblem::Value)?;
        }
    }
    Ok(record)
}

impl<R: BufRead> Iterator for TextReader<R> {
    type Item = Result<FlowRecord, TextError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read_record().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn final_size_bound_holds_for_incompressible_text_and_is_tight_after_a_flush() {
        // Random tokens do not compress; the bound must still hold at every point.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let format = LogFormat::parse("${vpc-id} ${srcaddr} ${bytes}").unwrap();
        let mut w = GzipTextWriter::new(Vec::new(), format.clone(), 6).unwrap();
        let mut bounds = Vec::new();
        for i in 0..20_000u64 {
            let mut r = FlowRecord::default();
            r.set_str(
                FieldId::VpcId,
                &format!("vpc-{:016x}{:016x}", next(), next()),
            )
            .unwrap();
            r.srcaddr = Some(IpAddr::from(
                (u128::from(next()) << 64 | u128::from(next())).to_be_bytes(),
            ));
            r.bytes = Some(next() >> 1);
            assert!(encode_len(&format, &r) <= line_len_upper_bound(&format, &r));
            w.write_record(&r).unwrap();
            if i % 5000 == 4999 {
                w.sync_flush().unwrap();
                bounds.push(w.final_size_bound());
            }
        }
        let bound = w.final_size_bound();
        let len = w.finish().unwrap().len() as u64;
        assert!(len <= bound, "{len} > {bound}");
        let last_flushed = *bounds.last().unwrap();
        assert!(
            last_flushed >= len && last_flushed - len < 64,
            "{last_flushed} vs {len}"
        );
    }

    fn encode_len(format: &LogFormat, r: &FlowRecord) -> usize {
        let mut out = Vec::new();
        encode_line(&mut out, format, format.version(), r);
        out.len()
    }

    proptest::proptest! {
        #[test]
        fn ip_fast_path_matches_display(ip in proptest::prelude::any::<IpAddr>(), zeros in 0u8..=255) {
            // Zero out groups by a mask so that runs of zeros of every length and place occur.
            let ip = match ip {
                IpAddr::V6(v6) => {
                    let mut g = v6.segments();
                    for (i, x) in g.iter_mut().enumerate() {
                        if zeros & (1 << i) != 0 {
                            *x = 0;
                        }
                    }
                    IpAddr::V6(Ipv6Addr::from(g))
                }
                v4 => v4,
            };
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn ipv6_special_forms_match_display() {
        for s in [
            "::",
            "::1",
            "1::",
            "::ffff:1.2.3.4",
            "::1.2.3.4",
            "2001:db8::1:0:0:1",
            "2001:0:0:1::1",
            "fe80::",
            "1:2:3:4:5:6:7:8",
            "1:0:2:0:3:0:4:0",
        ] {
            let ip: IpAddr = s.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string(), "{s}");
        }
    }

    #[test]
    fn ipv4_fast_path_matches_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.100.255",
            "255.255.255.255",
            "192.168.9.99",
        ] {
            let ip: Ipv4Addr = ip.parse().unwrap();
            let mut out = Vec::new();
            push_ipv4(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn whitespace_and_control_characters_are_percent_encoded() {
        let mut out = Vec::new();
        push_text(&mut out, "a b\"c%d\te\x7f");
        assert_eq!(out, b"a%20b\"c%d%09e%7F");
    }

    /// Fuzzing regression (`fuzz/regressions/text/percent-encoded-tag`): the writer
    /// percent-encoded `%` and `"`, which the reader keeps as they are, so every text →
    /// text conversion changed such values (`a%20b` → `a%2520b`).
    #[test]
    fn text_values_read_from_a_file_are_written_back_unchanged() {
        let input = "version instance-tag vpc-id\n11 name=web%20100%25 \"vpc-1\"\n";
        let mut reader = TextReader::with_header(input.as_bytes()).unwrap();
        let record = reader.read_record().unwrap().unwrap();
        assert_eq!(record.instance_tag.as_deref(), Some("name=web%20100%25"));
        let mut out = TextWriter::new(Vec::new(), reader.format().clone()).unwrap();
        out.write_record(&record).unwrap();
        assert_eq!(String::from_utf8(out.finish().unwrap()).unwrap(), input);
    }

    #[test]
    fn malformed_lines_are_reported_and_skipped() {
        let input = "srcport action\n1 ACCEPT\n\nx ACCEPT\n1  ACCEPT\n1 ACCEPT extra\n70000 REJECT\n2 REJECT\r\n";
        let mut reader = TextReader::with_header(input.as_bytes()).unwrap();
        let mut ok = Vec::new();
        let mut bad = Vec::new();
        for item in &mut reader {
            match item {
                Ok(r) => ok.push(r.srcport),
                Err(TextError::Line(e)) => bad.push(e.to_string()),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(ok, vec![Some(1), Some(2)]);
        assert_eq!(
            bad,
            vec![
                "line 4: field 'srcport': 'x' is not an integer",
                "line 5: expected 2 fields, found 3",
                "line 6: expected 2 fields, found 3",
                "line 7: field 'srcport': '70000' is out of range 0..=65535",
            ]
        );
    }

    #[test]
    fn header_errors() {
        assert!(matches!(
            TextReader::with_header(&b""[..]),
            Err(TextError::NoHeader)
        ));
        let e = TextReader::with_header(&b"2 123 eni-1\n"[..]).unwrap_err();
        assert!(matches!(
            e,
            TextError::Header(FormatError::UnknownHeaderField { position: 1, .. })
        ));
    }

    #[test]
    fn gzip_writer_counts_and_produces_one_member() {
        let rec = FlowRecord::no_data(Some("123456789010".into()), Some("eni-1".into()), 1, 2);
        let mut w = GzipTextWriter::new(Vec::new(), LogFormat::aws_default(), 6).unwrap();
        for _ in 0..100_000 {
            w.write_record(&rec).unwrap();
        }
        let before_finish = w.compressed_bytes();
        let bound = w.final_size_bound();
        let out = w.finish().unwrap();
        assert!(out.len() as u64 >= before_finish);
        assert!(out.len() as u64 <= bound);
        let mut text = String::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text.lines().count(), 100_001);
    }
}
