//! Named queries, written in Athena's (Trino's) SQL dialect with only the columns the
//! format has. Every query also runs unchanged on Spark SQL and DuckDB.
//!
//! Aggregates: `flows` = `COUNT(*)`, `total_packets` = `SUM(packets)`, `total_bytes` =
//! `SUM(bytes)`. A NODATA or SKIPDATA row has no packets or bytes (`-`, NULL in the
//! table), so sums skip it; `COUNT(*)` counts it.

use std::fmt;
use std::str::FromStr;

use flowlog_formats::FieldId;

use super::table::Table;

/// The named queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryName {
    /// The 10 source/destination pairs that sent the most bytes.
    TopTalkers,
    /// Rejected traffic by addresses, port and protocol.
    RejectedTraffic,
    /// Traffic to port 22 (SSH) and 3389 (RDP).
    SshRdpTraffic,
    /// Flows, packets and bytes per interface and day.
    InterfaceTrafficByDay,
    /// IPv6 traffic by address pair.
    Ipv6Traffic,
    /// Records, packets and bytes of the whole table.
    TotalBytes,
}

impl QueryName {
    /// Every query, in output order.
    pub const ALL: [QueryName; 6] = [
        QueryName::TopTalkers,
        QueryName::RejectedTraffic,
        QueryName::SshRdpTraffic,
        QueryName::InterfaceTrafficByDay,
        QueryName::Ipv6Traffic,
        QueryName::TotalBytes,
    ];

    /// Returns the query's name (`top-talkers`).
    pub const fn name(self) -> &'static str {
        match self {
            QueryName::TopTalkers => "top-talkers",
            QueryName::RejectedTraffic => "rejected-traffic",
            QueryName::SshRdpTraffic => "ssh-rdp-traffic",
            QueryName::InterfaceTrafficByDay => "interface-traffic-by-day",
            QueryName::Ipv6Traffic => "ipv6-traffic",
            QueryName::TotalBytes => "total-bytes",
        }
    }

    /// Returns the file the query is written to (`top-talkers.sql`).
    pub fn file_name(self) -> String {
        format!("{}.sql", self.name())
    }

    /// Returns one line saying what the query answers.
    pub const fn description(self) -> &'static str {
        match self {
            QueryName::TopTalkers => {
                "the 10 source/destination address pairs that sent the most bytes"
            }
            QueryName::RejectedTraffic => {
                "rejected traffic (action = 'REJECT') by addresses, destination port and protocol"
            }
            QueryName::SshRdpTraffic => "traffic to SSH (22) and RDP (3389)",
            QueryName::InterfaceTrafficByDay => "flows, packets and bytes per interface and day",
            QueryName::Ipv6Traffic => "IPv6 traffic by address pair",
            QueryName::TotalBytes => "records, packets and bytes in the whole table",
        }
    }

    /// Returns the names, comma-separated, for messages.
    pub fn list() -> String {
        QueryName::ALL
            .iter()
            .map(|q| q.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for QueryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for QueryName {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QueryName::ALL.into_iter().find(|q| q.name() == s).ok_or(())
    }
}

/// One query file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedQuery {
    /// Which query.
    pub name: QueryName,
    /// Its text: comment lines, then one `SELECT` ending with `;`.
    pub sql: String,
}

