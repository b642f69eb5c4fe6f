//! S3 object keys exactly as AWS VPC Flow Logs writes them.
//!
//! A key is an optional prefix, a folder in one of four [`KeyLayout`]s and a file name:
//!
//! ```text
//! default      [prefix/]AWSLogs/{acct}/vpcflowlogs/{region}/{yyyy}/{MM}/{dd}/
//! hourly       [prefix/]AWSLogs/{acct}/vpcflowlogs/{region}/{yyyy}/{MM}/{dd}/{HH}/
//! hive         [prefix/]AWSLogs/aws-account-id={acct}/aws-service=vpcflowlogs/aws-region={region}/year={yyyy}/month={MM}/day={dd}/
//! hive-hourly  [prefix/]AWSLogs/aws-account-id={acct}/aws-service=vpcflowlogs/aws-region={region}/year={yyyy}/month={MM}/day={dd}/hour={HH}/
//! file name    {acct}_vpcflowlogs_{region}_{flow_log_id}_{YYYYMMDDTHHmmZ}_{hash8}.log.gz (or .log.parquet)
//! ```
//!
//! Every date and time is UTC and comes from the file timestamp, the end of the file's
//! aggregation window: a file stamped `2018-06-21T00:00Z` goes under `2018/06/21`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use sha2::{Digest, Sha256};

/// The top-level folder AWS writes flow logs under; reserved inside prefixes.
const AWS_LOGS: &str = "AWSLogs";
/// The service token in folders and file names.
const SERVICE: &str = "vpcflowlogs";

/// S3's maximum object key length, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Folder layout of the keys, as chosen in a flow log's S3 destination options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyLayout {
    /// `AWSLogs/{acct}/vpcflowlogs/{region}/{yyyy}/{MM}/{dd}/`.
    Default,
    /// The default layout plus an `{HH}/` folder (per-hour partitions).
    Hourly,
    /// Hive-compatible `name=value` folders down to `day={dd}/`.
    Hive,
    /// Hive-compatible folders plus `hour={HH}/`.
    HiveHourly,
}

impl KeyLayout {
    /// Every layout, in declaration order.
    pub const ALL: [KeyLayout; 4] = [Self::Default, Self::Hourly, Self::Hive, Self::HiveHourly];

    /// Returns the layout's name as accepted by [`FromStr`] (`hive-hourly`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Hourly => "hourly",
            Self::Hive => "hive",
            Self::HiveHourly => "hive-hourly",
        }
    }

    /// Reports whether the folders use Hive-compatible `name=value` segments.
    pub const fn is_hive(self) -> bool {
        matches!(self, Self::Hive | Self::HiveHourly)
    }

    /// Reports whether the folders include an hour partition.
    pub const fn is_hourly(self) -> bool {
        matches!(self, Self::Hourly | Self::HiveHourly)
    }
}

impl fmt::Display for KeyLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for KeyLayout {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|layout| layout.name() == s)
            .ok_or_else(|| KeyError::UnknownLayout(shown(s)))
    }
}

/// Kind of log file, which decides the file name's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Gzip-compressed text (`.log.gz`).
    Text,
    /// Apache Parquet (`.log.parquet`).
    Parquet,
}

impl FileKind {
    /// Every file kind.
    pub const ALL: [FileKind; 2] = [Self::Text, Self::Parquet];

    /// Returns the file name extension, with its leading dot.
    pub const fn extension(self) -> &'static str {
        match self {
            Self::Text => ".log.gz",
            Self::Parquet => ".log.parquet",
        }
    }
}

