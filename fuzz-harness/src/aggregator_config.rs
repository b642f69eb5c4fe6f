//! `aggregator_config`: the aggregator's config file, parsed and validated from text.

use flowlog_aggregator::config;

/// Parses `data` (as text, invalid UTF-8 replaced) as an aggregator config. A refused
/// config names at least one problem, each with a key and a message; parsing is
/// deterministic.
pub fn aggregator_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let first = config::parse(&text, "aggregator.toml");
    match &first {
        Ok(_) => {}
        Err(e) => {
            crate::assert_has_message(e);
            assert!(!e.problems.is_empty(), "a refused config without problems");
            for problem in &e.problems {
                assert!(
                    !problem.key.is_empty(),
                    "a problem without a key: {problem:?}"
                );
                assert!(
                    !problem.message.trim().is_empty(),
                    "a problem without a message: {problem:?}"
                );
            }
        }
    }
    let second = config::parse(&text, "aggregator.toml");
    assert_eq!(
        first.as_ref().err(),
        second.as_ref().err(),
        "not deterministic"
    );
}
