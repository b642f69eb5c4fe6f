//! `agent_config`: the agent's config file, parsed and validated from text.

use flowlog_agent::config;

/// Parses `data` (as text, invalid UTF-8 replaced) as an agent config. A refused config
/// names at least one problem, each with a key and a message; parsing is deterministic.
pub fn agent_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let first = config::parse(&text, "agent.toml");
    match &first {
        Ok(_) => {}
        Err(e) => {
            crate::assert_has_message(e);
            assert!(!e.problems.is_empty(), "a refused config without problems");
            for (key, message) in &e.problems {
                assert!(!key.is_empty(), "a problem without a key: {message}");
                assert!(
                    !message.trim().is_empty(),
                    "a problem without a message: {key}"
                );
            }
        }
    }
    let second = config::parse(&text, "agent.toml");
    assert_eq!(
        first.as_ref().err(),
        second.as_ref().err(),
        "not deterministic"
    );
}
