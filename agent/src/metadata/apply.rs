//! The validated metadata ([`MetadataSettings`]) and its use: the metadata of each
//! interface, resolved once ([`MetadataSettings::bind`]), and the metadata fields of each
//! record ([`MetadataSettings::apply`]).

use std::net::IpAddr;
use std::sync::Arc;

use flowlog_formats::{FlowDirection, FlowRecord, LogStatus, Text};
use ipnetwork::IpNetwork;

use super::ip_ranges::AwsIpRanges;
use super::prefix::IpPrefixMap;
use crate::imds::{Discovery, ImdsSettings};
use crate::interface::InterfaceSettings;

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
pub(super) struct InterfaceKeys {
    pub(super) name: String,
    pub(super) subnet_id: Option<Text>,
    pub(super) vpc_id: Option<Text>,
    pub(super) discovered_subnet_id: Option<Text>,
    pub(super) discovered_vpc_id: Option<Text>,
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
    pub(super) subnet_map: IpPrefixMap,
    pub(super) traffic_paths: IpPrefixMap,
    pub(super) interface_keys: Vec<InterfaceKeys>,
    /// Resolved metadata by `interface-id`.
    pub(super) interfaces: Vec<(Text, InterfaceMetadata)>,
    /// Metadata of interfaces not in `interfaces`.
    pub(super) fallback: InterfaceMetadata,
}

impl MetadataSettings {
    /// Resolves the metadata of each interface (see the `metadata` module docs for
    /// precedence). Call again whenever interfaces or discovered values change.
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
}

#[cfg(test)]
mod tests {
    use flowlog_formats::Action;

    use super::*;
    use crate::config::{self, AgentSettings};
    use crate::metadata::test_support::{BASE, SAMPLE};

    fn settings(text: &str) -> AgentSettings {
        config::parse(text, "agent.toml").unwrap()
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
