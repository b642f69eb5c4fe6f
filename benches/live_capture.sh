#!/usr/bin/env bash
# Live capture throughput: the release agent, pinned to one core, captures one end of a veth
# pair while `udp_blast` (pinned to another core, in a network namespace) sends 64-byte
# frames into the other end at increasing rates. For each rate it reports the frames sent,
# the packets the agent's records count, the kernel's drops (PACKET_STATISTICS, from the
# agent's per-thread summary lines), SKIPDATA records and the agent's CPU use; then the
# highest rate without a drop.
#
# Columns: rate_pps asked, sent_pps achieved by the sender; sent frames; captured = packets
# in the agent's UDP records; sock_drop = dropped by the kernel because the agent's socket
# buffer was full (PACKET_STATISTICS); unread = queued but not read when the agent stopped;
# backlog = dropped by the kernel before reaching any socket (per-CPU input backlog full,
# not the agent's doing); skipdata = SKIPDATA records; agent_cpu = the agent's CPU use while
# sending; us_per_pkt = its CPU time per captured packet (1 / that = the rate one dedicated
# core sustains, whatever else runs on the machine).
#
#   sudo benches/live_capture.sh                      # default rates, 5 s each
#   RATES="300000 500000" SECONDS_PER_RATE=10 sudo -E benches/live_capture.sh
#
# Environment:
#   RATES             packets/s to try, in order (default 100k 200k 300k 400k 500k 700k 1M)
#   SECONDS_PER_RATE  sending time per rate (default 5)
#   AGENT_CPU         CPU the agent is pinned to (default 0)
#   SENDER_CPU        CPU the sender is pinned to (default 1); the receive path of the veth
#                     (softirq) runs there too, so the agent's core only does capture
#   FLOWS             distinct UDP flows in the traffic (default 64)
#   FANOUT            [capture] fanout_threads (default 1)
#   SOCKET_BUFFER     [capture] socket_buffer (default "32MiB", the agent's default)
#   DST_MAC           "other" (default): frames are addressed to another host's MAC, so the
#                     IP layer discards them at once and the sender's core has time to send
#                     more (the packet socket on a veth receives them all the same); "host":
#                     addressed to the captured interface (the full receive path runs on
#                     the sender's core, which then tops out lower)
#   NICE              niceness of the agent and the sender (default -10), so that other work
#                     on a shared machine disturbs the measurement less
#   NO_BUILD=1        use the binaries already in target/release
#
# Needs root (network namespace, packet sockets) and two CPUs.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rates="${RATES:-100000 200000 300000 400000 500000 700000 1000000}"
seconds="${SECONDS_PER_RATE:-5}"
agent_cpu="${AGENT_CPU:-0}"
sender_cpu="${SENDER_CPU:-1}"
flows="${FLOWS:-64}"
fanout="${FANOUT:-1}"
socket_buffer="${SOCKET_BUFFER:-32MiB}"
dst_mac_mode="${DST_MAC:-other}"
niceness="${NICE:--10}"

if [[ $(id -u) -ne 0 ]]; then
    echo "error: needs root (network namespace and packet sockets)" >&2
    exit 1
fi
if [[ -z "${NO_BUILD:-}" ]]; then
    (cd "$repo" && cargo build --release -q -p flowlog-agent --bin flowlog-agent \
        && cargo build --release -q -p flowlog-benches --bin udp_blast)
fi
agent_bin="$repo/target/release/flowlog-agent"
blast_bin="$repo/target/release/udp_blast"

ns="fllc$$"
here="fllc$$a"   # captured by the agent (this namespace)
there="fllc$$b"  # the sender's end (in $ns)
work="$(mktemp -d)"
agent_pid=""
cleanup() {
    if [[ -n "$agent_pid" ]]; then kill -TERM "$agent_pid" 2>/dev/null || true; wait "$agent_pid" 2>/dev/null || true; fi
    ip link del "$here" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip link add "$here" type veth peer name "$there" netns "$ns"
# No IPv6 (neighbour discovery would add packets), no ICMP replies to count.
sysctl -q -w "net.ipv6.conf.$here.disable_ipv6=1"
ip netns exec "$ns" sysctl -q -w "net.ipv6.conf.$there.disable_ipv6=1"
ip addr add 10.195.0.1/24 dev "$here"
ip link set "$here" up
ip netns exec "$ns" ip addr add 10.195.0.2/24 dev "$there"
ip netns exec "$ns" ip link set "$there" up
ip netns exec "$ns" ip link set lo up
case "$dst_mac_mode" in
    host) dst_mac="$(cat "/sys/class/net/$here/address")" ;;
    other) dst_mac="02:00:00:00:00:99" ;;
    *) echo "error: DST_MAC must be host or other" >&2; exit 1 ;;
