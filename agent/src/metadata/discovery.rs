//! Startup: the host's interfaces and EC2 instance metadata (IMDSv2) discovery.
//! [`discover`] runs before the config is validated, [`complete`] after it (adopting what
//! IMDS found, or binding the subnet map to the host's interfaces).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowlog_formats::Text;
use flowlog_formats::key::{validate_account_id, validate_region};

use super::apply::{InterfaceKeys, MetadataSettings};
use super::config::{MetadataConfig, imds_settings};
use super::ids::{
    validate_az_id, validate_instance_id, validate_interface_id, validate_subnet_id,
    validate_vpc_id,
};
use crate::imds::{self, Discovery, ImdsSettings, MacSelection};
use crate::interface::{InterfaceSettings, default_interface_id};

impl MetadataSettings {
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
