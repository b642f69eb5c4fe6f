//! `[flow_log]`: the identity files are written under when records do not say otherwise.

use flowlog_formats::key::{validate_account_id, validate_flow_log_id, validate_region};
use serde::Deserialize;

use super::{Problems, required};

/// `[flow_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLogSettings {
    /// Flow log id (`fl-…`), in every file name.
    pub id: String,
    /// Account used when a record has no `account-id`.
    pub account_id: String,
    /// Region used when a record has no `region`.
    pub region: String,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct RawFlowLog {
    id: Option<String>,
    account_id: Option<String>,
    region: Option<String>,
}

pub(crate) fn validate_flow_log(raw: RawFlowLog, p: &mut Problems) -> Option<FlowLogSettings> {
    let id = required("flow_log.id", raw.id, p)
        .and_then(|v| p.check("flow_log.id", validate_flow_log_id(&v)).map(|()| v));
    let account_id = required("flow_log.account_id", raw.account_id, p).and_then(|v| {
        p.check("flow_log.account_id", validate_account_id(&v))
            .map(|()| v)
    });
    let region = required("flow_log.region", raw.region, p)
        .and_then(|v| p.check("flow_log.region", validate_region(&v)).map(|()| v));
    Some(FlowLogSettings {
        id: id?,
        account_id: account_id?,
        region: region?,
    })
}
