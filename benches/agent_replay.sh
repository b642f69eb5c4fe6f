#!/usr/bin/env bash
# Replay benchmark of the agent: `flowlog-agent --replay F --stdout` of a generated capture
# (default 5,000,000 packets, 100k+ flows per 60 s interval) beside softflowd, pmacctd and
# tcpdump on the same file, in the same run, each pinned to one core. Prints packets/s,
# the ratio to softflowd, peak RSS and RSS bytes per live flow, then the target checks.
#
#   benches/agent_replay.sh [PACKETS]
#
# Environment:
#   FLOWLOG_BENCH_DIR  where the capture and scratch files go (default target/agent-bench;
#                      the 5M-packet capture is ~2.8 GB: /dev/shm/... keeps it in memory)
#   RUNS               timed runs per tool, the fastest kept (default 3)
#   CPU                the core every tool is pinned to (default 1)
#   KEEP=1             keep the capture afterwards (default: deleted; it is regenerated
#                      byte for byte from the same seed in ~15 s)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$PWD"
packets="${1:-5000000}"
runs="${RUNS:-3}"
cpu="${CPU:-1}"
work="${FLOWLOG_BENCH_DIR:-$repo/target/agent-bench}"
mkdir -p "$work"
pcap="$work/replay-$packets.pcap"
tiny="$work/tiny.pcap"
# softflowd's directory: it runs there, with short relative names for its capture (it
# keeps only the first 15 characters of -r's file name), pid file and control socket (in
# file mode it hangs in accept() when the socket's path has 13 characters or more; and it
# deletes the socket's path when it exits, so the path must be its own).
ctl="$(mktemp -d /tmp/flowlog-softflowd.XXXXXX)"
trap 'rm -rf "$ctl"; rm -f "$work"/time.out "$work"/run.out "$work"/run.err "$work"/best.out "$work"/best.err "$work"/pmacct*.csv; [[ "${KEEP:-0}" == 1 ]] || rm -f "$pcap" "$pcap.stats"' EXIT

