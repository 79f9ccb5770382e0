#!/usr/bin/env bash
# The pg_cdc benchmark on a fresh broker store: snapshot and streaming rows/s Postgres ->
# Kafka and commit -> broker-ack latency, into bench/results/cdc.json.
#   ROWS=200000 RUNS=3 bench/cdc.sh
#   BROKER=mock bench/cdc.sh    # librdkafka's mock cluster in the bench process: bench/results/cdc-mock.json
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
trap 'deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
fresh_stack
broker_arg=()
[ "$BROKER" = mock ] && broker_arg=(--broker mock)
"$bench" cdc --rows "${ROWS:-200000}" --runs "${RUNS:-3}" "${broker_arg[@]}"
