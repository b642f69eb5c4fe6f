//! Fuzzes the agent's frame decoder on every link type; the body is
//! [`flowlog_fuzz_harness::decode_frame`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::decode_frame(data));
