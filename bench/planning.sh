#!/usr/bin/env bash
# The planning_pg sink benchmark: N inventory records (and their products), pre-encoded,
# through the sink's batch writer into a fresh planning database; records/s into
# bench/results/planning.json.
#   ROWS=200000 RUNS=3 BATCH=10000 bench/planning.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
trap 'deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
fresh_stack
"$bench" planning --rows "${ROWS:-200000}" --runs "${RUNS:-3}" --batch-size "${BATCH:-10000}"
