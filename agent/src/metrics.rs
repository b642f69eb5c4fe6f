//! The agent's Prometheus metrics (served on `[service].metrics_address`, next to the
//! publishing pipeline's in standalone mode).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use flowlog_formats::{FlowRecord, LogStatus};

use crate::capture::{CaptureStats, InterfaceCounters};

/// Labels `{interface}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct InterfaceLabels {
    /// OS interface name.
    pub interface: String,
}

/// Labels `{interface, reason}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SkipLabels {
    /// OS interface name.
    pub interface: String,
    /// Why the packet was not counted on a flow (`not_ip`, `truncated`, `table_full`, …).
    pub reason: &'static str,
}

/// Labels `{log_status}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    /// `OK`, `NODATA` or `SKIPDATA`.
    pub log_status: &'static str,
}

/// Labels `{outcome}` of NFLOG events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NflogLabels {
    /// What became of the event.
    pub outcome: &'static str,
}

/// Every metric of the agent. Handles are cheap clones sharing their values.
///
/// Capture and NFLOG counters are read from their sources at each scrape; the record
/// counters are counted here as records are emitted.
#[derive(Debug, Clone, Default)]
pub struct AgentMetrics {
    /// `flowlog_agent_records_total{log_status}`: records emitted (after the traffic
    /// filter).
    pub records: Family<StatusLabels, Counter>,
    /// `flowlog_agent_records_filtered_total`: records dropped by `flow_log.traffic_type`.
    pub records_filtered: Counter,
    capture: Arc<OnceLock<Arc<CaptureStats>>>,
}

/// Reads the capture and NFLOG counters at each scrape.
#[derive(Debug)]
struct LiveCollector {
    capture: Arc<OnceLock<Arc<CaptureStats>>>,
}

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let interfaces = self
            .capture
            .get()
            .map(|s| s.interfaces())
            .unwrap_or_default();
        type Pick = fn(&InterfaceCounters) -> u64;
        let per_interface: [(&str, &str, MetricType, Pick); 6] = [
            (
                "flowlog_agent_packets",
                "Frames read from the interface",
                MetricType::Counter,
                |c| c.packets,
            ),
            (
                "flowlog_agent_bytes",
                "Bytes of the frames read from the interface",
                MetricType::Counter,
                |c| c.bytes,
            ),
            (
                "flowlog_agent_kernel_drops",
                "Packets the kernel dropped before the agent read them (reported as SKIPDATA)",
                MetricType::Counter,
                |c| c.kernel_drops,
            ),
            (
                "flowlog_agent_queue_dropped_records",
                "Records dropped because the output queue stayed full (reported as SKIPDATA)",
                MetricType::Counter,
                |c| c.queue_dropped_records,
            ),
            (
                "flowlog_agent_flows_live",
                "Flows in the open aggregation interval",
                MetricType::Gauge,
                |c| c.live_flows,
            ),
            (
                "flowlog_agent_capture_threads",
                "Capture threads running on the interface",
                MetricType::Gauge,
                |c| c.threads,
            ),
        ];
        for (name, help, kind, pick) in per_interface {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (interface, counters) in &interfaces {
                let labels = InterfaceLabels {
                    interface: interface.clone(),
                };
                let value = pick(counters);
                let metric = family.encode_family(&labels)?;
                match kind {
                    MetricType::Gauge => {
                        ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)?
                    }
                    _ => ConstCounter::new(value).encode(metric)?,
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "flowlog_agent_skipped_packets",
            "Frames not counted on any flow, by reason",
            None,
            MetricType::Counter,
        )?;
        for (interface, counters) in &interfaces {
            let reasons = counters
                .skipped
                .iter()
                .map(|(reason, n)| (reason.as_str(), *n))
                .chain([("table_full", counters.table_full)]);
            for (reason, n) in reasons {
                let labels = SkipLabels {
                    interface: interface.clone(),
                    reason,
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let c = &crate::nflog::COUNTERS;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut family = encoder.encode_descriptor(
            "flowlog_agent_nflog_events",
            "Host firewall drop events read from the NFLOG group, by outcome",
            None,
            MetricType::Counter,
        )?;
        for (outcome, value) in [
            ("routed", get(&c.routed)),
            ("other_interface", get(&c.other_interface)),
            ("undecodable", get(&c.undecodable)),
            ("late", get(&c.late)),
            ("lost", get(&c.lost)),
        ] {
            ConstCounter::new(value).encode(family.encode_family(&NflogLabels { outcome })?)?;
        }
        Ok(())
    }
}

impl AgentMetrics {
    /// Creates the metrics, every `log_status` series at 0.
    pub fn new() -> AgentMetrics {
        let m = AgentMetrics::default();
        for log_status in ["OK", "NODATA", "SKIPDATA"] {
            drop(m.records.get_or_create(&StatusLabels { log_status }));
        }
        m
    }

    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        // prometheus-client appends `_total` to counter names.
        registry.register(
            "flowlog_agent_records",
            "Flow log records emitted, by log-status",
            self.records.clone(),
        );
        registry.register(
            "flowlog_agent_records_filtered",
            "Records dropped by the traffic filter",
            self.records_filtered.clone(),
        );
        registry.register_collector(Box::new(LiveCollector {
            capture: Arc::clone(&self.capture),
        }));
    }

    /// Makes the capture counters part of the metrics (once capture has started).
    pub fn set_capture(&self, stats: Arc<CaptureStats>) {
        let _ = self.capture.set(stats);
    }

    /// Counts one emitted record.
    pub fn observe_record(&self, record: &FlowRecord) {
        let log_status = match record.log_status {
            Some(LogStatus::NoData) => "NODATA",
            Some(LogStatus::SkipData) => "SKIPDATA",
            Some(LogStatus::Ok) | None => "OK",
        };
        self.records
            .get_or_create(&StatusLabels { log_status })
            .inc();
    }

    /// Renders the metrics alone as OpenMetrics text (for tests and `--stdout` runs).
    pub fn encode(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_counted_by_log_status() {
        let m = AgentMetrics::new();
        m.observe_record(&FlowRecord::no_data(None, None, 0, 59));
        m.observe_record(&FlowRecord::skip_data(None, None, 0, 59));
        m.observe_record(&FlowRecord::skip_data(None, None, 60, 119));
        let text = m.encode();
        assert!(
            text.contains("flowlog_agent_records_total{log_status=\"SKIPDATA\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("flowlog_agent_records_total{log_status=\"NODATA\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("flowlog_agent_records_total{log_status=\"OK\"} 0"),
            "{text}"
        );
    }
}