/// Validated optional folder in front of `AWSLogs/`, stored without slashes at its ends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Parses a prefix, stripping leading and trailing `/`; an empty result means no prefix.
    ///
    /// Refuses a folder named `AWSLogs` (in any case, as AWS does), empty, `.` and `..`
    /// folders, control characters and backslashes.
    pub fn parse(prefix: &str) -> Result<Self, KeyError> {
        let trimmed = prefix.trim_matches('/');
        if let Some(ch) = trimmed.chars().find(|&c| c.is_control() || c == '\\') {
            return Err(KeyError::PrefixCharacter {
                prefix: shown(prefix),
                ch,
            });
        }
        if trimmed.is_empty() {
            return Ok(Self::default());
        }
        for segment in trimmed.split('/') {
            if segment.is_empty() {
                return Err(KeyError::PrefixEmptyFolder(shown(prefix)));
            }
            if segment == "." || segment == ".." {
                return Err(KeyError::PrefixRelativeFolder {
                    prefix: shown(prefix),
                    folder: shown(segment),
                });
            }
            if segment.eq_ignore_ascii_case(AWS_LOGS) {
                return Err(KeyError::PrefixReservedFolder {
                    prefix: shown(prefix),
                    folder: shown(segment),
                });
            }
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// Returns the prefix without slashes at its ends (`my/prefix`), or `""` for none.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reports whether there is no prefix.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// Components of one object key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyParts<'a> {
    /// 12-digit AWS account id.
    pub account_id: &'a str,
    /// Region, such as `us-east-1`.
    pub region: &'a str,
    /// Flow log id, such as `fl-1234abcd`.
    pub flow_log_id: &'a str,
    /// End of the file's aggregation window; must be a whole minute.
    pub file_timestamp: DateTime<Utc>,
    /// 8 lowercase hex digits that keep file names unique (see [`hash8`]).
    pub hash8: &'a str,
    /// Kind of file, which decides the extension.
    pub kind: FileKind,
}

/// Builds the full object key: prefix, layout folders and file name.
///
/// Validates every component; the error names the component and its value.
pub fn object_key(
    layout: KeyLayout,
    prefix: &KeyPrefix,
    parts: &KeyParts<'_>,
) -> Result<String, KeyError> {
    let key = folder(
        layout,
        prefix,
        parts.account_id,
        parts.region,
        parts.file_timestamp,
    )? + &file_name(parts)?;
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::KeyTooLong(key.len()));
    }
    Ok(key)
}

/// Builds the folder part of a key, prefix included, ending with `/`.
pub fn folder(
    layout: KeyLayout,
    prefix: &KeyPrefix,
    account_id: &str,
    region: &str,
    file_timestamp: DateTime<Utc>,
) -> Result<String, KeyError> {
    validate_account_id(account_id)?;
    validate_region(region)?;
    validate_year(file_timestamp)?;
    let tail = layout_folder(layout, account_id, region, file_timestamp);
    Ok(if prefix.is_empty() {
        tail
    } else {
        format!("{prefix}/{tail}")
    })
}

/// Builds the file name (`{acct}_vpcflowlogs_{region}_{flow_log_id}_{YYYYMMDDTHHmmZ}_{hash8}.log.gz`).
pub fn file_name(parts: &KeyParts<'_>) -> Result<String, KeyError> {
    validate_account_id(parts.account_id)?;
    validate_region(parts.region)?;
    validate_flow_log_id(parts.flow_log_id)?;
    validate_file_timestamp(parts.file_timestamp)?;
    validate_hash8(parts.hash8)?;
    let ts = parts.file_timestamp;
    Ok(format!(
        "{}_{SERVICE}_{}_{}_{:04}{:02}{:02}T{:02}{:02}Z_{}{}",
        parts.account_id,
        parts.region,
        parts.flow_log_id,
        ts.year(),
        ts.month(),
        ts.day(),
        ts.hour(),
        ts.minute(),
        parts.hash8,
        parts.kind.extension(),
    ))
}

/// Returns the first 4 bytes of SHA-256 of `seed` as 8 lowercase hex digits.
///
/// Stability contract: the function is pure and its output for a given seed never
/// changes between versions, so a writer that derives the seed from stable inputs
/// rewrites the same key when it retries.
pub fn hash8(seed: &[u8]) -> String {
    let digest = Sha256::digest(seed);
    format!(
        "{:08x}",
        u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
    )
}

/// Checks that an account id is exactly 12 ASCII digits.
pub fn validate_account_id(account_id: &str) -> Result<(), KeyError> {
    if account_id.len() == 12 && account_id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(KeyError::AccountId(shown(account_id)))
    }
}

/// Checks that a region is 1 to 32 lowercase ASCII letters, digits and `-`, starting with a letter.
pub fn validate_region(region: &str) -> Result<(), KeyError> {
    let valid = region.len() <= 32
        && region
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_lowercase)
        && region.bytes().all(|b| is_lower_alnum(b) || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(KeyError::Region(shown(region)))
    }
}

