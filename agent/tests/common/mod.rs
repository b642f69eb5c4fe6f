//! Helpers shared by the agent's live tests (network namespaces, veth pairs, tools).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

/// Runs a command and returns its output (panics if it cannot be started).
pub fn run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True when the test may send traffic through namespaces it creates: running as root with
/// every `(tool, version flag)` present. Otherwise it fails under `CI=true`, or prints why
/// and returns false so the test is skipped.
pub fn live_test_can_run(what: &str, tools: &[(&str, &str)]) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(tool, flag)| Command::new(tool).arg(flag).output().is_err())
        .map(|(tool, _)| *tool)
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = format!(
        "{what} needs root and {} (root: {root}, missing: {missing:?}); run scripts/setup-test-env.sh as root",
        tools
            .iter()
            .map(|(t, _)| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPING: {why}");
    false
}
