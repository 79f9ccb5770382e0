#!/usr/bin/env bash
# Stops exactly what up.sh (and demo.sh) started, by their pid files. Data stays in
# $ERPSTREAM_STATE_DIR; delete that directory for a clean slate.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
state="$ERPSTREAM_STATE_DIR"
stop() {
  local name=$1 pidfile="$state/run/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    echo "[down] stopping $name ($pid)" >&2
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pidfile"
}
stop pipeline
stop registry
stop tansu
# The benchmarks' mock broker (bench/stack.sh with BROKER=mock).
stop bench-broker
if [ -f "$state/pg/PG_VERSION" ]; then
  as_pg=(); [ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
  if "${as_pg[@]}" "$ERPSTREAM_PG_BIN/pg_ctl" -D "$state/pg" status >/dev/null 2>&1; then
    echo "[down] stopping Postgres" >&2
    "${as_pg[@]}" "$ERPSTREAM_PG_BIN/pg_ctl" -D "$state/pg" -m fast -w stop >/dev/null
  fi
fi