/// Checks that a flow log id is `fl-` followed by 1 to 32 lowercase ASCII letters or digits.
pub fn validate_flow_log_id(flow_log_id: &str) -> Result<(), KeyError> {
    let valid = flow_log_id
        .strip_prefix("fl-")
        .is_some_and(|rest| (1..=32).contains(&rest.len()) && rest.bytes().all(is_lower_alnum));
    if valid {
        Ok(())
    } else {
        Err(KeyError::FlowLogId(shown(flow_log_id)))
    }
}

/// Checks that a file name hash is exactly 8 lowercase hex digits.
pub fn validate_hash8(hash: &str) -> Result<(), KeyError> {
    if hash.len() == 8 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(KeyError::Hash8(shown(hash)))
    }
}

/// Components of a parsed object key or local file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedKey {
    /// 12-digit AWS account id.
    pub account_id: String,
    /// Region, such as `us-east-1`.
    pub region: String,
    /// Flow log id, such as `fl-1234abcd`.
    pub flow_log_id: String,
    /// End of the file's aggregation window.
    pub file_timestamp: DateTime<Utc>,
    /// The hash token of the file name (any ASCII letters and digits).
    pub hash8: String,
    /// Kind of file, from the extension.
    pub kind: FileKind,
    /// Layout of the folders, or `None` if they match none (a file in `./downloads/`).
    pub layout: Option<KeyLayout>,
}

impl ParsedKey {
    /// Returns the parsed components as [`KeyParts`] borrowing from `self`.
    pub fn parts(&self) -> KeyParts<'_> {
        KeyParts {
            account_id: &self.account_id,
            region: &self.region,
            flow_log_id: &self.flow_log_id,
            file_timestamp: self.file_timestamp,
            hash8: &self.hash8,
            kind: self.kind,
        }
    }
}

/// Parses an AWS-style object key or local path.
///
/// The file name (last `/` or `\` component) must be AWS-style; the layout is reported if
/// the folders before it end with one of the four layouts for the file's account, region
/// and timestamp. The hash token may be any non-empty run of ASCII letters and digits.
pub fn parse_key(key_or_path: &str) -> Result<ParsedKey, KeyError> {
    let (dir, name) = match key_or_path.rfind(['/', '\\']) {
        Some(i) => key_or_path.split_at(i + 1),
        None => ("", key_or_path),
    };
    let bad = |reason: String| KeyError::NotFlowLogFile {
        name: shown(name),
        reason,
    };

    let (stem, kind) = FileKind::ALL
        .into_iter()
        .find_map(|kind| Some((name.strip_suffix(kind.extension())?, kind)))
        .ok_or_else(|| bad("it does not end with '.log.gz' or '.log.parquet'".to_owned()))?;
    let tokens: Vec<&str> = stem.split('_').collect();
    let [account_id, service, region, flow_log_id, timestamp, hash] = tokens[..] else {
        return Err(bad(format!(
            "it has {} '_'-separated parts instead of 6",
            tokens.len()
        )));
    };
    if service != SERVICE {
        return Err(bad(format!(
            "its second part '{}' is not '{SERVICE}'",
            shown(service)
        )));
    }
    validate_account_id(account_id).map_err(|e| bad(e.to_string()))?;
    validate_region(region).map_err(|e| bad(e.to_string()))?;
    validate_flow_log_id(flow_log_id).map_err(|e| bad(e.to_string()))?;
    let file_timestamp = parse_file_timestamp(timestamp).ok_or_else(|| {
        bad(format!(
            "timestamp '{}' is not a valid YYYYMMDDTHHmmZ time",
            shown(timestamp)
        ))
    })?;
    if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(bad(format!(
            "hash '{}' is not a non-empty run of letters and digits",
            shown(hash)
        )));
    }

    let dir = dir.replace('\\', "/");
    let layout = KeyLayout::ALL.into_iter().find(|&layout| {
        dir.strip_suffix(layout_folder(layout, account_id, region, file_timestamp).as_str())
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('/'))
    });

    Ok(ParsedKey {
        account_id: account_id.to_owned(),
        region: region.to_owned(),
        flow_log_id: flow_log_id.to_owned(),
        file_timestamp,
        hash8: hash.to_owned(),
        kind,
        layout,
    })
}

