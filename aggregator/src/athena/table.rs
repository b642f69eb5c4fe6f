//! The table an aggregator config describes: columns, location and partition columns.

use chrono::{NaiveDate, Utc};
use flowlog_formats::key::{KeyLayout, KeyPrefix};
use flowlog_formats::{FieldId, LogFormat};

use super::tree::Partition;
use crate::config::OutputFormat;
use crate::config::Settings;
use flowlog_publish::settings::SinkSettings;

/// Everything the DDL and the queries are written from.
#[derive(Debug, Clone)]
pub struct Table {
    /// Table name, qualified with the database when one is configured (`db.table`).
    pub name: String,
    /// Database, when configured.
    pub database: Option<String>,
    /// Table name without the database.
    pub table: String,
    /// Text or Parquet.
    pub format: OutputFormat,
    /// The columns, in format order.
    pub log_format: LogFormat,
    /// Key layout of the files, which decides the partition columns.
    pub layout: KeyLayout,
    /// URL of the bucket or directory root, ending with `/` (`s3://bucket/`,
    /// `file:///var/lib/flowlog/out/`).
    pub root_url: String,
    /// Key of the `AWSLogs/` folder below the root (`prefix/AWSLogs/`).
    pub base_key: String,
    /// The configured prefix.
    pub prefix: KeyPrefix,
    /// Account ids the projection enumerates, sorted.
    pub accounts: Vec<String>,
    /// Regions the projection enumerates, sorted.
    pub regions: Vec<String>,
    /// First day the projection covers.
    pub since: NaiveDate,
}

impl Table {
    /// Describes the output of `settings`; `found` (the partitions present) supplies
    /// the accounts, regions and first day that `[athena]` leaves unset.
    pub fn new(settings: &Settings, table_override: Option<&str>, found: &[Partition]) -> Table {
        let athena = &settings.athena;
        let table = table_override.unwrap_or(&athena.table).to_owned();
        let name = match &athena.database {
            Some(db) => format!("{db}.{table}"),
            None => table.clone(),
        };
        let pick =
            |configured: &[String], fallback: &str, found: &mut dyn Iterator<Item = String>| {
                let mut values: Vec<String> = if configured.is_empty() {
                    found.chain(std::iter::once(fallback.to_owned())).collect()
                } else {
                    configured.to_vec()
                };
                values.sort();
                values.dedup();
                values
            };
        let accounts = pick(
            &athena.accounts,
            &settings.publish.flow_log.account_id,
            &mut found.iter().map(|p| p.account.clone()),
        );
        let regions = pick(
            &athena.regions,
            &settings.publish.flow_log.region,
            &mut found.iter().map(|p| p.region.clone()),
        );
        let since = athena
            .since
            .or_else(|| found.iter().map(|p| p.date).min())
            .unwrap_or_else(|| Utc::now().date_naive());
        Table {
            name,
            database: athena.database.clone(),
            table,
            format: settings.publish.output.format,
            log_format: settings.publish.output.log_format.clone(),
            layout: settings.publish.output.layout,
            root_url: root_url(&settings.publish.sink),
            base_key: base_key(&settings.publish.output.prefix),
            prefix: settings.publish.output.prefix.clone(),
            accounts,
            regions,
            since,
        }
    }

    /// Returns the table's `LOCATION`: the `AWSLogs/` folder.
    pub fn location(&self) -> String {
        format!("{}{}", self.root_url, self.base_key)
    }

    /// Returns the partition columns of the layout, in key order.
    pub fn partition_columns(&self) -> &'static [&'static str] {
        partition_columns(self.layout)
    }

    /// Reports whether the format has `field`.
    pub fn has(&self, field: FieldId) -> bool {
        self.log_format.contains(field)
    }

    /// Returns the SQL expression of a row's partition day as `yyyy/MM/dd`.
    pub fn day_expression(&self) -> &'static str {
        if self.layout.is_hive() {
            "concat(year, '/', month, '/', day)"
        } else {
            "day"
        }
    }

    /// Returns `storage.location.template`: the folder of one partition, with
    /// `${column}` for each partition column, exactly as the writer builds keys.
    pub fn location_template(&self) -> String {
        let folders = if self.layout.is_hive() {
            "aws-account-id=${accid}/aws-service=vpcflowlogs/aws-region=${awsregion}/year=${year}/month=${month}/day=${day}/"
        } else {
            "${accid}/vpcflowlogs/${awsregion}/${day}/"
        };
        let hour = match (self.layout.is_hourly(), self.layout.is_hive()) {
            (false, _) => "",
            (true, false) => "${hour}/",
            (true, true) => "hour=${hour}/",
        };
        format!("{}{folders}{hour}", self.location())
    }
}

