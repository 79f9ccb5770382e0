# Settings of the local stack, shared by up.sh, down.sh, demo.sh and test.sh.
# Every value can be overridden from the environment before calling a script.
ERPSTREAM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export ERPSTREAM_ROOT
# Where data, logs, pid files and generated dev secrets live.
export ERPSTREAM_STATE_DIR="${ERPSTREAM_STATE_DIR:-$ERPSTREAM_ROOT/.erpstream}"
# Postgres 15 (wal_level=logical), its own cluster and port.
export ERPSTREAM_PG_BIN="${ERPSTREAM_PG_BIN:-/usr/lib/postgresql/15/bin}"
export ERPSTREAM_PG_PORT="${ERPSTREAM_PG_PORT:-55432}"
# Kafka-compatible broker (tansu 0.6.0, sqlite storage).
export ERPSTREAM_KAFKA_PORT="${ERPSTREAM_KAFKA_PORT:-19092}"
# The local schema registry (erpstream registry).
export ERPSTREAM_REGISTRY_PORT="${ERPSTREAM_REGISTRY_PORT:-18081}"
# Connection settings the pipeline, the demo and the tests read.
export ERPSTREAM_BROKERS="${ERPSTREAM_BROKERS:-127.0.0.1:$ERPSTREAM_KAFKA_PORT}"
export ERPSTREAM_REGISTRY_URL="${ERPSTREAM_REGISTRY_URL:-http://127.0.0.1:$ERPSTREAM_REGISTRY_PORT}"
export ERPSTREAM_DATABASE_URL="${ERPSTREAM_DATABASE_URL:-postgres://postgres@127.0.0.1:$ERPSTREAM_PG_PORT/erpstream}"
# The ERP database the default topology's pg_cdc source reads (created by up.sh).
export ERP_DATABASE_URL="${ERP_DATABASE_URL:-postgres://postgres@127.0.0.1:$ERPSTREAM_PG_PORT/erp}"
# The planning database the planning_pg sink and planning_api use (created by up.sh).
export PLANNING_DATABASE_URL="${PLANNING_DATABASE_URL:-postgres://postgres@127.0.0.1:$ERPSTREAM_PG_PORT/planning}"
