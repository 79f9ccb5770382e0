# Sourced by the benchmark scripts: a local stack of their own (state in .erpstream-bench,
# ports apart from the demo's), release binaries, and `fresh_stack`, which restarts it on an
# empty broker store so every measurement starts from the same place.
#
# BROKER picks the broker the benchmark runs against:
#   tansu (default)  the local stack's broker, tansu 0.6.0 on sqlite, on a fresh store;
#   mock             librdkafka's mock cluster hosted by `erpstream-bench broker` (in
#                    memory, topics of topology.yaml pre-created): a broker that is not the
#                    limit, to measure erpstream itself. Never the product's default.
# Every result records the broker it was taken on (ERPSTREAM_BENCH_BROKER).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ERPSTREAM_STATE_DIR="$root/.erpstream-bench"
export ERPSTREAM_PG_PORT=55532 ERPSTREAM_KAFKA_PORT=19192 ERPSTREAM_REGISTRY_PORT=18181
export ERPSTREAM_LISTEN=127.0.0.1:8180
export STOREFRONT_WEBHOOK_URL=http://127.0.0.1:9190/storefront ERP_API_URL=http://127.0.0.1:9191
unset ERPSTREAM_BROKERS ERPSTREAM_REGISTRY_URL ERPSTREAM_DATABASE_URL ERP_DATABASE_URL PLANNING_DATABASE_URL
source "$root/deploy/local/env.sh"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release -p erpstream-pipeline -p erpstream-bench
export ERPSTREAM_BIN="$target/release/erpstream"
bench="$target/release/erpstream-bench"
BROKER="${BROKER:-tansu}"
case "$BROKER" in
  tansu) export ERPSTREAM_BENCH_BROKER="tansu 0.6.0 (${ERPSTREAM_TANSU_STORAGE:-sqlite://tansu.db}$([ "${ERPSTREAM_BROKER_INDEXES:-1}" = 0 ] && echo ", without erpstream's indexes"), fresh store)" ;;
  mock)
    export ERPSTREAM_BENCH_BROKER="librdkafka 2.12.1 mock cluster (1 broker, in memory)"
    # The mock implements the idempotent producer; production brokers run with it on.
    export ERPSTREAM_KAFKA_IDEMPOTENCE=true ;;
  *) echo "[bench] BROKER=$BROKER: expected tansu or mock" >&2; exit 2 ;;
esac

# Extra topics the mock broker creates besides topology.yaml's (name:partitions ...), for
# benchmarks that write their own topology.
BENCH_TOPICS="${BENCH_TOPICS:-}"

fresh_stack() {
  deploy/local/down.sh >/dev/null 2>&1 || true
  rm -f "$ERPSTREAM_STATE_DIR"/tansu.db*
  if [ "$BROKER" = mock ]; then
    ERPSTREAM_LOCAL_BROKER=none deploy/local/up.sh
    local address="$ERPSTREAM_STATE_DIR/run/bench-broker.address" topic_args=()
    for t in $BENCH_TOPICS; do topic_args+=(--topic "$t"); done
    rm -f "$address"
    "$bench" broker --topology topology.yaml "${topic_args[@]}" --address-file "$address" \
      >"$ERPSTREAM_STATE_DIR/log/bench-broker.log" 2>&1 &
    echo $! > "$ERPSTREAM_STATE_DIR/run/bench-broker.pid"
    for _ in $(seq 1 100); do [ -s "$address" ] && break; sleep 0.1; done
    [ -s "$address" ] || { echo "[bench] the mock broker did not start; see $ERPSTREAM_STATE_DIR/log/bench-broker.log" >&2; exit 1; }
    ERPSTREAM_BROKERS="$(cat "$address")"
    export ERPSTREAM_BROKERS
    echo "[bench] mock broker on $ERPSTREAM_BROKERS" >&2
  else
    deploy/local/up.sh
  fi
  source "$ERPSTREAM_STATE_DIR/secrets.env"
}
