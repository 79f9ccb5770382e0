# Sourced by the benchmark scripts: a local stack of their own (state in .erpstream-bench,
# ports apart from the demo's), release binaries, and `fresh_stack`, which restarts it on an
# empty broker store so every measurement starts from the same place.
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

fresh_stack() {
  deploy/local/down.sh >/dev/null 2>&1 || true
  rm -f "$ERPSTREAM_STATE_DIR"/tansu.db*
  deploy/local/up.sh
  source "$ERPSTREAM_STATE_DIR/secrets.env"
}
