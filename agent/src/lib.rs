//! flowlog-agent library.

pub mod capture;
pub mod capture_config;
pub mod config;
pub mod decode;
pub mod flow;
#[cfg(test)]
mod frames_decode_tests;
pub mod imds;
pub mod interface;
pub mod metadata;
pub mod metrics;
pub mod nflog;
pub mod pcap;
pub mod prepare;
pub mod replay;
pub mod ship;
#[cfg(feature = "standalone")]
pub mod standalone;
