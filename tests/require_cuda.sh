#!/usr/bin/env bash
# require_cuda.sh TEST... -- DDP_REQUIRE_CUDA=1 turns a GPU test's skip into a failure (tests/test_util.c,
# tu_cuda_or_skip). Where CUDA is not usable, each GPU test given must fail with it set, name the switch and skip
# nothing, and pass (skipping) with it unset or 0. Where CUDA is usable the variable changes nothing to check:
# exit 77, which ctest reports as skipped.
set -u
for t in "$@"; do
  out=$(DDP_REQUIRE_CUDA=1 "$t" 2>&1)
  rc=$?
  printf '%s\n' "$out"
  if [ "$rc" -eq 0 ]; then
    echo "SKIP: $t passes with DDP_REQUIRE_CUDA=1: CUDA is usable here"
    exit 77
  fi
  grep -q "DDP_REQUIRE_CUDA=1 but CUDA is not usable: " <<<"$out" ||
    { echo "FAIL: $t failed (exit $rc) without naming DDP_REQUIRE_CUDA=1 and the reason"; exit 1; }
  if grep -q '^\[  SKIPPED \]' <<<"$out"; then
    echo "FAIL: $t still skipped tests with DDP_REQUIRE_CUDA=1"
    exit 1
  fi
  for v in "" 0; do
    DDP_REQUIRE_CUDA=$v "$t" >/dev/null 2>&1 || { echo "FAIL: $t fails with DDP_REQUIRE_CUDA='$v'"; exit 1; }
  done
  echo "ok: $t fails with DDP_REQUIRE_CUDA=1 (exit $rc) and skips without it"
done
