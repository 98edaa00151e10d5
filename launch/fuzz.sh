#!/usr/bin/env bash
# fuzz.sh — build the libFuzzer targets (clang, ASan + UBSan + LeakSanitizer) into build-fuzz/ and run each
# for a bounded time, starting from its seed corpus in tests/fuzz/corpus/<target>/.
#   ./launch/fuzz.sh [SECONDS] [TARGET...]     default 60 s per target, all targets
# Fails (exit 1) on any crash, hang (> 10 s on one input), leak, sanitizer report or broken invariant; the
# input that did it is saved as build-fuzz/fuzz-artifacts/<target>/crash-* (replay it: the target's binary with
# the file as argument; to keep it as a regression test, copy it into tests/fuzz/corpus/<target>/).
# Prints executions per target. Environment: BUILD_DIR (default build-fuzz), JOBS.
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
summary=() failed=0
for t in "${targets[@]}"; do
  bin="$build/tests/fuzz/fuzz_$t"
  [ -x "$bin" ] || { echo "fuzz.sh: no target '$t' ($bin)" >&2; exit 2; }
  work="$build/fuzz-corpus/$t" art="$build/fuzz-artifacts/$t" log="$build/fuzz-$t.log"
  mkdir -p "$work" "$art"
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
        -artifact_prefix="$art/")
  dict=$(dict_for "$t")
  [ -n "$dict" ] && args+=(-dict="$dict")
  echo "fuzz $t: ${secs} s ..."
  rc=0
  "$bin" "${args[@]}" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  units=$(find "$work" -type f | wc -l)
  if [ "$rc" -eq 0 ] && ! grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|fuzz invariant failed' "$log"; then
    result=ok
  else
    result="FAILED (exit $rc)"
    failed=1
    echo "---- $t: last lines of $log"
    tail -n 40 "$log"
    ls "$art" 2>/dev/null | sed "s|^|  artifact: $art/|"
  fi
  summary+=("$(printf '%-12s %12s execs %8s/s  cov %5s  corpus %5s  %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$units" "$result")")
done
echo "---- fuzz summary (${secs} s per target)"
printf '%s\n' "${summary[@]}"
exit "$failed"
