//! Reading and writing capture files: classic pcap and pcapng (read), pcap (write).
//!
//! [`PcapPackets`] reads either format (told apart by the file's magic number) and yields
//! one packet per captured frame, with its timestamp, link type and interface: borrowed
//! from its read buffer ([`PcapPackets::next_ref`], what replay uses: no allocation or
//! copy per packet) or as an owned [`Packet`] (the [`Iterator`] implementation).
//! [`PcapWriter`] writes classic pcap files, for tests and benchmarks.
//!
//! Classic pcap records are parsed here; pcapng blocks by the `pcap-file` crate, over the
//! same buffer. This module adds what `pcap-file` leaves to the caller:
//! pcapng timestamp units (`if_tsresol`, `if_tsoffset`: `pcap-file` 2 hands out raw
//! timestamp units as if they were nanoseconds), lenient packet lengths in classic pcap
//! (captures whose snapshot length is shorter than the packets are normal), and errors
//! that name the file and the packet.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{DataLink, Endianness, TsResolution};

use crate::decode::LinkType;

/// Magic number of a pcapng file (its Section Header Block type), identical in both byte
/// orders.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];
/// Magic numbers of classic pcap files (microsecond and nanosecond, both byte orders), as
/// read big-endian.
const PCAP_MAGICS: [u32; 4] = [0xa1b2_c3d4, 0xd4c3_b2a1, 0xa1b2_3c4d, 0x4d3c_b2a1];

/// Why a capture file cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    /// The file cannot be opened or created.
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file does not start with a pcap or pcapng magic number.
    #[error("{}: not a pcap or pcapng file ({what})", path.display())]
    NotPcap {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        what: String,
    },
    /// The file ends in the middle of a record (or of its header, packet 0).
    #[error("{}: truncated record at packet {packet} (the file ends inside it)", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// 1-based number of the packet that was being read; 0 for the file header.
        packet: u64,
    },
    /// A record is malformed.
    #[error("{}: malformed record at packet {packet}: {detail}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based number of the packet that was being read; 0 for the file header.
        packet: u64,
        /// What is wrong.
        detail: String,
    },
    /// One record cannot be turned into a packet (an out-of-range timestamp), but the
    /// next record is where its header says: the reader goes on after it.
    #[error("{}: packet {packet} skipped: {detail}", path.display())]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// 1-based number of the packet.
        packet: u64,
        /// What is wrong.
        detail: String,
    },
    /// Reading failed.
    #[error("{}: read error at packet {packet}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// 1-based number of the packet that was being read.
        packet: u64,
        /// The operating system's error.
        source: io::Error,
    },
    /// Writing failed.
    #[error("{}: cannot write: {detail}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

impl PcapError {
    /// Whether only one packet is lost and the reader goes on with the next
    /// ([`PcapError::BadRecord`]); every other error ends the file.
    #[must_use]
    pub fn is_packet_skipped(&self) -> bool {
        matches!(self, PcapError::BadRecord { .. })
    }

    /// Maps an error of `pcap-file` met while reading packet `packet` of `path`.
    fn from_lib(path: &Path, packet: u64, err: pcap_file::PcapError) -> Self {
        let path = path.to_path_buf();
        match err {
            pcap_file::PcapError::IncompleteBuffer => PcapError::Truncated { path, packet },
            pcap_file::PcapError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                PcapError::Truncated { path, packet }
            }
            pcap_file::PcapError::IoError(source) => PcapError::Read {
                path,
                packet,
                source,
            },
            other => PcapError::Malformed {
                path,
                packet,
                detail: other.to_string(),
            },
        }
    }
}

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Capture time, since the Unix epoch.
    pub timestamp: Duration,
    /// Link-layer type of `data`; `None` for link types the decoder does not support.
    pub link: Option<LinkType>,
    /// The captured bytes (possibly fewer than `original_len`: snapshot length).
    pub data: Vec<u8>,
    /// Length of the frame on the wire.
    pub original_len: u32,
    /// pcapng interface id (index of its Interface Description Block in the section);
    /// 0 for classic pcap.
    pub interface: u32,
}

/// Timestamp interpretation and link type of one pcapng interface.
#[derive(Debug, Clone, Copy)]
struct NgInterface {
    link: Option<LinkType>,
    /// `if_tsresol`: bit 7 clear → units of 10^-n s, set → 2^-n s. Default 6 (µs).
    tsresol: u8,
    /// `if_tsoffset`, seconds added to every timestamp (signed per the pcapng spec).
    tsoffset: i64,
    /// Snapshot length; 0 = none.
    snaplen: u32,
    /// Bytes of Frame Check Sequence ending every frame (`if_fcslen`, given in bits).
    fcs_len: usize,
}

impl NgInterface {
    fn from_block(idb: &InterfaceDescriptionBlock<'_>) -> Self {
        let mut iface = NgInterface {
            link: LinkType::from_pcap_linktype(u32::from(idb.linktype)),
            tsresol: 6,
            tsoffset: 0,
            snaplen: idb.snaplen,
            fcs_len: 0,
        };
        for opt in &idb.options {
            match opt {
                InterfaceDescriptionOption::IfTsResol(r) => iface.tsresol = *r,
                InterfaceDescriptionOption::IfTsOffset(o) => {
                    iface.tsoffset = i64::from_ne_bytes(o.to_ne_bytes());
                }
                // The pcapng specification gives the FCS length in bits.
                InterfaceDescriptionOption::IfFcsLen(bits) => {
                    iface.fcs_len = usize::from(*bits / 8);
                }
                _ => {}
            }
        }
        iface
    }

    /// Converts a raw pcapng timestamp (units of `if_tsresol`) to time since the epoch.
    fn timestamp(&self, raw: u64) -> Duration {
        let base = ticks_to_duration(raw, self.tsresol);
        let offset = Duration::from_secs(self.tsoffset.unsigned_abs());
        if self.tsoffset >= 0 {
            base.saturating_add(offset)
        } else {
            base.saturating_sub(offset)
        }
    }
}

