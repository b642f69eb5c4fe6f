//! Durations of config values: `"10s"`, `"1m"`, `"1h 30m"`, `"200ms"`, `"0.5s"`.

use std::time::Duration;

/// A text that is not a duration; shows what is wrong with it (humantime's message, such
/// as `unknown time unit "parsecs", supported units: ns, us, ms, sec, min, hours, days,
/// weeks, months, years (and few variations)`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(transparent)]
pub struct DurationError(humantime::DurationError);

/// Parses a duration: a sequence of numbers with units as humantime reads them (`"10s"`,
/// `"1m"`, `"2h 30m"`, `"250ms"`, `"1.5s"`; units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`,
/// `w`, `M`, `y` and their long forms), or a number of milliseconds or seconds with the
/// unit in any case (`"1500MS"`, `"2S"`), the form `[state] fsync = "interval:…"` accepted
/// before it took every duration.
///
/// Zero is a duration (`"0s"`); callers that need a positive one check it.
///
/// # Errors
///
/// [`DurationError`] when the text is neither form; its message is humantime's.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    match humantime::parse_duration(text) {
        Ok(d) => Ok(d),
        Err(e) => seconds_or_millis(&text.trim().to_ascii_lowercase()).ok_or(DurationError(e)),
    }
}

/// Parses `<number>ms` or `<number>s`; the number may have up to nine fractional digits.
fn seconds_or_millis(s: &str) -> Option<Duration> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let (number, unit_nanos) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1_000_000u128)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, NANOS_PER_SEC)
    } else {
        return None;
    };
    let number = number.trim_end();
    let (int, frac) = match number.split_once('.') {
        Some((int, frac)) if !frac.is_empty() && frac.len() <= 9 => (int, frac),
        Some(_) => return None,
        None => (number, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) {
        return None;
    }
    let mut nanos = int.parse::<u128>().ok()?.checked_mul(unit_nanos)?;
    if !frac.is_empty() {
        let scale = 10u128.pow(u32::try_from(frac.len()).ok()?);
        nanos = nanos.checked_add(frac.parse::<u128>().ok()? * unit_nanos / scale)?;
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    let sub = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humantime_forms() {
        let ok = [
            ("10s", Duration::from_secs(10)),
            ("1m", Duration::from_secs(60)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1h 30m", Duration::from_secs(5400)),
            ("250ms", Duration::from_millis(250)),
            ("0s", Duration::ZERO),
            ("5min", Duration::from_secs(300)),
            ("1M", Duration::from_secs(2_630_016)),
            (" 7s ", Duration::from_secs(7)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    /// The forms `FsyncPolicy` took before it accepted every duration: a number of ms or
    /// s, up to nine fractional digits, any case, spaces around.
    #[test]
    fn milliseconds_and_seconds_in_any_case() {
        let ok = [
            ("200ms", Duration::from_millis(200)),
            ("2s", Duration::from_secs(2)),
            ("1500MS", Duration::from_millis(1500)),
            ("2S", Duration::from_secs(2)),
            ("0.5s", Duration::from_millis(500)),
            ("0.5S", Duration::from_millis(500)),
            ("1.25ms", Duration::from_micros(1250)),
            ("1.25Ms", Duration::from_micros(1250)),
            (" 100 ms", Duration::from_millis(100)),
            ("0ms", Duration::ZERO),
            ("1.000000001s", Duration::new(1, 1)),
            ("1.123456789MS", Duration::from_nanos(1_123_456)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    /// Both forms agree wherever both accept a text, and a text either accepts is a
    /// duration. (humantime refuses fractions finer than a nanosecond, which the
    /// milliseconds-or-seconds form truncates.)
    #[test]
    fn both_forms_agree() {
        for text in [
            "200ms",
            "2s",
            "0.5s",
            "1.25ms",
            "100 ms",
            "0ms",
            "1.000000001s",
            "3.141592653s",
            "0.000000001s",
            "999999.999999999ms",
            "0.123456789ms",
        ] {
            let legacy = seconds_or_millis(text);
            if let Ok(d) = humantime::parse_duration(text) {
                assert_eq!(Some(d), legacy, "{text}");
            }
            assert_eq!(parse_duration(text).ok(), legacy, "{text}");
        }
        assert_eq!(
            parse_duration("999999.999999999ms"),
            Ok(Duration::new(999, 999_999_999))
        );
    }

    #[test]
    fn errors_are_humantimes() {
        for bad in [
            "",
            "soon",
            "200",
            "ms",
            "-1s",
            "1.s",
            ".5s",
            "5 parsecs",
            "1.5.5s",
            "99999999999999999999999999999999999999999s",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                humantime::parse_duration(bad).unwrap_err().to_string(),
                "{bad}"
            );
        }
        assert_eq!(
            parse_duration("soon").unwrap_err().to_string(),
            "expected number at 0"
        );
    }
}
