//! A configured interface (`[[interface]]`, or one found on the host) and its default
//! `interface-id`: what the config, capture and metadata discovery all speak of.

use std::net::{Ipv4Addr, Ipv6Addr};

use flowlog_formats::key::hash8;

/// One configured interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceSettings {
    /// OS name (`eth0`).
    pub name: String,
    /// `interface-id` written in records; default `eni-` + 17 hex digits derived from the name.
    pub interface_id: String,
    /// MAC address; frames from it are egress (required for replay: a capture file does not
    /// say which side is the host).
    pub mac: Option<[u8; 6]>,
    /// Primary IPv4 address: the first plain IPv4 address listed.
    pub primary_v4: Option<Ipv4Addr>,
    /// Primary IPv6 address: the first plain IPv6 address listed.
    pub primary_v6: Option<Ipv6Addr>,
}

/// Returns the stable default interface id of an interface name.
pub fn default_interface_id(name: &str) -> String {
    // 17 hex digits, as in real ENI ids: two 8-digit hashes and one more digit.
    let a = hash8(format!("interface/{name}").as_bytes());
    let b = hash8(format!("interface/{name}/2").as_bytes());
    let c = hash8(format!("interface/{name}/3").as_bytes());
    format!("eni-{a}{b}{}", c.get(..1).unwrap_or("0"))
}
