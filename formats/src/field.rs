//! The field catalog: every VPC flow log field, its id, the version that introduced it,
//! its Parquet physical type and its Athena column name and type.
//!
//! The table below is the single source of truth; it follows the "AWS table order"
//! (spec §1.2). Version 6 fields belong to Transit Gateway flow logs and are not listed.

use std::fmt;
use std::str::FromStr;

/// Physical type of a field's Parquet column (and of its Athena column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParquetType {
    /// `INT32`; Athena `int` (or `bigint` for `protocol`, as in AWS's DDL).
    Int32,
    /// `INT64`; Athena `bigint`.
    Int64,
    /// `BYTE_ARRAY` annotated `UTF8`; Athena `string`.
    Utf8,
}

macro_rules! fields {
    ($( $variant:ident = $name:literal, $version:literal, $pq:ident, $athena:literal; )*) => {
        /// Identifies one flow log field. Declaration order is AWS's table order.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum FieldId { $( #[doc = concat!("`${", $name, "}`")] $variant, )* }

        impl FieldId {
            /// Every field, in AWS's table order.
            pub const ALL: &'static [FieldId] = &[ $( FieldId::$variant, )* ];

            /// Returns the field id as AWS writes it in formats and headers (`log-status`).
            pub const fn name(self) -> &'static str {
                match self { $( FieldId::$variant => $name, )* }
            }

            /// Returns the flow log version that introduced the field.
            pub const fn version(self) -> u8 {
                match self { $( FieldId::$variant => $version, )* }
            }

            /// Returns the Parquet physical type of the field's column.
            pub const fn parquet_type(self) -> ParquetType {
                match self { $( FieldId::$variant => ParquetType::$pq, )* }
            }

            /// Returns the column type AWS's Athena DDL uses for the field.
            pub const fn athena_type(self) -> &'static str {
                match self { $( FieldId::$variant => $athena, )* }
            }
        }
    };
}

fields! {
    Version = "version", 2, Int32, "int";
    AccountId = "account-id", 2, Utf8, "string";
    InterfaceId = "interface-id", 2, Utf8, "string";
    SrcAddr = "srcaddr", 2, Utf8, "string";
    DstAddr = "dstaddr", 2, Utf8, "string";
    SrcPort = "srcport", 2, Int32, "int";
    DstPort = "dstport", 2, Int32, "int";
    Protocol = "protocol", 2, Int32, "bigint";
    Packets = "packets", 2, Int64, "bigint";
    Bytes = "bytes", 2, Int64, "bigint";
    Start = "start", 2, Int64, "bigint";
    End = "end", 2, Int64, "bigint";
    Action = "action", 2, Utf8, "string";
    LogStatus = "log-status", 2, Utf8, "string";
    VpcId = "vpc-id", 3, Utf8, "string";
    SubnetId = "subnet-id", 3, Utf8, "string";
    InstanceId = "instance-id", 3, Utf8, "string";
    TcpFlags = "tcp-flags", 3, Int32, "int";
    Type = "type", 3, Utf8, "string";
    PktSrcAddr = "pkt-srcaddr", 3, Utf8, "string";
    PktDstAddr = "pkt-dstaddr", 3, Utf8, "string";
    Region = "region", 4, Utf8, "string";
    AzId = "az-id", 4, Utf8, "string";
    SublocationType = "sublocation-type", 4, Utf8, "string";
    SublocationId = "sublocation-id", 4, Utf8, "string";
    PktSrcAwsService = "pkt-src-aws-service", 5, Utf8, "string";
    PktDstAwsService = "pkt-dst-aws-service", 5, Utf8, "string";
    FlowDirection = "flow-direction", 5, Utf8, "string";
    TrafficPath = "traffic-path", 5, Int32, "int";
    EcsClusterArn = "ecs-cluster-arn", 7, Utf8, "string";
    EcsClusterName = "ecs-cluster-name", 7, Utf8, "string";
    EcsContainerInstanceArn = "ecs-container-instance-arn", 7, Utf8, "string";
    EcsContainerInstanceId = "ecs-container-instance-id", 7, Utf8, "string";
    EcsContainerId = "ecs-container-id", 7, Utf8, "string";
    EcsSecondContainerId = "ecs-second-container-id", 7, Utf8, "string";
    EcsServiceName = "ecs-service-name", 7, Utf8, "string";
    EcsTaskDefinitionArn = "ecs-task-definition-arn", 7, Utf8, "string";
    EcsTaskArn = "ecs-task-arn", 7, Utf8, "string";
    EcsTaskId = "ecs-task-id", 7, Utf8, "string";
    RejectReason = "reject-reason", 8, Utf8, "string";
    ResourceId = "resource-id", 9, Utf8, "string";
    EncryptionStatus = "encryption-status", 10, Int32, "int";
    InstanceTag = "instance-tag", 11, Utf8, "string";
    InstanceTag2 = "instance-tag-2", 11, Utf8, "string";
    InterfaceTag = "interface-tag", 11, Utf8, "string";
    InterfaceTag2 = "interface-tag-2", 11, Utf8, "string";
    AsgTag = "asg-tag", 11, Utf8, "string";
    AsgTag2 = "asg-tag-2", 11, Utf8, "string";
    InterfaceType = "interface-type", 11, Utf8, "string";
    NextHopInterfaceId = "next-hop-interface-id", 11, Utf8, "string";
    NextHopSubnetId = "next-hop-subnet-id", 11, Utf8, "string";
    NextHopAzId = "next-hop-az-id", 11, Utf8, "string";
    NextHopVpcId = "next-hop-vpc-id", 11, Utf8, "string";
    NextHopInterfaceType = "next-hop-interface-type", 11, Utf8, "string";
}

