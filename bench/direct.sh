#!/usr/bin/env bash
# Benchmark: the first direct-URL request for a split-only image, which builds its unified
# tarball (squashfs read in-process, tar, gzip), against doing the same by hand with
# squashfs-tools and GNU tar (`unsquashfs` to a folder, then `tar -czf` of metadata + rootfs/).
# Also: the second request (cached), and the server's peak RSS (VmHWM).
#
# Usage: bench/direct.sh [SRC_DIR]   (default /usr/lib: a few hundred MB of real files)
#   SSB_BIN=path   use this binary instead of building target/release/simplestreams-builder
#   TMPDIR=dir     where the scratch tree goes
set -euo pipefail
src=${1:-/usr/lib}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/lib.sh"
bench_scratch direct
SSB_BIN=$(ssb_binary)

v=20250101_10:00
vdir="$work/www/images/bench/1/amd64/default/$v"
mkdir -p "$work/meta" "$vdir"
cat >"$work/meta/metadata.yaml" <<YAML
architecture: x86_64
creation_date: 1735725600
properties:
  os: bench
  release: "1"
  variant: default
  description: bench 1 amd64
YAML
tar -C "$work/meta" -cJf "$vdir/incus.tar.xz" metadata.yaml
echo "making an xz squashfs of $src (as distrobuilder does)..." >&2
mksquashfs "$src" "$vdir/rootfs.squashfs" -comp xz -noappend -quiet -no-progress >/dev/null
squashfs_mb=$(( $(stat -c %s "$vdir/rootfs.squashfs") / 1048576 ))
files=$(unsquashfs -lc "$vdir/rootfs.squashfs" | wc -l)
"$SSB_BIN" -t "$work/www" publish >/dev/null 2>&1
sync

# By hand: unsquashfs to a folder, then one tar.gz of metadata.yaml + rootfs/.
start=$(now)
mkdir -p "$work/byhand"
unsquashfs -q -n -d "$work/byhand/rootfs" "$vdir/rootfs.squashfs" >/dev/null
cp "$work/meta/metadata.yaml" "$work/byhand/"
tar -C "$work/byhand" -czf "$work/byhand.tar.gz" metadata.yaml rootfs
sync "$work/byhand.tar.gz"
byhand_ms=$(ms "$start" "$(now)")
byhand_mb=$(( $(stat -c %s "$work/byhand.tar.gz") / 1048576 ))
rm -rf "$work/byhand"

"$SSB_BIN" serve -t "$work/www" --listen 127.0.0.1:0 --http --index 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 100); do
    url=$(grep -o 'listening on http://[0-9.:]*' "$work/serve.log" | head -1 | sed 's/listening on //') || true
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { cat "$work/serve.log" >&2; exit 1; }

ask() {
    curl -sS -o /dev/null -D - -I --noproxy '*' -H 'LXD-Server-Architectures: x86_64, i686' \
        -H 'LXD-Server-Version: 5.0.2' "$url/direct/bench/1"
}
start=$(now)
first=$(ask)
first_ms=$(ms "$start" "$(now)")
start=$(now)
ask >/dev/null
second_ms=$(ms "$start" "$(now)")
hash=$(printf '%s' "$first" | tr -d '\r' | awk -F': ' 'tolower($1) == "lxd-image-hash" { print $2 }')
[ -n "$hash" ] || { echo "no LXD-Image-Hash in: $first" >&2; exit 1; }
built=$(ls "$vdir"/.ssb-unified.*."$hash".tar.gz)
[ "$(sha256sum <"$built" | cut -d' ' -f1)" = "$hash" ] || { echo "hash mismatch" >&2; exit 1; }
built_mb=$(( $(stat -c %s "$built") / 1048576 ))
rss_kb=$(awk '/VmHWM/ { print $2 }' "/proc/$server_pid/status")

printf '\nsource %s: %s entries, squashfs (xz) %s MiB\n\n' "$src" "$files" "$squashfs_mb"
printf '| | time | tarball |\n|---|---|---|\n'
printf '| unsquashfs + tar -czf (by hand) | %s ms | %s MiB |\n' "$byhand_ms" "$byhand_mb"
printf '| first /direct request (builds) | %s ms | %s MiB |\n' "$first_ms" "$built_mb"
printf '| second /direct request (cached) | %s ms | |\n' "$second_ms"
awk -v a="$byhand_ms" -v b="$first_ms" 'BEGIN { printf "\nby hand / first request: %.2fx\n", a / b }'
printf 'server peak RSS (VmHWM): %s MiB\n' "$((rss_kb / 1024))"
