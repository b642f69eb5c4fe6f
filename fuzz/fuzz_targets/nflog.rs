//! Fuzzes the agent's NFLOG netlink datagram parser; the body is
//! [`flowlog_fuzz_harness::nflog`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::nflog(data));
