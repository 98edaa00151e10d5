#!/usr/bin/env bash
# cli_launch.sh — launch hygiene on one host: a trainer started without MPI while WORLD_SIZE, SLURM_NTASKS or
# OMPI_COMM_WORLD_SIZE says the job has more processes refuses to train (exit 2, naming srun --mpi=pmix and
# mpirun, writing nothing); mpirun's own count wins inside a bigger Slurm allocation; --print-placement with the
# DDP_TEST_FAKE_GPUS test aid maps node-local ranks to devices and refuses more ranks than GPUs;
# --resume-if-exists starts fresh without a checkpoint and continues bit-identically from one.
# Run by ctest: cli_launch.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
make_tmp
cfg=$src/configs/fashion_mnist_cnn.cfg
small=(--set data.train_limit=640 --set data.test_limit=100 --batch 32 --threads 1 --epochs 2 --set conv2.filters=8)
fail() { echo "FAIL: $*"; [ -f "$tmp/err" ] && sed 's/^/    | /' "$tmp/err" | head -5; fails=$((fails + 1)); }

# ---- started without MPI while the launcher's environment says more: exit 2, nothing written
for var in WORLD_SIZE=2 SLURM_NTASKS=4 OMPI_COMM_WORLD_SIZE=2; do
  env "$var" timeout 60 "$trainer" --config "$cfg" "${small[@]}" --metrics "$tmp/m.jsonl" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  [ "$rc" -eq 2 ] || fail "$var, no MPI: exit $rc, want 2"
  { grep -q "srun --mpi=pmix" "$tmp/err" && grep -q "mpirun" "$tmp/err" && grep -q "${var%%=*}" "$tmp/err"; } ||
    fail "$var: the message does not name the variable, srun --mpi=pmix and mpirun"
  [ ! -e "$tmp/m.jsonl" ] || fail "$var: a refused run wrote its metrics"
  [ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "$var: want one line on stderr"
done
echo "refused without MPI: $(head -c 120 "$tmp/err")..."
# A real MPI world of that size, or mpirun's -np 1 inside a bigger Slurm allocation, is fine.
WORLD_SIZE=2 timeout 60 "${mpi[@]}" -np 2 "$trainer" --config "$cfg" --print-placement >"$tmp/out" 2>"$tmp/err" ||
  fail "WORLD_SIZE=2 under mpirun -np 2 refused"
SLURM_NTASKS=8 timeout 60 "${mpi[@]}" -np 1 "$trainer" --config "$cfg" --print-placement >"$tmp/out" 2>"$tmp/err" ||
  fail "mpirun -np 1 inside an allocation of 8 tasks refused"

# ---- node-local rank -> device with the fake GPU count; more ranks than GPUs on a node is refused
DDP_TEST_FAKE_GPUS=2 timeout 60 "${mpi[@]}" -np 2 "$trainer" --config "$cfg" --print-placement >"$tmp/out" 2>"$tmp/err" ||
  fail "print-placement np 2 with 2 fake GPUs"
got=$(sed -n 's/^placement: host [^ ]* rank \([0-9]*\) of 2 node-local rank \([0-9]*\) of 2 device \([0-9]*\).*/\1 \2 \3/p' \
      "$tmp/out" | sort | tr '\n' ,)
[ "$got" = "0 0 0,1 1 1," ] || fail "placement np 2: got '$got'"; cat "$tmp/out"
DDP_TEST_FAKE_GPUS=1 timeout 60 "${mpi[@]}" -np 2 "$trainer" --config "$cfg" --print-placement >"$tmp/out" 2>"$tmp/err"
rc=$?
{ [ "$rc" -eq 2 ] && grep -q "runs 2 ranks but has 1 GPU" "$tmp/err"; } || fail "2 ranks on 1 fake GPU: exit $rc, want 2"

# ---- --resume-if-exists: needs --save; fresh start without the file; continues bit-identically with it
timeout 60 "$trainer" --config "$cfg" "${small[@]}" --resume-if-exists >"$tmp/out" 2>"$tmp/err"
[ $? -eq 2 ] || fail "--resume-if-exists without --save: want exit 2"
run() { timeout 120 "${mpi[@]}" -np 2 "$trainer" --config "$cfg" "${small[@]}" "$@" >"$tmp/out" 2>"$tmp/err"; }
run --save "$tmp/full.st" || fail "uninterrupted run"
run --save "$tmp/req.st" --resume-if-exists --steps 7 || fail "first part (fresh start)"
grep -q "resum" "$tmp/out" && fail "first part claims to resume"
run --save "$tmp/req.st" --resume-if-exists || fail "second part (resume)"
if "$tool" same "$tmp/full.st" "$tmp/req.st"; then
  echo "ok: 7 steps + --resume-if-exists to the end == uninterrupted ($("$tool" check "$tmp/req.st"))"
else
  fail "resumed run differs from the uninterrupted one"
fi

if [ "$fails" -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "PASS"
