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
