#!/usr/bin/env bash
# The footprint benchmark on a fresh broker store: writes N keys of inventory state to a
# compacted changelog topic, restores them like a starting pipeline, records restore time
# and RSS in bench/results/footprint.json.   SKUS=1000000 bench/footprint.sh
#   BROKER=mock bench/footprint.sh   # librdkafka's mock cluster in the bench process, 48
#                                    # partitions (it keeps ~5 MiB each): footprint-mock.json
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
trap 'deploy/local/down.sh >/dev/null 2>&1 || true' EXIT
fresh_stack
broker_arg=(--partitions "${PARTITIONS:-3}")
[ "$BROKER" = mock ] && broker_arg=(--broker mock --partitions "${PARTITIONS:-48}")
"$bench" footprint --skus "${SKUS:-1000000}" --locations "${LOCATIONS:-1}" "${broker_arg[@]}"
