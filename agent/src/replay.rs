//! `--replay`: reads a pcap/pcapng file and turns its packets into flow records, using the
//! packet timestamps as the clock, as fast as the file can be read.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::Duration;

use flowlog_formats::FlowRecord;

use crate::config::AgentSettings;
use crate::decode::decode_captured_frame;
use crate::flow::{
    FlowTable, FlowTableSettings, InterfaceInfo, KeyedPacket, OBSERVE_BATCH, RecordSink,
};
use crate::pcap::{PcapError, PcapPackets};
use crate::prepare::prepare;

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Packets read from the file.
    pub packets: u64,
    /// Packets not counted on any flow, by reason (`not_ip`, `truncated`, …).
    pub skipped: BTreeMap<&'static str, u64>,
    /// Records emitted (after the traffic filter).
    pub records: u64,
    /// The warnings printed for skipped records: the first [`RECORD_WARNINGS`], then one
    /// line saying how many more there were.
    pub warnings: Vec<String>,
}

/// Skipped records warned about one by one; past that, a broken file gets a single
/// summary line at the end of the replay.
pub const RECORD_WARNINGS: usize = 3;

/// Failure of a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The capture file could not be read.
    #[error(transparent)]
    Pcap(#[from] PcapError),
    /// No interface is configured with a MAC address.
    #[error(
        "--replay needs at least one [[interface]] with `mac` (a capture file does not say which side is the host)"
    )]
    NoInterface,
    /// Writing a record failed.
    #[error("writing records failed")]
    Output(#[source] io::Error),
}

/// Replays `path`, handing every record to `emit` in interval order per interface. Packets
/// of pcapng interface N belong to the N-th configured interface (classic pcap: the first).
pub fn replay(
    settings: &AgentSettings,
    path: &Path,
    emit: &mut dyn FnMut(FlowRecord) -> io::Result<()>,
) -> Result<ReplayStats, ReplayError> {
    let interfaces: Vec<InterfaceInfo> = settings
        .interfaces
        .iter()
        .filter_map(|i| {
            Some(InterfaceInfo {
                interface_id: i.interface_id.as_str().into(),
                account_id: settings.account_id.clone(),
                mac: i.mac?,
                primary_v4: i.primary_v4,
                primary_v6: i.primary_v6,
            })
        })
        .collect();
    if interfaces.is_empty() {
        return Err(ReplayError::NoInterface);
    }
    let table_settings = FlowTableSettings {
        interval_secs: settings.interval_secs,
        max_flows: settings.max_flows,
    };
    let mut tables: Vec<Option<FlowTable>> = interfaces.iter().map(|_| None).collect();
    let mut last = Duration::ZERO;
    let mut deliver =
        |out: &mut Vec<FlowRecord>, stats: &mut ReplayStats| -> Result<(), ReplayError> {
            for mut r in out.drain(..) {
                if !prepare(settings, &mut r) {
                    continue;
                }
                emit(r).map_err(ReplayError::Output)?;
                stats.records += 1;
            }
            Ok(())
        };
    let mut delivery = Delivery {
        out: Vec::with_capacity(DELIVERY_BATCH),
        deliver: &mut deliver,
        stats: ReplayStats::default(),
        error: None,
    };
    let mut packets = PcapPackets::open(path)?;
    // Packets keyed by their table (the one at `keyed_table`) and not yet counted: the
    // table looks the flows of a batch up together.
    let mut keyed: Vec<KeyedPacket> = Vec::with_capacity(OBSERVE_BATCH);
    let mut keyed_table = 0;
    while let Some(packet) = packets.next_ref() {
        let packet = match packet {
            Ok(packet) => packet,
            Err(e) if e.is_packet_skipped() => {
                delivery.stats.packets += 1;
                delivery.skip("bad_record");
                if delivery.stats.warnings.len() < RECORD_WARNINGS {
                    let warning = format!("warning: {e}");
                    eprintln!("{warning}");
                    delivery.stats.warnings.push(warning);
                }
                continue;
            }
            Err(e) => {
                // What was read before the error still counts.
                if let Some(table) = tables.get_mut(keyed_table).and_then(Option::as_mut) {
                    table.observe_keyed(&keyed, &mut delivery);
                }
                delivery.flush()?;
                return Err(e.into());
            }
        };
        delivery.stats.packets += 1;
        last = last.max(packet.timestamp);
        let Some(link) = packet.link else {
            delivery.skip("unsupported_link_type");
            continue;
        };
        // The pcap record's original length bounds the bytes a packet may claim.
        let wire_len = usize::try_from(packet.original_len).unwrap_or(usize::MAX);
        let meta = match decode_captured_frame(link, packet.data, wire_len) {
            Ok(meta) => meta,
            Err(reason) => {
                delivery.skip(reason.as_str());
                continue;
            }
        };
        let index = usize::try_from(packet.interface)
            .unwrap_or(0)
            .min(interfaces.len() - 1);
        if tables[index].is_none() {
            tables[index] = Some(FlowTable::new_at(
                interfaces[index].clone(),
                table_settings,
                packet.timestamp,
            ));
        }
        if index != keyed_table || keyed.len() == OBSERVE_BATCH {
            if let Some(table) = tables.get_mut(keyed_table).and_then(Option::as_mut) {
                table.observe_keyed(&keyed, &mut delivery);
            }
            keyed.clear();
            delivery.flush()?;
            keyed_table = index;
        }
        if let Some(table) = tables[index].as_mut() {
            keyed.push(table.key_packet(&meta, packet.timestamp));
        }
    }
    if let Some(table) = tables.get_mut(keyed_table).and_then(Option::as_mut) {
        table.observe_keyed(&keyed, &mut delivery);
    }
    delivery.flush()?;
    for table in tables.iter_mut().flatten() {
        table.flush_all(last, &mut delivery);
        delivery.flush()?;
    }
    let bad = delivery
        .stats
        .skipped
        .get("bad_record")
        .copied()
        .unwrap_or(0);
    let unreported = bad.saturating_sub(RECORD_WARNINGS as u64);
    if unreported > 0 {
        let warning = format!(
            "warning: {}: {unreported} more packets skipped for bad records ({bad} in all)",
            path.display()
        );
        eprintln!("{warning}");
        delivery.stats.warnings.push(warning);
    }
    Ok(delivery.stats)
}

