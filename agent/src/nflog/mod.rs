//! Host firewall drops, learnt from an NFLOG group: the source of `action = REJECT`.
//!
//! The user's nftables or iptables drop rules log to an NFLOG group (`log group N` /
//! `-j NFLOG --nflog-group N`, see `docs/agent-firewall.md`); the agent binds that group on
//! a `NETLINK_NETFILTER` socket and receives one `NFULNL_MSG_PACKET` message per dropped
//! packet, with the interfaces it came in on / was to go out of and the first
//! [`COPY_RANGE_BYTES`] bytes of the packet from its IP header on.
//!
//! Capture (`AF_PACKET`) sees a received packet *before* netfilter and a sent packet
//! *after* it, hence:
//!
//! - a packet dropped in prerouting, input or forward has an in-device; capture on that
//!   interface already counted it, so the event marks that ingress flow (same 5-tuple, same
//!   interface, open interval) REJECT;
//! - a locally generated packet dropped in output or postrouting has only an out-device
//!   and never reaches the wire: the event counts it as an egress packet of that interface,
//!   REJECT.
//!
//! The drops of an interface are aggregated in its [`RejectLedger`] and merged into the
//! interface's records when capture releases an interval, after the records of all its
//! capture threads came together: which thread counted a packet, and whether the packet or
//! its event came first, do not matter.
//!
//! Lost events (the socket's receive buffer overran: `ENOBUFS`; the sequence numbers the
//! kernel stamps on every message then show how many) are counted in [`COUNTERS`] and
//! reported as loss to every interface's ledger, so their interval gets SKIPDATA.
//!
//! The layout is, one submodule each:
//!
//! - `config`: [`FirewallConfig`] → [`FirewallSettings`]: the `[firewall]` config section;
//! - `wire`: [`config_request`], [`NetlinkMessages`]: the wire format, pure and panic-free
//!   on any bytes;
//! - `ledger`: [`RejectEvent`] ([`reject_event`]), [`RejectLedger`], and the
//!   [`RejectRouter`] / [`RejectHandle`] that reach the ledgers;
//! - `counters`: [`NflogCounters`] ([`COUNTERS`]), for metrics;
//! - `listener`: [`start`]: binds the group, then one thread `nflog-<group>` reads it and
//!   hands each event to the ledger of its interface through the [`RejectRouter`], where
//!   capture registers every interface it starts; capture's threads merge with
//!   [`RejectHandle::apply`].
//!
//! The socket belongs to the network namespace the agent runs in: only rules of that
//! namespace reach it.

mod config;
mod counters;
mod ledger;
mod listener;
mod wire;

pub use config::{FirewallConfig, FirewallSettings, validate_config};
pub use counters::{COUNTERS, NflogCounters};
pub use ledger::{RejectEvent, RejectHandle, RejectLedger, RejectRouter, reject_event};
pub use listener::{BIND_TIMEOUT, NflogError, READ_TIMEOUT, SOCKET_BUFFER_BYTES, start};
pub use wire::{
    COPY_RANGE_BYTES, FLUSH_TIMEOUT_CENTISECONDS, NetlinkMessage, NetlinkMessages, NflogPacket,
    NflogParseError, config_request,
};

#[cfg(test)]
mod test_support;