/// Number of fields in the catalog.
pub const FIELD_COUNT: usize = FieldId::ALL.len();

impl FieldId {
    /// Returns the field's index in [`FieldId::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Returns the Parquet / Athena column name: the id with `-` replaced by `_`.
    pub fn column_name(self) -> String {
        self.name().replace('-', "_")
    }

    /// Looks a field up by its hyphenated id (`log-status`).
    pub fn from_name(name: &str) -> Option<FieldId> {
        FieldId::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Looks a field up by its column name (`log_status`); hyphenated ids are accepted too.
    pub fn from_column_name(column: &str) -> Option<FieldId> {
        FieldId::ALL.iter().copied().find(|f| {
            f.name().len() == column.len() && f.name().replace('-', "_") == column.replace('-', "_")
        })
    }

    /// Returns true for fields whose values are integers (INT32 or INT64 columns).
    pub const fn is_integer(self) -> bool {
        !matches!(self.parquet_type(), ParquetType::Utf8)
    }

    /// Returns the known field whose id is closest to `token`, for "did you mean" hints.
    pub fn closest(token: &str) -> Option<FieldId> {
        let normalized = token.trim().to_ascii_lowercase().replace('_', "-");
        if let Some(exact) = FieldId::from_name(&normalized) {
            return Some(exact);
        }
        let (best, distance) = FieldId::ALL
            .iter()
            .map(|f| (*f, strsim::levenshtein(&normalized, f.name())))
            .min_by_key(|(_, d)| *d)?;
        let limit = (best.name().len() / 3).max(2);
        (distance <= limit).then_some(best)
    }
}

impl fmt::Display for FieldId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error for a field name that is not in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown field '{0}'")]
pub struct UnknownField(pub String);

impl FromStr for FieldId {
    type Err = UnknownField;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldId::from_name(s).ok_or_else(|| UnknownField(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_in_table_order_with_unique_names() {
        assert_eq!(FIELD_COUNT, 54);
        for (i, f) in FieldId::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
            assert_eq!(FieldId::from_name(f.name()), Some(*f));
            assert_eq!(FieldId::from_column_name(&f.column_name()), Some(*f));
        }
        assert_eq!(FieldId::ALL[13], FieldId::LogStatus);
        assert_eq!(FieldId::ALL[28], FieldId::TrafficPath);
        assert_eq!(FieldId::ALL[39], FieldId::RejectReason);
    }

    /// docs/format.md is the users' copy of this catalog: its field table must list every
    /// field, in this order, with this version, Parquet type and Athena type.
    #[test]
    fn the_format_document_lists_the_catalog() {
        let doc = include_str!("../../docs/format.md");
        let rows: Vec<Vec<&str>> = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| l.split('|').map(str::trim).collect())
            .filter(|cells: &Vec<&str>| cells.len() == 7 && cells[2].parse::<u8>().is_ok())
            .collect();
        let documented: Vec<String> = rows
            .iter()
            .map(|c| format!("{} {} {} {}", c[1], c[2], c[3], c[4]))
            .collect();
        let catalog: Vec<String> = FieldId::ALL
            .iter()
            .map(|f| {
                let pq = match f.parquet_type() {
                    ParquetType::Int32 => "INT32",
                    ParquetType::Int64 => "INT64",
                    ParquetType::Utf8 => "UTF8 string",
                };
                format!("`{}` {} {pq} `{}`", f.name(), f.version(), f.athena_type())
            })
            .collect();
        assert_eq!(documented, catalog);
    }

    #[test]
    fn versions_and_types_match_the_spec() {
        assert_eq!(FieldId::LogStatus.version(), 2);
        assert_eq!(FieldId::TcpFlags.version(), 3);
        assert_eq!(FieldId::AzId.version(), 4);
        assert_eq!(FieldId::TrafficPath.version(), 5);
        assert_eq!(FieldId::EcsTaskId.version(), 7);
        assert_eq!(FieldId::RejectReason.version(), 8);
        assert_eq!(FieldId::ResourceId.version(), 9);
        assert_eq!(FieldId::EncryptionStatus.version(), 10);
        assert_eq!(FieldId::NextHopInterfaceType.version(), 11);
        assert!(FieldId::ALL.iter().all(|f| f.version() != 6));
        assert_eq!(FieldId::Protocol.parquet_type(), ParquetType::Int32);
        assert_eq!(FieldId::Protocol.athena_type(), "bigint");
        assert_eq!(FieldId::Bytes.parquet_type(), ParquetType::Int64);
        assert_eq!(FieldId::AccountId.parquet_type(), ParquetType::Utf8);
        assert_eq!(FieldId::LogStatus.column_name(), "log_status");
    }

    #[test]
    fn closest_suggests_near_misses_only() {
        assert_eq!(FieldId::closest("srcadr"), Some(FieldId::SrcAddr));
        assert_eq!(FieldId::closest("account_id"), Some(FieldId::AccountId));
        assert_eq!(FieldId::closest("log-stats"), Some(FieldId::LogStatus));
        assert_eq!(FieldId::closest("completely-unrelated-words"), None);
    }
}
