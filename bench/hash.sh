#!/usr/bin/env bash
# Benchmark: a fresh manifest of one version (metadata + a large rootfs) against
#   - `openssl dgst -sha256` over the same bytes (one plain hash, the floor), and
#   - `incus-simplestreams add` of the same two files (the peer tool),
# plus the warm re-run that the hash cache makes free. Everything runs in one go on the same
# files, with the page cache warm for all contenders.
#
# Usage: bench/hash.sh [SIZE_MB]   (default 2048). Targets: ours <= 1.15x openssl,
# ours >= 3x faster than incus-simplestreams, warm re-run < 50 ms.
#   SSB_BIN=path   use this binary instead of building target/release/simplestreams-builder
set -euo pipefail
size_mb=${1:-2048}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/lib.sh"
bench_scratch hash
ssb=$(ssb_binary)

ver="$work/tree/images/bench/1/amd64/default/20240101_00:00"
mkdir -p "$ver" "$work/meta"
cat >"$work/meta/metadata.yaml" <<YAML
architecture: x86_64
creation_date: 1704067200
properties:
  architecture: x86_64
  os: bench
  release: "1"
  variant: default
  description: bench 1 amd64
YAML
tar -C "$work/meta" -cJf "$ver/incus.tar.xz" metadata.yaml
# A squashfs magic, then incompressible bytes (incus-simplestreams detects the type by content).
{ printf 'hsqs'; head -c "$((size_mb * 1024 * 1024 - 4))" /dev/urandom; } >"$ver/rootfs.squashfs"
meta="$ver/incus.tar.xz" root="$ver/rootfs.squashfs"
cat "$meta" "$root" >/dev/null # warm the page cache for everyone

best_of() { # best_of N command...: the best wall time of N runs
  local n=$1 best="" t0 t1 t; shift
  for _ in $(seq "$n"); do
    t0=$(now); "$@" >/dev/null 2>&1; t1=$(now)
    t=$(awk -v a="$t1" -v b="$t0" 'BEGIN { printf "%.6f", a - b }')
    if [ -z "$best" ] || awk -v t="$t" -v b="$best" 'BEGIN { exit !(t < b) }'; then best=$t; fi
  done
  echo "$best"
}

fresh() {
  rm -f "$work/tree/images/bench/1/amd64/default/.ssb-cache.json"
  "$ssb" build-versions-manifest -p bench:1:amd64:default -t "$work/tree"
}
warm() { "$ssb" build-versions-manifest -p bench:1:amd64:default -t "$work/tree"; }
openssl_run() { openssl dgst -sha256 "$meta" "$root"; }
incus_ss() {
  rm -rf "$work/is" && mkdir -p "$work/is" && cd "$work/is" && incus-simplestreams add "$meta" "$root"
}

t_ours=$(best_of 3 fresh)
warm >/dev/null 2>&1
t_warm=$(best_of 5 warm)
t_openssl=$(best_of 3 openssl_run)
if command -v incus-simplestreams >/dev/null; then
  t_is=$(best_of 2 incus_ss)
else
  t_is=""
fi

# Check that ours computed what it should (the combined hash is the container fingerprint).
want=$(cat "$meta" "$root" | sha256sum | cut -d' ' -f1)
grep -q "$want" "$work/tree/images/bench/1/amd64/default/ssb.json" || { echo "combined hash wrong" >&2; exit 1; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
printf '\n| what (meta + %s MiB rootfs, page cache warm) | seconds | ratio |\n|---|---|---|\n' "$size_mb"
printf '| simplestreams-builder, fresh manifest | %.3f | 1.00 |\n' "$t_ours"
printf '| openssl dgst -sha256 (same bytes) | %.3f | ours = %sx openssl |\n' "$t_openssl" "$(ratio "$t_ours" "$t_openssl")"
if [ -n "$t_is" ]; then
  printf '| incus-simplestreams add | %.3f | ours is %sx faster |\n' "$t_is" "$(ratio "$t_is" "$t_ours")"
fi
printf '| simplestreams-builder, warm re-run | %.3f | |\n' "$t_warm"
printf '\nmachine: %s, %s cores; %s\n' "$(uname -m)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
