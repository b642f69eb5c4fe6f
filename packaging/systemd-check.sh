#!/usr/bin/env bash
# Runs the packaged services under a real systemd. Boots this machine's own root file system
# in systemd-nspawn, as an overlay on a tmpfs (nothing on the host changes), with a private
# network holding a veth pair, installs the .debs from target/packages/ there and checks:
#
#   1. flowlog-agent (shipped config, standalone): starts, captures, writes its file on stop;
#   2. with [firewall] it fails without CAP_NET_ADMIN, runs with the example drop-in;
#   3. flowlog-aggregator (TLS, tokens): starts, `systemctl reload` re-reads the tokens;
#   4. a fleet-mode agent delivers its records to the aggregator, which publishes them;
#   5. the package life cycle with the services enabled and running: reinstalling restarts
#      them, `dpkg -r` stops them, `dpkg --purge` removes the state and the user.
#
# Needs root, systemd (the container boots the host's own /usr/lib/systemd/systemd),
# systemd-nspawn (package systemd-container) and openssl; packaging/test.sh installs them
# when missing, builds the packages, then runs this. Under CI=true a missing capability
# fails the check; elsewhere it prints SKIP.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n '/^\[workspace\.package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' "$repo/Cargo.toml")"
arch="$(dpkg --print-architecture)"
debs=("$repo/target/packages/flowlog-agent_${version}-1_${arch}.deb"
    "$repo/target/packages/flowlog-aggregator_${version}-1_${arch}.deb")

if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null || [[ ! -x /usr/lib/systemd/systemd ]]; then
    if [[ "${CI:-}" == "true" ]]; then
        echo "FAIL: the systemd check needs root, apt-get and systemd" >&2
        exit 1
    fi
    echo "SKIP: the systemd check needs root, apt-get and systemd" >&2
    exit 0
fi
for deb in "${debs[@]}"; do
    [[ -s "$deb" ]] || { echo "FAIL: $deb is missing; run packaging/build.sh first" >&2; exit 1; }
done
for tool in systemd-nspawn:systemd-container openssl:openssl nsenter:util-linux; do
    command -v "${tool%%:*}" >/dev/null \
        || { echo "FAIL: ${tool%%:*} is missing (apt-get install ${tool#*:})" >&2; exit 1; }
done

