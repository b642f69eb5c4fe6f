//! Window assignment (pure): a record belongs to the window that contains its `end`; a
//! file is stamped with its window's END (records of 16:15:00–16:19:59 → `…T1620Z`).

use flowlog_formats::key::{validate_account_id, validate_region};
use flowlog_formats::{FlowRecord, Text};

/// One output stream: files of one (account, region, flow log, window).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Account in the key.
    pub account_id: Text,
    /// Region in the key.
    pub region: Text,
    /// Flow log id in the file name.
    pub flow_log_id: Text,
    /// Window end, Unix seconds; the file timestamp.
    pub window_end: u64,
}

/// Returns the end of the window of width `width_secs` that contains `ts`.
pub fn window_end(ts: u64, width_secs: u64) -> u64 {
    (ts / width_secs + 1) * width_secs
}

/// Returns the time that decides a record's window: its `end`, else its `start`, else
/// `now` (a record without times is filed when it arrives).
pub fn record_time(record: &FlowRecord, now: u64) -> u64 {
    record.end.or(record.start).unwrap_or(now)
}

/// Returns the account a record is filed under: its own `account-id` when that is a valid
/// 12-digit id (AWS writes `unknown` for some service-owned interfaces), else `default`.
pub fn record_account<'a>(record: &'a FlowRecord, default: &'a Text) -> &'a Text {
    match &record.account_id {
        Some(a) if validate_account_id(a).is_ok() => a,
        _ => default,
    }
}

/// Returns the region a record is filed under: its own `region` when valid, else `default`.
pub fn record_region<'a>(record: &'a FlowRecord, default: &'a Text) -> &'a Text {
    match &record.region {
        Some(r) if validate_region(r).is_ok() => r,
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn aws_example_window() {
        // 2018-06-20 16:15:00 .. 16:19:59 → file 16:20.
        let t1615 = 1_529_511_300;
        assert_eq!(window_end(t1615, 300), t1615 + 300);
        assert_eq!(window_end(t1615 + 299, 300), t1615 + 300);
        assert_eq!(window_end(t1615 + 300, 300), t1615 + 600);
    }

    #[test]
    fn identity_falls_back_for_unusable_values() {
        let default: Text = "123456789012".into();
        let mut r = FlowRecord {
            account_id: Some("unknown".into()),
            ..FlowRecord::default()
        };
        assert_eq!(record_account(&r, &default), &default);
        r.account_id = Some("210987654321".into());
        assert_eq!(&**record_account(&r, &default), "210987654321");
        let region: Text = "us-east-1".into();
        assert_eq!(record_region(&r, &region), &region);
        r.end = None;
        r.start = Some(5);
        assert_eq!(record_time(&r, 9), 5);
        r.start = None;
        assert_eq!(record_time(&r, 9), 9);
    }

    proptest! {
        #[test]
        fn every_timestamp_falls_in_exactly_one_window(ts in 0u64..4_000_000_000, w in prop::sample::select(vec![60u64, 120, 300, 600, 900, 1800, 3600])) {
            let end = window_end(ts, w);
            prop_assert!(end - w <= ts && ts < end);
            prop_assert_eq!(end % w, 0);
        }
    }
}
