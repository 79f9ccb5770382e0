#!/usr/bin/env bash
# The latency benchmark, measured the same way every time: for each rate, a fresh broker
# store (tansu slows down as its sqlite file grows, so a used store would measure history),
# the default topology (release build), then `erpstream-bench latency` at that rate.
# Uses its own state directory and ports, so a running demo stack is left alone.
#
#   bench/latency.sh                       # rates 200 500 1000 2000 5000, 3 runs of 10 s
#   RATES="500 2000" RUNS=5 DURATION=20 bench/latency.sh
#   BROKER=mock RATES="2000 10000" bench/latency.sh   # on the bench broker (see stack.sh)
#
# Results: bench/results/latency-<broker>-<rate>.json per rate and
# bench/results/latency.json (every broker's rates side by side).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; deploy/local/down.sh >/dev/null 2>&1 || true; }
trap cleanup EXIT
for rate in ${RATES:-200 500 1000 2000 5000}; do
  echo "[bench] rate $rate/s: fresh broker store" >&2
  fresh_stack
  "$ERPSTREAM_BIN" run --topology topology.yaml >"$ERPSTREAM_STATE_DIR/log/pipeline-$rate.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    curl -fsS "http://$ERPSTREAM_LISTEN/readyz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { echo "[bench] pipeline exited; see $ERPSTREAM_STATE_DIR/log/pipeline-$rate.log" >&2; exit 1; }
    sleep 0.1
  done
  "$bench" latency --target "http://$ERPSTREAM_LISTEN" --listen 127.0.0.1:9190 --rate "$rate" \
    --runs "${RUNS:-3}" --duration "${DURATION:-10}" \
    --broker "$BROKER" \
    --conditions "$ERPSTREAM_BENCH_BROKER, release build, default topology.yaml (fetch_wait 5ms, linger 1ms, idempotence ${ERPSTREAM_KAFKA_IDEMPOTENCE:-false}), generator, broker and pipeline on the same $(nproc)-core machine"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
"$bench" latency-summary