/// Builds a query for `table`, or returns the ids of the fields it needs and the format
/// lacks.
pub fn build(name: QueryName, table: &Table) -> Result<NamedQuery, Vec<String>> {
    use FieldId::*;
    let required: &[FieldId] = match name {
        QueryName::TopTalkers | QueryName::Ipv6Traffic => &[SrcAddr, DstAddr, Bytes],
        QueryName::RejectedTraffic => &[Action, SrcAddr, DstAddr],
        QueryName::SshRdpTraffic => &[SrcAddr, DstAddr, DstPort],
        QueryName::InterfaceTrafficByDay => &[InterfaceId, Bytes],
        QueryName::TotalBytes => &[Bytes],
    };
    let missing: Vec<String> = required
        .iter()
        .filter(|f| !table.has(**f))
        .map(|f| f.name().to_owned())
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let has = |f: FieldId| table.has(f);
    let sums = |with_bytes: bool| {
        let mut s = Vec::new();
        if has(Packets) {
            s.push("SUM(packets) AS total_packets");
        }
        if with_bytes && has(Bytes) {
            s.push("SUM(bytes) AS total_bytes");
        }
        s
    };
    let q = match name {
        QueryName::TopTalkers => {
            let mut select = vec!["srcaddr", "dstaddr", "SUM(bytes) AS total_bytes"];
            if has(Packets) {
                select.push("SUM(packets) AS total_packets");
            }
            Select {
                columns: select.into_iter().map(str::to_owned).collect(),
                filter: vec!["bytes IS NOT NULL".into()],
                group: vec!["srcaddr".into(), "dstaddr".into()],
                order: vec![
                    "total_bytes DESC".into(),
                    "srcaddr".into(),
                    "dstaddr".into(),
                ],
                limit: Some(10),
            }
        }
        QueryName::RejectedTraffic => {
            let mut keys = vec!["srcaddr", "dstaddr"];
            if has(DstPort) {
                keys.push("dstport");
            }
            if has(Protocol) {
                keys.push("protocol");
            }
            let mut columns: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            columns.push("COUNT(*) AS flows".into());
            columns.extend(sums(true).into_iter().map(str::to_owned));
            let mut order = vec!["flows DESC".to_owned()];
            order.extend(keys.iter().map(|k| (*k).to_owned()));
            Select {
                columns,
                filter: vec!["action = 'REJECT'".into()],
                group: keys.iter().map(|k| (*k).to_owned()).collect(),
                order,
                limit: Some(100),
            }
        }
        QueryName::SshRdpTraffic => {
            let mut keys = vec!["srcaddr", "dstaddr", "dstport"];
            if has(Action) {
                keys.push("action");
            }
            let mut columns: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
            columns.push("COUNT(*) AS flows".into());
            columns.extend(sums(true).into_iter().map(str::to_owned));
            let mut filter = vec!["dstport IN (22, 3389)".to_owned()];
            if has(Protocol) {
                // TCP only: RDP's UDP transport always comes with a TCP connection.
                filter.push("protocol = 6".into());
            }
            let mut order = vec!["flows DESC".to_owned()];
            order.extend(keys.iter().map(|k| (*k).to_owned()));
            Select {
                columns,
                filter,
                group: keys.iter().map(|k| (*k).to_owned()).collect(),
                order,
                limit: Some(100),
            }
        }
        QueryName::InterfaceTrafficByDay => {
            let day = table.day_expression();
            let mut columns = vec![
                if day == "day" {
                    "day".to_owned()
                } else {
                    format!("{day} AS day")
                },
                "interface_id".to_owned(),
                "COUNT(*) AS flows".to_owned(),
            ];
            columns.extend(sums(true).into_iter().map(str::to_owned));
            Select {
                columns,
                filter: Vec::new(),
                group: vec![day.to_owned(), "interface_id".into()],
                order: vec!["day".into(), "interface_id".into()],
                limit: None,
            }
        }
        QueryName::Ipv6Traffic => {
            let mut columns = vec![
                "srcaddr".to_owned(),
                "dstaddr".to_owned(),
                "COUNT(*) AS flows".to_owned(),
            ];
            columns.extend(sums(true).into_iter().map(str::to_owned));
            let filter = if has(Type) {
                "type = 'IPv6'".to_owned()
            } else {
                "(srcaddr LIKE '%:%' OR dstaddr LIKE '%:%')".to_owned()
            };
            Select {
                columns,
                filter: vec![filter],
                group: vec!["srcaddr".into(), "dstaddr".into()],
                order: vec![
                    "total_bytes DESC".into(),
                    "srcaddr".into(),
                    "dstaddr".into(),
                ],
                limit: Some(100),
            }
        }
        QueryName::TotalBytes => {
            let mut columns = vec!["COUNT(*) AS records".to_owned()];
            columns.extend(sums(true).into_iter().map(str::to_owned));
            Select {
                columns,
                filter: Vec::new(),
                group: Vec::new(),
                order: Vec::new(),
                limit: None,
            }
        }
    };
    Ok(NamedQuery {
        name,
        sql: format!("{}{}", header(name, table), q.render(&table.name)),
    })
}

/// The comment lines at the top of a query file.
fn header(name: QueryName, table: &Table) -> String {
    let filter = if table.layout.is_hive() {
        format!(
            "year = '{}' AND month = '{}'",
            table.since.format("%Y"),
            table.since.format("%m")
        )
    } else {
        format!("day >= '{}'", table.since.format("%Y/%m/%d"))
    };
    format!(
        "-- {}: {}.\n-- Reads every partition of {}; to scan less, add a partition filter such as\n--   {filter}\n",
        name.name(),
        name.description(),
        table.name,
    )
}

