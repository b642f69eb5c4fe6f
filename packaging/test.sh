#!/usr/bin/env bash
# Packaging test: builds the four packages (packaging/build.sh) and checks them for real.
#
#   .deb  installed on this machine with dpkg (it must be a throw-away machine: the test
#         installs, upgrades, removes and purges flowlog-agent and flowlog-aggregator and
#         creates and deletes their users): files, modes, users, conffiles, the
#         binaries as the service users with the unit's capabilities, each service's
#         secrets and state out of the other's reach, an edited config and state across a
#         reinstall and an upgrade, the upgrade from the packages that shared one
#         "flowlog" user, systemd-analyze verify/security, removal, purge; lintian.
#   .rpm  queried with rpm (files, %config(noreplace), scriptlets) and installed,
#         upgraded and erased in a scratch root (--noscripts: the scriptlets need
#         useradd/systemctl inside that root); rpmlint.
#   systemd  the services run by a real systemd in a container (systemd-check.sh).
#
# Needs root (CI runs as root) and dpkg; installs rpm, lintian, rpmlint and the other tools
# it uses with apt-get when missing. Under CI=true a missing capability fails the test.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
started=$SECONDS

passed=0
ok() {
    passed=$((passed + 1))
    echo "ok: $*"
}
fail() {
    echo "FAIL: $*" >&2
    echo "packaging: $passed passed, 1 failed" >&2
    exit 1
}
# Any other command that fails ends the test too (set -e); say which.
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR
# check DESCRIPTION COMMAND...: the command must succeed.
check() {
    local description="$1"
    shift
    if "$@"; then ok "$description"; else fail "$description"; fi
}

if [[ $(id -u) -ne 0 ]] || ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
    if [[ "${CI:-}" == "true" ]]; then
        fail "the packaging test needs root and a Debian system (dpkg, apt-get)"
    fi
    echo "SKIP: the packaging test needs root and a Debian system (dpkg, apt-get)" >&2
    exit 0
fi

# --- tools ---------------------------------------------------------------------------------

missing=()
command -v rpm >/dev/null || missing+=(rpm)
command -v lintian >/dev/null || missing+=(lintian)
command -v rpmlint >/dev/null || missing+=(rpmlint)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v man >/dev/null || missing+=(man-db)
command -v openssl >/dev/null || missing+=(openssl)
command -v ip >/dev/null || missing+=(iproute2)
command -v setpriv >/dev/null || missing+=(util-linux)
command -v adduser >/dev/null || missing+=(adduser)
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- cleanup -------------------------------------------------------------------------------

