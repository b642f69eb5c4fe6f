//! Metadata fields of the agent's records: `vpc-id`, `subnet-id`, `instance-id`, `az-id`,
//! `sublocation-type`/`sublocation-id`, `pkt-src-aws-service`/`pkt-dst-aws-service` and
//! `traffic-path`.
//!
//! They come from the `[metadata]` config section, optionally completed from EC2 instance
//! metadata (IMDSv2, [`crate::imds`]) at startup. What describes an interface (VPC, subnet,
//! instance, AZ) is resolved once per interface into an [`InterfaceMetadata`]; what
//! depends on the traffic (AWS service of an address, path of egress traffic) is looked
//! up per record in prefix maps built once, so [`MetadataSettings::apply`] costs two
//! binary searches over the ip-ranges and one over the traffic-path classes.
//!
//! Precedence, most specific first; a configured value always beats a discovered one:
//! - `subnet-id`: `[[interface]] subnet_id`, then the `[[metadata.subnet]]` entry whose
//!   CIDR contains the interface's primary address (IPv4 first), then IMDS per MAC;
//! - `vpc-id`: `[[interface]] vpc_id`, the subnet entry's `vpc_id`, `[metadata] vpc_id`,
//!   then IMDS per MAC;
//! - `az-id` / sublocation: the subnet entry's, then `[metadata]`'s, then IMDS's AZ id;
//!   when a sublocation is set `az-id` is `-` (as AWS writes it);
//! - `instance-id`: `[metadata] instance_id`, then IMDS.
//!
//! Which rows carry what: the interface's ids are written on every row, NODATA and
//! SKIPDATA included (they describe the interface, like `account-id` and `region`; the
//! spec leaves v3+ fields on those rows open). The AWS service names and `traffic-path`
//! describe traffic, so only `OK` rows have them, and `traffic-path` only on egress rows.
//!
//! The parts, one submodule each: `ids` (checks of the ids' shapes), `prefix`
//! (longest-prefix match over CIDRs), `ip_ranges` (AWS `ip-ranges.json`, [`AwsIpRanges`]),
//! `config` (the `[metadata]` section, [`MetadataConfig`] → [`MetadataSettings`]), `apply`
//! ([`MetadataSettings`]: per-interface resolution and the fields of each record) and
//! `discovery` (the host's interfaces and IMDS: `discover` and `complete`).

mod apply;
mod config;
mod discovery;
mod ids;
mod ip_ranges;
mod prefix;

pub use apply::{InterfaceMetadata, MetadataSettings, Sublocation, SubnetSettings};
pub use config::{MetadataConfig, SubnetConfig, TrafficPathConfig};
pub(crate) use discovery::{complete, discover};
pub use ids::{
    SUBLOCATION_TYPES, validate_az_id, validate_instance_id, validate_interface_id,
    validate_subnet_id, validate_vpc_id,
};
pub use ip_ranges::{AwsIpRanges, GENERIC_SERVICE, IpRangesError};

#[cfg(test)]
mod test_support;
