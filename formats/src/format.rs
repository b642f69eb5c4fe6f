//! [`LogFormat`]: an ordered list of fields, written `${a} ${b} …` (spec §2).

use std::fmt;
use std::str::FromStr;

use crate::field::{FIELD_COUNT, FieldId};

/// The AWS default format: the 14 version-2 fields in table order.
pub const DEFAULT_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";

/// An ordered, duplicate-free, non-empty list of fields: a flow log's record format.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LogFormat {
    fields: Vec<FieldId>,
}

/// Why a format string or header line was refused. Positions count fields from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The format has no field at all.
    #[error("the log format is empty; it needs at least one ${{field}}, e.g. '{DEFAULT_FORMAT}'")]
    Empty,
    /// A `${…}` token names no known field.
    #[error("unknown field '{token}' at position {position}{}", hint(.suggestion, true))]
    UnknownField {
        /// The token as written.
        token: String,
        /// 1-based position of the token.
        position: usize,
        /// The closest known field, if any is close.
        suggestion: Option<FieldId>,
    },
    /// A header line names no known field.
    #[error("unknown field '{token}' in header at position {position}{}", hint(.suggestion, false))]
    UnknownHeaderField {
        /// The name as written.
        token: String,
        /// 1-based position of the name.
        position: usize,
        /// The closest known field, if any is close.
        suggestion: Option<FieldId>,
    },
    /// A field appears twice.
    #[error("duplicate field '{field}' at position {position} (first at position {first})")]
    Duplicate {
        /// The repeated field.
        field: FieldId,
        /// Position of the first occurrence.
        first: usize,
        /// Position of the repeat.
        position: usize,
    },
    /// A known field name written without `${…}`.
    #[error("field '{field}' at position {position} must be written as '${{{field}}}'")]
    MissingBraces {
        /// The field the token names.
        field: FieldId,
        /// 1-based position of the token.
        position: usize,
    },
    /// Text that is not a `${field}` token.
    #[error(
        "unexpected text '{text}' at position {position}; fields are written as ${{field-name}} separated by spaces"
    )]
    StrayText {
        /// The offending text.
        text: String,
        /// 1-based position of the token.
        position: usize,
    },
}

fn hint(suggestion: &Option<FieldId>, braces: bool) -> String {
    match (suggestion, braces) {
        (Some(f), true) => format!("; did you mean '${{{f}}}'?"),
        (Some(f), false) => format!("; did you mean '{f}'?"),
        (None, _) => String::new(),
    }
}

impl LogFormat {
    /// Returns the AWS default format.
    pub fn aws_default() -> Self {
        LogFormat {
            fields: FieldId::ALL[..14].to_vec(),
        }
    }

    /// Builds a format from fields, refusing an empty list and duplicates.
    pub fn from_fields(fields: Vec<FieldId>) -> Result<Self, FormatError> {
        if fields.is_empty() {
            return Err(FormatError::Empty);
        }
        let mut first_at = [0usize; FIELD_COUNT];
        for (i, f) in fields.iter().enumerate() {
            let slot = &mut first_at[f.index()];
            if *slot != 0 {
                return Err(FormatError::Duplicate {
                    field: *f,
                    first: *slot,
                    position: i + 1,
                });
            }
            *slot = i + 1;
        }
        Ok(LogFormat { fields })
    }

    /// Parses a format string such as `${version} ${srcaddr}`. Tokens are separated by
    /// whitespace; every token must be a `${field}` of the catalog.
    pub fn parse(s: &str) -> Result<Self, FormatError> {
        let mut fields = Vec::new();
        for (i, token) in s.split_whitespace().enumerate() {
            let position = i + 1;
            let inner = token.strip_prefix("${").and_then(|t| t.strip_suffix('}'));
            let field = match inner {
                Some(name) => {
                    FieldId::from_name(name).ok_or_else(|| FormatError::UnknownField {
                        token: token.to_owned(),
                        position,
                        suggestion: FieldId::closest(name),
                    })?
                }
                None => {
                    let bare = token
                        .trim_start_matches('$')
                        .trim_start_matches('{')
                        .trim_end_matches('}');
                    return Err(match FieldId::from_name(bare) {
                        Some(field) => FormatError::MissingBraces { field, position },
                        None => FormatError::StrayText {
                            text: token.to_owned(),
                            position,
                        },
                    });
                }
            };
            fields.push(field);
        }
        Self::from_fields(fields)
    }

