#!/usr/bin/env bash
# Benchmark (issue 6): `mirror pull` of 4 items of SIZE_MB each from our own `serve` on
# 127.0.0.1 over HTTPS, against `curl` downloading the same four files in one run (sequential,
# and with --parallel), same server, same page-cache-warm files. Ours also verifies sha256 and
# size of every byte while streaming, fsyncs each file and publishes a catalog; curl only
# writes the bytes.
#
# Usage: bench/mirror.sh [SIZE_MB] [JOBS]   (default 500 MB, 4 jobs). Target: ours >= 0.9x curl.
#   SSB_BIN=path   use this binary instead of building target/release/simplestreams-builder
# Network: loopback only.
set -euo pipefail
size_mb=${1:-500}
jobs=${2:-4}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/lib.sh"
bench_scratch mirror
ssb=$(ssb_binary)

# Four products, each a small metadata tarball and a SIZE_MB incompressible rootfs.
for n in 1 2 3 4; do
  ver="$work/up/images/bench$n/1/amd64/default/20240101_00:00"
  mkdir -p "$ver" "$work/meta$n"
  printf 'architecture: x86_64\ncreation_date: 1704067200\nproperties:\n  os: bench%s\n  release: "1"\n' "$n" >"$work/meta$n/metadata.yaml"
  tar -C "$work/meta$n" -cJf "$ver/incus.tar.xz" metadata.yaml
  { printf 'hsqs'; head -c "$((size_mb * 1000 * 1000 - 4))" /dev/urandom; } >"$ver/rootfs.squashfs"
done
"$ssb" publish -t "$work/up" 2>/dev/null

"$ssb" serve -t "$work/up" --listen 127.0.0.1:0 --tls-san 127.0.0.1 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/serve.log" && break; sleep 0.1; done
url=$(grep -o 'listening on https://[0-9.:]*' "$work/serve.log" | head -1 | cut -d' ' -f3)
cert="$work/up/.ssb/tls/cert.pem"
[ -n "$url" ] || { cat "$work/serve.log" >&2; exit 1; }

mapfile -t paths < <(cd "$work/up" && find images -name 'rootfs.squashfs' | sort)
cat "$work"/up/images/*/1/amd64/default/*/* >/dev/null # warm the page cache for everyone
total_bytes=$(( 4 * size_mb * 1000 * 1000 ))

elapsed() { awk -v a="$2" -v b="$1" 'BEGIN { printf "%.3f", a - b }'; }

curl_run() { # curl_run [--parallel]: the four rootfs files in one curl invocation
  rm -rf "$work/curl" && mkdir -p "$work/curl"
  local args=() i=0
  for p in "${paths[@]}"; do i=$((i + 1)); args+=(-o "$work/curl/$i" "$url/$p"); done
  curl -sS --fail --cacert "$cert" "$@" "${args[@]}"
}

t0=$(now); curl_run; t1=$(now); t_curl=$(elapsed "$t0" "$t1")
t0=$(now); curl_run --parallel --parallel-max "$jobs"; t1=$(now); t_curlp=$(elapsed "$t0" "$t1")
rm -rf "$work/curl"

# Only the rootfs files, so both sides move the same bytes: the tiny metadata tarballs are
# fetched by an untimed pull first (they are then present and verified).
"$ssb" mirror pull "$url" -t "$work/mirror" --ca-cert "$cert" --jobs "$jobs" 2>/dev/null || true
for p in "${paths[@]}"; do rm -f "$work/mirror/$p"; done
t0=$(now)
"$ssb" mirror pull "$url" -t "$work/mirror" --ca-cert "$cert" --jobs "$jobs" 2>"$work/pull.log"
t1=$(now); t_ours=$(elapsed "$t0" "$t1")
grep -o 'fetched .*' "$work/pull.log" >&2
for p in "${paths[@]}"; do cmp -s "$work/up/$p" "$work/mirror/$p" || { echo "mirror copy differs: $p" >&2; exit 1; }; done

rate() { awk -v b="$total_bytes" -v t="$1" 'BEGIN { printf "%.0f", b / t / 1e6 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
best_curl=$(awk -v a="$t_curl" -v b="$t_curlp" 'BEGIN { print (a < b) ? a : b }')
printf '\n| what (4 x %s MB over HTTPS on 127.0.0.1, page cache warm) | seconds | MB/s | throughput vs best curl |\n|---|---|---|---|\n' "$size_mb"
printf '| simplestreams-builder mirror pull --jobs %s (sha256 + size checked, fsync) | %s | %s | %sx |\n' "$jobs" "$t_ours" "$(rate "$t_ours")" "$(ratio "$best_curl" "$t_ours")"
printf '| curl, one run, sequential | %s | %s | %sx |\n' "$t_curl" "$(rate "$t_curl")" "$(ratio "$best_curl" "$t_curl")"
printf '| curl, one run, --parallel --parallel-max %s | %s | %s | %sx |\n' "$jobs" "$t_curlp" "$(rate "$t_curlp")" "$(ratio "$best_curl" "$t_curlp")"
printf '\nmachine: %s, %s cores; %s; %s\n' "$(uname -m)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" "$(curl --version | head -1 | cut -d' ' -f1-2)"
