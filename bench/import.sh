#!/usr/bin/env bash
# Benchmark: `simplestreams-builder import` of a split image (a metadata tarball and a real
# squashfs of SIZE_MB MiB) against `incus-simplestreams add` of the same two files, in one run,
# with what copying the rootfs alone costs on this disk for reference: `cp` + fsync (through the
# page cache) and `dd oflag=direct` + fsync (bypassing it, as our import writes).
# Every timed run starts from the same state: both inputs just read (page cache warm), no output
# tree left (the previous run's is deleted), nothing dirty (`sync`). The contenders take turns
# (cp, dd, ours, incus, cp, dd, ours, incus...); best and median of each are shown.
# Prints wall time, MiB/s of rootfs, peak RSS, the ratio (target: ours >= 2x faster than
# incus-simplestreams), and checks that every run of both published the right fingerprint,
# sha256(metadata tarball || rootfs).
#
# Usage: bench/import.sh [SIZE_MB]   (default 2048)
#   SSB_BIN=path   use this binary instead of building target/release/simplestreams-builder
#   TMPDIR=dir     where the scratch files go (inputs and outputs, one disk; default /var/tmp)
#   REPS=n         timed runs of each contender (default 3)
set -euo pipefail
size_mb=${1:-2048}
reps=${REPS:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
. "$here/bench/lib.sh"
bench_scratch import

command -v incus-simplestreams >/dev/null || { echo "incus-simplestreams not found (Debian: incus-extra)" >&2; exit 1; }
command -v mksquashfs >/dev/null || { echo "mksquashfs not found (squashfs-tools)" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq not found" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "/usr/bin/time not found (GNU time, for the peak RSS)" >&2; exit 1; }

SSB_BIN=$(ssb_binary)

# The image: a metadata tarball as distrobuilder makes it, and a real squashfs holding one file
# of random bytes (uncompressed, so it is quick to make and as large as asked).
mkdir -p "$work/meta" "$work/rootdir" "$work/src"
cat >"$work/meta/metadata.yaml" <<YAML
architecture: x86_64
creation_date: 1763856000
properties:
  architecture: x86_64
  os: bench
  release: "1"
  variant: default
  description: bench 1 amd64 (20251123_00:00)
  serial: "20251123_00:00"
templates: {}
YAML
tar -C "$work/meta" -cJf "$work/src/meta.tar.xz" metadata.yaml
echo "making a ${size_mb} MiB squashfs..." >&2
head -c "$((size_mb * 1024 * 1024))" /dev/urandom >"$work/rootdir/blob"
mksquashfs "$work/rootdir" "$work/src/rootfs.squashfs" -noI -noD -noF -noX -all-root \
    -no-progress -quiet >/dev/null
rm -rf "$work/rootdir"
meta="$work/src/meta.tar.xz" root="$work/src/rootfs.squashfs"
root_bytes=$(stat -c %s "$root")
want=$(cat "$meta" "$root" | sha256sum | cut -d' ' -f1)

secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# The fingerprint a catalog publishes for the image (the combined hash of a split container).
fp() { jq -r '[.products[].versions[].items[] | .combined_squashfs_sha256 // empty][0]' "$1/streams/v1/images.json"; }

# run NAME command...: one timed run in a fresh $work/out; appends "seconds rss_kB" to NAME.runs.
run() {
    local name=$1 t0 t1; shift
    rm -rf "$work/out" && mkdir "$work/out"
    cat "$meta" "$root" >/dev/null
    sync
    t0=$(now)
    (cd "$work/out" && /usr/bin/time -f %M -o "$work/$name.rss" "$@" </dev/null >"$work/$name.log" 2>&1) ||
        { cat "$work/$name.log" >&2; echo "$name failed" >&2; exit 1; }
    t1=$(now)
    echo "$(secs "$t0" "$t1") $(tail -1 "$work/$name.rss")" >>"$work/$name.runs"
}

for _ in $(seq "$reps"); do
    run cp sh -c 'cp "$1" rootfs.squashfs && sync rootfs.squashfs' sh "$root"
    run dd sh -c 'dd if="$1" of=rootfs.squashfs bs=2M oflag=direct status=none && sync rootfs.squashfs' sh "$root"
    RUST_LOG=info,simplestreams_builder::import=debug run ours "$SSB_BIN" -t . import "$meta" "$root"
    echo "$(fp "$work/out")" >>"$work/ours.fp"
    read_line=$(grep -o 'read [^)]* of image data' "$work/ours.log" | tail -1 || true)
    direct_line=$(grep -o 'wrote [0-9]* bytes, [0-9]* of them direct' "$work/ours.log" | tail -1 || true)
    run incus incus-simplestreams add "$meta" "$root"
    echo "$(fp "$work/out")" >>"$work/incus.fp"
done
rm -rf "$work/out"

stat_of() { # stat_of NAME best|median: "seconds rss_kB"
    sort -n "$work/$1.runs" | if [ "$2" = best ]; then head -1; else sed -n "$(((reps + 1) / 2))p"; fi
}
read -r t_cp _ <<<"$(stat_of cp best)"
read -r m_cp _ <<<"$(stat_of cp median)"
read -r t_dd _ <<<"$(stat_of dd best)"
read -r m_dd _ <<<"$(stat_of dd median)"
read -r t_ours rss_ours <<<"$(stat_of ours best)"
read -r m_ours _ <<<"$(stat_of ours median)"
read -r t_is rss_is <<<"$(stat_of incus best)"
read -r m_is _ <<<"$(stat_of incus median)"
all() { cut -d' ' -f1 "$work/$1.runs" | paste -sd' ' | sed 's/ /, /g'; }
rate() { awk -v m="$root_bytes" -v t="$1" 'BEGIN { printf "%.0f", m / 1048576 / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib=$(awk -v b="$root_bytes" 'BEGIN { printf "%.0f", b / 1048576 }')

printf '\n| meta.tar.xz + %s MiB rootfs.squashfs, %s runs each | best s | MiB/s | median s | peak RSS | incus time / ours |\n' "$mib" "$reps"
printf '|---|---|---|---|---|---|\n'
printf '| cp rootfs + fsync (the copy alone, through the page cache) | %s | %s | %s | | |\n' \
    "$t_cp" "$(rate "$t_cp")" "$m_cp"
printf '| dd oflag=direct bs=2M + fsync (the copy alone, direct) | %s | %s | %s | | |\n' \
    "$t_dd" "$(rate "$t_dd")" "$m_dd"
printf '| simplestreams-builder import (hash, direct copy, fsync, publish) | %s | %s | %s | %s MiB | |\n' \
    "$t_ours" "$(rate "$t_ours")" "$m_ours" "$((rss_ours / 1024))"
printf '| incus-simplestreams add (hash twice, copy, no fsync) | %s | %s | %s | %s MiB | best %sx, median %sx (target >= 2x) |\n' \
    "$t_is" "$(rate "$t_is")" "$m_is" "$((rss_is / 1024))" "$(ratio "$t_is" "$t_ours")" "$(ratio "$m_is" "$m_ours")"
printf '\nall runs (s): cp+fsync %s; dd direct+fsync %s; ours %s; incus-simplestreams %s\n' \
    "$(all cp)" "$(all dd)" "$(all ours)" "$(all incus)"
printf 'import: %s; publish after import: %s\n' "${direct_line:-?}" "${read_line:-?}"
printf 'fingerprint: expected %s\n             ours     %s\n             incus    %s\n' \
    "$want" "$(sort -u "$work/ours.fp" | paste -sd' ')" "$(sort -u "$work/incus.fp" | paste -sd' ')"
printf 'machine: %s, %s cores; %s; %s on %s\n' "$(uname -m)" "$(nproc)" \
    "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" \
    "$(incus-simplestreams --version 2>/dev/null | sed 's/^/incus-simplestreams /')" \
    "$(findmnt -n -o FSTYPE -T "$work")"
if [ "$(sort -u "$work/ours.fp")" != "$want" ] || [ "$(sort -u "$work/incus.fp")" != "$want" ]; then
    echo "fingerprint mismatch" >&2
    exit 1
fi
