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

# The agent's live-capture test builds a veth pair in a network namespace (iproute2) and
# sends pings through it (iputils-ping); install them from Debian when missing.
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ping >/dev/null 2>&1 || missing+=(iputils-ping)
if [[ ${#missing[@]} -gt 0 ]]; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q "${missing[@]}"
fi

hash="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$hash" ]]; then
    echo "requirements unchanged; skipping pip install"
else
    "$venv/bin/python" -m pip install --quiet -r "$requirements"
    echo "$hash" >"$stamp"
fi

echo "test venv: $venv (python: $venv/bin/python)"
