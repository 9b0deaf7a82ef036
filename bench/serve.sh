#!/usr/bin/env bash
# Our `serve` against nginx (Debian nginx-light, sendfile on, gzip_static for the catalog's
# .gz twins, HTTP/2 on TLS as ours) on the same tree, in one run, plain HTTP and TLS 1.3 with
# the same certificate:
#   - one 1 GiB download with curl (median of 3, nginx and ours in turn), over TLS both with
#     HTTP/2 (what curl and browsers pick) and HTTP/1.1;
#   - 100 parallel downloads of a 100 MiB file (aggregate throughput, median of 3 rounds with
#     nginx and ours in turn; our peak RSS over the three);
#   - wrk -t2 -c32 on a 30-product images.json, with and without gzip;
#   - wrk -t2 -c32 of 304 revalidations (If-None-Match with each server's own ETag).
# Prints each figure for both and the ratio ours / nginx (targets: downloads >= 0.95x,
# catalog >= 1.0x). Client and servers share this machine's cores. It prints the machine's TCP
# congestion control: BBR without the fq qdisc paces every connection in the kernel, which holds
# nginx's plain-HTTP sendfile to about a quarter of its cubic speed (docs/benchmarks.md).
#
# `cost` instead: what the 100 parallel downloads over TLS cost each server, 3 rounds with
# nginx and ours in turn: MiB/s, the server's CPU (user + system of all its processes, from
# /proc/PID/stat), its threads' involuntary context switches, and the wake-ups of every task on
# the machine (`perf stat -a -e sched:sched_wakeup`, when perf can) while it runs.
#
# Usage: bench/serve.sh [SECONDS] [all|downloads|catalog|cost]   (wrk duration, default 10)
#   SSB_BIN=path   measure this binary instead of a release build of this checkout
#   TMPDIR=dir     where the tree goes (default /var/tmp; needs about 1.2 GiB)
set -euo pipefail
cd "$(dirname "$0")"
. ./lib.sh
secs=${1:-10}
parts=${2:-all}
case "$parts" in all | downloads | catalog | cost) ;; *) echo "usage: $0 [SECONDS] [all|downloads|catalog|cost]" >&2; exit 2 ;; esac
ssb=$(ssb_binary)
bench_scratch serve
nginx_pid=
ssb_pids=()
stop_servers() {
    [ -z "$nginx_pid" ] || kill "$nginx_pid" 2>/dev/null || true
    for p in "${ssb_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap 'stop_servers; bench_cleanup' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The tree: 30 products of 3 versions (tiny images) for the catalog, then the big files.
www="$work/www"
python3 ./tiny_tree.py tree "$www" 30 3 --pad 4096
big="images/os0/1/amd64/default/20240101_00:00"
head -c $((1024 << 20)) /dev/urandom >"$www/$big/big.img"
head -c $((100 << 20)) /dev/urandom >"$www/$big/medium.img"
SSB_CACHE_DIR="$work/cache" "$ssb" publish -t "$www" 2>/dev/null
# nginx's workers run as www-data.
chmod -R a+rX "$work"

# One certificate for both.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod a+r "$work/key.pem"

n_http=$(free_port); n_tls=$(free_port); o_http=$(free_port); o_tls=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log $work/nginx/access.log;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    types { application/json json; application/octet-stream img squashfs; application/x-xz xz; }
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    gzip_static on;
    server {
        listen 127.0.0.1:$n_http;
        listen 127.0.0.1:$n_tls ssl http2;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.3;
        root $www;
    }
}
CONF
nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
"$ssb" serve -t "$www" --listen "127.0.0.1:$o_http" --http >"$work/ssb-http.log" 2>&1 &
ssb_pids+=($!)
http_pid=$!
"$ssb" serve -t "$www" --listen "127.0.0.1:$o_tls" --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
    >"$work/ssb-tls.log" 2>&1 &
ssb_pids+=($!)
tls_pid=$!
for port in $n_http $o_http; do
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/streams/v1/index.json" >/dev/null && break; sleep 0.05; done
done

