#!/usr/bin/env bash
# Builds the flowlog-agent and flowlog-aggregator packages, each as .deb and .rpm, into
# target/packages/ (see packaging/README.md):
#
#   1. installs cargo-deb and cargo-generate-rpm (pinned versions) unless already installed;
#   2. builds both binaries once with the `dist` profile (fat LTO, stripped);
#   3. generates the man pages (from --help) and the Debian changelogs into target/packaging/;
#   4. packages without rebuilding: cargo deb --no-build (plus DEBIAN/md5sums, which
#      cargo-deb does not write), cargo generate-rpm.
#
# The version is the workspace's ([workspace.package] version in Cargo.toml); package
# timestamps come from SOURCE_DATE_EPOCH (default: the last commit's time).
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
MAINTAINER="flowlog maintainers <flowlog@users.noreply.github.com>"
PACKAGES=(flowlog-agent flowlog-aggregator)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="$repo/target/packages"
gen="$repo/target/packaging"

version="$(sed -n '/^\[workspace\.package\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' Cargo.toml)"
if [[ -z "$version" ]]; then
    echo "error: no version in [workspace.package] of Cargo.toml" >&2
    exit 1
fi

# Timestamps in the packages. Exported to the packaging tools only: build scripts that watch
# SOURCE_DATE_EPOCH would otherwise rebuild dependencies at every commit.
source_date_epoch="${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}"

# --- tools ---------------------------------------------------------------------------------

# ensure_tool CRATE SUBCOMMAND VERSION: `cargo SUBCOMMAND --version` must print VERSION.
ensure_tool() {
    local crate="$1" subcommand="$2" want="$3" have
    have="$(cargo "$subcommand" --version 2>/dev/null | awk '{print $2}' || true)"
    if [[ "$have" != "$want" ]]; then
        echo "installing $crate $want (found: ${have:-none})"
        # --debug: both tools then build in 96 s instead of 202 s on 2 cores, and packaging
        # takes 92 s instead of 48 s, with byte-identical packages.
        cargo install --locked --quiet --debug "$crate" --version "$want"
    fi
}
ensure_tool cargo-deb deb "$CARGO_DEB_VERSION"
ensure_tool cargo-generate-rpm generate-rpm "$CARGO_GENERATE_RPM_VERSION"
for tool in gzip iconv dpkg-deb md5sum; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required" >&2; exit 1; }
done

# --- binaries ------------------------------------------------------------------------------

started=$SECONDS
cargo build --locked --profile dist -p flowlog-agent -p flowlog-aggregator --bins
echo "dist build: $((SECONDS - started)) s"
target_dir="$(cargo metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin="$target_dir/dist"

# --- man pages and changelogs --------------------------------------------------------------

rm -rf "$gen"
mkdir -p "$gen/man"

# Escapes text for a roff no-fill block: ASCII only (transliterated), backslashes and
# hyphens escaped, no line taken for a request.
roff_text() {
    LC_ALL=C.UTF-8 iconv -f UTF-8 -t ASCII//TRANSLIT \
        | sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"
}

# Wraps lines longer than 72 columns (clap prints its help unwrapped when not on a
# terminal). Continuation lines keep the line's indentation, or start under the description
# of a "term  description" line.
wrap_text() {
    awk -v width=72 '
        {
            line = $0
            if (length(line) <= width) { print line; next }
            match(line, /^ */)
            indent = RLENGTH
            if (match(line, /^ +[^ ]+( [^ ]+)*   */)) indent = RLENGTH
            pad = sprintf("%" indent "s", "")
            out = ""
            n = split(line, words, / /)
            lead = substr(line, 1, length(line) - length(substr(line, match(line, /[^ ]/))))
            out = lead
            first = 1
            for (i = 1; i <= n; i++) {
                if (words[i] == "" && first) continue
                if (!first && length(out) + 1 + length(words[i]) > width && length(out) > indent) {
                    print out
                    out = pad words[i]
                } else if (first) {
                    out = out words[i]
                    first = 0
                } else {
                    out = out " " words[i]
                }
            }
            print out
        }'
}

# roff_block: stdin as a verbatim (no-fill) block.
roff_block() {
    echo ".nf"
    wrap_text | roff_text
    echo ".fi"
}

