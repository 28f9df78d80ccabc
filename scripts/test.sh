#!/usr/bin/env bash
# Runs every check: formatting, clippy with warnings denied, and all tests.
# Installs what the build needs on a fresh Debian/Ubuntu machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

ensure_build_deps
ensure_prometheus
ensure_openrpc_schemas

echo "==> one RocksDB build for every command"
python3 scripts/check-rocksdb-build.py
echo "==> cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path tests/fuzz/Cargo.toml -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The attack modes compile only with the node's `byzantine` feature.
cargo clippy --workspace --all-targets --locked --features phalanx-node/byzantine -- -D warnings
echo "==> cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary, the
# last of which is often an empty doc-test run).
awk '/^test result:/ { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$log"
[ "$status" -eq 0 ] || exit "$status"
# Every fuzz target replays its seeds and past crashes, then fuzzes a while.
echo "==> fuzz smoke"
./scripts/fuzz.sh smoke "${FUZZ_SECONDS:-30}"
