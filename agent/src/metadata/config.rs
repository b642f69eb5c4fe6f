//! The `[metadata]` config section: [`MetadataConfig`] as written, validated into
//! [`MetadataSettings`] ([`MetadataSettings::from_config`]), and the `subnet_id` / `vpc_id`
//! keys of `[[interface]]` ([`MetadataSettings::set_interface_ids`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flowlog_formats::Text;
use ipnetwork::IpNetwork;
use serde::Deserialize;

use super::apply::{InterfaceKeys, MetadataSettings, Sublocation, SubnetSettings};
use super::ids::{
    SUBLOCATION_TYPES, validate_az_id, validate_instance_id, validate_sublocation_id,
    validate_subnet_id, validate_vpc_id,
};
use super::ip_ranges::AwsIpRanges;
use super::prefix::{IpPrefix, IpPrefixMap};
use crate::imds::ImdsSettings;

/// The `[metadata]` config section, as written. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
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
pub struct TrafficPathConfig {
    /// Destination CIDR; the longest matching entry applies. Required.
    pub cidr: Option<String>,
    /// `traffic-path` value 1-8 (1 same VPC, 2 internet gateway or gateway endpoint,
    /// 3 virtual private gateway, 4 intra-region peering, 5 inter-region peering, 6 local
    /// gateway, 7 gateway VPC endpoint (Nitro), 8 internet gateway (Nitro)). Required.
    pub path: Option<i64>,
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

/// Largest accepted `imds_timeout`.
const MAX_IMDS_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) fn imds_settings(
    raw: &MetadataConfig,
    add: &mut dyn FnMut(&str, String),
) -> Option<ImdsSettings> {
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
}

#[cfg(test)]
mod tests {
    use crate::config;
    use crate::metadata::test_support::BASE;

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
                .contains("metadata.vpc: unknown key")
        );
    }
}
