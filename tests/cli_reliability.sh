#!/usr/bin/env bash
# needs: mpi
# cli_reliability.sh — derived outputs never overwrite inputs, checkpoints stay self-contained whatever the paths,
# eval/predict stop on signals, nothing non-finite is ever saved. Each case asserts the exit code, the message,
# the time to exit, and that no input changed (sha256 before and after). Prints one line per case with those
# figures (docs/reliability.md).
# Run by ctest: cli_reliability.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
make_tmp --cd
cfg=$src/configs/fashion_mnist_cnn.cfg
# 4 steps per epoch at batch 64: every training run here takes well under a second.
small=(--set data.train_limit=256 --set data.test_limit=128 --threads 1 --quiet)

hash() { sha256sum "$1" 2>/dev/null | cut -c1-12; }
# expect NAME CODE WANT [--unchanged FILE]... -- ARGS: the trainer exits CODE within 60 s with one stderr line
# holding WANT, and every --unchanged file has the same hash after as before.
expect() {
  local name=$1 code=$2 want=$3; shift 3
  local files=() before=()
  while [ "$1" = --unchanged ]; do files+=("$2"); before+=("$(hash "$2")"); shift 2; done
  shift  # --
  local t0 rc lines changed=""
  t0=$(now)
  timeout -k 2 60 "$trainer" "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  lines=$(wc -l <"$tmp/err")
  for i in "${!files[@]}"; do
    [ "$(hash "${files[$i]}")" = "${before[$i]}" ] || changed+=" ${files[$i]}"
  done
  if [ "$rc" -eq "$code" ] && [ "$lines" -eq 1 ] && grep -qF -- "$want" "$tmp/err" && [ -z "$changed" ]; then
    ok "$name: exit $rc in $(since "$t0") s${files[*]:+, unchanged: }${files[*]:+${files[*]} (${before[*]})}: $(cut -c1-170 "$tmp/err")"
  else
    bad "$name: exit $rc (want $code), $lines stderr line(s) (want 1 with '$want')${changed:+, changed:$changed}"
  fi
}
meta() {  # meta FILE KEY: a metadata value of a checkpoint ("" when absent)
  python3 -c 'import json,struct,sys; b=open(sys.argv[1],"rb").read(); n=struct.unpack("<Q",b[:8])[0]
print(json.loads(b[8:8+n]).get("__metadata__",{}).get(sys.argv[2],""))' "$1" "$2"
}

run --config "$cfg" "${small[@]}" --epochs 1 --save ck.safetensors --keep-best --save-every 1 ||
  { bad "train the checkpoints the cases start from"; finish reliability; exit 1; }

# ---- 1. derived outputs never replace the run's inputs (checked with every other output at start-up)
expect "--keep-best copy onto its own --init-from input" 2 "--keep-best would overwrite an input of this run" \
  --unchanged ck-best.safetensors -- --config "$cfg" "${small[@]}" --init-from ck-best.safetensors --save ck.safetensors --keep-best
expect "--save-every copy onto its own --init-from input" 2 "--save-every would overwrite an input of this run" \
  --unchanged ck-e1.safetensors -- --config "$cfg" "${small[@]}" --init-from ck-e1.safetensors --save ck.safetensors --save-every 1
expect "--keep-best copy onto its own --resume input" 2 "--keep-best would overwrite an input of this run" \
  --unchanged ck-best.safetensors -- --config "$cfg" "${small[@]}" --epochs 2 --resume ck-best.safetensors --save ck.safetensors --keep-best
ln -s ck-best.safetensors link.safetensors
expect "--keep-best copy onto its input through a symlink" 2 "would overwrite an input" \
  --unchanged ck-best.safetensors -- --config "$cfg" "${small[@]}" --init-from link.safetensors --save ck.safetensors --keep-best

# ---- late detection, now at start-up: exit 2 before any epoch (nothing on stdout, no checkpoint)
echo "not a checkpoint" >foreign-best.safetensors
expect "a foreign file at <stem>-best" 2 "--keep-best: refusing to overwrite an existing file that is not a safetensors" \
  --unchanged foreign-best.safetensors -- --config "$cfg" "${small[@]}" --save foreign.safetensors --keep-best
