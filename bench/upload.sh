#!/usr/bin/env bash
# Benchmark: large rootfs uploads over loopback HTTPS (curl -T) into the image server, over
# HTTP/1.1 and HTTP/2, against `cp` of the same file on the same disk (plus an fsync, as the
# server does). A disk's pace drifts from minute to minute, so each round takes cp + fsync, an
# HTTP/1.1 upload and an HTTP/2 upload in turn, and the ratios are per round (the median is
# printed last). Targets (issue 14): HTTP/1.1 >= 0.6x cp + fsync, HTTP/2 >= 0.8x HTTP/1.1.
# Also prints the server's peak RSS (VmHWM; target < 64 MiB), the delay from the end of each
# upload to the image in images.json (target <= 1 s) and the server's own re-index line.
#
# Usage: bench/upload.sh [SIZE_MB] [ROUNDS]   (default 2048 MiB, 3 rounds)
#   SSB_BIN=path   use this binary instead of building target/release/simplestreams-builder
#   TMPDIR=dir     where the scratch tree goes (cp and the uploads all write there; it needs
#                  2 x ROUNDS + 1 times SIZE_MB free)
#   TREE_VERSIONS=N  publish N tiny versions (N/100 products of 100) in the tree first, to see
#                  what the re-index after an upload costs in a large tree (target < 100 ms
#                  for 10,000)
set -euo pipefail
size_mb=${1:-2048}
rounds=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/lib.sh"
bench_scratch upload
SSB_BIN=$(ssb_binary)

# The image: a real metadata tarball and a rootfs of random bytes behind a squashfs superblock
# (the server checks the header and hashes the rest).
mkdir -p "$work/meta" "$work/src" "$work/www"
cat >"$work/meta/metadata.yaml" <<YAML
architecture: x86_64
creation_date: 1704067200
properties:
  os: bench
  release: "1"
  variant: default
  description: bench 1 amd64
YAML
tar -C "$work/meta" -cJf "$work/src/lxd.tar.xz" metadata.yaml
echo "making a ${size_mb} MiB rootfs..." >&2
head -c "$((size_mb * 1024 * 1024))" /dev/urandom >"$work/src/rootfs.squashfs"
python3 "$here/bench/tiny_tree.py" superblock "$work/src/rootfs.squashfs"
sync

# cp of the same file on the same disk, with an fsync like the server's.
cp_once() {
    local start
    start=$(now)
    cp "$work/src/rootfs.squashfs" "$work/cp-copy"
    sync "$work/cp-copy"
    ms "$start" "$(now)"
    rm -f "$work/cp-copy"
    sync
}

if [ -n "${TREE_VERSIONS:-}" ]; then
    python3 "$here/bench/tiny_tree.py" tree "$work/www" $((TREE_VERSIONS / 100)) 100 --os seed
    SSB_CACHE_DIR="$work/cache" "$SSB_BIN" publish -t "$work/www" 2>/dev/null
fi
export SSB_CACHE_DIR="$work/cache"

# The server, owning its catalog, anonymous writes on loopback only.
"$SSB_BIN" serve -t "$work/www" --listen 127.0.0.1:0 --allow-anonymous-writes \
    >"$work/server.log" 2>&1 &
server_pid=$!
url=
for _ in $(seq 1 200); do
    url=$(grep -o 'listening on https://[0-9.:]*' "$work/server.log" | head -1 | cut -d' ' -f3 || true)
    [ -n "$url" ] && break
    sleep 0.05
done
[ -n "$url" ] || { cat "$work/server.log" >&2; echo "server did not start" >&2; exit 1; }
# Uploads start once the start-up scan has been served (its run is not the one measured).
for _ in $(seq 1 600); do grep -q 're-indexed' "$work/server.log" && break; sleep 0.05; done
grep -q 're-indexed' "$work/server.log" || { cat "$work/server.log" >&2; echo "no start-up scan within 30 s" >&2; exit 1; }

