#!/usr/bin/env bash
# The project's test command: sets up what the tests need on a fresh machine (Python
# readers in a venv, Debian tools for the agent's tests), then runs formatting, lint, the
# whole test suite, then the packages.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A CI run builds once from scratch: incremental state would only take disk (2 GB).
if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
fi
# A fresh run peaks at 5.3 GB under target/ (test venv included), plus the cargo registry
# and the packaging tools in ~/.cargo; say so up front rather than dying in the middle of a
# link with ENOSPC.
min_free_gb=8
read -r free_kb mount < <(df -Pk . | awk 'NR == 2 {print $4, $6}')
echo "disk: $((free_kb / 1024 / 1024)) GB free at the start"
if [ "$free_kb" -lt $((min_free_gb * 1024 * 1024)) ]; then
    echo "warning: less than $min_free_gb GB free on $mount; the build may run out of space" >&2
fi

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
du -sh target 2>/dev/null | awk '{print "disk: target/ holds " $1 " at the end"}'