curl_opts=(-s --noproxy '*' --cacert "$work/cert.pem" -o /dev/null)
url() { # url SERVER(n|o) SCHEME(http|https) PATH
    local port
    case "$1$2" in nhttp) port=$n_http ;; nhttps) port=$n_tls ;; ohttp) port=$o_http ;; ohttps) port=$o_tls ;; esac
    echo "$2://localhost:$port/$3"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
line() { printf '%-44s %12s %12s %8s\n' "$@"; }

in_turn() { # FUNCTION URL_N URL_O [ARGS...]: `FUNCTION URL ARGS...` on nginx's URL and on ours,
    # 3 times in turn, so both meet the same phases of the machine; prints both medians
    local f=$1 a=$2 b=$3 i n=() o=()
    shift 3
    for i in 1 2 3; do
        n+=("$("$f" "$a" "$@")")
        o+=("$("$f" "$b" "$@")")
    done
    for list in "${n[*]}" "${o[*]}"; do
        printf '%s\n' $list | sort -g | sed -n 2p | tr '\n' ' '
    done
}

download_speed() { # MiB/s of one download of URL $1; more curl options after it
    local u=$1
    shift
    curl "${curl_opts[@]}" "$@" -w '%{speed_download}' "$u" | awk '{ printf "%.0f", $1 / 1048576 }'
}

parallel_speed() { # aggregate MiB/s of 100 parallel downloads of the 100 MiB file
    local t0 pids=()
    t0=$(now)
    for _ in $(seq 100); do curl "${curl_opts[@]}" "$1" & pids+=($!); done
    wait "${pids[@]}"
    awk -v ms="$(ms "$t0" "$(now)")" 'BEGIN { printf "%.0f", 100 * 100 / (ms / 1000) }'
}

wrk_rps() { # requests/s of wrk -t2 -c32 on URL with extra header args
    local u=$1; shift
    wrk -t2 -c32 -d"${secs}s" "$@" "$u" | awk '/Requests\/sec/ { printf "%.0f", $2 }'
}

etag_of() { curl -s --noproxy '*' --cacert "$work/cert.pem" -D - -o /dev/null "$1" | awk 'tolower($1) == "etag:" { sub(/\r$/, "", $2); print $2 }'; }

