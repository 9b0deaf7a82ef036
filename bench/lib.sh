# Shared by the bench scripts, which source it.

# Prints the absolute path of the simplestreams-builder to measure: $SSB_BIN when set (a
# relative path is taken from where the script was started; the tools run in other folders),
# else a release build of this checkout, made first.
ssb_binary() {
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if [ -n "${SSB_BIN:-}" ]; then
        realpath -e "$SSB_BIN"
    else
        cargo build --release --quiet --manifest-path "$repo/Cargo.toml" --bin simplestreams-builder >&2
        realpath -e "${CARGO_TARGET_DIR:-$repo/target}/release/simplestreams-builder"
    fi
}

# Makes the scratch folder $work for bench NAME (under $TMPDIR, default /var/tmp: inputs and
# outputs on one disk) and removes it at exit, stopping the server in $server_pid first if one
# was started.
bench_scratch() {
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/ssb-$1-bench.XXXXXX")
    server_pid=
    trap bench_cleanup EXIT
}

bench_cleanup() {
    if [ -n "${server_pid:-}" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}

# Seconds since the epoch, with nanoseconds.
now() { date +%s.%N; }
# Milliseconds from time $1 to time $2.
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }

# CPU ticks (user + system, in CLK_TCK units) process $1 has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