/// Converts `raw` ticks of resolution `tsresol` (pcapng `if_tsresol` encoding) to a
/// duration.
fn ticks_to_duration(raw: u64, tsresol: u8) -> Duration {
    const NANOS: u128 = 1_000_000_000;
    let exp = u32::from(tsresol & 0x7f);
    let nanos: u128 = if tsresol & 0x80 == 0 {
        // 10^-exp seconds per tick.
        if exp <= 9 {
            u128::from(raw) * 10u128.pow(9 - exp)
        } else {
            10u128
                .checked_pow(exp - 9)
                .map_or(0, |div| u128::from(raw) / div)
        }
    } else {
        // 2^-exp seconds per tick; exp <= 127, raw < 2^64, NANOS < 2^30: fits in u128 when
        // split into whole seconds and fraction.
        let whole = if exp >= 64 { 0 } else { u128::from(raw >> exp) };
        let frac = if exp >= 64 {
            u128::from(raw)
        } else {
            u128::from(raw & ((1u64 << exp) - 1))
        };
        whole * NANOS + ((frac * NANOS) >> exp)
    };
    let secs = u64::try_from(nanos / NANOS).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits in u32.
    let sub = u32::try_from(nanos % NANOS).unwrap_or(0);
    Duration::new(secs, sub)
}

/// Bytes read from the file per `read` call at most, and the initial buffer size: large
/// enough that system calls are rare, small enough to stay in the CPU's L2 cache (a
/// buffer that fits there is copied into faster than a memory-mapped file is paged in).
const READ_CHUNK: usize = 256 * 1024;

/// Largest record (classic pcap) or block (pcapng) accepted; a length field above it is a
/// malformed file, not a reason to allocate gigabytes.
const MAX_RECORD: usize = 64 * 1024 * 1024;

/// pcapng Section Header Block type.
const NG_SECTION_HEADER: u32 = 0x0a0d_0d0a;

/// The bits of a classic pcap header's link-type field that name the link type
/// (libpcap's `LINKTYPE_MATCHING_MASK`); the upper bits carry other information.
const LINKTYPE_MATCHING_MASK: u32 = 0xffff;

/// The "FCS length known" bit of a classic pcap header's link-type field: when set, bits
/// 28-31 say how many 16-bit words of Frame Check Sequence end every frame.
const LINKTYPE_FCS_PRESENT: u32 = 0x0400_0000;

/// Bytes of Frame Check Sequence at the end of every frame, from a classic pcap header's
/// link-type field (libpcap's `LT_FCS_LENGTH`, in 16-bit words); 0 when the field does not
/// say.
fn pcap_fcs_len(linktype_field: u32) -> usize {
    if linktype_field & LINKTYPE_FCS_PRESENT == 0 {
        return 0;
    }
    // At most 15 words: 30 bytes.
    ((linktype_field >> 28) & 0xf) as usize * 2
}

/// Where a frame ends once the `fcs_len` bytes of Frame Check Sequence that ended it on
/// the wire are removed: `(captured bytes kept, wire length)`. A capture cut by its
/// snapshot length holds only the part of the FCS it did not cut.
fn strip_fcs(captured: usize, original_len: u32, fcs_len: usize) -> (usize, u32) {
    if fcs_len == 0 {
        return (captured, original_len);
    }
    let wire = usize::try_from(original_len)
        .unwrap_or(usize::MAX)
        .max(captured);
    let not_captured = wire - captured;
    let fcs_captured = fcs_len.saturating_sub(not_captured).min(captured);
    let wire = wire.saturating_sub(fcs_len);
    (
        captured - fcs_captured,
        u32::try_from(wire).unwrap_or(u32::MAX),
    )
}

/// The file's bytes, read through one reusable buffer: `buf[start..end]` is what has been
/// read and not consumed yet.
struct Input {
    file: File,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The file has no more bytes.
    eof: bool,
    /// Data of a packet that the pcapng parser handed out as an owned copy.
    scratch: Vec<u8>,
}

impl Input {
    fn new(file: File) -> Input {
        Input {
            file,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            eof: false,
            scratch: Vec::new(),
        }
    }

    /// The bytes read and not consumed yet.
    fn available(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads until at least `n` bytes are available or the file ends; returns whether
    /// they are.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        if self.end - self.start >= n {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < n {
            self.buf.resize(n.max(self.buf.len() * 2), 0);
        }
        while self.end < n {
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(got) => self.end += got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }
}

/// Classic pcap: byte order and timestamp unit of the records.
#[derive(Debug, Clone, Copy)]
struct PcapFormat {
    big_endian: bool,
    nanos: bool,
    link: Option<LinkType>,
    /// Bytes of Frame Check Sequence ending every frame, removed before decoding.
    fcs_len: usize,
}

impl PcapFormat {
    fn u32_at(&self, bytes: &[u8], at: usize) -> u32 {
        let mut b = [0u8; 4];
        if let Some(s) = bytes.get(at..at + 4) {
            b.copy_from_slice(s);
        }
        if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    }
}

enum Format {
    Pcap(PcapFormat),
    PcapNg {
        parser: Box<PcapNgParser>,
        interfaces: Vec<NgInterface>,
        /// Timestamp of the last packet, given to Simple Packet Blocks (which have none).
        last_timestamp: Duration,
    },
}

/// Where a packet's bytes are: in the read buffer, or in the scratch copy.
enum DataAt {
    Buffer { start: usize, len: usize },
    Scratch,
}

/// A packet located by [`PcapPackets::locate_next`], its bytes not borrowed yet.
struct Located {
    timestamp: Duration,
    link: Option<LinkType>,
    data: DataAt,
    original_len: u32,
    interface: u32,
}

/// One captured frame borrowed from the reader's buffer: valid until the next call of
/// [`PcapPackets::next_ref`]. [`PacketRef::to_packet`] makes an owned copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketRef<'a> {
    /// Capture time, since the Unix epoch.
    pub timestamp: Duration,
    /// Link-layer type of `data`; `None` for link types the decoder does not support.
    pub link: Option<LinkType>,
    /// The captured bytes (possibly fewer than `original_len`: snapshot length).
    pub data: &'a [u8],
    /// Length of the frame on the wire.
    pub original_len: u32,
    /// pcapng interface id; 0 for classic pcap.
    pub interface: u32,
}

impl PacketRef<'_> {
    /// Copies the packet out of the reader's buffer.
    pub fn to_packet(&self) -> Packet {
        Packet {
            timestamp: self.timestamp,
            link: self.link,
            data: self.data.to_vec(),
            original_len: self.original_len,
            interface: self.interface,
        }
    }
}

