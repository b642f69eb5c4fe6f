//! `[athena]`: the table `athena-ddl` describes.

use flowlog_formats::key::{validate_account_id, validate_region};
use flowlog_publish::settings::Problems;
use serde::Deserialize;

/// Default `athena.table`.
pub const DEFAULT_ATHENA_TABLE: &str = "vpc_flow_logs";

/// `[athena]`: the table `athena-ddl` describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AthenaSettings {
    /// Table name (lowercase letters, digits, `_`).
    pub table: String,
    /// Database the table is created in; `None` = the session's current database.
    pub database: Option<String>,
    /// Account ids the partition projection enumerates; empty = those found in the
    /// output plus `[flow_log] account_id`.
    pub accounts: Vec<String>,
    /// Regions the partition projection enumerates; empty = those found in the output
    /// plus `[flow_log] region`.
    pub regions: Vec<String>,
    /// First day the partition projection covers; `None` = the earliest day in the
    /// output (today when it is empty).
    pub since: Option<chrono::NaiveDate>,
}

impl Default for AthenaSettings {
    fn default() -> Self {
        AthenaSettings {
            table: DEFAULT_ATHENA_TABLE.to_owned(),
            database: None,
            accounts: Vec::new(),
            regions: Vec::new(),
            since: None,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct RawAthena {
    table: Option<String>,
    database: Option<String>,
    accounts: Option<Vec<String>>,
    regions: Option<Vec<String>>,
    since: Option<String>,
}

/// Checks an Athena table or database name: 1–255 lowercase letters, digits and `_`,
/// not starting with a digit (Athena folds names to lowercase; this refuses the surprise).
pub fn validate_athena_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a table/database name: use 1-255 lowercase letters, digits and '_', not starting with a digit"
        ))
    }
}

pub(super) fn validate_athena(raw: RawAthena, p: &mut Problems) -> AthenaSettings {
    let mut athena = AthenaSettings::default();
    if let Some(table) = raw.table
        && p.check("athena.table", validate_athena_name(&table))
            .is_some()
    {
        athena.table = table;
    }
    if let Some(database) = raw.database.filter(|d| !d.is_empty())
        && p.check("athena.database", validate_athena_name(&database))
            .is_some()
    {
        athena.database = Some(database);
    }
    for account in raw.accounts.unwrap_or_default() {
        if p.check("athena.accounts", validate_account_id(&account))
            .is_some()
            && !athena.accounts.contains(&account)
        {
            athena.accounts.push(account);
        }
    }
    for region in raw.regions.unwrap_or_default() {
        if p.check("athena.regions", validate_region(&region))
            .is_some()
            && !athena.regions.contains(&region)
        {
            athena.regions.push(region);
        }
    }
    if let Some(since) = raw.since.filter(|s| !s.is_empty()) {
        athena.since = p.check(
            "athena.since",
            chrono::NaiveDate::parse_from_str(&since, "%Y-%m-%d")
                .map_err(|e| format!("'{since}' is not a date such as 2026-01-01: {e}")),
        );
    }
    athena
}
