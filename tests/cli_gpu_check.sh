#!/usr/bin/env bash
# cli_gpu_check.sh — launch/gpu_check.sh without a GPU (--no-gpu): its MPI-off CPU build (kept in
# BINARY_DIR/gpu_check_nogpu, so later runs rebuild only what changed) and every stage's logic against the CPU
# backend must pass, with every stage in the summary table (pass or skipped), its logs in --log-dir and at most 8
# files there; a failing stage (--inject-fail, a test aid) is reported FAIL with exit 1, a hanging one is ended by
# its stage timeout and reported FAIL, one that logs an NCCL warning is FAIL, one that cannot start within the
# budget is incomplete with exit 1; the stage limits add up to at most the 580 s budget; a bad argument, and no
# GPU without --no-gpu, exit 2.
# Run by ctest: cli_gpu_check.sh TRAINER SOURCE_DIR BINARY_DIR (about 1.5 minutes on 2 cores, the first time)
. "$(dirname "$0")/testlib.sh" "$@"
bin=$3
script=$src/launch/gpu_check.sh
need_data
not_sanitized "gpu_check.sh makes and tests its own unsanitized build: it runs once, in the Release suite"
command -v timeout >/dev/null || { echo "SKIP: no timeout (coreutils)"; exit 77; }
make_tmp
unset DDP_GPU_CHECK_INJECT_FAIL DDP_GPU_CHECK_STAGE DDP_GPU_CHECK_WORK DDP_GPU_CHECK_CWD
build=$bin/gpu_check_nogpu
stages=(preflight build cuda-tests capture staging graph stream nccl sanitize parity runs resnet resnet50 precision
        precision50 bench)
fail() { echo "FAIL: $*"; exit 1; }
# row FILE STAGE: the stage's line of the summary table in FILE.
row() { grep -E "^$2 +(pass|FAIL|skipped|incomplete) " "$1"; }

# Bad arguments, and no GPU without --no-gpu: exit 2 at once.
for bad_args in "--no-such-option" "--stages nosuchstage" "--inject-fail nosuchstage" "--mpi maybe" "--budget x"; do
  # shellcheck disable=SC2086  # word splitting wanted
  timeout 20 bash "$script" --no-gpu $bad_args >"$tmp/out" 2>&1
  rc=$?
  [ "$rc" -eq 2 ] || { cat "$tmp/out"; fail "'$bad_args' exited $rc, want 2"; }
done
if ! grep -q '^GPU ' <<<"$(timeout 20 nvidia-smi -L 2>/dev/null)"; then
  timeout 20 bash "$script" --log-dir "$tmp/nogpu" >"$tmp/out" 2>&1
  rc=$?
  if [ "$rc" -ne 2 ] || ! grep -q 'no NVIDIA GPU' "$tmp/out"; then cat "$tmp/out"; fail "no GPU and no --no-gpu: exit $rc, want 2"; fi
fi

# The whole --no-gpu run.
t0=$SECONDS
timeout 400 bash "$script" --no-gpu --log-dir "$tmp/logs" --build-dir "$build" --jobs 2 >"$tmp/out" 2>&1
rc=$?
cat "$tmp/out"
echo "-- gpu_check.sh --no-gpu: exit $rc in $((SECONDS - t0)) s"
[ "$rc" -eq 0 ] || fail "gpu_check.sh --no-gpu exited $rc"
for s in "${stages[@]}"; do
  row "$tmp/out" "$s" >/dev/null || fail "no '$s' row in the printed summary table"
  row "$tmp/logs/summary.txt" "$s" >/dev/null || fail "no '$s' row in summary.txt"
  grep -q "^==== $s: " "$tmp/logs/gpu_check.log" || fail "no '$s' section in gpu_check.log"
  grep -q "^$s," "$tmp/logs/stages.csv" || fail "no '$s' row in stages.csv"
done
grep -qE '^total +pass ' "$tmp/logs/summary.txt" || fail "summary.txt: total is not pass"
for s in preflight build staging graph stream parity runs resnet50 precision precision50; do
  grep -q ' pass ' <<<"$(row "$tmp/out" "$s")" || fail "stage $s did not pass: $(row "$tmp/out" "$s")"
done
for f in summary.txt stages.csv gpu_check.log build.log metrics.jsonl; do
  [ -s "$tmp/logs/$f" ] || fail "log folder lacks $f"
