#!/usr/bin/env bash
# cli_synthetic.sh — data.format=synthetic (src/data.c data_make_synthetic; torchvision's FakeData): a tiny config
# trains one epoch at np 1 and np 2, two runs give bit-identical checkpoints, np 2 with the same global batch
# trains as np 1, the set is learnable (test accuracy above chance after a few epochs), --eval makes the same test
# set again, `--set data.format=synthetic` runs the ImageNet configs ([include]d blocks, their folder keys
# ignored), bad values exit 2 naming the key. Run by ctest: cli_synthetic.sh TRAINER SOURCE_DIR BINARY_DIR
# needs: mpi
. "$(dirname "$0")/testlib.sh" "$@"
need_mpirun
need_tool
make_tmp --cd
cat >tiny.cfg <<'EOF'
[net]
batch=16
epochs=1
optimizer=adam
lr=0.003
channels=3
height=12
width=12
classes=5
seed=7
[data]
format=synthetic
train_limit=256
test_limit=64
[conv]
filters=8
activation=relu
[maxpool]
[dense]
units=5
[softmax]
EOF
base=(--config tiny.cfg --threads 1)
line() { grep -m1 "^epoch 1/" "$1" | sed 's/ | [0-9.]* s .*//'; }

# np 1: two runs, the same tensors bit for bit
if run "${base[@]}" --save a.safetensors && cp "$tmp/out" a.out && run "${base[@]}" --save b.safetensors &&
  "$tool" same a.safetensors b.safetensors >/dev/null && [ -n "$(line a.out)" ]; then
  ok "np 1 twice: identical checkpoints ($(line a.out))"
else
  bad "np 1: two runs differ or failed"
fi
# a different seed is a different set (and init): the checkpoints must differ, or the comparison above proves nothing
if run "${base[@]}" --seed 8 --save c.safetensors && ! "$tool" same a.safetensors c.safetensors >/dev/null 2>&1; then
  ok "another net.seed: another run"
else bad "net.seed=8 trained as net.seed=7"; fi

# np 2: each rank its shard; deterministic, and with the same global batch (strong) as np 1
np2() { timeout -k 2 120 "${mpi[@]}" -np 2 "$trainer" "${base[@]}" --scaling strong "$@" >"$tmp/out" 2>"$tmp/err"; }
if np2 --save d.safetensors && cp "$tmp/out" d.out && np2 --save e.safetensors &&
  "$tool" same d.safetensors e.safetensors >/dev/null; then
  ok "np 2 twice: identical checkpoints ($(line d.out))"
else
  bad "np 2: two runs differ or failed"
fi
if [ "$(line d.out)" = "$(line a.out)" ]; then ok "np 2 (strong, global batch 16) = np 1: $(line d.out)"
else bad "np 2 '$(line d.out)' vs np 1 '$(line a.out)'"; fi

# learnable: the class tones carry over to the test set (chance is 0.2)
run "${base[@]}" --epochs 4 --save f.safetensors
acc=$(sed -n 's/^done: .*test accuracy \([0-9.]*\).*/\1/p' "$tmp/out")
if awk -v a="${acc:-0}" 'BEGIN { exit !(a > 0.5) }'; then ok "4 epochs: test accuracy $acc (> 0.5, chance 0.2)"
else bad "4 epochs: test accuracy '${acc}' not above 0.5"; fi
# --eval makes the same test set again from the checkpoint's config
run --eval f.safetensors --threads 1
eacc=$(sed -n 's/^test loss [0-9.]* acc \([0-9.]*\)$/\1/p' "$tmp/out")
if [ -n "$eacc" ] && grep -q "identical (every bit)" "$tmp/out"; then
  ok "--eval: test accuracy $eacc, identical to the training run's (every bit)"
else
  bad "--eval: accuracy '$eacc', training said '$acc'"
fi

# the ImageNet configs on synthetic data (their folder paths, resize, random_resized_crop, val_fraction ignored),
# at 64x64 so that a step takes well under a second
for c in resnet50 mobilenet_v2; do
  if run --config "$src/configs/$c.cfg" --set data.format=synthetic --set net.height=64 --set net.width=64 --batch 2 \
       --set data.train_limit=8 --set data.test_limit=4 --steps 2 --threads 2 && grep -q "^done: 2 steps" "$tmp/out"; then
    ok "$c.cfg with data.format=synthetic: 2 steps"
  else bad "$c.cfg with data.format=synthetic"; fi
done

expect2() {  # expect2 NAME TEXT ARGS...: exit 2 and TEXT in the one-line message
  local name=$1 text=$2
  shift 2
  run "$@"
  local rc=$?
  if [ "$rc" -eq 2 ] && has "$text" && [ "$(wc -l <"$tmp/err")" -eq 1 ]; then ok "$name: exit 2: $(cut -c1-140 "$tmp/err")"
  else bad "$name: exit $rc, want 2 and '$text'"; fi
}
expect2 "unknown format" "data.format: 'synthetics' is not one of" "${base[@]}" --set data.format=synthetics
expect2 "set smaller than a batch" "8 training samples cannot fill one global batch" "${base[@]}" --set data.train_limit=8
expect2 "negative size" "data.train_limit: '-1' is not an integer" "${base[@]}" --set data.train_limit=-1
finish cli_synthetic
