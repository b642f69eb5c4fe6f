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

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flowlog_formats::key::{validate_account_id, validate_region};
use flowlog_formats::{FlowDirection, FlowRecord, LogStatus, Text};
use ipnetwork::IpNetwork;
use serde::Deserialize;

use crate::imds::{self, Discovery, ImdsSettings, MacSelection};
use crate::interface::{InterfaceSettings, default_interface_id};

// ---------------------------------------------------------------------------------------
// Identifier checks
// ---------------------------------------------------------------------------------------

/// Checks `{prefix}` followed by 8 or 17 lowercase hex digits, the shape of EC2 ids.
fn hex_id(value: &str, prefix: &str, what: &str, example: &str) -> Result<(), String> {
    let ok = value.strip_prefix(prefix).is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{value}' is not {what} such as {example} ('{prefix}' then 8 or 17 lowercase hex digits)"
        ))
    }
}

/// Checks a VPC id (`vpc-0a1b2c3d4e5f60718`).
pub fn validate_vpc_id(value: &str) -> Result<(), String> {
    hex_id(value, "vpc-", "a VPC id", "vpc-0a1b2c3d4e5f60718")
}

/// Checks a subnet id (`subnet-0a1b2c3d4e5f60718`).
pub fn validate_subnet_id(value: &str) -> Result<(), String> {
    hex_id(value, "subnet-", "a subnet id", "subnet-0a1b2c3d4e5f60718")
}

/// Checks an instance id (`i-0a1b2c3d4e5f60718`).
pub fn validate_instance_id(value: &str) -> Result<(), String> {
    hex_id(value, "i-", "an instance id", "i-0a1b2c3d4e5f60718")
}

/// Checks a network interface id (`eni-0a1b2c3d4e5f60718`).
pub fn validate_interface_id(value: &str) -> Result<(), String> {
    hex_id(value, "eni-", "an interface id", "eni-0a1b2c3d4e5f60718")
}

