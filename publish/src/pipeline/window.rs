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

/// Latest time a file can be named with: 9999-12-31T23:59:59Z (key timestamps and the
/// Parquet/Athena timestamp types have four-digit years).
pub const MAX_KEY_TIME: u64 = 253_402_300_799;

/// Returns the end of the window of width `width_secs` that contains `ts`, saturating at
/// `u64::MAX` (such a window is never publishable: see [`publishable_window_end`]).
pub fn window_end(ts: u64, width_secs: u64) -> u64 {
    (ts / width_secs)
        .saturating_add(1)
        .saturating_mul(width_secs)
}

/// Returns the end of the window that contains `ts` if a file can be named with it, else
/// `None` (the window ends after year 9999).
pub fn publishable_window_end(ts: u64, width_secs: u64) -> Option<u64> {
    Some(window_end(ts, width_secs)).filter(|&end| end <= MAX_KEY_TIME)
}

/// Largest `packets`/`bytes` value: the `bigint` (signed 64-bit) column of Athena and
/// Parquet.
pub const MAX_COUNTER: u64 = i64::MAX as u64;

/// Checks the values of a record that no output can hold: times after year 9999, `start`
/// after `end`, counters above the `bigint` range. Returns the field (flow log name) and
/// what is wrong.
pub fn check_publishable(record: &FlowRecord) -> Result<(), (&'static str, String)> {
    for (field, value) in [("start", record.start), ("end", record.end)] {
        if let Some(t) = value
            && t > MAX_KEY_TIME
        {
            return Err((
                field,
                format!("{t} is after 9999-12-31T23:59:59Z (at most {MAX_KEY_TIME})"),
            ));
        }
    }
    if let (Some(start), Some(end)) = (record.start, record.end)
        && start > end
    {
        return Err(("end", format!("{end} is before start {start}")));
    }
    for (field, value) in [("packets", record.packets), ("bytes", record.bytes)] {
        if let Some(n) = value
            && n > MAX_COUNTER
        {
            return Err((
                field,
                format!("{n} is above the bigint range (at most {MAX_COUNTER})"),
            ));
        }
    }
    Ok(())
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
    fn windows_past_year_9999_are_not_publishable() {
        assert_eq!(window_end(u64::MAX, 300), u64::MAX);
        assert_eq!(publishable_window_end(u64::MAX, 300), None);
        // 9999-12-31T23:50:00 is the last 5-minute window that ends within year 9999.
        let last = MAX_KEY_TIME + 1 - 600;
        assert_eq!(publishable_window_end(last, 300), Some(last + 300));
        assert_eq!(publishable_window_end(last + 300, 300), None);
        assert!(
            chrono::DateTime::from_timestamp(MAX_KEY_TIME as i64, 0)
                .unwrap()
                .to_rfc3339()
                .starts_with("9999-12-31T23:59:59")
        );
    }

    #[test]
    fn unpublishable_values_name_their_field() {
        let mut r = FlowRecord::no_data(None, None, 10, 20);
        assert_eq!(check_publishable(&r), Ok(()));
        r.end = Some(MAX_KEY_TIME + 1);
        assert_eq!(check_publishable(&r).unwrap_err().0, "end");
        r.end = Some(5);
        let (field, problem) = check_publishable(&r).unwrap_err();
        assert_eq!((field, problem.as_str()), ("end", "5 is before start 10"));
        r.end = Some(20);
        r.packets = Some(1 << 63);
        assert_eq!(check_publishable(&r).unwrap_err().0, "packets");
        r.packets = Some(MAX_COUNTER);
        r.bytes = Some(u64::MAX);
        assert_eq!(check_publishable(&r).unwrap_err().0, "bytes");
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
