#!/usr/bin/env bash
# Starts the local stack: Postgres 15 (wal_level=logical), the tansu broker and the
# erpstream schema registry. Idempotent: what already runs is left alone. Installs tansu
# 0.6.0 with cargo and the Debian packages of deploy/local/packages.sh if they are missing.
# Settings: deploy/local/env.sh.
#
# ERPSTREAM_BIN: the erpstream binary to run the registry with (default: build release).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
state="$ERPSTREAM_STATE_DIR"
mkdir -p "$state/run" "$state/log"

log() { printf '[up] %s\n' "$*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() { # what, seconds, command...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq 1 $((seconds * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "$what did not come up in ${seconds}s; see $state/log"; return 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# --- binaries -------------------------------------------------------------------------
"$(dirname "${BASH_SOURCE[0]}")/packages.sh"
if ! command -v tansu >/dev/null 2>&1 || ! tansu --version 2>/dev/null | grep -q '0\.6\.0'; then
  log "installing tansu 0.6.0 (about 10-20 minutes on 2 cores, once)"
  cargo install tansu --version 0.6.0 --locked --features libsql
fi
if [ -z "${ERPSTREAM_BIN:-}" ]; then
  log "building erpstream (release)"
  (cd "$ERPSTREAM_ROOT" && cargo build --release --bin erpstream)
  ERPSTREAM_BIN="${CARGO_TARGET_DIR:-$ERPSTREAM_ROOT/target}/release/erpstream"
fi
[ -x "$ERPSTREAM_BIN" ] || { log "ERPSTREAM_BIN=$ERPSTREAM_BIN is not executable"; exit 1; }
echo "$ERPSTREAM_BIN" > "$state/run/erpstream.bin"

# --- Postgres -------------------------------------------------------------------------
pgdata="$state/pg"
as_pg=()
if [ "$(id -u)" = 0 ]; then
  # Postgres refuses to run as root; the Debian package's postgres user runs it.
  id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  as_pg=(runuser -u postgres --)
fi
if [ ! -f "$pgdata/PG_VERSION" ]; then
  log "creating Postgres cluster in $pgdata"
  mkdir -p "$pgdata" "$state/pg-socket"
  [ "$(id -u)" = 0 ] && chown postgres "$pgdata" "$state/pg-socket"
  chmod 700 "$pgdata"
  "${as_pg[@]}" "$ERPSTREAM_PG_BIN/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 >"$state/log/initdb.log"
  cat >>"$pgdata/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $ERPSTREAM_PG_PORT
unix_socket_directories = '$state/pg-socket'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_connections = 200
CONF
fi
if ! "${as_pg[@]}" "$ERPSTREAM_PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
  log "starting Postgres on 127.0.0.1:$ERPSTREAM_PG_PORT"
  touch "$state/log/postgres.log"; [ "$(id -u)" = 0 ] && chown postgres "$state/log/postgres.log"
  "${as_pg[@]}" "$ERPSTREAM_PG_BIN/pg_ctl" -D "$pgdata" -l "$state/log/postgres.log" -w -t 60 start >/dev/null
fi
psql_() { psql -h 127.0.0.1 -p "$ERPSTREAM_PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
if [ "$(psql_ -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'erpstream'")" != 1 ]; then
  psql_ -d postgres -c "CREATE DATABASE erpstream"
fi
[ "$(psql_ -d postgres -c 'SHOW wal_level')" = logical ] || { log "wal_level is not logical"; exit 1; }
# The ERP database the default topology's pg_cdc source captures (an ERPNext-like Bin table).
if [ "$(psql_ -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'erp'")" != 1 ]; then
  psql_ -d postgres -c "CREATE DATABASE erp"
fi
PGOPTIONS="-c client_min_messages=warning" psql_ -d erp -c "CREATE TABLE IF NOT EXISTS public.bin (
  item_code text NOT NULL, warehouse text NOT NULL,
  actual_qty numeric(18,3) NOT NULL DEFAULT 0, reserved_qty numeric(18,3) NOT NULL DEFAULT 0,
  modified timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (item_code, warehouse))"

# The planning database (the planning_pg sink and planning_api migrate its schema).
if [ "$(psql_ -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'planning'")" != 1 ]; then
  psql_ -d postgres -c "CREATE DATABASE planning"
fi

# --- broker ---------------------------------------------------------------------------
# ERPSTREAM_LOCAL_BROKER=none leaves the broker out (the benchmarks bring their own).
# ERPSTREAM_FRESH_BROKER=1 starts it on an empty store (the test suite: its topics are its
# own, and a store that has taken every earlier run's records only makes it slower).
# ERPSTREAM_TANSU_STORAGE picks tansu's storage engine (default: sqlite in the state
# directory; memory://tansu/ keeps nothing across a restart — for the engine comparison).
tansu_storage="${ERPSTREAM_TANSU_STORAGE:-sqlite://tansu.db}"
if [ "${ERPSTREAM_LOCAL_BROKER:-tansu}" != none ] && ! alive "$state/run/tansu.pid"; then
  if port_open "$ERPSTREAM_KAFKA_PORT"; then log "port $ERPSTREAM_KAFKA_PORT is taken by another process"; exit 1; fi
  if [ "${ERPSTREAM_FRESH_BROKER:-0}" = 1 ]; then
    log "starting the broker on an empty store"
    rm -f "$state"/tansu.db "$state"/tansu.db-*
  fi
  log "starting tansu on 127.0.0.1:$ERPSTREAM_KAFKA_PORT"
  # tansu resolves sqlite:// paths against its working directory.
  (cd "$state" && exec nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$ERPSTREAM_KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$ERPSTREAM_KAFKA_PORT" \
    --storage-engine "$tansu_storage" \
    >>"$state/log/tansu.log" 2>&1) &
  echo $! > "$state/run/tansu.pid"
  wait_for tansu 30 port_open "$ERPSTREAM_KAFKA_PORT"
fi
# tansu 0.6.0's sqlite schema has no index to find a record's headers (every fetched record
# scanned every header ever stored — and erpstream's records all carry a traceparent — and
# so did each cascade delete of its compaction) or a partition's watermark. That is what made
# the local broker slower with every record taken. The indexes are added once its schema
# exists; idempotent, and the store stays readable by tansu. (ERPSTREAM_BROKER_INDEXES=0
# leaves them out, for the benchmark that shows the difference.)
if [ "${ERPSTREAM_LOCAL_BROKER:-tansu}" != none ] && [ "${ERPSTREAM_BROKER_INDEXES:-1}" != 0 ] \
  && [ "$tansu_storage" = sqlite://tansu.db ]; then
  if command -v sqlite3 >/dev/null 2>&1; then
    wait_for "tansu's store" 30 sqlite3 "$state/tansu.db" "select 1 from header limit 1; select 1 from watermark limit 1"
    sqlite3 -cmd ".timeout 10000" "$state/tansu.db" \
      "create index if not exists erpstream_header_by_record on header (topition, offset_id);
       create index if not exists erpstream_watermark_by_topition on watermark (topition);"
  else
    log "sqlite3 not found: the broker's store is left without its indexes (it slows as it grows)"
  fi
fi

# --- registry -------------------------------------------------------------------------
if ! alive "$state/run/registry.pid"; then
  if port_open "$ERPSTREAM_REGISTRY_PORT"; then log "port $ERPSTREAM_REGISTRY_PORT is taken by another process"; exit 1; fi
  log "starting the schema registry on 127.0.0.1:$ERPSTREAM_REGISTRY_PORT"
  nohup "$ERPSTREAM_BIN" registry --listen "127.0.0.1:$ERPSTREAM_REGISTRY_PORT" \
    --database-url "$ERPSTREAM_DATABASE_URL" >>"$state/log/registry.log" 2>&1 &
  echo $! > "$state/run/registry.pid"
  wait_for registry 30 curl -fsS "$ERPSTREAM_REGISTRY_URL/subjects"
fi

# --- dev secrets (generated once, never committed) ------------------------------------
if [ ! -f "$state/secrets.env" ]; then
  umask 077
  {
    echo "export ERP_WEBHOOK_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    echo "export STOREFRONT_WEBHOOK_SECRET=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  } > "$state/secrets.env"
fi
# Secrets added by later versions, appended to an existing file.
for name in STOREFRONT_API_TOKEN ERP_API_TOKEN PLANNING_ADMIN_TOKEN PLANNING_COORDINATOR_TOKEN \
  CONSOLE_OPERATOR_TOKEN CONSOLE_VIEWER_TOKEN; do
  if ! grep -q "^export $name=" "$state/secrets.env"; then
    echo "export $name=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >> "$state/secrets.env"
  fi
done
[ "${ERPSTREAM_LOCAL_BROKER:-tansu}" = none ] && ERPSTREAM_BROKERS="(none started)"
log "stack is up: broker $ERPSTREAM_BROKERS, registry $ERPSTREAM_REGISTRY_URL, postgres $ERPSTREAM_DATABASE_URL"