done
n=$(find "$tmp/logs" -mindepth 1 | wc -l)
[ "$n" -le 8 ] || fail "$n files in the log folder (at most 8): $(ls "$tmp/logs")"
# The MPI-off build: no libmpi in the trainer (where CMake has TRAINER_MPI).
if grep -q 'TRAINER_MPI' "$src/CMakeLists.txt"; then
  grep -q 'MPI off' <<<"$(row "$tmp/out" build)" || fail "build row does not say MPI off: $(row "$tmp/out" build)"
  ! grep -q libmpi <<<"$(ldd "$build/trainer")" || fail "$build/trainer links libmpi in an MPI-off build"
fi

# A failing stage: FAIL in its row, exit 1; stages not selected are skipped, the others still run.
timeout 120 bash "$script" --no-gpu --log-dir "$tmp/fail" --prebuilt "$build" --stages preflight,nccl,bench \
  --inject-fail nccl >"$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 1 ] || { cat "$tmp/out"; fail "--inject-fail nccl: exit $rc, want 1"; }
grep -q 'FAIL .*injected failure' <<<"$(row "$tmp/out" nccl)" || { cat "$tmp/out"; fail "nccl not reported FAIL"; }
grep -q ' pass ' <<<"$(row "$tmp/out" preflight)" || { cat "$tmp/out"; fail "preflight not pass with --stages"; }
grep -q ' skipped ' <<<"$(row "$tmp/out" bench)" || { cat "$tmp/out"; fail "bench not run after a failed stage"; }
grep -q 'skipped .*--prebuilt' <<<"$(row "$tmp/out" build)" || { cat "$tmp/out"; fail "build not skipped with --prebuilt"; }
grep -q 'skipped .*not selected' <<<"$(row "$tmp/out" parity)" || { cat "$tmp/out"; fail "parity not skipped (not selected)"; }
grep -qE '^total +FAIL ' "$tmp/fail/summary.txt" || fail "summary.txt total is not FAIL"

# The stage limits fit the default budget of a GPU run (one run of at most 10 minutes, 580 s).
sum=$(sed -n '/^declare -A LIMIT=/,/)$/p' "$script" | grep -o '\]=[0-9]*' | tr -d ']=' | paste -sd+ | bc)
budget=$(sed -n 's/.*echo 1500 || echo \([0-9]*\)).*/\1/p' "$script")
[ "${budget:-0}" -le 580 ] || fail "the default budget is ${budget:-?} s: more than 580 s leaves no room in 10 minutes"
[ "$sum" -le "${budget:-0}" ] || fail "the stage limits add up to $sum s, more than the ${budget:-?} s budget"
echo "-- stage limits: $sum s in all (budget $budget)"

# A stage that cannot start with its whole limit within the budget is incomplete: exit 1, never a pass.
timeout 120 bash "$script" --no-gpu --log-dir "$tmp/budget" --prebuilt "$build" --stages preflight,runs,bench \
  --budget 40 >"$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 1 ] || { cat "$tmp/out"; fail "--budget 40: exit $rc, want 1 (incomplete)"; }
grep -q 'incomplete .*not started' <<<"$(row "$tmp/out" bench)" || { cat "$tmp/out"; fail "bench not reported incomplete"; }
grep -qE '^total +(incomplete|FAIL) ' "$tmp/budget/summary.txt" || fail "summary.txt total is not incomplete"

# An NCCL warning line (or a cuDNN error/warning) in a stage's log fails the stage, whatever it checked.
timeout 120 bash "$script" --no-gpu --log-dir "$tmp/warn" --prebuilt "$build" --stages preflight,capture \
  --inject-fail capture:warn >"$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 1 ] || { cat "$tmp/out"; fail "--inject-fail capture:warn: exit $rc, want 1"; }
grep -q 'FAIL .*NCCL/cuDNN warning line' <<<"$(row "$tmp/out" capture)" || { cat "$tmp/out"; fail "a warning line did not fail the stage"; }

# A hanging stage is ended by its time limit, reported FAIL (timed out), and the run goes on.
t0=$SECONDS
DDP_GPU_CHECK_INJECT_FAIL=runs:hang timeout 120 bash "$script" --no-gpu --log-dir "$tmp/hang" --prebuilt "$build" \
  --stages preflight,runs --stage-timeout runs=3 >"$tmp/out" 2>&1
rc=$?
[ "$rc" -eq 1 ] || { cat "$tmp/out"; fail "injected hang: exit $rc, want 1"; }
grep -q 'FAIL .*timed out after 3 s' <<<"$(row "$tmp/out" runs)" || { cat "$tmp/out"; fail "hanging stage not reported as timed out"; }
[ $((SECONDS - t0)) -lt 60 ] || fail "the hanging stage was not ended in time ($((SECONDS - t0)) s)"
echo "ok: gpu_check.sh --no-gpu passes; a failing, a warning and a hanging stage are FAIL, a stage past the budget incomplete, each with exit 1"
