#!/usr/bin/env bash
# Deltas, measured in one run: two squashfs of a large folder (a copy of SRC, then the same copy
# with 1% of its files rewritten), the delta between them as a share of the full squashfs, and
# our encode (a `publish --deltas 1` of a layout tree holding both versions, after a publish
# without deltas hashed them: the difference is the delta, made with xdelta3 and hashed) as a
# ratio to `xdelta3 -e -9 -s` on the same pair, which is what simplestream-maintainer runs.
# Peak RSS of both.
#
# Usage: bench/delta.sh
#   SRC=dir        the folder packed (default /usr/lib/x86_64-linux-gnu)
#   SSB_BIN=path   measure this binary instead of a release build of this checkout
#   TMPDIR=dir     where the files go (default /var/tmp)
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
. ./lib.sh
ssb=$(ssb_binary)
bench_scratch delta
src=${SRC:-/usr/lib/x86_64-linux-gnu}
export SSB_CACHE_DIR=$work/cache

# The two rootfs: a copy, then 1% of its regular files (every 100th, in name order) rewritten.
cp -a "$src" "$work/a"
cp -a "$work/a" "$work/b"
files=$(cd "$work/b" && find . -type f | sort)
total=$(printf '%s\n' "$files" | wc -l)
printf '%s\n' "$files" | awk 'NR % 100 == 0' | while read -r f; do
    head -c 4096 /dev/urandom >>"$work/b/$f"
done
changed=$((total / 100))

version() { # V ROOTFS: a version folder of the layout with a metadata tarball and the squashfs
    local dir="$work/www/images/bench/1/amd64/default/$1"
    mkdir -p "$dir"
    python3 "$here/tiny_tree.py" meta "$dir/incus.tar.xz"
    mksquashfs "$2" "$dir/rootfs.squashfs" -comp xz -noappend -quiet -all-root >/dev/null
}
version 20240101_00:00 "$work/a"
version 20240102_00:00 "$work/b"
sq1="$work/www/images/bench/1/amd64/default/20240101_00:00/rootfs.squashfs"
sq2="$work/www/images/bench/1/amd64/default/20240102_00:00/rootfs.squashfs"
size=$(stat -c %s "$sq2")

"$ssb" -t "$work/www" publish 2>/dev/null # hashes both versions: not part of the delta's cost

t0=$(now)
/usr/bin/time -f '%M' -o "$work/x.rss" xdelta3 -e -9 -f -s "$sq1" "$sq2" "$work/x.vcdiff"
t1=$(now)
xd_ms=$(ms "$t0" "$t1"); xd_rss=$(($(cat "$work/x.rss") / 1024))
xd_size=$(stat -c %s "$work/x.vcdiff")

t0=$(now)
/usr/bin/time -f '%M' -o "$work/o.rss" "$ssb" -t "$work/www" --deltas 1 --delta-max-percent 100 publish 2>/dev/null
t1=$(now)
our_ms=$(ms "$t0" "$t1"); our_rss=$(($(cat "$work/o.rss") / 1024))
ours="$work/www/images/bench/1/amd64/default/20240102_00:00/delta-20240101_00:00.vcdiff"
our_size=$(stat -c %s "$ours")
# What the daemons do with it gives the new squashfs, byte for byte.
cmp <(xdelta3 -d -c -s "$sq1" "$ours") "$sq2"

echo "rootfs: $src ($total files; $changed rewritten); squashfs $((size / 1048576)) MiB"
printf 'xdelta3 -e -9 -s:  %6d ms  %5d MiB RSS  delta %d bytes (%.2f%% of the squashfs)\n' \
    "$xd_ms" "$xd_rss" "$xd_size" "$(awk -v d="$xd_size" -v s="$size" 'BEGIN { print d * 100 / s }')"
printf 'publish --deltas 1: %6d ms  %5d MiB RSS  delta %d bytes (%.2f%% of the squashfs)\n' \
    "$our_ms" "$our_rss" "$our_size" "$(awk -v d="$our_size" -v s="$size" 'BEGIN { print d * 100 / s }')"
awk -v a="$our_ms" -v b="$xd_ms" 'BEGIN { printf "ratio (ours / xdelta3): %.2f\n", a / b }'
