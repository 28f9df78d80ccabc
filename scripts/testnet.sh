#!/usr/bin/env bash
# Starts a local 4-validator testnet with Prometheus, puts a short load on
# it, and prints where to look. The testnet keeps running; stop it with
#   phalanx-testnet down --dir "$TESTNET_DIR"
# Installs what it needs on a fresh Debian/Ubuntu machine with Rust.
#
# Environment: TESTNET_DIR (default ./.testnet; an old testnet there is
# stopped and replaced), VALIDATORS (4), LOAD_RATE (2000 transfers/s),
# LOAD_SECONDS (20).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

ensure_build_deps
ensure_prometheus

dir="${TESTNET_DIR:-$PWD/.testnet}"
echo "==> building phalanx and phalanx-testnet (release)"
cargo build --release --locked -p phalanx-node -p phalanx-testnet
bin="$CARGO_TARGET_DIR/release"
tn="$bin/phalanx-testnet"

if [ -e "$dir/testnet.json" ]; then
    echo "==> replacing the testnet in $dir"
    "$tn" down --dir "$dir" >/dev/null || true
fi
rm -rf "$dir"

echo "==> starting ${VALIDATORS:-4} validators and Prometheus"
"$tn" up --dir "$dir" --validators "${VALIDATORS:-4}" --prometheus
echo
echo "==> load: ${LOAD_RATE:-2000} transfers/s for ${LOAD_SECONDS:-20} s"
"$tn" bench --dir "$dir" --rate "${LOAD_RATE:-2000}" --duration "${LOAD_SECONDS:-20}"
echo
"$tn" status --dir "$dir"
rpc=$(sed -n 's/.*"rpc_url": "\(.*\)".*/\1/p' "$dir/testnet.json" | head -1)
prom=$(sed -n '/"prometheus"/,$ s/.*"url": "\(.*\)".*/\1/p' "$dir/testnet.json" | head -1)
to=$("$bin/phalanx" keys show --key "$dir/accounts/account-1.key" --json \
    | sed -n 's/.*"address": *"\([0-9a-f]*\)".*/\1/p')
cat <<INFO

Where to look:
  JSON-RPC     $rpc   (e.g. $bin/phalanx status --rpc $rpc)
  metrics      each node's metrics_url in $dir/testnet.json (/metrics)
  Prometheus   $prom   (graphs: $prom/graph, alerts: $prom/alerts)
  dashboard    $dir/prometheus/phalanx-dashboard.json (import into Grafana,
               data source: the Prometheus above)
  demo keys    $dir/accounts/account-0.key … account-3.key (funded), e.g.
               $bin/phalanx tx send --rpc $rpc \\
                   --key $dir/accounts/account-0.key --to $to --amount 5
  logs         $dir/node-*/node.log
  more load    $tn bench --dir $dir --rate 5000 --duration 30
  perturb      $tn kill|restart|pause|resume --dir $dir --node 1
  stop         $tn down --dir $dir
INFO
