#!/usr/bin/env bash
# Import scaling benchmark: `flowlog-aggregator import` of N default-format records spread
# over 26 hours and 2 accounts (624 account x 5-minute-window streams), in sorted and in
# random order, to text and to Parquet, with 1 and 2 encoder threads, against the system's
# `gzip -6` on the same text in the same run. Prints files written, records/s, peak RSS,
# the ratio to gzip -6 and the targets.
#
#   benches/import_scaling.sh [RECORDS ...]   (default: 1000000 10000000; ~4 GB of
#                                              scratch disk for 10 M)
#   RUNS=3 benches/import_scaling.sh 1000000  (fastest of 3 runs per import; default 1)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $# -gt 0 ]]; then
    sizes=("$@")
else
    sizes=(1000000 10000000)
fi
for n in "${sizes[@]}"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [RECORDS ...]  ('$n' is not a record count)" >&2; exit 64; }
done
runs="${RUNS:-1}"
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS='$runs' is not a positive number" >&2; exit 64; }
hours=26
accounts=2

work="$(mktemp -d "${TMPDIR:-/tmp}/flowlog-import-scaling.XXXXXX")"
trap 'rm -rf "$work"' EXIT

cargo build --release -q -p flowlog-aggregator -p flowlog-benches
bin="$PWD/target/release/flowlog-aggregator"
gen="$PWD/target/release/gen_flows"

# Runs a command with its stdout discarded and prints "<seconds> <peak RSS in KiB>" of it.
measure() {
    python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.monotonic() - t
if r.returncode != 0:
    sys.stderr.write(r.stderr.decode(errors="replace"))
    sys.exit(r.returncode)
print(f"{elapsed:.3f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
PY
}

# Runs a command $1 times; prints the fastest "<seconds> <peak RSS KiB>".
best_of() {
    local times="$1" best="" result i
    shift
    for ((i = 0; i < times; i++)); do
        result="$(measure "$@")"
        if [[ -z "$best" ]] || awk -v a="${result% *}" -v b="${best% *}" 'BEGIN { exit !(a < b) }'; then
            best="$result"
        fi
    done
    echo "$best"
}

config() { # format workers(empty = leave out) out-dir state-dir
    cat <<EOT
[flow_log]
id = "fl-0123456789abcdef0"
account_id = "123456789012"
region = "us-east-1"
[output]
format = "$1"
${2:+workers = $2}
[sink]
type = "local"
path = "$3"
[state]
dir = "$4"
[service]
log_level = "warn"
EOT
}

# Does this build know `[output] workers`? Older pipelines refuse it as an unknown key.
mkdir -p "$work/check/out" "$work/check/state"
config text 1 "$work/check/out" "$work/check/state" >"$work/check/with.toml"
config text "" "$work/check/out" "$work/check/state" >"$work/check/without.toml"
if "$bin" import --check-config --config "$work/check/with.toml" x 2>"$work/check/err"; then
    worker_counts=(1 2)
elif "$bin" import --check-config --config "$work/check/without.toml" x 2>/dev/null; then
    worker_counts=(default)
    echo "NOTE: this flowlog-aggregator refuses [output] workers:" >&2
    sed 's/^/    /' "$work/check/err" >&2
    echo "      running without it (workers column: default), against the one-worker targets." >&2
else
    cat "$work/check/err" >&2
    echo "error: the benchmark config is refused (see above)" >&2
    exit 1
fi
rm -rf "$work/check"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
per_sec() { awk -v n="$1" -v s="$2" 'BEGIN { if (s < 0.001) s = 0.001; printf "%.0f", n / s }'; }
at_least() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
target_of() { # format workers
    case "$1/$2" in
        text/2) echo 1.8 ;;
        text/*) echo 1.0 ;;
        parquet/2) echo 1.5 ;;
        *) echo 0.8 ;;
    esac
}

header="   records  order   format   workers   files    records/s  peak MiB  vs gzip-6  target"
echo "cores: $(nproc); load average: $(cut -d' ' -f1-3 /proc/loadavg); imports: fastest of $runs"
declare -A rate gzip_rate
rows=()
for n in "${sizes[@]}"; do
    echo
    echo "== $n records, $hours h, $accounts accounts"
    for order in sorted random; do
        "$gen" --records "$n" --hours "$hours" --accounts "$accounts" --order "$order" --seed 1 \
            --out "$work/$order.log"
        read -r secs _ <<<"$(best_of 3 gzip -6 -c "$work/$order.log")"
        gzip_rate[$order]="$(per_sec "$n" "$secs")"
        printf "  %-6s input: %d bytes; gzip -6 -c (fastest of 3): %.2f s, %d records/s\n" \
            "$order" "$(stat -c %s "$work/$order.log")" "$secs" "${gzip_rate[$order]}"
    done
    echo "$header"
    for order in sorted random; do
        for format in text parquet; do
            for workers in "${worker_counts[@]}"; do
                out="$work/out" state="$work/state"
                cfg_workers="$workers"
                [[ "$workers" == default ]] && cfg_workers=""
                best=""
                for ((r = 0; r < runs; r++)); do
                    rm -rf "$out" "$state"
                    mkdir -p "$out" "$state"
                    config "$format" "$cfg_workers" "$out" "$state" >"$work/config.toml"
                    result="$(measure "$bin" import --config "$work/config.toml" "$work/$order.log")"
                    if [[ -z "$best" ]] || at_least "${best% *}" "${result% *}"; then
                        best="$result"
                        files="$(find "$out" -type f | wc -l)"
                    fi
                done
                read -r secs rss <<<"$best"
                rm -rf "$out" "$state"
                rps="$(per_sec "$n" "$secs")"
                rate[$n/$order/$format/$workers]="$rps"
                x="$(ratio "$rps" "${gzip_rate[$order]}")"
                t="$(target_of "$format" "$workers")"
                status=MISS
                at_least "$x" "$t" && status=PASS
                rows+=("$(printf "%10d  %-6s  %-7s  %-7s  %6d  %11d  %9.1f  %7sx  >= %.1fx %s" \
                    "$n" "$order" "$format" "$workers" "$files" "$rps" \
                    "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')" "$x" "$t" "$status")")
                echo "${rows[-1]}"
            done
        done
    done
    rm -f "$work/sorted.log" "$work/random.log"
done

echo
echo "$header"
printf '%s\n' "${rows[@]}"

echo
echo "random vs sorted order (target: random within 10% of sorted, i.e. >= 0.90x):"
for n in "${sizes[@]}"; do
    for format in text parquet; do
        for workers in "${worker_counts[@]}"; do
            x="$(ratio "${rate[$n/random/$format/$workers]}" "${rate[$n/sorted/$format/$workers]}")"
            status=MISS
            at_least "$x" 0.9 && status=PASS
            printf "%10d  %-7s  workers %-7s  random/sorted %sx  %s\n" "$n" "$format" "$workers" "$x" "$status"
        done
    done
done
