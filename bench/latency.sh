#!/usr/bin/env bash
# The latency benchmark, measured the same way every time: each run on a fresh broker (store)
# and a fresh pipeline (release build, the default topology), then `erpstream-bench latency`
# at the rate. Fresh per run because both brokers here slow down as their logs grow — tansu's
# sqlite store, and librdkafka's mock, which finds a fetch offset by walking its message sets —
# so a used broker would measure its history, not erpstream (FRESH=rate keeps one broker and
# pipeline for all runs of a rate, to see that history).
# Uses its own state directory and ports, so a running demo stack is left alone.
#
#   bench/latency.sh                       # rates 200 500 1000 2000 5000, 3 runs of 10 s
#   RATES="500 2000" RUNS=5 DURATION=20 bench/latency.sh
#   BROKER=mock RATES="2000 10000" bench/latency.sh   # on the bench broker (see stack.sh)
#   PREFILL=1000000 RATES=500 bench/latency.sh         # on a store that has taken 1M records
#   ERPSTREAM_BROKER_INDEXES=0 ...                      # tansu without erpstream's indexes
#   ERPSTREAM_TANSU_STORAGE=memory://tansu/ ...         # tansu's in-memory engine
#   BROKER=mock ERPSTREAM_KAFKA_TRANSACTIONS=true ...   # processor batches as transactions
#
# Results: bench/results/latency-<broker>[-<engine>][-after-N][-unindexed][-transactions]-<rate>.json per rate and
# bench/results/latency.json (every broker's rates side by side).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; deploy/local/down.sh >/dev/null 2>&1 || true; }
trap cleanup EXIT
runs="${RUNS:-3}"
fresh="${FRESH:-run}"
case "$fresh" in run) per_start=1 ;; rate) per_start="$runs" ;; *) echo "[bench] FRESH=$fresh: expected run or rate" >&2; exit 2 ;; esac
# What the results are filed under: the broker, and how its store was prepared.
label="$BROKER"
case "${ERPSTREAM_TANSU_STORAGE:-sqlite://tansu.db}" in sqlite://tansu.db) ;; *) label="$label-${ERPSTREAM_TANSU_STORAGE%%:*}" ;; esac
[ "${PREFILL:-0}" -gt 0 ] && label="$label-after-$PREFILL"
[ "${ERPSTREAM_BROKER_INDEXES:-1}" = 0 ] && label="$label-unindexed"
[ "${ERPSTREAM_KAFKA_TRANSACTIONS:-false}" = true ] && label="$label-transactions"
for rate in ${RATES:-200 500 1000 2000 5000}; do
  rm -f "bench/results/latency-$label-$rate.json"
  for start in $(seq 1 $((runs / per_start))); do
    echo "[bench] rate $rate/s: fresh broker and pipeline ($start)" >&2
    fresh_stack
    if [ "${PREFILL:-0}" -gt 0 ]; then "$bench" fill --records "$PREFILL" --brokers "$ERPSTREAM_BROKERS"; fi
    "$ERPSTREAM_BIN" run --topology topology.yaml >"$ERPSTREAM_STATE_DIR/log/pipeline-$rate.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 600); do
      curl -fsS "http://$ERPSTREAM_LISTEN/readyz" >/dev/null 2>&1 && break
      kill -0 "$pid" 2>/dev/null || { echo "[bench] pipeline exited; see $ERPSTREAM_STATE_DIR/log/pipeline-$rate.log" >&2; exit 1; }
      sleep 0.1
    done
    "$bench" latency --target "http://$ERPSTREAM_LISTEN" --listen 127.0.0.1:9190 --rate "$rate" \
      --runs "$per_start" --duration "${DURATION:-10}" --broker "$label" --append \
      --conditions "$ERPSTREAM_BENCH_BROKER, fresh per $fresh$([ "${PREFILL:-0}" -gt 0 ] && echo ", store prefilled with $PREFILL records"), release build, default topology.yaml (fetch_wait ${ERPSTREAM_KAFKA_FETCH_WAIT:-5ms}, linger 1ms, idempotence ${ERPSTREAM_KAFKA_IDEMPOTENCE:-false}, transactions ${ERPSTREAM_KAFKA_TRANSACTIONS:-false}), generator, broker and pipeline on the same $(nproc)-core machine"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
"$bench" latency-summary
