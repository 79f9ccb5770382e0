#!/usr/bin/env bash
# The rest_poll benchmark on a fresh broker store: N items with stock in 3 warehouses from an
# ERPNext-shaped server to the broker; HTTP calls and seconds, into bench/results/rest_poll.json.
#   ITEMS=10000 RUNS=3 bench/rest_poll.sh
#   BROKER=mock bench/rest_poll.sh    # on librdkafka's mock cluster: bench/results/rest_poll-mock.json
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
trap 'deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
fresh_stack
broker_arg=()
[ "$BROKER" = mock ] && broker_arg=(--broker mock)
"$bench" rest-poll --items "${ITEMS:-10000}" --runs "${RUNS:-3}" "${broker_arg[@]}"
