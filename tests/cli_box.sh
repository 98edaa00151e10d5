#!/usr/bin/env bash
# cli_box.sh — the real job script on a 2-node Slurm cluster in namespaces (launch/cluster_box.sh): srun and
# mpirun across nodes against 2 ranks on one host, node-local rank -> device, a link going down, a node killed,
# preemption (scancel --signal=TERM) and requeue. Prints one line per case with its measured figures (README
# "Cluster in a box" quotes them). Skips (77) with one line when a box cannot run here (not root, no namespaces,
# no Slurm packages and no apt-get), for a sanitized build (the box runs once, in the Release suite), and when the
# trainer lies under /tmp outside the repository (nodes have a private /tmp). The box is removed on every exit.
# Run by ctest: cli_box.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
box_sh=$src/launch/cluster_box.sh
need_data
need_tool
not_sanitized "the box tests run once, with the Release build"
case "$trainer" in /tmp/*) case "$trainer" in "$src"/*) ;; *)
  echo "SKIP: $trainer is under /tmp, which every box node has private"; exit 77 ;; esac ;; esac
export DDP_BOX=ddptest DDP_BOX_DIR=/var/tmp/ddptest
if ! why=$("$box_sh" check 2>&1); then echo "SKIP: ${why##*cluster_box.sh: }"; exit 77; fi

t_start=$SECONDS
tmp=$(mktemp -d)
cleanup() { "$box_sh" down >/dev/null 2>&1; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
box() { "$box_sh" "$@"; }
bad() { fails=$((fails + 1)); echo "FAIL $*"; }

# Brought up while this shell holds a lock on descriptor 9: none of the box's daemons may keep it.
exec 9>"$tmp/lock"
flock 9
box up --nodes 2 --cpus-per-node 2 --link-gbit 1 >"$tmp/up" 2>&1 || { cat "$tmp/up"; echo "FAIL: box up"; exit 1; }
exec 9>&-
sed -n '/^PARTITION/,/^box/p' "$tmp/up"
if flock -n "$tmp/lock" true; then echo "ok the box's daemons hold none of the caller's descriptors (a lock on fd 9)"
else bad "a box daemon kept the caller's lock on fd 9: $(fuser "$tmp/lock" 2>&1)"; fi
export OUT_ROOT=$DDP_BOX_DIR/test-out TRAINER=$trainer CONFIG=configs/fashion_mnist_cnn.cfg
# 3 epochs of 32 steps at global batch 64 (2 ranks x 32), one thread per rank.
run_args=(--epochs 3 --batch 32 --set data.train_limit=2048 --set data.test_limit=200)

# submit_bg LOG [SBATCH OPTIONS] [-- TRAINER OPTIONS]: submit in the background; sets $submit_pid.
submit_bg() { local log=$1; shift; timeout 400 "$box_sh" submit "$@" >"$log" 2>&1 & submit_pid=$!; }
# The id of the job submit_bg started (its output file appears once it runs); empty after 60 s.
job_of() {
  local t0=$SECONDS j
  while [ $((SECONDS - t0)) -lt 60 ]; do
    j=$(box exec hub squeue -h -o %i 2>/dev/null | head -n 1)
    [ -n "$j" ] && { echo "$j"; return; }
    sleep 0.2
  done
}
# wait_for FILE PATTERN SECONDS: until a line matches (0) or the time is up (1).
wait_for() {
  local t0=$SECONDS
  until grep -q "$2" "$1" 2>/dev/null; do
    [ $((SECONDS - t0)) -lt "$3" ] || return 1
    sleep 0.1
  done
}
job_log() { echo "$DDP_BOX_DIR/out/job-$1.log"; }
# No trainer process may be left on any node (they share this kernel: look through each node's namespace).
trainers_left() {
  local n p left=""
  for n in n1 n2; do
    for p in $(ip netns pids "$DDP_BOX-$n" 2>/dev/null); do
      [ "$(cat "/proc/$p/comm" 2>/dev/null)" = trainer ] && left+=" $n:$p"
    done
  done
  echo "$left"
}
wait_no_trainers() {
  local t0=$SECONDS
  while [ -n "$(trainers_left)" ]; do [ $((SECONDS - t0)) -lt "$1" ] || return 1; sleep 0.2; done
}
ckpt_of() { echo "$OUT_ROOT/$1/checkpoint.safetensors"; }
acc_of() { sed -n 's/.*test accuracy \([0-9.]*\).*/\1/p' "$1" | tail -n 1; }

