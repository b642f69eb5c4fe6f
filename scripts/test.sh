#!/usr/bin/env bash
# The project's test command: sets up what the tests need on a fresh machine (Python
# readers in a venv, Debian tools for the agent's tests), then runs formatting, lint, the
# whole test suite, then the packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/setup-test-env.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The agent without standalone output builds, lints clean and links no arrow/parquet.
cargo clippy -p flowlog-agent --no-default-features -- -D warnings
if cargo tree -p flowlog-agent --no-default-features -e normal | grep -E '^\W*(arrow|parquet)'; then
    echo "error: flowlog-agent without the standalone feature links arrow/parquet" >&2
    exit 1
fi
cargo test --workspace
# The four packages, built with the dist profile and installed, upgraded and purged on this
# machine, and their services run under systemd (see packaging/README.md).
bash packaging/test.sh
