#!/usr/bin/env bash
# End-to-end import benchmark: `flowlog-aggregator import` of N default-format records to
# the local directory sink and to a local S3-compatible server (moto), printing records/s
# and peak RSS. Also runs 10x fewer records first, to show that peak RSS does not grow
# with the amount of data.
#
#   benches/import.sh [RECORDS]        (default 10000000; needs ~2.5 GB of free disk)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
records="${1:-10000000}"
small=$((records / 10))
work="$(mktemp -d "${TMPDIR:-/tmp}/flowlog-import-bench.XXXXXX")"
trap 'rm -rf "$work"; [[ -n "${moto_pid:-}" ]] && kill "$moto_pid" 2>/dev/null || true' EXIT

bash scripts/setup-test-env.sh >/dev/null
venv="${FLOWLOG_VENV:-$PWD/target/test-venv}"
cargo build --release -q -p flowlog-aggregator -p flowlog-benches
bin="$PWD/target/release/flowlog-aggregator"

echo "generating $records and $small records ..."
target/release/gen_flows --records "$records" --out "$work/big.log"
target/release/gen_flows --records "$small" --out "$work/small.log"
ls -l "$work"/*.log | awk '{print "  " $NF ": " $5 " bytes"}'

# Runs a command and prints "<seconds> <peak RSS in KiB>" of its children.
measure() {
    "$venv/bin/python" - "$@" <<'PY'
import resource, subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
elapsed = time.monotonic() - t
if r.returncode != 0:
    sys.stderr.write(r.stderr.decode()); sys.exit(r.returncode)
print(f"{elapsed:.2f} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
PY
}

config() { # sink-section state-dir
    cat <<EOT
[flow_log]
id = "fl-0123456789abcdef0"
account_id = "123456789012"
region = "us-east-1"
[sink]
$1
[state]
dir = "$2"
[service]
log_level = "warn"
EOT
}

run() { # label input records sink-section
    local label="$1" input="$2" n="$3" sink="$4" state="$work/state-$RANDOM"
    config "$sink" "$state" >"$work/config.toml"
    read -r secs rss < <(measure "$bin" import --config "$work/config.toml" "$input")
    printf "%-28s %11d records %7.2f s %10.0f records/s  peak RSS %6.1f MiB\n" \
        "$label" "$n" "$secs" "$(awk -v n="$n" -v s="$secs" 'BEGIN { print n / s }')" "$(awk -v r="$rss" 'BEGIN { print r / 1024 }')"
    rm -rf "$state"
}

echo
echo "import, text output, fsync per batch (the defaults):"
run "local dir, 1x"  "$work/small.log" "$small"   "type = \"local\"
path = \"$work/out-small\""
run "local dir, 10x" "$work/big.log"   "$records" "type = \"local\"
path = \"$work/out-big\""

# A local S3-compatible server with signature checking, as in the tests.
coproc MOTO { "$venv/bin/python" tests/python/s3_server.py; }
moto_pid=$MOTO_PID
read -r creds <&"${MOTO[0]}"
endpoint=$(echo "$creds" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["endpoint"])')
export AWS_ACCESS_KEY_ID=$(echo "$creds" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["access_key_id"])')
export AWS_SECRET_ACCESS_KEY=$(echo "$creds" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["secret_access_key"])')
export AWS_REGION=us-east-1
"$venv/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$endpoint', region_name='us-east-1').create_bucket(Bucket='bench')"
s3sink="type = \"s3\"
bucket = \"bench\"
region = \"us-east-1\"
endpoint_url = \"$endpoint\""
run "moto S3, 1x"  "$work/small.log" "$small"   "$s3sink"
run "moto S3, 10x" "$work/big.log"   "$records" "$s3sink"
