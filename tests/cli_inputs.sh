#!/usr/bin/env bash
# needs: mpi
# cli_inputs.sh — bounded inputs, outputs that never clobber inputs, and lost output. Every run is bounded by `timeout`; each case checks the exit code, the one-line message, the time to
# exit, and at the end that no input file changed (checksums before and after). One process; mpirun only for
# the write-failure cases (a file size limit set in the rank alone: Open MPI's own files must not hit it).
# Prints one line per case with the measured figures (docs/reliability.md quotes them).
# Run by ctest: cli_inputs.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_tool
make_tmp

# A small data set (64 train, 32 test samples; 4 steps per epoch at batch 16) and its config.
python3 - "$tmp" <<'PY'
import struct, sys, random
d = sys.argv[1]; random.seed(2)
def pair(prefix, n):
    open(f"{d}/{prefix}-images.idx", "wb").write(struct.pack(">IIII", 0x803, n, 28, 28) + bytes(random.randrange(256) for _ in range(n * 784)))
    open(f"{d}/{prefix}-labels.idx", "wb").write(struct.pack(">II", 0x801, n) + bytes(random.randrange(10) for _ in range(n)))
pair("train", 64); pair("test", 32); pair("other", 64)
PY
cfg=$tmp/in.cfg
cat >"$cfg" <<CFG
[net]
batch=16
epochs=2
channels=1
height=28
width=28
threads=1
[data]
train_images=$tmp/train-images.idx
train_labels=$tmp/train-labels.idx
test_images=$tmp/test-images.idx
test_labels=$tmp/test-labels.idx
[conv]
filters=4
[maxpool]
[dense]
units=10
[softmax]
CFG
inputs=("$cfg" "$tmp"/train-*.idx "$tmp"/test-*.idx)
sums_before=$(md5sum "${inputs[@]}")

# expect NAME CODE MAX_S WANT -- trainer args: exit CODE within MAX_S seconds, one stderr line containing WANT.
expect() {
  local name=$1 code=$2 max=$3 want=$4; shift 5
  local t0 rc dt lines
  t0=$(now)
  timeout -k 2 $((max + 20)) "$trainer" "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$? dt=$(since "$t0") lines=$(wc -l <"$tmp/err")
  if [ "$rc" -eq "$code" ] && [ "$lines" -eq 1 ] && grep -qF -- "$want" "$tmp/err" &&
    awk -v d="$dt" -v m="$max" 'BEGIN { exit !(d < m) }'; then
    ok "$name: exit $rc in ${dt} s: $(cut -c1-150 "$tmp/err")"
  else
    bad "$name: exit $rc in ${dt} s, $lines stderr line(s) (want exit $code, < $max s, 1 line with '$want')"
  fi
}
run_ok() { timeout -k 2 120 "$trainer" --config "$cfg" --quiet "$@" >"$tmp/out" 2>"$tmp/err"; }

# A checkpoint after one epoch (step 4) and one mid-epoch (step 6) to corrupt one field at a time.
run_ok --epochs 1 --save "$tmp/good.st" || { bad "setup: one epoch with --save"; exit 1; }
run_ok --steps 6 --save "$tmp/mid.st" || { bad "setup: --steps 6 --save"; exit 1; }
cp "$tmp/good.st" "$tmp/good.orig"

# edit SRC DST PYTHON: DST is SRC with its header dict `h` and data bytes `d` changed by PYTHON.
edit() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, struct, sys
src, dst, code = sys.argv[1:4]
b = open(src, "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); d = bytearray(b[8 + n:])
exec(code)
t = json.dumps(h, separators=(",", ":")).encode()
t += b" " * (-len(t) % 8)
open(dst, "wb").write(struct.pack("<Q", len(t)) + t + bytes(d))
PY
}

