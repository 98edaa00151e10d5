#!/usr/bin/env bash
# test.sh — install missing packages, configure, build and run the whole test suite (ctest).
#   ./launch/test.sh                 Release build in build/, all tests
#   ./launch/test.sh --sanitize      ASan+UBSan build in build-asan/ (CUDA off), all tests
#   ./launch/test.sh -R PATTERN      only tests matching PATTERN (passed to ctest)
# Environment: TRAINER_CUDA=AUTO|ON|OFF (default AUTO), BUILD_DIR, JOBS (build), CTEST_JOBS (tests run at once,
# default the cores: most whole-program tests spend their time waiting on timeouts and child processes; the
# cluster-in-a-box test runs alone, tests/CMakeLists.txt).
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac  # before any work
cd "$(dirname "$0")/.."
source launch/deps.sh
ddp_install_deps

build_dir=${BUILD_DIR:-build}
cmake_args=(-DCMAKE_BUILD_TYPE=Release "-DTRAINER_CUDA=${TRAINER_CUDA:-AUTO}")
ctest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize)
      build_dir=${BUILD_DIR:-build-asan}
      cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DTRAINER_CUDA=OFF -DTRAINER_SANITIZE=address,undefined)
      # fast_unwind_on_malloc=0: full allocation stacks, so the suppressions can see the libmpi/libopen-* frames
      # under Open MPI's unloaded plugins (the fast unwinder stops at the first frame without a frame pointer).
      export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:fast_unwind_on_malloc=0}
      export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
      # Open MPI's own allocations are not ours to fix (tests/lsan.supp names only the MPI stack's libraries).
      export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
      shift ;;
    *) ctest_args+=("$1"); shift ;;
  esac
done

jobs=${JOBS:-$(nproc)}
cmake -S . -B "$build_dir" "${cmake_args[@]}"
cmake --build "$build_dir" -j "$jobs"
cd "$build_dir"
ctest --output-on-failure -j "${CTEST_JOBS:-$jobs}" "${ctest_args[@]}"
