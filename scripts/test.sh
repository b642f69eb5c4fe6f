#!/usr/bin/env bash
# The project's test command: sets up what the tests need on a fresh machine (Python
# readers in a venv), then runs formatting, lint and the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup-test-env.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
