//! Fuzzes the agent's pcap / pcapng reader; the body is
//! [`flowlog_fuzz_harness::pcap`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::pcap(data));
