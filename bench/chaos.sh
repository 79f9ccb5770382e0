#!/usr/bin/env bash
# The chaos run: the default topology (plus a rest_poll source on the test ERPNext server)
# on a fresh local stack — tansu, Postgres, the registry, release build — under a mixed load
# of signed webhooks, storefront orders and adjustments, pg_cdc row changes, polled ERPNext
# Bins and planning sync batches, while a seeded schedule SIGKILLs the pipeline, restarts
# the broker (kill -9 and graceful) and Postgres (immediate), and takes the storefront, the
# ERP and the registry down. Then the checks (bench/src/chaos/checks.rs); a failed check
# exits non-zero. Uses the benchmarks' own state directory and ports (bench/stack.sh), wiped
# first, so a running demo stack is left alone.
#
#   bench/chaos.sh                               # seed 1: 600 s at 180 events/s, 1 replica
#   SEEDS="1 2" bench/chaos.sh                   # one fresh run per seed
#   DURATION=120 RATE=100 KILLS=5 bench/chaos.sh # a short run
#   REPLICAS=2 bench/chaos.sh                    # kills hit a random replica
#   TRACE_GROUPS=1 bench/chaos.sh                # librdkafka consumer-group decisions in the logs
#
# Results: bench/results/chaos-seed-<seed>.json per run (counts, the faults as executed with
# timestamps, latency, DLQ records with their reasons, examples of any failure) and
# bench/results/chaos.json (every seed's summary). Logs: .erpstream-bench/chaos-<seed>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
[ "$BROKER" = tansu ] || { echo "[chaos] runs on the local stack (BROKER=tansu): it restarts the broker" >&2; exit 2; }
# The pipelines the run started (if it was interrupted), then the stack.
trap 'pkill -f "run --topology $ERPSTREAM_STATE_DIR/chaos-" 2>/dev/null || true; deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
status=0
for seed in ${SEEDS:-1}; do
  echo "[chaos] seed $seed: a fresh stack" >&2
  deploy/local/down.sh >/dev/null 2>&1 || true
  rm -rf "$ERPSTREAM_STATE_DIR"
  fresh_stack
  "$bench" chaos --seed "$seed" --duration "${DURATION:-600}" --rate "${RATE:-180}" \
    --replicas "${REPLICAS:-1}" --kills "${KILLS:-20}" ${TRACE_GROUPS:+--trace-groups} \
    --conditions "$ERPSTREAM_BENCH_BROKER, release build, load generator, broker, Postgres and pipeline on the same $(nproc)-core machine" \
    || status=1
done
exit $status