/// Lowercase letters and digits in `-`-separated groups, none empty.
fn dash_groups(value: &str) -> Option<Vec<&str>> {
    let groups: Vec<&str> = value.split('-').collect();
    let ok = value.len() <= 64
        && groups.iter().all(|g| {
            !g.is_empty()
                && g.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    ok.then_some(groups)
}

/// Checks an availability zone *id* (`euw3-az1`, `use1-az4`, `usw2-lax1-az1`), not a zone
/// name such as `eu-west-3a`.
pub fn validate_az_id(value: &str) -> Result<(), String> {
    let ok = dash_groups(value).is_some_and(|groups| {
        let first = groups.first().copied().unwrap_or("");
        let last = groups.last().copied().unwrap_or("");
        let letters = first.bytes().take_while(u8::is_ascii_lowercase).count();
        groups.len() >= 2
            && letters >= 2
            && first.len() > letters
            && first.bytes().skip(letters).all(|b| b.is_ascii_digit())
            && last.len() > 2
            && last.starts_with("az")
            && last.bytes().skip(2).all(|b| b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{value}' is not an availability zone id such as euw3-az1 (the zone id, not its name such as eu-west-3a)"
        ))
    }
}

/// The `sublocation-type` values of VPC Flow Logs.
pub const SUBLOCATION_TYPES: [&str; 3] = ["wavelength", "outpost", "localzone"];

fn validate_sublocation_id(value: &str) -> Result<(), String> {
    if dash_groups(value).is_some() {
        Ok(())
    } else {
        Err(format!(
            "'{value}' is not a sublocation id such as op-0a1b2c3d4e5f60718 or usw2-lax1-az1 (lowercase letters, digits, '-')"
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Longest-prefix match
// ---------------------------------------------------------------------------------------

/// An address as an unsigned integer: `u32` for IPv4, `u128` for IPv6.
trait AddressBits: Copy + Ord + fmt::Debug {
    /// The host bits of a prefix of `len` bits set, the rest clear.
    fn host_mask(len: u8) -> Self;
    fn or(self, other: Self) -> Self;
    fn and_not(self, other: Self) -> Self;
    fn next(self) -> Option<Self>;
}

macro_rules! address_bits {
    ($t:ty) => {
        impl AddressBits for $t {
            fn host_mask(len: u8) -> Self {
                <$t>::MAX.checked_shr(u32::from(len)).unwrap_or(0)
            }
            fn or(self, other: Self) -> Self {
                self | other
            }
            fn and_not(self, other: Self) -> Self {
                self & !other
            }
            fn next(self) -> Option<Self> {
                self.checked_add(1)
            }
        }
    };
}
address_bits!(u32);
address_bits!(u128);

/// A value of no prefix.
const NO_VALUE: u32 = u32::MAX;

/// One prefix given to [`PrefixMap::build`].
#[derive(Debug, Clone, Copy)]
struct PrefixEntry<A> {
    /// Network address (host bits clear).
    network: A,
    /// Prefix length.
    len: u8,
    /// Value of addresses in the prefix.
    value: u32,
    /// Among entries for the very same prefix, the lowest rank is kept.
    rank: u32,
    /// A generic entry (AWS's `AMAZON`) defers to any prefix enclosing it.
    generic: bool,
}

/// Longest-prefix match over a fixed set of CIDR prefixes, flattened into disjoint
/// address ranges: `starts` is sorted and `values[i]` holds from `starts[i]` up to
/// `starts[i + 1]`. A lookup is one binary search.
#[derive(Clone, Default)]
struct PrefixMap<A> {
    starts: Vec<A>,
    values: Vec<u32>,
}

impl<A: AddressBits> PrefixMap<A> {
    fn build(mut entries: Vec<PrefixEntry<A>>) -> Self {
        entries.sort_by_key(|e| (e.network, e.len, e.rank));
        entries.dedup_by(|later, kept| later.network == kept.network && later.len == kept.len);
        let mut map = PrefixMap {
            starts: Vec::new(),
            values: Vec::new(),
        };
        // Open prefixes enclosing the current one: (last address, value in force, whether
        // that value comes from a non-generic entry).
        let mut open: Vec<(A, u32, bool)> = Vec::new();
        for e in &entries {
            while let Some(&(last, _, _)) = open.last() {
                if last >= e.network {
                    break;
                }
                open.pop();
                if let Some(after) = last.next() {
                    map.push(after, open.last().map_or(NO_VALUE, |o| o.1));
                }
            }
            let (value, specific) = match open.last() {
                Some(&(_, enclosing, true)) if e.generic => (enclosing, true),
                _ => (e.value, !e.generic),
            };
            map.push(e.network, value);
            open.push((e.network.or(A::host_mask(e.len)), value, specific));
        }
        while let Some((last, _, _)) = open.pop() {
            if let Some(after) = last.next() {
                map.push(after, open.last().map_or(NO_VALUE, |o| o.1));
            }
        }
        map.starts.shrink_to_fit();
        map.values.shrink_to_fit();
        map
    }

    /// Starts a range at `at`; a later range at the same address replaces the earlier.
    fn push(&mut self, at: A, value: u32) {
        if self.starts.last() == Some(&at) {
            self.starts.pop();
            self.values.pop();
        }
        let current = self.values.last().copied().unwrap_or(NO_VALUE);
        if current != value {
            self.starts.push(at);
            self.values.push(value);
        }
    }

    fn lookup(&self, address: A) -> Option<u32> {
        let after = self.starts.partition_point(|s| *s <= address);
        let value = *self.values.get(after.checked_sub(1)?)?;
        (value != NO_VALUE).then_some(value)
    }
}

/// IPv4 and IPv6 prefix maps side by side.
#[derive(Clone, Default)]
struct IpPrefixMap {
    v4: PrefixMap<u32>,
    v6: PrefixMap<u128>,
}

impl fmt::Debug for IpPrefixMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpPrefixMap")
            .field("v4_ranges", &self.v4.starts.len())
            .field("v6_ranges", &self.v6.starts.len())
            .finish()
    }
}

/// A prefix for [`IpPrefixMap::build`].
#[derive(Debug, Clone, Copy)]
struct IpPrefix {
    network: IpNetwork,
    value: u32,
    rank: u32,
    generic: bool,
}

impl IpPrefixMap {
    fn build(prefixes: impl IntoIterator<Item = IpPrefix>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for p in prefixes {
            let len = p.network.prefix();
            match p.network.ip() {
                IpAddr::V4(a) => v4.push(PrefixEntry {
                    network: u32::from(a).and_not(u32::host_mask(len)),
                    len,
                    value: p.value,
                    rank: p.rank,
                    generic: p.generic,
                }),
                IpAddr::V6(a) => v6.push(PrefixEntry {
                    network: u128::from(a).and_not(u128::host_mask(len)),
                    len,
                    value: p.value,
                    rank: p.rank,
                    generic: p.generic,
                }),
            }
        }
        IpPrefixMap {
            v4: PrefixMap::build(v4),
            v6: PrefixMap::build(v6),
        }
    }

    fn lookup(&self, address: IpAddr) -> Option<u32> {
        match address {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    fn is_empty(&self) -> bool {
        self.v4.starts.is_empty() && self.v6.starts.is_empty()
    }
}

/// Parses a CIDR written with its `/len`; refuses host bits (`10.0.1.5/24`).
/// Validates a required CIDR that may appear only once in its list (`seen`); reports a
/// problem under `key` and returns `None` otherwise.
fn unique_cidr(
    key: &str,
    text: Option<&str>,
    seen: &mut HashSet<IpNetwork>,
    add: &mut dyn FnMut(&str, String),
) -> Option<IpNetwork> {
    match text.map(parse_cidr) {
        None => {
            add(key, "is required".into());
            None
        }
        Some(Err(problem)) => {
            add(key, problem);
            None
        }
        Some(Ok(n)) if !seen.insert(n) => {
            add(key, format!("{n} is listed twice"));
            None
        }
        Some(Ok(n)) => Some(n),
    }
}

fn parse_cidr(text: &str) -> Result<IpNetwork, String> {
    let network: IpNetwork = text
        .contains('/')
        .then(|| text.parse().ok())
        .flatten()
        .ok_or_else(|| format!("'{text}' is not a CIDR such as 10.0.1.0/24 or 2001:db8::/56"))?;
    if network.ip() != network.network() {
        return Err(format!(
            "'{text}' has host bits set; the network is {}/{}",
            network.network(),
            network.prefix()
        ));
    }
    Ok(network)
}

// ---------------------------------------------------------------------------------------
// AWS ip-ranges.json
// ---------------------------------------------------------------------------------------

/// The service name AWS gives every one of its ranges.
pub const GENERIC_SERVICE: &str = "AMAZON";

/// The AWS address ranges of an `ip-ranges.json` file, for `pkt-src-aws-service` and
/// `pkt-dst-aws-service`.
///
/// Every AWS range is listed under `AMAZON` and most also under a specific service, so
/// an address usually matches several entries; the one written is chosen so:
/// 1. a specific service beats `AMAZON`, whatever the prefix lengths (an `AMAZON` prefix
///    inside an `S3` one is still S3; AWS's own example writes `S3` for such addresses);
/// 2. otherwise the longest matching prefix wins;
/// 3. for the very same prefix under several specific services, the service with the
///    fewest prefixes in the file (the narrowest subset, e.g. `ROUTE53_HEALTHCHECKS`
///    before `EC2`) wins, then the alphabetically first.
///
/// Addresses in no range (private addresses, other clouds) have no service (`-`).
pub struct AwsIpRanges {
    services: Vec<Text>,
    map: IpPrefixMap,
    prefixes: usize,
}

impl fmt::Debug for AwsIpRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsIpRanges")
            .field("prefixes", &self.prefixes)
            .field("services", &self.services.len())
            .field("map", &self.map)
            .finish()
    }
}

/// An `ip-ranges.json` file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IpRangesError {
    /// The file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not JSON of the expected shape.
    #[error("{} is not an AWS ip-ranges.json document", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// Cause, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// An entry is invalid.
    #[error("{}: {entry}: {problem}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// JSON path of the value (`prefixes[12].ip_prefix`).
        entry: String,
        /// What is wrong.
        problem: String,
    },
    /// Neither list is present.
    #[error("{} has neither `prefixes` nor `ipv6_prefixes`", path.display())]
    NoPrefixes {
        /// The file.
        path: PathBuf,
    },
}

#[derive(Deserialize)]
struct RawIpRanges {
    prefixes: Option<Vec<RawV4Prefix>>,
    ipv6_prefixes: Option<Vec<RawV6Prefix>>,
}

#[derive(Deserialize)]
struct RawV4Prefix {
    ip_prefix: String,
    service: String,
}

#[derive(Deserialize)]
struct RawV6Prefix {
    ipv6_prefix: String,
    service: String,
}

impl AwsIpRanges {
    /// Reads an `ip-ranges.json` file (as published at
    /// `https://ip-ranges.amazonaws.com/ip-ranges.json`).
    pub fn load(path: &Path) -> Result<AwsIpRanges, IpRangesError> {
        let bytes = std::fs::read(path).map_err(|source| IpRangesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&bytes, path)
    }

    /// Parses `ip-ranges.json` content; `path` names it in errors.
    pub fn from_json(json: &[u8], path: &Path) -> Result<AwsIpRanges, IpRangesError> {
        let raw: RawIpRanges =
            serde_json::from_slice(json).map_err(|source| IpRangesError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        if raw.prefixes.is_none() && raw.ipv6_prefixes.is_none() {
            return Err(IpRangesError::NoPrefixes {
                path: path.to_path_buf(),
            });
        }
        let entries = raw
            .prefixes
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                (
                    format!("prefixes[{i}]"),
                    "ip_prefix",
                    p.ip_prefix,
                    false,
                    p.service,
                )
            })
            .chain(
                raw.ipv6_prefixes
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| {
                        (
                            format!("ipv6_prefixes[{i}]"),
                            "ipv6_prefix",
                            p.ipv6_prefix,
                            true,
                            p.service,
                        )
                    }),
            );
        let entry_error = |entry: String, problem: String| IpRangesError::Entry {
            path: path.to_path_buf(),
            entry,
            problem,
        };
        let mut services: Vec<Text> = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        let mut parsed: Vec<(IpNetwork, u32)> = Vec::new();
        for (at, key, prefix, v6, service) in entries {
            let network: IpNetwork = prefix
                .contains('/')
                .then(|| prefix.parse().ok())
                .flatten()
                .filter(|n: &IpNetwork| n.is_ipv6() == v6)
                .ok_or_else(|| {
                    entry_error(
                        format!("{at}.{key}"),
                        format!(
                            "'{prefix}' is not an {} CIDR",
                            if v6 { "IPv6" } else { "IPv4" }
                        ),
                    )
                })?;
            if service.is_empty() || !service.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(entry_error(
                    format!("{at}.service"),
                    format!("'{service}' is not a service name such as S3"),
                ));
            }
            let index = match services.iter().position(|s| **s == *service) {
                Some(i) => i,
                None => {
                    services.push(service.as_str().into());
                    counts.push(0);
                    services.len() - 1
                }
            };
            if let Some(c) = counts.get_mut(index) {
                *c += 1;
            }
            parsed.push((network, u32::try_from(index).unwrap_or(NO_VALUE)));
        }
        // Rank: specific services before AMAZON, then the narrowest subset, then by name.
        let mut order: Vec<usize> = (0..services.len()).collect();
        order.sort_by(|&a, &b| {
            let key = |i: usize| {
                (
                    services.get(i).is_some_and(|s| &**s == GENERIC_SERVICE),
                    counts.get(i).copied().unwrap_or(0),
                    services.get(i).cloned(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut rank = vec![0u32; services.len()];
        for (position, &service) in order.iter().enumerate() {
            if let Some(r) = rank.get_mut(service) {
                *r = u32::try_from(position).unwrap_or(u32::MAX);
            }
        }
        let prefixes = parsed.len();
        let map = IpPrefixMap::build(parsed.into_iter().map(|(network, value)| {
            let index = usize::try_from(value).unwrap_or(usize::MAX);
            IpPrefix {
                network,
                value,
                rank: rank.get(index).copied().unwrap_or(u32::MAX),
                generic: services.get(index).is_some_and(|s| &**s == GENERIC_SERVICE),
            }
        }));
        Ok(AwsIpRanges {
            services,
            map,
            prefixes,
        })
    }

    /// Returns the AWS service `address` belongs to, per the rules above.
    pub fn service(&self, address: IpAddr) -> Option<&Text> {
        let index = usize::try_from(self.map.lookup(address)?).ok()?;
        self.services.get(index)
    }

    /// Prefix entries read from the file (both lists).
    pub fn prefix_count(&self) -> usize {
        self.prefixes
    }

    /// Distinct service names in the file.
    pub fn services(&self) -> &[Text] {
        &self.services
    }
}

// ---------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------

/// The `[metadata]` config section, as written. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// `instance-id` of every interface (`i-…`). Default: IMDS's, else `-`.
    pub instance_id: Option<String>,
    /// `vpc-id` of interfaces for which nothing more specific is known (`vpc-…`).
    pub vpc_id: Option<String>,
    /// `az-id` of interfaces for which nothing more specific is known (`euw3-az1`).
    pub az_id: Option<String>,
    /// `sublocation-type` (`wavelength`, `outpost`, `localzone`); with `sublocation_id`.
    pub sublocation_type: Option<String>,
    /// `sublocation-id` (`op-…`, a Local Zone id…); with `sublocation_type`.
    pub sublocation_id: Option<String>,
    /// Path of an AWS `ip-ranges.json` file, for `pkt-src-aws-service` and
    /// `pkt-dst-aws-service` (relative paths from the working directory). Default: none,
    /// both fields `-`.
    pub ip_ranges: Option<String>,
    /// Discover account, region, instance, AZ id and per-interface ids from EC2 instance
    /// metadata (IMDSv2) at startup. Default false. Configured values win over discovered
    /// ones; `flow_log.account_id` and `flow_log.region` may then be left out.
    pub imds: Option<bool>,
    /// Base URL of the instance metadata service. Default `http://169.254.169.254`.
    pub imds_endpoint: Option<String>,
    /// Longest time one IMDS request attempt may take, e.g. `"2s"`; each request is tried
    /// up to 3 times. Default `1s`, at most `60s`.
    pub imds_timeout: Option<String>,
    /// The CIDR → subnet map (`[[metadata.subnet]]`).
    #[serde(default)]
    pub subnet: Vec<SubnetConfig>,
    /// Traffic-path classes of destinations (`[[metadata.traffic_path]]`).
    #[serde(default)]
    pub traffic_path: Vec<TrafficPathConfig>,
}

/// One `[[metadata.subnet]]` entry: the subnet of interfaces whose primary address is in
/// `cidr`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    /// The subnet's CIDR (IPv4 or IPv6; a subnet with both is listed twice). Required.
    pub cidr: Option<String>,
    /// `subnet-id` (`subnet-…`). Required.
    pub subnet_id: Option<String>,
    /// `vpc-id` of the subnet (default: `[metadata] vpc_id`).
    pub vpc_id: Option<String>,
    /// `az-id` of the subnet (default: `[metadata] az_id`).
    pub az_id: Option<String>,
    /// `sublocation-type` of a subnet in a Local Zone, Wavelength Zone or Outpost.
    pub sublocation_type: Option<String>,
    /// `sublocation-id` of that sublocation.
    pub sublocation_id: Option<String>,
}

/// One `[[metadata.traffic_path]]` entry: egress traffic to `cidr` takes `path`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficPathConfig {
    /// Destination CIDR; the longest matching entry applies. Required.
    pub cidr: Option<String>,
    /// `traffic-path` value 1-8 (1 same VPC, 2 internet gateway or gateway endpoint,
    /// 3 virtual private gateway, 4 intra-region peering, 5 inter-region peering, 6 local
    /// gateway, 7 gateway VPC endpoint (Nitro), 8 internet gateway (Nitro)). Required.
    pub path: Option<i64>,
}

/// A Wavelength Zone, Outpost or Local Zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sublocation {
    /// `sublocation-type`.
    pub kind: Text,
    /// `sublocation-id`.
    pub id: Text,
}

