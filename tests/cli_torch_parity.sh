#!/usr/bin/env bash
# cli_torch_parity.sh — every layer kind in the registry (grad_dump --list), in its example network, gives the
# same training loss and parameter gradients as the PyTorch module launch/torch_model.py builds from the same
# config and weights, within 1e-4 (tests/torch_parity.py), and so do two whole ResNets and tests/activations.cfg; then the ready configs
# build in PyTorch with the parameter count the trainer prints. Skips (77) when PyTorch is not importable ($PYTHON, python3, /usr/bin/python3):
# PyTorch is never a hard test dependency. Run by ctest: cli_torch_parity.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
bin=$3
py=""
for p in ${PYTHON:-} python3 /usr/bin/python3; do
  if "$p" -c "import torch" 2>/dev/null; then py=$p; break; fi
done
[ -n "$py" ] || { echo "SKIP: PyTorch is not importable (\$PYTHON, python3, /usr/bin/python3; apt-get install python3-torch)"; exit 77; }
make_tmp
fail() { echo "FAIL: $*"; exit 1; }
dump=$bin/tests/grad_dump
kinds=$("$dump" --list) || fail "grad_dump --list"
for k in $kinds; do
  "$dump" --example "$k" --batch 6 "$tmp/$k.safetensors" || fail "grad_dump --example $k"
  echo "== [$k]"
  "$py" "$src/tests/torch_parity.py" "$tmp/$k.safetensors" || fail "[$k]: ddp-cnn and PyTorch differ"
done
# Whole networks too: a single-layer [route] aliases its input (no copy), batch norm, projection shortcuts; every
# activation and a padded max pool (tests/activations.cfg).
for c in configs/fashion_resnet configs/resnet_small_bn tests/activations; do
  n=$(basename "$c")
  "$dump" --config "$src/$c.cfg" --batch 4 "$tmp/$n.safetensors" || fail "grad_dump --config $c.cfg"
  echo "== $c.cfg"
  "$py" "$src/tests/torch_parity.py" "$tmp/$n.safetensors" || fail "$c.cfg: ddp-cnn and PyTorch differ"
done
for cfg in "$src"/configs/*.cfg; do
  # the trainer's start line: "..., 121930 parameters, ..." (one step on 64 samples: data files must exist)
  line=$("$trainer" --config "$cfg" --epochs 1 --steps 1 --batch 8 --set data.train_limit=64 --set data.test_limit=10 2>/dev/null) ||
    continue
  line=${line%%$'\n'*}
  want=$(sed -n 's/.* \([0-9]*\) parameters.*/\1/p' <<<"$line")
  [ -n "$want" ] || continue
  got=$("$py" "$src/launch/torch_model.py" "$cfg" | sed -n 's/^parameters: //p')
  [ "$want" = "$got" ] || fail "$(basename "$cfg"): trainer $want parameters, PyTorch $got"
  echo "$(basename "$cfg"): $got parameters in both"
done
echo "PASS: $(echo $kinds | wc -w) layer kinds match PyTorch"
