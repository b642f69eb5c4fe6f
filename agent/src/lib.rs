//! flowlog-agent library.

pub mod capture;
pub mod config;
pub mod decode;
pub mod flow;
pub mod frames;
pub mod pcap;
pub mod replay;
