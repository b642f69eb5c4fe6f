#!/usr/bin/env bash
# Prints one Markdown table row per fuzz target from the logs fuzz/run.sh left in
# fuzz/logs/: executions, executions per second, peak RSS, corpus size after minimising
# (files and bytes) and whether fuzz/artifacts/<target>/ holds a finding.
#
#   fuzz/stats.sh [target...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^flowlog-fuzz$')
fi

echo "| target | executions | exec/s | peak RSS (MB) | corpus (files, bytes) | artifacts |"
echo "|---|---:|---:|---:|---:|---|"
for target in "${targets[@]}"; do
    log="logs/$target.log"
    stat() { sed -n "s/^stat::$1: *//p" "$log" 2>/dev/null | tail -n 1; }
    files=$(find "corpus/$target" -type f 2>/dev/null | wc -l)
    bytes=$(find "corpus/$target" -type f -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}')
    artifacts=$(find "artifacts/$target" -type f 2>/dev/null | wc -l)
    echo "| \`$target\` | $(stat number_of_executed_units) | $(stat average_exec_per_sec) | $(stat peak_rss_mb) | $files, $bytes | $artifacts |"
done
