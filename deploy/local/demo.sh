#!/usr/bin/env bash
# One command from a fresh machine to a running pipeline: starts the local stack, runs the
# default topology (topology.yaml) in the background, and sends the demo load through it.
# The stack and the pipeline keep running afterwards; deploy/local/down.sh stops them.
# Demo arguments (e.g. --events 5000 --rate 500) are passed to `erpstream demo`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ERPSTREAM_ROOT"
deploy/local/up.sh
source "$ERPSTREAM_STATE_DIR/secrets.env"
bin=$(cat "$ERPSTREAM_STATE_DIR/run/erpstream.bin")
pidfile="$ERPSTREAM_STATE_DIR/run/pipeline.pid"
if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
  echo "[demo] starting the pipeline (log: $ERPSTREAM_STATE_DIR/log/pipeline.log)" >&2
  nohup "$bin" run --topology topology.yaml >"$ERPSTREAM_STATE_DIR/log/pipeline.log" 2>&1 &
  echo $! > "$pidfile"
fi
for _ in $(seq 1 600); do
  curl -fsS "http://${ERPSTREAM_LISTEN:-127.0.0.1:8080}/readyz" >/dev/null 2>&1 && break
  kill -0 "$(cat "$pidfile")" 2>/dev/null || { echo "[demo] the pipeline exited; see $ERPSTREAM_STATE_DIR/log/pipeline.log" >&2; exit 1; }
  sleep 0.1
done
mkdir -p "$ERPSTREAM_STATE_DIR/reports"
"$bin" demo --target "http://${ERPSTREAM_LISTEN:-127.0.0.1:8080}" --report "$ERPSTREAM_STATE_DIR/reports/demo.json" "$@"
echo "[demo] report: $ERPSTREAM_STATE_DIR/reports/demo.json; metrics: http://${ERPSTREAM_LISTEN:-127.0.0.1:8080}/metrics; stop with deploy/local/down.sh" >&2