server_cost() { # PID...: CPU ticks and involuntary context switches of these processes
    local p cpu=0 switches=0
    for p in "$@"; do
        cpu=$((cpu + $(cpu_ticks "$p")))
        switches=$((switches + $(cat /proc/"$p"/task/*/status | awk '/^nonvoluntary_ctxt_switches/ { s += $2 } END { print s + 0 }')))
    done
    echo "$cpu $switches"
}

parallel_cost() { # URL PID...: MiB/s, CPU s, involuntary switches, machine wake-ups (or -)
    local url=$1 stat_pid= wakeups=- speed c0 s0 c1 s1
    shift
    if [ "$perf_wakeups" = yes ]; then
        perf stat -a -x, -e sched:sched_wakeup -o "$work/wakeups" 2>/dev/null &
        stat_pid=$!
        sleep 0.3
    fi
    read -r c0 s0 <<<"$(server_cost "$@")"
    speed=$(parallel_speed "$url")
    read -r c1 s1 <<<"$(server_cost "$@")"
    if [ -n "$stat_pid" ]; then
        kill -INT "$stat_pid"
        wait "$stat_pid" || true
        wakeups=$(awk -F, '/sched_wakeup/ { print $1 }' "$work/wakeups")
    fi
    echo "$speed $(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t / hz }') $((s1 - s0)) $wakeups"
}

tcp_line() { # how this machine's TCP sends: the plain-HTTP ratios depend on it (docs/benchmarks.md)
    local cc qdisc
    cc=$(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo unknown)
    qdisc=$(cat /proc/sys/net/core/default_qdisc 2>/dev/null || echo unknown)
    printf 'TCP: congestion control %s, default qdisc %s' "$cc" "$qdisc"
    if [ "$cc" = bbr ] && [ "$qdisc" != fq ]; then
        printf ' (BBR paces in the kernel: nginx'"'"'s sendfile runs at about a quarter of its cubic speed)'
    fi
    echo
}

if [ "$parts" = cost ]; then
    perf_wakeups=$(perf stat -a -e sched:sched_wakeup -- true >/dev/null 2>&1 && echo yes || echo no)
    echo "tree: $www; 100 x 100 MiB over TLS (10,000 MiB) per figure; $(nproc) cores shared by clients and servers"
    tcp_line
    printf '%-7s %-6s %8s %12s %22s %10s\n' round server MiB/s "CPU (s)" "involuntary switches" wake-ups
    for round in 1 2 3; do
        read -r ns nc nw nk <<<"$(parallel_cost "$(url n https "$big/medium.img")" "$nginx_pid" $(pgrep -P "$nginx_pid"))"
        read -r os oc ow ok <<<"$(parallel_cost "$(url o https "$big/medium.img")" "$tls_pid")"
        printf '%-7s %-6s %8s %12s %22s %10s\n' "$round" nginx "$ns" "$nc" "$nw" "$nk" "$round" ours "$os" "$oc" "$ow" "$ok"
        echo "        ours/nginx: MiB/s $(ratio "$os" "$ns"), CPU $(ratio "$oc" "$nc")"
    done
    exit 0
fi

echo "tree: $www; wrk ${secs}s per figure; $(nproc) cores shared by clients and servers"
tcp_line
line "" "nginx" "ours" "ours/nginx"
for scheme in http https; do
    label=$([ "$scheme" = http ] && echo "plain HTTP" || echo "TLS 1.3")
    pid=$([ "$scheme" = http ] && echo "$http_pid" || echo "$tls_pid")
    if [ "$parts" != catalog ]; then
        if [ "$scheme" = http ]; then
            read -r n o <<<"$(in_turn download_speed "$(url n $scheme "$big/big.img")" "$(url o $scheme "$big/big.img")")"
            line "1 GiB download, $label (MiB/s)" "$n" "$o" "$(ratio "$o" "$n")"
        else
            for version in 2 1.1; do
                read -r n o <<<"$(in_turn download_speed "$(url n $scheme "$big/big.img")" "$(url o $scheme "$big/big.img")" "--http$version")"
                line "1 GiB download, $label, HTTP/$version (MiB/s)" "$n" "$o" "$(ratio "$o" "$n")"
            done
        fi
        # Our peak RSS during this part alone: writing 5 to clear_refs resets VmHWM.
        echo 5 >"/proc/$pid/clear_refs"
        # Three rounds: one alone of the same build gave 0.94x to 1.10x nginx's over TLS.
        read -r n o <<<"$(in_turn parallel_speed "$(url n $scheme "$big/medium.img")" "$(url o $scheme "$big/medium.img")")"
        line "100 x 100 MiB in parallel, $label (MiB/s)" "$n" "$o" "$(ratio "$o" "$n")"
        line "  our peak RSS during it (MiB; target < 64)" "" "$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status")" ""
    fi
    [ "$parts" != downloads ] || continue
    cat="streams/v1/images.json"
    n=$(wrk_rps "$(url n $scheme "$cat")" -H 'Accept-Encoding: gzip'); o=$(wrk_rps "$(url o $scheme "$cat")" -H 'Accept-Encoding: gzip')
    line "images.json gzip, $label (req/s)" "$n" "$o" "$(ratio "$o" "$n")"
    n=$(wrk_rps "$(url n $scheme "$cat")"); o=$(wrk_rps "$(url o $scheme "$cat")")
    line "images.json identity, $label (req/s)" "$n" "$o" "$(ratio "$o" "$n")"
    ne=$(etag_of "$(url n $scheme "$cat")"); oe=$(etag_of "$(url o $scheme "$cat")")
    n=$(wrk_rps "$(url n $scheme "$cat")" -H "If-None-Match: $ne"); o=$(wrk_rps "$(url o $scheme "$cat")" -H "If-None-Match: $oe")
    line "images.json 304 revalidation, $label (req/s)" "$n" "$o" "$(ratio "$o" "$n")"
done
printf 'our peak RSS: plain HTTP server %s MiB, TLS server %s MiB (VmHWM, whole run)\n' \
    "$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$http_pid/status")" \
    "$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$tls_pid/status")"
