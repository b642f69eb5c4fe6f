//! `CREATE EXTERNAL TABLE` (with partition projection) and `ALTER TABLE ADD PARTITION`,
//! in the Hive DDL dialect Athena (and Spark, Hive, Trino's Hive connector) accept.

use chrono::Datelike;

use super::table::Table;
use super::tree::Partition;
use crate::config::OutputFormat;

/// Last year the Hive layouts' integer `year` projection covers. Integer projections
/// have no `NOW`; queries that filter on `year` (or `year` and `month`) read only the
/// folders they name, so a far bound costs nothing when queries are filtered.
pub const HIVE_LAST_YEAR: i32 = 2099;

/// Partition projection table properties (Athena only; other engines ignore them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Projection {
    /// `(property, value)` in output order.
    pub properties: Vec<(String, String)>,
}

impl Projection {
    /// Builds the projection of `table`'s layout: enums for account and region, a date
    /// (default layouts) or integers (Hive layouts), an integer hour, and the
    /// `storage.location.template` of the writer's folders.
    pub fn new(table: &Table) -> Projection {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| p.push((k.to_owned(), v));
        set("projection.enabled", "true".into());
        set("projection.accid.type", "enum".into());
        set("projection.accid.values", table.accounts.join(","));
        set("projection.awsregion.type", "enum".into());
        set("projection.awsregion.values", table.regions.join(","));
        if table.layout.is_hive() {
            set("projection.year.type", "integer".into());
            set(
                "projection.year.range",
                format!(
                    "{},{HIVE_LAST_YEAR}",
                    table.since.year().min(HIVE_LAST_YEAR)
                ),
            );
            set("projection.month.type", "integer".into());
            set("projection.month.range", "1,12".into());
            set("projection.month.digits", "2".into());
            set("projection.day.type", "integer".into());
            set("projection.day.range", "1,31".into());
            set("projection.day.digits", "2".into());
        } else {
            set("projection.day.type", "date".into());
            set("projection.day.format", "yyyy/MM/dd".into());
            set(
                "projection.day.range",
                format!("{},NOW", table.since.format("%Y/%m/%d")),
            );
            set("projection.day.interval", "1".into());
            set("projection.day.interval.unit", "DAYS".into());
        }
        if table.layout.is_hourly() {
            set("projection.hour.type", "integer".into());
            set("projection.hour.range", "0,23".into());
            set("projection.hour.digits", "2".into());
        }
        set("storage.location.template", table.location_template());
        Projection { properties: p }
    }
}

/// Returns the `CREATE EXTERNAL TABLE` statement, ending with `;` and a newline.
pub fn create_table(table: &Table, projection: Option<&Projection>) -> String {
    let mut sql = format!(
        "CREATE EXTERNAL TABLE IF NOT EXISTS {} (\n",
        quoted_table(table)
    );
    let fields = table.log_format.fields();
    for (i, field) in fields.iter().enumerate() {
        let comma = if i + 1 < fields.len() { "," } else { "" };
        sql.push_str(&format!(
            "  {} {}{comma}\n",
            identifier(&field.column_name()),
            field.athena_type()
        ));
    }
    sql.push_str(")\n");
    let partitions: Vec<String> = table
        .partition_columns()
        .iter()
        .map(|c| format!("{} string", identifier(c)))
        .collect();
    sql.push_str(&format!("PARTITIONED BY ({})\n", partitions.join(", ")));
    let mut properties: Vec<(String, String)> = Vec::new();
    match table.format {
        OutputFormat::Text => {
            // Columns bind by position: the list above is the format's order, and each
            // file's first line is its header.
            sql.push_str("ROW FORMAT DELIMITED\nFIELDS TERMINATED BY ' '\n");
            properties.push(("skip.header.line.count".into(), "1".into()));
        }
        OutputFormat::Parquet => {
            // Columns bind by name (`log_status`, …), as in the Parquet files. AWS's
            // example also sets the property "EXTERNAL"="true"; `CREATE EXTERNAL TABLE`
            // says it already, and Spark refuses that property.
            sql.push_str(concat!(
                "ROW FORMAT SERDE\n",
                "  'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'\n",
                "STORED AS INPUTFORMAT\n",
                "  'org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat'\n",
                "OUTPUTFORMAT\n",
                "  'org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat'\n",
            ));
        }
    }
    sql.push_str(&format!("LOCATION '{}'\n", literal(&table.location())));
    if let Some(projection) = projection {
        properties.extend(projection.properties.iter().cloned());
    }
    if properties.is_empty() {
        // Parquet without projection: nothing to set.
        sql.truncate(sql.trim_end().len());
        sql.push_str(";\n");
        return sql;
    }
    sql.push_str("TBLPROPERTIES (\n");
    for (i, (k, v)) in properties.iter().enumerate() {
        let comma = if i + 1 < properties.len() { "," } else { "" };
        sql.push_str(&format!("  \"{k}\"=\"{}\"{comma}\n", property(v)));
    }
    sql.push_str(");\n");
    sql
}

