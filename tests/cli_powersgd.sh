#!/usr/bin/env bash
# needs: mpi
# cli_powersgd.sh — parallel.compress=powersgd at np 2 (comm=mpi, CPU): a conv + dense model trains with rank-2
# PowerSGD from step 2 (replica check at the epoch's end, loss near the uncompressed run's), --resume after the start
# step is bit-identical to the run that never stopped (PowerSGD's Q and every rank's error feedback in the
# checkpoint; a changed error tensor must change the result), overlap on and off give the same parameters, with
# overlap the Q all-reduces start during backward (their own lane; --trace) and change nothing, and a rank no
# matrix can take is exit 2 naming parallel.powersgd_rank.
# Run by ctest: cli_powersgd.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
need_tool
make_tmp
cfg=$tmp/p.cfg
# 32 steps per epoch at np 2 x 16; 16 KiB buckets split conv2 and dense1 over buckets (matrices per part).
cat >"$cfg" <<CFG
[net]
batch=16
epochs=2
optimizer=adam
lr=0.002
seed=7
channels=1
height=28
width=28
classes=10
threads=1
eval_batch=500
[data]
train_images=$data/train-images-idx3-ubyte.gz
train_labels=$data/train-labels-idx1-ubyte.gz
test_images=$data/t10k-images-idx3-ubyte.gz
test_labels=$data/t10k-labels-idx1-ubyte.gz
train_limit=1024
test_limit=500
[parallel]
bucket_kb=16
compress=powersgd
powersgd_rank=2
powersgd_start_step=2
[conv]
filters=16
size=3
activation=relu
[maxpool]
size=2
[conv]
filters=16
size=3
activation=relu
[maxpool]
size=2
[flatten]
[dense]
units=32
activation=relu
[dense]
units=10
[softmax]
CFG
run2() { timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" --config "$cfg" "$@" >"$tmp/out" 2>"$tmp/err"; }
test_loss() { sed -n 's/^done: .*test loss \([0-9.]*\),.*/\1/p' "$tmp/out"; }

# ---- 1. Training: the start-up line, two epochs (each ends in the replica check), the loss near compress=none's.
if run2 --set parallel.compress=none; then base=$(test_loss); else base=; bad "compress=none baseline: exit $?"; fi
if run2 && grep -qF "powersgd: rank 2 from step 2: 4 of the 4 weight matrices compressed" "$tmp/out"; then
  e1=$(sed -n 's/^epoch 1\/2  loss \([0-9.]*\).*/\1/p' "$tmp/out") e2=$(sed -n 's/^epoch 2\/2  loss \([0-9.]*\).*/\1/p' "$tmp/out")
  got=$(test_loss)
  if [ -n "$base" ] && awk -v a="$e1" -v b="$e2" -v g="$got" -v n="$base" 'BEGIN { exit !(b < a && g < 1.15 * n) }'; then
    ok "powersgd trains: epoch loss $e1 -> $e2, test loss $got (compress=none: $base); replicas checked; $(grep -o '[0-9]* floats all-reduced per step instead of [0-9]* ([0-9.]*x less)' "$tmp/out")"
  else bad "powersgd loss: epochs $e1 -> $e2, test loss $got vs $base uncompressed"; fi
else bad "powersgd run: exit $? or no start-up line"; sed 's/^/    | /' "$tmp/out" | head -3; fi

# ---- 2. Exact resume after the start step: 40 steps straight vs 20 + resume to 40 (across the epoch's end).
run2 --steps 40 --save "$tmp/full.st" && run2 --steps 20 --save "$tmp/part.st" &&
  run2 --steps 40 --resume "$tmp/part.st" --save "$tmp/resumed.st"
rc=$?
if [ "$rc" -eq 0 ] && [ "$("$tool" meta "$tmp/part.st" powersgd_world)" = 2 ] &&
  "$tool" same "$tmp/full.st" "$tmp/resumed.st" >"$tmp/same" 2>>"$tmp/err"; then
  ok "exact resume with PowerSGD state: $(cat "$tmp/same")"
else bad "exact resume: exit $rc, $(cat "$tmp/same" 2>/dev/null)"; fi

# The state is read and matters: rank 1's error feedback changed in the file gives other parameters.
if command -v python3 >/dev/null; then
  python3 - "$tmp/part.st" "$tmp/edited.st" <<'PY'
import json, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); d = bytearray(b[8 + n:])
o = h["optim.powersgd.error.rank1"]["data_offsets"][0]
d[o:o + 4] = struct.pack("<f", struct.unpack("<f", d[o:o + 4])[0] + 0.5)
open(sys.argv[2], "wb").write(b[:8 + n] + bytes(d))
PY
  if run2 --steps 40 --resume "$tmp/edited.st" --save "$tmp/edited_out.st" &&
    ! "$tool" same "$tmp/full.st" "$tmp/edited_out.st" >/dev/null 2>&1; then
    ok "a changed optim.powersgd.error.rank1 changes the resumed run (the state is used)"
  else bad "resume from a changed error tensor: exit $? or still identical"; fi
