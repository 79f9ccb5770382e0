#!/usr/bin/env bash
# The reconcile benchmark: `erpstream reconcile` (release) of PAIRS sku × location pairs with
# PLANTED differences of each kind; time and peak memory into bench/results/reconcile.json.
# Needs no running stack (the picture and the state are files).
#   PAIRS=1000000 PLANTED=1000 RUNS=3 bench/reconcile.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p erpstream-pipeline -p erpstream-bench
ERPSTREAM_BIN="$target/release/erpstream" "$target/release/erpstream-bench" reconcile \
  --pairs "${PAIRS:-1000000}" --planted "${PLANTED:-1000}" --runs "${RUNS:-3}"