# ---- case 4: special files and unbounded reads are refused before any read
mkfifo "$tmp/fifo"
expect "config FIFO" 2 10 "config is a FIFO, not a regular file" -- --config "$tmp/fifo"
expect "config /dev/zero" 2 10 "config is a character device" -- --config /dev/zero
expect "config directory" 2 10 "config is a directory" -- --config "$tmp"
expect "data file FIFO" 2 10 "data file is a FIFO" -- --config "$cfg" --set data.train_images="$tmp/fifo"
expect "--resume FIFO" 2 10 "checkpoint is a FIFO" -- --config "$cfg" --resume "$tmp/fifo"
expect "--baseline /dev/zero" 2 10 "baseline is a character device" -- --config "$cfg" --baseline /dev/zero
expect "--baseline FIFO" 2 10 "baseline is a FIFO" -- --config "$cfg" --baseline "$tmp/fifo"
cp "$tmp/good.st" "$tmp/sparse2.st" && truncate -s 2G "$tmp/sparse2.st"
expect "--resume 2 GiB sparse" 2 10 "trailing bytes" -- --config "$cfg" --resume "$tmp/sparse2.st"
cp "$tmp/good.st" "$tmp/sparse15.st" && truncate -s 15G "$tmp/sparse15.st"
expect "--resume 15 GiB sparse" 2 10 "trailing bytes" -- --config "$cfg" --resume "$tmp/sparse15.st"
rm -f "$tmp/sparse2.st" "$tmp/sparse15.st"

# ---- case 8: a NaN in conv1.weight (and in an Adam moment) is never resumed
edit "$tmp/good.st" "$tmp/nan.st" 'o = h["conv1.weight"]["data_offsets"][0]; d[o:o + 4] = struct.pack("<f", float("nan"))'
expect "NaN in conv1.weight" 2 10 "tensor 'conv1.weight' holds 1 non-finite value(s) (first: NaN at element 0)" -- \
  --config "$cfg" --resume "$tmp/nan.st" --save "$tmp/nan.st"
edit "$tmp/good.st" "$tmp/inf.st" 'o = h["optim.adam_v.dense1.bias"]["data_offsets"][0]; d[o + 4:o + 8] = struct.pack("<f", float("inf"))'
expect "Inf in an Adam moment" 2 10 "tensor 'optim.adam_v.dense1.bias' holds 1 non-finite" -- --config "$cfg" --resume "$tmp/inf.st"

# ---- case 10: corrupt metadata, appended bytes, another seed or data selection
meta() { edit "$tmp/mid.st" "$tmp/m.st" "h['__metadata__']['$1'] = '$2'"; }
meta epoch_loss_sum nan
expect "epoch_loss_sum nan" 2 10 "metadata 'epoch_loss_sum' is 'nan', not a finite number" -- --config "$cfg" --resume "$tmp/m.st"
meta epoch_loss_sum garbage
expect "epoch_loss_sum garbage" 2 10 "metadata 'epoch_loss_sum' is 'garbage'" -- --config "$cfg" --resume "$tmp/m.st"
meta epoch_correct_sum 1e9
expect "epoch_correct_sum too large" 2 10 "metadata 'epoch_correct_sum' is '1e9'" -- --config "$cfg" --resume "$tmp/m.st"
meta optim_t 0
expect "optim_t 0" 2 10 "metadata 'optim_t' is 0, but the optimizer takes one step per global step (6)" -- \
  --config "$cfg" --resume "$tmp/m.st"
meta global_step 7
expect "global_step inconsistent" 2 10 "metadata 'global_step' is 7" -- --config "$cfg" --resume "$tmp/m.st"
cp "$tmp/mid.st" "$tmp/m.st" && head -c 600 /dev/urandom >>"$tmp/m.st"
expect "600 bytes appended" 2 10 "600 trailing bytes" -- --config "$cfg" --resume "$tmp/m.st"
expect "another --seed" 2 10 "metadata 'seed' is 42, this run has 7" -- --config "$cfg" --resume "$tmp/mid.st" --seed 7
expect "another train_limit" 2 10 "metadata 'train_samples' is 64, this run has 48" -- \
  --config "$cfg" --resume "$tmp/mid.st" --set data.train_limit=48
expect "another data file" 2 10 "metadata 'train_data_hash'" -- --config "$cfg" --resume "$tmp/mid.st" \
  --set data.train_images="$tmp/other-images.idx" --set data.train_labels="$tmp/other-labels.idx"
cp "$tmp/mid.st" "$tmp/r.st"
if run_ok --resume "$tmp/r.st" --save "$tmp/r.st" --epochs 2 && [ "$("$tool" meta "$tmp/r.st" global_step)" = 8 ]; then
  ok "--resume X --save X still resumes (to step 8)"
else bad "--resume X --save X"; fi

