//! Finds the partitions present in the output: the account, region, day (and hour)
//! folders of the key layout, in a local directory or an S3 bucket.
//!
//! Folders are listed level by level (S3: `ListObjectsV2` with `Delimiter=/`), so the
//! cost grows with the number of folders, not of files. Names that do not fit the level
//! (another layout's folders, stray objects) are ignored.

use std::path::PathBuf;

use aws_sdk_s3::Client;
use chrono::{Datelike, NaiveDate, TimeZone, Utc};
use flowlog_formats::key::{self, KeyLayout};

use super::{AthenaError, ListError};
use flowlog_publish::settings::SinkSettings;
use flowlog_publish::sink::s3::S3Sink;

/// One partition: the folder of an account, region, day and (hourly layouts) hour.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    /// Account id folder.
    pub account: String,
    /// Region folder.
    pub region: String,
    /// Day folder (UTC).
    pub date: NaiveDate,
    /// Hour folder, in hourly layouts.
    pub hour: Option<u32>,
}

impl Partition {
    /// Builds a partition.
    pub fn new(account: &str, region: &str, date: NaiveDate, hour: Option<u32>) -> Partition {
        Partition {
            account: account.to_owned(),
            region: region.to_owned(),
            date,
            hour,
        }
    }

    /// Returns the folder key of the partition, exactly as the writer builds it.
    pub fn folder(&self, layout: KeyLayout, prefix: &key::KeyPrefix) -> Option<String> {
        let time = self.date.and_hms_opt(self.hour.unwrap_or(0), 0, 0)?;
        key::folder(
            layout,
            prefix,
            &self.account,
            &self.region,
            Utc.from_utc_datetime(&time),
        )
        .ok()
    }

    /// Returns the partition column values for `layout`, in column order.
    pub fn values(&self, layout: KeyLayout) -> Vec<String> {
        let mut values = vec![self.account.clone(), self.region.clone()];
        if layout.is_hive() {
            values.push(format!("{:04}", self.date.year()));
            values.push(format!("{:02}", self.date.month()));
            values.push(format!("{:02}", self.date.day()));
        } else {
            values.push(self.date.format("%Y/%m/%d").to_string());
        }
        if let Some(hour) = self.hour.filter(|_| layout.is_hourly()) {
            values.push(format!("{hour:02}"));
        }
        values
    }
}

/// How much of the tree to walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Every partition.
    All,
    /// Every account and region, but only the earliest day (and hour) of each.
    Earliest,
}

/// Where the output is.
#[derive(Debug)]
pub enum Tree {
    /// A local directory (the local sink's `path`).
    Local(PathBuf),
    /// An S3 bucket.
    S3 {
        /// The client of the configured sink.
        client: Client,
        /// The bucket.
        bucket: String,
    },
}

/// One level of folders below `AWSLogs/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Account,
    Service,
    Region,
    Year,
    Month,
    Day,
    Hour,
}

const LEVELS: [Level; 7] = [
    Level::Account,
    Level::Service,
    Level::Region,
    Level::Year,
    Level::Month,
    Level::Day,
    Level::Hour,
];

impl Level {
    /// The `name=` of the level's Hive folders.
    fn hive_name(self) -> &'static str {
        match self {
            Level::Account => "aws-account-id",
            Level::Service => "aws-service",
            Level::Region => "aws-region",
            Level::Year => "year",
            Level::Month => "month",
            Level::Day => "day",
            Level::Hour => "hour",
        }
    }

    /// Returns the value of a folder name of this level, if it is one.
    fn value(self, layout: KeyLayout, name: &str) -> Option<String> {
        let value = if layout.is_hive() {
            name.strip_prefix(self.hive_name())?.strip_prefix('=')?
        } else {
            name
        };
        let digits = |n: usize, max: u32, min: u32| {
            (value.len() == n && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u32>().ok())
                .flatten()
                .filter(|v| (min..=max).contains(v))
                .map(|_| value.to_owned())
        };
        match self {
            Level::Account => key::validate_account_id(value)
                .ok()
                .map(|()| value.to_owned()),
            Level::Service => (value == "vpcflowlogs").then(|| value.to_owned()),
            Level::Region => key::validate_region(value).ok().map(|()| value.to_owned()),
            Level::Year => digits(4, 9999, 1),
            Level::Month => digits(2, 12, 1),
            Level::Day => digits(2, 31, 1),
            Level::Hour => digits(2, 23, 0),
        }
    }

    /// Reports whether the level is a date/time level (walked partly in `Earliest` mode).
    fn is_time(self) -> bool {
        matches!(self, Level::Year | Level::Month | Level::Day | Level::Hour)
    }
}