/// Records handed to the output per call of the delivery function: an interval's records
/// are encoded as they are produced, never all held at once.
const DELIVERY_BATCH: usize = 256;

/// The [`RecordSink`] of a replay: collects the flow tables' records and delivers them in
/// batches of [`DELIVERY_BATCH`]. A delivery error stops the collection;
/// [`Delivery::flush`] returns it.
struct Delivery<F> {
    out: Vec<FlowRecord>,
    deliver: F,
    stats: ReplayStats,
    error: Option<ReplayError>,
}

impl<F> Delivery<F>
where
    F: FnMut(&mut Vec<FlowRecord>, &mut ReplayStats) -> Result<(), ReplayError>,
{
    /// Counts a packet that was not accounted.
    fn skip(&mut self, reason: &'static str) {
        *self.stats.skipped.entry(reason).or_insert(0) += 1;
    }

    /// Delivers what is collected; returns the first delivery error.
    fn flush(&mut self) -> Result<(), ReplayError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if !self.out.is_empty() {
            (self.deliver)(&mut self.out, &mut self.stats)?;
            self.out.clear();
        }
        Ok(())
    }
}

impl<F> RecordSink for Delivery<F>
where
    F: FnMut(&mut Vec<FlowRecord>, &mut ReplayStats) -> Result<(), ReplayError>,
{
    fn push_record(&mut self, record: FlowRecord) {
        if self.error.is_some() {
            return;
        }
        self.out.push(record);
        if self.out.len() >= DELIVERY_BATCH {
            if let Err(e) = (self.deliver)(&mut self.out, &mut self.stats) {
                self.error = Some(e);
            }
            self.out.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::decode::{LinkType, decode_frame};
    use crate::pcap::PcapWriter;
    use flowlog_tests::frames::{self, TCP_ACK};

    const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x0a];
    const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
    /// 2024-01-01T00:00:00Z, a multiple of 60.
    const T0: u64 = 1_704_067_200;

    fn settings(dir: &Path) -> AgentSettings {
        let path = dir.join("agent.toml");
        std::fs::write(
            &path,
            "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\n\
             region = \"eu-west-3\"\nmax_aggregation_interval = \"60s\"\n\
             [[interface]]\nname = \"eth0\"\ninterface_id = \"eni-0123456789abcdef0\"\n\
             mac = \"02:00:00:00:00:0a\"\naddresses = [\"10.0.0.10\"]\n",
        )
        .unwrap();
        crate::config::load(&path).unwrap()
    }

    /// 600 flows (more than a delivery batch) over three intervals, in both directions,
    /// with a non-IP frame among them; returns the frames with their times.
    fn capture(path: &Path) -> Vec<(Duration, Vec<u8>)> {
        let mut frames = Vec::new();
        for i in 0..6000u32 {
            let flow = i % 600;
            let remote = Ipv4Addr::from(0xcb00_7100 + flow);
            let port = 20_000 + flow as u16;
            let frame = if (i / 600) % 2 == 0 {
                frames::tcp_v4(GW_MAC, HOST_MAC, remote, HOST, port, 443, TCP_ACK, 100)
            } else {
                frames::tcp_v4(HOST_MAC, GW_MAC, HOST, remote, 443, port, TCP_ACK, 1000)
            };
            let at = Duration::from_secs(T0) + Duration::from_millis(u64::from(i) * 30);
            frames.push((at, frame));
        }
        frames.insert(
            3000,
            (
                frames[3000].0,
                frames::ethernet(GW_MAC, [0xff; 6], frames::ETHERTYPE_ARP, &[0; 28]),
            ),
        );
        let mut w = PcapWriter::create(path).unwrap();
        for (at, f) in &frames {
            w.write(*at, f).unwrap();
        }
        w.finish().unwrap();
        frames
    }

    #[test]
    fn replay_gives_the_records_of_a_table_fed_one_packet_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let pcap = dir.path().join("flows.pcap");
        let frames = capture(&pcap);

        let mut got = Vec::new();
        let stats = replay(&settings, &pcap, &mut |r| {
            got.push(r);
            Ok(())
        })
        .unwrap();

        let i = &settings.interfaces[0];
        let info = InterfaceInfo {
            interface_id: i.interface_id.as_str().into(),
            account_id: settings.account_id.clone(),
            mac: HOST_MAC,
            primary_v4: i.primary_v4,
            primary_v6: i.primary_v6,
        };
        let table_settings = FlowTableSettings {
            interval_secs: settings.interval_secs,
            max_flows: settings.max_flows,
        };
        let mut table = FlowTable::new_at(info, table_settings, frames[0].0);
        let mut expected = Vec::new();
        for (at, f) in &frames {
            if let Ok(meta) = decode_frame(LinkType::Ethernet, f) {
                table.observe(&meta, *at, &mut expected);
            }
        }
        table.flush_all(frames[frames.len() - 1].0, &mut expected);
        expected.retain_mut(|r| prepare(&settings, r));

        assert_eq!(stats.packets, 6001);
        assert_eq!(stats.skipped.get("not_ip"), Some(&1));
        assert_eq!(stats.records, got.len() as u64);
        assert_eq!(
            got.len(),
            3 * 1200,
            "600 flows a direction in each of 3 intervals"
        );
        assert_eq!(got, expected);
    }

    /// Issue 16: a public capture gave one record of 3,858,694,250 bytes from a single
    /// frame. Lengths beyond a frame's original length are malformed and count nothing;
    /// a snap length still counts the whole packet.
    #[test]
    fn bytes_never_exceed_what_the_frames_allow() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let pcap = dir.path().join("hostile.pcap");
        let at = Duration::from_secs(T0 + 1);
        let remote = Ipv4Addr::new(203, 0, 113, 9);
        let mut w = PcapWriter::create(&pcap).unwrap();
        // A good 100-byte-payload packet, captured whole: 140 bytes.
        let good = frames::tcp_v4(GW_MAC, HOST_MAC, remote, HOST, 5000, 443, TCP_ACK, 100);
        w.write(at, &good).unwrap();
        // The same flow, 1000 bytes of payload, 54 of its 1054 bytes captured.
        let big = frames::tcp_v4(GW_MAC, HOST_MAC, remote, HOST, 5000, 443, TCP_ACK, 1000);
        w.write_truncated(at, &big[..54], big.len() as u32).unwrap();
        // An IPv4 total length of 60,000 in a 54-byte frame.
        let mut lying = frames::tcp_v4(GW_MAC, HOST_MAC, remote, HOST, 5000, 443, TCP_ACK, 0);
        lying[14 + 2..14 + 4].copy_from_slice(&60_000u16.to_be_bytes());
        w.write(at, &lying).unwrap();
        // A Jumbo Payload option claiming 3,858,694,210 bytes in a 90-byte frame.
        let jumbo = frames::ethernet(
            GW_MAC,
            HOST_MAC,
            frames::ETHERTYPE_IPV6,
            &frames::ipv6_jumbogram(
                "2001:db8::9".parse().unwrap(),
                "2001:db8::10".parse().unwrap(),
                frames::PROTO_UDP,
                3_858_694_210,
                &frames::udp(5000, 53, 20),
            ),
        );
        w.write(at, &jumbo).unwrap();
        w.finish().unwrap();

        let mut got = Vec::new();
        let stats = replay(&settings, &pcap, &mut |r| {
            got.push(r);
            Ok(())
        })
        .unwrap();
        assert_eq!(stats.packets, 4);
        assert_eq!(stats.skipped.get("bad_ip_header"), Some(&2), "{stats:?}");
        let flows: Vec<_> = got.iter().filter(|r| r.packets.is_some()).collect();
        assert_eq!(flows.len(), 1, "{got:#?}");
        assert_eq!(flows[0].packets, Some(2));
        assert_eq!(flows[0].bytes, Some(140 + 1040));
    }

    #[test]
    fn an_output_error_stops_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let settings = settings(dir.path());
        let pcap = dir.path().join("flows.pcap");
        capture(&pcap);
        let mut calls = 0;
        let result = replay(&settings, &pcap, &mut |_| {
            calls += 1;
            if calls == 3 {
                Err(io::Error::other("disk full"))
            } else {
                Ok(())
            }
        });
        assert!(matches!(result, Err(ReplayError::Output(_))), "{result:?}");
        assert_eq!(calls, 3, "nothing is written after the error");
    }
}