# ---- case 7: outputs never clobber inputs or files of another kind
expect "--save onto the config" 2 10 "--save would overwrite an input of this run (the config" -- --config "$cfg" --save "$cfg"
expect "--save onto a data file" 2 10 "(the data file $tmp/train-images.idx)" -- --config "$cfg" --save "$tmp/train-images.idx"
ln "$cfg" "$tmp/hardlink.st"
expect "--save onto a hard link of the config" 2 10 "--save would overwrite an input" -- --config "$cfg" --save "$tmp/hardlink.st"
printf 'notes\n' >"$tmp/notes.txt"
expect "--save onto a text file" 2 10 "not a safetensors checkpoint" -- --config "$cfg" --save "$tmp/notes.txt"
expect "--metrics onto a checkpoint" 2 10 "--metrics: refusing to overwrite an existing file that is not a JSON Lines" -- \
  --config "$cfg" --metrics "$tmp/good.st"
expect "--metrics onto the config" 2 10 "--metrics would overwrite an input" -- --config "$cfg" --metrics "$cfg"
expect "--metrics onto the --resume file" 2 10 "--metrics would overwrite an input of this run (the --resume" -- \
  --config "$cfg" --resume "$tmp/good.st" --metrics "$tmp/good.st"
mkdir "$tmp/tr" && ln "$cfg" "$tmp/tr/trace_rank0.json"
expect "--trace onto the config (hard link)" 2 10 "--trace would overwrite an input" -- --config "$cfg" --trace "$tmp/tr"
rm "$tmp/tr/trace_rank0.json" && cp "$tmp/good.st" "$tmp/tr/trace_rank0.json"
expect "--trace over a checkpoint" 2 10 "not a ddp-cnn trace" -- --config "$cfg" --trace "$tmp/tr"
cmp -s "$tmp/good.st" "$tmp/good.orig" && cmp -s "$tmp/tr/trace_rank0.json" "$tmp/good.orig" &&
  [ "$(cat "$tmp/notes.txt")" = notes ] && ok "refused outputs left their targets byte-identical" ||
  bad "a refused output changed its target"