    /// Parses a header line (`version account-id …`): field ids without `${}`, separated
    /// by single spaces. A trailing `\r` is ignored.
    pub fn from_header(line: &str) -> Result<Self, FormatError> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let mut fields = Vec::new();
        for (i, name) in line.split_whitespace().enumerate() {
            let field =
                FieldId::from_name(name).ok_or_else(|| FormatError::UnknownHeaderField {
                    token: name.to_owned(),
                    position: i + 1,
                    suggestion: FieldId::closest(name),
                })?;
            fields.push(field);
        }
        Self::from_fields(fields)
    }

    /// Returns the fields in order.
    pub fn fields(&self) -> &[FieldId] {
        &self.fields
    }

    /// Returns the number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Always false: a format has at least one field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Returns true if the format contains `field`.
    pub fn contains(&self, field: FieldId) -> bool {
        self.fields.contains(&field)
    }

    /// Returns the 0-based position of `field`, if present.
    pub fn position(&self, field: FieldId) -> Option<usize> {
        self.fields.iter().position(|f| *f == field)
    }

    /// Returns true if this is exactly the AWS default format.
    pub fn is_aws_default(&self) -> bool {
        self.fields == FieldId::ALL[..14]
    }

    /// Returns the value written in the `version` field: 2 for the default format, else the
    /// highest "introduced in" version over the fields present (`version` itself counts as 2).
    pub fn version(&self) -> u8 {
        self.fields.iter().map(|f| f.version()).max().unwrap_or(2)
    }

    /// Returns the header line of text files: the field ids separated by single spaces,
    /// without a line terminator.
    pub fn header(&self) -> String {
        let names: Vec<&str> = self.fields.iter().map(|f| f.name()).collect();
        names.join(" ")
    }
}

impl Default for LogFormat {
    fn default() -> Self {
        Self::aws_default()
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, field) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "${{{field}}}")?;
        }
        Ok(())
    }
}

impl FromStr for LogFormat {
    type Err = FormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> String {
        LogFormat::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn default_format_round_trips() {
        let f = LogFormat::parse(DEFAULT_FORMAT).unwrap();
        assert_eq!(f, LogFormat::aws_default());
        assert!(f.is_aws_default());
        assert_eq!(f.to_string(), DEFAULT_FORMAT);
        assert_eq!(f.version(), 2);
        assert_eq!(
            f.header(),
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status"
        );
        assert_eq!(
            LogFormat::from_header(&format!("{}\r\n", f.header())).unwrap(),
            f
        );
    }

    #[test]
    fn version_is_the_highest_introduced_version() {
        assert_eq!(
            LogFormat::parse("${version} ${srcaddr}").unwrap().version(),
            2
        );
        assert_eq!(
            LogFormat::parse("${tcp-flags} ${version}")
                .unwrap()
                .version(),
            3
        );
        assert_eq!(
            LogFormat::parse("${version} ${vpc-id} ${region} ${srcaddr}")
                .unwrap()
                .version(),
            4
        );
        assert_eq!(LogFormat::parse("${flow-direction}").unwrap().version(), 5);
        assert_eq!(
            LogFormat::parse("${version} ${ecs-task-id} ${srcaddr}")
                .unwrap()
                .version(),
            7
        );
        assert_eq!(LogFormat::parse("${reject-reason}").unwrap().version(), 8);
        assert_eq!(
            LogFormat::parse("${asg-tag-2} ${resource-id}")
                .unwrap()
                .version(),
            11
        );
    }

    #[test]
    fn errors_name_the_token_and_suggest() {
        assert_eq!(
            err("${version} ${account-id} ${interface-id} ${srcadr}"),
            "unknown field '${srcadr}' at position 4; did you mean '${srcaddr}'?"
        );
        assert_eq!(
            err("${account_id}"),
            "unknown field '${account_id}' at position 1; did you mean '${account-id}'?"
        );
        assert_eq!(
            err("${nothing-like-this-at-all}"),
            "unknown field '${nothing-like-this-at-all}' at position 1"
        );
        assert!(err("").starts_with("the log format is empty"));
        assert!(err("   ").starts_with("the log format is empty"));
        assert_eq!(
            err("${srcaddr} ${dstaddr} ${srcaddr}"),
            "duplicate field 'srcaddr' at position 3 (first at position 1)"
        );
        assert_eq!(
            err("${version} account-id"),
            "field 'account-id' at position 2 must be written as '${account-id}'"
        );
        assert_eq!(
            err("${version} {srcaddr}"),
            "field 'srcaddr' at position 2 must be written as '${srcaddr}'"
        );
        assert!(err("${version} , ${srcaddr}").starts_with("unexpected text ',' at position 2"));
        assert!(err("${version}${srcaddr}").starts_with("unknown field '${version}${srcaddr}'"));
        assert_eq!(
            LogFormat::from_header("version srcadr")
                .unwrap_err()
                .to_string(),
            "unknown field 'srcadr' in header at position 2; did you mean 'srcaddr'?"
        );
    }
}
