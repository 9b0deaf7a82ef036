#!/usr/bin/env bash
# Object storage, measured in one run against a real S3 server (SeaweedFS `weed mini` on
# loopback ports of its own): a 2 GiB image pushed into the bucket by `mirror push` (after a
# local publish hashed it, as build-product does before it uploads) against boto3's
# `upload_file` of the same file into the same server, as a throughput ratio; our peak RSS
# during that push; then the catalog of 1,000 products in the bucket: pushing them, publishing
# it again unchanged, and adding one product to it.
#
# Usage: bench/s3.sh
#   SIZE_MIB=n     the image's size (default 2048)
#   WEED=path      SeaweedFS (default /opt/seaweedfs/bin/weed, from the CI installer)
#   BOTO3_VENV=dir a venv with boto3 (default /var/tmp/ssb-boto3-venv, made when missing)
#   SSB_BIN=path   measure this binary instead of a release build of this checkout
#   TMPDIR=dir     where the files go (default /var/tmp)
set -euo pipefail
cd "$(dirname "$0")"
here=$(pwd)
. ./lib.sh
ssb=$(ssb_binary)
bench_scratch s3
size_mib=${SIZE_MIB:-2048}
weed=${WEED:-/opt/seaweedfs/bin/weed}
venv=${BOTO3_VENV:-/var/tmp/ssb-boto3-venv}
export SSB_CACHE_DIR=$work/cache

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import boto3' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'boto3==1.40.*'
fi

# SeaweedFS on ten free loopback ports, with the bucket `images`.
read -r -a p <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(10)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:${p[6]}
mkdir -p "$work/weed"
"$weed" mini -dir="$work/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=images \
    -master.port="${p[0]}" -master.port.grpc="${p[1]}" -volume.port="${p[2]}" \
    -volume.port.grpc="${p[3]}" -filer.port="${p[4]}" -filer.port.grpc="${p[5]}" \
    -s3.port="${p[6]}" -s3.port.grpc="${p[7]}" -admin.port="${p[8]}" -admin.port.grpc="${p[9]}" \
    >"$work/weed.log" 2>&1 &
server_pid=$!
for _ in $(seq 240); do
    if "$ssb" -t s3://images/ready list >/dev/null 2>"$work/ready.err" || grep -q 'no catalog' "$work/ready.err"; then
        break
    fi
    sleep 0.25
done

# The image: a real metadata tarball, and SIZE_MIB of random bytes made a squashfs by its header.
v="$work/www/images/big/1/amd64/default/20240101_00:00"
mkdir -p "$v"
python3 "$here/tiny_tree.py" meta "$v/incus.tar.xz"
head -c "$((size_mib << 20))" /dev/urandom >"$v/rootfs.squashfs"
python3 "$here/tiny_tree.py" superblock "$v/rootfs.squashfs"
"$ssb" -t "$work/www" publish 2>/dev/null # the local hash, which build-product does anyway

t0=$(now)
"$venv/bin/python" - "$v/rootfs.squashfs" <<'PY'
import sys, boto3
boto3.client("s3").upload_file(sys.argv[1], "images", "boto3/rootfs.squashfs")
PY
t1=$(now)
boto_ms=$(ms "$t0" "$t1")

t0=$(now)
/usr/bin/time -f '%M' -o "$work/push.rss" "$ssb" -t "$work/www" mirror push s3://images/ours 2>"$work/push.log"
t1=$(now)
our_ms=$(ms "$t0" "$t1"); our_rss=$(($(cat "$work/push.rss") / 1024))
"$ssb" -t s3://images/ours verify >/dev/null

# The catalog of 1,000 products.
python3 "$here/tiny_tree.py" tree "$work/thousand" 1000 1
t0=$(now)
"$ssb" -t "$work/thousand" mirror push s3://images/cat 2>/dev/null
t1=$(now)
push1000_ms=$(ms "$t0" "$t1")
t0=$(now)
"$ssb" -t s3://images/cat publish 2>/dev/null
t1=$(now)
same_ms=$(ms "$t0" "$t1")
python3 "$here/tiny_tree.py" tree "$work/one" 1 1 --os extra
# Its own bytes: the first product of the 1,000 has the same tag, and a fingerprint is published once.
python3 "$here/tiny_tree.py" squashfs "$(find "$work/one" -name rootfs.squashfs)" extra-one
t0=$(now)
/usr/bin/time -f '%M' -o "$work/one.rss" "$ssb" -t "$work/one" mirror push s3://images/cat 2>"$work/one.log" || { cat "$work/one.log" >&2; exit 1; }
t1=$(now)
one_ms=$(ms "$t0" "$t1"); one_rss=$(($(cat "$work/one.rss") / 1024))
products=$("$ssb" -t s3://images/cat list --format json | python3 -c 'import json,sys; print(len({r["product"] for r in json.load(sys.stdin)}))')

mib_s() { awk -v m="$size_mib" -v t="$1" 'BEGIN { printf "%.0f", m * 1000 / t }'; }
echo "image: $size_mib MiB; SeaweedFS $("$weed" version 2>/dev/null | head -1 | awk '{print $3}') on loopback"
printf 'boto3 upload_file:        %6d ms  %5s MiB/s\n' "$boto_ms" "$(mib_s "$boto_ms")"
printf 'ssb mirror push s3://:    %6d ms  %5s MiB/s  peak RSS %d MiB\n' "$our_ms" "$(mib_s "$our_ms")" "$our_rss"
awk -v a="$boto_ms" -v b="$our_ms" 'BEGIN { printf "throughput ratio (ours / boto3): %.2f\n", a / b }'
printf 'catalog of %d products: push of 1,000 %d ms; publish unchanged %d ms; push of one more product %d ms (peak RSS %d MiB)\n' \
    "$products" "$push1000_ms" "$same_ms" "$one_ms" "$one_rss"
