#!/usr/bin/env bash
# Fleet load benchmark: N simulated agents (benches/src/bin/fleet_load.rs, each its own
# agent_id, token, connection and spool id, batches of real-agent size) push to one
# `flowlog-aggregator serve` over gRPC with TLS on 127.0.0.1, back to back, as a fleet
# catching up after an outage. Prints sustained records/s acked into the WAL, p50/p99 ack
# latency and the aggregator's peak RSS for each N, beside the same aggregator's `import`
# of the same records from a local file (no network, no TLS) measured in the same run.
# Then two aggregators at once, writing into one output directory: the generator spreads
# the agents over both, and `fleet_load verify` checks that the pair's output holds every
# pushed record exactly once (no key collisions between the writers).
# Then the fleet check: FLEET_AGENTS agents, each an output stream of its own
# (`--stream-per-agent`), first pushing live records (current window) for WARMUP +
# DURATION seconds, then all catching up CATCHUP seconds of spooled records at once
# (`--catch-up`). For each: records/s acked, and once the aggregator has stopped (SIGTERM
# seals open windows) the files per stream and window against the rule (one file per
# stream and window, plus size-cap splits, plus at most one late file per grace period:
# `fleet_load files`), and `fleet_load verify` (every record exactly once, in its window's
# file of its agent's stream).
#
#   benches/fleet_load.sh [N ...]        (default: 100 1000)
#
# Environment: DURATION (measured seconds, default 20), WARMUP (default 5), BATCH
# (records per batch, default 2000), FORMAT (text | parquet, default text), FSYNC
# (the WAL policy, default always), GZIP_LEVEL (text output's gzip level, default 6).
# Fleet check: FLEET_AGENTS (default 1000), FLEET_BATCH (records per batch, default 200),
# CATCHUP (seconds of backlog, default 7200), CATCHUP_BATCHES (batches per agent, default
# 24), GRACE (the aggregators' output.grace in seconds; unset: their default, 60),
# FLEET_ONLY=1 (only the fleet check: no import baseline, N runs or pair run).
# The exit status is non-zero when a `verify` fails; files over the rule are reported only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fleets=("$@")
[[ ${#fleets[@]} -gt 0 ]] || fleets=(100 1000)
duration="${DURATION:-20}"
warmup="${WARMUP:-5}"
batch="${BATCH:-2000}"
format="${FORMAT:-text}"
fsync="${FSYNC:-always}"
gzip_level="${GZIP_LEVEL:-6}"
fleet_agents="${FLEET_AGENTS:-1000}"
fleet_batch="${FLEET_BATCH:-200}"
catchup="${CATCHUP:-7200}"
catchup_batches="${CATCHUP_BATCHES:-24}"
grace="${GRACE:-60}"
grace_line=""
[[ -z ${GRACE:-} ]] || grace_line="grace = \"${GRACE}s\""
fleet_only="${FLEET_ONLY:-0}"
work="$(mktemp -d "${TMPDIR:-/tmp}/flowlog-fleet-bench.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release -q -p flowlog-aggregator -p flowlog-benches
bin="$PWD/target/release/flowlog-aggregator"
load="$PWD/target/release/fleet_load"
max=0
for n in "${fleets[@]}" "$fleet_agents"; do ((n > max)) && max=$n; done
((max >= 200)) || max=200
"$load" pki --dir "$work/pki" >/dev/null
"$load" tokens --agents "$max" >"$work/tokens"
chmod 600 "$work/tokens"
ulimit -n 65536 2>/dev/null || true

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

config() { # state-dir output-dir port
    cat <<EOT
[flow_log]
id = "fl-0123456789abcdef0"
account_id = "123456789012"
region = "us-east-1"
[output]
format = "$format"
gzip_level = $gzip_level
$grace_line
[sink]
type = "local"
path = "$2"
[state]
dir = "$1"
fsync = "$fsync"
[service]
log_level = "warn"
shutdown_grace = "600s"
[listen]
address = "127.0.0.1:$3"
tls_cert = "$work/pki/server.pem"
tls_key = "$work/pki/server.key"
tokens_file = "$work/tokens"
EOT
}

# Starts an aggregator; sets $agg_pid and $agg_url.
start_aggregator() { # name output-dir
    local port
    port="$(free_port)"
    config "$work/state-$1" "$2" "$port" >"$work/$1.toml"
    "$bin" serve --config "$work/$1.toml" 2>"$work/$1.log" &
    agg_pid=$!
    pids+=("$agg_pid")
    agg_url="https://127.0.0.1:$port"
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        kill -0 "$agg_pid" 2>/dev/null || { cat "$work/$1.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "aggregator $1 did not listen on $port" >&2
    cat "$work/$1.log" >&2
    exit 1
}

stop_aggregator() { # pid
    kill -TERM "$1"
    wait "$1" || { echo "aggregator exited with $?" >&2; exit 1; }
}

field() { # json key
    python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

baseline=0
results=()
pair_ok=skipped
if [[ $fleet_only != 1 ]]; then
echo "== baseline: import of the same records from a local file (no network, no TLS)"
import_records=$((batch * 1000))
target/release/gen_flows --records "$import_records" --out "$work/import.log" >/dev/null
config "$work/state-import" "$work/out-import" 0 | sed '/^\[listen\]/,$d' >"$work/import.toml"
t0=$(date +%s.%N)
"$bin" import --config "$work/import.toml" "$work/import.log" >/dev/null 2>"$work/import.err"
t1=$(date +%s.%N)
baseline=$(awk -v n="$import_records" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }')
printf "import: %d records in %.1f s = %d records/s\n" "$import_records" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" "$baseline"
rm -rf "$work/out-import" "$work/state-import" "$work/import.log"

for n in "${fleets[@]}"; do
    echo "== $n agents, one aggregator, TLS, batches of $batch, $format output (gzip level $gzip_level), fsync $fsync"
    rm -rf "$work/out" "$work/state-one"
    start_aggregator one "$work/out"
    json="$("$load" run --endpoint "$agg_url" --ca "$work/pki/ca.pem" --agents "$n" \
        --batch-records "$batch" --warmup "$warmup" --duration "$duration" --watch-pid "$agg_pid")"
    echo "$json"
    stop_aggregator "$agg_pid"
    results+=("$n|$json")
done

echo "== two aggregators, one output directory, 200 agents spread over both (--unique)"
rm -rf "$work/out" "$work/state-a" "$work/state-b"
start_aggregator a "$work/out"
a_pid=$agg_pid a_url=$agg_url
start_aggregator b "$work/out"
b_pid=$agg_pid b_url=$agg_url
"$load" run --endpoint "$a_url" --endpoint "$b_url" --ca "$work/pki/ca.pem" --agents 200 \
    --batch-records 500 --batches-per-agent 20 --unique >"$work/pair.json"
cat "$work/pair.json"
stop_aggregator "$a_pid"
stop_aggregator "$b_pid"
pair="$("$load" verify --dir "$work/out" --expect "$work/pair.json" 2>&1)" && pair_ok=yes || pair_ok=NO
echo "$pair"
fi

# The fleet check: one run of FLEET_AGENTS agents, each its own stream; prints the run,
# `verify` and `files`; records "name|verified" in fleet_results.
fleet_results=()
fleet_run() { # name title run-arguments...
    local name=$1 title=$2 ok t0
    shift 2
    echo "== $title"
    rm -rf "$work/out" "$work/state-$name"
    start_aggregator "$name" "$work/out"
    "$load" run --endpoint "$agg_url" --ca "$work/pki/ca.pem" --agents "$fleet_agents" \
        --batch-records "$fleet_batch" --unique --stream-per-agent --watch-pid "$agg_pid" \
        --arrivals "$work/$name.arrivals" "$@" >"$work/$name.json"
    cat "$work/$name.json"
    t0=$(date +%s.%N)
    stop_aggregator "$agg_pid"
    printf "aggregator stopped (SIGTERM: open windows sealed) in %.1f s\n" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"
    "$load" verify --dir "$work/out" --expect "$work/$name.json" 2>&1 && ok=yes || ok=NO
    "$load" files --dir "$work/out" --expect "$work/$name.json" --arrivals "$work/$name.arrivals" \
        --grace "$grace" --json "$work/$name.files.json"
    fleet_results+=("$name|$ok")
}
fleet_run live "$fleet_agents agents, a stream each, live records, batches of $fleet_batch, $((warmup + duration)) s" \
    --warmup "$warmup" --duration "$duration"
fleet_run catchup "$fleet_agents agents, a stream each, catching up $catchup s at once ($catchup_batches batches of $fleet_batch each)" \
    --catch-up "$catchup" --batches-per-agent "$catchup_batches"

echo
baseline_text="; import baseline $baseline records/s"
[[ $fleet_only != 1 ]] || baseline_text=""
echo "== summary (2 cores, TLS, $format, gzip level $gzip_level, fsync $fsync$baseline_text)"
[[ $fleet_only == 1 ]] || printf "%-8s %14s %12s %10s %10s %14s\n" agents "records/s" "vs import" "p50 ms" "p99 ms" "peak RSS MiB"
for r in "${results[@]}"; do
    n="${r%%|*}" json="${r#*|}"
    rate="$(field "$json" records_per_second)"
    printf "%-8s %14.0f %11.2fx %10.1f %10.1f %14.1f\n" "$n" "$rate" \
        "$(awk -v r="$rate" -v b="$baseline" 'BEGIN { print r / b }')" \
        "$(field "$json" ack_ms_p50)" "$(field "$json" ack_ms_p99)" \
        "$(python3 -c 'import json,sys; print(max(json.loads(sys.argv[1])["peak_rss_kib"]) / 1024)' "$json")"
done
[[ $fleet_only == 1 ]] || echo "two aggregators, output equals input: $pair_ok"
echo "fleet check: $fleet_agents agents, a stream each; grace $grace s; files per stream per window min/median/max; rule = min-max files by the rule"
printf "%-8s %12s %12s %8s %8s %8s %14s %16s %10s %8s\n" run records "records/s" streams windows files "per stream" rule "in rule" verified
for r in "${fleet_results[@]}"; do
    name="${r%%|*}" ok="${r#*|}"
    python3 - "$work/$name.json" "$work/$name.files.json" "$name" "$ok" <<'EOT'
import json, sys
run = json.load(open(sys.argv[1]))
f = json.load(open(sys.argv[2]))
print("%-8s %12d %12.0f %8d %8d %8d %14s %16s %10s %8s" % (
    sys.argv[3], run["records_acked"], run["records_per_second"], f["streams"], f["windows"],
    f["files"], "%d/%d/%d" % (f["per_stream_min"], f["per_stream_median"], f["per_stream_max"]),
    "%d-%d" % (f["rule_min"], f["rule_max"]), "yes" if f["within_rule"] else "NO", sys.argv[4]))
EOT
done
[[ $pair_ok != NO ]]
for r in "${fleet_results[@]}"; do [[ ${r#*|} == yes ]]; done
