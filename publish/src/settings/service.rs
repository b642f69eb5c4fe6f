//! `[service]`: logs, metrics endpoint, shutdown grace.

use std::time::Duration;

use flowlog_runtime::service;
use serde::Deserialize;

use super::{Problems, duration};
use crate::telemetry::LogOutput;

#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// How long shutdown may take to seal and upload before exiting anyway.
    pub shutdown_grace: Duration,
    /// Address of the `/metrics` and `/healthz` endpoint; `None` = off.
    pub metrics_address: Option<String>,
    /// Log output format.
    pub log_format: LogOutput,
    /// Log filter (`info`, `debug`, `flowlog_publish=debug,info`, …).
    pub log_level: String,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct RawService {
    shutdown_grace: Option<String>,
    metrics_address: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
}

pub(crate) fn validate_service(raw: RawService, p: &mut Problems) -> ServiceSettings {
    let shutdown_grace = duration(
        "service.shutdown_grace",
        raw.shutdown_grace.as_deref(),
        Duration::from_secs(30),
        p,
    );
    let log_format = p
        .check(
            "service.log_format",
            service::log_format(raw.log_format.as_deref()),
        )
        .unwrap_or(LogOutput::Text);
    let metrics_address = p
        .check(
            "service.metrics_address",
            service::metrics_address(raw.metrics_address),
        )
        .flatten();
    ServiceSettings {
        shutdown_grace,
        metrics_address,
        log_format,
        log_level: service::log_level(raw.log_level),
    }
}
