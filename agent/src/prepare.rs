//! Record preparation, between a flow table and an output: the flow log's traffic filter,
//! then the fields a flow table does not know (region and metadata). Every source (live
//! capture, replay) and every output (stdout, files, aggregators) sees records prepared
//! the same way.

use flowlog_formats::FlowRecord;

use crate::config::AgentSettings;

/// Applies the flow log's settings to a record of a flow table: says whether the traffic
/// filter keeps it and, if so, fills the region and the metadata fields
/// ([`crate::metadata::MetadataSettings::apply`]). SKIPDATA records the spool makes are
/// completed with it too (its result is then ignored: such rows are always kept).
pub fn prepare(settings: &AgentSettings, record: &mut FlowRecord) -> bool {
    if !settings.traffic_type.keeps(record.action) {
        return false;
    }
    record.region = Some(settings.region.clone());
    settings.metadata.apply(record);
    true
}
