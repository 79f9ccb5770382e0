#!/usr/bin/env bash
# Where the pipeline's CPU goes on the webhook -> storefront path: the default topology under
# the latency benchmark's open-loop load, sampled with `perf record` (DWARF call graphs) for
# SECONDS while it runs, and the CPU seconds of the pipeline, the broker and the load
# generator over the same window.
#
#   BROKER=mock RATE=2500 SECONDS_=6 bench/profile.sh
#
# Writes bench/results/profile-<broker>-<rate>.txt (CPU split, then the hottest call paths by
# inclusive share) and keeps the raw samples in .erpstream-bench/perf.data for `perf report`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stack.sh"
command -v perf >/dev/null || { echo "[profile] needs perf (Debian: linux-perf)" >&2; exit 2; }
rate="${RATE:-2500}" seconds="${SECONDS_:-6}"
pid="" load=""
cleanup() {
  [ -n "$load" ] && kill "$load" 2>/dev/null
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  rm -f bench/results/latency-profile-*.json
  deploy/local/down.sh >/dev/null 2>&1 || true
}
trap cleanup EXIT
fresh_stack
"$ERPSTREAM_BIN" run --topology topology.yaml >"$ERPSTREAM_STATE_DIR/log/pipeline-profile.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do curl -fsS "http://$ERPSTREAM_LISTEN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
"$bench" latency --target "http://$ERPSTREAM_LISTEN" --listen 127.0.0.1:9190 --rate "$rate" \
  --runs 1 --duration $((seconds + 6)) --broker profile >"$ERPSTREAM_STATE_DIR/log/profile-load.log" 2>&1 &
load=$!
sleep 3
if [ "$BROKER" = mock ]; then broker_pid=$(cat "$ERPSTREAM_STATE_DIR/run/bench-broker.pid"); else broker_pid=$(cat "$ERPSTREAM_STATE_DIR/run/tansu.pid"); fi
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
p0=$(ticks "$pid") b0=$(ticks "$broker_pid") g0=$(ticks "$load")
perf record -F 199 --call-graph dwarf,16384 -o "$ERPSTREAM_STATE_DIR/perf.data" -p "$pid" -- sleep "$seconds" >/dev/null 2>&1
p1=$(ticks "$pid") b1=$(ticks "$broker_pid") g1=$(ticks "$load")
wait "$load" || true; load=""
out="bench/results/profile-$BROKER-$rate.txt"
{
  echo "# bench/profile.sh: BROKER=$BROKER ($ERPSTREAM_BENCH_BROKER) RATE=$rate/s, ${seconds}s sampled, $(nproc) cores, $(date -u +%FT%TZ)"
  echo "# CPU seconds in the window (perf's own overhead included in the pipeline's):"
  awk -v p=$((p1 - p0)) -v b=$((b1 - b0)) -v g=$((g1 - g0)) -v s="$seconds" -v r="$rate" 'BEGIN {
    printf "#   pipeline %.2f s (%.0f us per event), broker %.2f s, generator+receiver %.2f s\n", p/100, p/100/(s*r)*1e6, b/100, g/100 }'
  grep '"latency_ms"' "$ERPSTREAM_STATE_DIR/log/profile-load.log" | sed 's/^/# load: /' || true
  echo "# Threads by share of the pipeline's samples:"
  perf report -i "$ERPSTREAM_STATE_DIR/perf.data" --no-children --sort comm --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed 's/^/#   /'
  echo "# Hottest call paths (inclusive share, erpstream, tokio-free frames):"
  perf report -i "$ERPSTREAM_STATE_DIR/perf.data" --children --sort symbol --stdio -g none --percent-limit 2 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed 's/  */ /g' | cut -c1-170 \
    | grep -v -E '\(inlined\)|tokio::runtime|catch_unwind|do_call|call_once|poll_future|poll_inner|with_mut|start_thread|clone3|thread_start|__rust_begin' \
    | head -60
} > "$out"
cat "$out" >&2
echo "[profile] written to $out; samples in $ERPSTREAM_STATE_DIR/perf.data" >&2