# One upload of the rootfs with curl option $1 into version $2 (its metadata tarball first):
# prints the milliseconds the upload took; the delay until images.json named it and the
# server's re-index line go to $work/lines.
upload_once() {
    local opt=$1 base="$url/images/bench/1/amd64/default/$2" start end response sha seen reindex
    curl -sS -k --noproxy '*' -T "$work/src/lxd.tar.xz" "$base/lxd.tar.xz" >/dev/null
    sleep 1
    cpu0=$(cpu_ticks "$server_pid")
    start=$(now)
    # bash's `time` gives curl's own CPU (user + system) in $work/curl-cpu.
    { TIMEFORMAT='%U %S'; time curl -sS -k --noproxy "*" "$opt" -T "$work/src/rootfs.squashfs" "$base/rootfs.squashfs" >"$work/response" 2>&1 || true; } 2>"$work/curl-cpu"
    end=$(now)
    cpu1=$(cpu_ticks "$server_pid")
    response=$(cat "$work/response")
    sha=$(printf '%s' "$response" | grep -o '"sha256":"[0-9a-f]*"' | cut -d'"' -f4)
    [ -n "$sha" ] || { echo "upload failed: $response" >&2; cat "$work/server.log" >&2; exit 1; }
    seen=
    while [ -z "$seen" ]; do
        if grep -q "$sha" "$work/www/streams/v1/images.json" 2>/dev/null; then seen=$(now); break; fi
        if [ "$(ms "$end" "$(now)")" -gt 30000 ]; then echo "not indexed within 30 s" >&2; exit 1; fi
        sleep 0.005
    done
    # The run that took the rootfs in: its line is logged once its gzip twins and companions
    # are written too, a little after images.json names it.
    reindex=
    for _ in $(seq 1 600); do
        reindex=$( (grep "re-indexed (uploaded [^ ]*/$2/rootfs.squashfs" "$work/server.log" || true) | tail -1 | sed 's/.*re-indexed //')
        [ -n "$reindex" ] && break
        sleep 0.05
    done
    [ -n "$reindex" ] || { cat "$work/server.log" >&2; echo "the upload's re-index was not logged within 30 s" >&2; exit 1; }
    echo "  $opt into $2: upload end -> images.json $(ms "$end" "$seen") ms; re-index $reindex" >>"$work/lines"
    read -r cu cs <"$work/curl-cpu"
    # CPU seconds per GiB of the server (until the upload's answer) and of curl.
    awk -v t=$((cpu1 - cpu0)) -v hz="$(getconf CLK_TCK)" -v cu="$cu" -v cs="$cs" -v m="$size_mb" -v opt="$opt" \
        'BEGIN { printf "%s %.2f %.2f\n", opt, t / hz * 1024 / m, (cu + cs) * 1024 / m }' >>"$work/cpu"
    sync
    ms "$start" "$end"
}

rate() { awk -v m="$size_mb" -v t="$1" 'BEGIN { printf "%.0f", m / (t / 1000) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "size: ${size_mb} MiB, ${rounds} rounds of cp + fsync, HTTP/1.1 upload, HTTP/2 upload"
echo "round  cp+fsync ms  HTTP/1.1 ms  HTTP/2 ms   HTTP/1.1 vs cp  HTTP/2 vs cp  HTTP/2 vs HTTP/1.1"
r1=() r2=() r21=() cp_rates=()
for round in $(seq 1 "$rounds"); do
    cp_ms=$(cp_once)
    cp_rates+=("$(rate "$cp_ms")")
    h1_ms=$(upload_once --http1.1 "$(printf '202401%02d_01:00' "$round")")
    h2_ms=$(upload_once --http2 "$(printf '202401%02d_02:00' "$round")")
    r1+=("$(ratio "$cp_ms" "$h1_ms")") r2+=("$(ratio "$cp_ms" "$h2_ms")") r21+=("$(ratio "$h1_ms" "$h2_ms")")
    printf '%5d  %11s  %11s  %9s   %14s  %12s  %18s\n' "$round" "$cp_ms ($(rate "$cp_ms"))" \
        "$h1_ms ($(rate "$h1_ms"))" "$h2_ms ($(rate "$h2_ms"))" "${r1[-1]}" "${r2[-1]}" "${r21[-1]}"
done
hwm_kb=$(awk '/VmHWM/ { print $2 }' "/proc/$server_pid/status")
cp_rate=$(median "${cp_rates[@]}")
echo "(MiB/s in brackets; a ratio is a speed over a speed, 1.00 = as fast)"
echo "median HTTP/1.1 vs cp + fsync:   $(median "${r1[@]}") (target >= 0.6)"
echo "median HTTP/2 vs cp + fsync:     $(median "${r2[@]}")"
echo "median HTTP/2 vs HTTP/1.1:       $(median "${r21[@]}") (target >= 0.8)"
echo "server peak RSS:      $((hwm_kb / 1024)) MiB (VmHWM ${hwm_kb} kB; target < 64 MiB)"
echo "each upload (target: in images.json <= 1000 ms after its end):"
cat "$work/lines"
# Where the time goes: an upload keeps both this machine's cores busy (curl reads and encrypts,
# the server decrypts, hashes and writes), so it can go no faster than their CPU seconds shared
# over the cores. A rootfs sent after its metadata tarball is hashed twice (its own sha256 and
# the combined one).
echo "CPU seconds per GiB uploaded (median of the rounds), and the fastest the CPU they take lets an upload go on $(nproc) cores:"
for opt in --http1.1 --http2; do
    server=$(median $(awk -v o="$opt" '$1 == o { print $2 }' "$work/cpu"))
    client=$(median $(awk -v o="$opt" '$1 == o { print $3 }' "$work/cpu"))
    awk -v o="$opt" -v s="$server" -v c="$client" -v n="$(nproc)" -v cp="$cp_rate" 'BEGIN {
        bound = 1024 / ((s + c) / n)
        printf "  %-9s server %.2f s, curl %.2f s: at most %.0f MiB/s, %.2fx cp + fsync\n", o, s, c, bound, bound / cp }'
done
