//! Fuzzes the aggregator's WAL recovery scan (open and replay); the body is
//! [`flowlog_fuzz_harness::wal`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::wal(data));