[ ! -e foreign.safetensors ] && ok "  ... and no foreign.safetensors written" || bad "foreign.safetensors written"
expect "--save m --metrics m" 2 "--save and --metrics name the same file" -- --config "$cfg" "${small[@]}" --save m --metrics m
[ ! -e m ] && ok "  ... and nothing written at m" || bad "m written"
expect "--save X --trace X" 2 "--save and --trace name the same file" -- --config "$cfg" "${small[@]}" --save X --trace X
expect "--metrics D/trace_rank0.json --trace D" 2 "--metrics and --trace name the same file" \
  -- --config "$cfg" "${small[@]}" --metrics D/trace_rank0.json --trace D
expect "--metrics ./D/../D/trace_rank0.json --trace D (another spelling)" 2 "--metrics and --trace name the same file" \
  -- --config "$cfg" "${small[@]}" --metrics ./D/../D/trace_rank0.json --trace D
expect "--out onto --images" 2 "--out would overwrite an input of this run" --unchanged ck.safetensors \
  -- --predict ck.safetensors --images ck.safetensors --out ck.safetensors
expect "a legal --save whose -best copy's name is over NAME_MAX" 2 "--keep-best: a path component of 257 bytes, more than" \
  -- --config "$cfg" "${small[@]}" --save "$(printf 'a%.0s' $(seq 240)).safetensors" --keep-best
