//! `athena-ddl`: the Athena table, partitions and named queries for the configured output.
//!
//! - [`table`]: the table an aggregator config describes (columns, location, partition
//!   columns of the key layout);
//! - [`ddl`]: `CREATE EXTERNAL TABLE` with partition projection, `ALTER TABLE ADD PARTITION`;
//! - [`queries`]: the named queries, written only with columns the format has;
//! - [`tree`]: finds the partitions (account, region, day, hour folders) present in the
//!   output, in a local directory or an S3 bucket.
//!
//! Partition columns never share a name with a data column (`accid`, `awsregion`, `day`,
//! and `year`/`month`/`hour`), so a format with `${region}` keeps every column in place
//! (text tables bind columns by position).

pub mod ddl;
pub mod queries;
pub mod table;
pub mod tree;

use std::path::{Path, PathBuf};

use crate::config::Settings;
use flowlog_publish::sink::SinkError;

pub use self::queries::{NamedQuery, QueryName};
pub use self::table::Table;
pub use self::tree::Partition;

/// Why `athena-ddl` could not produce its output.
#[derive(Debug, thiserror::Error)]
pub enum AthenaError {
    /// A query was asked for that does not exist.
    #[error("unknown query '{0}'; expected one of {list}", list = QueryName::list())]
    UnknownQuery(String),
    /// A query was asked for that the format cannot answer.
    #[error(
        "query '{query}' needs the field(s) {fields} that the format lacks; add them to output.log_format or leave the query out",
        fields = .missing.join(", ")
    )]
    MissingFields {
        /// The query.
        query: QueryName,
        /// Field ids it needs and the format does not have.
        missing: Vec<String>,
    },
    /// The output could not be listed.
    #[error("listing {location}: {source}")]
    List {
        /// The folder or S3 prefix.
        location: String,
        /// Why.
        #[source]
        source: ListError,
    },
    /// The S3 client could not be built.
    #[error("connecting to the sink: {0}")]
    Connect(#[source] SinkError),
    /// A query file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Why a folder of the output could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// Local directory.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// S3 request.
    #[error("{0}")]
    S3(String),
}

/// What the command was asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Print `ALTER TABLE … ADD PARTITION` statements for the partitions present.
    pub partitions: bool,
    /// Leave the partition projection properties out (engines without projection).
    pub no_projection: bool,
    /// Write the named queries into this directory.
    pub queries_dir: Option<PathBuf>,
    /// Only these queries (each must be possible); empty = every query the format allows.
    pub queries: Vec<String>,
    /// Table name instead of `athena.table`.
    pub table: Option<String>,
}

/// What the command produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The SQL to print: the `CREATE` statement, then the `ALTER` statements.
    pub sql: String,
    /// Query files written.
    pub written: Vec<PathBuf>,
    /// Queries left out (none were asked for by name), with the fields they miss.
    pub skipped: Vec<(QueryName, Vec<String>)>,
    /// Remarks for the operator (printed to stderr).
    pub notes: Vec<String>,
}

/// Builds the DDL (and writes the queries) for `settings`.
///
/// The output is listed only when something must be discovered: partitions
/// (`--partitions`), or accounts, regions or the first day when `[athena]` leaves them
/// unset.
pub async fn generate(settings: &Settings, request: &Request) -> Result<Output, AthenaError> {
    // Validate the query selection before touching the store.
    let selected = select_queries(&request.queries)?;
    let mut notes = Vec::new();
    let needs_listing = request.partitions
        || settings.athena.accounts.is_empty()
        || settings.athena.regions.is_empty()
        || (settings.athena.since.is_none() && !request.no_projection);
    let found = if needs_listing {
        let tree = tree::Tree::for_sink(&settings.publish.sink).await?;
        let mode = if request.partitions {
            tree::Walk::All
        } else {
            tree::Walk::Earliest
        };
        let base = table::base_key(&settings.publish.output.prefix);
        tree.partitions(settings.publish.output.layout, &base, mode)
            .await?
    } else {
        Vec::new()
    };
    if needs_listing && found.is_empty() {
        notes.push(format!(
            "no partitions (layout {}) found in the output yet; the projection uses [flow_log] account_id and region",
            settings.publish.output.layout
        ));
    }
    let table = Table::new(settings, request.table.as_deref(), &found);
    let mut sql = if request.no_projection {
        ddl::create_table(&table, None)
    } else {
        ddl::create_table(&table, Some(&ddl::Projection::new(&table)))
    };
    if request.partitions {
        for partition in &found {
            sql.push('\n');
            sql.push_str(&ddl::add_partition(&table, partition));
        }
    }

    let mut written = Vec::new();
    let mut skipped = Vec::new();
    if let Some(dir) = &request.queries_dir {
        let names = selected.clone().unwrap_or_else(|| QueryName::ALL.to_vec());
        let mut files = Vec::new();
        for name in names {
            match queries::build(name, &table) {
                Ok(query) => files.push(query),
                Err(missing) if selected.is_some() => {
                    return Err(AthenaError::MissingFields {
                        query: name,
                        missing,
                    });
                }
                Err(missing) => skipped.push((name, missing)),
            }
        }
        write_queries(dir, &files, &mut written)?;
    } else if let Some(names) = &selected {
        // Without a directory, `--query` still checks that the queries are possible.
        for name in names {
            if let Err(missing) = queries::build(*name, &table) {
                return Err(AthenaError::MissingFields {
                    query: *name,
                    missing,
                });
            }
        }
    }
    Ok(Output {
        sql,
        written,
        skipped,
        notes,
    })
}

fn select_queries(names: &[String]) -> Result<Option<Vec<QueryName>>, AthenaError> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut selected = Vec::new();
    for name in names {
        let query = name
            .trim_end_matches(".sql")
            .parse::<QueryName>()
            .map_err(|()| AthenaError::UnknownQuery(name.clone()))?;
        if !selected.contains(&query) {
            selected.push(query);
        }
    }
    Ok(Some(selected))
}

fn write_queries(
    dir: &Path,
    files: &[NamedQuery],
    written: &mut Vec<PathBuf>,
) -> Result<(), AthenaError> {
    std::fs::create_dir_all(dir).map_err(|source| AthenaError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for query in files {
        let path = dir.join(query.name.file_name());
        std::fs::write(&path, &query.sql).map_err(|source| AthenaError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(())
}

/// Settings for the module's unit tests: `[flow_log]` 123456789012 / eu-west-3, then the
/// given `[output]`, `[sink]` and `[athena]` bodies.
#[cfg(test)]
pub(crate) fn test_settings(output: &str, sink: &str, athena: &str) -> Settings {
    let text = format!(
        "[flow_log]\nid = \"fl-0123456789abcdef0\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\n\
         [output]\n{output}\n[sink]\n{sink}\n[athena]\n{athena}\n"
    );
    match crate::config::parse(&text, "test.toml") {
        Ok(settings) => settings,
        Err(e) => panic!("test config: {e}\n{text}"),
    }
}

/// The `[sink]` of [`test_settings`] for an S3 bucket `flows`.
#[cfg(test)]
pub(crate) const TEST_S3_SINK: &str = "type = \"s3\"\nbucket = \"flows\"\nregion = \"eu-west-3\"";