fi

# ---- 3. Overlap off: the same buckets, launched after backward, give the same parameters bit for bit.
if run2 --steps 40 --no-overlap --save "$tmp/noov.st" && "$tool" same "$tmp/full.st" "$tmp/noov.st" >"$tmp/same" 2>>"$tmp/err"; then
  ok "overlap=0 and overlap=1 under PowerSGD: $(cat "$tmp/same")"
else bad "overlap=0 vs 1: $(cat "$tmp/same" 2>/dev/null)"; fi

# ---- 4. Q's lane (comm=mpi): with overlap, ranks launch a bucket's Q all-reduce as soon as they see its P's done,
# during backward (--trace: a "PowerSGD Q bucket" span starting inside a "backward" span), on a communicator of
# its own; --no-overlap launches every Q after backward. Batch 64 makes backward long enough (a few ms) for P's to
# arrive within it on a loaded machine. Both give the same parameters bit for bit (only Q's launch time differs).
run2 --steps 8 --set net.batch=64 --trace "$tmp/tr_on" --save "$tmp/q_on.st" &&
  run2 --steps 8 --set net.batch=64 --no-overlap --trace "$tmp/tr_off" --save "$tmp/q_off.st"
rc=$?
if [ "$rc" -eq 0 ] && "$tool" same "$tmp/q_on.st" "$tmp/q_off.st" >"$tmp/same" 2>>"$tmp/err" &&
  python3 - "$tmp/tr_on" "$tmp/tr_off" >"$tmp/q" 2>&1 <<'PY'
import json, sys
def q_in_backward(d):
    n_q = n_in = 0
    for r in (0, 1):
        ev = [e for e in json.load(open(f"{d}/trace_rank{r}.json"))["traceEvents"] if e.get("ph") == "X"]
        bw = [e for e in ev if e["cat"] == "backward" and e["name"] == "backward"]
        q = [e for e in ev if e["cat"] == "comm" and e["name"].startswith("PowerSGD Q bucket")]
        n_q += len(q)
        n_in += sum(1 for x in q if any(b["ts"] <= x["ts"] < b["ts"] + b["dur"] for b in bw))
    return n_q, n_in
(q_on, in_on), (q_off, in_off) = q_in_backward(sys.argv[1]), q_in_backward(sys.argv[2])
assert q_on == q_off == 2 * 6 * 3, f"want 36 Q spans (2 ranks x 6 compressed steps x 3 buckets): {q_on}, {q_off}"
assert in_on > 0, f"overlap on: none of the {q_on} Q all-reduces was launched during backward"
assert in_off == 0, f"--no-overlap: {in_off} Q all-reduces launched during backward"
print(f"{in_on} of {q_on} Q all-reduces launched during backward (--no-overlap: {in_off})")
PY
then
  ok "PowerSGD Q on its own lane: $(cat "$tmp/q"); the same parameters as --no-overlap: $(cat "$tmp/same")"
else bad "Q lane: exit $rc; $(cat "$tmp/q" "$tmp/same" 2>/dev/null | tail -2)"; fi

# ---- 5. A rank no matrix of the model can take: exit 2 naming the key and the largest that works.
run2 --steps 4 --set parallel.powersgd_rank=64
rc=$?
if [ "$rc" -eq 2 ] && has "[parallel] powersgd_rank=64 compresses none of the model's 4 weight matrices" && has "at most"; then
  ok "powersgd_rank=64: exit 2, $(grep -o 'at most [0-9]* compresses one' "$tmp/err" | head -1)"
else bad "powersgd_rank=64: exit $rc"; fi
finish cli_powersgd
