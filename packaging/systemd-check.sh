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
#      them, `dpkg -r` stops them, `dpkg --purge` removes the state and the users;
#   6. the upgrade from the packages that shared one "flowlog" user (built by test.sh into
#      target/packaging/previous/), with both services running: they end up running as
#      flowlog-agent and flowlog-aggregator, with their state and secrets, and deliver.
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
previous=("$repo/target/packaging/previous/flowlog-agent_${version}-0.deb"
    "$repo/target/packaging/previous/flowlog-aggregator_${version}-0.deb")
for deb in "${debs[@]}" "${previous[@]}"; do
    [[ -s "$deb" ]] || { echo "FAIL: $deb is missing; run packaging/test.sh" >&2; exit 1; }
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
cp "${debs[@]}" "${previous[@]}" "$root/root/"
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
# secrets AGGREGATOR_GROUP AGENT_GROUP TLS_DIR_GROUP TLS_DIR_MODE: a test CA, the server's
# certificate and key (0640 root:AGGREGATOR_GROUP) in /etc/flowlog/tls, the tokens file
# (likewise) and the agent's token (0640 root:AGENT_GROUP).
secrets() {
    in_container bash -c '
    set -e
    install -d -m "$4" -g "$3" /etc/flowlog/tls
    cd /etc/flowlog/tls
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
        -keyout server.key -out server.csr 2>/dev/null
    printf "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n" >ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile ext.cnf -out server.pem 2>/dev/null
    chgrp "$1" server.key && chmod 0640 server.key && chmod 0644 ca.pem server.pem
    token="$(openssl rand -hex 16)"
    echo "web-01 $token" >/etc/flowlog/tokens
    echo "$token" >/etc/flowlog/agent.token
    chgrp "$1" /etc/flowlog/tokens
    chgrp "$2" /etc/flowlog/agent.token
    chmod 0640 /etc/flowlog/tokens /etc/flowlog/agent.token' secrets "$@"
}
secrets flowlog-aggregator flowlog-agent root 0755
in_container systemctl start flowlog-aggregator
sleep 2
check "flowlog-aggregator runs (TLS, no capabilities, PrivateUsers)" \
    in_container systemctl is-active -q flowlog-aggregator
# service_user UNIT: the user the unit's main process runs as.
service_user() { in_container ps -o user= -p "$(in_container systemctl show -p MainPID --value "$1")"; }
check "... as the user flowlog-aggregator" test "$(service_user flowlog-aggregator)" == flowlog-aggregator
check "... with MemoryMax=4G and TasksMax=1024" \
    bash -c "[[ '$(in_container systemctl show -p MemoryMax --value flowlog-aggregator)' == 4294967296 \
        && '$(in_container systemctl show -p TasksMax --value flowlog-aggregator)' == 1024 ]]"
in_container bash -c 'echo "web-02 $(openssl rand -hex 16)" >>/etc/flowlog/tokens'
in_container systemctl reload flowlog-aggregator
sleep 1
check "systemctl reload re-reads the tokens file" \
    in_container bash -c 'journalctl -u flowlog-aggregator --no-pager | grep -q "reloaded the tokens file.*agents=2"'

# 4. Fleet mode: the agent ships to the aggregator.
fleet_config() {
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
}
fleet_config
in_container systemctl start flowlog-agent
sleep 2
check "the fleet agent runs as the user flowlog-agent, with TasksMax=512" \
    bash -c "[[ '$(service_user flowlog-agent)' == flowlog-agent \
        && '$(in_container systemctl show -p TasksMax --value flowlog-agent)' == 512 ]]"
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
    bash -c "! nsenter -t $init -a pgrep -u flowlog-agent,flowlog-aggregator >/dev/null \
        && ! nsenter -t $init -a systemctl is-active -q flowlog-agent flowlog-aggregator"
check "... the state and the users stay until purge" \
    in_container bash -c 'getent passwd flowlog-agent >/dev/null && getent passwd flowlog-aggregator >/dev/null \
        && [[ -d /var/lib/flowlog-agent ]]'
