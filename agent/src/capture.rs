//! Live capture with pnet: one thread per interface, each owning its flow table.
//!
//! Every thread reads frames with a read timeout (so it notices shutdown within
//! [`READ_TIMEOUT`]), stamps them with the clock (pnet gives no timestamps), decodes them
//! and feeds its [`FlowTable`]; closed intervals' records go to the caller over a channel.
//! The read buffer is sized for GRO/TSO super-frames, which pnet's 4 KiB default would
//! truncate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowlog_formats::FlowRecord;
use pnet_datalink::{Channel, Config, NetworkInterface};

use crate::config::{AgentSettings, InterfaceSettings};
use crate::decode::{LinkType, decode_frame};
use crate::flow::{FlowTable, FlowTableSettings, InterfaceInfo};

/// How long a read waits before the thread checks for shutdown and closes due intervals.
pub const READ_TIMEOUT: Duration = Duration::from_millis(250);

/// Bytes of the read buffer: the largest GRO/TSO frame plus headroom.
pub const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Failure to start capturing.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A configured interface does not exist.
    #[error("interface {0} does not exist on this host")]
    NoSuchInterface(String),
    /// No interface to capture on.
    #[error(
        "no interface to capture on: none is configured and no up, non-loopback interface exists"
    )]
    NoInterfaces,
    /// The interface has no MAC address, so direction cannot be told.
    #[error("interface {0} has no MAC address; set `mac` in its [[interface]] section")]
    NoMac(String),
    /// Opening the packet socket failed (usually: not root / no CAP_NET_RAW).
    #[error("cannot capture on {interface} (needs CAP_NET_RAW)")]
    Open {
        /// The interface.
        interface: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// pnet returned a channel type other than Ethernet.
    #[error("interface {0} does not give Ethernet frames")]
    NotEthernet(String),
}

/// Records emitted by a capture thread, tagged with its interface name.
pub type Emitted = (String, Vec<FlowRecord>);

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Returns the interfaces to capture on: the configured ones, or every up, non-loopback
/// interface with a MAC address.
pub fn select_interfaces(
    settings: &AgentSettings,
) -> Result<Vec<(NetworkInterface, InterfaceSettings)>, CaptureError> {
    let all = pnet_datalink::interfaces();
    if settings.interfaces.is_empty() {
        let chosen: Vec<_> = all
            .into_iter()
            .filter(|i| i.is_up() && !i.is_loopback() && i.mac.is_some())
            .map(|i| {
                let s = InterfaceSettings {
                    name: i.name.clone(),
                    interface_id: crate::config::default_interface_id(&i.name),
                    mac: None,
                    primary_v4: None,
                    primary_v6: None,
                };
                (i, s)
            })
            .collect();
        return if chosen.is_empty() {
            Err(CaptureError::NoInterfaces)
        } else {
            Ok(chosen)
        };
    }
    settings
        .interfaces
        .iter()
        .map(|s| {
            all.iter()
                .find(|i| i.name == s.name)
                .cloned()
                .map(|i| (i, s.clone()))
                .ok_or_else(|| CaptureError::NoSuchInterface(s.name.clone()))
        })
        .collect()
}

/// Completes an interface's identity from the system: MAC and primary addresses unless
/// configured.
fn interface_info(
    settings: &AgentSettings,
    iface: &NetworkInterface,
    s: &InterfaceSettings,
) -> Result<InterfaceInfo, CaptureError> {
    let mac = s
        .mac
        .or_else(|| iface.mac.map(|m| m.octets()))
        .ok_or_else(|| CaptureError::NoMac(iface.name.clone()))?;
    let primary_v4 = s.primary_v4.or_else(|| {
        iface.ips.iter().find_map(|n| match n.ip() {
            std::net::IpAddr::V4(v4) => Some(v4),
            std::net::IpAddr::V6(_) => None,
        })
    });
    let primary_v6 = s.primary_v6.or_else(|| {
        iface.ips.iter().find_map(|n| match n.ip() {
            std::net::IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) != 0xfe80 => Some(v6),
            _ => None,
        })
    });
    Ok(InterfaceInfo {
        interface_id: s.interface_id.as_str().into(),
        account_id: settings.account_id.clone(),
        mac,
        primary_v4,
        primary_v6,
    })
}

/// Starts one capture thread per interface. Threads stop when `stop` is set, after
/// emitting the records of the current (partial) interval.
pub fn start(
    settings: &AgentSettings,
    stop: Arc<AtomicBool>,
    records: SyncSender<Emitted>,
) -> Result<Vec<JoinHandle<()>>, CaptureError> {
    let table_settings = FlowTableSettings {
        interval_secs: settings.interval_secs,
        max_flows: settings.max_flows,
    };
    let mut threads = Vec::new();
    for (iface, s) in select_interfaces(settings)? {
        let info = interface_info(settings, &iface, &s)?;
        let config = Config {
            read_timeout: Some(READ_TIMEOUT),
            read_buffer_size: READ_BUFFER_BYTES,
            promiscuous: false,
            ..Config::default()
        };
        let mut rx = match pnet_datalink::channel(&iface, config) {
            Ok(Channel::Ethernet(_tx, rx)) => rx,
            Ok(_) => return Err(CaptureError::NotEthernet(iface.name.clone())),
            Err(source) => {
                return Err(CaptureError::Open {
                    interface: iface.name.clone(),
                    source,
                });
            }
        };
        let (stop, records, name) = (Arc::clone(&stop), records.clone(), iface.name.clone());
        let handle = std::thread::Builder::new()
            .name(format!("capture-{name}"))
            .spawn(move || {
                let mut table = FlowTable::new_at(info, table_settings, unix_now());
                let mut out = Vec::new();
                let mut skipped = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match rx.next() {
                        Ok(frame) => match decode_frame(LinkType::Ethernet, frame) {
                            Ok(meta) => table.observe(&meta, unix_now(), &mut out),
                            Err(_) => skipped += 1,
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                            table.close_due(unix_now(), &mut out)
                        }
                        Err(e) => {
                            eprintln!("error: capture on {name} stopped: {e}");
                            break;
                        }
                    }
                    if !out.is_empty()
                        && records
                            .send((name.clone(), std::mem::take(&mut out)))
                            .is_err()
                    {
                        return;
                    }
                }
                table.flush_all(unix_now(), &mut out);
                let _ = records.send((name.clone(), out));
                if skipped > 0 {
                    eprintln!("{name}: {skipped} non-IP or malformed frames skipped");
                }
            })
            .map_err(|source| CaptureError::Open {
                interface: iface.name.clone(),
                source,
            })?;
        threads.push(handle);
    }
    Ok(threads)
}