impl Tree {
    /// Opens the sink's storage for listing.
    pub async fn for_sink(sink: &SinkSettings) -> Result<Tree, AthenaError> {
        match sink {
            SinkSettings::Local { path, .. } => Ok(Tree::Local(path.clone())),
            SinkSettings::S3 { settings, .. } => {
                let s3 = S3Sink::connect((**settings).clone())
                    .await
                    .map_err(AthenaError::Connect)?;
                Ok(Tree::S3 {
                    client: s3.client(),
                    bucket: settings.bucket.clone(),
                })
            }
        }
    }

    /// Lists the partitions of `layout` below `base` (the `AWSLogs/` key), sorted.
    pub async fn partitions(
        &self,
        layout: KeyLayout,
        base: &str,
        walk: Walk,
    ) -> Result<Vec<Partition>, AthenaError> {
        let levels: Vec<Level> = LEVELS
            .into_iter()
            .filter(|l| *l != Level::Hour || layout.is_hourly())
            .collect();
        // Depth-first over (depth, key, values so far).
        let mut pending = vec![(0usize, base.to_owned(), Vec::<String>::new())];
        let mut found = Vec::new();
        while let Some((depth, dir, values)) = pending.pop() {
            let Some(level) = levels.get(depth).copied() else {
                if let Some(partition) = to_partition(&values) {
                    found.push(partition);
                }
                continue;
            };
            let mut children: Vec<(String, String)> = self
                .children(&dir)
                .await?
                .into_iter()
                .filter_map(|name| level.value(layout, &name).map(|v| (name, v)))
                .collect();
            children.sort();
            if walk == Walk::Earliest && level.is_time() {
                children.truncate(1);
            }
            for (name, value) in children.into_iter().rev() {
                let mut next = values.clone();
                next.push(value);
                pending.push((depth + 1, format!("{dir}{name}/"), next));
            }
        }
        found.sort();
        Ok(found)
    }

    /// Returns the names of the folders directly below `dir` (a key ending with `/`).
    async fn children(&self, dir: &str) -> Result<Vec<String>, AthenaError> {
        match self {
            Tree::Local(root) => {
                let path = root.join(dir);
                let list_error = |source: std::io::Error| AthenaError::List {
                    location: path.display().to_string(),
                    source: ListError::Io(source),
                };
                let entries = match std::fs::read_dir(&path) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(list_error(e)),
                };
                let mut names = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(list_error)?;
                    if entry.file_type().map_err(list_error)?.is_dir() {
                        names.push(entry.file_name().to_string_lossy().into_owned());
                    }
                }
                Ok(names)
            }
            Tree::S3 { client, bucket } => {
                let mut names = Vec::new();
                let mut token: Option<String> = None;
                loop {
                    let reply = client
                        .list_objects_v2()
                        .bucket(bucket)
                        .prefix(dir)
                        .delimiter("/")
                        .set_continuation_token(token.take())
                        .send()
                        .await
                        .map_err(|e| AthenaError::List {
                            location: format!("s3://{bucket}/{dir}"),
                            source: ListError::S3(
                                aws_sdk_s3::error::DisplayErrorContext(e).to_string(),
                            ),
                        })?;
                    for common in reply.common_prefixes() {
                        if let Some(name) = common
                            .prefix()
                            .and_then(|p| p.strip_prefix(dir))
                            .map(|p| p.trim_end_matches('/'))
                            .filter(|p| !p.is_empty())
                        {
                            names.push(name.to_owned());
                        }
                    }
                    match reply.next_continuation_token() {
                        Some(next) if reply.is_truncated() == Some(true) => {
                            token = Some(next.to_owned());
                        }
                        _ => break,
                    }
                }
                Ok(names)
            }
        }
    }
}

