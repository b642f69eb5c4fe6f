//! Fuzzes the agent's config parser and validation; the body is
//! [`flowlog_fuzz_harness::agent_config`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::agent_config(data));
