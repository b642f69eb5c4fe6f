//! flowlog-agent library.

pub mod capture;
pub mod capture_config;
pub mod config;
pub mod decode;
pub mod flow;
pub mod frames;
pub mod imds;
pub mod metadata;
pub mod metrics;
pub mod nflog;
pub mod pcap;
pub mod prepare;
pub mod replay;
pub mod ship;
#[cfg(feature = "standalone")]
pub mod standalone;
