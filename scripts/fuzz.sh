#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of every decoder a peer or
# a client reaches. Targets and fixtures: tests/fuzz.
#
#   scripts/fuzz.sh smoke [SECONDS]     every target: replay its seeds and
#                                       regressions, then fuzz SECONDS (30)
#   scripts/fuzz.sh run TARGET SECONDS  one long run; the corpus it grows
#                                       stays in $FUZZ_CORPUS (default under
#                                       the target directory)
#   scripts/fuzz.sh seeds               rewrite tests/fuzz/seeds
#
# A crash leaves its input in tests/fuzz/artifacts/TARGET/; copy it to
# tests/fuzz/regressions/TARGET/ with the fix, and every later smoke run
# replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_build_deps

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2

# The fuzz build instruments the node's code but links the RocksDB library
# the main build already compiled, instead of compiling it again (about 20
# minutes) with other flags: librocksdb-sys takes a prebuilt library from
# ROCKSDB_LIB_DIR.
rocksdb_lib() {
    find "$CARGO_TARGET_DIR"/debug/build -path '*librocksdb-sys-*/out/librocksdb.a' 2>/dev/null \
        | head -n 1
}
if [ -z "$(rocksdb_lib)" ]; then
    echo "==> building RocksDB once (the fuzz build links it)"
    cargo build --locked -p phalanx-storage
fi
ROCKSDB_LIB_DIR="$(dirname "$(rocksdb_lib)")"
export ROCKSDB_LIB_DIR ROCKSDB_STATIC=1
# cargo fuzz asks rustc for unstable flags; this is the one stable toolchain.
export RUSTC_BOOTSTRAP=1

FUZZ=(cargo fuzz)
OPTS=(--fuzz-dir tests/fuzz --sanitizer none --release --debug-assertions)
TARGETS=(consensus_message transaction tx_batch state_sync rpc_request)
CORPUS_ROOT="${FUZZ_CORPUS:-$CARGO_TARGET_DIR/fuzz-corpus}"

corpus_dirs() {
    local t=$1 dirs=("$CORPUS_ROOT/$t" "tests/fuzz/seeds/$t")
    mkdir -p "$CORPUS_ROOT/$t"
    [ -d "tests/fuzz/regressions/$t" ] && dirs+=("tests/fuzz/regressions/$t")
    echo "${dirs[@]}"
}

case "${1:-smoke}" in
    smoke)
        secs="${2:-30}"
        echo "==> cargo clippy (fuzz targets)"
        cargo clippy --manifest-path tests/fuzz/Cargo.toml --all-targets -- -D warnings
        "${FUZZ[@]}" build "${OPTS[@]}"
        for t in "${TARGETS[@]}"; do
            # shellcheck disable=SC2046
            dirs=$(corpus_dirs "$t")
            echo "==> fuzz $t: replay seeds and regressions"
            # shellcheck disable=SC2086
            "${FUZZ[@]}" run "${OPTS[@]}" "$t" $(echo $dirs | cut -d' ' -f2-) -- -runs=0
            echo "==> fuzz $t: ${secs} s"
            log="$(mktemp)"
            # shellcheck disable=SC2086
            if ! "${FUZZ[@]}" run "${OPTS[@]}" "$t" $dirs -- -max_total_time="$secs" \
                -print_final_stats=1 >"$log" 2>&1; then
                cat "$log"
                echo "fuzz $t: failed (input under tests/fuzz/artifacts/$t)" >&2
                exit 1
            fi
            grep -E '^(Done|stat::new_units_added)' "$log" || true
            rm -f "$log"
        done
        ;;
    run)
        t="${2:?target}"
        secs="${3:?seconds}"
        # shellcheck disable=SC2046
        "${FUZZ[@]}" run "${OPTS[@]}" "$t" $(corpus_dirs "$t") -- -max_total_time="$secs" -print_final_stats=1
        ;;
    seeds)
        (cd tests/fuzz && cargo run --example seeds)
        ;;
    *)
        echo "usage: $0 smoke [SECONDS] | run TARGET SECONDS | seeds" >&2
        exit 2
        ;;
esac
