#!/usr/bin/env bash
# Benchmark: one large rootfs upload over loopback HTTPS (curl -T, HTTP/2) into the image
# server, against `cp` of the same file on the same disk (plus an fsync, as the server does).
# Prints the server's peak RSS (VmHWM; target < 64 MB), the throughput ratio to cp, and the
# delay from the end of the upload to the image appearing in images.json (target <= 1 s).
#
# Usage: bench/upload.sh [SIZE_MB]   (default 2048)
#   SSB_BIN=path   use this binary instead of building target/release/simplestreams-builder
#   TMPDIR=dir     where the scratch tree goes (cp and the upload both write there)
#   TREE_VERSIONS=N  publish N tiny versions (N/100 products of 100) in the tree first, to see
#                  what the re-index after the upload costs in a large tree (target < 100 ms
#                  for 10,000)
set -euo pipefail
size_mb=${1:-2048}
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
start=$(now)
cp "$work/src/rootfs.squashfs" "$work/cp-copy"
sync "$work/cp-copy"
cp_ms=$(ms "$start" "$(now)")
rm -f "$work/cp-copy"
sync

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

base="$url/images/bench/1/amd64/default/20240101_00:00"
curl -sS -k --noproxy '*' -T "$work/src/lxd.tar.xz" "$base/lxd.tar.xz" >/dev/null
sleep 1

start=$(now)
response=$(curl -sS -k --noproxy "*" ${CURL_OPTS:-} -T "$work/src/rootfs.squashfs" "$base/rootfs.squashfs" || true)
end=$(now)
upload_ms=$(ms "$start" "$end")
sha=$(printf '%s' "$response" | grep -o '"sha256":"[0-9a-f]*"' | cut -d'"' -f4)
[ -n "$sha" ] || { echo "upload failed: $response" >&2; cat "$work/server.log" >&2; exit 1; }
seen=
while [ -z "$seen" ]; do
    if grep -q "$sha" "$work/www/streams/v1/images.json" 2>/dev/null; then seen=$(now); break; fi
    if [ "$(ms "$end" "$(now)")" -gt 30000 ]; then echo "not indexed within 30 s" >&2; exit 1; fi
    sleep 0.005
done
delay_ms=$(ms "$end" "$seen")
hwm_kb=$(awk '/VmHWM/ { print $2 }' "/proc/$server_pid/status")
# The run that took the rootfs in: its line is logged once its gzip twins and companions are
# written too, a little after images.json names it.
reindex=
for _ in $(seq 1 600); do
    reindex=$( (grep 're-indexed (uploaded [^ ]*/rootfs.squashfs' "$work/server.log" || true) | tail -1 | sed 's/.*re-indexed //')
    [ -n "$reindex" ] && break
    sleep 0.05
done
[ -n "$reindex" ] || { cat "$work/server.log" >&2; echo "the upload's re-index was not logged within 30 s" >&2; exit 1; }

mb=$size_mb
echo "size:                 ${mb} MiB"
echo "cp + fsync:           ${cp_ms} ms ($(awk -v m="$mb" -v t="$cp_ms" 'BEGIN { printf "%.0f", m / (t / 1000) }') MiB/s)"
echo "upload (curl -T, TLS): ${upload_ms} ms ($(awk -v m="$mb" -v t="$upload_ms" 'BEGIN { printf "%.0f", m / (t / 1000) }') MiB/s)"
echo "throughput vs cp:     $(awk -v c="$cp_ms" -v u="$upload_ms" 'BEGIN { printf "%.2f", c / u }') (1.00 = as fast as cp)"
echo "upload end -> images.json: ${delay_ms} ms (target <= 1000)"
echo "server peak RSS:      $((hwm_kb / 1024)) MiB (VmHWM ${hwm_kb} kB; target < 64 MiB)"
echo "re-index after upload: ${reindex}"
