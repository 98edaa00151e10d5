#!/usr/bin/env bash
# needs: mpi
# cli_model_use.sh — using a trained model: self-contained checkpoints (the config travels in
# the metadata), --eval equal to the training run's epoch figures, --predict CSV, fine-tuning with --init-from
# and a new head, --save-every / --keep-best / --resume-if-exists files, and each bad input exit 2 with one line.
# Small data: Fashion-MNIST with data.train_limit / data.test_limit. Prints the measured figures.
# Run by ctest: cli_model_use.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
make_tmp --cd
cfg=$src/configs/fashion_mnist_cnn.cfg
small=(--set data.train_limit=2000 --set data.test_limit=500 --threads 1)

# expect NAME WANT -- ARGS: exit 2, one stderr line containing WANT, nothing on stdout.
expect2() {
  local name=$1 want=$2; shift 3
  timeout -k 2 120 "$trainer" "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$? lines
  lines=$(wc -l <"$tmp/err")
  if [ "$rc" -eq 2 ] && [ "$lines" -eq 1 ] && grep -qF -- "$want" "$tmp/err" && [ ! -s "$tmp/out" ]; then
    ok "$name: exit 2: $(cut -c1-160 "$tmp/err")"
  else
    bad "$name: exit $rc, $lines stderr line(s), $(wc -c <"$tmp/out") bytes on stdout (want exit 2, one line with '$want')"
  fi
}
json() { python3 -c "import json,sys; d=json.loads(open(sys.argv[1]).readlines()[int(sys.argv[3])]); print(d[sys.argv[2]])" "$@"; }

# ---- train one epoch: the checkpoint, its copies and the metrics line
if run --config "$cfg" --epochs 1 "${small[@]}" --save ck.safetensors --metrics m.jsonl --save-every 1 --keep-best; then
  ok "train 1 epoch with --save --metrics --save-every 1 --keep-best"
else
  bad "train 1 epoch"; exit 1
fi
for f in ck.safetensors ck-e1.safetensors ck-best.safetensors; do
  [ -s "$f" ] && ok "file $f written" || bad "file $f missing"
done
train_loss=$(json m.jsonl test_loss 0) train_acc=$(json m.jsonl test_acc 0)

# ---- --eval without --config: the stored config, and exactly the epoch's figures
if run --eval ck.safetensors --metrics ev.json; then
  ev_loss=$(json ev.json test_loss 0) ev_acc=$(json ev.json test_acc 0) same=$(json ev.json same_as_training_run 0)
  fl=$(printf '%.6f' "$ev_loss") fa=$(printf '%.6f' "$ev_acc")
  if [ "$fl" = "$(printf '%.6f' "$train_loss")" ] && [ "$fa" = "$(printf '%.6f' "$train_acc")" ] && [ "$same" = True ] &&
    grep -q "identical (every bit)" "$tmp/out"; then
    ok "--eval (no --config): test loss $ev_loss acc $ev_acc = training run's $train_loss / $train_acc, bit-identical to the epoch's"
  else
    bad "--eval: loss $ev_loss acc $ev_acc same=$same vs metrics $train_loss $train_acc"
  fi
  python3 - ev.json <<'PY' && ok "--eval JSON: confusion 10x10 sums to 500, diagonal/500 = test_acc, per-class acc from rows" || bad "--eval JSON consistency"
import json, math, sys
d = json.load(open(sys.argv[1]))
c = d["confusion"]
assert len(c) == 10 and all(len(r) == 10 for r in c)
n = sum(map(sum, c)); diag = sum(c[i][i] for i in range(10))
assert n == 500 == d["test_samples"], n
# cJSON writes 15 significant digits when they read back within an ulp or so: compare to 1e-12, not bit for bit
assert math.isclose(diag / n, d["test_acc"], rel_tol=1e-12), (diag, d["test_acc"])
for i in range(10):
    assert d["class_samples"][i] == sum(c[i])
    assert math.isclose(d["per_class_acc"][i], c[i][i] / sum(c[i]), rel_tol=1e-12), (i, d["per_class_acc"][i])
