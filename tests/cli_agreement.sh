#!/usr/bin/env bash
# needs: mpi
# cli_agreement.sh — ranks that disagree, or stall where nothing could be polled before, never hang the job:
#   * a config error on one rank only (MPMD: a missing file, an unknown --set key) reaches every rank within the
#     deadline; the failing rank prints its own message, rank 0 names it; exit 2;
#   * ranks that run different configurations (optimizer, a layer's filters, an extra layer, batch, bucket size,
#     data file, train_limit, --steps, --seed, --epochs) are refused before any work: exit 2 on every rank, one
#     line naming the first differing key and the rank;
#   * the same paths holding other data on one rank: exit 2 naming it; a set-up failure on one rank only (its
#     data file is missing) keeps that rank's own message;
#   * a rank stopped (SIGSTOP) during start-up or training, or held (DDP_TEST_STALL) in the end-of-epoch replica
#     check or before shut-down: the others' watchdog or deadline ends the job with
#     exit 4 within comm_timeout_s + 5 s (+ the launcher's own tear-down), never a hang;
#   * a slow checkpoint save on rank 0 within parallel.save_timeout_s is waited for (exit 0) even when it takes
#     longer than comm_timeout_s; past it, exit 4 naming the save;
#   * SIGTERM twice to launch/stop_signals.sh (mpirun under it): exit 5, the checkpoint at the stop is loadable.
# Every run is bounded by `timeout`; prints one line per case with its exit code and time.
# Run by ctest: cli_agreement.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
tmp=$(mktemp -d)
cfg=$tmp/agree.cfg
our_pids() { pgrep -f "^$trainer --config $tmp/" || true; }
cleanup() {
  local p
  for p in $(our_pids); do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

write_cfg() { SMALL_CFG_TIMEOUT=5 small_cnn_cfg "$1" "" "" "${2:-}"; }  # write_cfg FILE [EXTRA LAYER TEXT]
write_cfg "$cfg"

bad() { fails=$((fails + 1)); echo "FAIL $*"; sed 's/^/    | /' "$tmp/err" | grep -v '^    | -*$' | head -12; }
# run SECONDS CMD...: runs CMD under timeout, output in $tmp/err; sets rc and secs.
run() {
  local limit=$1 t0
  shift
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" >"$tmp/err" 2>&1
  rc=$?
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
}
trainer_lines() { grep -c "^trainer: " "$tmp/err"; }

# ---- a config error on one rank only
run 60 "${mpi[@]}" -np 1 "$trainer" --config "$cfg" --steps 5 : -np 1 "$trainer" --config "$tmp/missing.cfg" --steps 5
if [ "$rc" -eq 2 ] && has "cannot open config" && has "missing.cfg" && has "rank 1 failed during start-up"; then
  ok "config missing on rank 1: exit $rc in ${secs}s, both messages"
else bad "config missing on rank 1: exit $rc in ${secs}s"; fi
run 60 "${mpi[@]}" -np 1 "$trainer" --config "$cfg" --steps 5 : -np 1 "$trainer" --config "$cfg" --steps 5 --set net.nosuch=1
if [ "$rc" -eq 2 ] && has "nosuch" && has "rank 1 failed during start-up"; then
  ok "unknown --set key on rank 1: exit $rc in ${secs}s"
else bad "unknown --set key on rank 1: exit $rc in ${secs}s"; fi

# ---- different configurations: refused before any work, the first difference named
write_cfg "$tmp/extra.cfg" "[dense]
units=16
activation=relu"
cp "$data/train-labels-idx1-ubyte.gz" "$tmp/labels.gz"
differ() {  # differ NAME EXPECTED-TEXT RANK1-ARGS...
  local name=$1 want=$2
  shift 2
  run 60 "${mpi[@]}" -np 1 "$trainer" --config "$cfg" --steps 5 : -np 1 "$trainer" "$@"
  if [ "$rc" -eq 2 ] && has "differs across ranks" && has "$want" && [ "$(trainer_lines)" -eq 1 ]; then
    ok "different $name: exit $rc in ${secs}s: $(grep -o 'rank 1 has [^;]*' "$tmp/err")"
  else bad "different $name: exit $rc in ${secs}s (want '$want')"; fi
}
differ optimizer "net.optimizer=sgd" --config "$cfg" --steps 5 --set net.optimizer=sgd
differ filters "conv1.filters=16" --config "$cfg" --steps 5 --set conv1.filters=16
differ "extra layer" "dense2.units=16" --config "$tmp/extra.cfg" --steps 5
differ batch "net.batch=32" --config "$cfg" --steps 5 --batch 32
differ bucket_kb "parallel.bucket_kb=64" --config "$cfg" --steps 5 --bucket-kb 64
differ "data file" "data.train_labels=$tmp/labels.gz" --config "$cfg" --steps 5 --set "data.train_labels=$tmp/labels.gz"
differ train_limit "data.train_limit=1024" --config "$cfg" --steps 5 --set data.train_limit=1024
differ --steps "options.--steps=6" --config "$cfg" --steps 6
differ --seed "net.seed=6" --config "$cfg" --steps 5 --seed 6
differ --epochs "net.epochs=2" --config "$cfg" --steps 5 --epochs 2

# ---- the same paths holding other data on one rank (relative paths, another working directory); a set-up
# failure on one rank only (its data file is missing) keeps that rank's own message
mkdir -p "$tmp/a/d" "$tmp/b/d" "$tmp/c/d"
cp "$data"/*.gz "$tmp/a/d/"
cp "$data"/*.gz "$tmp/b/d/"
# rank 1's copy: one training label changed (the first label byte follows the 8-byte IDX header)
gunzip -c "$data/train-labels-idx1-ubyte.gz" | python3 -c 'import sys; b=bytearray(sys.stdin.buffer.read()); b[8]=(b[8]+1)%10; sys.stdout.buffer.write(b)' | gzip >"$tmp/b/d/train-labels-idx1-ubyte.gz"
sed 's|^\[data\]|[data]\ntrain_images=d/train-images-idx3-ubyte.gz\ntrain_labels=d/train-labels-idx1-ubyte.gz\ntest_images=d/t10k-images-idx3-ubyte.gz\ntest_labels=d/t10k-labels-idx1-ubyte.gz|' \
  "$cfg" >"$tmp/rel.cfg"
run 60 "${mpi[@]}" -np 1 --wdir "$tmp/a" "$trainer" --config "$tmp/rel.cfg" --steps 5 : \
  -np 1 --wdir "$tmp/b" "$trainer" --config "$tmp/rel.cfg" --steps 5
if [ "$rc" -eq 2 ] && has "the data differs across ranks" && has "rank 1 has train=2048 samples"; then
  ok "other data under the same path on rank 1: exit $rc in ${secs}s"
else bad "other data under the same path on rank 1: exit $rc in ${secs}s"; fi
run 60 "${mpi[@]}" -np 1 --wdir "$tmp/a" "$trainer" --config "$tmp/rel.cfg" --steps 5 : \
  -np 1 --wdir "$tmp/c" "$trainer" --config "$tmp/rel.cfg" --steps 5
if [ "$rc" -eq 2 ] && has "d/train-images-idx3-ubyte.gz" && has "rank 1 failed during set-up"; then
  ok "data missing on rank 1 only: exit $rc in ${secs}s, rank 1's own message kept"
else bad "data missing on rank 1 only: exit $rc in ${secs}s"; fi

# ---- a rank stopped during start-up or training: exit 4 within comm_timeout_s (5 s) + 5 s (+ mpirun's tear-down)
for at in 0.3 1.5 3; do
  timeout -k 5 90 "${mpi[@]}" -np 2 "$trainer" --config "$cfg" --epochs 1000 >"$tmp/err" 2>&1 &
  job=$!
  # both ranks started (a loaded machine may take a while), then the stop at the given time after that
  for _ in $(seq 300); do [ "$(our_pids | wc -l)" -ge 2 ] && break; sleep 0.1; done
  t0=$(date +%s.%N)
  sleep "$at"
  victim=$(our_pids | sort -n | tail -1)
  [ -n "$victim" ] && kill -STOP "$victim"
  wait "$job"
  rc=$?
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
  for p in $(our_pids); do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  left=$(echo "$secs - $at" | bc)  # from the stop
  if [ "$rc" -eq 4 ] && [ "$(echo "$left < 20" | bc)" -eq 1 ] && has "did not complete within 5 s"; then
    ok "rank 1 stopped ${at}s after start: exit $rc ${left}s later: $(grep -o 'rank 0 ([^)]*): .* did not complete within 5 s' "$tmp/err" | head -1 | cut -c1-110)"
  else bad "rank 1 stopped ${at}s after start: exit $rc ${left}s later"; fi
done

# ---- a rank held in the end-of-epoch replica check's gather, or before the job's shut-down: exit 4, named
stall() {  # stall WHERE WANT-TEXT
  run 90 env DDP_TEST_STALL="1:$1:30" "${mpi[@]}" -x DDP_TEST_STALL -np 2 "$trainer" --config "$cfg" --epochs 1 --quiet
  if [ "$rc" -eq 4 ] && has "$2" && has "rank 1 did not arrive" && [ "$(echo "$secs < 25" | bc)" -eq 1 ]; then
    ok "rank 1 held ($1): exit $rc in ${secs}s: $(grep -o "rank 0 ([^)]*): $2[^:]*" "$tmp/err" | head -1)"
  else bad "rank 1 held ($1): exit $rc in ${secs}s (want '$2')"; fi
}
stall replicas "all-gather"
stall end "barrier"

# ---- a slow checkpoint save (rank 0 held 8 s, comm_timeout_s 5): waited for; past save_timeout_s, exit 4
run 90 env DDP_TEST_SLOW_SAVE=8 "${mpi[@]}" -x DDP_TEST_SLOW_SAVE -np 2 "$trainer" --config "$cfg" --steps 20 \
  --save "$tmp/slow.ck" --quiet
if [ "$rc" -eq 0 ] && [ -s "$tmp/slow.ck" ] && [ -z "$(ls "$tmp"/slow.ck.tmp.* 2>/dev/null)" ]; then
  ok "slow save (8 s > comm_timeout_s 5 s): exit 0 in ${secs}s, checkpoint written"
else bad "slow save: exit $rc in ${secs}s"; fi
run 90 env DDP_TEST_SLOW_SAVE=8 "${mpi[@]}" -x DDP_TEST_SLOW_SAVE -np 2 "$trainer" --config "$cfg" --steps 20 \
  --save "$tmp/slow2.ck" --set parallel.save_timeout_s=2 --quiet
if [ "$rc" -eq 4 ] && has "waiting for rank 0 to write checkpoint"; then
  ok "save slower than save_timeout_s: exit $rc in ${secs}s, the save named"
else bad "save slower than save_timeout_s: exit $rc in ${secs}s"; fi

# ---- SIGTERM twice to the launcher wrapper: exit 5, the checkpoint at the stop
"$src/launch/stop_signals.sh" "${mpi[@]}" -np 2 "$trainer" --config "$cfg" --epochs 50 --save "$tmp/sig.ck" \
  >"$tmp/err" 2>&1 &
job=$!
for _ in $(seq 100); do grep -q "ddp-cnn" "$tmp/err" && break; sleep 0.1; done
sleep 1
t0=$(date +%s.%N)
kill -TERM "$job"; sleep 0.2; kill -TERM "$job"
timeout 60 tail --pid="$job" -f /dev/null
wait "$job"
rc=$?
secs=$(echo "$(date +%s.%N) - $t0" | bc)
if [ "$rc" -eq 5 ] && has "stopped by signal at step" && [ -s "$tmp/sig.ck" ] && \
   { [ ! -x "$tool" ] || "$tool" check "$tmp/sig.ck" >/dev/null 2>&1; }; then
  ok "two SIGTERMs to stop_signals.sh: exit $rc ${secs}s after the first, checkpoint saved and loadable"
else bad "two SIGTERMs to stop_signals.sh: exit $rc ${secs}s"; fi

finish
