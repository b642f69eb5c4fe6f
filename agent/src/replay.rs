//! `--replay`: reads a pcap/pcapng file and turns its packets into flow records, using the
//! packet timestamps as the clock, as fast as the file can be read.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::Duration;

use flowlog_formats::FlowRecord;

use crate::config::AgentSettings;
use crate::decode::decode_frame;
use crate::flow::{FlowTable, FlowTableSettings, InterfaceInfo};
use crate::pcap::{PcapError, PcapPackets};

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Packets read from the file.
    pub packets: u64,
    /// Packets not counted on any flow, by reason (`not_ip`, `truncated`, …).
    pub skipped: BTreeMap<&'static str, u64>,
    /// Records emitted (after the traffic filter).
    pub records: u64,
}

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

/// Applies the flow log's settings to a record of a flow table: fills the region and says
/// whether the traffic filter keeps it.
pub fn prepare(settings: &AgentSettings, record: &mut FlowRecord) -> bool {
    record.region = Some(settings.region.clone());
    settings.traffic_type.keeps(record.action)
}

/// Replays `path`, handing every record to `emit` in interval order per interface. Packets
/// of pcapng interface N belong to the N-th configured interface (classic pcap: the first).
pub fn replay(
    settings: &AgentSettings,
    path: &Path,
    emit: &mut dyn FnMut(&FlowRecord) -> io::Result<()>,
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
    let mut stats = ReplayStats::default();
    let mut out = Vec::new();
    let mut last = Duration::ZERO;
    let mut deliver =
        |out: &mut Vec<FlowRecord>, stats: &mut ReplayStats| -> Result<(), ReplayError> {
            for mut r in out.drain(..) {
                if !settings.traffic_type.keeps(r.action) {
                    continue;
                }
                r.region = Some(settings.region.clone());
                emit(&r).map_err(ReplayError::Output)?;
                stats.records += 1;
            }
            Ok(())
        };
    for packet in PcapPackets::open(path)? {
        let packet = packet?;
        stats.packets += 1;
        last = last.max(packet.timestamp);
        let Some(link) = packet.link else {
            *stats.skipped.entry("unsupported_link_type").or_insert(0) += 1;
            continue;
        };
        let meta = match decode_frame(link, &packet.data) {
            Ok(meta) => meta,
            Err(reason) => {
                *stats.skipped.entry(reason.as_str()).or_insert(0) += 1;
                continue;
            }
        };
        let index = usize::try_from(packet.interface)
            .unwrap_or(0)
            .min(interfaces.len() - 1);
        let table = tables[index].get_or_insert_with(|| {
            FlowTable::new_at(interfaces[index].clone(), table_settings, packet.timestamp)
        });
        table.observe(&meta, packet.timestamp, &mut out);
        deliver(&mut out, &mut stats)?;
    }
    for table in tables.iter_mut().flatten() {
        table.flush_all(last, &mut out);
        deliver(&mut out, &mut stats)?;
    }
    Ok(stats)
}
