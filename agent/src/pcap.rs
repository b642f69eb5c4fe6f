//! Reading and writing capture files: classic pcap and pcapng (read), pcap (write).
//!
//! [`PcapPackets`] reads either format (told apart by the file's magic number) and yields
//! one [`Packet`] per captured frame, with its timestamp, link type and interface.
//! [`PcapWriter`] writes classic pcap files, for tests and benchmarks.
//!
//! Parsing is done by the `pcap-file` crate; this module adds what it leaves to the caller:
//! pcapng timestamp units (`if_tsresol`, `if_tsoffset`: `pcap-file` 2 hands out raw
//! timestamp units as if they were nanoseconds), lenient packet lengths in classic pcap
//! (captures whose snapshot length is shorter than the packets are normal), and errors
//! that name the file and the packet.

use std::fs::File;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgReader};
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
}

impl NgInterface {
    fn from_block(idb: &InterfaceDescriptionBlock<'_>) -> Self {
        let mut iface = NgInterface {
            link: LinkType::from_pcap_linktype(u32::from(idb.linktype)),
            tsresol: 6,
            tsoffset: 0,
            snaplen: idb.snaplen,
        };
        for opt in &idb.options {
            match opt {
                InterfaceDescriptionOption::IfTsResol(r) => iface.tsresol = *r,
                InterfaceDescriptionOption::IfTsOffset(o) => {
                    iface.tsoffset = i64::from_ne_bytes(o.to_ne_bytes());
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

enum Source {
    Pcap {
        reader: PcapReader<File>,
        link: Option<LinkType>,
        resolution: TsResolution,
    },
    PcapNg {
        reader: Box<PcapNgReader<File>>,
        interfaces: Vec<NgInterface>,
        /// Timestamp of the last packet, given to Simple Packet Blocks (which have none).
        last_timestamp: Duration,
    },
}

/// Iterator over the packets of a pcap or pcapng file.
///
/// After the first error the iterator ends (returns `None`).
pub struct PcapPackets {
    path: PathBuf,
    source: Source,
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
                &match self.source {
                    Source::Pcap { .. } => "pcap",
                    Source::PcapNg { .. } => "pcapng",
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
        let open = || {
            File::open(path).map_err(|source| PcapError::Open {
                path: path.to_path_buf(),
                source,
            })
        };
        let mut magic = [0u8; 4];
        let mut file = open()?;
        let got = read_up_to(&mut file, &mut magic).map_err(|source| PcapError::Read {
            path: path.to_path_buf(),
            packet: 0,
            source,
        })?;
        drop(file);
        if got < magic.len() {
            return Err(PcapError::NotPcap {
                path: path.to_path_buf(),
                what: format!("the file is only {got} bytes long"),
            });
        }
        let header_err = |e| PcapError::from_lib(path, 0, e);
        let source = if magic == PCAPNG_MAGIC {
            let reader = PcapNgReader::new(open()?).map_err(header_err)?;
            Source::PcapNg {
                reader: Box::new(reader),
                interfaces: Vec::new(),
                last_timestamp: Duration::ZERO,
            }
        } else if PCAP_MAGICS.contains(&u32::from_be_bytes(magic)) {
            let reader = PcapReader::new(open()?).map_err(header_err)?;
            let header = reader.header();
            Source::Pcap {
                link: LinkType::from_pcap_linktype(u32::from(header.datalink)),
                resolution: header.ts_resolution,
                reader,
            }
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
            source,
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
        match &self.source {
            Source::Pcap { link, .. } => *link,
            Source::PcapNg { .. } => None,
        }
    }

    fn next_packet(&mut self) -> Option<Result<Packet, PcapError>> {
        let number = self.count + 1;
        let path = &self.path;
        match &mut self.source {
            Source::Pcap {
                reader,
                link,
                resolution,
            } => {
                let raw = match reader.next_raw_packet()? {
                    Ok(raw) => raw,
                    Err(e) => return Some(Err(PcapError::from_lib(path, number, e))),
                };
                let frac_nanos = match resolution {
                    TsResolution::MicroSecond => u64::from(raw.ts_frac) * 1_000,
                    TsResolution::NanoSecond => u64::from(raw.ts_frac),
                };
                if frac_nanos >= 1_000_000_000 {
                    return Some(Err(PcapError::Malformed {
                        path: path.clone(),
                        packet: number,
                        detail: format!("sub-second timestamp field {} is too large", raw.ts_frac),
                    }));
                }
                let timestamp =
                    Duration::from_secs(u64::from(raw.ts_sec)) + Duration::from_nanos(frac_nanos);
                Some(Ok(Packet {
                    timestamp,
                    link: *link,
                    original_len: raw.orig_len.max(raw.incl_len),
                    data: raw.data.into_owned(),
                    interface: 0,
                }))
            }
            Source::PcapNg {
                reader,
                interfaces,
                last_timestamp,
            } => loop {
                // (interface, raw timestamp or None for a Simple Packet Block, data,
                // original length)
                let block = match reader.next_block()? {
                    Ok(block) => block,
                    Err(e) => return Some(Err(PcapError::from_lib(path, number, e))),
                };
                let (interface, raw_ts, data, original_len) = match block {
                    Block::SectionHeader(_) => {
                        interfaces.clear();
                        continue;
                    }
                    Block::InterfaceDescription(idb) => {
                        interfaces.push(NgInterface::from_block(&idb));
                        continue;
                    }
                    Block::EnhancedPacket(epb) => {
                        // pcap-file stores the raw 64-bit timestamp as that many
                        // nanoseconds; take the raw value back and apply the interface's
                        // resolution below.
                        let raw = u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX);
                        (
                            epb.interface_id,
                            Some(raw),
                            epb.data.into_owned(),
                            epb.original_len,
                        )
                    }
                    Block::Packet(pb) => (
                        u32::from(pb.interface_id),
                        Some(pb.timestamp),
                        pb.data.into_owned(),
                        pb.original_len,
                    ),
                    Block::SimplePacket(spb) => (0, None, spb.data.into_owned(), spb.original_len),
                    _ => continue,
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
                let mut data = data;
                if raw_ts.is_none() {
                    // A Simple Packet Block's data is padded to 4 bytes and cut at the
                    // interface's snapshot length.
                    let mut len = data.len().min(original_len as usize);
                    if iface.snaplen != 0 {
                        len = len.min(iface.snaplen as usize);
                    }
                    data.truncate(len);
                }
                let timestamp = raw_ts.map_or(*last_timestamp, |raw| iface.timestamp(raw));
                *last_timestamp = timestamp;
                let captured = u32::try_from(data.len()).unwrap_or(u32::MAX);
                return Some(Ok(Packet {
                    timestamp,
                    link: iface.link,
                    data,
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
        if self.done {
            return None;
        }
        let item = self.next_packet();
        match &item {
            Some(Ok(_)) => self.count += 1,
            Some(Err(_)) | None => self.done = true,
        }
        item
    }
}

impl std::iter::FusedIterator for PcapPackets {}

/// Reads into `buf` until it is full or the reader is at its end; returns the bytes read.
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
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
}
