//! Fuzzes a `PushRequest` as the aggregator receives it: prost decode, then `decode_batch`; the body is
//! [`flowlog_fuzz_harness::transport`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| flowlog_fuzz_harness::transport(data));