/// Where an interface is: an AZ, a sublocation, or unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Location {
    #[default]
    Unknown,
    Az(Text),
    Sub(Sublocation),
}

/// One validated `[[metadata.subnet]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetSettings {
    /// The CIDR.
    pub cidr: IpNetwork,
    /// `subnet-id`.
    pub subnet_id: Text,
    /// `vpc-id`, if given.
    pub vpc_id: Option<Text>,
    /// `az-id`, if given.
    pub az_id: Option<Text>,
    /// Sublocation, if given.
    pub sublocation: Option<Sublocation>,
}

impl SubnetSettings {
    fn location(&self) -> Location {
        match (&self.sublocation, &self.az_id) {
            (Some(s), _) => Location::Sub(s.clone()),
            (None, Some(az)) => Location::Az(az.clone()),
            (None, None) => Location::Unknown,
        }
    }
}

/// The metadata fields of one interface, written on each of its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceMetadata {
    /// `vpc-id`.
    pub vpc_id: Option<Text>,
    /// `subnet-id`.
    pub subnet_id: Option<Text>,
    /// `instance-id`.
    pub instance_id: Option<Text>,
    /// `az-id` (`None` when in a sublocation).
    pub az_id: Option<Text>,
    /// `sublocation-type`.
    pub sublocation_type: Option<Text>,
    /// `sublocation-id`.
    pub sublocation_id: Option<Text>,
}

/// Per-interface keys of `[[interface]]` and what IMDS said for its MAC.
#[derive(Debug, Clone, Default)]
struct InterfaceKeys {
    name: String,
    subnet_id: Option<Text>,
    vpc_id: Option<Text>,
    discovered_subnet_id: Option<Text>,
    discovered_vpc_id: Option<Text>,
}

/// Validated `[metadata]` plus the per-interface metadata resolved from it.
#[derive(Debug, Clone, Default)]
pub struct MetadataSettings {
    /// `[metadata] instance_id`.
    pub instance_id: Option<Text>,
    /// `[metadata] vpc_id`.
    pub vpc_id: Option<Text>,
    /// `[metadata] az_id`.
    pub az_id: Option<Text>,
    /// `[metadata] sublocation_type` / `sublocation_id`.
    pub sublocation: Option<Sublocation>,
    /// The loaded `ip_ranges` file.
    pub ip_ranges: Option<Arc<AwsIpRanges>>,
    /// Where to discover from, when `imds = true`.
    pub imds: Option<ImdsSettings>,
    /// The CIDR → subnet map.
    pub subnets: Vec<SubnetSettings>,
    /// What IMDS discovery found, when it ran.
    pub discovered: Option<Discovery>,
    subnet_map: IpPrefixMap,
    traffic_paths: IpPrefixMap,
    interface_keys: Vec<InterfaceKeys>,
    /// Resolved metadata by `interface-id`.
    interfaces: Vec<(Text, InterfaceMetadata)>,
    /// Metadata of interfaces not in `interfaces`.
    fallback: InterfaceMetadata,
}

/// Largest accepted `imds_timeout`.
const MAX_IMDS_TIMEOUT: Duration = Duration::from_secs(60);

fn imds_settings(raw: &MetadataConfig, add: &mut dyn FnMut(&str, String)) -> Option<ImdsSettings> {
    let mut settings = ImdsSettings::default();
    if let Some(endpoint) = &raw.imds_endpoint {
        let rest = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"));
        let host = rest.map(|r| r.split('/').next().unwrap_or(""));
        let path_ok = rest.is_some_and(|r| r.find('/').is_none_or(|i| r[i..] == *"/"));
        if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) || !path_ok {
            add(
                "metadata.imds_endpoint",
                format!("'{endpoint}' is not a base URL such as http://169.254.169.254"),
            );
        } else {
            settings.endpoint = endpoint.trim_end_matches('/').to_owned();
        }
    }
    if let Some(text) = &raw.imds_timeout {
        match flowlog_runtime::parse_duration(text) {
            Ok(d) if !d.is_zero() && d <= MAX_IMDS_TIMEOUT => settings.timeout = d,
            Ok(_) => add(
                "metadata.imds_timeout",
                format!("'{text}' is not between 1ms and 60s"),
            ),
            Err(e) => add(
                "metadata.imds_timeout",
                format!("'{text}' is not a duration such as 2s: {e}"),
            ),
        }
    }
    (raw.imds == Some(true)).then_some(settings)
}