# ---- 1. the job script across 2 nodes (srun --mpi=pmix, then mpirun in the allocation) vs 2 ranks on one host
t0=$(now)
timeout 300 "$box_sh" submit -- "${run_args[@]}" >"$tmp/srun.out" 2>&1
rc=$?
ref_job=$(sed -n 's/^job \([0-9]*\): .*, exit .*/\1/p' "$tmp/srun.out")
if [ "$rc" -eq 0 ] && [ -f "$(ckpt_of "$ref_job")" ]; then
  ok "srun --mpi=pmix, 2 nodes x 1 rank: exit 0 in $(since "$t0") s, test accuracy $(acc_of "$tmp/srun.out")"
else
  bad "srun run: exit $rc"; tail -n 15 "$tmp/srun.out"
fi
mpi=(mpirun --bind-to none --mca btl "self,vader" --mca btl_vader_single_copy_mechanism none)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
t0=$(now)
(cd "$src" && timeout 300 "${mpi[@]}" -np 2 "$trainer" --config "$CONFIG" --backend cpu --comm mpi --threads 1 \
   --save "$tmp/host.st" "${run_args[@]}") >"$tmp/host.out" 2>&1 || { bad "one-host run failed"; tail "$tmp/host.out"; }
if "$tool" same "$(ckpt_of "$ref_job")" "$tmp/host.st" >/dev/null 2>&1; then
  ok "2 nodes (TCP, 1 Gbit/s) == 2 ranks on one host (shared memory): parameters and Adam state bit-identical;" \
     "test accuracy $(acc_of "$tmp/srun.out") vs $(acc_of "$tmp/host.out") (host run $(since "$t0") s)"
else
  bad "2 nodes vs one host: checkpoints differ (test accuracy $(acc_of "$tmp/srun.out") vs $(acc_of "$tmp/host.out"))"
fi
t0=$(now)
LAUNCHER=mpirun timeout 300 "$box_sh" submit -- "${run_args[@]}" >"$tmp/mpirun.out" 2>&1
rc=$?
job=$(sed -n 's/^job \([0-9]*\): .*, exit .*/\1/p' "$tmp/mpirun.out")
if [ "$rc" -eq 0 ] && "$tool" same "$(ckpt_of "$ref_job")" "$(ckpt_of "$job")" >/dev/null 2>&1; then
  ok "mpirun inside the allocation, 2 nodes: exit 0 in $(since "$t0") s, bit-identical to the srun run"
else
  bad "mpirun run: exit $rc or parameters differ"; tail -n 15 "$tmp/mpirun.out"
fi

# ---- 2. node-local rank -> device: 2 nodes x 2 ranks with 2 (fake) GPUs per node, both launchers
for launcher in srun mpirun; do
  DDP_TEST_FAKE_GPUS=2 LAUNCHER=$launcher timeout 120 "$box_sh" submit --ntasks-per-node=2 -- --print-placement \
    >"$tmp/place.out" 2>&1
  rc=$?
  table=$(sed -n 's/^placement: host \(n[0-9]\) rank \([0-9]\) of 4 node-local rank \([0-9]\) of 2 device \([0-9]\).*/\1 \2 \3 \4/p' \
          "$tmp/place.out" | sort -k2n)
  if [ "$rc" -eq 0 ] && [ "$(echo "$table" | tr '\n' ,)" = "n1 0 0 0,n1 1 1 1,n2 2 0 0,n2 3 1 1," ]; then
    ok "placement ($launcher, host rank local-rank device): $(echo "$table" | tr '\n' ';' | sed 's/;$//')"
  else
    bad "placement with $launcher: exit $rc, table: $(echo "$table" | tr '\n' ';')"; tail -n 8 "$tmp/place.out"
  fi
done

