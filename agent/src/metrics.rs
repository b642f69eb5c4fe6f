//! The agent's Prometheus metrics (served on `[service].metrics_address`: next to the
//! publishing pipeline's in standalone mode, by the agent's own endpoint when shipping to an
//! aggregator).

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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

/// Labels `{duplicate}` of acknowledged batches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct AckLabels {
    /// `true` when the aggregator already had the batch.
    pub duplicate: &'static str,
}

/// Labels `{endpoint}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The endpoint URL as configured.
    pub endpoint: String,
}

/// Labels `{endpoint, code}` of failed pushes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FailureLabels {
    /// The endpoint URL as configured.
    pub endpoint: String,
    /// The gRPC status (`unauthenticated`, `unavailable`, …), `timeout` (no reply within
    /// `push_timeout`) or `transport` (the connection failed).
    pub code: &'static str,
}

/// Metrics of the delivery to aggregators (`[aggregator]` set).
#[derive(Debug, Clone, Default)]
pub struct ShipMetrics {
    /// `flowlog_agent_batches_sent_total`: pushes made (first sends and retries).
    pub batches_sent: Counter,
    /// `flowlog_agent_batches_acked_total{duplicate}`: batches acknowledged.
    pub batches_acked: Family<AckLabels, Counter>,
    /// `flowlog_agent_batches_retried_total`: pushes of a batch sent before.
    pub batches_retried: Counter,
    /// `flowlog_agent_push_failures_total{endpoint,code}`: pushes that were not acked.
    pub push_failures: Family<FailureLabels, Counter>,
    /// `flowlog_agent_spool_bytes`: bytes of the spool's segment files.
    pub spool_bytes: Gauge,
    /// `flowlog_agent_spool_batches`: batches in the spool awaiting their ack.
    pub spool_batches: Gauge,
    /// `flowlog_agent_spool_dropped_records_total`: records not kept because the spool
    /// was full (replaced by SKIPDATA records).
    pub spool_dropped_records: Counter,
    /// `flowlog_agent_spool_corrupt_bytes_total`: bytes of damaged spool segments skipped
    /// at startup (the batches in them are reported as SKIPDATA unless acknowledged).
    pub spool_corrupt_bytes: Counter,
    /// `flowlog_agent_endpoint_up{endpoint}`: 1 while connected to the endpoint.
    pub endpoint_up: Family<EndpointLabels, Gauge>,
    /// `flowlog_agent_pinned_batches`: batches whose outcome at an endpoint is unknown,
    /// retried only there.
    pub pinned_batches: Gauge,
}

impl ShipMetrics {
    /// Creates the metrics with a series per endpoint and per `duplicate` value.
    pub fn new(endpoints: &[String]) -> ShipMetrics {
        let m = ShipMetrics::default();
        for duplicate in ["false", "true"] {
            drop(m.batches_acked.get_or_create(&AckLabels { duplicate }));
        }
        for endpoint in endpoints {
            drop(m.endpoint_up.get_or_create(&EndpointLabels {
                endpoint: endpoint.clone(),
            }));
        }
        m
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "flowlog_agent_batches_sent",
            "Batches pushed to an aggregator (first sends and retries)",
            self.batches_sent.clone(),
        );
        registry.register(
            "flowlog_agent_batches_acked",
            "Batches acknowledged by an aggregator; duplicate=true when it already had them",
            self.batches_acked.clone(),
        );
        registry.register(
            "flowlog_agent_batches_retried",
            "Pushes of a batch that was sent before",
            self.batches_retried.clone(),
        );
        registry.register(
            "flowlog_agent_push_failures",
            "Pushes not acknowledged, by endpoint and gRPC status (timeout, transport: no reply)",
            self.push_failures.clone(),
        );
        registry.register(
            "flowlog_agent_spool_bytes",
            "Bytes of the spool's segment files",
            self.spool_bytes.clone(),
        );
        registry.register(
            "flowlog_agent_spool_batches",
            "Batches in the spool awaiting their acknowledgement",
            self.spool_batches.clone(),
        );
        registry.register(
            "flowlog_agent_spool_dropped_records",
            "Records not kept because the spool was full (reported as SKIPDATA)",
            self.spool_dropped_records.clone(),
        );
        registry.register(
            "flowlog_agent_spool_corrupt_bytes",
            "Bytes of damaged spool segments skipped at startup (their batches are reported as SKIPDATA unless acknowledged)",
            self.spool_corrupt_bytes.clone(),
        );
        registry.register(
            "flowlog_agent_endpoint_up",
            "1 while the agent is connected to the aggregator endpoint",
            self.endpoint_up.clone(),
        );
        registry.register(
            "flowlog_agent_pinned_batches",
            "Batches whose outcome at an endpoint is unknown, retried only there",
            self.pinned_batches.clone(),
        );
    }
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
    /// Delivery metrics, when shipping to an aggregator.
    pub ship: Option<ShipMetrics>,
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

    /// Creates the metrics with the delivery metrics of `endpoints`.
    pub fn with_shipping(endpoints: &[String]) -> AgentMetrics {
        AgentMetrics {
            ship: Some(ShipMetrics::new(endpoints)),
            ..AgentMetrics::new()
        }
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
        if let Some(ship) = &self.ship {
            ship.register(registry);
        }
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
    #![allow(clippy::unwrap_used)]
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
        assert!(!text.contains("flowlog_agent_batches_sent"), "{text}");
    }

    #[test]
    fn delivery_metrics_are_there_when_shipping() {
        let m = AgentMetrics::with_shipping(&["https://a:7443".to_owned()]);
        let ship = m.ship.as_ref().unwrap();
        ship.batches_sent.inc();
        ship.spool_bytes.set(4096);
        ship.push_failures
            .get_or_create(&FailureLabels {
                endpoint: "https://a:7443".to_owned(),
                code: "unavailable",
            })
            .inc();
        let text = m.encode();
        for line in [
            "flowlog_agent_batches_sent_total 1",
            "flowlog_agent_batches_acked_total{duplicate=\"true\"} 0",
            "flowlog_agent_batches_retried_total 0",
            "flowlog_agent_push_failures_total{endpoint=\"https://a:7443\",code=\"unavailable\"} 1",
            "flowlog_agent_spool_bytes 4096",
            "flowlog_agent_spool_batches 0",
            "flowlog_agent_spool_dropped_records_total 0",
            "flowlog_agent_spool_corrupt_bytes_total 0",
            "flowlog_agent_endpoint_up{endpoint=\"https://a:7443\"} 0",
            "flowlog_agent_pinned_batches 0",
        ] {
            assert!(text.contains(line), "{line} missing: {text}");
        }
    }
}