/// Validates an optional id; `None` (with the problem listed) when invalid.
fn checked(
    key: &str,
    value: Option<&String>,
    check: fn(&str) -> Result<(), String>,
    add: &mut dyn FnMut(&str, String),
) -> Option<Text> {
    let value = value?;
    match check(value) {
        Ok(()) => Some(value.as_str().into()),
        Err(problem) => {
            add(key, problem);
            None
        }
    }
}

/// Validates a sublocation pair and its exclusion with an `az_id`.
fn sublocation(
    at: &str,
    kind: Option<&String>,
    id: Option<&String>,
    has_az: bool,
    add: &mut dyn FnMut(&str, String),
) -> Option<Sublocation> {
    let key = |k: &str| format!("{at}{k}");
    match (kind, id) {
        (None, None) => None,
        (Some(_), None) => {
            add(
                &key("sublocation_id"),
                "is required with sublocation_type".into(),
            );
            None
        }
        (None, Some(_)) => {
            add(
                &key("sublocation_type"),
                "is required with sublocation_id".into(),
            );
            None
        }
        (Some(kind), Some(id)) => {
            let mut ok = true;
            if !SUBLOCATION_TYPES.contains(&kind.as_str()) {
                add(
                    &key("sublocation_type"),
                    format!("'{kind}' is not one of wavelength, outpost, localzone"),
                );
                ok = false;
            }
            if let Err(problem) = validate_sublocation_id(id) {
                add(&key("sublocation_id"), problem);
                ok = false;
            }
            if has_az {
                add(
                    &key("az_id"),
                    "cannot be combined with a sublocation (az-id is '-' for sublocation traffic)"
                        .into(),
                );
                ok = false;
            }
            ok.then(|| Sublocation {
                kind: kind.as_str().into(),
                id: id.as_str().into(),
            })
        }
    }
}

impl MetadataSettings {
    /// Validates a `[metadata]` section (absent = all defaults), listing every problem with
    /// its key through `add`. Reads the `ip_ranges` file.
    pub fn from_config(
        raw: Option<MetadataConfig>,
        add: &mut dyn FnMut(&str, String),
    ) -> MetadataSettings {
        let raw = raw.unwrap_or_default();
        let mut settings = MetadataSettings {
            instance_id: checked(
                "metadata.instance_id",
                raw.instance_id.as_ref(),
                validate_instance_id,
                add,
            ),
            vpc_id: checked("metadata.vpc_id", raw.vpc_id.as_ref(), validate_vpc_id, add),
            az_id: checked("metadata.az_id", raw.az_id.as_ref(), validate_az_id, add),
            sublocation: sublocation(
                "metadata.",
                raw.sublocation_type.as_ref(),
                raw.sublocation_id.as_ref(),
                raw.az_id.is_some(),
                add,
            ),
            imds: imds_settings(&raw, add),
            ..MetadataSettings::default()
        };
        if let Some(path) = &raw.ip_ranges {
            match AwsIpRanges::load(Path::new(path)) {
                Ok(ranges) => settings.ip_ranges = Some(Arc::new(ranges)),
                Err(e) => add("metadata.ip_ranges", flowlog_runtime::error_chain(&e)),
            }
        }
        let mut cidrs = HashSet::new();
        for (i, s) in raw.subnet.iter().enumerate() {
            let at = format!("metadata.subnet[{i}].");
            let key = |k: &str| format!("{at}{k}");
            let cidr = unique_cidr(&key("cidr"), s.cidr.as_deref(), &mut cidrs, add);
            if s.subnet_id.is_none() {
                add(&key("subnet_id"), "is required".into());
            }
            let subnet_id = checked(
                &key("subnet_id"),
                s.subnet_id.as_ref(),
                validate_subnet_id,
                add,
            );
            let vpc_id = checked(&key("vpc_id"), s.vpc_id.as_ref(), validate_vpc_id, add);
            let az_id = checked(&key("az_id"), s.az_id.as_ref(), validate_az_id, add);
            let sub = sublocation(
                &at,
                s.sublocation_type.as_ref(),
                s.sublocation_id.as_ref(),
                s.az_id.is_some(),
                add,
            );
            if let (Some(cidr), Some(subnet_id)) = (cidr, subnet_id) {
                settings.subnets.push(SubnetSettings {
                    cidr,
                    subnet_id,
                    vpc_id,
                    az_id,
                    sublocation: sub,
                });
            }
        }
        settings.subnet_map =
            IpPrefixMap::build(settings.subnets.iter().zip(0u32..).map(|(s, i)| IpPrefix {
                network: s.cidr,
                value: i,
                rank: 0,
                generic: false,
            }));
        let mut paths = Vec::new();
        let mut cidrs = HashSet::new();
        for (i, t) in raw.traffic_path.iter().enumerate() {
            let key = |k: &str| format!("metadata.traffic_path[{i}].{k}");
            let cidr = unique_cidr(&key("cidr"), t.cidr.as_deref(), &mut cidrs, add);
            let path = match t.path {
                None => {
                    add(&key("path"), "is required".into());
                    None
                }
                Some(p @ 1..=8) => u32::try_from(p).ok(),
                Some(p) => {
                    add(
                        &key("path"),
                        format!("{p} is not a traffic-path value (1 to 8)"),
                    );
                    None
                }
            };
            if let (Some(network), Some(value)) = (cidr, path) {
                paths.push(IpPrefix {
                    network,
                    value,
                    rank: 0,
                    generic: false,
                });
            }
        }
        settings.traffic_paths = IpPrefixMap::build(paths);
        settings
    }

    /// Validates the `subnet_id` / `vpc_id` keys of `[[interface]]` number `index`, named
    /// `name`.
    pub fn set_interface_ids(
        &mut self,
        index: usize,
        name: &str,
        subnet_id: Option<&String>,
        vpc_id: Option<&String>,
        add: &mut dyn FnMut(&str, String),
    ) {
        let keys = InterfaceKeys {
            name: name.to_owned(),
            subnet_id: checked(
                &format!("interface[{index}].subnet_id"),
                subnet_id,
                validate_subnet_id,
                add,
            ),
            vpc_id: checked(
                &format!("interface[{index}].vpc_id"),
                vpc_id,
                validate_vpc_id,
                add,
            ),
            ..InterfaceKeys::default()
        };
        self.interface_keys.retain(|k| k.name != name);
        self.interface_keys.push(keys);
    }