tmp="$(mktemp -d)"
netns="flowlog-pkg-$$"
purge_all() {
    local installed=()
    for p in flowlog-agent flowlog-aggregator; do
        if dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qv '^not-installed$'; then
            installed+=("$p")
        fi
    done
    if [[ ${#installed[@]} -gt 0 ]]; then
        dpkg --purge "${installed[@]}" >/dev/null 2>&1 || true
    fi
}
cleanup() {
    ip netns del "$netns" 2>/dev/null || true
    rm -f /etc/flowlog/tokens /etc/flowlog/agent.token
    rm -rf /etc/flowlog/tls
    purge_all
    rm -rf "$tmp"
}
# Users and groups of the packages: their own, and the one older packages shared.
accounts=(flowlog-agent flowlog-aggregator flowlog)
trap cleanup EXIT

# A machine left over from an interrupted run: start from a clean state.
purge_all
for account in "${accounts[@]}"; do
    if getent passwd "$account" >/dev/null || getent group "$account" >/dev/null; then
        fail "this machine has a $account user or group that no package owns; remove it first"
    fi
done
if [[ -e /var/lib/flowlog-agent || -e /var/lib/flowlog-aggregator || -e /etc/flowlog ]]; then
    fail "this machine has flowlog files that no package owns; remove them first"
fi

# --- build ---------------------------------------------------------------------------------

build_started=$SECONDS
bash packaging/build.sh
echo "build.sh: $((SECONDS - build_started)) s"

version="$(sed -n '/^\[workspace\.package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' Cargo.toml)"
deb_arch="$(dpkg --print-architecture)"
rpm_arch="$(uname -m)"
out="$repo/target/packages"
agent_deb="$out/flowlog-agent_${version}-1_${deb_arch}.deb"
aggregator_deb="$out/flowlog-aggregator_${version}-1_${deb_arch}.deb"
agent_rpm="$out/flowlog-agent-${version}-1.${rpm_arch}.rpm"
aggregator_rpm="$out/flowlog-aggregator-${version}-1.${rpm_arch}.rpm"
for file in "$agent_deb" "$aggregator_deb" "$agent_rpm" "$aggregator_rpm"; do
    check "package $(basename "$file") exists (version $version)" test -s "$file"
done
check "target/packages holds exactly the 4 packages" \
    test "$(find "$out" -maxdepth 1 -type f | wc -l)" -eq 4

# --- .deb: metadata ------------------------------------------------------------------------

for deb in "$agent_deb" "$aggregator_deb"; do
    name="$(dpkg-deb -f "$deb" Package)"
    check "$name: Version is $version-1" test "$(dpkg-deb -f "$deb" Version)" == "$version-1"
    depends="$(dpkg-deb -f "$deb" Depends)"
    check "$name: Depends on libc6 and adduser ($depends)" \
        bash -c "grep -Eq '(^|, )libc6( |,|\$)' <<<'$depends' && grep -Eq '(^|, )adduser(,|\$)' <<<'$depends'"
    dpkg-deb -e "$deb" "$tmp/control-$name"
    # The "don't enable" fragment enables a unit only if the admin had enabled it before.
    check "$name: postinst creates the user and neither enables nor starts the unit" \
        bash -c "grep -q 'adduser --system' '$tmp/control-$name/postinst' \
            && grep -q 'deb-systemd-helper debian-installed' '$tmp/control-$name/postinst' \
            && ! grep -Eq 'was-enabled defaults to true|deb-systemd-invoke start|_dh_action=start' \
                '$tmp/control-$name/postinst'"
    dpkg-deb -x "$deb" "$tmp/data-$name"
    check "$name: DEBIAN/md5sums matches every file of the package but the conffile" \
        bash -c "cd '$tmp/data-$name' && md5sum -c --quiet '$tmp/control-$name/md5sums' \
            && [[ \$(wc -l <'$tmp/control-$name/md5sums') -eq \$(find . -type f | wc -l) - 1 ]] \
            && ! grep -q ' etc/' '$tmp/control-$name/md5sums'"
    check "$name: prerm stops the service on removal" \
        grep -q 'deb-systemd-invoke stop' "$tmp/control-$name/prerm"
    check "$name: postinst restarts on upgrade only if running (try-restart)" \
        grep -q 'deb-systemd-invoke try-restart' "$tmp/control-$name/postinst"
done

# --- .deb: install -------------------------------------------------------------------------

dpkg -i "$agent_deb" "$aggregator_deb" >"$tmp/install.log" 2>&1 \
    || { cat "$tmp/install.log"; fail "dpkg -i of both packages"; }
ok "dpkg -i of both packages"
check "postinst prints the enable hint" grep -q 'systemctl enable --now flowlog-agent' "$tmp/install.log"

# expect_file PATH MODE OWNER:GROUP
expect_file() {
    local path="$1" mode="$2" owner="$3" actual
    actual="$(stat -c '%a %U:%G' "$path" 2>/dev/null || echo missing)"
    check "$path is $mode $owner" test "$actual" == "$mode $owner"
}
expect_file /usr/bin/flowlog-agent 755 root:root
expect_file /usr/bin/flowlog-aggregator 755 root:root
expect_file /etc/flowlog 755 root:root
expect_file /etc/flowlog/agent.toml 644 root:root
expect_file /etc/flowlog/aggregator.toml 644 root:root
expect_file /usr/lib/systemd/system/flowlog-agent.service 644 root:root
expect_file /usr/lib/systemd/system/flowlog-aggregator.service 644 root:root
expect_file /usr/share/man/man1/flowlog-agent.1.gz 644 root:root
expect_file /usr/share/man/man1/flowlog-aggregator.1.gz 644 root:root
expect_file /var/lib/flowlog-agent 750 flowlog-agent:flowlog-agent
expect_file /var/lib/flowlog-aggregator 750 flowlog-aggregator:flowlog-aggregator
for doc in README.md LICENSE copyright changelog.Debian.gz agent.md agent-firewall.md \
    agent-metadata.md configuration.md delivery.md examples/firewall.conf; do
    expect_file "/usr/share/doc/flowlog-agent/$doc" 644 root:root
done
for doc in README.md LICENSE copyright changelog.Debian.gz configuration.md delivery.md athena.md; do
    expect_file "/usr/share/doc/flowlog-aggregator/$doc" 644 root:root
done
check "no tokens file, agent token or TLS material is shipped" \
    bash -c '! dpkg -S /etc/flowlog/tokens /etc/flowlog/agent.token /etc/flowlog/tls >/dev/null 2>&1 \
        && [[ ! -e /etc/flowlog/tokens && ! -e /etc/flowlog/tls ]]'
check "the man pages render (flowlog-agent(1) shows --check-config)" \
    bash -c "MANWIDTH=100 man -l /usr/share/man/man1/flowlog-agent.1.gz 2>&1 | grep -q -- '--check-config'"
check "flowlog-aggregator(1) documents the serve subcommand" \
    bash -c "MANWIDTH=100 man -l /usr/share/man/man1/flowlog-aggregator.1.gz 2>&1 \
        | grep -q 'flowlog-aggregator serve'"

# The service users: one per package, neither in the other's group, no shared user.
for account in flowlog-agent flowlog-aggregator; do
    passwd_entry="$(getent passwd "$account" || true)"
    check "user $account exists ($passwd_entry)" test -n "$passwd_entry"
    IFS=: read -r _ _ account_uid account_gid _ account_home account_shell <<<"$passwd_entry"
    check "$account is a system user (uid $account_uid < 1000)" test "$account_uid" -lt 1000
    check "$account has no login shell ($account_shell)" test "$account_shell" == /usr/sbin/nologin
    check "$account's home is /nonexistent and does not exist" \
        bash -c "[[ '$account_home' == /nonexistent && ! -e /nonexistent ]]"
    check "group $account is the user's primary group" \
        test "$(getent group "$account" | cut -d: -f3)" == "$account_gid"
    check "$account is in no other group ($(id -Gn "$account"))" test "$(id -Gn "$account")" == "$account"
done
check "the users differ (uids $(id -u flowlog-agent), $(id -u flowlog-aggregator))" \
    test "$(id -u flowlog-agent)" != "$(id -u flowlog-aggregator)"
check "no shared flowlog user or group is created" \
    bash -c '! getent passwd flowlog && ! getent group flowlog'

# Conffiles.
check "dpkg lists /etc/flowlog/agent.toml as a conffile" \
    bash -c "dpkg-query -W -f='\${Conffiles}' flowlog-agent | grep -q ' /etc/flowlog/agent.toml '"
check "dpkg lists /etc/flowlog/aggregator.toml as a conffile" \
    bash -c "dpkg-query -W -f='\${Conffiles}' flowlog-aggregator | grep -q ' /etc/flowlog/aggregator.toml '"

# dpkg --verify checks the installed files against DEBIAN/md5sums: clean now, and a changed
# file is reported (the reinstall below restores it).
check "dpkg --verify: the installed files match the packages" \
    test -z "$(dpkg --verify flowlog-agent flowlog-aggregator)"
echo tampered >>/usr/share/doc/flowlog-agent/README.md
check "dpkg --verify reports a changed file" \
    bash -c "dpkg --verify flowlog-agent | grep -q '^..5.* /usr/share/doc/flowlog-agent/README.md\$'"

# Not enabled, not started.
check "the units are not enabled on install" \
    bash -c '[[ ! -e /etc/systemd/system/multi-user.target.wants/flowlog-agent.service
        && ! -e /etc/systemd/system/multi-user.target.wants/flowlog-aggregator.service ]]'

# --- the binaries --------------------------------------------------------------------------

check "flowlog-agent --version prints $version" \
    test "$(flowlog-agent --version)" == "flowlog-agent $version"
check "flowlog-aggregator --version prints $version" \
    test "$(flowlog-aggregator --version)" == "flowlog-aggregator $version"
check "flowlog-agent --check-config accepts the shipped config" \
    flowlog-agent --config /etc/flowlog/agent.toml --check-config
check "... also as the flowlog-agent user (the service's ExecStartPre)" \
    runuser -u flowlog-agent -- flowlog-agent --config /etc/flowlog/agent.toml --check-config

# The aggregator's config names the TLS files and the tokens file, which the operator
# provides: without them check-config exits 64 naming them; with them (key and tokens 0640
# root:flowlog-aggregator, as README.md says) it passes as the flowlog-aggregator user.
status=0
flowlog-aggregator check-config --config /etc/flowlog/aggregator.toml 2>"$tmp/agg-check.txt" || status=$?
check "flowlog-aggregator check-config without TLS files and tokens exits 64" test "$status" -eq 64
check "... and names /etc/flowlog/tokens" grep -q '/etc/flowlog/tokens' "$tmp/agg-check.txt"
install -d -m 0755 /etc/flowlog/tls
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout /etc/flowlog/tls/server.key -out /etc/flowlog/tls/server.pem \
    2>/dev/null
agent_token="$(openssl rand -hex 16)"
printf 'web-01 %s\n' "$agent_token" >/etc/flowlog/tokens
chown root:flowlog-aggregator /etc/flowlog/tls/server.key /etc/flowlog/tokens
chmod 0640 /etc/flowlog/tls/server.key /etc/flowlog/tokens
chmod 0644 /etc/flowlog/tls/server.pem
check "flowlog-aggregator check-config passes as flowlog-aggregator once TLS files and tokens exist" \
    runuser -u flowlog-aggregator -- flowlog-aggregator check-config --config /etc/flowlog/aggregator.toml

# The agent's token (fleet mode), as README.md says: 0640 root:flowlog-agent. The agent
# accepts it without a warning; readable by every user, it warns naming the file.
install -m 0640 -o root -g flowlog-agent /dev/null /etc/flowlog/agent.token
echo "$agent_token" >/etc/flowlog/agent.token
cat >"$tmp/fleet.toml" <<'EOF'
[flow_log]
id = "fl-0123456789abcdef0"
account_id = "123456789012"
region = "us-east-1"
[aggregator]
endpoints = ["https://localhost:7443"]
agent_id = "web-01"
EOF
chmod 0644 "$tmp/fleet.toml"
chmod 0755 "$tmp"
runuser -u flowlog-agent -- flowlog-agent --config "$tmp/fleet.toml" --check-config 2>"$tmp/fleet-check.txt"
check "fleet agent: check-config as flowlog-agent reads the 0640 token, no warning" \
    bash -c "! grep -q warning '$tmp/fleet-check.txt'"
chmod 0644 /etc/flowlog/agent.token
runuser -u flowlog-agent -- flowlog-agent --config "$tmp/fleet.toml" --check-config 2>"$tmp/fleet-check.txt"
check "fleet agent: a token file every user can read gets a warning with chmod 600" \
    grep -q 'warning: token file /etc/flowlog/agent.token is readable by every user (mode 0644); run chmod 600' \
    "$tmp/fleet-check.txt"
chmod 0640 /etc/flowlog/agent.token

# Each service's secrets and state are out of the other's reach: the agent parses hostile
# packets, and must not read the aggregator's tokens, key or WAL (nor the reverse).
echo marker >/var/lib/flowlog-aggregator/probe
chown flowlog-aggregator:flowlog-aggregator /var/lib/flowlog-aggregator/probe
echo marker >/var/lib/flowlog-agent/probe
chown flowlog-agent:flowlog-agent /var/lib/flowlog-agent/probe
# cannot_read USER PATH: USER cannot open PATH (a directory: cannot list it).
cannot_read() {
    if [[ -d "$2" ]]; then
        ! runuser -u "$1" -- ls "$2" >/dev/null 2>&1
    else
        ! runuser -u "$1" -- cat "$2" >/dev/null 2>&1
    fi
}
for secret in /etc/flowlog/tokens /etc/flowlog/tls/server.key /var/lib/flowlog-aggregator \
    /var/lib/flowlog-aggregator/probe; do
    check "flowlog-agent cannot read $secret" cannot_read flowlog-agent "$secret"
done
for secret in /etc/flowlog/agent.token /var/lib/flowlog-agent /var/lib/flowlog-agent/probe; do
    check "flowlog-aggregator cannot read $secret" cannot_read flowlog-aggregator "$secret"
done
rm /var/lib/flowlog-aggregator/probe /var/lib/flowlog-agent/probe

# The agent's privileges in the unit: the flowlog user with CAP_NET_RAW as its only
# (ambient and bounding) capability. Run it like that on a veth pair in a scratch network
# namespace, with promiscuous mode on: capture must start (and the interface's
# promiscuity count rise); without the capability it must refuse.
ip netns add "$netns"
ip -n "$netns" link add pkg0 type veth peer name pkg1
ip -n "$netns" link set pkg0 up
ip -n "$netns" link set pkg1 up
cat >"$tmp/capture.toml" <<'EOF'
[flow_log]
id = "fl-0123456789abcdef0"
account_id = "123456789012"
region = "us-east-1"
[[interface]]
name = "pkg0"
[capture]
promiscuous = true
EOF
chmod 0644 "$tmp/capture.toml"
as_service=(setpriv --reuid=flowlog-agent --regid=flowlog-agent --init-groups --no-new-privs)
caps_net_raw=(--inh-caps=-all,+net_raw --ambient-caps=-all,+net_raw --bounding-set=-all,+net_raw)
caps_none=(--inh-caps=-all --ambient-caps=-all --bounding-set=-all)
agent=(/usr/bin/flowlog-agent --config "$tmp/capture.toml" --stdout)
ip netns exec "$netns" "${as_service[@]}" "${caps_net_raw[@]}" -- "${agent[@]}" \
    >"$tmp/capture.out" 2>"$tmp/capture.err" &
agent_pid=$!
promiscuity=0
for _ in $(seq 1 100); do
    promiscuity="$(ip -n "$netns" -d link show pkg0 | sed -n 's/.*promiscuity \([0-9]*\).*/\1/p')"
    [[ "$promiscuity" -gt 0 ]] && grep -q 'capture: started on pkg0' "$tmp/capture.err" && break
    sleep 0.1
done
kill -TERM "$agent_pid" 2>/dev/null || true
status=0
wait "$agent_pid" || status=$?
check "agent as flowlog-agent with CAP_NET_RAW only: capture starts in promiscuous mode" \
    bash -c "[[ '$promiscuity' -gt 0 ]] && grep -q 'capture: started on pkg0' '$tmp/capture.err'"
check "... and exits 0 on SIGTERM (status $status)" test "$status" -eq 0
status=0
timeout 20 ip netns exec "$netns" "${as_service[@]}" "${caps_none[@]}" -- "${agent[@]}" \
    >/dev/null 2>"$tmp/nocap.err" || status=$?
check "agent as flowlog-agent without CAP_NET_RAW refuses to capture (status $status)" \
    bash -c "[[ $status -ne 0 && $status -ne 124 ]] && grep -q 'CAP_NET_RAW' '$tmp/nocap.err'"
ip netns del "$netns"

# --- systemd -------------------------------------------------------------------------------

check "systemd-analyze verify passes on the installed units" \
    systemd-analyze verify /usr/lib/systemd/system/flowlog-agent.service \
    /usr/lib/systemd/system/flowlog-aggregator.service
check "flowlog-aggregator.service caps memory and tasks (MemoryMax=4G, TasksMax=1024)" \
    bash -c "grep -qx 'MemoryMax=4G' /usr/lib/systemd/system/flowlog-aggregator.service \
        && grep -qx 'TasksMax=1024' /usr/lib/systemd/system/flowlog-aggregator.service"
check "flowlog-agent.service caps tasks (TasksMax=512)" \
    grep -qx 'TasksMax=512' /usr/lib/systemd/system/flowlog-agent.service
for unit in flowlog-agent flowlog-aggregator; do
    check "$unit.service runs as User=$unit, Group=$unit" \
        bash -c "grep -qx 'User=$unit' /usr/lib/systemd/system/$unit.service \
            && grep -qx 'Group=$unit' /usr/lib/systemd/system/$unit.service"
done
for unit in flowlog-agent flowlog-aggregator; do
    score="$(systemd-analyze security --offline=yes "/usr/lib/systemd/system/$unit.service" \
        2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')"
    check "systemd-analyze security: $unit exposure $score (at most 2.5)" \
        awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.5) }'