/// Errors building or parsing object keys. Values are shown with control characters escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A layout name is not one of the four known names.
    #[error("unknown key layout '{0}', expected one of: default, hourly, hive, hive-hourly")]
    UnknownLayout(String),
    /// A prefix contains a control character or a backslash.
    #[error("prefix '{prefix}' contains the forbidden character {ch:?}")]
    PrefixCharacter {
        /// The prefix as given.
        prefix: String,
        /// The forbidden character.
        ch: char,
    },
    /// A prefix contains an empty folder name (`a//b`).
    #[error("prefix '{0}' contains an empty folder name")]
    PrefixEmptyFolder(String),
    /// A prefix contains a `.` or `..` folder.
    #[error("prefix '{prefix}' contains the relative folder name '{folder}'")]
    PrefixRelativeFolder {
        /// The prefix as given.
        prefix: String,
        /// The offending folder name.
        folder: String,
    },
    /// A prefix contains a folder named `AWSLogs` (in any case), which AWS reserves.
    #[error("prefix '{prefix}' contains the reserved folder name '{folder}'")]
    PrefixReservedFolder {
        /// The prefix as given.
        prefix: String,
        /// The offending folder name.
        folder: String,
    },
    /// An account id is not exactly 12 digits.
    #[error("account id '{0}' must be exactly 12 digits")]
    AccountId(String),
    /// A region is not 1 to 32 lowercase letters, digits and `-` starting with a letter.
    #[error(
        "region '{0}' must be 1 to 32 lowercase letters, digits and '-', starting with a letter"
    )]
    Region(String),
    /// A flow log id is not `fl-` followed by 1 to 32 lowercase letters or digits.
    #[error("flow log id '{0}' must be 'fl-' followed by 1 to 32 lowercase letters or digits")]
    FlowLogId(String),
    /// A file name hash is not 8 lowercase hex digits.
    #[error("hash '{0}' must be exactly 8 lowercase hex digits")]
    Hash8(String),
    /// A file timestamp has seconds or sub-seconds, which the file name cannot hold.
    #[error("file timestamp '{0}' must be a whole minute")]
    TimestampNotWholeMinute(DateTime<Utc>),
    /// A file timestamp's year does not have 4 digits.
    #[error("file timestamp '{0}' must fall in the years 0000 to 9999")]
    TimestampOutOfRange(DateTime<Utc>),
    /// A key is longer than S3 allows.
    #[error("object key is {0} bytes long, more than the {MAX_KEY_LEN} bytes S3 allows")]
    KeyTooLong(usize),
    /// A file name is not an AWS-style flow log file name.
    #[error("file name '{name}' is not a flow log file name: {reason}")]
    NotFlowLogFile {
        /// The file name (last path component).
        name: String,
        /// Why it was refused.
        reason: String,
    },
}

