#!/usr/bin/env bash
# The pg_cdc benchmark on a fresh broker store: snapshot and streaming rows/s Postgres ->
# Kafka and commit -> broker-ack latency, into bench/results/cdc.json.
#   ROWS=200000 RUNS=3 bench/cdc.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
trap 'deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
fresh_stack
"$bench" cdc --rows "${ROWS:-200000}" --runs "${RUNS:-3}"