# ---- 2b. parallel.hierarchy=node, 2 nodes x 2 ranks (plain mpirun): the start-up line, and parameters equal to
# flat's within max |a - b| / max(|a|, 1e-2) < 1e-4 (the orders of addition differ; docs/parallelism.md)
hier_run() {  # hier_run MODE: 4 ranks across n1, n2; checkpoint $DDP_BOX_DIR/hier-MODE.st (both nodes see it)
  box exec n1 mpirun ${mpi_root:+--allow-run-as-root} --hostfile "$DDP_BOX_DIR/hostfile" -np 4 --bind-to none \
    "$trainer" --config "$src/$CONFIG" --threads 1 --batch 16 --epochs 1 --set data.train_limit=1024 \
    --set data.test_limit=200 --set net.optimizer=sgd --set parallel.hierarchy="$1" --save "$DDP_BOX_DIR/hier-$1.st"
}
[ "$(id -u)" -eq 0 ] && mpi_root=1
t0=$(now)
hier_run flat >"$tmp/hflat.out" 2>&1 && hier_run node >"$tmp/hnode.out" 2>&1
rc=$?
hline=$(grep -m 1 "^hierarchy" "$tmp/hnode.out")
hdiff=$("$tool" reldiff "$DDP_BOX_DIR/hier-flat.st" "$DDP_BOX_DIR/hier-node.st" 2>&1 | cut -d' ' -f1)
if [ "$rc" -eq 0 ] && [ "$hline" = "hierarchy: node (2 nodes x 2 ranks; leaders all-reduce across nodes)" ] &&
   awk -v a="$hdiff" 'BEGIN { exit !(a < 1e-4) }'; then
  ok "hierarchy=node, 2 nodes x 2 ranks: '$hline'; parameters vs flat: max relative difference $hdiff (< 1e-4);" \
     "both runs $(since "$t0") s"
else
  bad "hierarchy=node across 2 nodes: exit $rc, line '$hline', difference '$hdiff'"; tail -n 5 "$tmp/hnode.out"
fi

# ---- 3. n2's link goes down mid-epoch: rank 0's watchdog (comm_timeout_s 5) exits 4 naming rank 1 on n2
submit_bg "$tmp/link.out" -- "${run_args[@]}" --epochs 20 --set parallel.comm_timeout_s=5
job=$(job_of)
if [ -n "$job" ] && wait_for "$(job_log "$job")" "^ddp-cnn " 90; then
  sleep 1
  t0=$(now)
  box link n2 down
  if wait_for "$(job_log "$job")" "did not complete within 5 s" 30; then
    dt=$(since "$t0")
    msg=$(grep -m 1 "did not complete" "$(job_log "$job")")
    box link n2 up
    wait "$submit_pid"; rc=$?
    dt_end=$(since "$t0")
    if [ "$rc" -eq 4 ] && [[ $msg == *"rank 1 did not "*"(on host n2)"* ]] &&
       awk -v d="$dt" 'BEGIN { exit !(d <= 10) }' && wait_no_trainers 30; then
      ok "link down: watchdog after $dt s (comm_timeout_s 5 + 5 allowed), job exit 4 after $dt_end s, no rank left:" \
         "${msg#trainer: error: }"
    else
      bad "link down: exit $rc after $dt_end s, watchdog after $dt s: $msg; left:$(trainers_left)"
    fi
  else
    box link n2 up; bad "link down: no watchdog message within 30 s"; wait "$submit_pid"
  fi
else
  bad "link down: the job did not start"; wait "$submit_pid"
fi

# ---- 4. every process on n2 killed (a node crash) mid-epoch: non-zero, no rank left on any node
submit_bg "$tmp/kill.out" -- "${run_args[@]}" --epochs 20 --set parallel.comm_timeout_s=5
job=$(job_of)
if [ -n "$job" ] && wait_for "$(job_log "$job")" "^ddp-cnn " 90; then
  sleep 1
  t0=$(now)
  box kill-node n2
  wait "$submit_pid"; rc=$?
  dt=$(since "$t0")
  if [ "$rc" -ne 0 ] && wait_no_trainers 30; then
    ok "node n2 killed: job exit $rc after $dt s, no trainer left on n1 or n2"
  else
    bad "node killed: exit $rc after $dt s; left:$(trainers_left)"
  fi
  box up --nodes 2 --cpus-per-node 2 --link-gbit 1 >/dev/null 2>&1 || bad "box up after the node kill"
else
  bad "node kill: the job did not start"; wait "$submit_pid"
fi