# ---- case 6: stdout closed early (| head -1): the run completes, saves, exits 1 with one line
t0=$(now)
timeout -k 2 120 "$trainer" --config "$cfg" --save "$tmp/pipe.st" 2>"$tmp/err" | head -1 >/dev/null
rc=${PIPESTATUS[0]} dt=$(since "$t0")
if [ "$rc" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -qF "stdout: writing the log failed (Broken pipe)" "$tmp/err" &&
  [ "$("$tool" meta "$tmp/pipe.st" epoch 2>/dev/null)" = 2 ]; then
  ok "stdout closed (| head -1): exit 1 in ${dt} s, checkpoint of epoch 2 written: $(cat "$tmp/err")"
else bad "stdout closed: exit $rc, checkpoint epoch '$("$tool" meta "$tmp/pipe.st" epoch 2>/dev/null)'"; fi

# ---- case 14: lost or failed output is an error with its cause, and leaves no half-written file
t0=$(now)
timeout -k 2 60 "$trainer" --config "$cfg" >/dev/full 2>"$tmp/err"
rc=$? dt=$(since "$t0")
if [ "$rc" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -qF "stdout: writing the log failed (No space left on device)" "$tmp/err"; then
  ok "stdout on /dev/full: exit 1 in ${dt} s: $(cat "$tmp/err")"
else bad "stdout on /dev/full: exit $rc"; fi
# RLIMIT_FSIZE of 100 KiB in the rank only (SIGXFSZ ignored): writes past it fail with EFBIG, like a full disk.
limited() {
  timeout -k 2 120 mpirun --bind-to none --mca btl self $([ "$(id -u)" -eq 0 ] && echo --allow-run-as-root) -np 1 \
    bash -c 'trap "" XFSZ; ulimit -f 100; exec "$@"' _ "$trainer" --config "$cfg" --quiet "$@" >"$tmp/out" 2>"$tmp/err"
}
if command -v mpirun >/dev/null; then
  # A metrics file 400 bytes short of the limit: the next line (~700 B) is cut by the disk and removed again.
  python3 -c 'import sys; open(sys.argv[1], "w").write("{\"pad\":\"" + "x" * (102400 - 400 - 11) + "\"}\n")' "$tmp/m.jsonl"
  cp "$tmp/m.jsonl" "$tmp/m.orig" && cp "$tmp/good.orig" "$tmp/l.st"
  limited --resume "$tmp/l.st" --metrics "$tmp/m.jsonl"
  rc=$?
  if [ "$rc" -eq 1 ] && grep -qF "cannot write metrics: File too large" "$tmp/err" && cmp -s "$tmp/m.jsonl" "$tmp/m.orig"; then
    ok "metrics line cut by the disk (EFBIG): exit 1, the partial line removed: $(grep -o 'trainer: error: [^[]*' "$tmp/err")"
  else bad "metrics write failure: exit $rc, $(wc -c <"$tmp/m.jsonl") bytes (want $(wc -c <"$tmp/m.orig"))"; fi
  limited --epochs 40 --trace "$tmp/trfail"
  rc=$?
  if [ "$rc" -eq 1 ] && grep -qF "cannot write the trace: File too large" "$tmp/err" && [ -z "$(ls -A "$tmp/trfail")" ]; then
    ok "trace cut by the disk (EFBIG): exit 1, no truncated JSON left: $(grep -o 'trainer: error: [^[]*' "$tmp/err")"
  else bad "trace write failure: exit $rc, left: $(ls "$tmp/trfail" 2>/dev/null)"; fi
fi
long=$tmp$(printf '/%0200d' $(seq 1 20))/x.st
expect "a ${#long}-byte path in the message" 2 10 "cannot open checkpoint: No such file or directory: $long" -- \
  --config "$cfg" --resume "$long"

# ---- case 13: eval_batch larger than the test set is capped to it (peak memory as with eval_batch=32)
rss() { /usr/bin/time -f %M -o "$tmp/rss" timeout -k 2 120 "$trainer" --config "$cfg" --quiet --epochs 1 "$@" >/dev/null 2>"$tmp/err" && cat "$tmp/rss"; }
if [ -x /usr/bin/time ]; then
  a=$(rss --set net.eval_batch=32) b=$(rss --set net.eval_batch=30000)
  if [ -n "$a" ] && [ -n "$b" ] && [ "$b" -lt $((a + a / 5 + 20000)) ]; then
    ok "eval_batch=30000 with 32 test samples: peak RSS ${b} KiB (eval_batch=32: ${a} KiB)"
  else bad "eval_batch cap: peak RSS '${b}' KiB vs '${a}' KiB"; fi
fi

# ---- case 5: under an address-space limit OpenBLAS never spins: the run ends (exit 0, or 1 naming the allocation;
#      a limit below what the shared libraries need ends in the loader, 127)
# (Not under AddressSanitizer, which reserves terabytes of address space at start.)
# The limits are above what loading the trainer takes (its shared libraries: ~200 MB for a CPU build, ~1 GB
# with CUDA, cuDNN, NCCL and oneDNN), found as the first of a ladder of limits at which `--help` runs.
# (Not `ldd | grep -q`: under pipefail, grep leaving early can fail the pipe with SIGPIPE, as it did in CI once.)
asan=0
{ grep -q libasan <<<"$(ldd "$trainer" 2>/dev/null)" || grep -qa __asan_init "$trainer"; } && asan=1
base=200000
while [ "$asan" -eq 0 ] && [ "$base" -lt 4000000 ] && ! bash -c 'ulimit -v "$1"; shift; exec "$@"' _ "$base" "$trainer" --help >/dev/null 2>&1; do
  base=$((base + 200000))
done
for v in $([ "$asan" -eq 0 ] && echo 300000 $((base + 800000)) $((base + 1100000)) $((base + 1400000))); do
  t0=$(now)
  timeout -k 2 60 bash -c 'ulimit -v "$1"; shift; exec "$@"' _ "$v" "$trainer" --config "$cfg" --quiet --epochs 1 \
    >"$tmp/out" 2>"$tmp/err"
  rc=$? dt=$(since "$t0")
  if { [ "$rc" -eq 0 ] || { [ "$rc" -eq 1 ] && grep -q "out of .*memory.*allocat\|out of memory allocating" "$tmp/err"; } ||
       { [ "$rc" -eq 127 ] && grep -q "error while loading shared libraries" "$tmp/err"; }; } &&
    [ "$(wc -l <"$tmp/err")" -le 1 ] && awk -v d="$dt" 'BEGIN { exit !(d < 30) }'; then
    ok "ulimit -v $v: exit $rc in ${dt} s $(cut -c1-140 "$tmp/err")"
  else bad "ulimit -v $v: exit $rc in ${dt} s (want 0, or 1 naming the allocation, < 30 s)"; fi
done

[ "$(md5sum "${inputs[@]}")" = "$sums_before" ] && ok "no input file changed (md5)" || bad "an input file changed"
finish