/// Returns a value fit for an error message, with control characters escaped.
fn shown(value: &str) -> String {
    value.escape_debug().to_string()
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn validate_year(ts: DateTime<Utc>) -> Result<(), KeyError> {
    if (0..=9999).contains(&ts.year()) {
        Ok(())
    } else {
        Err(KeyError::TimestampOutOfRange(ts))
    }
}

fn validate_file_timestamp(ts: DateTime<Utc>) -> Result<(), KeyError> {
    validate_year(ts)?;
    if ts.second() == 0 && ts.nanosecond() == 0 {
        Ok(())
    } else {
        Err(KeyError::TimestampNotWholeMinute(ts))
    }
}

/// Builds the layout's folders (from `AWSLogs/` on, ending with `/`) for valid components.
fn layout_folder(layout: KeyLayout, account_id: &str, region: &str, ts: DateTime<Utc>) -> String {
    let (y, m, d, h) = (ts.year(), ts.month(), ts.day(), ts.hour());
    match layout {
        KeyLayout::Default => {
            format!("{AWS_LOGS}/{account_id}/{SERVICE}/{region}/{y:04}/{m:02}/{d:02}/")
        }
        KeyLayout::Hourly => {
            format!("{AWS_LOGS}/{account_id}/{SERVICE}/{region}/{y:04}/{m:02}/{d:02}/{h:02}/")
        }
        KeyLayout::Hive => format!(
            "{AWS_LOGS}/aws-account-id={account_id}/aws-service={SERVICE}/aws-region={region}/year={y:04}/month={m:02}/day={d:02}/"
        ),
        KeyLayout::HiveHourly => format!(
            "{AWS_LOGS}/aws-account-id={account_id}/aws-service={SERVICE}/aws-region={region}/year={y:04}/month={m:02}/day={d:02}/hour={h:02}/"
        ),
    }
}

/// Parses `YYYYMMDDTHHmmZ` strictly (exactly 14 characters, digits where digits belong).
fn parse_file_timestamp(s: &str) -> Option<DateTime<Utc>> {
    let b = s.as_bytes();
    if b.len() != 14 || b[8] != b'T' || b[13] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| {
        b[from..to].iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let year = i32::try_from(num(0, 4)?).ok()?;
    Utc.with_ymd_and_hms(year, num(4, 6)?, num(6, 8)?, num(9, 11)?, num(11, 13)?, 0)
        .single()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).single().unwrap()
    }

    fn parts<'a>(
        account_id: &'a str,
        region: &'a str,
        flow_log_id: &'a str,
        file_timestamp: DateTime<Utc>,
        hash8: &'a str,
        kind: FileKind,
    ) -> KeyParts<'a> {
        KeyParts {
            account_id,
            region,
            flow_log_id,
            file_timestamp,
            hash8,
            kind,
        }
    }

    fn example_default() -> KeyParts<'static> {
        parts(
            "123456789012",
            "us-east-1",
            "fl-1234abcd",
            ts(2018, 6, 20, 16, 20),
            "fe123456",
            FileKind::Text,
        )
    }

    fn example_hive() -> KeyParts<'static> {
        parts(
            "111111111111",
            "eu-west-3",
            "fl-0f46d0a2ed744cfa1",
            ts(2022, 9, 15, 14, 20),
            "740b4cc6",
            FileKind::Parquet,
        )
    }

    const DEFAULT_KEY: &str = "AWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/20/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz";
    const HIVE_KEY: &str = "AWSLogs/aws-account-id=111111111111/aws-service=vpcflowlogs/aws-region=eu-west-3/year=2022/month=09/day=15/111111111111_vpcflowlogs_eu-west-3_fl-0f46d0a2ed744cfa1_20220915T1420Z_740b4cc6.log.parquet";

    #[test]
    fn real_examples() {
        let none = KeyPrefix::default();
        assert_eq!(
            object_key(KeyLayout::Default, &none, &example_default()).unwrap(),
            DEFAULT_KEY
        );
        assert_eq!(
            object_key(KeyLayout::Hive, &none, &example_hive()).unwrap(),
            HIVE_KEY
        );
    }

    #[test]
    fn hourly_layouts() {
        let none = KeyPrefix::default();
        assert_eq!(
            object_key(KeyLayout::Hourly, &none, &example_default()).unwrap(),
            "AWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/20/16/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz"
        );
        assert_eq!(
            object_key(KeyLayout::HiveHourly, &none, &example_hive()).unwrap(),
            "AWSLogs/aws-account-id=111111111111/aws-service=vpcflowlogs/aws-region=eu-west-3/year=2022/month=09/day=15/hour=14/111111111111_vpcflowlogs_eu-west-3_fl-0f46d0a2ed744cfa1_20220915T1420Z_740b4cc6.log.parquet"
        );
    }

    #[test]
    fn prefixes() {
        let key = object_key(
            KeyLayout::Default,
            &KeyPrefix::parse("my-logs").unwrap(),
            &example_default(),
        )
        .unwrap();
        assert_eq!(key, format!("my-logs/{DEFAULT_KEY}"));
        let prefix = KeyPrefix::parse("/a/b/").unwrap();
        assert_eq!(prefix.as_str(), "a/b");
        let key = object_key(KeyLayout::Hive, &prefix, &example_hive()).unwrap();
        assert_eq!(key, format!("a/b/{HIVE_KEY}"));
        for empty in ["", "/", "//"] {
            assert!(KeyPrefix::parse(empty).unwrap().is_empty());
        }
        assert_eq!(KeyPrefix::default().as_str(), "");
    }

    #[test]
    fn midnight_rollover() {
        let p = parts(
            "123456789012",
            "us-east-1",
            "fl-1234abcd",
            ts(2018, 6, 21, 0, 0),
            "fe123456",
            FileKind::Text,
        );
        let none = KeyPrefix::default();
        assert_eq!(
            object_key(KeyLayout::Hourly, &none, &p).unwrap(),
            "AWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/21/00/123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180621T0000Z_fe123456.log.gz"
        );
        assert_eq!(
            folder(
                KeyLayout::HiveHourly,
                &none,
                p.account_id,
                p.region,
                p.file_timestamp
            )
            .unwrap(),
            "AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=us-east-1/year=2018/month=06/day=21/hour=00/"
        );
    }

    #[test]
    fn prefix_rejections() {
        let cases: &[(&str, KeyError)] = &[
            (
                "logs/AWSLogs",
                KeyError::PrefixReservedFolder {
                    prefix: "logs/AWSLogs".into(),
                    folder: "AWSLogs".into(),
                },
            ),
            (
                "awslogs",
                KeyError::PrefixReservedFolder {
                    prefix: "awslogs".into(),
                    folder: "awslogs".into(),
                },
            ),
            (
                "/AWSLOGS/x/",
                KeyError::PrefixReservedFolder {
                    prefix: "/AWSLOGS/x/".into(),
                    folder: "AWSLOGS".into(),
                },
            ),
            ("a//b", KeyError::PrefixEmptyFolder("a//b".into())),
            (
                "a/./b",
                KeyError::PrefixRelativeFolder {
                    prefix: "a/./b".into(),
                    folder: ".".into(),
                },
            ),
            (
                "../b",
                KeyError::PrefixRelativeFolder {
                    prefix: "../b".into(),
                    folder: "..".into(),
                },
            ),
            (
                "a\nb",
                KeyError::PrefixCharacter {
                    prefix: "a\\nb".into(),
                    ch: '\n',
                },
            ),
            (
                "a\u{7f}",
                KeyError::PrefixCharacter {
                    prefix: "a\\u{7f}".into(),
                    ch: '\u{7f}',
                },
            ),
            (
                "a\\b",
                KeyError::PrefixCharacter {
                    prefix: "a\\\\b".into(),
                    ch: '\\',
                },
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(&KeyPrefix::parse(input).unwrap_err(), expected, "{input:?}");
        }
        assert_eq!(
            KeyPrefix::parse("logs/AWSLogs").unwrap_err().to_string(),
            "prefix 'logs/AWSLogs' contains the reserved folder name 'AWSLogs'"
        );
        // Names merely containing the reserved word are fine.
        assert_eq!(
            KeyPrefix::parse("AWSLogs2/x.y").unwrap().as_str(),
            "AWSLogs2/x.y"
        );
    }

    #[test]
    fn validator_rejections() {
        validate_account_id("123456789012").unwrap();
        for bad in [
            "",
            "12345",
            "1234567890123",
            "12345678901a",
            "１23456789012",
            " 23456789012",
        ] {
            assert_eq!(
                validate_account_id(bad),
                Err(KeyError::AccountId(bad.into()))
            );
        }
        assert_eq!(
            validate_account_id("12345").unwrap_err().to_string(),
            "account id '12345' must be exactly 12 digits"
        );

        for good in [
            "us-east-1",
            "eu-west-3",
            "us-gov-west-1",
            "a",
            &"a".repeat(32),
        ] {
            validate_region(good).unwrap();
        }
        for bad in [
            "",
            "US-EAST-1",
            "1us",
            "-us",
            "us_east_1",
            "us/east",
            "us east",
            &"a".repeat(33),
        ] {
            assert_eq!(validate_region(bad), Err(KeyError::Region(bad.into())));
        }

        for good in [
            "fl-1234abcd",
            "fl-0f46d0a2ed744cfa1",
            "fl-z",
            &format!("fl-{}", "0".repeat(32)),
        ] {
            validate_flow_log_id(good).unwrap();
        }
        let too_long = format!("fl-{}", "0".repeat(33));
        for bad in [
            "", "fl-", "fl_1234", "FL-1234", "fl-ABCD", "fl-12_34", "fl-12/34", "fl-12-34",
            "1234abcd", &too_long,
        ] {
            assert_eq!(
                validate_flow_log_id(bad),
                Err(KeyError::FlowLogId(bad.into()))
            );
        }

        validate_hash8("0123abcd").unwrap();
        for bad in ["", "0123abc", "0123abcde", "0123ABCD", "0123abcg"] {
            assert_eq!(validate_hash8(bad), Err(KeyError::Hash8(bad.into())));
        }
    }

    #[test]
    fn object_key_rejections() {
        let none = KeyPrefix::default();
        let good = example_default();
        let with_seconds = Utc
            .with_ymd_and_hms(2018, 6, 20, 16, 20, 1)
            .single()
            .unwrap();
        let cases = [
            (
                KeyParts {
                    account_id: "12345",
                    ..good
                },
                KeyError::AccountId("12345".into()),
            ),
            (
                KeyParts {
                    region: "US",
                    ..good
                },
                KeyError::Region("US".into()),
            ),
            (
                KeyParts {
                    flow_log_id: "fl_1",
                    ..good
                },
                KeyError::FlowLogId("fl_1".into()),
            ),
            (
                KeyParts {
                    hash8: "FE123456",
                    ..good
                },
                KeyError::Hash8("FE123456".into()),
            ),
            (
                KeyParts {
                    file_timestamp: with_seconds,
                    ..good
                },
                KeyError::TimestampNotWholeMinute(with_seconds),
            ),
            (
                KeyParts {
                    file_timestamp: ts(10000, 1, 1, 0, 0),
                    ..good
                },
                KeyError::TimestampOutOfRange(ts(10000, 1, 1, 0, 0)),
            ),
        ];
        for (p, expected) in cases {
            assert_eq!(object_key(KeyLayout::Default, &none, &p), Err(expected));
        }
        let long = KeyPrefix::parse(&"x".repeat(MAX_KEY_LEN)).unwrap();
        assert!(matches!(
            object_key(KeyLayout::Default, &long, &good),
            Err(KeyError::KeyTooLong(_))
        ));
    }

    #[test]
    fn hash8_is_pinned() {
        assert_eq!(hash8(b"writer-1/20180620T1620Z/0"), "7481bdba");
        assert_eq!(hash8(b""), "e3b0c442");
        let h = hash8(b"anything");
        validate_hash8(&h).unwrap();
    }

    #[test]
    fn layout_names() {
        for layout in KeyLayout::ALL {
            assert_eq!(layout.to_string().parse::<KeyLayout>().unwrap(), layout);
        }
        assert_eq!(
            "hive-hourly".parse::<KeyLayout>().unwrap(),
            KeyLayout::HiveHourly
        );
        assert!(KeyLayout::Hive.is_hive() && !KeyLayout::Hive.is_hourly());
        assert!(KeyLayout::Hourly.is_hourly() && !KeyLayout::Hourly.is_hive());
        assert_eq!(
            "Hive".parse::<KeyLayout>().unwrap_err().to_string(),
            "unknown key layout 'Hive', expected one of: default, hourly, hive, hive-hourly"
        );
        assert_eq!(FileKind::Text.extension(), ".log.gz");
        assert_eq!(FileKind::Parquet.extension(), ".log.parquet");
    }

    #[test]
    fn parse_all_layouts() {
        for (layout, p) in KeyLayout::ALL
            .into_iter()
            .flat_map(|l| [(l, example_default()), (l, example_hive())])
        {
            for prefix in ["", "a/b"] {
                let key = object_key(layout, &KeyPrefix::parse(prefix).unwrap(), &p).unwrap();
                let parsed = parse_key(&key).unwrap();
                assert_eq!(parsed.parts(), p, "{key}");
                assert_eq!(parsed.layout, Some(layout), "{key}");
            }
        }
        let parsed = parse_key(HIVE_KEY).unwrap();
        assert_eq!(parsed.flow_log_id, "fl-0f46d0a2ed744cfa1");
        assert_eq!(parsed.kind, FileKind::Parquet);
        assert_eq!(parsed.file_timestamp, ts(2022, 9, 15, 14, 20));
    }

    #[test]
    fn parse_bare_and_foreign_folders() {
        let name = "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz";
        for path in [
            name.to_owned(),
            format!("./downloads/{name}"),
            format!("C:\\logs\\{name}"),
        ] {
            let parsed = parse_key(&path).unwrap();
            assert_eq!(parsed.parts(), example_default());
            assert_eq!(parsed.layout, None, "{path}");
        }
        // Folders that disagree with the file name, or run into the AWSLogs folder, match no layout.
        for dir in [
            "AWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/21/",
            "AWSLogs/999999999999/vpcflowlogs/us-east-1/2018/06/20/",
            "xAWSLogs/123456789012/vpcflowlogs/us-east-1/2018/06/20/",
        ] {
            assert_eq!(
                parse_key(&format!("{dir}{name}")).unwrap().layout,
                None,
                "{dir}"
            );
        }
        let windows =
            format!("D:\\dl\\AWSLogs\\123456789012\\vpcflowlogs\\us-east-1\\2018\\06\\20\\{name}");
        assert_eq!(
            parse_key(&windows).unwrap().layout,
            Some(KeyLayout::Default)
        );
        // Non-hex hashes are accepted when parsing.
        let parsed = parse_key(
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_XyZ.log.parquet",
        )
        .unwrap();
        assert_eq!(
            (parsed.hash8.as_str(), parsed.kind),
            ("XyZ", FileKind::Parquet)
        );
    }

    #[test]
    fn parse_rejections() {
        for name in [
            "",
            "AWSLogs/",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.gz",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z.log.gz",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe_12.log.gz",
            "123456789012_cloudtrail_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz",
            "12345678901_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz",
            "123456789012_vpcflowlogs_US-EAST-1_fl-1234abcd_20180620T1620Z_fe123456.log.gz",
            "123456789012_vpcflowlogs_us-east-1_eni-1234abcd_20180620T1620Z_fe123456.log.gz",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T162000Z_fe123456.log.gz",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180631T1620Z_fe123456.log.gz",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T2460Z_fe123456.log.gz",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_2018062OT1620Z_fe123456.log.gz",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_.log.gz",
            "123456789012_vpcflowlogs_us-east-1_fl-1234abcd_20180620T1620Z_fe-12345.log.gz",
        ] {
            assert!(
                matches!(parse_key(name), Err(KeyError::NotFlowLogFile { .. })),
                "{name}"
            );
        }
        assert_eq!(
            parse_key("x/12345_vpcflowlogs_us-east-1_fl-1_20180620T1620Z_fe123456.log.gz")
                .unwrap_err()
                .to_string(),
            "file name '12345_vpcflowlogs_us-east-1_fl-1_20180620T1620Z_fe123456.log.gz' is not a flow log file name: \
             account id '12345' must be exactly 12 digits"
        );
    }

    const REGIONS: [&str; 6] = [
        "us-east-1",
        "eu-west-3",
        "ap-southeast-2",
        "us-gov-west-1",
        "cn-north-1",
        "il-central-1",
    ];

    proptest! {
        #[test]
        fn object_key_round_trips(
            account_id in "[0-9]{12}",
            region in proptest::sample::select(&REGIONS[..]),
            flow_log_id in "fl-[0-9a-z]{1,32}",
            // Minutes from 2000-01-01T00:00Z to 2099-12-31T23:59Z.
            minute in 15_778_080i64..68_374_080,
            seed in proptest::collection::vec(any::<u8>(), 0..64),
            prefix in proptest::sample::select(&["", "p", "a/b/c", "/logs/x-y_z/"][..]),
        ) {
            let file_timestamp = DateTime::from_timestamp(minute * 60, 0).unwrap();
            let hash = hash8(&seed);
            let prefix = KeyPrefix::parse(prefix).unwrap();
            for kind in FileKind::ALL {
                let p = parts(&account_id, region, &flow_log_id, file_timestamp, &hash, kind);
                for layout in KeyLayout::ALL {
                    let key = object_key(layout, &prefix, &p).unwrap();
                    prop_assert!(key.starts_with(&folder(layout, &prefix, &account_id, region, file_timestamp).unwrap()));
                    prop_assert!(key.ends_with(&file_name(&p).unwrap()));
                    let parsed = parse_key(&key).unwrap();
                    prop_assert_eq!(parsed.parts(), p);
                    prop_assert_eq!(parsed.layout, Some(layout));
                }
            }
        }
    }
}