# man_page NAME SUMMARY: writes $gen/man/NAME.1.gz from `NAME --help` (and the --help of
# each subcommand), plus the FILES section read from stdin.
man_page() {
    local name="$1" summary="$2" exe="$bin/$1" files sub date
    files="$(cat)"
    date="$(date -u -d "@$source_date_epoch" +%Y-%m-%d)"
    {
        printf '.TH %s 1 "%s" "%s %s" "User Commands"\n' \
            "$(tr '[:lower:]' '[:upper:]' <<<"$name" | roff_text)" "$date" "$name" "$version"
        echo ".SH NAME"
        printf '%s \\- %s\n' "$(roff_text <<<"$name")" "$(roff_text <<<"$summary")"
        echo ".SH SYNOPSIS"
        "$exe" --help | sed -n 's/^Usage: //p' | roff_block
        echo ".SH DESCRIPTION"
        "$exe" --help | roff_block
        # Subcommands: the lines of the "Commands:" section, but `help`.
        local subs
        subs="$("$exe" --help | sed -n '/^Commands:/,/^$/{s/^  \([a-z][a-z-]*\) .*/\1/p}' \
            | grep -vx help || true)"
        if [[ -n "$subs" ]]; then
            echo ".SH COMMANDS"
            for sub in $subs; do
                printf '.SS %s\n' "$(roff_text <<<"$name $sub")"
                "$exe" "$sub" --help | roff_block
            done
        fi
        echo ".SH FILES"
        printf '%s\n' "$files"
        echo ".SH SEE ALSO"
        printf '%s\n' "The documentation in" ".IR /usr/share/doc/$(roff_text <<<"$name")/ ."
    } | gzip -9n >"$gen/man/$name.1.gz"
}

man_page flowlog-agent "capture this host's packets as VPC flow log records" <<'EOF'
.TP
.I /etc/flowlog/agent.toml
The configuration of the service (every key with its default).
.TP
.I /var/lib/flowlog\-agent/
State: standalone mode's WAL and output files, fleet mode's spool.
.TP
.I /usr/lib/systemd/system/flowlog\-agent.service
The systemd unit (runs as user flowlog with CAP_NET_RAW).
EOF
man_page flowlog-aggregator "publish VPC-Flow-Logs-compatible files from flowlog agents" <<'EOF'
.TP
.I /etc/flowlog/aggregator.toml
The configuration of the service (every key with its default).
.TP
.I /etc/flowlog/tokens
The agents' bearer tokens ([listen] tokens_file; SIGHUP reloads it).
.TP
.I /etc/flowlog/tls/
The server certificate and key ([listen] tls_cert, tls_key).
.TP
.I /var/lib/flowlog\-aggregator/
State: WAL, staged files, manifest, and local output files.
.TP
.I /usr/lib/systemd/system/flowlog\-aggregator.service
The systemd unit (runs as user flowlog without capabilities).
EOF

for package in "${PACKAGES[@]}"; do
    cat >"$gen/$package.changelog" <<EOF
$package ($version-1) unstable; urgency=medium

  * Release $version.

 -- $MAINTAINER  $(LC_ALL=C date -u -R -d "@$source_date_epoch")
EOF
done

# --- packages ------------------------------------------------------------------------------

# add_md5sums DEB: cargo-deb writes no DEBIAN/md5sums, which `dpkg --verify` and debsums
# check installed files against. Rebuilds DEB with it: every file but the conffiles (dpkg
# records those itself), as dh_md5sums does.
add_md5sums() {
    local deb="$1" tree="$gen/repack"
    rm -rf "$tree"
    dpkg-deb -R "$deb" "$tree"
    (
        cd "$tree"
        find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort \
            | { grep -vxF -f <(sed 's|^/||' DEBIAN/conffiles 2>/dev/null) || true; } \
            | xargs -r -d '\n' md5sum
    ) >"$tree/DEBIAN/md5sums"
    chmod 0644 "$tree/DEBIAN/md5sums"
    SOURCE_DATE_EPOCH="$source_date_epoch" \
        dpkg-deb --root-owner-group -Zxz --build "$tree" "$deb" >/dev/null
    rm -rf "$tree"
}

rm -rf "$out"
mkdir -p "$out"
for package in "${PACKAGES[@]}"; do
    SOURCE_DATE_EPOCH="$source_date_epoch" \
        cargo deb --quiet --no-build --profile dist -p "$package" --output "$out/"
    add_md5sums "$(ls "$out"/"${package}"_*.deb)"
    # cargo generate-rpm takes the package's directory.
    SOURCE_DATE_EPOCH="$source_date_epoch" \
        cargo generate-rpm --profile dist -p "${package#flowlog-}" -o "$out/"
done

echo "binaries ($bin):"
for package in "${PACKAGES[@]}"; do
    printf '  %-40s %10d bytes\n' "$package" "$(stat -c %s "$bin/$package")"
done
echo "packages ($out):"
for file in "$out"/*; do
    printf '  %-40s %10d bytes\n' "$(basename "$file")" "$(stat -c %s "$file")"
done