# ---- 5. preemption: scancel --signal=TERM mid-run -> all ranks stop at one step, rank 0 saves, exit 5;
#         then scontrol requeue -> the job resumes (--resume-if-exists) and ends bit-identical to the srun run.
# Rank 1 sleeps 8 s before step 12 (DDP_TEST_STALL), so the signal lands mid-run even on a loaded machine.
DDP_TEST_STALL=1:12:8 submit_bg "$tmp/preempt.out" -- "${run_args[@]}"
job=$(job_of)
if [ -n "$job" ] && wait_for "$(job_log "$job")" "^ddp-cnn " 90; then
  sleep 1.5
  t0=$(now)
  box exec hub scancel --signal=TERM "$job"
  wait "$submit_pid"; rc=$?
  dt=$(since "$t0")
  step=$("$tool" meta "$(ckpt_of "$job")" global_step 2>/dev/null)
  exits=$(grep -c "task [0-9]*: Exited with exit code 5" "$(job_log "$job")")
  if [ "$rc" -eq 5 ] && [ -n "$step" ] && [ "$step" -lt 96 ] && grep -q "stopped by signal at step $step " "$(job_log "$job")" &&
     [ "$exits" -eq 2 ]; then
    ok "scancel --signal=TERM: exit 5 after $dt s; both ranks stopped at step $step (exit 5 each), checkpoint at step $step"
  else
    bad "preemption: exit $rc after $dt s, checkpoint step '${step:-none}', ranks with exit 5: $exits"
    tail -n 8 "$(job_log "$job")"
  fi
  t0=$(now)
  box exec hub scontrol requeue "$job"
  state=""
  while [ "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print (b - a < 150) }')" = 1 ]; do
    state=$(box exec hub scontrol show job "$job" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    [ "$state" = COMPLETED ] || [ "$state" = FAILED ] || [ "$state" = CANCELLED ] && break
    sleep 0.5
  done
  dt=$(since "$t0")
  if [ "$state" = COMPLETED ] && "$tool" same "$(ckpt_of "$ref_job")" "$(ckpt_of "$job")" >/dev/null 2>&1; then
    ok "scontrol requeue: resumed from step $step, COMPLETED $dt s after the requeue (20 s of it Slurm's" \
       "requeue delay, cred_expire); parameters and Adam state bit-identical to the uninterrupted run"
  else
    bad "requeue: state '$state' after $dt s, or the parameters differ from the uninterrupted run"
    tail -n 8 "$(job_log "$job")"
  fi
else
  bad "preemption: the job did not start"; wait "$submit_pid"
fi

# ---- 5. your own images across the 2 nodes: one folder path both nodes see (the box's shared directory, as a
#         cluster file system), each rank reading only its share of the training images
img=$DDP_BOX_DIR/images
python3 "$src/tests/make_images.py" fmnist "$data" "$img" 1024 256 || bad "make_images.py"
t0=$(now)
timeout 300 "$box_sh" submit -- --epochs 1 --batch 32 --set data.format=folder --set "data.train_dir=$img/train" \
  --set "data.test_dir=$img/test" --set data.normalize=1 --set data.mean=0.286 --set data.std=0.353 \
  --set data.flip=1 >"$tmp/folder.out" 2>&1
rc=$?
reads=$(grep -o 'data: rank [0-9] ([^)]*) read [0-9]* training image files ([0-9]* distinct) of [0-9]*' "$tmp/folder.out" | sort)
if [ "$rc" -eq 0 ] && [ "$(grep -c 'read 512 training image files (512 distinct) of 1024' <<<"$reads")" -eq 2 ] &&
   grep -q 'rank 0 (n1)' <<<"$reads" && grep -q 'rank 1 (n2)' <<<"$reads"; then
  ok "a PNG folder on the shared directory, 2 nodes: exit 0 in $(since "$t0") s, test accuracy $(acc_of "$tmp/folder.out");" \
     "$(tr '\n' ';' <<<"$reads" | sed 's/;$//; s/;/; /g')"
else
  bad "folder run across the nodes: exit $rc, reads: $reads"; tail -n 12 "$tmp/folder.out"
fi
rm -rf "$img"

echo "box tests: $((SECONDS - t_start)) s"
if [ "$fails" -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "PASS"
