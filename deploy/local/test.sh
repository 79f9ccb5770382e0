#!/usr/bin/env bash
# The whole test suite on a fresh machine: builds erpstream, starts the local stack
# (installing tansu if missing), runs unit and end-to-end tests with cargo-nextest, and
# stops the stack it started. Also checks formatting, clippy lints and that the fuzz
# targets compile. Extra arguments go to `cargo nextest run`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$ERPSTREAM_ROOT"
deploy/local/packages.sh
if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "[test] installing cargo-nextest" >&2
  cargo install cargo-nextest --locked
fi
echo "[test] formatting and lints" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz targets (their own workspace, run by fuzz/run.sh) must keep compiling against
# the parsers they drive.
cargo check --locked --quiet --manifest-path fuzz/Cargo.toml --bins
echo "[test] building" >&2
cargo build --workspace --all-targets
export ERPSTREAM_BIN="${CARGO_TARGET_DIR:-$ERPSTREAM_ROOT/target}/debug/erpstream"
started_stack=0
if [ ! -f "$ERPSTREAM_STATE_DIR/run/tansu.pid" ] || ! kill -0 "$(cat "$ERPSTREAM_STATE_DIR/run/tansu.pid")" 2>/dev/null; then
  started_stack=1
fi
# A stack this script starts gets an empty broker store: every test makes its own topics.
ERPSTREAM_FRESH_BROKER="$started_stack" deploy/local/up.sh
if [ "$started_stack" = 1 ] && [ "${ERPSTREAM_KEEP_STACK:-0}" != 1 ]; then
  trap 'deploy/local/down.sh' EXIT
fi
cargo nextest run --workspace --no-fail-fast "$@"
