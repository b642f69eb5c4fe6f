#!/usr/bin/env bash
# Runs the fuzz targets, minimising each corpus after its run.
#
#   fuzz/run.sh [seconds-per-target] [target...]
#
# Defaults: 600 seconds, every target (`cargo fuzz list`). Needs a nightly toolchain;
# installs cargo-fuzz from crates.io when it is missing. Each run's libFuzzer output goes
# to fuzz/logs/<target>.log (its last lines give the executions and corpus size, see
# docs/fuzzing.md). Crashes, timeouts and out-of-memory inputs land in
# fuzz/artifacts/<target>/; the script goes on with the next target and exits non-zero at
# the end if any target found something.
#
# Environment:
#   FUZZ_JOBS      targets run at the same time (default 1; each is one libFuzzer process)
#   FUZZ_NICE      niceness of the fuzzers (default 19)
#   TMPDIR         where the WAL and spool targets create their scratch directories
#                  (default /dev/shm when it exists: they write files for every input)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

seconds="${1:-600}"
shift || true
jobs="${FUZZ_JOBS:-1}"
niceness="${FUZZ_NICE:-19}"
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# No sanitizer: the code under test has no unsafe blocks (the workspace denies
# unsafe_code), so AddressSanitizer would only slow the runs down. Overflow checks and
# debug assertions stay on (cargo-fuzz's default build).
build=(--sanitizer none)
# -rss_limit_mb / -timeout make memory blow-ups and hangs findings; -jobs=1 keeps each
# target on one core.
libfuzzer=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -jobs=1 -workers=1 -print_final_stats=1)

nice -n "$niceness" cargo +nightly fuzz build "${build[@]}"
mkdir -p logs

run_one() {
    local target="$1" here
    here="$(pwd)"
    mkdir -p "corpus/$target" "artifacts/$target" "logs/$target"
    echo "fuzz: $target for ${seconds}s (log: fuzz/logs/$target.log)"
    # With -jobs=1 libFuzzer writes its output to fuzz-0.log in the working directory:
    # each target gets its own so that parallel runs do not mix.
    (
        cd "logs/$target"
        status=0
        nice -n "$niceness" cargo +nightly fuzz run --fuzz-dir "$here" "${build[@]}" "$target" \
            "$here/corpus/$target" -- "${libfuzzer[@]}" \
            -artifact_prefix="$here/artifacts/$target/" >run.out 2>&1 || status=$?
        cat run.out fuzz-0.log >"../$target.log" 2>/dev/null || true
        exit "$status"
    ) || true
    # A set cover of the edges (hit counts ignored): keeps the checked-in corpora to a few
    # hundred files per target.
    echo "fuzz: minimising corpus/$target"
    nice -n "$niceness" cargo +nightly fuzz cmin "${build[@]}" "$target" "corpus/$target" \
        -- -set_cover_merge=1 -use_counters=0 -rss_limit_mb=2048 -timeout=10 \
        >"logs/$target.cmin.log" 2>&1 || true
    echo "fuzz: $target done"
}

failed=()
running=0
for target in "${targets[@]}"; do
    run_one "$target" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

for target in "${targets[@]}"; do
    if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: findings in: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
