#!/usr/bin/env bash
# What an idle pipeline costs: the default topology on a fresh broker with no load, CPU
# seconds of the broker and of the pipeline over SECONDS_ (20) once it is ready, into
# bench/results/idle-<broker>[-<label>].json.
#   bench/idle.sh
#   PLANNING_FETCH_WAIT=5ms LABEL=planning-5ms bench/idle.sh   # the planning sink polling
#                                                             # like the others (earlier builds)
#   ERPSTREAM_KAFKA_IDLE_PAUSE=0s LABEL=no-pause bench/idle.sh  # idle consumers never pause
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; deploy/local/down.sh >/dev/null 2>&1 || true; }
trap cleanup EXIT
fresh_stack
topology="$ERPSTREAM_STATE_DIR/idle-topology.yaml"
cp topology.yaml "$topology"
if [ -n "${PLANNING_FETCH_WAIT:-}" ]; then
  sed -i "/type: planning_pg/a\\    fetch_wait: $PLANNING_FETCH_WAIT" "$topology"
fi
"$ERPSTREAM_BIN" run --topology "$topology" >"$ERPSTREAM_STATE_DIR/log/pipeline-idle.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  curl -sf "http://$ERPSTREAM_LISTEN/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://$ERPSTREAM_LISTEN/readyz" >/dev/null || { echo "[idle] the pipeline did not get ready" >&2; exit 1; }
sleep 5
broker_pid="$(cat "$ERPSTREAM_STATE_DIR/run/tansu.pid" 2>/dev/null || cat "$ERPSTREAM_STATE_DIR/run/bench-broker.pid")"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
seconds="${SECONDS_:-20}"
b0=$(ticks "$broker_pid"); p0=$(ticks "$pid")
sleep "$seconds"
b1=$(ticks "$broker_pid"); p1=$(ticks "$pid")
hz=$(getconf CLK_TCK)
broker_cpu=$(awk -v a="$b0" -v b="$b1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')
pipeline_cpu=$(awk -v a="$p0" -v b="$p1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')
name="idle-$BROKER${LABEL:+-$LABEL}"
mkdir -p bench/results
cat > "bench/results/$name.json" <<JSON
{
  "benchmark": "idle",
  "machine": { "cores": $(nproc), "taken_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "profile": "release" },
  "settings": { "broker": "$ERPSTREAM_BENCH_BROKER", "topology": "topology.yaml${PLANNING_FETCH_WAIT:+, planning_pg fetch_wait $PLANNING_FETCH_WAIT}", "fetch_wait": "${ERPSTREAM_KAFKA_FETCH_WAIT:-5ms}", "idle_pause": "${ERPSTREAM_KAFKA_IDLE_PAUSE:-1s}", "idle_poll": "${ERPSTREAM_KAFKA_IDLE_POLL:-1s}", "seconds": $seconds },
  "broker_cpu_seconds": $broker_cpu,
  "pipeline_cpu_seconds": $pipeline_cpu,
  "broker_share_of_a_core": $(awk -v c="$broker_cpu" -v s="$seconds" 'BEGIN { printf "%.2f", c / s }')
}
JSON
echo "[idle] $name: broker $broker_cpu CPU-s, pipeline $pipeline_cpu CPU-s in $seconds s (bench/results/$name.json)"