done

# --- .deb: reinstall and upgrade keep edited configs and state ------------------------------

sed -i 's/^log_level = "info"/log_level = "debug"/' /etc/flowlog/agent.toml
echo '# edited by the operator' >>/etc/flowlog/aggregator.toml
echo marker >/var/lib/flowlog-agent/marker
echo marker >/var/lib/flowlog-aggregator/marker
edited_sums="$(md5sum /etc/flowlog/agent.toml /etc/flowlog/aggregator.toml)"
edits_kept() {
    [[ "$(md5sum /etc/flowlog/agent.toml /etc/flowlog/aggregator.toml)" == "$edited_sums" \
        && -f /var/lib/flowlog-agent/marker && -f /var/lib/flowlog-aggregator/marker ]] \
        && ! ls /etc/flowlog/*.dpkg-* >/dev/null 2>&1
}
dpkg -i "$agent_deb" "$aggregator_deb" </dev/null >"$tmp/reinstall.log" 2>&1 \
    || { cat "$tmp/reinstall.log"; fail "dpkg -i again (reinstall)"; }
check "reinstall keeps the edited configs and the state" edits_kept
check "reinstall restores the changed file (dpkg --verify: only the edited conffiles)" \
    test "$(dpkg --verify flowlog-agent flowlog-aggregator | awk '{print $2, $3}' | sort | tr '\n' ' ')" \
        == "c /etc/flowlog/agent.toml c /etc/flowlog/aggregator.toml "
for package in flowlog-agent flowlog-aggregator; do
    cargo deb --quiet --no-build --profile dist -p "$package" --deb-version "$version-2" \
        --output "$tmp/upgrade/" >/dev/null
done
dpkg -i "$tmp"/upgrade/*.deb </dev/null >"$tmp/upgrade.log" 2>&1 \
    || { cat "$tmp/upgrade.log"; fail "dpkg -i of version $version-2 (upgrade)"; }
check "upgrade to $version-2 installed" \
    test "$(dpkg-query -W -f='${Version}' flowlog-agent)" == "$version-2"
check "upgrade keeps the edited configs and the state" edits_kept
check "upgrade does not print the first-install hint again" \
    bash -c "! grep -q 'not enabled or started' '$tmp/upgrade.log'"
check "flowlog-agent still accepts the edited config after the upgrade" \
    flowlog-agent --config /etc/flowlog/agent.toml --check-config

# --- .deb: remove and purge ----------------------------------------------------------------

rm -rf /etc/flowlog/tls /etc/flowlog/tokens /etc/flowlog/agent.token
dpkg -r flowlog-agent >/dev/null
check "remove: flowlog-agent is in state config-files" \
    test "$(dpkg-query -W -f='${db:Status-Status}' flowlog-agent)" == config-files
check "remove: the binary and the unit are gone" \
    bash -c '[[ ! -e /usr/bin/flowlog-agent && ! -e /usr/lib/systemd/system/flowlog-agent.service ]]'
check "remove: the config, the state and the user stay" \
    bash -c '[[ -f /etc/flowlog/agent.toml && -f /var/lib/flowlog-agent/marker ]] && getent passwd flowlog-agent >/dev/null'
dpkg --purge flowlog-agent >/dev/null
check "purge flowlog-agent: its config and state are gone" \
    bash -c '[[ ! -e /etc/flowlog/agent.toml && ! -e /var/lib/flowlog-agent ]]'
check "purge flowlog-agent: its user and group are gone" \
    bash -c '! getent passwd flowlog-agent && ! getent group flowlog-agent'
check "purge flowlog-agent: the aggregator's user and state stay" \
    bash -c 'getent passwd flowlog-aggregator >/dev/null && [[ -f /var/lib/flowlog-aggregator/marker ]]'
dpkg --purge flowlog-aggregator >/dev/null
check "purge: no flowlog package is known to dpkg" \
    bash -c '! dpkg-query -W "flowlog-*" >/dev/null 2>&1 || [[ -z "$(dpkg-query -W -f="\${db:Status-Status}\n" "flowlog-*" | grep -v "^not-installed$")" ]]'
# no_accounts_left: none of the packages' users or groups exists.
no_accounts_left() {
    local account
    for account in "${accounts[@]}"; do
        if getent passwd "$account" >/dev/null || getent group "$account" >/dev/null; then
            return 1
        fi
    done
}
check "purge: no user or group ${accounts[*]}" no_accounts_left
# no_files_left: nothing named *flowlog* under /etc, /usr, /var/lib, /run.
no_files_left() {
    leftovers="$(find /etc /usr /var/lib /run -path /proc -prune -o -name '*flowlog*' -print 2>/dev/null \
        | grep -v "^$repo" | grep -v '^/var/lib/dpkg/' || true)"
    [[ -z "$leftovers" ]] || { echo "left: $leftovers" >&2; return 1; }
}
check "purge: no flowlog file is left on the system" no_files_left

# --- .deb: upgrade from the packages that shared one "flowlog" user --------------------------

# The previous packages, $version-0: the same files, but the units run as the shared user
# "flowlog" and the maintainer scripts are the previous ones (packaging/test/shared-user/,
# with the systemd part cargo-deb generates for #DEBHELPER#, taken from the new scripts).
previous="$tmp/previous"
mkdir -p "$previous"
for deb in "$agent_deb" "$aggregator_deb"; do
    name="$(dpkg-deb -f "$deb" Package)"
    dir="$previous/$name"
    dpkg-deb -R "$deb" "$dir"
    for script in postinst postrm; do
        source="packaging/deb/$name/$script"
        built="$dir/DEBIAN/$script"
        at="$(sed -n '/^#DEBHELPER#$/=' "$source")"
        after=$(($(wc -l <"$source") - at))
        sed -n "${at},$(($(wc -l <"$built") - after))p" "$built" >"$previous/$name.$script.generated"
        sed -e "/^#DEBHELPER#\$/{r $previous/$name.$script.generated" -e 'd;}' \
            "packaging/test/shared-user/$name/$script" >"$built"
    done
    sed -i 's/^User=.*/User=flowlog/; s/^Group=.*/Group=flowlog/' \
        "$dir/usr/lib/systemd/system/$name.service"
    sed -i "s/^Version: .*/Version: $version-0/" "$dir/DEBIAN/control"
    rm -f "$dir/DEBIAN/md5sums"
    dpkg-deb --root-owner-group -Zxz --build "$dir" "$previous/${name}_$version-0.deb" >/dev/null
done
# systemd-check.sh runs the same upgrade with the services running.
rm -rf "$repo/target/packaging/previous"
mkdir -p "$repo/target/packaging/previous"
cp "$previous"/*.deb "$repo/target/packaging/previous/"

dpkg -i "$previous"/*.deb </dev/null >"$tmp/previous.log" 2>&1 \
    || { cat "$tmp/previous.log"; fail "dpkg -i of the shared-user packages ($version-0)"; }
check "the shared-user packages create the user flowlog and own their state with it" \
    bash -c 'getent passwd flowlog >/dev/null \
        && [[ "$(stat -c %U:%G /var/lib/flowlog-agent /var/lib/flowlog-aggregator | sort -u)" == flowlog:flowlog ]]'
# What an operator had, as the previous README said: secrets 0640 root:flowlog in a 0750
# root:flowlog /etc/flowlog/tls; state written by the services.
install -d -m 0750 -o root -g flowlog /etc/flowlog/tls
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout /etc/flowlog/tls/server.key -out /etc/flowlog/tls/server.pem \
    2>/dev/null
printf 'web-01 %s\n' "$agent_token" >/etc/flowlog/tokens
echo "$agent_token" >/etc/flowlog/agent.token
chown root:flowlog /etc/flowlog/tls/server.key /etc/flowlog/tokens /etc/flowlog/agent.token
chmod 0640 /etc/flowlog/tls/server.key /etc/flowlog/tokens /etc/flowlog/agent.token
chmod 0644 /etc/flowlog/tls/server.pem
for dir in /var/lib/flowlog-agent/spool /var/lib/flowlog-aggregator/state; do
    install -d -m 0750 -o flowlog -g flowlog "$dir"
    echo data >"$dir/segment"
    chown flowlog:flowlog "$dir/segment"
    chmod 0640 "$dir/segment"
done
ln -s /etc/flowlog/aggregator.toml /var/lib/flowlog-aggregator/state/link
chown -h flowlog:flowlog /var/lib/flowlog-aggregator/state/link
state_sums="$(cat /var/lib/flowlog-agent/spool/segment /var/lib/flowlog-aggregator/state/segment | md5sum)"

dpkg -i "$agent_deb" "$aggregator_deb" </dev/null >"$tmp/from-shared.log" 2>&1 \
    || { cat "$tmp/from-shared.log"; fail "dpkg -i of $version-1 over the shared-user packages"; }
ok "upgrade from the shared-user packages ($version-0 to $version-1)"
# owned_by DIR USER: every file under DIR (DIR included) is owned by USER:USER.
owned_by() {
    [[ -z "$(find "$1" \( ! -user "$2" -o ! -group "$2" \) -print)" ]] \
        || { find "$1" \( ! -user "$2" -o ! -group "$2" \) -printf '%p %u:%g\n' >&2; return 1; }
}
check "upgrade: /var/lib/flowlog-agent and its files are owned by flowlog-agent" \
    owned_by /var/lib/flowlog-agent flowlog-agent
check "upgrade: /var/lib/flowlog-aggregator and its files are owned by flowlog-aggregator" \
    owned_by /var/lib/flowlog-aggregator flowlog-aggregator
check "upgrade: the state is kept" \
    test "$(cat /var/lib/flowlog-agent/spool/segment /var/lib/flowlog-aggregator/state/segment | md5sum)" \
        == "$state_sums"
check "upgrade: a symbolic link's target is not chowned (/etc/flowlog/aggregator.toml stays root)" \
    test "$(stat -c %U:%G /etc/flowlog/aggregator.toml)" == root:root
expect_file /etc/flowlog/tokens 640 root:flowlog-aggregator
expect_file /etc/flowlog/tls/server.key 640 root:flowlog-aggregator
expect_file /etc/flowlog/agent.token 640 root:flowlog-agent
expect_file /etc/flowlog/tls 755 root:root
for secret in /etc/flowlog/tokens /etc/flowlog/tls/server.key /var/lib/flowlog-aggregator/state/segment; do
    check "upgrade: flowlog-agent cannot read $secret" cannot_read flowlog-agent "$secret"
done
check "upgrade: flowlog-aggregator cannot read /etc/flowlog/agent.token" \
    cannot_read flowlog-aggregator /etc/flowlog/agent.token
check "upgrade: flowlog-aggregator check-config passes as flowlog-aggregator (reads key and tokens)" \
    runuser -u flowlog-aggregator -- flowlog-aggregator check-config --config /etc/flowlog/aggregator.toml
runuser -u flowlog-agent -- flowlog-agent --config "$tmp/fleet.toml" --check-config 2>"$tmp/fleet-check.txt"
check "upgrade: the agent reads its token as flowlog-agent, without a warning" \
    bash -c "! grep -q warning '$tmp/fleet-check.txt'"
check "upgrade: the shared flowlog user stays while packages are installed" \
    bash -c 'getent passwd flowlog >/dev/null'
rm -rf /etc/flowlog/tls /etc/flowlog/tokens /etc/flowlog/agent.token
dpkg --purge flowlog-agent flowlog-aggregator >/dev/null
check "purge after the upgrade: no user or group ${accounts[*]}" no_accounts_left
check "purge after the upgrade: no flowlog file is left on the system" no_files_left

# --- .rpm ----------------------------------------------------------------------------------

for rpm_file in "$agent_rpm" "$aggregator_rpm"; do
    name="$(rpm -qp --qf '%{NAME}' "$rpm_file" 2>/dev/null)"
    rpm -qip "$rpm_file" >"$tmp/$name.info" 2>/dev/null
    check "$name.rpm: rpm -qip shows Version $version, Release 1" \
        bash -c "grep -Eq '^Version +: $version\$' '$tmp/$name.info' && grep -Eq '^Release +: 1\$' '$tmp/$name.info'"
    case "$name" in
        flowlog-agent)
            config=/etc/flowlog/agent.toml
            docs="LICENSE README.md agent-firewall.md agent-metadata.md agent.md configuration.md delivery.md examples/firewall.conf"
            ;;
        *)
            config=/etc/flowlog/aggregator.toml
            docs="LICENSE README.md athena.md configuration.md delivery.md"
            ;;
    esac
    expected="$(
        {
            echo "/usr/bin/$name"
            echo "$config"
            echo "/usr/lib/systemd/system/$name.service"
            echo "/usr/share/man/man1/$name.1.gz"
            for doc in $docs; do echo "/usr/share/doc/$name/$doc"; done
        } | sort
    )"
    check "$name.rpm: rpm -qlp lists exactly the expected files" \
        test "$(rpm -qlp "$rpm_file" 2>/dev/null | sort)" == "$expected"
    check "$name.rpm: $config is the only %config file" \
        test "$(rpm -qp --configfiles "$rpm_file" 2>/dev/null)" == "$config"
    check "$name.rpm: $config is %config(noreplace) (file flags 'cn')" \
        bash -c "rpm -qp --qf '[%{FILENAMES} %{FILEFLAGS:fflags}\n]' '$rpm_file' 2>/dev/null \
            | grep -qx '$config cn'"
    check "$name.rpm: rpm -qp --dump marks $config as config, mode 0100644 root root" \
        bash -c "rpm -qp --dump '$rpm_file' 2>/dev/null \
            | awk '\$1 == \"$config\" && \$5 == \"0100644\" && \$6 == \"root\" && \$7 == \"root\" && \$8 == \"1\"' | grep -q ."
    rpm -qp --scripts "$rpm_file" >"$tmp/$name.scripts" 2>/dev/null
    check "$name.rpm: scriptlets create the user $name, stop on erase, try-restart on upgrade" \
        bash -c "grep -q 'useradd -r -g $name ' '$tmp/$name.scripts' \
            && grep -q 'chown -h \"\$user:\$user\"' '$tmp/$name.scripts' \
            && grep -q 'disable --now $name.service' '$tmp/$name.scripts' \
            && grep -q 'try-restart $name.service' '$tmp/$name.scripts'"
    for tag in PREIN POSTIN PREUN POSTUN POSTTRANS; do
        rpm -qp --qf "%{$tag}" "$rpm_file" >"$tmp/$name.$tag" 2>/dev/null
        check "$name.rpm: %{$tag} is valid sh" sh -n "$tmp/$name.$tag"
    done
    check "$name.rpm: requires shadow-utils" \
        bash -c "rpm -qp --requires '$rpm_file' 2>/dev/null | grep -q '^shadow-utils'"
done

# Scratch root: install, upgrade with an edited config, erase. Debian's rpm refuses to
# install without --force-debian; --nodeps because the root has no glibc or shadow-utils
# package; --noscripts because the root has no shell, useradd or systemctl to run them.
root="$tmp/rpmroot"
rpm_root() { rpm --root "$root" --dbpath /var/lib/rpm "$@"; }
mkdir -p "$root"
rpm_root --initdb
rpm_root -i --nodeps --noscripts --force-debian "$agent_rpm" "$aggregator_rpm"
check "rpm scratch root: both packages installed" \
    test "$(rpm_root -qa --qf '%{NAME}\n' | sort | tr '\n' ' ')" == "flowlog-agent flowlog-aggregator "
for name in flowlog-agent flowlog-aggregator; do
    check "rpm scratch root: every file of $name is in place (rpm -V)" rpm_root -V --nodeps "$name"
done
check "rpm scratch root: /usr/bin/flowlog-agent is 0755" \
    test "$(stat -c %a "$root/usr/bin/flowlog-agent")" == 755
check "rpm scratch root: the installed agent binary runs" \
    test "$("$root/usr/bin/flowlog-agent" --version)" == "flowlog-agent $version"
echo '# edited by the operator' >>"$root/etc/flowlog/agent.toml"
edited="$(md5sum <"$root/etc/flowlog/agent.toml")"
mkdir -p "$tmp/upgrade-rpm"
cargo generate-rpm --profile dist -p agent -s 'release = "2"' -o "$tmp/upgrade-rpm/" >/dev/null
rpm_root -U --nodeps --noscripts --force-debian "$tmp"/upgrade-rpm/*.rpm
check "rpm scratch root: upgrade to release 2 keeps the edited config" \
    bash -c "[[ '$(rpm_root -q --qf '%{RELEASE}' flowlog-agent)' == 2 \
        && '$(md5sum <"$root/etc/flowlog/agent.toml")' == '$edited' ]]"
rpm_root -e --nodeps --noscripts flowlog-agent flowlog-aggregator
check "rpm scratch root: erase removes the files and saves the edited config as .rpmsave" \
    bash -c "[[ ! -e '$root/usr/bin/flowlog-agent' && ! -e '$root/etc/flowlog/aggregator.toml' \
        && -f '$root/etc/flowlog/agent.toml.rpmsave' ]]"

# --- linters -------------------------------------------------------------------------------

lintian_started=$SECONDS
status=0
lintian --fail-on error,warning --display-info --allow-root "$agent_deb" "$aggregator_deb" >"$tmp/lintian.txt" 2>&1 || status=$?
sed 's/^/  lintian: /' "$tmp/lintian.txt"
check "lintian: no errors or warnings ($(grep -c '^[EW]: ' "$tmp/lintian.txt" || true) errors/warnings, $((SECONDS - lintian_started)) s)" \
    test "$status" -eq 0
status=0
rpmlint --config packaging/rpm/rpmlint.toml "$agent_rpm" "$aggregator_rpm" >"$tmp/rpmlint.txt" 2>&1 || status=$?
sed 's/^/  rpmlint: /' "$tmp/rpmlint.txt"
check "rpmlint: no errors ($(tail -n 1 "$tmp/rpmlint.txt"))" test "$status" -eq 0

# --- under systemd -------------------------------------------------------------------------

# The services themselves, run by a real systemd in a container booted from an overlay of
# this machine's root (nothing here changes): see systemd-check.sh.
systemd_started=$SECONDS
status=0
bash packaging/systemd-check.sh || status=$?
check "the services under systemd (systemd-check.sh, $((SECONDS - systemd_started)) s)" \
    test "$status" -eq 0

echo "packaging test: $((SECONDS - started)) s"
echo "packaging: $passed passed, 0 failed"
