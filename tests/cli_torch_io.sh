#!/usr/bin/env bash
# cli_torch_io.sh — torchvision in and out (launch/import_torchvision.py, launch/export_onnx.py, tests/torch_io.py):
# torchvision's resnet18 and resnet50 (and mobilenet_v2 when configs/mobilenet_v2.cfg exists), 10 classes, batch
# norm statistics made random, imported as checkpoints: --predict's probabilities on 64x64 PNGs (data.resize=0,
# normalize=imagenet) give torchvision's eval-mode logits within 1e-4 relative (centred: softmax drops a constant),
# --eval its test loss; a --resume of one is refused (a weights-only file); --init-from one fine-tunes resnet18 a
# step (new 2-class head) and that checkpoint loads into torchvision.models.resnet18(num_classes=2) with
# load_state_dict(strict=True), giving --predict's logits again; then it is exported to ONNX (export_onnx.py) and
# onnxruntime's probabilities equal --predict's within 1e-5. Skips (77) when torch + torchvision are not importable
# by $PYTHON, python3 or /tmp/ddp-bench-venv/bin/python (the ONNX part alone when onnx + onnxruntime are not):
# never a hard dependency. Run by ctest: cli_torch_io.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
t0=$(now)
py="" pyo="" info=""
probe='import importlib.util as u, torch, torchvision
print(int(all(u.find_spec(m) for m in ("onnx", "onnxruntime"))), "torch", torch.__version__, "torchvision", torchvision.__version__)'
for p in ${PYTHON:-} python3 /tmp/ddp-bench-venv/bin/python; do
  i=$("$p" -c "$probe" 2>/dev/null) || continue
  [ -n "$py" ] || py=$p info=${i#? }
  if [ "${i%% *}" = 1 ]; then pyo=$p; break; fi
done
[ -n "$py" ] || { echo "SKIP: torch + torchvision are not importable (\$PYTHON, python3, /tmp/ddp-bench-venv/bin/python)"; exit 77; }
echo "python: $py ($info)${pyo:+; onnx + onnxruntime: $pyo}"
make_tmp --cd
export TRAINER=$trainer  # launch/torch_model.py's layer registry: this trainer's
io=("$py" "$src/tests/torch_io.py")
# pysteps WHAT CMD...: a Python program; each "RESULT ok|bad LINE" it prints (tests/torch_io.py) is one check, the
# other lines are shown; an exit status not 0 without a bad RESULT is one failed check (WHAT)
pysteps() {
  local what=$1 rc=0 line n=0; shift
  timeout -k 2 300 "$@" >"$tmp/py.out" 2>"$tmp/err" || rc=$?
  while IFS= read -r line; do
    case $line in
      "RESULT ok "*) ok "${line#RESULT ok }" ;;
      "RESULT bad "*) n=$((n + 1)); bad "${line#RESULT bad }" ;;
      *) echo "     $line" ;;
    esac
  done <"$tmp/py.out"
  if [ "$rc" -ne 0 ] && [ "$n" -eq 0 ]; then bad "$what (exit $rc)"; fi
  [ "$rc" -eq 0 ]
}
at64=(--set net.height=64 --set net.width=64 --set data.resize=0)  # 64x64 PNGs: center crop of the same size

archs="resnet18 resnet50"
[ -f "$src/configs/mobilenet_v2.cfg" ] && archs+=" mobilenet_v2"
# One Python start-up (importing torch and torchvision takes seconds) for the inputs: PNGs (10 classes for --eval
# and --predict, 2 for fine-tuning) and, per model, torchvision weights with random batch-norm statistics
prep=(pngs test 10 64 --classes 10 + pngs train 8 64 --classes 2 --seed 3)
for a in $archs; do prep+=(+ weights --arch "$a" --num-classes 10 --out "$a.pth"); done
pysteps "the test inputs" "${io[@]}" "${prep[@]}" || { finish cli_torch_io; exit 1; }