/// Builds a partition from the folder values: account, service, region, year, month,
/// day and maybe hour.
fn to_partition(values: &[String]) -> Option<Partition> {
    let number = |i: usize| values.get(i).and_then(|v| v.parse::<u32>().ok());
    let date = NaiveDate::from_ymd_opt(i32::try_from(number(3)?).ok()?, number(4)?, number(5)?)?;
    Some(Partition {
        account: values.first()?.clone(),
        region: values.get(2)?.clone(),
        date,
        hour: number(6),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use flowlog_formats::key::KeyPrefix;

    use super::*;

    fn touch(root: &std::path::Path, key: &str) {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[tokio::test]
    async fn finds_the_folders_the_writer_makes_in_every_layout() {
        let prefix = KeyPrefix::parse("logs").unwrap();
        let wanted = [
            Partition::new("111122223333", "us-east-1", day(2026, 2, 28), Some(23)),
            Partition::new("111122223333", "us-east-1", day(2026, 3, 1), Some(0)),
            Partition::new("123456789012", "eu-west-3", day(2025, 12, 31), Some(7)),
        ];
        for layout in KeyLayout::ALL {
            let dir = tempfile::tempdir().unwrap();
            for p in &wanted {
                let folder = p.folder(layout, &prefix).unwrap();
                touch(dir.path(), &format!("{folder}f.log.gz"));
            }
            // Noise the walk must ignore: another layout's folders, a stray file, a bad day.
            touch(dir.path(), "logs/AWSLogs/README");
            touch(
                dir.path(),
                "logs/AWSLogs/123456789012/vpcflowlogs/eu-west-3/2026/13/01/x",
            );
            touch(
                dir.path(),
                "logs/AWSLogs/aws-account-id=123456789012/aws-service=elb/aws-region=eu-west-3/year=2026/month=01/day=01/x",
            );
            let tree = Tree::Local(dir.path().to_path_buf());
            let found = tree
                .partitions(layout, "logs/AWSLogs/", Walk::All)
                .await
                .unwrap();
            let mut expected: Vec<Partition> = wanted
                .iter()
                .map(|p| Partition {
                    hour: p.hour.filter(|_| layout.is_hourly()),
                    ..p.clone()
                })
                .collect();
            expected.sort();
            assert_eq!(found, expected, "{layout}");

            let earliest = tree
                .partitions(layout, "logs/AWSLogs/", Walk::Earliest)
                .await
                .unwrap();
            let dates: Vec<_> = earliest
                .iter()
                .map(|p| (p.account.as_str(), p.date))
                .collect();
            assert_eq!(
                dates,
                [
                    ("111122223333", day(2026, 2, 28)),
                    ("123456789012", day(2025, 12, 31))
                ],
                "{layout}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_output_directory_has_no_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::Local(dir.path().join("nothing-yet"));
        let found = tree
            .partitions(KeyLayout::Default, "AWSLogs/", Walk::All)
            .await
            .unwrap();
        assert!(found.is_empty());
    }

    #[test]
    fn partition_values_follow_the_partition_columns() {
        let p = Partition::new("123456789012", "eu-west-3", day(2026, 3, 9), Some(7));
        assert_eq!(
            p.values(KeyLayout::Default),
            ["123456789012", "eu-west-3", "2026/03/09"]
        );
        assert_eq!(
            p.values(KeyLayout::HiveHourly),
            ["123456789012", "eu-west-3", "2026", "03", "09", "07"]
        );
    }
}