PY
  grep -q "confusion matrix" "$tmp/out" && ok "--eval prints the confusion matrix" || bad "--eval prints no confusion matrix"
else
  bad "--eval ck.safetensors (exit $?)"
fi
# With --config too (it wins; the same model): the same figures.
run --eval ck.safetensors --config "$cfg" "${small[@]}" && grep -q "identical (every bit)" "$tmp/out" &&
  ok "--eval with --config: identical" || bad "--eval with --config"

# ---- under mpirun np 2: the ranks split the test set; the confusion matrix is summed over ranks
if timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" --eval ck.safetensors --metrics ev2.json >"$tmp/out" 2>"$tmp/err"; then
  if python3 -c "
import json; a = json.load(open('ev.json')); b = json.load(open('ev2.json'))
assert b['world_size'] == 2 and a['confusion'] == b['confusion'] and a['test_acc'] == b['test_acc']
assert abs(a['test_loss'] - b['test_loss']) < 1e-6 * a['test_loss']  # other batches: GEMM rounding
print(a['test_loss'], b['test_loss'])" >"$tmp/np2" 2>>"$tmp/err"; then
    ok "--eval at np 2: same confusion matrix and accuracy; loss np 1 vs np 2: $(cat "$tmp/np2") (batches of 250, not 500)"
  else
    bad "--eval at np 2 differs from np 1"
  fi
else
  bad "--eval under mpirun -np 2"
fi
# Trained at np 2, evaluated at np 2: the epoch's figures exactly.
if timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" --config "$cfg" --epochs 1 "${small[@]}" --batch 32 --save ck2.safetensors \
  >"$tmp/out" 2>"$tmp/err" &&
  timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" --eval ck2.safetensors >"$tmp/out" 2>"$tmp/err" &&
  grep -q "identical (every bit)" "$tmp/out"; then
  ok "trained at np 2, --eval at np 2: $(grep '^test loss' "$tmp/out"), identical to the epoch's"
else
  bad "np 2 train + eval"
fi

# ---- --predict: CSV with a header and one row per image; probabilities sum to 1; top class = eval accuracy
python3 - "$data" <<'PY'
import gzip, sys
d = sys.argv[1]
img = gzip.open(f"{d}/t10k-images-idx3-ubyte.gz").read()
lab = gzip.open(f"{d}/t10k-labels-idx1-ubyte.gz").read()
n = 500
open("test500-images.idx", "wb").write(bytes.fromhex("00000803") + n.to_bytes(4, "big") + img[8:16] + img[16:16 + n * 784])
open("test500-labels", "wb").write(lab[8:8 + n])
PY
if run --predict ck.safetensors --images test500-images.idx --out p.csv; then
  if python3 - "$ev_acc" >"$tmp/pred" 2>>"$tmp/err" <<'PY'
import csv, sys
rows = list(csv.reader(open("p.csv")))
assert rows[0] == ["index", "class"] + [f"p{k}" for k in range(10)], rows[0]
rows = rows[1:]
assert len(rows) == 500, len(rows)
lab = open("test500-labels", "rb").read()
worst = 0
for i, r in enumerate(rows):
    assert int(r[0]) == i
    p = list(map(float, r[2:]))
    worst = max(worst, abs(sum(p) - 1))
    assert int(r[1]) == p.index(max(p))
assert worst <= 1e-5, worst
acc = sum(int(r[1]) == lab[i] for i, r in enumerate(rows)) / 500
assert acc == float(sys.argv[1]), (acc, sys.argv[1])
print(f"500 rows + header, max |sum p - 1| = {worst:.1e}, top-class accuracy {acc} = --eval's")
PY
  then ok "--predict --out p.csv: $(cat "$tmp/pred")"; else bad "--predict CSV: $(tail -1 "$tmp/err")"; fi
  echo "     p.csv: $(sed -n 2p p.csv | cut -c1-110)..."
else
  bad "--predict (exit $?)"
fi
run --predict ck.safetensors --images test500-images.idx && [ "$(wc -l <"$tmp/out")" -eq 501 ] &&
  cmp -s "$tmp/out" p.csv && ok "--predict without --out: the same CSV on stdout, nothing else" || bad "--predict to stdout"

