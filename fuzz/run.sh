#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each (default 60) with libFuzzer,
# starting from the seed corpora in fuzz/seeds/ (built from the test suite's fixtures) and
# the corpus grown by earlier runs (fuzz/corpus/, not committed), with the edge values of
# fuzz/dict/edges.dict. Figures per target — executions, executions/s, corpus size,
# crashes — go to bench/results/fuzz.json.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# A crash, hang (10 s per input) or allocation over 2 GiB stops that target; its input is
# kept under fuzz/artifacts/<target>/ and the script exits non-zero. Reproduce one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz run <target> fuzz/artifacts/<target>/<file>
# then add it as a regression test next to the code it broke.
#
# cargo-fuzz needs nightly flags (-Z sanitizer); RUSTC_BOOTSTRAP=1 lets this stable
# toolchain accept them. Install it once: cargo install cargo-fuzz --locked
set -euo pipefail

cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
mapfile -t all < <(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^erpstream')
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

command -v cargo-fuzz >/dev/null || {
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
  exit 2
}
export RUSTC_BOOTSTRAP=1
echo "building the fuzz targets (release, AddressSanitizer)…"
cargo fuzz build -O || { echo "the fuzz targets do not build" >&2; exit 1; }

mkdir -p bench/results
results=()
failed=0
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  mkdir -p "$corpus" "fuzz/artifacts/$target"
  log=$(mktemp)
  echo "fuzzing $target for ${seconds}s…"
  set +e
  cargo fuzz run -O "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 \
    -dict=fuzz/dict/edges.dict -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$target/" >"$log" 2>&1
  status=$?
  set -e
  stat() { sed -n "s/^stat::$1: *\([0-9]*\)$/\1/p" "$log" | tail -1; }
  runs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  size=$(find "$corpus" -type f | wc -l)
  crash=$(grep -m1 -E '^==[0-9]+==( ERROR|.*deadly signal)|^SUMMARY|panicked at' "$log" || true)
  if [ "$status" -ne 0 ]; then
    failed=1
    echo "  $target FAILED (exit $status): ${crash:-see $log}" >&2
    grep -E 'panicked at|^SUMMARY|Test unit written' "$log" | head -5 >&2 || true
  else
    echo "  $target: ${runs:-0} executions, ${rate:-0}/s, corpus $size"
    rm -f "$log"
  fi
  results+=("$(printf '{"target":"%s","seconds":%s,"executions":%s,"executions_per_second":%s,"corpus":%s,"failed":%s}' \
    "$target" "$seconds" "${runs:-0}" "${rate:-0}" "$size" "$([ "$status" -eq 0 ] && echo false || echo true)")")
done

printf '{"run_at":"%s","machine":"%s cores","targets":[\n%s\n]}\n' \
  "$(date -u +%FT%TZ)" "$(nproc)" "$(IFS=$'\n'; echo "${results[*]}" | paste -sd, | sed 's/},{/},\n{/g')" \
  >bench/results/fuzz.json
echo "figures in bench/results/fuzz.json"
exit $failed