in_container rm -rf /etc/flowlog/tls /etc/flowlog/tokens /etc/flowlog/agent.token
in_container dpkg --purge flowlog-agent flowlog-aggregator >/dev/null
# purged: no user, group, config, state or enablement link of the packages is left.
purged() {
    in_container bash -c 'for a in flowlog flowlog-agent flowlog-aggregator; do
            ! getent passwd "$a" && ! getent group "$a" || exit 1
        done >/dev/null
        [[ ! -e /etc/flowlog && ! -e /var/lib/flowlog-agent && ! -e /var/lib/flowlog-aggregator ]] \
        && [[ -z "$(find /etc/systemd/system -name "flowlog-*")" ]]'
}
check "dpkg --purge removes the configs, the state, the users, the groups and the enablement links" purged

# 6. Upgrade from the packages that shared the "flowlog" user, both services running, with
# the secrets as those packages' README said (0640 root:flowlog, /etc/flowlog/tls 0750
# root:flowlog).
in_container dpkg -i /root/"$(basename "${previous[0]}")" /root/"$(basename "${previous[1]}")" >/dev/null
secrets flowlog flowlog flowlog 0750
fleet_config
in_container systemctl enable --now flowlog-aggregator 2>/dev/null
sleep 2
in_container systemctl enable --now flowlog-agent 2>/dev/null
sleep 2
check "shared-user packages: both services run as flowlog" \
    bash -c "[[ '$(service_user flowlog-agent)' == flowlog && '$(service_user flowlog-aggregator)' == flowlog ]]"
send_traffic
sleep 1
agent_pid="$(main_pid flowlog-agent)"
aggregator_pid="$(main_pid flowlog-aggregator)"
in_container dpkg -i /root/"$(basename "${debs[0]}")" /root/"$(basename "${debs[1]}")" >/dev/null
sleep 3
check "upgrade: both services restarted and running" \
    bash -c "[[ '$(main_pid flowlog-agent)' != '$agent_pid' \
        && '$(main_pid flowlog-aggregator)' != '$aggregator_pid' ]] \
        && nsenter -t $init -a systemctl is-active -q flowlog-agent flowlog-aggregator"
check "upgrade: they run as flowlog-agent and flowlog-aggregator" \
    bash -c "[[ '$(service_user flowlog-agent)' == flowlog-agent \
        && '$(service_user flowlog-aggregator)' == flowlog-aggregator ]]"
check "upgrade: the state directories and every file in them belong to the new users" \
    in_container bash -c '[[ -z "$(find /var/lib/flowlog-agent ! -user flowlog-agent -o ! -group flowlog-agent)" \
        && -z "$(find /var/lib/flowlog-aggregator ! -user flowlog-aggregator -o ! -group flowlog-aggregator)" ]]'
check "upgrade: the secrets are the new groups' (tokens and key: flowlog-aggregator; token: flowlog-agent)" \
    in_container bash -c '[[ "$(stat -c "%a %U:%G" /etc/flowlog/tokens /etc/flowlog/tls/server.key /etc/flowlog/agent.token /etc/flowlog/tls | tr "\n" " ")" \
        == "640 root:flowlog-aggregator 640 root:flowlog-aggregator 640 root:flowlog-agent 755 root:root " ]]'
check "upgrade: the agent's user cannot read the aggregator's tokens, key or WAL" \
    in_container bash -c '! runuser -u flowlog-agent -- cat /etc/flowlog/tokens 2>/dev/null \
        && ! runuser -u flowlog-agent -- cat /etc/flowlog/tls/server.key 2>/dev/null \
        && ! runuser -u flowlog-agent -- ls /var/lib/flowlog-aggregator 2>/dev/null'
send_traffic
sleep 1
in_container systemctl stop flowlog-agent
check "upgrade: the agent delivers everything (records from before the upgrade too)" \
    in_container bash -c 'journalctl -u flowlog-agent --no-pager -n 20 | grep -q "every spooled record is acknowledged"'
in_container systemctl stop flowlog-aggregator
check "upgrade: the aggregator published them" \
    in_container bash -c 'find /var/lib/flowlog-aggregator/flowlogs -name "*.log.gz" | xargs -r zcat | grep -q " 9999 17 "'
in_container rm -rf /etc/flowlog/tls /etc/flowlog/tokens /etc/flowlog/agent.token
in_container dpkg --purge flowlog-agent flowlog-aggregator >/dev/null
check "purge after the upgrade: no user (flowlog included), group, config, state or link is left" purged

echo "systemd check: $passed passed, 0 failed"