# ---- fine-tuning: weights only, a new head
run --config "$cfg" --epochs 1 "${small[@]}" --set data.train_limit=320 --metrics fresh.jsonl &&
  run --init-from ck.safetensors --init-exclude dense2 --epochs 1 "${small[@]}" --set data.train_limit=320 \
    --metrics ft.jsonl --save ft.safetensors
rc=$?
fresh=$(json fresh.jsonl test_acc 0 2>/dev/null) ft=$(json ft.jsonl test_acc 0 2>/dev/null)
if [ $rc -eq 0 ] && grep -q "6 of the model's 8 tensors loaded" "$tmp/out" &&
  awk -v a="$ft" -v b="$fresh" 'BEGIN { exit !(a > b + 0.05) }'; then
  ok "--init-from ck --init-exclude dense2 (5 steps): test acc $ft vs $fresh from a fresh model"
else
  bad "fine-tuning: rc $rc, acc $ft vs fresh $fresh"
fi
# Starting from the loaded weights, tensor by tensor: at lr 1e-30 an epoch changes no weight, so conv1..dense1 must
# be the checkpoint's bit for bit and dense2 a fresh model's (the same seed's initialisation).
tiny=(--epochs 1 "${small[@]}" --set data.train_limit=320 --set net.lr=1e-30)
run --config "$cfg" "${tiny[@]}" --save fresh0.safetensors &&
  run --init-from ck.safetensors --init-exclude dense2 "${tiny[@]}" --save ft0.safetensors &&
  python3 - ck.safetensors ft0.safetensors fresh0.safetensors <<'PY' >"$tmp/tensors" 2>"$tmp/err"
import json, struct, sys
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); base = 8 + n
    return {k: b[base + v["data_offsets"][0]:base + v["data_offsets"][1]] for k, v in h.items() if k != "__metadata__"}
ck, ft, fresh = (load(p) for p in sys.argv[1:4])
for name in ("conv1.weight", "conv2.weight", "dense1.weight"):
    assert ft[name] == ck[name], name
assert ft["dense2.weight"] == fresh["dense2.weight"] and ft["dense2.weight"] != ck["dense2.weight"]
assert "optim.adam_m.conv1.weight" in ft
print("conv1, conv2, dense1 weights = the checkpoint's; dense2 = a fresh model's")
PY
[ $? -eq 0 ] && ok "fine-tuning starts from the loaded weights: $(cat "$tmp/tensors")" || bad "fine-tuning start tensors"

# ---- --resume-if-exists: a fresh start, then the same line continues
rm -f r.safetensors
line=(--config "$cfg" "${small[@]}" --set data.train_limit=320 --save r.safetensors --resume-if-exists --metrics r.jsonl)
run "${line[@]}" --epochs 1 && [ -s r.safetensors ] && ok "--resume-if-exists without the file: fresh start, r.safetensors written" ||
  bad "--resume-if-exists first run"
run "${line[@]}" --epochs 2 && [ "$(json r.jsonl epoch 1)" = 2 ] &&
  ok "--resume-if-exists with the file: resumed, epoch 2 appended to the metrics" || bad "--resume-if-exists requeue"
run --config "$cfg" "${small[@]}" --set data.train_limit=320 --epochs 3 --save s.safetensors --save-every 2 &&
  [ -s s-e2.safetensors ] && [ ! -e s-e1.safetensors ] && [ ! -e s-e3.safetensors ] &&
  ok "--save-every 2 over 3 epochs: s-e2.safetensors only" || bad "--save-every 2"
# --resume without --config: the checkpoint's own configuration
run --resume r.safetensors --save r.safetensors --epochs 3 && ok "--resume without --config (stored config)" || bad "--resume without --config"

