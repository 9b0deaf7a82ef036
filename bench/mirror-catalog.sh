#!/usr/bin/env bash
# How `mirror pull` scales with the size of the remote products file: N products (one version,
# one image each) served by python's http.server, pulled with a filter that matches none, so
# the time is reading, parsing and planning the catalog. Prints seconds and peak RSS per N,
# and the ratio of the largest to the smallest per product (1.0 is linear).
#   bench/mirror-catalog.sh [N...]        (default: 20000 40000 200000)
set -euo pipefail
cd "$(dirname "$0")"
. ./lib.sh
ssb=$(ssb_binary)
bench_scratch mirror-catalog
sizes=("${@:-20000 40000 200000}")
read -r -a sizes <<<"${sizes[*]}"
python3 - "$work/www" "${sizes[@]}" <<'PY'
import json, os, sys
root = sys.argv[1]
for n in map(int, sys.argv[2:]):
    d = os.path.join(root, str(n), "streams/v1")
    os.makedirs(d, exist_ok=True)
    products = {}
    for i in range(n):
        pid = f"os{i}:rel:amd64:default"
        products[pid] = {"aliases": f"os{i}/rel", "arch": "amd64", "os": f"os{i}", "release": "rel",
            "release_title": "rel", "variant": "default", "versions": {"20240101_00:00": {"items": {
            "incus.tar.xz": {"ftype": "incus.tar.xz", "path": f"images/{i}/incus.tar.xz", "sha256": "aa", "size": 1,
                             "combined_squashfs_sha256": f"{i:064x}"},
            "root.squashfs": {"ftype": "squashfs", "path": f"images/{i}/rootfs.squashfs", "sha256": "bb", "size": 1}}}}}
    json.dump({"content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
               "products": products}, open(os.path.join(d, "images.json"), "w"))
    json.dump({"format": "index:1.0", "index": {"images": {"datatype": "image-downloads", "format": "products:1.0",
               "path": "streams/v1/images.json", "products": list(products)}}}, open(os.path.join(d, "index.json"), "w"))
PY
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$port" >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
first=
for n in "${sizes[@]}"; do
    out="$work/out-$n"
    t0=$(now)
    /usr/bin/time -f '%M' -o "$work/rss" "$ssb" -t "$out" mirror pull "http://127.0.0.1:$port/$n" --os none 2>/dev/null
    t1=$(now)
    ms_taken=$(ms "$t0" "$t1")
    per=$(awk -v m="$ms_taken" -v n="$n" 'BEGIN { printf "%.4f", m / n }')
    [ -n "$first" ] || first=$per
    printf '%8d products: %7d ms, %6.0f MiB peak RSS, %s ms/product (x%s of the first)\n' \
        "$n" "$ms_taken" "$(awk -v k="$(cat "$work/rss")" 'BEGIN { print k / 1024 }')" "$per" \
        "$(awk -v a="$per" -v b="$first" 'BEGIN { printf "%.2f", a / b }')"
done
