#!/usr/bin/env bash
# Publishing at scale, against a `find` walk of the same tree in the same run:
#   - layout trees of 10,000 versions (100 products x 100) and 100,000 versions (1,000 x 100):
#     fresh publish (time, peak RSS), warm re-publish with nothing changed (time, ratio to
#     `find TREE -printf '%s %T@ %i\n'`, fsync calls), and a re-publish after one product
#     changed (time, files written);
#   - a tree.yml of 10,000 products, one version each: fresh and unchanged re-publish.
# Image files are tiny (a real metadata tarball shared by all, a distinct 128-byte squashfs
# per version), so the figures are about walking, caching and writing, not hashing.
#
# Usage: bench/publish.sh [small|large|yml]...   (default: all three)
#   SSB_BIN=path   measure this binary instead of a release build of this checkout
#   TMPDIR=dir     where the trees go (default /var/tmp)
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
. ./lib.sh
ssb=$(ssb_binary)
bench_scratch publish
cases=("${@:-small large yml}")
read -r -a cases <<<"${cases[*]}"

# make_tree DIR PRODUCTS VERSIONS [yml]: the layout (or a tree.yml) of tiny images.
make_tree() {
    python3 "$here/tiny_tree.py" tree "$1" "$2" "$3" ${4:+--yml}
}

# timed LABEL CMD...: runs CMD in the tree's folder; sets $took_ms and $rss_mib.
timed() {
    local label=$1; shift
    local t0; t0=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    took_ms=$(ms "$t0" "$(now)")
    rss_mib=$(awk '{ printf "%.0f", $1 / 1024 }' "$work/rss")
    printf '  %-34s %8d ms  %5d MiB peak RSS\n' "$label" "$took_ms" "$rss_mib"
}

# syscalls CMD...: fsync-family calls and files opened for writing, as "N fsync, M written".
syscalls() {
    strace -f -qq -o "$work/strace" -e trace=fsync,fdatasync,openat "$@" >/dev/null 2>&1
    local fsyncs written
    fsyncs=$(grep -cE '^[0-9]+ +(fsync|fdatasync)\(' "$work/strace" || true)
    written=$(grep -E 'openat\(.*O_(WRONLY|RDWR)' "$work/strace" | grep -vc ' = -1' || true)
    echo "$fsyncs fsync, $written files opened for writing"
}

find_walk() {
    local t0; t0=$(now)
    find "$1" -printf '%s %T@ %i\n' >/dev/null
    find_ms=$(ms "$t0" "$(now)")
    find_ms=$((find_ms > 0 ? find_ms : 1))
}

run_layout() {
    local name=$1 products=$2 versions=$3
    local tree="$work/$name"
    echo "== $name: $products products x $versions versions ($((products * versions)) versions, layout)"
    make_tree "$tree" "$products" "$versions"
    sync
    export SSB_CACHE_DIR="$work/cache-$name"
    cd "$tree"
    find_walk "$tree"
    printf '  %-34s %8d ms\n' "find -printf (warm)" "$find_ms"
    timed "fresh publish" "$ssb" publish -t .
    timed "warm re-publish, nothing changed" "$ssb" publish -t .
    local warm=$took_ms
    find_walk "$tree"
    printf '  %-34s %8d ms (again, just before)\n' "find -printf (warm)" "$find_ms"
    printf '  %-34s %8s\n' "warm re-publish / find" "$(awk -v a="$warm" -v b="$find_ms" 'BEGIN { printf "%.2fx (target <= 2x)", a / b }')"
    printf '  %-34s %s\n' "nothing changed:" "$(syscalls "$ssb" publish -t .)"
    # One product changes: a new version.
    local v="$tree/images/os0/1/amd64/default/20250101_00:00"
    mkdir -p "$v"
    cp "$tree/images/os0/1/amd64/default/20240101_00:00/incus.tar.xz" "$v/"
    python3 "$here/tiny_tree.py" squashfs "$v/rootfs.squashfs" new
    printf '  %-34s %s\n' "one product changed:" "$(syscalls "$ssb" publish -t .)"
    timed "re-publish after that (warm)" "$ssb" publish -t .
    cd - >/dev/null
    rm -rf "$tree" "$SSB_CACHE_DIR"
}

run_yml() {
    local tree="$work/yml"
    echo "== tree.yml: 10000 products x 1 version"
    make_tree "$tree" 10000 1 yml
    sync
    export SSB_CACHE_DIR="$work/cache-yml"
    cd "$tree"
    find_walk "$tree"
    printf '  %-34s %8d ms\n' "find -printf (warm)" "$find_ms"
    timed "fresh publish" "$ssb" publish -t .
    timed "unchanged re-publish (target < 1 s)" "$ssb" publish -t .
    printf '  %-34s %s\n' "nothing changed:" "$(syscalls "$ssb" publish -t .)"
    cd - >/dev/null
    rm -rf "$tree" "$SSB_CACHE_DIR"
}

for c in "${cases[@]}"; do
    case "$c" in
        small) run_layout small 100 100 ;;
        large) run_layout large 1000 100 ;;
        yml) run_yml ;;
        *) echo "unknown case $c (small, large, yml)" >&2; exit 2 ;;
    esac
done