/// Reader of the packets of a pcap or pcapng file.
///
/// The file is read sequentially through one reusable buffer. [`PcapPackets::next_ref`]
/// hands out each packet as a slice of that buffer (no allocation, no copy); the
/// [`Iterator`] implementation yields owned [`Packet`]s. After the first error both end,
/// except after a [`PcapError::BadRecord`], which stands for one packet only.
pub struct PcapPackets {
    path: PathBuf,
    input: Input,
    format: Format,
    /// Packets yielded so far.
    count: u64,
    done: bool,
}

impl std::fmt::Debug for PcapPackets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapPackets")
            .field("path", &self.path)
            .field(
                "format",
                &match self.format {
                    Format::Pcap(_) => "pcap",
                    Format::PcapNg { .. } => "pcapng",
                },
            )
            .field("count", &self.count)
            .field("done", &self.done)
            .finish()
    }
}

impl PcapPackets {
    /// Opens a pcap or pcapng file (told apart by its magic number) and reads its header.
    pub fn open(path: &Path) -> Result<PcapPackets, PcapError> {
        let file = File::open(path).map_err(|source| PcapError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut input = Input::new(file);
        let read_err = |source| PcapError::Read {
            path: path.to_path_buf(),
            packet: 0,
            source,
        };
        input.fill(4).map_err(read_err)?;
        let head = input.available();
        let Some(&magic) = head.first_chunk::<4>() else {
            return Err(PcapError::NotPcap {
                path: path.to_path_buf(),
                what: format!("the file is only {} bytes long", head.len()),
            });
        };
        let truncated = || PcapError::Truncated {
            path: path.to_path_buf(),
            packet: 0,
        };
        let format = if magic == PCAPNG_MAGIC {
            // The Section Header Block: its length field's byte order is given by the
            // byte-order magic that follows it.
            if !input.fill(12).map_err(read_err)? {
                return Err(truncated());
            }
            let len = ng_block_len(input.available(), Endianness::Big).unwrap_or(12);
            if len > MAX_RECORD {
                return Err(too_large(path, 0, len));
            }
            if !input.fill(len).map_err(read_err)? {
                return Err(truncated());
            }
            let window = input.available();
            let (rest, parser) =
                PcapNgParser::new(window).map_err(|e| PcapError::from_lib(path, 0, e))?;
            let used = window.len() - rest.len();
            input.consume(used);
            Format::PcapNg {
                parser: Box::new(parser),
                interfaces: Vec::new(),
                last_timestamp: Duration::ZERO,
            }
        } else if PCAP_MAGICS.contains(&u32::from_be_bytes(magic)) {
            if !input.fill(24).map_err(read_err)? {
                return Err(truncated());
            }
            let be = u32::from_be_bytes(magic);
            let mut format = PcapFormat {
                big_endian: be == 0xa1b2_c3d4 || be == 0xa1b2_3c4d,
                nanos: be == 0xa1b2_3c4d || be == 0x4d3c_b2a1,
                link: None,
                fcs_len: 0,
            };
            let linktype_field = format.u32_at(input.available(), 20);
            format.link = LinkType::from_pcap_linktype(linktype_field & LINKTYPE_MATCHING_MASK);
            format.fcs_len = pcap_fcs_len(linktype_field);
            input.consume(24);
            Format::Pcap(format)
        } else {
            return Err(PcapError::NotPcap {
                path: path.to_path_buf(),
                what: format!(
                    "magic number {:02x} {:02x} {:02x} {:02x}",
                    magic[0], magic[1], magic[2], magic[3]
                ),
            });
        };
        Ok(PcapPackets {
            path: path.to_path_buf(),
            input,
            format,
            count: 0,
            done: false,
        })
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Link type of a classic pcap file; `None` for pcapng (per interface, see
    /// [`Packet::link`]) and for unsupported link types.
    pub fn pcap_link(&self) -> Option<LinkType> {
        match &self.format {
            Format::Pcap(f) => f.link,
            Format::PcapNg { .. } => None,
        }
    }

    /// Returns the next packet, borrowed from the reader's buffer; `None` at the end of the
    /// file and after an error.
    pub fn next_ref(&mut self) -> Option<Result<PacketRef<'_>, PcapError>> {
        if self.done {
            return None;
        }
        let located = match self.locate_next() {
            Some(Ok(located)) => located,
            Some(Err(e)) if e.is_packet_skipped() => {
                self.count += 1;
                return Some(Err(e));
            }
            Some(Err(e)) => {
                self.done = true;
                return Some(Err(e));
            }
            None => {
                self.done = true;
                return None;
            }
        };
        self.count += 1;
        let data = match located.data {
            DataAt::Buffer { start, len } => self.input.buf.get(start..start + len),
            DataAt::Scratch => Some(self.input.scratch.as_slice()),
        };
        Some(Ok(PacketRef {
            timestamp: located.timestamp,
            link: located.link,
            data: data.unwrap_or_default(),
            original_len: located.original_len,
            interface: located.interface,
        }))
    }

    /// Finds the next packet and consumes its record; the packet's bytes stay in the
    /// buffer until the next call.
    fn locate_next(&mut self) -> Option<Result<Located, PcapError>> {
        let number = self.count + 1;
        let path = &self.path;
        let input = &mut self.input;
        let read_err = |source| PcapError::Read {
            path: path.clone(),
            packet: number,
            source,
        };
        let truncated = || PcapError::Truncated {
            path: path.clone(),
            packet: number,
        };
        match &mut self.format {
            Format::Pcap(format) => {
                match input.fill(16) {
                    Ok(true) => {}
                    Ok(false) if input.available().is_empty() => return None,
                    Ok(false) => return Some(Err(truncated())),
                    Err(e) => return Some(Err(read_err(e))),
                }
                let header = input.available();
                let ts_sec = format.u32_at(header, 0);
                let ts_frac = format.u32_at(header, 4);
                let incl_len = format.u32_at(header, 8);
                let orig_len = format.u32_at(header, 12);
                let len = incl_len as usize;
                if len > MAX_RECORD {
                    return Some(Err(too_large(path, number, len)));
                }
                match input.fill(16 + len) {
                    Ok(true) => {}
                    Ok(false) => return Some(Err(truncated())),
                    Err(e) => return Some(Err(read_err(e))),
                }
                let frac_nanos = if format.nanos {
                    u64::from(ts_frac)
                } else {
                    u64::from(ts_frac) * 1_000
                };
                let start = input.start + 16;
                input.consume(16 + len);
                if frac_nanos >= 1_000_000_000 {
                    return Some(Err(PcapError::BadRecord {
                        path: path.clone(),
                        packet: number,
                        detail: format!(
                            "sub-second timestamp field {ts_frac} is out of range (at most {})",
                            if format.nanos { 999_999_999 } else { 999_999 }
                        ),
                    }));
                }
                let (kept, original_len) = strip_fcs(len, orig_len.max(incl_len), format.fcs_len);
                Some(Ok(Located {
                    // frac_nanos < 10^9: the nanoseconds fit in u32.
                    timestamp: Duration::new(
                        u64::from(ts_sec),
                        u32::try_from(frac_nanos).unwrap_or(0),
                    ),
                    link: format.link,
                    data: DataAt::Buffer { start, len: kept },
                    original_len,
                    interface: 0,
                }))
            }
            Format::PcapNg {
                parser,
                interfaces,
                last_timestamp,
            } => loop {
                match input.fill(12) {
                    Ok(true) => {}
                    Ok(false) if input.available().is_empty() => return None,
                    Ok(false) => return Some(Err(truncated())),
                    Err(e) => return Some(Err(read_err(e))),
                }
                let len =
                    ng_block_len(input.available(), parser.section().endianness).unwrap_or(12);
                if len > MAX_RECORD {
                    return Some(Err(too_large(path, number, len)));
                }
                match input.fill(len) {
                    Ok(true) => {}
                    Ok(false) => return Some(Err(truncated())),
                    Err(e) => return Some(Err(read_err(e))),
                }
                let window = &input.buf[input.start..input.end];
                let (rest, block) = match parser.next_block(window) {
                    Ok(parsed) => parsed,
                    Err(e) => return Some(Err(PcapError::from_lib(path, number, e))),
                };
                let next_start = input.start + (window.len() - rest.len());
                // (interface, raw timestamp or None for a Simple Packet Block, data,
                // original length)
                let (interface, raw_ts, data, original_len) = match block {
                    Block::SectionHeader(_) => {
                        interfaces.clear();
                        input.start = next_start;
                        continue;
                    }
                    Block::InterfaceDescription(idb) => {
                        interfaces.push(NgInterface::from_block(&idb));
                        input.start = next_start;
                        continue;
                    }
                    Block::EnhancedPacket(epb) => {
                        // pcap-file stores the raw 64-bit timestamp as that many
                        // nanoseconds; take the raw value back and apply the interface's
                        // resolution below.
                        let raw = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                        (epb.interface_id, Some(raw), epb.data, epb.original_len)
                    }
                    Block::Packet(pb) => (
                        u32::from(pb.interface_id),
                        Some(pb.timestamp),
                        pb.data,
                        pb.original_len,
                    ),
                    Block::SimplePacket(spb) => (0, None, spb.data, spb.original_len),
                    _ => {
                        input.start = next_start;
                        continue;
                    }
                };
                let Some(iface) = interfaces.get(interface as usize) else {
                    return Some(Err(PcapError::Malformed {
                        path: path.clone(),
                        packet: number,
                        detail: format!(
                            "packet refers to interface {interface}, but the section describes {}",
                            interfaces.len()
                        ),
                    }));
                };
                let mut len = data.len();
                if raw_ts.is_none() {
                    // A Simple Packet Block's data is padded to 4 bytes and cut at the
                    // interface's snapshot length.
                    len = len.min(original_len as usize);
                    if iface.snaplen != 0 {
                        len = len.min(iface.snaplen as usize);
                    }
                }
                let (len, original_len) = strip_fcs(len, original_len, iface.fcs_len);
                let at = match data {
                    Cow::Borrowed(d) => {
                        // The block borrows the read buffer: locate its data there.
                        let offset =
                            (d.as_ptr() as usize).wrapping_sub(input.buf.as_ptr() as usize);
                        DataAt::Buffer { start: offset, len }
                    }
                    Cow::Owned(mut d) => {
                        d.truncate(len);
                        input.scratch = d;
                        DataAt::Scratch
                    }
                };
                let timestamp = raw_ts.map_or(*last_timestamp, |raw| iface.timestamp(raw));
                *last_timestamp = timestamp;
                let link = iface.link;
                input.start = next_start;
                let captured = u32::try_from(len).unwrap_or(u32::MAX);
                return Some(Ok(Located {
                    timestamp,
                    link,
                    data: at,
                    original_len: original_len.max(captured),
                    interface,
                }));
            },
        }
    }
}

impl Iterator for PcapPackets {
    type Item = Result<Packet, PcapError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_ref().map(|r| r.map(|p| p.to_packet()))
    }
}

impl std::iter::FusedIterator for PcapPackets {}

/// The error for a record whose length field exceeds [`MAX_RECORD`].
fn too_large(path: &Path, packet: u64, len: usize) -> PcapError {
    PcapError::Malformed {
        path: path.to_path_buf(),
        packet,
        detail: format!("record of {len} bytes exceeds the {MAX_RECORD}-byte limit"),
    }
}

/// Total length of the pcapng block at the start of `bytes` (its header's length field, in
/// the section's byte order; a Section Header Block says its own order), or `None` when
/// `bytes` is shorter than a block header.
fn ng_block_len(bytes: &[u8], section: Endianness) -> Option<usize> {
    let word = |at: usize, big: bool| -> Option<u32> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let big = if word(0, true)? == NG_SECTION_HEADER {
        // Byte-order magic 0x1A2B3C4D as written by the section's writer.
        word(8, true)? == 0x1a2b_3c4d
    } else {
        section == Endianness::Big
    };
    usize::try_from(word(4, big)?).ok()
}

/// Timestamp resolution of a pcap file written by [`PcapWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolution {
    /// Microseconds (magic `a1b2c3d4`), the classic format every tool reads.
    Micro,
    /// Nanoseconds (magic `a1b23c4d`).
    #[default]
    Nano,
}