# ---- bad input: exit 2, one line, nothing written
printf 'x' >foreign.txt
python3 - <<'PY'
import json, struct
h = json.dumps({"fc.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
h += b" " * (-len(h) % 8)
open("foreign.safetensors", "wb").write(struct.pack("<Q", len(h)) + h + bytes(8))
open("wrong-images.idx", "wb").write(bytes.fromhex("00000803") + (2).to_bytes(4, "big") + (32).to_bytes(4, "big") * 2 + bytes(2 * 1024))
PY
md5_before=$(md5sum ck.safetensors p.csv)
expect2 "--eval, another architecture" "tensor 'conv1.weight' has shape [32,1,3,3], expected [16,1,3,3]" -- \
  --eval ck.safetensors --config "$cfg" "${small[@]}" --set conv1.filters=16
expect2 "--predict, images of the wrong shape" "wrong-images.idx: images are 1x32x32 (channels x height x width), but the model of ck.safetensors (its stored config) takes 1x28x28" -- \
  --predict ck.safetensors --images wrong-images.idx --out new.csv
[ ! -e new.csv ] && ! ls new.csv.tmp.* >/dev/null 2>&1 && ok "  no CSV written" || bad "a CSV was left"
expect2 "--init-from, nothing matching" "none of the model's tensors" -- --init-from foreign.safetensors --config "$cfg" "${small[@]}"
expect2 "--eval of a file without a stored config" "holds no stored configuration" -- --eval foreign.safetensors
expect2 "--init-exclude naming no layer" "--init-exclude: 'dense7' names no layer or tensor" -- \
  --init-from ck.safetensors --init-exclude dense7
expect2 "--init-from, shapes differ" "tensor 'dense1.weight' has shape [64,1600], expected [32,1600]" -- \
  --init-from ck.safetensors --set dense1.units=32
expect2 "--save onto the --init-from checkpoint" "--save would overwrite an input of this run (the --init-from checkpoint ck.safetensors)" -- \
  --init-from ck.safetensors --init-exclude dense2 --save ck.safetensors
expect2 "--eval with --resume" "--eval cannot be combined with --resume" -- --eval ck.safetensors --resume ck.safetensors
expect2 "--eval with --save" "--eval cannot be combined with --save" -- --eval ck.safetensors --save x.safetensors
expect2 "--predict without --images" "--predict needs --images PATH" -- --predict ck.safetensors
expect2 "--eval and --predict" "--eval and --predict cannot be combined" -- --eval ck.safetensors --predict ck.safetensors
expect2 "--images without --predict" "--images is for --predict" -- --eval ck.safetensors --images test500-images.idx
expect2 "--out without --predict" "--out is for --predict" -- --config "$cfg" --out x.csv
expect2 "--init-exclude without --init-from" "--init-exclude needs --init-from" -- --config "$cfg" --init-exclude dense2
expect2 "--init-from with --resume" "--init-from and --resume cannot be combined" -- --resume ck.safetensors --init-from ck.safetensors
expect2 "--resume-if-exists without --save" "--resume-if-exists needs --save FILE" -- --config "$cfg" --resume-if-exists
expect2 "--keep-best without --save" "--keep-best needs --save FILE" -- --config "$cfg" --keep-best
expect2 "--save-every 0" "--save-every: '0' is not a positive number" -- --config "$cfg" --save-every 0
expect2 "no --config and no checkpoint" "--config FILE is required without a checkpoint" -- --epochs 1
expect2 "--out onto the checkpoint" "refusing to overwrite an existing file that is not a predictions CSV" -- \
  --predict ck.safetensors --images test500-images.idx --out ck-e1.safetensors
expect2 "--out onto the images" "--out would overwrite an input of this run (the --images file" -- \
  --predict ck.safetensors --images test500-images.idx --out test500-images.idx
timeout -k 2 120 "${mpi[@]}" -np 2 "$trainer" --predict ck.safetensors --images test500-images.idx --out new.csv \
  >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -eq 2 ] && [ "$(grep -c 'runs as one process (np 1), this job has 2 ranks' "$tmp/err")" -eq 1 ] && [ ! -e new.csv ]; then
  ok "--predict at np 2: exit 2: $(grep -m1 'np 1' "$tmp/err" | cut -c1-120)"
else
  bad "--predict at np 2: exit $rc"
fi
[ "$md5_before" = "$(md5sum ck.safetensors p.csv)" ] && ok "inputs and earlier outputs unchanged (md5)" || bad "a file changed"

finish cli_model_use