/// Returns the partition columns of `layout`, in key order. None of them is the name of
/// a data column.
pub fn partition_columns(layout: KeyLayout) -> &'static [&'static str] {
    match layout {
        KeyLayout::Default => &["accid", "awsregion", "day"],
        KeyLayout::Hourly => &["accid", "awsregion", "day", "hour"],
        KeyLayout::Hive => &["accid", "awsregion", "year", "month", "day"],
        KeyLayout::HiveHourly => &["accid", "awsregion", "year", "month", "day", "hour"],
    }
}

/// Returns the key of the `AWSLogs/` folder: `prefix/AWSLogs/` or `AWSLogs/`.
pub fn base_key(prefix: &KeyPrefix) -> String {
    if prefix.is_empty() {
        "AWSLogs/".to_owned()
    } else {
        format!("{prefix}/AWSLogs/")
    }
}

/// Returns the URL keys are relative to, ending with `/`.
fn root_url(sink: &SinkSettings) -> String {
    match sink {
        SinkSettings::S3 { settings, .. } => format!("s3://{}/", settings.bucket),
        SinkSettings::Local { path, .. } => {
            let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let text = absolute.to_string_lossy();
            let text = text.trim_end_matches('/');
            format!("file://{text}/")
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use chrono::{TimeZone, Utc};
    use flowlog_formats::key;

    use super::*;

    fn settings(layout: &str, prefix: &str) -> Settings {
        crate::athena::test_settings(
            &format!("layout = \"{layout}\"\nprefix = \"{prefix}\""),
            crate::athena::TEST_S3_SINK,
            "",
        )
    }

    /// The template, filled in, is the folder the writer puts a file of that partition in.
    #[test]
    fn location_template_matches_the_writer_keys_for_every_layout() {
        let ts = Utc.with_ymd_and_hms(2026, 3, 9, 7, 5, 0).unwrap();
        for layout in KeyLayout::ALL {
            for prefix in ["", "team/flows"] {
                let s = settings(layout.name(), prefix);
                let table = Table::new(&s, None, &[]);
                let filled = table
                    .location_template()
                    .replace("${accid}", "123456789012")
                    .replace("${awsregion}", "eu-west-3")
                    .replace("${day}", if layout.is_hive() { "09" } else { "2026/03/09" })
                    .replace("${year}", "2026")
                    .replace("${month}", "03")
                    .replace("${hour}", "07");
                let folder = key::folder(
                    layout,
                    &KeyPrefix::parse(prefix).unwrap(),
                    "123456789012",
                    "eu-west-3",
                    ts,
                )
                .unwrap();
                assert_eq!(
                    filled,
                    format!("s3://flows/{folder}"),
                    "{layout} {prefix:?}"
                );
            }
        }
    }

    #[test]
    fn accounts_regions_and_first_day_come_from_the_output_unless_configured() {
        let s = settings("default", "");
        let found = vec![
            Partition::new(
                "111122223333",
                "us-east-1",
                NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
                None,
            ),
            Partition::new(
                "123456789012",
                "eu-west-3",
                NaiveDate::from_ymd_opt(2025, 12, 31).unwrap(),
                None,
            ),
        ];
        let table = Table::new(&s, Some("flows"), &found);
        assert_eq!(table.name, "flows");
        assert_eq!(table.accounts, ["111122223333", "123456789012"]);
        assert_eq!(table.regions, ["eu-west-3", "us-east-1"]);
        assert_eq!(table.since, NaiveDate::from_ymd_opt(2025, 12, 31).unwrap());
        assert_eq!(table.location(), "s3://flows/AWSLogs/");

        let mut s = s;
        s.athena.accounts = vec!["999988887777".into()];
        s.athena.regions = vec!["ap-south-1".into()];
        s.athena.database = Some("net".into());
        s.athena.since = NaiveDate::from_ymd_opt(2024, 1, 1);
        let table = Table::new(&s, None, &found);
        assert_eq!(table.name, "net.vpc_flow_logs");
        assert_eq!(table.accounts, ["999988887777"]);
        assert_eq!(table.regions, ["ap-south-1"]);
        assert_eq!(table.since, NaiveDate::from_ymd_opt(2024, 1, 1).unwrap());
    }
}
