#!/usr/bin/env bash
# needs: mpi
# cli_faults.sh — whole-program fault injection: the trainer under mpirun meets a stuck rank, a killed rank, a
# crash while saving, write errors, divergence, signals and a corrupted replica. Each case checks the exit code,
# the message, how long the job took to go, and that the last good checkpoint is intact and loadable (through the
# trainer's own reader: tests/ckpt_tool and --resume). Every run is bounded by `timeout`.
# Prints one line per case with the measured figures (docs/reliability.md quotes them).
# Run by ctest: cli_faults.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
need_tool
tmp=$(mktemp -d)
mpi_self=(mpirun --bind-to none --mca btl self)  # one rank, no shared-memory transport
[ "$(id -u)" -eq 0 ] && mpi_self+=(--allow-run-as-root)

# Trainer processes of this script only: they all carry our private config path on their command line.
cfg=$tmp/faults.cfg
our_pids() { pgrep -f "^$trainer --config $cfg" || true; }
cleanup() {
  local p
  for p in $(our_pids); do kill -9 "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# 128 steps per epoch at global batch 32 (np 2 x 16, np 4 x 8, np 1 x 32).
cat >"$cfg" <<CFG
[net]
batch=16
epochs=2
channels=1
height=28
width=28
threads=1
seed=5
eval_batch=500
[data]
train_limit=4096
test_limit=500
[parallel]
bucket_kb=16
[conv]
filters=8
[maxpool]
[dense]
units=32
activation=relu
[dense]
units=10
[softmax]
CFG

bad() { fails=$((fails + 1)); echo "FAIL $*"; [ -f "$tmp/err" ] && sed 's/^/    | /' "$tmp/err" | head -20; }
# Global batch 32 at any np; extra arguments go to the trainer. Output in $tmp/out and $tmp/err.
run() {
  local np=$1; shift
  timeout -k 5 "${LIMIT:-120}" "${mpi[@]}" -np "$np" "$trainer" --config "$cfg" --batch $((32 / np)) --quiet "$@" \
    >"$tmp/out" 2>"$tmp/err"
}
# The checkpoint loads and every tensor reads back (ckpt_tool), and the trainer resumes from it for one step.
loadable() {
  local f=$1 step
  "$tool" check "$f" >/dev/null 2>>"$tmp/err" || return 1
  step=$("$tool" meta "$f" global_step) || return 1
  timeout -k 5 120 "$trainer" --config "$cfg" --batch 32 --quiet --resume "$f" --steps $((step + 1)) \
    >/dev/null 2>>"$tmp/err"
}
# Wait (bounded) until file $1 exists.
wait_file() {
  local i
  for i in $(seq 1 "${2:-600}"); do [ -s "$1" ] && return 0; sleep 0.2; done
  return 1
}
rank_pid() {  # rank_pid R: pid of our trainer process with that MPI rank
  local p
  for p in $(our_pids); do
    if grep -qx "OMPI_COMM_WORLD_RANK=$1" <<<"$(tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null)"; then echo "$p"; return; fi
  done
}
# A good checkpoint after one epoch (step 128), kept as the reference every fault must leave intact.
run 2 --epochs 1 --save "$tmp/good.st" || { bad "setup: one good epoch"; exit 1; }
cp "$tmp/good.st" "$tmp/good.orig"

# ---- 1. Watchdog: one rank stalls before step 5; the others must abort naming step, bucket and that rank.
for np in 2 4; do
  stuck=$((np - 1))
  t0=$(now)
  DDP_TEST_STALL=$stuck:5:100 LIMIT=60 run "$np" --set parallel.comm_timeout_s=2
  rc=$? dt=$(since "$t0")
  if [ "$rc" -eq 4 ] && has "all-reduce 'step 5 bucket" && has "did not complete within 2 s" &&
    has "rank $stuck did not arrive" && awk -v d="$dt" 'BEGIN { exit !(d < 30) }'; then
    ok "watchdog np $np: rank $stuck stalled, exit 4 after ${dt} s (timeout 2 s): $(grep -o "all-reduce 'step 5 bucket [0-9]*'.*arrive" "$tmp/err" | head -1)"
  else
    bad "watchdog np $np: exit $rc after ${dt} s (want 4, 'step 5 bucket', 'rank $stuck did not arrive', < 30 s)"
  fi
done

# ---- 2. SIGKILL of one rank mid-epoch 2: the job goes within 30 s; the epoch-1 checkpoint is intact.
for np in 2 4; do
  victim=$([ "$np" -eq 2 ] && echo 1 || echo 0)  # at np 4 the writer itself (rank 0)
  ck=$tmp/kill$np.st
  LIMIT=300 run "$np" --epochs 1000 --save "$ck" &
  job=$!
  if ! wait_file "$ck"; then bad "kill np $np: no checkpoint after epoch 1"; wait "$job"; continue; fi
  sleep 0.3  # inside epoch 2
  pid=$(rank_pid "$victim")
  [ -n "$pid" ] || { bad "kill np $np: rank $victim not found"; wait "$job"; continue; }
  t0=$(now)
  kill -9 "$pid"
  wait "$job"
  rc=$? dt=$(since "$t0")
  left=$(our_pids | wc -l)
  # The last completed checkpoint: epoch 1's, or a later one if an epoch ended before the kill landed.
  epoch=$("$tool" meta "$ck" epoch 2>/dev/null)
  if [ "$rc" -ne 0 ] && [ "$left" -eq 0 ] && awk -v d="$dt" 'BEGIN { exit !(d < 30) }' &&
    [ "${epoch:-0}" -ge 1 ] && loadable "$ck"; then
    ok "kill np $np: SIGKILL rank $victim mid-epoch, job exit $rc after ${dt} s, last checkpoint (epoch $epoch) intact and loadable"
  else
    bad "kill np $np: exit $rc after ${dt} s, $left process(es) left, checkpoint epoch '${epoch:-unreadable}'"
  fi
done

# ---- 3. SIGKILL while writing a checkpoint (DDP_CKPT_CRASH_AFTER_BYTES): the old file stays, the partial temp
#         file is never taken for a checkpoint.
for np in 1 2; do
  cp "$tmp/good.orig" "$tmp/crash.st"
  DDP_CKPT_CRASH_AFTER_BYTES=4096 run "$np" --resume "$tmp/crash.st" --save "$tmp/crash.st"
  rc=$?
  partial=$(ls "$tmp"/crash.st.tmp.* 2>/dev/null | head -1)
  if [ "$rc" -ne 0 ] && cmp -s "$tmp/crash.st" "$tmp/good.orig" && [ -n "$partial" ] &&
    [ "$(stat -c %s "$partial")" -eq 4096 ] && ! "$tool" check "$partial" >/dev/null 2>&1 &&
    ! run 1 --resume "$partial" && loadable "$tmp/crash.st"; then
    ok "crash mid-save np $np: exit $rc, previous checkpoint intact, partial ${partial##*/} (4096 B) refused"
  else
    bad "crash mid-save np $np: exit $rc, partial '${partial##*/}'"
  fi
  rm -f "$tmp"/crash.st.tmp.*
done
# A crash-hook value that is not a byte count is the test trainer's exit 2 at start-up, one line.
DDP_CKPT_CRASH_AFTER_BYTES=12x timeout 60 "$trainer" --config "$cfg" --steps 1 >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && has "DDP_CKPT_CRASH_AFTER_BYTES='12x' is not a byte count"; then
  ok "DDP_CKPT_CRASH_AFTER_BYTES=12x: exit 2, one line"
else
  bad "DDP_CKPT_CRASH_AFTER_BYTES=12x: exit $rc"
fi

# ---- 4. Write errors: clear message, non-zero exit, previous checkpoint intact.
cp "$tmp/good.orig" "$tmp/w.st"
run 2 --resume "$tmp/w.st" --save "$tmp/w.st" --metrics /dev/full
rc=$?
if [ "$rc" -eq 1 ] && has "/dev/full: cannot write metrics: No space left on device" && cmp -s "$tmp/w.st" "$tmp/good.orig"; then
  ok "metrics to /dev/full: exit 1 at the first epoch's line, checkpoint intact"
else bad "metrics to /dev/full: exit $rc"; fi
run 2 --save /dev/full
rc=$?
if [ "$rc" -eq 2 ] && has "/dev/full: exists and is not a regular file" && [ -c /dev/full ]; then
  ok "save to /dev/full: exit 2 at start-up, /dev/full untouched"
else bad "save to /dev/full: exit $rc"; fi
: >"$tmp/plainfile"
run 2 --save "$tmp/plainfile/ck.st"
rc=$?
if [ "$rc" -eq 2 ] && has "cannot write a checkpoint there" && has "Not a directory"; then
  ok "save under a regular file: exit 2 at start-up"
else bad "save under a regular file: exit $rc"; fi
# A full disk in the middle of a save: RLIMIT_FSIZE (100 KiB, set in the rank only: Open MPI's own shared-memory
# files must not hit it, hence btl self at np 1) makes the write fail with EFBIG (SIGXFSZ ignored).
cp "$tmp/good.orig" "$tmp/fs.st"
timeout -k 5 120 "${mpi_self[@]}" -np 1 bash -c 'trap "" XFSZ; ulimit -f 100; exec "$@"' _ \
  "$trainer" --config "$cfg" --batch 32 --quiet --resume "$tmp/fs.st" --save "$tmp/fs.st" >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 1 ] && has "cannot save checkpoint" && has "File too large" && cmp -s "$tmp/fs.st" "$tmp/good.orig" &&
  ! ls "$tmp"/fs.st.tmp.* >/dev/null 2>&1; then
  ok "disk full mid-save (EFBIG): exit 1, checkpoint intact, temp file removed"