esac

cat >"$work/agent.toml" <<EOF
[flow_log]
id = "fl-0a1b2c3d4e5f60718"
account_id = "123456789012"
region = "eu-west-3"
max_aggregation_interval = "60s"
[output]
log_format = "\${interface-id} \${protocol} \${srcport} \${dstport} \${packets} \${bytes} \${log-status}"
[[interface]]
name = "$here"
[capture]
fanout_threads = $fanout
socket_buffer = "$socket_buffer"
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Packets the kernel dropped before any socket saw them (per-CPU input backlog full).
backlog_drops() {
    local n=0 processed dropped rest
    while read -r processed dropped rest; do n=$((n + 16#$dropped)); done </proc/net/softnet_stat
    echo "$n"
}
hz="$(getconf CLK_TCK)"

printf '%-9s %-9s %-9s %-9s %-9s %-8s %-9s %-9s %-9s %-10s\n' \
    rate_pps sent_pps sent captured sock_drop unread backlog skipdata agent_cpu us_per_pkt
best=0
for rate in $rates; do
    # Pinned from the start: every thread it creates inherits the affinity.
    nice -n "$niceness" taskset -c "$agent_cpu" "$agent_bin" --stdout --config "$work/agent.toml" \
        >"$work/records" 2>"$work/stderr" &
    agent_pid=$!
    for _ in $(seq 100); do
        grep -q "capture: started on $here" "$work/stderr" && break
        sleep 0.05
    done
    grep -q "capture: started on $here" "$work/stderr" || { cat "$work/stderr" >&2; exit 1; }
    ticks_before="$(cpu_ticks "$agent_pid")"
    backlog_before="$(backlog_drops)"
    started_ns="$(date +%s%N)"
    if ! ip netns exec "$ns" nice -n "$niceness" taskset -c "$sender_cpu" "$blast_bin" --interface "$there" \
        --dst-mac "$dst_mac" --src 10.195.0.2 --dst 10.195.0.1 --dst-port 9 \
        --rate "$rate" --seconds "$seconds" --flows "$flows" >"$work/sent"; then
        echo "error: the sender failed at $rate packets/s" >&2
        exit 1
    fi
    sleep 0.5
    ticks_after="$(cpu_ticks "$agent_pid")"
    elapsed_ns=$(($(date +%s%N) - started_ns))
    backlog=$(($(backlog_drops) - backlog_before))
    kill -TERM "$agent_pid"
    status=0
    wait "$agent_pid" || status=$?
    agent_pid=""
    if [[ $status -ne 0 ]]; then
        echo "error: the agent exited with status $status at $rate packets/s:" >&2
        cat "$work/stderr" >&2
        exit 1
    fi
    sent="$(sed -n 's/.*sent=\([0-9]*\).*/\1/p' "$work/sent")"
    sent_pps="$(sed -n 's/.* rate=\([0-9]*\).*/\1/p' "$work/sent")"
    captured="$(awk '$2 == 17 && $4 == 9 && $7 == "OK" {n += $5} END {print n + 0}' "$work/records")"
    skipdata="$(awk '$NF == "SKIPDATA" {n++} END {print n + 0}' "$work/records")"
    drops="$(sed -n 's/.* \([0-9]*\) dropped by the kernel.*/\1/p' "$work/stderr" | awk '{n += $1} END {print n + 0}')"
    unread="$(sed -n 's/.* \([0-9]*\) left unread at the end.*/\1/p' "$work/stderr" | awk '{n += $1} END {print n + 0}')"
    cpu="$(awk -v t=$((ticks_after - ticks_before)) -v hz="$hz" -v ns="$elapsed_ns" \
        'BEGIN {printf "%.0f%%", 100 * t / hz / (ns / 1e9)}')"
    # The agent's CPU time per captured packet: 1 / this = the rate one dedicated core
    # could sustain, whatever else runs on the machine.
    per_packet="$(awk -v t=$((ticks_after - ticks_before)) -v hz="$hz" -v n="$captured" \
        'BEGIN {if (n > 0) printf "%.2f", 1e6 * t / hz / n; else print "-"}')"
    printf '%-9s %-9s %-9s %-9s %-9s %-8s %-9s %-9s %-9s %-10s\n' \
        "$rate" "$sent_pps" "$sent" "$captured" "$drops" "$unread" "$backlog" "$skipdata" "$cpu" "$per_packet"
    if [[ "$drops" -eq 0 && "$unread" -eq 0 && "$captured" -eq "$sent" ]]; then
        best="$rate"
    fi
done
echo "max drop-free rate: $best packets/s (64-byte frames to the $dst_mac_mode MAC, agent on CPU $agent_cpu, fanout_threads $fanout)"