/// Returns the `ALTER TABLE … ADD IF NOT EXISTS PARTITION … LOCATION …;` of one partition.
pub fn add_partition(table: &Table, partition: &Partition) -> String {
    let values = partition.values(table.layout);
    let spec: Vec<String> = table
        .partition_columns()
        .iter()
        .zip(&values)
        .map(|(column, value)| format!("{}='{}'", identifier(column), literal(value)))
        .collect();
    let folder = partition
        .folder(table.layout, &table.prefix)
        .unwrap_or_default();
    format!(
        "ALTER TABLE {} ADD IF NOT EXISTS PARTITION ({}) LOCATION '{}{}';\n",
        quoted_table(table),
        spec.join(", "),
        literal(&table.root_url),
        literal(&folder)
    )
}

/// Hive DDL reserved words among column names; they are written in backticks.
const RESERVED: &[&str] = &["end", "date", "time", "timestamp", "user", "interval"];

/// Returns a column name for DDL, in backticks when it is a reserved word.
fn identifier(name: &str) -> String {
    if RESERVED.contains(&name) {
        format!("`{name}`")
    } else {
        name.to_owned()
    }
}

/// Returns the table name for DDL, each part in backticks.
fn quoted_table(table: &Table) -> String {
    match &table.database {
        Some(db) => format!("`{db}`.`{}`", table.table),
        None => format!("`{}`", table.table),
    }
}

