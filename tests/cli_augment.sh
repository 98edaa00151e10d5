#!/usr/bin/env bash
# cli_augment.sh — [data] augmentation through the trainer: --print-config shows the mean and
# std computed from the training set; a run's checkpoint carries them, so --eval and --predict from it normalise
# as training did (--eval's figures bit-identical to the epoch's); a --config without them is computed again,
# to the same values. Prints the measured figures. Run by ctest: cli_augment.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
make_tmp --cd
cfg=$src/configs/fashion_mnist_cnn.cfg
small=(--set data.train_limit=2000 --set data.test_limit=500 --threads 1)
aug=(--set data.crop_pad=2 --set data.flip=1 --set data.normalize=1)
key() { sed -n "s/^$1=//p" "$2"; }

# ---- --print-config: computed over the training set after train_limit
if run --config "$cfg" "${small[@]}" "${aug[@]}" --print-config; then
  cp out printed.cfg
  mean=$(key mean printed.cfg) std=$(key std printed.cfg)
  if [ -n "$mean" ] && [ -n "$std" ] && grep -q '^crop_pad=2$' printed.cfg && grep -q '^flip=1$' printed.cfg; then
    ok "--print-config: mean=$mean std=$std (2000 training images)"
  else
    bad "--print-config lacks mean/std: $(grep -A8 '^\[data\]' printed.cfg | tr '\n' ' ')"
  fi
  # The printed configuration reruns as it is (the values read back), and prints the same.
  if run --config printed.cfg --print-config && [ "$(key mean out)" = "$mean" ] && [ "$(key std out)" = "$std" ]; then
    ok "the printed config reloads to the same mean and std"
  else
    bad "printed config reload"
  fi
else
  bad "--print-config with normalize=1"
fi
if run --config "$cfg" "${small[@]}" --set data.normalize=1 --set data.mean=0.5 --set data.std=0.25 --print-config &&
  [ "$(key mean out)" = "0.5" ] && [ "$(key std out)" = "0.25" ]; then
  ok "given mean/std are kept as given"
else
  bad "given mean/std"
fi

# ---- train one epoch with augmentation; --eval from the checkpoint alone
if run --config "$cfg" --epochs 1 "${small[@]}" "${aug[@]}" --save ck.safetensors; then
  ok "train 1 epoch with augmentation: $(grep '^epoch' out)"
else
  bad "train with augmentation"; echo "$passes passed, $fails failed"; exit 1
fi
if run --print-config --eval ck.safetensors && [ "$(key mean out)" = "$mean" ] && [ "$(key std out)" = "$std" ]; then
  ok "the checkpoint's stored config carries mean=$mean std=$std"
else
  bad "checkpoint config: mean=$(key mean out) std=$(key std out), want $mean $std"
fi
if run --eval ck.safetensors && grep -q "identical (every bit)" out; then
  ok "--eval from the checkpoint: $(grep '^test loss' out), identical (every bit) to the epoch's"
else
  bad "--eval from the checkpoint: $(grep -E 'test loss|training run' out | tr '\n' ' ')"
fi
# --config without mean/std: computed again from the same training set, so the same figures.
if run --eval ck.safetensors --config "$cfg" "${small[@]}" "${aug[@]}" && grep -q "identical (every bit)" out; then
  ok "--eval with a --config lacking mean/std: computed again, identical"
else
  bad "--eval with --config: $(grep -E 'test loss|training run' out | tr '\n' ' ')"
fi
# mean/std left in the config while normalize=0 would be silently unused: refused.
if run --eval ck.safetensors --set data.normalize=0 --set data.mean=0.5 --set data.std=1 2>/dev/null; then
  bad "mean/std with normalize=0 accepted"
else
  ok "mean/std with normalize=0 refused"
fi
if run --predict ck.safetensors --images "$data/t10k-images-idx3-ubyte.gz" --out pred.csv && [ "$(wc -l <pred.csv)" -eq 10001 ]; then
  ok "--predict from the checkpoint: 10000 rows"
else
  bad "--predict"
fi

finish