/// Link-layer type (DLT) of Ethernet frames.
pub const DLT_EN10MB: u32 = 1;

/// Snapshot length written in the file header: the largest frame [`PcapWriter`] accepts.
const WRITER_SNAPLEN: u32 = 262_144;

/// Writes a classic pcap file (native byte order), for tests and benchmarks.
pub struct PcapWriter {
    path: PathBuf,
    writer: pcap_file::pcap::PcapWriter<BufWriter<File>>,
}

impl std::fmt::Debug for PcapWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PcapWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl PcapWriter {
    /// Creates (or truncates) `path` as an Ethernet pcap file with nanosecond timestamps.
    pub fn create(path: &Path) -> Result<PcapWriter, PcapError> {
        Self::create_with(path, Resolution::Nano, DLT_EN10MB)
    }

    /// Creates (or truncates) `path` as a pcap file with the given timestamp resolution and
    /// link type (`dlt`, e.g. [`DLT_EN10MB`], 113 Linux cooked, 276 Linux cooked v2,
    /// 101 raw IP).
    pub fn create_with(
        path: &Path,
        resolution: Resolution,
        dlt: u32,
    ) -> Result<PcapWriter, PcapError> {
        let file = File::create(path).map_err(|source| PcapError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let header = PcapHeader {
            snaplen: WRITER_SNAPLEN,
            datalink: DataLink::from(dlt),
            ts_resolution: match resolution {
                Resolution::Micro => TsResolution::MicroSecond,
                Resolution::Nano => TsResolution::NanoSecond,
            },
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let writer = pcap_file::pcap::PcapWriter::with_header(BufWriter::new(file), header)
            .map_err(|e| PcapError::Write {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        Ok(PcapWriter {
            path: path.to_path_buf(),
            writer,
        })
    }

    /// Appends one complete frame captured at `ts` (since the Unix epoch; sub-microsecond
    /// digits are dropped in a microsecond file).
    pub fn write(&mut self, ts: Duration, frame: &[u8]) -> Result<(), PcapError> {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        self.write_truncated(ts, frame, len)
    }

    /// Appends a frame of which only `captured` was kept (snapshot length): the record
    /// says the frame was `original_len` bytes long on the wire.
    pub fn write_truncated(
        &mut self,
        ts: Duration,
        captured: &[u8],
        original_len: u32,
    ) -> Result<(), PcapError> {
        let packet = PcapPacket::new(ts, original_len, captured);
        self.writer
            .write_packet(&packet)
            .map_err(|e| PcapError::Write {
                path: self.path.clone(),
                detail: e.to_string(),
            })?;
        Ok(())
    }

    /// Flushes and closes the file.
    pub fn finish(self) -> Result<(), PcapError> {
        let path = self.path;
        let file = self
            .writer
            .into_writer()
            .into_inner()
            .map_err(|e| PcapError::Write {
                path: path.clone(),
                detail: e.error().to_string(),
            })?;
        file.sync_all().map_err(|e| PcapError::Write {
            path,
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use pcap_file::pcapng::PcapNgWriter;
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::simple_packet::SimplePacketBlock;

    use super::*;

    fn frame(n: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| n.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn pcap_round_trip_nano_and_micro() {
        let dir = tempfile::tempdir().unwrap();
        for (res, expect_nanos) in [
            (Resolution::Nano, 123_456_789),
            (Resolution::Micro, 123_456_000),
        ] {
            let path = dir.path().join("a.pcap");
            let mut w = PcapWriter::create_with(&path, res, DLT_EN10MB).unwrap();
            w.write(Duration::new(1_700_000_000, 123_456_789), &frame(1, 60))
                .unwrap();
            w.write(Duration::new(1_700_000_001, 0), &frame(2, 1514))
                .unwrap();
            w.write_truncated(Duration::new(1_700_000_002, 5_000), &frame(3, 96), 1500)
                .unwrap();
            w.finish().unwrap();

            let packets: Vec<Packet> = PcapPackets::open(&path)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(packets.len(), 3);
            assert_eq!(
                packets[0].timestamp,
                Duration::new(1_700_000_000, expect_nanos)
            );
            assert_eq!(packets[0].data, frame(1, 60));
            assert_eq!(packets[0].original_len, 60);
            assert_eq!(packets[0].link, Some(LinkType::Ethernet));
            assert_eq!(packets[0].interface, 0);
            assert_eq!(packets[1].data.len(), 1514);
            assert_eq!(packets[2].data, frame(3, 96));
            assert_eq!(packets[2].original_len, 1500);
            assert_eq!(packets[2].timestamp, Duration::new(1_700_000_002, 5_000));
        }
    }

    #[test]
    fn pcap_other_link_types() {
        let dir = tempfile::tempdir().unwrap();
        for (dlt, link) in [
            (113, Some(LinkType::LinuxSll)),
            (276, Some(LinkType::LinuxSll2)),
            (101, Some(LinkType::RawIp)),
            (105, None), // 802.11: not supported, not an error
        ] {
            let path = dir.path().join(format!("{dlt}.pcap"));
            let mut w = PcapWriter::create_with(&path, Resolution::Micro, dlt).unwrap();
            w.write(Duration::from_secs(5), &frame(0, 40)).unwrap();
            w.finish().unwrap();
            let r = PcapPackets::open(&path).unwrap();
            assert_eq!(r.pcap_link(), link, "dlt {dlt}");
            let p: Vec<Packet> = r.collect::<Result<_, _>>().unwrap();
            assert_eq!(p.len(), 1);
            assert_eq!(p[0].link, link, "dlt {dlt}");
        }
    }

    /// A little-endian microsecond pcap file with the given link-type field and records
    /// of (captured bytes, original length).
    fn raw_pcap(linktype_field: u32, records: &[(&[u8], u32)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for v in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65535, linktype_field] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        for (i, (data, orig)) in records.iter().enumerate() {
            for v in [1_700_000_000 + i as u32, 0, data.len() as u32, *orig] {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            bytes.extend_from_slice(data);
        }
        bytes
    }

    #[test]
    fn linktype_field_upper_bits_and_fcs_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fcs.pcap");
        let f = frame(7, 60);
        let mut with_fcs = f.clone();
        with_fcs.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        // Bits 16-25 are not part of the link type, and say nothing about an FCS.
        std::fs::write(&path, raw_pcap(0x03ff_0001, &[(&f, 60)])).unwrap();
        let r = PcapPackets::open(&path).unwrap();
        assert_eq!(r.pcap_link(), Some(LinkType::Ethernet));
        let p: Vec<Packet> = r.collect::<Result<_, _>>().unwrap();
        assert_eq!(
            (p[0].data.as_slice(), p[0].original_len),
            (f.as_slice(), 60)
        );

        // F bit set, 2 words (4 bytes) of FCS: stripped from the data and the length. The
        // second frame was cut by the snapshot length inside its FCS (2 of 4 bytes kept),
        // the third before it.
        let field = 0x0400_0000 | (2 << 28) | 1;
        std::fs::write(
            &path,
            raw_pcap(
                field,
                &[(&with_fcs, 64), (&with_fcs[..62], 64), (&f[..40], 64)],
            ),
        )
        .unwrap();
        let r = PcapPackets::open(&path).unwrap();
        assert_eq!(r.pcap_link(), Some(LinkType::Ethernet));
        let p: Vec<Packet> = r.collect::<Result<_, _>>().unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(
            (p[0].data.as_slice(), p[0].original_len),
            (f.as_slice(), 60)
        );
        assert_eq!(
            (p[1].data.as_slice(), p[1].original_len),
            (f.as_slice(), 60)
        );
        assert_eq!((p[2].data.as_slice(), p[2].original_len), (&f[..40], 60));

        // The length bits without the F bit mean nothing.
        std::fs::write(&path, raw_pcap((2 << 28) | 1, &[(&with_fcs, 64)])).unwrap();
        let p: Vec<Packet> = PcapPackets::open(&path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(p[0].data, with_fcs);
    }

    #[test]
    fn fcs_stripping_arithmetic() {
        assert_eq!(strip_fcs(64, 64, 0), (64, 64));
        assert_eq!(strip_fcs(64, 64, 4), (60, 60));
        assert_eq!(strip_fcs(62, 64, 4), (60, 60));
        assert_eq!(strip_fcs(40, 64, 4), (40, 60));
        assert_eq!(strip_fcs(2, 2, 4), (0, 0));
        // An original length below the captured one counts as the captured one.
        assert_eq!(strip_fcs(64, 10, 4), (60, 60));
        assert_eq!(pcap_fcs_len(0xf400_0001), 30);
        assert_eq!(pcap_fcs_len(0xf000_0001), 0);
    }

    #[test]
    fn pcapng_if_fcslen_strips_the_fcs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fcs.pcapng");
        let f = frame(9, 60);
        let mut with_fcs = f.clone();
        with_fcs.extend_from_slice(&[1, 2, 3, 4]);
        {
            let file = File::create(&path).unwrap();
            let mut w = PcapNgWriter::new(file).unwrap();
            w.write_block(&idb(1, vec![InterfaceDescriptionOption::IfFcsLen(32)]))
                .unwrap();
            w.write_block(&idb(1, vec![])).unwrap();
            w.write_block(&epb(0, 1, &with_fcs)).unwrap();
            w.write_block(&epb(1, 2, &with_fcs)).unwrap();
        }
        let p: Vec<Packet> = PcapPackets::open(&path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            (p[0].data.as_slice(), p[0].original_len),
            (f.as_slice(), 60)
        );
        assert_eq!(p[1].data, with_fcs, "no if_fcslen: nothing stripped");
        assert_eq!(p[1].original_len, 64);
    }

    #[test]
    fn out_of_range_timestamp_skips_one_packet_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ts.pcap");
        let f = frame(1, 60);
        let mut bytes = raw_pcap(1, &[(&f, 60), (&f, 60), (&f, 60)]);
        // Packet 2's microseconds: 1,000,000.
        let at = 24 + 16 + 60 + 4;
        bytes[at..at + 4].copy_from_slice(&1_000_000u32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let results: Vec<_> = PcapPackets::open(&path).unwrap().collect();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[2].is_ok());
        let err = results[1].as_ref().unwrap_err();
        assert!(err.is_packet_skipped(), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("ts.pcap: packet 2 skipped") && msg.contains("1000000"),
            "{msg}"
        );
        assert_eq!(msg.matches("ts.pcap").count(), 1, "{msg}");
    }

    #[test]
    fn pcapng_unknown_blocks_and_options_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("unknown.pcapng");
        let f = frame(5, 60);
        // An Enhanced Packet Block of interface 0 (the writer does not know the interface
        // of a raw block).
        let raw_epb = |data: &[u8]| {
            let mut body = Vec::new();
            body.extend_from_slice(&0u32.to_le_bytes());
            body.extend_from_slice(&[0; 8]);
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(&(data.len() as u32).to_le_bytes());
            body.extend_from_slice(data);
            let len = 12 + body.len() as u32;
            pcap_file::pcapng::RawBlock {
                type_: 6,
                initial_len: len,
                body: Cow::Owned(body),
                trailer_len: len,
            }
        };
        {
            let file = File::create(&path).unwrap();
            let mut w = PcapNgWriter::with_endianness(file, Endianness::Little).unwrap();
            // An Interface Description Block for Ethernet with an option of unknown code
            // 0x7777, then the end of options.
            let mut body = Vec::new();
            body.extend_from_slice(&1u16.to_le_bytes());
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&0u32.to_le_bytes());
            body.extend_from_slice(&0x7777u16.to_le_bytes());
            body.extend_from_slice(&4u16.to_le_bytes());
            body.extend_from_slice(&[1, 2, 3, 4]);
            body.extend_from_slice(&[0; 4]);
            let len = 12 + body.len() as u32;
            w.write_raw_block(&pcap_file::pcapng::RawBlock {
                type_: 1,
                initial_len: len,
                body: Cow::Owned(body),
                trailer_len: len,
            })
            .unwrap();
            w.write_raw_block(&raw_epb(&f)).unwrap();
            let raw = pcap_file::pcapng::RawBlock {
                type_: 0x0000_0bad,
                initial_len: 16,
                body: Cow::Owned(vec![9; 4]),
                trailer_len: 16,
            };
            w.write_raw_block(&raw).unwrap();
            w.write_raw_block(&raw_epb(&f)).unwrap();
        }
        let p: Vec<Packet> = PcapPackets::open(&path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].data, f);
    }

    #[test]
    fn empty_capture_has_no_packets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pcap");
        PcapWriter::create(&path).unwrap().finish().unwrap();
        assert_eq!(PcapPackets::open(&path).unwrap().count(), 0);
    }

    #[test]
    fn truncated_record_names_file_and_packet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.pcap");
        let mut w = PcapWriter::create(&path).unwrap();
        for i in 0..3 {
            w.write(Duration::from_secs(i), &frame(i as u8, 100))
                .unwrap();
        }
        w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();

        let mut it = PcapPackets::open(&path).unwrap();
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_ok());
        let err = it.next().unwrap().unwrap_err();
        assert!(
            matches!(err, PcapError::Truncated { packet: 3, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("cut.pcap"), "{msg}");
        assert!(msg.contains("truncated record at packet 3"), "{msg}");
        assert!(it.next().is_none(), "the iterator ends after an error");

        // Cut inside a record header too.
        std::fs::write(&path, &bytes[..24 + 16 + 100 + 7]).unwrap();
        let results: Vec<_> = PcapPackets::open(&path).unwrap().collect();
        assert_eq!(results.len(), 2);
        assert!(matches!(
            results[1],
            Err(PcapError::Truncated { packet: 2, .. })
        ));
    }

    #[test]
    fn not_a_pcap_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, b"hello world, this is text").unwrap();
        let err = PcapPackets::open(&path).unwrap_err();
        assert!(matches!(err, PcapError::NotPcap { .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("notes.txt") && msg.contains("not a pcap or pcapng file"),
            "{msg}"
        );

        std::fs::write(&path, b"ab").unwrap();
        let err = PcapPackets::open(&path).unwrap_err();
        assert!(err.to_string().contains("only 2 bytes"), "{err}");

        let missing = dir.path().join("missing.pcap");
        let err = PcapPackets::open(&missing).unwrap_err();
        assert!(matches!(err, PcapError::Open { .. }));
        assert!(err.to_string().contains("missing.pcap"));

        // A pcap magic with a header cut short.
        std::fs::write(&path, [0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0]).unwrap();
        let err = PcapPackets::open(&path).unwrap_err();
        assert!(
            matches!(err, PcapError::Truncated { packet: 0, .. }),
            "{err:?}"
        );
    }

    fn idb(linktype: u32, options: Vec<InterfaceDescriptionOption<'static>>) -> Block<'static> {
        Block::InterfaceDescription(InterfaceDescriptionBlock {
            linktype: DataLink::from(linktype),
            snaplen: 0,
            options,
        })
    }

    fn epb(interface_id: u32, raw_ts: u64, data: &[u8]) -> Block<'_> {
        Block::EnhancedPacket(EnhancedPacketBlock {
            interface_id,
            timestamp: Duration::from_nanos(raw_ts),
            original_len: data.len() as u32,
            data: Cow::Borrowed(data),
            options: vec![],
        })
    }

    #[test]
    fn pcapng_interfaces_resolutions_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.pcapng");
        let f1 = frame(1, 60);
        let f2 = frame(2, 61);
        let f3 = frame(3, 62);
        let f4 = frame(4, 63);
        {
            let file = File::create(&path).unwrap();
            let mut w = PcapNgWriter::with_endianness(file, Endianness::Little).unwrap();
            // 0: Ethernet, default resolution (microseconds).
            w.write_block(&idb(1, vec![])).unwrap();
            // 1: raw IP, nanoseconds, offset +100 s.
            w.write_block(&idb(
                101,
                vec![
                    InterfaceDescriptionOption::IfTsResol(9),
                    InterfaceDescriptionOption::IfTsOffset(100),
                ],
            ))
            .unwrap();
            // 2: unsupported link type, 2^-10 s units.
            w.write_block(&idb(
                105,
                vec![InterfaceDescriptionOption::IfTsResol(0x80 | 10)],
            ))
            .unwrap();
            w.write_block(&epb(0, 1_700_000_000_250_000, &f1)).unwrap();
            w.write_block(&epb(1, 1_700_000_000_000_000_007, &f2))
                .unwrap();
            w.write_block(&epb(2, (1_700_000_000u64 << 10) + 512, &f3))
                .unwrap();
            w.write_block(&Block::SimplePacket(SimplePacketBlock {
                original_len: 63,
                data: Cow::Borrowed(&f4),
            }))
            .unwrap();
        }
        let packets: Vec<Packet> = PcapPackets::open(&path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(packets.len(), 4);
        assert_eq!(
            packets[0].timestamp,
            Duration::new(1_700_000_000, 250_000_000)
        );
        assert_eq!(packets[0].link, Some(LinkType::Ethernet));
        assert_eq!(packets[0].interface, 0);
        assert_eq!(packets[0].data, f1);
        assert_eq!(packets[1].timestamp, Duration::new(1_700_000_100, 7));
        assert_eq!(packets[1].link, Some(LinkType::RawIp));
        assert_eq!(packets[1].interface, 1);
        assert_eq!(
            packets[2].timestamp,
            Duration::new(1_700_000_000, 500_000_000)
        );
        assert_eq!(packets[2].link, None);
        assert_eq!(packets[2].interface, 2);
        // Simple Packet Block: interface 0, padding removed, previous timestamp.
        assert_eq!(packets[3].data, f4);
        assert_eq!(packets[3].interface, 0);
        assert_eq!(packets[3].timestamp, packets[2].timestamp);
    }

    #[test]
    fn pcapng_packet_without_interface_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pcapng");
        let f = frame(0, 60);
        {
            let file = File::create(&path).unwrap();
            let mut w = PcapNgWriter::with_endianness(file, Endianness::Big).unwrap();
            w.write_block(&idb(1, vec![])).unwrap();
            w.write_block(&epb(0, 1, &f)).unwrap();
            // Unchecked raw write of an EPB for interface 3.
            let mut body = Vec::new();
            body.extend_from_slice(&3u32.to_be_bytes());
            body.extend_from_slice(&[0; 8]);
            body.extend_from_slice(&60u32.to_be_bytes());
            body.extend_from_slice(&60u32.to_be_bytes());
            body.extend_from_slice(&f);
            let raw = pcap_file::pcapng::RawBlock {
                type_: 6,
                initial_len: 12 + body.len() as u32,
                body: Cow::Owned(body.clone()),
                trailer_len: 12 + body.len() as u32,
            };
            w.write_raw_block(&raw).unwrap();
        }
        let results: Vec<_> = PcapPackets::open(&path).unwrap().collect();
        assert_eq!(results.len(), 2);
        let err = results[1].as_ref().unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("packet 2") && msg.contains("interface 3"),
            "{msg}"
        );
    }

    #[test]
    fn pcapng_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.pcapng");
        let f = frame(0, 60);
        {
            let file = File::create(&path).unwrap();
            let mut w = PcapNgWriter::new(file).unwrap();
            w.write_block(&idb(1, vec![])).unwrap();
            w.write_block(&epb(0, 1, &f)).unwrap();
            w.write_block(&epb(0, 2, &f)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let results: Vec<_> = PcapPackets::open(&path).unwrap().collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        let err = results[1].as_ref().unwrap_err();
        assert!(
            matches!(err, PcapError::Truncated { packet: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn tick_conversion() {
        assert_eq!(
            ticks_to_duration(1_500_000, 6),
            Duration::new(1, 500_000_000)
        );
        assert_eq!(ticks_to_duration(1_500, 3), Duration::new(1, 500_000_000));
        assert_eq!(ticks_to_duration(15, 10), Duration::new(0, 1));
        assert_eq!(
            ticks_to_duration(3, 0x80 | 1),
            Duration::new(1, 500_000_000)
        );
        assert_eq!(ticks_to_duration(u64::MAX, 0x80 | 127), Duration::ZERO);
        assert_eq!(ticks_to_duration(u64::MAX, 127), Duration::ZERO);
        assert_eq!(ticks_to_duration(7, 0), Duration::from_secs(7));
    }

    #[test]
    fn packets_straddling_buffer_refills_are_read_whole() {
        // Many packets of varied sizes, one larger than the read buffer: records cross
        // every refill boundary, and the buffer has to grow once.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.pcap");
        let sizes: Vec<usize> = (0..3000)
            .map(|i| {
                if i == 1500 {
                    WRITER_SNAPLEN as usize
                } else {
                    60 + (i * 7919) % 1455
                }
            })
            .collect();
        let mut w = PcapWriter::create(&path).unwrap();
        for (i, &len) in sizes.iter().enumerate() {
            w.write(
                Duration::new(1_700_000_000 + i as u64, i as u32),
                &frame(i as u8, len),
            )
            .unwrap();
        }
        w.finish().unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 4 * READ_CHUNK as u64);

        let mut r = PcapPackets::open(&path).unwrap();
        let mut n = 0;
        while let Some(p) = r.next_ref() {
            let p = p.unwrap();
            assert_eq!(p.data, frame(n as u8, sizes[n]).as_slice(), "packet {n}");
            assert_eq!(p.original_len as usize, sizes[n]);
            assert_eq!(
                p.timestamp,
                Duration::new(1_700_000_000 + n as u64, n as u32)
            );
            n += 1;
        }
        assert_eq!(n, sizes.len());
        assert!(r.next_ref().is_none());
        // The owning iterator sees the same packets.
        let owned: Vec<Packet> = PcapPackets::open(&path)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(owned.len(), sizes.len());
        assert_eq!(owned[1500].data.len(), WRITER_SNAPLEN as usize);
    }

    #[test]
    fn big_endian_pcap() {
        // A nanosecond pcap written on a big-endian machine: header and records in network
        // byte order.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("be.pcap");
        let mut bytes = Vec::new();
        for v in [0xa1b2_3c4d_u32, 0x0002_0004, 0, 0, 65535, 1] {
            bytes.extend_from_slice(&v.to_be_bytes());
        }
        for (i, len) in [(0u32, 60u32), (1, 70)] {
            for v in [1_700_000_000 + i, 999_999_999, len, len + 100] {
                bytes.extend_from_slice(&v.to_be_bytes());
            }
            bytes.extend_from_slice(&frame(i as u8, len as usize));
        }
        std::fs::write(&path, &bytes).unwrap();
        let r = PcapPackets::open(&path).unwrap();
        assert_eq!(r.pcap_link(), Some(LinkType::Ethernet));
        let p: Vec<Packet> = r.collect::<Result<_, _>>().unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].timestamp, Duration::new(1_700_000_001, 999_999_999));
        assert_eq!(p[1].data, frame(1, 70));
        assert_eq!(p[1].original_len, 170);
    }

    #[test]
    fn absurd_record_length_is_malformed_not_allocated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.pcap");
        let mut w = PcapWriter::create(&path).unwrap();
        w.write(Duration::from_secs(1), &frame(0, 60)).unwrap();
        w.finish().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        // A second record claiming 3 GB of data.
        for v in [2u32, 0, 3_000_000_000, 3_000_000_000] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        let results: Vec<_> = PcapPackets::open(&path).unwrap().collect();
        assert_eq!(results.len(), 2);
        let err = results[1].as_ref().unwrap_err();
        assert!(
            matches!(err, PcapError::Malformed { packet: 2, .. })
                && err.to_string().contains("exceeds"),
            "{err}"
        );
    }

    #[test]
    fn pcapng_blocks_straddling_buffer_refills() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("many.pcapng");
        let frames: Vec<Vec<u8>> = (0..2000)
            .map(|i| frame(i as u8, 60 + (i * 31) % 1400))
            .collect();
        {
            let file = File::create(&path).unwrap();
            let mut w = PcapNgWriter::with_endianness(file, Endianness::Big).unwrap();
            w.write_block(&idb(1, vec![InterfaceDescriptionOption::IfTsResol(9)]))
                .unwrap();
            for (i, f) in frames.iter().enumerate() {
                w.write_block(&epb(0, 1_700_000_000_000_000_000 + i as u64, f))
                    .unwrap();
            }
        }
        assert!(std::fs::metadata(&path).unwrap().len() > 4 * READ_CHUNK as u64);
        let mut r = PcapPackets::open(&path).unwrap();
        let mut n = 0;
        while let Some(p) = r.next_ref() {
            let p = p.unwrap();
            assert_eq!(p.data, frames[n].as_slice(), "packet {n}");
            assert_eq!(p.timestamp, Duration::new(1_700_000_000, n as u32));
            n += 1;
        }
        assert_eq!(n, frames.len());
    }
}