# A legal 1,090-character --save path with --keep-best: works, copies included.
long=$tmp
for c in d e f g i; do long=$long/$(printf "$c%.0s" $(seq 200)); done
mkdir -p "$long"
lsave=$long/$(printf 'h%.0s' $(seq $((1090 - ${#long} - 13)))).safetensors
if run --config "$cfg" "${small[@]}" --epochs 1 --save "$lsave" --keep-best && [ -s "${lsave%.safetensors}-best.safetensors" ]; then
  ok "a ${#lsave}-character --save path with --keep-best: exit 0, copy written"
else
  bad "a ${#lsave}-character --save path with --keep-best"
fi

# ---- 2. a checkpoint stays self-contained whatever its paths (the stored config round-trips)
lcfg=$tmp/$(printf 'c%.0s' $(seq 170)).cfg
cp "$cfg" "$lcfg"
if run --config "$lcfg" "${small[@]}" --epochs 1 --save lc.safetensors && run --eval lc.safetensors --quiet; then
  ok "a ${#lcfg}-character config path: saved, then --eval from the stored config: exit 0"
else
  bad "a long config path: --eval from the stored config"
fi
nl_cfg=$'new\nline.cfg'
cp "$cfg" "$nl_cfg"
if run --config "$nl_cfg" "${small[@]}" --epochs 1 --save nl.safetensors && run --eval nl.safetensors --quiet; then
  ok "a config file name with a newline: --eval from the stored config: exit 0"
else
  bad "a config file name with a newline"
fi
# A data path with " ;" and "#" in it (a directory of links to the data files).
ddir="$tmp/data ;x #y"
mkdir -p "$ddir"
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  ln -s "$data/$f" "$ddir/$f"
done
dsets=(--set "data.train_images=$ddir/train-images-idx3-ubyte.gz" --set "data.train_labels=$ddir/train-labels-idx1-ubyte.gz"
       --set "data.test_images=$ddir/t10k-images-idx3-ubyte.gz" --set "data.test_labels=$ddir/t10k-labels-idx1-ubyte.gz")
if run --config "$cfg" "${small[@]}" "${dsets[@]}" --epochs 1 --save dp.safetensors && run --eval dp.safetensors --quiet &&
  run --resume dp.safetensors --print-config && grep -qF 'train_images="' "$tmp/out" &&
  python3 - "$tmp/out" "$ddir" <<'PY'
import sys
text = open(sys.argv[1]).read()
line = [l for l in text.splitlines() if l.startswith("train_images=")][0]
value = line.split("=", 1)[1].strip('"').replace("\\x3b", ";").replace("\\x23", "#")
assert value == sys.argv[2] + "/train-images-idx3-ubyte.gz", (value, sys.argv[2])
PY
then
  ok "a data path with ' ;' and '#': --eval and --print-config from the stored config keep it whole"
else
  bad "a data path with ' ;' and '#'"
fi
# A requeue chain --resume ck --save ck (no --config) under a long checkpoint path.
lck=$long/chain.safetensors
if run --config "$cfg" "${small[@]}" --epochs 1 --save "$lck" && run --resume "$lck" --save "$lck" --epochs 2 --quiet &&
  run --resume "$lck" --save "$lck" --epochs 3 --quiet && [ "$(meta "$lck" epoch)" = 3 ]; then
  ok "requeue chain --resume/--save at a ${#lck}-character path, no --config: 3 epochs, each resume read the last save"
else
  bad "requeue chain under a long path"
fi

# ---- 3. finite or nothing: an update that overflows (SGD, lr 1e30, inputs scaled by 1e10)
overflow=(--config "$cfg" "${small[@]}" --set net.optimizer=sgd --lr 1e30 --set data.normalize=1 --set data.mean=0
          --set data.std=1e-10)
expect "one overflowing update, --steps 1 --save x" 3 "training diverged at step 1 (epoch 1): the update left" \
  -- "${overflow[@]}" --steps 1 --save x.safetensors
[ ! -e x.safetensors ] && ok "  ... and no x.safetensors written" || bad "x.safetensors written with non-finite values"
run "${overflow[@]}" --lr 1e-30 --epochs 1 --save g.safetensors || bad "the last good checkpoint g (lr 1e-30)"
expect "--resume g --save g with an overflowing update" 3 "g.safetensors was not replaced" --unchanged g.safetensors \
  -- "${overflow[@]}" --epochs 2 --resume g.safetensors --save g.safetensors

# ---- 4. every checkpoint tensor is used
expect "--eval ck --set conv1.bias=0" 2 "tensor 'conv1.bias' is not used by the model" -- --eval ck.safetensors --set conv1.bias=0
expect "--resume ck --set conv1.bias=0" 2 "tensor 'conv1.bias' is not used by the model" --unchanged ck.safetensors \
  -- --resume ck.safetensors --set conv1.bias=0 --epochs 2 --save ck.safetensors
expect "--init-from ck --set conv1.bias=0" 2 "unless --init-exclude names it: --init-exclude conv1.bias" \
  -- --init-from ck.safetensors --set conv1.bias=0 --epochs 1 "${small[@]}"
run --init-from ck.safetensors --set conv1.bias=0 --init-exclude conv1.bias --epochs 1 "${small[@]}" &&
  ok "--init-from ck --set conv1.bias=0 --init-exclude conv1.bias: exit 0" || bad "--init-exclude of a tensor the model lacks"

# ---- 5. signals everywhere: --eval and --predict stop within a batch, a signal during start-up is exit 5
images=$data/t10k-images-idx3-ubyte.gz
stop_case() {  # stop_case NAME SIGNAL DELAY WANT -- ARGS
  local name=$1 sig=$2 delay=$3 want=$4; shift 5
  local t0 pid rc
  "$trainer" "$@" >"$tmp/out" 2>"$tmp/err" &
  pid=$!
  # The handlers are main's first act; before it (the dynamic loader mapping the libraries) nothing of ours runs.
  # So wait until the process catches SIGTERM (bit 15 of SigCgt in /proc), then the given delay.
  for _ in $(seq 3000); do  # at most 30 s: a loaded machine (ctest -j) may take seconds to map the libraries
    (( 0x$(sed -n 's/^SigCgt:\t*//p' "/proc/$pid/status" 2>/dev/null || echo 0) & 0x4000 )) && break
    sleep 0.01
  done
  sleep "$delay"
  t0=$(now)
  kill -s "$sig" "$pid"
  for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  wait "$pid"
  rc=$?
  if [ "$rc" -eq 5 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -qF -- "$want" "$tmp/err"; then
    ok "$name: SIG$sig after $delay s: exit 5, $(since "$t0") s after the signal: $(cat "$tmp/err")"
  else
    bad "$name: SIG$sig: exit $rc (want 5 and one line with '$want')"
  fi
}
slow_eval=(--eval ck.safetensors --set data.test_limit=0 --set net.eval_batch=1 --quiet)
for sig in INT TERM HUP USR1; do stop_case "--eval" "$sig" 0.8 "--eval stopped by signal after" -- "${slow_eval[@]}"; done
stop_case "--predict --out p.csv" TERM 0.8 "--predict stopped by signal after" -- \
  --predict ck.safetensors --images "$images" --set net.eval_batch=1 --out p.csv
[ ! -e p.csv ] && ok "  ... and no p.csv (nor a partial one)" || bad "p.csv written by a stopped --predict"
stop_case "training, during start-up" TERM 0 "stopped by signal during start-up" -- --config "$cfg" --threads 1 --save su.safetensors
[ ! -e su.safetensors ] && ok "  ... and nothing saved" || bad "su.safetensors saved after a start-up signal"

# ---- 6. MPMD: run options that decide collectives and saves are agreed on (exit 2 naming the option)
t0=$(now)
timeout -k 2 60 "${mpi[@]}" -np 1 "$trainer" --config "$cfg" "${small[@]}" --save mp.safetensors : \
  -np 1 "$trainer" --config "$cfg" "${small[@]}" >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 2 ] && grep -qF "options.--save=not given where rank 0 has options.--save=given" "$tmp/err" && [ ! -e mp.safetensors ]; then
  ok "MPMD, --save on rank 0 only: exit 2 in $(since "$t0") s: $(grep trainer "$tmp/err" | head -1 | cut -c1-170)"
else
  bad "MPMD --save on rank 0 only: exit $rc"
fi

# ---- 7. --predict refuses non-finite outputs (a checkpoint whose last layer overflows)
python3 - ck.safetensors huge.safetensors <<'PY'
import json, struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
lo, hi = h["dense2.weight"]["data_offsets"]
b[8 + n + lo:8 + n + hi] = struct.pack("<f", 3e38) * ((hi - lo) // 4)
open(sys.argv[2], "wb").write(b)
PY
expect "--predict with logits that overflow" 2 "non-finite logit" -- --predict huge.safetensors --images "$images" --out h.csv
[ ! -e h.csv ] && ok "  ... and no h.csv" || bad "h.csv written with non-finite rows"

# ---- small cases
awk '{print} /^units=64/{getline; print; print "\n[batchnorm]"}' "$cfg" >bn.cfg
expect "batch norm after [dense] at --batch 1" 2 "layer 'bn1' (line 50) normalises with batch statistics" \
  -- --config bn.cfg "${small[@]}" --batch 1 --epochs 1
timeout -k 2 60 "${mpi[@]}" -np 2 "$trainer" --config bn.cfg "${small[@]}" --batch 1 --epochs 1 >"$tmp/out" 2>"$tmp/err"
rc=$?
n=$(grep -c "normalises with batch statistics" "$tmp/err")
[ "$rc" -eq 2 ] && [ "$n" -eq 1 ] && ! grep -q MPI_ABORT "$tmp/err" &&
  ok "  ... at np 2: exit 2, printed once, no MPI_Abort" || bad "batch norm at np 2: exit $rc, printed $n times"
run --config "$cfg" "${small[@]}" --epochs 2 --save e2.safetensors
expect_done() {  # expect_done NAME WANT FILE -- ARGS: exit 0, stdout holds WANT, FILE unchanged
  local name=$1 want=$2 file=$3 h; shift 4
  h=$(hash "$file")
  if run "$@" && grep -qF -- "$want" "$tmp/out" && [ "$(hash "$file")" = "$h" ]; then
    ok "$name: exit 0, $file unchanged: $(cat "$tmp/out")"
  else
    bad "$name: $(cat "$tmp/out" "$tmp/err")"
  fi
}
expect_done "--resume of an epoch-2 checkpoint with --epochs 1" "nothing left to train" e2.safetensors -- \
  --resume e2.safetensors --save e2.safetensors --epochs 1
expect_done "--resume of a step-8 checkpoint with --steps 8" "nothing left to train" e2.safetensors -- \
  --resume e2.safetensors --save e2.safetensors --epochs 3 --steps 8
run --config "$cfg" "${small[@]}" --epochs 2 --steps 4 --save s4.safetensors
[ "$(meta s4.safetensors epoch)" = 1 ] && [ -n "$(meta s4.safetensors test_loss)" ] &&
  ok "--epochs 2 --steps 4 (step 4 ends epoch 1): the checkpoint keeps epoch 1's test_loss $(meta s4.safetensors test_loss)" ||
  bad "--steps at an epoch's end rewrote the checkpoint without its test figures"
run --config "$cfg" "${small[@]}" --epochs 2 --steps 6 --save s6.safetensors
if run --eval s6.safetensors --metrics ev.json &&
  python3 -c 'import json,sys; d=json.load(open("ev.json")); assert (d["epoch"], d["epoch_complete"], d["step"]) == (2, False, 6), d'; then
  ok "--eval --metrics of a mid-epoch checkpoint (step 6 of 4 per epoch): epoch 2, epoch_complete false, step 6"
else
  bad "--eval of a mid-epoch checkpoint reports the wrong epoch"
fi
finish reliability
