#!/usr/bin/env bash
# cli_batchnorm.sh — [batchnorm] in whole training runs at np 2 (configs/resnet_small_bn.cfg: five BN layers and
# a [dropout]): interrupted mid-epoch and resumed == uninterrupted, bit for bit (parameters, running statistics,
# num_batches_tracked, optimizer state); --eval of the checkpoint reproduces the run's test figures; sync BN
# turns the (emulated) CUDA graph off under comm=mpi with a note; PyTorch loads the checkpoint with
# load_state_dict(strict=True) and evaluates it (running statistics) to the same accuracy, when /usr/bin/python3
# has torch. Small data: Fashion-MNIST with data.train_limit / data.test_limit.
# Run by ctest: cli_batchnorm.sh TRAINER SOURCE_DIR BINARY_DIR
# needs: mpi
. "$(dirname "$0")/testlib.sh" "$@"
need_data
make_tmp --cd
cfg=$src/configs/resnet_small_bn.cfg
small=(--set data.train_limit=1024 --set data.test_limit=256 --threads 1 --batch 32 --set bn1a.sync=1)
run2() { timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" --config "$cfg" "${small[@]}" "$@" >"$tmp/out" 2>"$tmp/err"; }

if run2 --epochs 2 --save full.st && run2 --epochs 2 --steps 21 --save part.st &&
   run2 --epochs 2 --resume part.st --save resumed.st &&
   "$tool" same full.st resumed.st >"$tmp/same" 2>"$tmp/err" && ! "$tool" same full.st part.st >/dev/null 2>&1; then
  ok "np 2, BN + dropout: resumed at step 21 == uninterrupted: $(cat "$tmp/same")"
else
  bad "np 2, BN + dropout: resumed run differs from the uninterrupted one"
fi
if timeout 300 "$trainer" --eval full.st --set data.test_limit=256 --threads 1 --set net.eval_batch=128 \
     >"$tmp/out" 2>"$tmp/err" && grep -q "identical (every bit)" "$tmp/out"; then
  ok "--eval of the BN checkpoint (running statistics) reproduces the run's test figures"
else
  bad "--eval of the BN checkpoint: $(grep -i 'training run printed' "$tmp/out")"
fi
if DDP_TEST_CPU_GRAPH=1 run2 --steps 2 && grep -q "CUDA graph off: .*sync batch norm" "$tmp/out"; then
  ok "sync BN under comm=mpi: $(grep -o 'note: CUDA graph off.*' "$tmp/out" | head -1)"
else
  bad "sync BN under comm=mpi: no 'CUDA graph off' note"
fi
py=/usr/bin/python3
if [ -x "$py" ] && "$py" -c "import torch" 2>/dev/null; then
  acc=$(timeout 300 "$trainer" --eval full.st --set data.test_limit=0 --threads 1 2>/dev/null | sed -n 's/^test loss [^ ]* acc \([0-9.]*\).*/\1/p' | head -1)
  if [ -n "$acc" ] && timeout 300 "$py" "$src/launch/torch_check_ckpt.py" full.st --data "$data" --expect-acc "$acc" \
       >"$tmp/torch" 2>"$tmp/err"; then
    ok "PyTorch strict load of the BN checkpoint: $(sed 's/ (+.*);/;/' "$tmp/torch") (trainer: $acc)"
  else
    bad "PyTorch strict load of the BN checkpoint (trainer acc '$acc'): $(cat "$tmp/torch" 2>/dev/null)"
  fi
else
  echo "skip PyTorch strict load: no torch in $py"
fi
finish