    /// Resolves the metadata of each interface (see the module docs for precedence). Call
    /// again whenever interfaces or discovered values change.
    pub fn bind(&mut self, interfaces: &[InterfaceSettings]) {
        let discovered_instance = self
            .discovered
            .as_ref()
            .map(|d| Text::from(d.identity.instance_id.as_str()));
        let discovered_az = self
            .discovered
            .as_ref()
            .and_then(|d| d.az_id.as_deref())
            .map(Text::from);
        let instance_location = match (&self.sublocation, &self.az_id, discovered_az) {
            (Some(s), _, _) => Location::Sub(s.clone()),
            (None, Some(az), _) => Location::Az(az.clone()),
            (None, None, Some(az)) => Location::Az(az),
            (None, None, None) => Location::Unknown,
        };
        let instance_id = self.instance_id.clone().or(discovered_instance);
        let resolved = |vpc_id: Option<Text>, subnet_id: Option<Text>, location: &Location| {
            let (az_id, sublocation_type, sublocation_id) = match location {
                Location::Unknown => (None, None, None),
                Location::Az(az) => (Some(az.clone()), None, None),
                Location::Sub(s) => (None, Some(s.kind.clone()), Some(s.id.clone())),
            };
            InterfaceMetadata {
                vpc_id,
                subnet_id,
                instance_id: instance_id.clone(),
                az_id,
                sublocation_type,
                sublocation_id,
            }
        };
        self.fallback = resolved(self.vpc_id.clone(), None, &instance_location);
        let mut resolved_interfaces = Vec::with_capacity(interfaces.len());
        for iface in interfaces {
            let no_keys = InterfaceKeys::default();
            let keys = self
                .interface_keys
                .iter()
                .find(|k| k.name == iface.name)
                .unwrap_or(&no_keys);
            let entry = match &keys.subnet_id {
                Some(id) => self.subnets.iter().find(|s| s.subnet_id == *id),
                None => [
                    iface.primary_v4.map(IpAddr::V4),
                    iface.primary_v6.map(IpAddr::V6),
                ]
                .into_iter()
                .flatten()
                .find_map(|a| self.subnet_map.lookup(a))
                .and_then(|i| self.subnets.get(usize::try_from(i).ok()?)),
            };
            let subnet_id = keys
                .subnet_id
                .clone()
                .or_else(|| entry.map(|e| e.subnet_id.clone()))
                .or_else(|| keys.discovered_subnet_id.clone());
            let vpc_id = keys
                .vpc_id
                .clone()
                .or_else(|| entry.and_then(|e| e.vpc_id.clone()))
                .or_else(|| self.vpc_id.clone())
                .or_else(|| keys.discovered_vpc_id.clone());
            let location = match entry.map(SubnetSettings::location) {
                Some(Location::Unknown) | None => instance_location.clone(),
                Some(known) => known,
            };
            resolved_interfaces.push((
                Text::from(iface.interface_id.as_str()),
                resolved(vpc_id, subnet_id, &location),
            ));
        }
        self.interfaces = resolved_interfaces;
    }

    /// Returns the metadata of the interface with `interface_id` (instance-wide values
    /// for an interface not known when [`MetadataSettings::bind`] ran).
    pub fn interface(&self, interface_id: &str) -> &InterfaceMetadata {
        self.interfaces
            .iter()
            .find(|(id, _)| **id == *interface_id)
            .map_or(&self.fallback, |(_, m)| m)
    }

    /// Returns the `traffic-path` class of egress traffic to `destination`.
    pub fn traffic_path(&self, destination: IpAddr) -> Option<u8> {
        self.traffic_paths
            .lookup(destination)
            .and_then(|p| u8::try_from(p).ok())
    }

    /// Returns true if any `[[metadata.traffic_path]]` is configured.
    pub fn has_traffic_paths(&self) -> bool {
        !self.traffic_paths.is_empty()
    }

    /// Sets the metadata fields of `record`, finding its interface by `interface-id`.
    pub fn apply(&self, record: &mut FlowRecord) {
        let iface = match record.interface_id.as_deref() {
            Some(id) => self.interface(id),
            None => &self.fallback,
        };
        self.apply_with(iface, record);
    }

    /// Sets the metadata fields of `record`, a record of the interface `iface` (from
    /// [`MetadataSettings::interface`], which a caller may look up once per interface).
    pub fn apply_with(&self, iface: &InterfaceMetadata, record: &mut FlowRecord) {
        record.vpc_id.clone_from(&iface.vpc_id);
        record.subnet_id.clone_from(&iface.subnet_id);
        record.instance_id.clone_from(&iface.instance_id);
        record.az_id.clone_from(&iface.az_id);
        record.sublocation_type.clone_from(&iface.sublocation_type);
        record.sublocation_id.clone_from(&iface.sublocation_id);
        if record.log_status != Some(LogStatus::Ok) {
            record.pkt_src_aws_service = None;
            record.pkt_dst_aws_service = None;
            record.traffic_path = None;
            return;
        }
        match &self.ip_ranges {
            Some(ranges) => {
                record.pkt_src_aws_service = record
                    .pkt_srcaddr
                    .or(record.srcaddr)
                    .and_then(|a| ranges.service(a))
                    .cloned();
                record.pkt_dst_aws_service = record
                    .pkt_dstaddr
                    .or(record.dstaddr)
                    .and_then(|a| ranges.service(a))
                    .cloned();
            }
            None => {
                record.pkt_src_aws_service = None;
                record.pkt_dst_aws_service = None;
            }
        }
        record.traffic_path = if record.flow_direction == Some(FlowDirection::Egress) {
            record
                .pkt_dstaddr
                .or(record.dstaddr)
                .and_then(|a| self.traffic_path(a))
        } else {
            None
        };
    }