# Import each model; --predict on the 10 PNGs; compared below
checks=()
for a in $archs; do
  s=$(now)
  if timeout -k 2 300 "$py" "$src/launch/import_torchvision.py" --arch "$a" --num-classes 10 --weights "$a.pth" \
    --trainer "$trainer" --out "$a.safetensors" >"$tmp/out" 2>"$tmp/err"; then
    ok "import_torchvision.py --arch $a: $(tail -1 "$tmp/out") ($(since "$s") s)"
  else bad "import_torchvision.py --arch $a"; continue; fi
  if run --predict "$a.safetensors" --images test "${at64[@]}" --out "p-$a.csv"; then
    checks+=(+ compare "p-$a.csv" --arch "$a" --num-classes 10 --weights "$a.pth")
  else bad "$a: --predict of the imported checkpoint"; fi
done

# --eval of an imported checkpoint: the folder's 10 classes; its loss is torchvision's cross entropy
if run --eval resnet18.safetensors "${at64[@]}" --set data.test_dir=test --set data.train_dir=test \
  --set data.val_fraction=0 --metrics eval.json; then
  checks+=(+ eval eval.json --arch resnet18 --num-classes 10 --weights resnet18.pth --dir test)
else bad "resnet18: --eval of the imported checkpoint"; fi

# A weights-only file is no training checkpoint: --resume refuses it, naming its format
if ! run --resume resnet18.safetensors --save rs.safetensors "${at64[@]}" --set data.train_dir=test --set data.test_dir=test \
  --set data.val_fraction=0 --set net.batch=2 --steps 1 && has "metadata format is 'ddp-cnn-weights-1'"; then
  ok "--resume of an imported file: exit 2: $(tail -1 "$tmp/err" | cut -c1-150)"
else bad "--resume of an imported file was not refused by its format"; fi

# Fine-tuning: resnet18 from the imported weights with a new 2-class head, one step at 64x64 on a PNG folder;
# the trainer's checkpoint goes into torchvision.models.resnet18(num_classes=2) with strict=True
if run --init-from resnet18.safetensors --init-exclude fc --threads 2 --epochs 1 --steps 1 "${at64[@]}" \
  --set net.batch=4 --set net.classes=2 --set fc.units=2 --set data.train_dir=train --set data.test_dir=train \
  --set data.val_fraction=0 --set net.eval_batch=8 --save ft.safetensors && grep -q "120 of the model's 122 tensors loaded" "$tmp/out"; then
  ok "--init-from resnet18.safetensors --init-exclude fc: $(grep -m1 "tensors loaded" "$tmp/out" | cut -c1-60)...; one step saved"
else bad "fine-tuning from the imported resnet18"; fi
if run --predict ft.safetensors --images test --out p-ft.csv; then
  checks+=(+ strict ft.safetensors --arch resnet18 --num-classes 2 + compare p-ft.csv --arch resnet18 --num-classes 2 --ckpt ft.safetensors)
else bad "--predict ft.safetensors"; fi

# ONNX: the trainer's checkpoint through launch/torch_model.py to torch.onnx.export, run by onnxruntime
if [ -z "$pyo" ]; then
  echo "SKIP (part): onnx + onnxruntime are not importable: no ONNX export checked"
elif timeout -k 2 300 "$pyo" "$src/launch/export_onnx.py" ft.safetensors --out ft.onnx --trainer "$trainer" \
  >"$tmp/out" 2>"$tmp/err"; then
  ok "export_onnx.py ft.safetensors: $(head -1 "$tmp/out" | cut -c1-100)"
  ok "$(tail -1 "$tmp/out")"
  if [ "$pyo" = "$py" ]; then checks+=(+ onnx ft.onnx p-ft.csv --tol 1e-5)
  else pysteps "onnxruntime vs --predict" "$pyo" "$src/tests/torch_io.py" onnx ft.onnx p-ft.csv --tol 1e-5; fi
else bad "export_onnx.py ft.safetensors"; fi

# Every comparison with torchvision in one Python process
[ ${#checks[@]} -gt 0 ] && pysteps "the comparisons with torchvision" "${io[@]}" "${checks[@]:1}"
echo "time: $(since "$t0") s"
finish cli_torch_io
