#!/usr/bin/env bash
# cli_models.sh — the ready torchvision-shaped configs: --print-model's parameter counts equal torchvision's
# (resnet18 11,689,512; resnet50 25,557,032; resnet18 with the CIFAR stem and 10 classes: torchvision's
# resnet18(num_classes=10) minus the stem difference); ResNet-50's [include]d blocks train two steps (at 32x32, two
# classes, from a small PNG folder) and its checkpoint holds torchvision's tensor names. Prints the counts.
# Run by ctest: cli_models.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_tool
make_tmp --cd

count() { "$trainer" --config "$src/configs/$1.cfg" --print-model 2>"$tmp/err" | sed -n 's/.* layers, \([0-9]*\) parameters$/\1/p'; }
for pair in resnet18:11689512 resnet50:25557032 cifar10_resnet18:11173962 mobilenet_v2:3504872; do
  name=${pair%%:*} want=${pair#*:}
  got=$(count "$name")
  if [ "$got" = "$want" ]; then ok "configs/$name.cfg: $got parameters (torchvision's count)"
  else bad "configs/$name.cfg: $got parameters, want $want"; fi
done

# ---- ResNet-50 runs: two steps on 32x32 RGB PNGs, two classes (fc resized), np 1
mkdir -p img/a img/b
for i in 0 1 2 3; do
  python3 "$src/tests/make_images.py" png "img/a/$i.png" 40 36 3
  python3 "$src/tests/make_images.py" png "img/b/$i.png" 36 40 3
done
args=(--config "$src/configs/resnet50.cfg" --threads 1 --epochs 1 --set net.batch=4 --set net.height=32 --set net.width=32
  --set net.classes=2 --set fc.units=2 --set data.train_dir=img --set data.test_dir=img --set data.val_fraction=0
  --set data.resize=32 --set net.eval_batch=4)
if run "${args[@]}" --save r50.safetensors && grep -q "23512130 parameters" "$tmp/out"; then
  ok "resnet50.cfg trains (2 steps at 32x32, 2 classes): $(grep -m1 '^epoch 1/1' "$tmp/out" | cut -c1-70)"
else
  bad "resnet50.cfg at 32x32: $(grep -m1 'parameters\|error' "$tmp/out" "$tmp/err" | head -2)"
fi
names=$(python3 - r50.safetensors <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    head = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
print(" ".join(sorted(k for k in head if k != "__metadata__" and not k.startswith("optim."))))
PY
)
n=$(wc -w <<<"$names")
if [ "$n" -eq 320 ] && grep -qw "layer1.0.downsample.0.weight" <<<"$names" && grep -qw "layer4.2.bn3.num_batches_tracked" <<<"$names" &&
  grep -qw "fc.bias" <<<"$names" && grep -qw "conv1.weight" <<<"$names"; then
  ok "its checkpoint: $n model tensors under torchvision's names (conv1.weight ... layer1.0.downsample.0.weight ... fc.bias)"
else
  bad "checkpoint tensor names: $n of them: $(head -c 300 <<<"$names")"
fi
finish cli_models
