#!/usr/bin/env bash
# Runs every check: formatting, clippy with warnings denied, and all tests.
# Installs what the build needs on a fresh Debian/Ubuntu machine.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

ensure_build_deps

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo test"
cargo test --workspace --locked