/// A `SELECT` statement, rendered one clause per line.
struct Select {
    columns: Vec<String>,
    filter: Vec<String>,
    group: Vec<String>,
    order: Vec<String>,
    limit: Option<u32>,
}

impl Select {
    fn render(&self, table: &str) -> String {
        let mut sql = format!("SELECT {}\n", self.columns.join(",\n       "));
        sql.push_str(&format!("FROM {table}\n"));
        if !self.filter.is_empty() {
            sql.push_str(&format!("WHERE {}\n", self.filter.join("\n  AND ")));
        }
        if !self.group.is_empty() {
            sql.push_str(&format!("GROUP BY {}\n", self.group.join(", ")));
        }
        if !self.order.is_empty() {
            sql.push_str(&format!("ORDER BY {}\n", self.order.join(", ")));
        }
        if let Some(limit) = self.limit {
            sql.push_str(&format!("LIMIT {limit}\n"));
        }
        sql.truncate(sql.trim_end().len());
        sql.push_str(";\n");
        sql
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn table(log_format: Option<&str>, layout: &str) -> Table {
        let format_line = log_format
            .map(|f| format!("log_format = \"{f}\""))
            .unwrap_or_default();
        let s = crate::athena::test_settings(
            &format!("layout = \"{layout}\"\n{format_line}"),
            crate::athena::TEST_S3_SINK,
            "since = \"2026-01-15\"",
        );
        Table::new(&s, None, &[])
    }

    #[test]
    fn top_talkers_on_the_default_format() {
        let q = build(QueryName::TopTalkers, &table(None, "default")).unwrap();
        assert_eq!(
            q.sql,
            "-- top-talkers: the 10 source/destination address pairs that sent the most bytes.\n\
             -- Reads every partition of vpc_flow_logs; to scan less, add a partition filter such as\n\
             --   day >= '2026/01/15'\n\
             SELECT srcaddr,\n       dstaddr,\n       SUM(bytes) AS total_bytes,\n       SUM(packets) AS total_packets\n\
             FROM vpc_flow_logs\n\
             WHERE bytes IS NOT NULL\n\
             GROUP BY srcaddr, dstaddr\n\
             ORDER BY total_bytes DESC, srcaddr, dstaddr\n\
             LIMIT 10;\n"
        );
    }

    #[test]
    fn every_query_exists_for_the_default_format_and_uses_only_its_columns() {
        for layout in ["default", "hive-hourly"] {
            let t = table(None, layout);
            for name in QueryName::ALL {
                let q = build(name, &t).unwrap();
                assert!(q.sql.ends_with(";\n"));
                // The default format has neither `type` nor `region`.
                assert!(!q.sql.contains("type ="), "{}", q.sql);
            }
            let by_day = build(QueryName::InterfaceTrafficByDay, &t).unwrap().sql;
            if layout == "default" {
                assert!(by_day.contains("GROUP BY day, interface_id"), "{by_day}");
            } else {
                assert!(
                    by_day.contains("concat(year, '/', month, '/', day) AS day"),
                    "{by_day}"
                );
            }
        }
    }

    #[test]
    fn optional_columns_follow_the_format() {
        let t = table(
            Some("${srcaddr} ${dstaddr} ${dstport} ${bytes} ${type}"),
            "default",
        );
        let ssh = build(QueryName::SshRdpTraffic, &t).unwrap().sql;
        assert!(!ssh.contains("protocol"), "{ssh}");
        assert!(!ssh.contains("packets"), "{ssh}");
        assert!(!ssh.contains("action"), "{ssh}");
        let v6 = build(QueryName::Ipv6Traffic, &t).unwrap().sql;
        assert!(v6.contains("WHERE type = 'IPv6'"), "{v6}");
        assert_eq!(
            build(QueryName::RejectedTraffic, &t),
            Err(vec!["action".to_owned()])
        );
        assert_eq!(
            build(QueryName::InterfaceTrafficByDay, &t),
            Err(vec!["interface-id".to_owned()])
        );
    }

    #[test]
    fn names_round_trip() {
        for q in QueryName::ALL {
            assert_eq!(q.name().parse::<QueryName>(), Ok(q));
        }
        assert!("top".parse::<QueryName>().is_err());
    }
}
