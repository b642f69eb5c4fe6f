#!/usr/bin/env bash
# Creates (idempotently) the Python venv the Parquet compatibility tests read files with,
# and installs tests/python/requirements.txt into it.
#
#   FLOWLOG_VENV  where the venv lives (default: <repo>/target/test-venv)
#
# The pip step is skipped when the venv's stamp file records the same requirements hash.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FLOWLOG_VENV:-$repo/target/test-venv}"
requirements="$repo/tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"

if [[ ! -x "$venv/bin/python" ]]; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv"; then
        # Debian splits ensurepip out of python3 into python3-venv (python3.X-venv).
        echo "python3 -m venv failed; installing python3-venv" >&2
        rm -rf "$venv"
        py="python$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        sudo=()
        [[ $(id -u) -eq 0 ]] || sudo=(sudo)
        "${sudo[@]}" apt-get update -q
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q python3-venv "$py-venv" \
            || DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q python3-venv
        python3 -m venv "$venv"
    fi
fi

# Debian packages the agent's tests run, installed when missing (one apt transaction):
# - iproute2, iputils-ping: live-capture tests build veth pairs in network namespaces and
#   ping through them;
# - tshark: the ground-truth test cross-checks our records with Wireshark's dissectors;
# - nftables: the firewall test drops traffic with rules that log to an NFLOG group;
# - procps (sysctl, kill), util-linux (taskset): capture tests set sysctls and stop/continue
#   the agent; benches/live_capture.sh pins processes to CPUs;
# - a Java runtime (17+): pyspark runs the Athena DDL and queries (tests/tests/athena.rs).
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
command -v tshark >/dev/null 2>&1 || missing+=(tshark)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v sysctl >/dev/null 2>&1 || missing+=(procps)
type -P kill >/dev/null 2>&1 || missing+=(procps)  # the program, not the builtin
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
if [[ ${#missing[@]} -gt 0 ]]; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    # wireshark-common (a tshark dependency) asks whether non-root users may capture.
    echo "wireshark-common wireshark-common/install-setuid boolean false" \
        | "${sudo[@]}" debconf-set-selections
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends \
        $(printf '%s\n' "${missing[@]}" | sort -u)
fi

hash="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
    echo "requirements unchanged; skipping pip install"
else
    "$venv/bin/python" -m pip install --quiet -r "$requirements"
    echo "$hash" >"$stamp"
fi

echo "test venv: $venv (python: $venv/bin/python)"
