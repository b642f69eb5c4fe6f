//! Fuzzes the Parquet flow log reader; the body is [`flowlog_fuzz_harness::parquet`].

#![no_main]

use std::sync::Once;

static HOOK: Once = Once::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The reader turns panics of the parquet decoder into errors (catch_unwind), but
    // libfuzzer-sys's panic hook aborts on every panic, caught or not. This hook only
    // prints: a panic that escapes the body still aborts in libfuzzer-sys's own
    // catch_unwind around it, so it is still a finding.
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| eprintln!("caught panic: {info}")));
    });
    flowlog_fuzz_harness::parquet(data);
});