/// Escapes a value for a single-quoted DDL string.
fn literal(value: &str) -> String {
    value.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Escapes a value for a double-quoted table property.
fn property(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use chrono::NaiveDate;

    use super::*;
    use crate::config::Settings;

    fn settings(extra_output: &str, sink: &str) -> Settings {
        crate::athena::test_settings(extra_output, sink, "since = \"2026-01-15\"")
    }

    const S3: &str = crate::athena::TEST_S3_SINK;

    /// The default format, default layout: AWS's column list and types (spec 5.2), in
    /// format order, with a projection that reaches the writer's folders.
    #[test]
    fn text_default_layout_is_the_aws_table_with_projection() {
        let s = settings("prefix = \"net\"", S3);
        let table = Table::new(&s, None, &[]);
        let sql = create_table(&table, Some(&Projection::new(&table)));
        let expected = r#"CREATE EXTERNAL TABLE IF NOT EXISTS `vpc_flow_logs` (
  version int,
  account_id string,
  interface_id string,
  srcaddr string,
  dstaddr string,
  srcport int,
  dstport int,
  protocol bigint,
  packets bigint,
  bytes bigint,
  start bigint,
  `end` bigint,
  action string,
  log_status string
)
PARTITIONED BY (accid string, awsregion string, day string)
ROW FORMAT DELIMITED
FIELDS TERMINATED BY ' '
LOCATION 's3://flows/net/AWSLogs/'
TBLPROPERTIES (
  "skip.header.line.count"="1",
  "projection.enabled"="true",
  "projection.accid.type"="enum",
  "projection.accid.values"="123456789012",
  "projection.awsregion.type"="enum",
  "projection.awsregion.values"="eu-west-3",
  "projection.day.type"="date",
  "projection.day.format"="yyyy/MM/dd",
  "projection.day.range"="2026/01/15,NOW",
  "projection.day.interval"="1",
  "projection.day.interval.unit"="DAYS",
  "storage.location.template"="s3://flows/net/AWSLogs/${accid}/vpcflowlogs/${awsregion}/${day}/"
);
"#;
        assert_eq!(sql, expected);
    }

    /// A format with `${region}` keeps its `region` column where the format has it; the
    /// partition is `awsregion`, so no column shifts (AWS's projection DDL drops
    /// `region` from the columns, spec 5.4).
    #[test]
    fn region_in_the_format_stays_a_column_in_place() {
        let s = settings(
            "log_format = \"${account-id} ${region} ${az-id} ${srcaddr} ${bytes} ${end}\"",
            S3,
        );
        let table = Table::new(&s, None, &[]);
        let sql = create_table(&table, None);
        assert!(sql.contains(
            "  account_id string,\n  region string,\n  az_id string,\n  srcaddr string,\n  bytes bigint,\n  `end` bigint\n)\n"
        ));
        assert!(sql.contains("PARTITIONED BY (accid string, awsregion string, day string)"));
        assert!(!sql.contains("projection"), "{sql}");
    }

    #[test]
    fn parquet_hive_hourly_binds_by_name_and_projects_the_hive_folders() {
        let s = settings("format = \"parquet\"\nlayout = \"hive-hourly\"", S3);
        let table = Table::new(&s, None, &[]);
        let sql = create_table(&table, Some(&Projection::new(&table)));
        assert!(sql.contains("'org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe'"));
        assert!(!sql.contains("skip.header"), "{sql}");
        assert!(!sql.contains("\"EXTERNAL\""), "{sql}");
        assert!(sql.contains(
            "PARTITIONED BY (accid string, awsregion string, year string, month string, day string, hour string)"
        ));
        for line in [
            "\"projection.year.range\"=\"2026,2099\"",
            "\"projection.month.digits\"=\"2\"",
            "\"projection.day.range\"=\"1,31\"",
            "\"projection.hour.range\"=\"0,23\"",
            "\"storage.location.template\"=\"s3://flows/AWSLogs/aws-account-id=${accid}/aws-service=vpcflowlogs/aws-region=${awsregion}/year=${year}/month=${month}/day=${day}/hour=${hour}/\"",
        ] {
            assert!(sql.contains(line), "{line} missing from\n{sql}");
        }
    }

    #[test]
    fn parquet_without_projection_has_no_empty_properties() {
        let s = settings("format = \"parquet\"", S3);
        let table = Table::new(&s, None, &[]);
        let sql = create_table(&table, None);
        assert!(sql.ends_with("LOCATION 's3://flows/AWSLogs/';\n"), "{sql}");
    }

    #[test]
    fn add_partition_names_the_writer_folder() {
        let dir = tempfile::tempdir().unwrap();
        let sink = format!("type = \"local\"\npath = \"{}\"", dir.path().display());
        for (layout, spec, folder) in [
            (
                "default",
                "accid='123456789012', awsregion='eu-west-3', day='2026/03/09'",
                "AWSLogs/123456789012/vpcflowlogs/eu-west-3/2026/03/09/",
            ),
            (
                "hive-hourly",
                "accid='123456789012', awsregion='eu-west-3', year='2026', month='03', day='09', hour='07'",
                "AWSLogs/aws-account-id=123456789012/aws-service=vpcflowlogs/aws-region=eu-west-3/year=2026/month=03/day=09/hour=07/",
            ),
        ] {
            let mut s = settings(&format!("layout = \"{layout}\""), &sink);
            s.athena.database = Some("net".into());
            let table = Table::new(&s, None, &[]);
            let p = Partition::new(
                "123456789012",
                "eu-west-3",
                NaiveDate::from_ymd_opt(2026, 3, 9).unwrap(),
                Some(7),
            );
            assert_eq!(
                add_partition(&table, &p),
                format!(
                    "ALTER TABLE `net`.`vpc_flow_logs` ADD IF NOT EXISTS PARTITION ({spec}) LOCATION 'file://{}/{folder}';\n",
                    dir.path().display()
                )
            );
        }
    }
}