    /// Takes in what IMDS found: per-interface ids for interfaces whose MAC it knows, the
    /// real `interface-id` where none is configured, and, when no `[[interface]]` is
    /// configured, the host's interfaces that are EC2 network interfaces. Rebinds.
    fn adopt(&mut self, discovery: Discovery, interfaces: &mut Vec<InterfaceSettings>) {
        let system = system_interfaces();
        if interfaces.is_empty() {
            for s in &system {
                if discovery
                    .interface(s.mac)
                    .is_some_and(|found| found.interface_id.is_some())
                {
                    interfaces.push(InterfaceSettings {
                        name: s.name.clone(),
                        interface_id: default_interface_id(&s.name),
                        mac: Some(s.mac),
                        primary_v4: s.primary_v4,
                        primary_v6: s.primary_v6,
                    });
                }
            }
        }
        for iface in interfaces.iter_mut() {
            let mac = iface
                .mac
                .or_else(|| system.iter().find(|s| s.name == iface.name).map(|s| s.mac));
            let Some(found) = mac.and_then(|m| discovery.interface(m)) else {
                continue;
            };
            if let Some(id) = &found.interface_id
                && iface.interface_id == default_interface_id(&iface.name)
            {
                iface.interface_id.clone_from(id);
            }
            let position = match self
                .interface_keys
                .iter()
                .position(|k| k.name == iface.name)
            {
                Some(p) => p,
                None => {
                    self.interface_keys.push(InterfaceKeys {
                        name: iface.name.clone(),
                        ..InterfaceKeys::default()
                    });
                    self.interface_keys.len() - 1
                }
            };
            if let Some(keys) = self.interface_keys.get_mut(position) {
                keys.discovered_subnet_id = found.subnet_id.as_deref().map(Text::from);
                keys.discovered_vpc_id = found.vpc_id.as_deref().map(Text::from);
            }
        }
        self.discovered = Some(discovery);
        if interfaces.is_empty() {
            // No ENI among the host's interfaces: capture takes them all, as without IMDS.
            self.bind(&as_interface_settings(system));
        } else {
            self.bind(interfaces);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Startup: system interfaces and IMDS discovery
// ---------------------------------------------------------------------------------------

/// A host interface as live capture selects it (up, not loopback, with a MAC).
#[derive(Debug, Clone)]
struct SystemInterface {
    name: String,
    mac: [u8; 6],
    primary_v4: Option<Ipv4Addr>,
    primary_v6: Option<Ipv6Addr>,
}

fn system_interfaces() -> Vec<SystemInterface> {
    pnet_datalink::interfaces()
        .into_iter()
        .filter(|i| i.is_up() && !i.is_loopback())
        .filter_map(|i| {
            let mac = i.mac.map(|m| m.octets()).filter(|m| *m != [0; 6])?;
            let primary_v4 = i.ips.iter().find_map(|n| match n.ip() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            });
            let primary_v6 = i.ips.iter().find_map(|n| match n.ip() {
                IpAddr::V6(a) if (a.segments()[0] & 0xffc0) != 0xfe80 => Some(a),
                _ => None,
            });
            Some(SystemInterface {
                name: i.name,
                mac,
                primary_v4,
                primary_v6,
            })
        })
        .collect()
}

/// The host's interfaces as live capture will see them when none is configured.
fn as_interface_settings(system: Vec<SystemInterface>) -> Vec<InterfaceSettings> {
    system
        .into_iter()
        .map(|s| InterfaceSettings {
            interface_id: default_interface_id(&s.name),
            name: s.name,
            mac: None,
            primary_v4: s.primary_v4,
            primary_v6: s.primary_v6,
        })
        .collect()
}

/// What discovery needs from a config before it is validated.
struct DiscoveryPlan {
    imds: ImdsSettings,
    macs: MacSelection,
}

/// Returns the plan when the config asks for `[metadata] imds = true` with usable IMDS
/// keys; `None` otherwise (including when those keys are invalid: validation reports them).
fn discovery_plan(table: &toml::Table) -> Option<DiscoveryPlan> {
    let raw: MetadataConfig = table.get("metadata")?.clone().try_into().ok()?;
    let mut invalid = false;
    let imds = imds_settings(&raw, &mut |_, _| invalid = true)?;
    if invalid {
        return None;
    }
    let configured = table
        .get("interface")
        .and_then(toml::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let macs = if configured.is_empty() {
        MacSelection::All
    } else {
        let system = system_interfaces();
        MacSelection::These(
            configured
                .iter()
                .filter_map(|i| {
                    let mac = i.get("mac").and_then(toml::Value::as_str);
                    match mac {
                        Some(m) => imds::parse_mac(m),
                        None => {
                            let name = i.get("name").and_then(toml::Value::as_str)?;
                            system.iter().find(|s| s.name == name).map(|s| s.mac)
                        }
                    }
                })
                .collect(),
        )
    };
    Some(DiscoveryPlan { imds, macs })
}

/// A check of an id's shape.
type IdCheck = fn(&str) -> Result<(), String>;

/// Checks discovered values before they are used; returns the problems.
fn discovery_problems(d: &Discovery, endpoint: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let document = format!("{endpoint}/latest/dynamic/instance-identity/document");
    let mut check = |what: String, result: Result<(), String>| {
        if let Err(p) = result {
            problems.push(format!("{what}: {p}"));
        }
    };
    check(
        format!("{document} accountId"),
        validate_account_id(&d.identity.account_id).map_err(|e| e.to_string()),
    );
    check(
        format!("{document} region"),
        validate_region(&d.identity.region).map_err(|e| e.to_string()),
    );
    check(
        format!("{document} instanceId"),
        validate_instance_id(&d.identity.instance_id),
    );
    if let Some(az) = &d.az_id {
        check(
            format!("{endpoint}/latest/meta-data/placement/availability-zone-id"),
            validate_az_id(az),
        );
    }
    for i in &d.interfaces {
        let at = format!(
            "{endpoint}/latest/meta-data/network/interfaces/macs/{}/",
            imds::format_mac(i.mac)
        );
        let checks: [(&str, &Option<String>, IdCheck); 3] = [
            ("interface-id", &i.interface_id, validate_interface_id),
            ("subnet-id", &i.subnet_id, validate_subnet_id),
            ("vpc-id", &i.vpc_id, validate_vpc_id),
        ];
        for (key, value, validate) in checks {
            if let Some(v) = value {
                check(format!("{at}{key}"), validate(v));
            }
        }
    }
    problems
}

/// The first step of loading a config, before validation: with `[metadata] imds = true`
/// (and usable IMDS keys) asks IMDSv2, checks what it found, and fills `account_id` and
/// `region` into `[flow_log]` where the config leaves them out. Returns what was found, for
/// [`complete`] after validation, or the problems (of `metadata.imds`).
pub(crate) fn discover(table: &mut toml::Table) -> Result<Option<Discovery>, Vec<String>> {
    let Some(plan) = discovery_plan(table) else {
        return Ok(None);
    };
    let discovery = imds::discover(&plan.imds, plan.macs).map_err(|e| {
        vec![format!(
            "instance metadata discovery failed: {}",
            e.with_cause()
        )]
    })?;
    let problems = discovery_problems(&discovery, &plan.imds.endpoint);
    if !problems.is_empty() {
        return Err(problems);
    }
    let flow_log = table
        .entry("flow_log")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(flow_log) = flow_log.as_table_mut() {
        for (key, value) in [
            ("account_id", &discovery.identity.account_id),
            ("region", &discovery.identity.region),
        ] {
            flow_log
                .entry(key)
                .or_insert_with(|| toml::Value::String(value.clone()));
        }
    }
    Ok(Some(discovery))
}

/// The last step of loading a config, after validation: takes in what [`discover`] found,
/// or, without discovery and without `[[interface]]`, binds the subnet map to the host's
/// interfaces.
pub(crate) fn complete(
    metadata: &mut MetadataSettings,
    interfaces: &mut Vec<InterfaceSettings>,
    discovery: Option<Discovery>,
) {
    match discovery {
        Some(discovery) => metadata.adopt(discovery, interfaces),
        None => {
            if interfaces.is_empty() && !metadata.subnets.is_empty() {
                metadata.bind(&as_interface_settings(system_interfaces()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, AgentSettings};
    use flowlog_formats::Action;
    use proptest::prelude::*;

    /// A hand-written extract in the shape of AWS's file: nested and overlapping ranges,
    /// every specific range repeated under AMAZON, as AWS publishes them.
    const SAMPLE: &str = r#"{
  "syncToken": "1704067200",
  "createDate": "2024-01-01-00-00-00",
  "prefixes": [
    {"ip_prefix": "52.94.0.0/15", "region": "GLOBAL", "service": "AMAZON", "network_border_group": "GLOBAL"},
    {"ip_prefix": "52.95.128.0/21", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "52.95.128.0/21", "region": "ap-southeast-2", "service": "S3", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "52.95.130.0/24", "region": "ap-southeast-2", "service": "AMAZON", "network_border_group": "ap-southeast-2"},
    {"ip_prefix": "3.5.0.0/16", "region": "eu-west-3", "service": "AMAZON", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.0.0/16", "region": "eu-west-3", "service": "EC2", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.1.0/26", "region": "eu-west-3", "service": "EC2", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.1.0/26", "region": "eu-west-3", "service": "ROUTE53_HEALTHCHECKS", "network_border_group": "eu-west-3"},
    {"ip_prefix": "3.5.2.0/24", "region": "eu-west-3", "service": "EC2", "network_border_group": "eu-west-3"},
    {"ip_prefix": "13.32.0.0/15", "region": "GLOBAL", "service": "CLOUDFRONT", "network_border_group": "GLOBAL"},
    {"ip_prefix": "255.255.255.0/24", "region": "GLOBAL", "service": "AMAZON", "network_border_group": "GLOBAL"}
  ],
  "ipv6_prefixes": [
    {"ipv6_prefix": "2600:1f00::/24", "region": "GLOBAL", "service": "AMAZON", "network_border_group": "GLOBAL"},
    {"ipv6_prefix": "2600:1fa0:4000::/40", "region": "eu-west-3", "service": "S3", "network_border_group": "eu-west-3"},
    {"ipv6_prefix": "2600:1fa0:4000::/40", "region": "eu-west-3", "service": "AMAZON", "network_border_group": "eu-west-3"},
    {"ipv6_prefix": "2600:1f18:4000::/36", "region": "eu-west-3", "service": "EC2", "network_border_group": "eu-west-3"},
    {"ipv6_prefix": "ffff:ffff:ffff:ffff::/64", "region": "GLOBAL", "service": "DYNAMODB", "network_border_group": "GLOBAL"}
  ]
}"#;

    fn sample() -> AwsIpRanges {
        AwsIpRanges::from_json(SAMPLE.as_bytes(), Path::new("ip-ranges.json")).unwrap()
    }

    fn service(r: &AwsIpRanges, a: &str) -> Option<String> {
        r.service(a.parse().unwrap()).map(|s| s.to_string())
    }

    #[test]
    fn ip_ranges_pick_the_specific_service_then_the_longest_prefix() {
        let r = sample();
        assert_eq!(r.prefix_count(), 16);
        let cases = [
            ("52.95.128.179", Some("S3")),   // S3 and AMAZON share the /21
            ("52.95.130.9", Some("S3")),     // an AMAZON /24 inside the S3 /21
            ("52.95.136.0", Some("AMAZON")), // just past the /21: the AMAZON /15
            ("52.94.0.0", Some("AMAZON")),
            ("52.95.255.255", Some("AMAZON")),
            ("52.96.0.0", None),
            ("52.93.255.255", None),
            ("3.5.1.10", Some("ROUTE53_HEALTHCHECKS")), // the narrowest subset at a /26
            ("3.5.1.64", Some("EC2")),                  // back in the EC2 /16
            ("3.5.2.1", Some("EC2")),
            ("3.5.255.255", Some("EC2")),
            ("3.6.0.0", None),
            ("13.33.255.255", Some("CLOUDFRONT")),
            ("10.0.0.1", None),
            ("0.0.0.0", None),
            ("255.255.255.255", Some("AMAZON")),
            ("2600:1fa0:4000::1", Some("S3")),
            ("2600:1fa0:40ff:ffff::1", Some("S3")),
            ("2600:1fa0:4100::1", Some("AMAZON")),
            ("2600:1f18:4fff::1", Some("EC2")),
            ("2600:1f18:5000::1", Some("AMAZON")),
            ("2600:2000::1", None),
            ("fd00::1", None),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some("DYNAMODB")),
            ("::", None),
        ];
        for (address, expected) in cases {
            assert_eq!(service(&r, address).as_deref(), expected, "{address}");
        }
    }

    #[test]
    fn ip_ranges_errors_name_the_file_and_the_entry() {
        let path = Path::new("/etc/flowlog/ip-ranges.json");
        let bad_prefix = r#"{"prefixes": [{"ip_prefix": "3.5.0.0/16", "service": "EC2"}, {"ip_prefix": "3.5.0/16", "service": "EC2"}]}"#;
        let e = AwsIpRanges::from_json(bad_prefix.as_bytes(), path).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/flowlog/ip-ranges.json: prefixes[1].ip_prefix: '3.5.0/16' is not an IPv4 CIDR"
        );
        let v4_in_v6 = r#"{"ipv6_prefixes": [{"ipv6_prefix": "3.5.0.0/16", "service": "EC2"}]}"#;
        let e = AwsIpRanges::from_json(v4_in_v6.as_bytes(), path).unwrap_err();
        assert!(
            e.to_string().contains("ipv6_prefixes[0].ipv6_prefix"),
            "{e}"
        );
        let bad_service = r#"{"prefixes": [{"ip_prefix": "3.5.0.0/16", "service": "E C2"}]}"#;
        let e = AwsIpRanges::from_json(bad_service.as_bytes(), path).unwrap_err();
        assert!(e.to_string().contains("prefixes[0].service"), "{e}");
        let missing_service = "{\"prefixes\": [\n{\"ip_prefix\": \"3.5.0.0/16\"}]}";
        let e = AwsIpRanges::from_json(missing_service.as_bytes(), path).unwrap_err();
        let text = flowlog_runtime::error_chain(&e);
        assert!(
            text.starts_with("/etc/flowlog/ip-ranges.json is not an AWS ip-ranges.json document")
                && text.contains("service")
                && text.contains("line 2"),
            "{text}"
        );
        let e = AwsIpRanges::from_json(b"{\"syncToken\": \"1\"}", path).unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
        let e = AwsIpRanges::load(Path::new("/nonexistent/ip-ranges.json")).unwrap_err();
        assert!(
            flowlog_runtime::error_chain(&e)
                .starts_with("cannot read /nonexistent/ip-ranges.json: "),
            "{e}"
        );
    }

    /// The reference: longest matching prefix, a generic entry deferring to an enclosing
    /// non-generic one, ties on the same prefix to the lowest rank.
    fn brute_force(entries: &[PrefixEntry<u32>], address: u32) -> Option<u32> {
        let matching = |e: &&PrefixEntry<u32>| address.and_not(u32::host_mask(e.len)) == e.network;
        let best = entries
            .iter()
            .filter(matching)
            .min_by_key(|e| (std::cmp::Reverse(e.len), e.rank))?;
        if best.generic
            && let Some(specific) = entries
                .iter()
                .filter(matching)
                .filter(|e| !e.generic && e.len < best.len)
                .min_by_key(|e| (std::cmp::Reverse(e.len), e.rank))
        {
            return Some(specific.value);
        }
        Some(best.value)
    }

    fn entry() -> impl Strategy<Value = PrefixEntry<u32>> {
        // Few distinct networks so that prefixes nest and repeat often. Value 0 plays
        // AMAZON: the generic service, ranked after every specific one, as the loader does.
        (0u32..16, 0u8..=32, 0u32..4).prop_map(|(seed, len, value)| {
            let network = seed
                .wrapping_mul(0x1357_9bdf)
                .rotate_left(u32::from(len) % 7)
                .and_not(u32::host_mask(len));
            PrefixEntry {
                network,
                len,
                value,
                rank: if value == 0 { u32::MAX } else { value },
                generic: value == 0,
            }
        })
    }

    proptest! {
        #[test]
        fn prefix_map_agrees_with_a_brute_force_search(
            entries in proptest::collection::vec(entry(), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 0..64),
        ) {
            let map = PrefixMap::build(entries.clone());
            let mut addresses = probes;
            for e in &entries {
                let last = e.network.or(u32::host_mask(e.len));
                addresses.extend([e.network, last, e.network.wrapping_sub(1), last.wrapping_add(1)]);
            }
            for a in addresses {
                prop_assert_eq!(map.lookup(a), brute_force(&entries, a), "address {:#x}", a);
            }
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(validate_vpc_id("vpc-abcdefab012345678").is_ok());
        assert!(validate_vpc_id("vpc-0a1b2c3d").is_ok());
        assert!(validate_vpc_id("vpc-ABCDEFAB012345678").is_err());
        assert!(validate_vpc_id("subnet-abcdefab012345678").is_err());
        assert!(validate_subnet_id("subnet-aaaaaaaa012345678").is_ok());
        assert!(validate_subnet_id("subnet-aaaaaaaa01234567").is_err());
        assert!(validate_instance_id("i-0c50d5961bcb2d47b").is_ok());
        assert!(validate_instance_id("i-0c50d5961bcb2d47").is_err());
        assert!(validate_interface_id("eni-1235b8ca123456789").is_ok());
        for good in ["euw3-az1", "use1-az4", "apse2-az3", "usw2-lax1-az1"] {
            assert!(validate_az_id(good).is_ok(), "{good}");
        }
        for bad in [
            "eu-west-3a",
            "euw3",
            "az1",
            "euw3-az",
            "EUW3-az1",
            "euw3-az1 ",
            "w3-az1",
        ] {
            assert!(validate_az_id(bad).is_err(), "{bad}");
        }
        assert!(
            validate_az_id("eu-west-3a")
                .unwrap_err()
                .contains("not its name")
        );
    }

    fn settings(text: &str) -> AgentSettings {
        config::parse(text, "agent.toml").unwrap()
    }

    const BASE: &str = "[flow_log]\nid = \"fl-0a1b2c3d4e5f60718\"\naccount_id = \"123456789012\"\nregion = \"eu-west-3\"\n";

    #[test]
    fn every_metadata_problem_is_listed_with_its_key() {
        let text = format!(
            "{BASE}[metadata]\ninstance_id = \"i-1\"\nvpc_id = \"vpc-x\"\naz_id = \"eu-west-3a\"\n\
             ip_ranges = \"/nonexistent/ip-ranges.json\"\nimds_endpoint = \"169.254.169.254\"\nimds_timeout = \"soon\"\n\
             [[metadata.subnet]]\ncidr = \"10.0.1.5/24\"\nsubnet_id = \"sub-1\"\nsublocation_type = \"cloud\"\n\
             [[metadata.subnet]]\nvpc_id = \"vpc-0a1b2c3d\"\naz_id = \"euw3-az1\"\nsublocation_type = \"outpost\"\nsublocation_id = \"op-0a1b2c3d4e5f60718\"\n\
             [[metadata.traffic_path]]\ncidr = \"0.0.0.0/0\"\npath = 9\n\
             [[metadata.traffic_path]]\ncidr = \"0.0.0.0/0\"\npath = 8\n\
             [[interface]]\nname = \"eth0\"\nsubnet_id = \"subnet-1\"\nvpc_id = \"vpc-0a1b2c3d\"\n"
        );
        let e = config::parse(&text, "agent.toml").unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|(k, _)| k.as_str()).collect();
        for key in [
            "metadata.instance_id",
            "metadata.vpc_id",
            "metadata.az_id",
            "metadata.ip_ranges",
            "metadata.imds_endpoint",
            "metadata.imds_timeout",
            "metadata.subnet[0].cidr",
            "metadata.subnet[0].subnet_id",
            "metadata.subnet[0].sublocation_id",
            "metadata.subnet[1].cidr",
            "metadata.subnet[1].subnet_id",
            "metadata.subnet[1].az_id",
            "metadata.traffic_path[0].path",
            "metadata.traffic_path[1].cidr",
            "interface[0].subnet_id",
        ] {
            assert!(keys.contains(&key), "{key} missing from {e}");
        }
        assert!(!keys.contains(&"interface[0].vpc_id"), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("has host bits set; the network is 10.0.1.0/24"),
            "{text}"
        );
        assert!(
            text.contains("cannot read /nonexistent/ip-ranges.json"),
            "{text}"
        );
        let unknown = config::parse(&format!("{BASE}[metadata]\nvpc = \"vpc-0a1b2c3d\"\n"), "t");
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `vpc`")
        );
    }

    fn record(direction: FlowDirection, src: &str, dst: &str) -> FlowRecord {
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        FlowRecord {
            interface_id: Some("eni-0123456789abcdef0".into()),
            srcaddr: Some(src),
            dstaddr: Some(dst),
            pkt_srcaddr: Some(src),
            pkt_dstaddr: Some(dst),
            action: Some(Action::Accept),
            log_status: Some(LogStatus::Ok),
            flow_direction: Some(direction),
            ..FlowRecord::default()
        }
    }

    #[test]
    fn apply_fills_ids_everywhere_and_traffic_fields_on_ok_rows() {
        let dir = tempfile::tempdir().unwrap();
        let ranges = dir.path().join("ip-ranges.json");
        std::fs::write(&ranges, SAMPLE).unwrap();
        let s = settings(&format!(
            "{BASE}[metadata]\ninstance_id = \"i-0c50d5961bcb2d47b\"\nvpc_id = \"vpc-abcdefab012345678\"\naz_id = \"euw3-az1\"\nip_ranges = \"{}\"\n\
             [[metadata.subnet]]\ncidr = \"10.0.0.0/24\"\nsubnet_id = \"subnet-aaaaaaaa012345678\"\naz_id = \"euw3-az2\"\n\
             [[metadata.subnet]]\ncidr = \"10.0.0.0/16\"\nsubnet_id = \"subnet-bbbbbbbb012345678\"\nvpc_id = \"vpc-0a1b2c3d\"\n\
             [[metadata.subnet]]\ncidr = \"10.9.0.0/16\"\nsubnet_id = \"subnet-cccccccc012345678\"\nsublocation_type = \"outpost\"\nsublocation_id = \"op-0a1b2c3d4e5f60718\"\n\
             [[metadata.traffic_path]]\ncidr = \"0.0.0.0/0\"\npath = 8\n\
             [[metadata.traffic_path]]\ncidr = \"10.0.0.0/16\"\npath = 1\n\
             [[metadata.traffic_path]]\ncidr = \"52.95.128.0/21\"\npath = 7\n\
             [[interface]]\nname = \"eth0\"\ninterface_id = \"eni-0123456789abcdef0\"\naddresses = [\"10.0.0.10\"]\n\
             [[interface]]\nname = \"eth1\"\ninterface_id = \"eni-1111111111abcdef0\"\naddresses = [\"10.0.5.10\"]\n\
             [[interface]]\nname = \"eth2\"\ninterface_id = \"eni-2222222222abcdef0\"\naddresses = [\"10.0.5.11\"]\nsubnet_id = \"subnet-dddddddd012345678\"\nvpc_id = \"vpc-dddddddd\"\n\
             [[interface]]\nname = \"eth3\"\ninterface_id = \"eni-3333333333abcdef0\"\naddresses = [\"10.9.0.3\"]\n",
            ranges.display()
        ));
        let m = &s.metadata;
        let eth0 = m.interface("eni-0123456789abcdef0");
        assert_eq!(eth0.subnet_id.as_deref(), Some("subnet-aaaaaaaa012345678"));
        assert_eq!(eth0.vpc_id.as_deref(), Some("vpc-abcdefab012345678"));
        assert_eq!(eth0.az_id.as_deref(), Some("euw3-az2"));
        assert_eq!(eth0.instance_id.as_deref(), Some("i-0c50d5961bcb2d47b"));
        let eth1 = m.interface("eni-1111111111abcdef0");
        assert_eq!(eth1.subnet_id.as_deref(), Some("subnet-bbbbbbbb012345678"));
        assert_eq!(eth1.vpc_id.as_deref(), Some("vpc-0a1b2c3d"));
        assert_eq!(eth1.az_id.as_deref(), Some("euw3-az1"));
        let eth2 = m.interface("eni-2222222222abcdef0");
        assert_eq!(eth2.subnet_id.as_deref(), Some("subnet-dddddddd012345678"));
        assert_eq!(eth2.vpc_id.as_deref(), Some("vpc-dddddddd"));
        let eth3 = m.interface("eni-3333333333abcdef0");
        assert_eq!(eth3.az_id, None);
        assert_eq!(eth3.sublocation_type.as_deref(), Some("outpost"));
        assert_eq!(eth3.sublocation_id.as_deref(), Some("op-0a1b2c3d4e5f60718"));
        let other = m.interface("eni-9999999999abcdef0");
        assert_eq!(other.subnet_id, None);
        assert_eq!(other.vpc_id.as_deref(), Some("vpc-abcdefab012345678"));

        let mut egress = record(FlowDirection::Egress, "10.0.0.10", "52.95.128.179");
        m.apply(&mut egress);
        assert_eq!(
            egress.subnet_id.as_deref(),
            Some("subnet-aaaaaaaa012345678")
        );
        assert_eq!(egress.pkt_src_aws_service, None);
        assert_eq!(egress.pkt_dst_aws_service.as_deref(), Some("S3"));
        assert_eq!(egress.traffic_path, Some(7));
        let mut ingress = record(FlowDirection::Ingress, "52.95.128.179", "10.0.0.10");
        m.apply(&mut ingress);
        assert_eq!(ingress.pkt_src_aws_service.as_deref(), Some("S3"));
        assert_eq!(ingress.traffic_path, None);
        let mut local = record(FlowDirection::Egress, "10.0.0.10", "10.0.3.3");
        m.apply(&mut local);
        assert_eq!(local.traffic_path, Some(1));
        let mut internet = record(FlowDirection::Egress, "10.0.0.10", "198.51.100.1");
        m.apply(&mut internet);
        assert_eq!(internet.traffic_path, Some(8));
        assert_eq!(internet.pkt_dst_aws_service, None);
        let mut nodata = FlowRecord::no_data(
            Some("123456789012".into()),
            Some("eni-0123456789abcdef0".into()),
            1,
            2,
        );
        nodata.traffic_path = Some(3);
        m.apply(&mut nodata);
        assert_eq!(
            nodata.subnet_id.as_deref(),
            Some("subnet-aaaaaaaa012345678")
        );
        assert_eq!(nodata.instance_id.as_deref(), Some("i-0c50d5961bcb2d47b"));
        assert_eq!(nodata.traffic_path, None);
        assert_eq!(nodata.pkt_dst_aws_service, None);
    }

    #[test]
    fn without_a_metadata_section_every_field_stays_unknown() {
        let s = settings(BASE);
        let mut r = record(FlowDirection::Egress, "10.0.0.10", "52.95.128.179");
        s.metadata.apply(&mut r);
        assert_eq!(
            (
                r.vpc_id,
                r.subnet_id,
                r.instance_id,
                r.az_id,
                r.pkt_dst_aws_service,
                r.traffic_path
            ),
            (None, None, None, None, None, None)
        );
    }
}
