//! Bodies of the cargo-fuzz targets in `fuzz/`, one function per target.
//!
//! ```text
//! fuzz/fuzz_targets/<target>.rs ─┐
//!                                ├─▶ flowlog_fuzz_harness::<target>(&[u8])
//! tests/corpus.rs (stable) ──────┘      (replays fuzz/corpus/<target>/ and fuzz/regressions/<target>/)
//! ```
//!
//! Each function takes arbitrary bytes, feeds them to one parser through its public API and
//! asserts properties of the outcome, not only the absence of panics: what decodes
//! re-encodes to the same values, errors carry a message, recovery is idempotent. A failed
//! assertion is a finding, exactly like a panic inside the parser.
//!
//! [`TARGETS`] lists every target with its function, so the fuzz crate and the replay test
//! cannot drift apart.

// A harness reports a finding by panicking: that is what libFuzzer and the replay test catch.
#![allow(clippy::panic)]

mod agent_config;
mod aggregator_config;
mod decode_frame;
mod key;
mod nflog;
mod parquet;
mod pcap;
mod spool;
mod text;
mod transport;
mod wal;

pub use agent_config::agent_config;
pub use aggregator_config::aggregator_config;
pub use decode_frame::decode_frame;
pub use key::key;
pub use nflog::nflog;
pub use parquet::parquet;
pub use pcap::pcap;
pub use spool::spool;
pub use text::text;
pub use transport::transport;
pub use wal::wal;

/// A fuzz target: its name (the file name in `fuzz/fuzz_targets/` and the corpus folder)
/// and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    ("decode_frame", decode_frame),
    ("pcap", pcap),
    ("transport", transport),
    ("wal", wal),
    ("spool", spool),
    ("text", text),
    ("parquet", parquet),
    ("key", key),
    ("nflog", nflog),
    ("aggregator_config", aggregator_config),
    ("agent_config", agent_config),
];

/// Most records a reader target pulls from one input: bounds the time per input while
/// still reaching every code path (a reader does the same work for every record).
const MAX_RECORDS: usize = 10_000;

/// Asserts that an error says something: its message is not empty.
fn assert_has_message(error: &dyn std::error::Error) {
    assert!(
        !error.to_string().trim().is_empty(),
        "an error without a message: {error:?}"
    );
}