# --- tools ---------------------------------------------------------------------------
missing=()
command -v softflowd >/dev/null 2>&1 || missing+=(softflowd)
command -v pmacctd >/dev/null 2>&1 || missing+=(pmacct)
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
[[ -x /usr/bin/time ]] || missing+=(time)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [[ ${#missing[@]} -gt 0 ]]; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "installing ${missing[*]} from Debian ..." >&2
    "${sudo[@]}" apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${missing[@]}" >/dev/null
fi

cargo build --release -q -p flowlog-agent -p flowlog-benches
agent="$repo/target/release/flowlog-agent"
gen="$repo/target/release/gen_pcap"
pipeline="$repo/target/release/agent_pipeline"

# --- inputs ----------------------------------------------------------------------------
if [[ ! -s "$pcap" || ! -s "$pcap.stats" ]]; then
    need_kb=$((packets * 600 / 1024))
    free_kb=$(df -Pk "$work" | awk 'NR == 2 { print $4 }')
    if ((free_kb < need_kb)); then
        echo "error: $work has $((free_kb / 1024)) MiB free, the capture needs ~$((need_kb / 1024)) MiB;" \
            "set FLOWLOG_BENCH_DIR (e.g. /dev/shm/flowlog-bench)" >&2
        exit 1
    fi
    echo "generating $pcap ..." >&2
    "$gen" --out "$pcap" --packets "$packets" --seconds 300 --seed 1
fi
# The RSS of a process that replays next to nothing: the part of peak RSS that is not
# flow state (code, libraries, buffers).
"$gen" --out "$tiny" --packets 1000 --seconds 1 --seed 1 2>/dev/null
stat_of() { awk -v k="$1" '$1 == k { print $2 }' "$pcap.stats"; }
n_packets=$(stat_of packets)
n_flows=$(stat_of flows)
peak_flows=$(stat_of peak_interval_flows)
n_bytes=$(stat_of bytes)

cat >"$work/agent.toml" <<'EOF'
[flow_log]
id = "fl-0123456789abcdef0"
account_id = "123456789012"
region = "us-east-1"
max_aggregation_interval = "60s"

[[interface]]
name = "eth0"
interface_id = "eni-0123456789abcdef0"
mac = "02:00:00:00:00:0a"
addresses = ["10.0.1.10", "2600:1f18:1234:5600::10"]
EOF

pmacct_conf() { # capture output-file
    cat <<EOF
daemonize: false
pcap_savefile: $1
plugins: print[p]
aggregate[p]: src_host, dst_host, src_port, dst_port, proto
print_output[p]: csv
print_output_file[p]: $2
print_refresh_time[p]: 60
print_cache_entries[p]: 262139
plugin_pipe_size[p]: 134217728
plugin_buffer_size[p]: 1048576
EOF
}
pmacct_conf "$pcap" "$work/pmacct.csv" >"$work/pmacctd.conf"
pmacct_conf "$tiny" "$work/pmacct-tiny.csv" >"$work/pmacctd-tiny.conf"

agent_cmd() { echo "$agent" --config "$work/agent.toml" --replay "$1" --stdout; }
ln -sf "$pcap" "$ctl/big.pcap"
ln -sf "$tiny" "$ctl/tiny.pcap"
softflowd_cmd() {
    echo env -C "$ctl" timeout 300 softflowd -d -r "$1" -n 127.0.0.1:9995 -m 4000000 -v 9 \
        -p sf.pid -c sf.ctl
}
pmacctd_cmd() { echo timeout 300 pmacctd -f "$1"; }
# As root, tcpdump hands the file it writes to its own user unless -Z says otherwise, and
# that file is /dev/null here.
tcpdump_user=()
[[ $(id -u) -ne 0 ]] || tcpdump_user=(-Z root)
tcpdump_cmd() { echo tcpdump "${tcpdump_user[@]}" -r "$1" -w /dev/null; }

# --- measuring ---------------------------------------------------------------------------
# run CMD...: runs it pinned to $cpu; sets wall (s), cpu (user+sys s) and rss (KiB).
run() {
    local t0 t1
    t0=$(date +%s%N)
    if ! /usr/bin/time -f "%U %S %M" -o "$work/time.out" taskset -c "$cpu" "$@" \
        >"$work/run.out" 2>"$work/run.err"; then
        echo "error: $* failed:" >&2
        tail -5 "$work/run.err" >&2
        exit 1
    fi
    t1=$(date +%s%N)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
    read -r user sys rss < <(tail -1 "$work/time.out")
    cpu_s=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
}

# best LABEL CMD...: RUNS timed runs, keeps the fastest (best_wall, best_cpu, best_rss);
# the tool's output of that run stays in run.out / run.err.
best() {
    local label="$1"
    shift
    best_wall=""
    for ((i = 0; i < runs; i++)); do
        run "$@"
        if [[ -z "$best_wall" ]] || awk -v a="$wall" -v b="$best_wall" 'BEGIN { exit !(a < b) }'; then
            best_wall=$wall best_cpu=$cpu_s best_rss=$rss
            cp "$work/run.out" "$work/best.out"
            cp "$work/run.err" "$work/best.err"
        fi
    done
    echo "  $label: best of $runs: ${best_wall} s" >&2
}

echo "capture: $n_packets packets, $n_bytes bytes of frames, $n_flows flows, at most $peak_flows flows in one 60 s interval" >&2
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg); every tool pinned to core $cpu" >&2
# Warm the page cache so that every tool reads the file from memory.
cat "$pcap" >/dev/null

declare -A wall_of cpu_of rss_of tiny_rss_of held_of
measure() { # key label command-for-capture command-for-tiny held-flows-expression
    local key="$1" label="$2" cmd="$3" tiny_cmd="$4"
    # shellcheck disable=SC2086
    best "$label" $cmd
    wall_of[$key]=$best_wall cpu_of[$key]=$best_cpu rss_of[$key]=$best_rss
    case "$key" in
    softflowd) held_of[$key]=$(awk '/flushed =/ { print $NF }' "$work/best.out") ;;
    pmacctd) held_of[$key]=$(grep -c '^[0-9a-f]' "$work/pmacct.csv" || true) ;;
    agent) held_of[$key]=$peak_flows ;;
    *) held_of[$key]="" ;;
    esac
    # shellcheck disable=SC2086
    run $tiny_cmd
    tiny_rss_of[$key]=$rss
}

