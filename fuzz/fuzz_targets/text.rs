//! Fuzzes the text flow log reader (plain and gzip'd); the body is
//! [`flowlog_fuzz_harness::text`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::text(data));
