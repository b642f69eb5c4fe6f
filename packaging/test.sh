#!/usr/bin/env bash
# Packaging test: builds the four packages (packaging/build.sh) and checks them for real.
#
#   .deb  installed on this machine with dpkg (it must be a throw-away machine: the test
#         installs, upgrades, removes and purges flowlog-agent and flowlog-aggregator and
#         creates and deletes the flowlog user): files, modes, user, conffiles, the
#         binaries as the service user with the unit's capabilities, an edited config and
#         state across a reinstall and an upgrade, systemd-analyze verify/security,
#         removal, purge; lintian.
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
trap cleanup EXIT

# A machine left over from an interrupted run: start from a clean state.
purge_all
if getent passwd flowlog >/dev/null || [[ -e /var/lib/flowlog-agent || -e /etc/flowlog ]]; then
    fail "this machine has a flowlog user or flowlog files that no package owns; remove them first"
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
expect_file /var/lib/flowlog-agent 750 flowlog:flowlog
expect_file /var/lib/flowlog-aggregator 750 flowlog:flowlog
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

# The service user.
passwd_entry="$(getent passwd flowlog || true)"
check "user flowlog exists ($passwd_entry)" test -n "$passwd_entry"
IFS=: read -r _ _ flowlog_uid flowlog_gid _ flowlog_home flowlog_shell <<<"$passwd_entry"
check "flowlog is a system user (uid $flowlog_uid < 1000)" test "$flowlog_uid" -lt 1000
check "flowlog has no login shell ($flowlog_shell)" test "$flowlog_shell" == /usr/sbin/nologin
check "flowlog's home is /nonexistent and does not exist" \
    bash -c "[[ '$flowlog_home' == /nonexistent && ! -e /nonexistent ]]"
check "group flowlog is the user's primary group" \
    test "$(getent group flowlog | cut -d: -f3)" == "$flowlog_gid"

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
check "... also as the flowlog user (the service's ExecStartPre)" \
    runuser -u flowlog -- flowlog-agent --config /etc/flowlog/agent.toml --check-config

# The aggregator's config names the TLS files and the tokens file, which the operator
# provides: without them check-config exits 64 naming them; with them (0640 root:flowlog,
# as README.md says) it passes as the flowlog user.
status=0
flowlog-aggregator check-config --config /etc/flowlog/aggregator.toml 2>"$tmp/agg-check.txt" || status=$?
check "flowlog-aggregator check-config without TLS files and tokens exits 64" test "$status" -eq 64
check "... and names /etc/flowlog/tokens" grep -q '/etc/flowlog/tokens' "$tmp/agg-check.txt"
install -d -m 0750 -o root -g flowlog /etc/flowlog/tls
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -keyout /etc/flowlog/tls/server.key -out /etc/flowlog/tls/server.pem \
    2>/dev/null
printf 'web-01 %s\n' "$(openssl rand -hex 16)" >/etc/flowlog/tokens
chown root:flowlog /etc/flowlog/tls/server.key /etc/flowlog/tokens
chmod 0640 /etc/flowlog/tls/server.key /etc/flowlog/tokens
check "flowlog-aggregator check-config passes as flowlog once TLS files and tokens exist" \
    runuser -u flowlog -- flowlog-aggregator check-config --config /etc/flowlog/aggregator.toml

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
chmod 0755 "$tmp"
as_service=(setpriv --reuid=flowlog --regid=flowlog --init-groups --no-new-privs)
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
check "agent as flowlog with CAP_NET_RAW only: capture starts in promiscuous mode" \
    bash -c "[[ '$promiscuity' -gt 0 ]] && grep -q 'capture: started on pkg0' '$tmp/capture.err'"
check "... and exits 0 on SIGTERM (status $status)" test "$status" -eq 0
status=0
timeout 20 ip netns exec "$netns" "${as_service[@]}" "${caps_none[@]}" -- "${agent[@]}" \
    >/dev/null 2>"$tmp/nocap.err" || status=$?
check "agent as flowlog without CAP_NET_RAW refuses to capture (status $status)" \
    bash -c "[[ $status -ne 0 && $status -ne 124 ]] && grep -q 'CAP_NET_RAW' '$tmp/nocap.err'"
ip netns del "$netns"

# --- systemd -------------------------------------------------------------------------------

check "systemd-analyze verify passes on the installed units" \
    systemd-analyze verify /usr/lib/systemd/system/flowlog-agent.service \
    /usr/lib/systemd/system/flowlog-aggregator.service
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

rm -rf /etc/flowlog/tls /etc/flowlog/tokens
dpkg -r flowlog-agent >/dev/null
check "remove: flowlog-agent is in state config-files" \
    test "$(dpkg-query -W -f='${db:Status-Status}' flowlog-agent)" == config-files
check "remove: the binary and the unit are gone" \
    bash -c '[[ ! -e /usr/bin/flowlog-agent && ! -e /usr/lib/systemd/system/flowlog-agent.service ]]'
check "remove: the config, the state and the user stay" \
    bash -c '[[ -f /etc/flowlog/agent.toml && -f /var/lib/flowlog-agent/marker ]] && getent passwd flowlog >/dev/null'
dpkg --purge flowlog-agent >/dev/null
check "purge flowlog-agent: its config and state are gone" \
    bash -c '[[ ! -e /etc/flowlog/agent.toml && ! -e /var/lib/flowlog-agent ]]'
check "purge flowlog-agent: the user stays while flowlog-aggregator is installed" \
    bash -c 'getent passwd flowlog >/dev/null && [[ -f /var/lib/flowlog-aggregator/marker ]]'
dpkg --purge flowlog-aggregator >/dev/null
check "purge: no flowlog package is known to dpkg" \
    bash -c '! dpkg-query -W "flowlog-*" >/dev/null 2>&1 || [[ -z "$(dpkg-query -W -f="\${db:Status-Status}\n" "flowlog-*" | grep -v "^not-installed$")" ]]'
check "purge: no user or group flowlog" \
    bash -c '! getent passwd flowlog && ! getent group flowlog'
leftovers="$(find /etc /usr /var/lib /run -path /proc -prune -o -name '*flowlog*' -print 2>/dev/null \
    | grep -v "^$repo" | grep -v '^/var/lib/dpkg/' || true)"
check "purge: no flowlog file is left on the system${leftovers:+ ($leftovers)}" test -z "$leftovers"

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
    check "$name.rpm: scriptlets create the user, stop on erase, try-restart on upgrade" \
        bash -c "grep -q 'useradd -r -g flowlog' '$tmp/$name.scripts' \
            && grep -q 'disable --now $name.service' '$tmp/$name.scripts' \
            && grep -q 'try-restart $name.service' '$tmp/$name.scripts'"
    for tag in PREIN POSTIN PREUN POSTUN; do
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
lintian --fail-on error --display-info --allow-root "$agent_deb" "$aggregator_deb" >"$tmp/lintian.txt" 2>&1 || status=$?
sed 's/^/  lintian: /' "$tmp/lintian.txt"
check "lintian: no errors ($(grep -c '^[EW]: ' "$tmp/lintian.txt" || true) errors/warnings, $((SECONDS - lintian_started)) s)" \
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
