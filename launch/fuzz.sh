#!/usr/bin/env bash
# fuzz.sh — build the libFuzzer targets (clang, ASan + UBSan + LeakSanitizer) into build-fuzz/ and run each
# for a bounded time, starting from its seed corpus in tests/fuzz/corpus/<target>/.
#   ./launch/fuzz.sh [SECONDS] [TARGET...]     default 60 s per target, all targets
# Fails (exit 1) on any crash, hang (> 10 s on one input), leak, sanitizer report or broken invariant; the
# input that did it is saved as build-fuzz/fuzz-artifacts/<target>/crash-* (replay it: the target's binary with
# the file as argument; to keep it as a regression test, copy it into tests/fuzz/corpus/<target>/).
# Prints executions per target. Environment: BUILD_DIR (default build-fuzz), JOBS (build jobs, and targets fuzzed at
# once: default the cores).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac  # before any work
cd "$(dirname "$0")/.."
source launch/deps.sh
ddp_install_deps clang libclang-rt-dev  # libFuzzer's runtime is in libclang-rt-dev (a Recommends of clang)

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(idx idx_gz cifar10 config safetensors image_list image image_shards)
build=${BUILD_DIR:-build-fuzz}
jobs=${JOBS:-$(nproc)}

CC=clang cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTRAINER_CUDA=OFF -DTRAINER_FUZZ=ON >/dev/null
cmake --build "$build" -j "$jobs" --target fuzz_targets >/dev/null

dict_for() {
  case "$1" in
    idx|idx_gz) echo tests/fuzz/idx.dict ;;
    config) echo tests/fuzz/config.dict ;;
    safetensors) echo tests/fuzz/safetensors.dict ;;
  esac
}

export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# One target per core at a time (libFuzzer runs one process each): the same time per target, less wall time.
fuzz_one() {
  local t=$1 bin="$build/tests/fuzz/fuzz_$1" rc=0 dict result
  local work="$build/fuzz-corpus/$t" art="$build/fuzz-artifacts/$t" log="$build/fuzz-$t.log"
  mkdir -p "$work" "$art"
  local args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
              -artifact_prefix="$art/")
  dict=$(dict_for "$t")
  [ -n "$dict" ] && args+=(-dict="$dict")
  "$bin" "${args[@]}" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  local execs rate cov units
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  units=$(find "$work" -type f | wc -l)
  if [ "$rc" -eq 0 ] && ! grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|fuzz invariant failed' "$log"; then
    result=ok
  else
    result="FAILED (exit $rc)"
    { echo "---- $t: last lines of $log"; tail -n 40 "$log"; ls "$art" 2>/dev/null | sed "s|^|  artifact: $art/|"; } \
      >"$build/fuzz-$t.failure"
  fi
  printf '%-12s %12s execs %8s/s  cov %5s  corpus %5s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$units" \
    "$result" >"$build/fuzz-$t.summary"
}
for t in "${targets[@]}"; do
  [ -x "$build/tests/fuzz/fuzz_$t" ] || { echo "fuzz.sh: no target '$t' ($build/tests/fuzz/fuzz_$t)" >&2; exit 2; }
  rm -f "$build/fuzz-$t.summary" "$build/fuzz-$t.failure"
done
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
  echo "fuzz $t: ${secs} s ..."
  fuzz_one "$t" &
  running=$((running + 1))
done
wait
failed=0
for t in "${targets[@]}"; do
  if [ -f "$build/fuzz-$t.failure" ]; then cat "$build/fuzz-$t.failure"; failed=1; fi
  [ -f "$build/fuzz-$t.summary" ] || { echo "---- $t: no result"; failed=1; }
done
echo "---- fuzz summary (${secs} s per target, $jobs at a time)"
for t in "${targets[@]}"; do cat "$build/fuzz-$t.summary" 2>/dev/null || true; done
exit "$failed"
