//! Fuzzes the object key and key prefix parsers; the body is
//! [`flowlog_fuzz_harness::key`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::key(data));