measure tcpdump "tcpdump -r F -w /dev/null" "$(tcpdump_cmd "$pcap")" "$(tcpdump_cmd "$tiny")"
measure softflowd "softflowd -r F (NetFlow v9)" "$(softflowd_cmd big.pcap)" "$(softflowd_cmd tiny.pcap)"
sf_packets=$(awk '/Packets processed:/ { print $3 }' "$work/best.out")
measure pmacctd "pmacctd -I F (print plugin)" "$(pmacctd_cmd "$work/pmacctd.conf")" "$(pmacctd_cmd "$work/pmacctd-tiny.conf")"
pm_packets=$(awk -F, '$6 ~ /^[0-9]+$/ { p += $6 } END { print p + 0 }' "$work/pmacct.csv")
measure agent "flowlog-agent --replay F --stdout" "$(agent_cmd "$pcap")" "$(agent_cmd "$tiny")"
agent_summary=$(tail -1 "$work/best.err")

# --- report ---------------------------------------------------------------------------
echo
printf "%-36s %8s %8s %12s %13s %13s %11s %8s\n" \
    "tool (one core)" "wall s" "cpu s" "packets/s" "vs softflowd" "peak RSS MiB" "live flows" "B/flow"
row() { # key label
    local key="$1" label="$2"
    awk -v label="$label" -v n="$n_packets" -v w="${wall_of[$key]}" -v c="${cpu_of[$key]}" \
        -v sw="${wall_of[softflowd]}" -v rss="${rss_of[$key]}" -v tiny="${tiny_rss_of[$key]}" \
        -v held="${held_of[$key]}" 'BEGIN {
            bpf = (held > 0) ? sprintf("%.0f", (rss - tiny) * 1024 / held) : "-";
            printf "%-36s %8.2f %8.2f %12.0f %12.2fx %13.1f %11s %8s\n",
                label, w, c, n / w, sw / w, rss / 1024, (held > 0 ? held : "-"), bpf
        }'
}
row tcpdump "tcpdump -r F -w /dev/null"
row softflowd "softflowd -r F -v 9"
row pmacctd "pmacctd -I F, print plugin"
row agent "flowlog-agent --replay F --stdout"

ratio=$(awk -v a="${wall_of[agent]}" -v s="${wall_of[softflowd]}" 'BEGIN { printf "%.2f", s / a }')
bpf=$(awk -v r="${rss_of[agent]}" -v t="${tiny_rss_of[agent]}" -v f="$peak_flows" 'BEGIN { printf "%.0f", (r - t) * 1024 / f }')
echo
echo "packets/s = $n_packets packets / wall time (fastest of $runs runs); cpu s = user + sys of the"
echo "process and the children it waited for. B/flow = (peak RSS - peak RSS of the same tool"
echo "replaying a 1000-packet capture) / live flows: for the agent the most flows of one 60 s"
echo "interval (the flows it holds at once, from the generator), for softflowd the flows it"
echo "flushed at the end (its timeouts keep every flow of a 300 s capture), for pmacctd the"
echo "rows of its single purge (its cache is preallocated: print_cache_entries)."
echo "softflowd counted $sf_packets IP packets, pmacctd $pm_packets; agent: $agent_summary"
echo
echo "decode + aggregate only (agent_pipeline: the same replay in-process, stage by stage):"
taskset -c "$cpu" "$pipeline" --config "$work/agent.toml" --replay "$pcap" --runs "$runs"
echo
((packets >= 5000000)) || echo "(the targets are set for a capture of at least 5,000,000 packets)"
awk -v r="$ratio" 'BEGIN { printf "ratio >= 3x softflowd: %s (%.2fx)\n", (r >= 3 ? "PASS" : "MISS"), r }'
awk -v b="$bpf" 'BEGIN { printf "<= 200 B/flow: %s (%d B per live flow)\n", (b <= 200 ? "PASS" : "MISS"), b }'
