//! Fuzzes the agent's spool recovery scan (open and read back); the body is
//! [`flowlog_fuzz_harness::spool`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::spool(data));