else bad "disk full mid-save: exit $rc"; fi

# ---- 5. NaN/Inf: SGD at lr 1e30 from the good checkpoint diverges; exit 3 naming step and layer; file kept.
run 2 --set net.optimizer=sgd --epochs 1 --save "$tmp/sgd.st" || bad "sgd setup run"
cp "$tmp/sgd.st" "$tmp/sgd.orig"
run 2 --set net.optimizer=sgd --lr 1e30 --resume "$tmp/sgd.st" --save "$tmp/sgd.st"
rc=$?
if [ "$rc" -eq 3 ] && has "training diverged at step" && has "(epoch 2)" && has "in layer '" && cmp -s "$tmp/sgd.st" "$tmp/sgd.orig"; then
  ok "divergence np 2: exit 3: $(grep -o 'training diverged.*' "$tmp/err" | cut -c1-100), last good checkpoint kept"
else bad "divergence: exit $rc"; fi

# ---- 6. SIGTERM / SIGINT on one rank: every rank stops at the same step, exit 5, checkpoint written there.
for sig_rank in TERM:1 INT:0; do
  sig=${sig_rank%:*} r=${sig_rank#*:} ck=$tmp/sig$sig.st
  run 2 --epochs 1000 --save "$ck" &
  job=$!
  wait_file "$ck" || bad "SIG$sig: no checkpoint after epoch 1"
  sleep 0.3
  rm -f "$ck"
  pid=$(rank_pid "$r")
  [ -n "$pid" ] || { bad "SIG$sig: rank $r not found"; wait "$job"; continue; }
  t0=$(now)
  kill -"$sig" "$pid"
  wait "$job"
  rc=$? dt=$(since "$t0")
  if [ "$rc" -eq 5 ] && has "stopped by signal at step" && [ -s "$ck" ] && loadable "$ck"; then
    ok "SIG$sig to rank $r at np 2: exit 5 after ${dt} s, checkpoint at step $("$tool" meta "$ck" global_step) written and loadable"
  else bad "SIG$sig to rank $r: exit $rc after ${dt} s"; fi
done

# ---- 7. Exact resume at np 2 (np 1 is test_train's): 150 steps straight vs 100 + resume to 150 (across the
#         epoch boundary at 128) give bit-identical parameters and optimizer state.
run 2 --steps 150 --save "$tmp/full.st" &&
  run 2 --steps 100 --save "$tmp/part.st" &&
  run 2 --steps 150 --resume "$tmp/part.st" --save "$tmp/resumed.st"
rc=$?
if [ "$rc" -eq 0 ] && "$tool" same "$tmp/full.st" "$tmp/resumed.st" >"$tmp/same" 2>>"$tmp/err"; then
  ok "exact resume np 2: $(cat "$tmp/same")"
else bad "exact resume np 2: exit $rc, $(cat "$tmp/same" 2>/dev/null)"; fi

# ---- 8. Replica consistency: one replica corrupted (DDP_TEST_CORRUPT_RANK) is caught after the epoch, exit 4.
DDP_TEST_CORRUPT_RANK=1 run 2 --epochs 1
rc=$?
if [ "$rc" -eq 4 ] && has "replica mismatch after epoch 1: parameters of rank 1" && has "differ from rank 0"; then
  ok "replica corruption np 2: exit 4: $(grep -o 'replica mismatch[^(]*' "$tmp/err" | head -1)"
else bad "replica corruption: exit $rc"; fi

[ "$(our_pids | wc -l)" -eq 0 ] || bad "trainer processes left running"
finish