work="$(mktemp -d)"
root="$work/root"
nspawn_pid=""
cleanup() {
    if [[ -n "$nspawn_pid" ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
        kill -TERM "$nspawn_pid" 2>/dev/null || true   # nspawn asks the container to power off
        for _ in $(seq 1 30); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 1; done
    fi
    umount "$root" 2>/dev/null || true
    umount "$work/layers" 2>/dev/null || true
    umount "$work/nspawn-run" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/layers" "$root" "$work/nspawn-run"
mount -t tmpfs -o size=2G tmpfs "$work/layers"
mkdir -p "$work/layers/upper" "$work/layers/work"
mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$work/layers/upper,workdir=$work/layers/work" "$root"
cp "${debs[@]}" "$root/root/"
# nspawn keeps per-machine state in /run/systemd/nspawn and refuses to clean it up when /run
# is not a tmpfs.
if ! mountpoint -q /run/systemd/nspawn && [[ "$(stat -f -c %T /run)" != tmpfs ]]; then
    mkdir -p /run/systemd/nspawn
    mount -t tmpfs tmpfs /run/systemd/nspawn
    trap 'cleanup; umount /run/systemd/nspawn 2>/dev/null || true' EXIT
fi

# --keep-unit --register=no: the host need not run systemd or machined.
systemd-nspawn -q -D "$root" --machine=flowlog-check -b --private-network --register=no \
    --keep-unit --console=pipe </dev/null >"$work/console.log" 2>&1 &
nspawn_pid=$!
init=""
for _ in $(seq 1 60); do
    init="$(pgrep -P "$nspawn_pid" -x systemd || true)"
    [[ -n "$init" ]] && break
    sleep 1
done
[[ -n "$init" ]] || { cat "$work/console.log"; echo "error: the container did not boot" >&2; exit 1; }
in_container() { nsenter -t "$init" -a "$@"; }
state="$(in_container systemctl is-system-running --wait || true)"
echo "container booted: $state"

passed=0
# A command that fails outside check() ends the check too (set -e); say which.
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR
check() {
    local description="$1"
    shift
    if "$@"; then
        passed=$((passed + 1))
        echo "ok: $description"
    else
        echo "FAIL: $description" >&2
        in_container journalctl -u flowlog-agent -u flowlog-aggregator --no-pager -n 30 >&2 || true
        exit 1
    fi
}

# Container images often carry a policy-rc.d that forbids maintainer scripts to start or
# restart services; a real host has none (the overlay keeps the host's copy).
in_container rm -f /usr/sbin/policy-rc.d
in_container dpkg -i /root/"$(basename "${debs[0]}")" /root/"$(basename "${debs[1]}")" >/dev/null
in_container bash -c '
    ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up
    ip addr add 192.0.2.1/24 dev v0
    ip neigh add 192.0.2.9 lladdr 02:00:00:00:00:09 dev v0'
# UDP datagrams out of v0: IP frames on both ends of the pair.
send_traffic() { in_container bash -c 'for i in 1 2 3; do echo x >/dev/udp/192.0.2.9/9999; done'; }

# 1. The shipped config: standalone mode, local files.
in_container systemctl start flowlog-agent
sleep 2
check "flowlog-agent runs with the shipped config" in_container systemctl is-active -q flowlog-agent
send_traffic
sleep 1
in_container systemctl stop flowlog-agent
check "flowlog-agent stopped cleanly (not failed)" \
    bash -c "! nsenter -t $init -a systemctl is-failed -q flowlog-agent"
check "flowlog-agent wrote a flow log file under /var/lib/flowlog-agent/flowlogs" \
    in_container bash -c 'find /var/lib/flowlog-agent/flowlogs -name "*.log.gz" | grep -q .'

# 2. [firewall]: needs CAP_NET_ADMIN, granted by the example drop-in.
in_container sed -i 's/^# \[firewall\]/[firewall]/; s/^# nflog_group = 100 /nflog_group = 100 /;
    s/^promiscuous = false/promiscuous = true/' /etc/flowlog/agent.toml
in_container systemctl start flowlog-agent || true
sleep 2
check "with [firewall] and no drop-in, the agent fails for want of CAP_NET_ADMIN" \
    in_container bash -c 'journalctl -u flowlog-agent --no-pager | grep -q "needs CAP_NET_ADMIN"'
in_container systemctl stop flowlog-agent
in_container systemctl reset-failed flowlog-agent 2>/dev/null || true
in_container install -D -m 0644 /usr/share/doc/flowlog-agent/examples/firewall.conf \
    /etc/systemd/system/flowlog-agent.service.d/firewall.conf
in_container systemctl daemon-reload
in_container systemctl start flowlog-agent
sleep 2
check "with the drop-in the agent runs (NFLOG bound, promiscuous)" \
    in_container systemctl is-active -q flowlog-agent
check "... with CAP_NET_ADMIN and CAP_NET_RAW only (CapEff 3000)" \
    in_container bash -c 'grep -q "^CapEff:.*0000000000003000" /proc/$(systemctl show -p MainPID --value flowlog-agent)/status'
in_container systemctl stop flowlog-agent
in_container rm /etc/systemd/system/flowlog-agent.service.d/firewall.conf
in_container systemctl daemon-reload

# 3. The aggregator with a test CA, a server certificate and tokens.
in_container bash -c '
    set -e
    install -d -m 0750 -g flowlog /etc/flowlog/tls
    cd /etc/flowlog/tls
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
        -keyout server.key -out server.csr 2>/dev/null
    printf "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n" >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out server.pem 2>/dev/null
    chgrp flowlog server.key && chmod 0640 server.key && chmod 0644 ca.pem server.pem
    token="$(openssl rand -hex 16)"
    echo "web-01 $token" >/etc/flowlog/tokens
    echo "$token" >/etc/flowlog/agent.token
    chgrp flowlog /etc/flowlog/tokens /etc/flowlog/agent.token
    chmod 0640 /etc/flowlog/tokens /etc/flowlog/agent.token'
in_container systemctl start flowlog-aggregator
sleep 2
check "flowlog-aggregator runs (TLS, no capabilities, PrivateUsers)" \
    in_container systemctl is-active -q flowlog-aggregator
in_container bash -c 'echo "web-02 $(openssl rand -hex 16)" >>/etc/flowlog/tokens'
in_container systemctl reload flowlog-aggregator
sleep 1
check "systemctl reload re-reads the tokens file" \
    in_container bash -c 'journalctl -u flowlog-aggregator --no-pager | grep -q "reloaded the tokens file.*agents=2"'

# 4. Fleet mode: the agent ships to the aggregator.
in_container bash -c 'cat >/etc/flowlog/agent.toml <<EOF
[flow_log]
id = "fl-0123456789abcdef0"
account_id = "123456789012"
region = "us-east-1"
[aggregator]
endpoints = ["https://localhost:7443"]
ca_file = "/etc/flowlog/tls/ca.pem"
agent_id = "web-01"
token_file = "/etc/flowlog/agent.token"
[spool]
dir = "/var/lib/flowlog-agent/spool"
EOF'
in_container systemctl start flowlog-agent
sleep 2
send_traffic
sleep 1
in_container systemctl stop flowlog-agent
check "the fleet agent's records were all acknowledged" \
    in_container bash -c 'journalctl -u flowlog-agent --no-pager | grep -q "every spooled record is acknowledged"'
in_container systemctl stop flowlog-aggregator
check "the aggregator published them under /var/lib/flowlog-aggregator/flowlogs" \
    in_container bash -c 'find /var/lib/flowlog-aggregator/flowlogs -name "*.log.gz" | xargs -r zcat | grep -q " 9999 17 "'


# 5. Life cycle with both services enabled and running.
in_container systemctl enable --now flowlog-aggregator flowlog-agent 2>/dev/null
sleep 2
check "both services enabled and running" \
    in_container bash -c 'systemctl is-enabled -q flowlog-agent flowlog-aggregator \
        && systemctl is-active -q flowlog-agent flowlog-aggregator'
main_pid() { in_container systemctl show -p MainPID --value "$1"; }
agent_pid="$(main_pid flowlog-agent)"
aggregator_pid="$(main_pid flowlog-aggregator)"
in_container dpkg -i /root/"$(basename "${debs[0]}")" /root/"$(basename "${debs[1]}")" >/dev/null
sleep 2
check "reinstalling restarts the running services (try-restart)" \
    bash -c "[[ '$(main_pid flowlog-agent)' != '$agent_pid' \
        && '$(main_pid flowlog-aggregator)' != '$aggregator_pid' ]] \
        && nsenter -t $init -a systemctl is-active -q flowlog-agent flowlog-aggregator"
check "... and keeps them enabled" \
    in_container systemctl is-enabled -q flowlog-agent flowlog-aggregator
in_container dpkg -r flowlog-agent flowlog-aggregator >/dev/null
check "dpkg -r stops both services: no flowlog process is left" \
    bash -c "! nsenter -t $init -a pgrep -u flowlog >/dev/null \
        && ! nsenter -t $init -a systemctl is-active -q flowlog-agent flowlog-aggregator"
check "... the state and the user stay until purge" \
    in_container bash -c 'getent passwd flowlog >/dev/null && [[ -d /var/lib/flowlog-agent ]]'
in_container rm -rf /etc/flowlog/tls /etc/flowlog/tokens /etc/flowlog/agent.token
in_container dpkg --purge flowlog-agent flowlog-aggregator >/dev/null
check "dpkg --purge removes the configs, the state, the user, the group and the enablement links" \
    in_container bash -c '! getent passwd flowlog && ! getent group flowlog \
        && [[ ! -e /etc/flowlog && ! -e /var/lib/flowlog-agent && ! -e /var/lib/flowlog-aggregator ]] \
        && [[ -z "$(find /etc/systemd/system -name "flowlog-*")" ]]'

echo "systemd check: $passed passed, 0 failed"
