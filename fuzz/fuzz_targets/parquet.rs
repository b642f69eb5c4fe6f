//! Fuzzes the Parquet flow log reader; the body is
//! [`flowlog_fuzz_harness::parquet`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::parquet(data));
