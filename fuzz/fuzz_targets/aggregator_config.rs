//! Fuzzes the aggregator's config parser and validation; the body is
//! [`flowlog_fuzz_harness::aggregator_config`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::aggregator_config(data));
