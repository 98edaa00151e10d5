#!/usr/bin/env bash
# cli_layers.sh — the layer kinds of issue 14 part 3 in a whole training run: configs/resnet_small.cfg (conv
# bias=0, leaky, [shortcut], [route], global [avgpool], [dropout]) trains on the CPU; the step replayed from the
# emulated CUDA graph (DDP_TEST_CPU_GRAPH=1: the dropout key read from backend memory at replay) gives the same
# parameters as op by op; a resumed run gives the same parameters as an uninterrupted one (the masks are drawn
# again from (seed, step, rank)). Small data: Fashion-MNIST with data.train_limit / data.test_limit.
# Run by ctest: cli_layers.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
make_tmp --cd
cfg=$src/configs/resnet_small.cfg
small=(--set data.train_limit=512 --set data.test_limit=256 --threads 1)

if run --config "$cfg" --epochs 2 "${small[@]}" --save full.safetensors && [ -s full.safetensors ]; then
  ok "resnet_small: 2 epochs: $(tail -1 "$tmp/out")"
else
  bad "resnet_small: 2 epochs (exit $?)"
fi
if DDP_TEST_CPU_GRAPH=1 run --config "$cfg" --epochs 2 "${small[@]}" --save graph.safetensors &&
   "$tool" same full.safetensors graph.safetensors >/dev/null 2>"$tmp/err"; then
  ok "graph replay (CPU emulation) == op by op, bit for bit"
else
  bad "graph replay (CPU emulation) differs from op by op"
fi
if run --config "$cfg" --epochs 1 "${small[@]}" --save half.safetensors &&
   run --config "$cfg" --epochs 2 "${small[@]}" --resume half.safetensors --save resumed.safetensors &&
   "$tool" same full.safetensors resumed.safetensors >/dev/null 2>"$tmp/err"; then
  ok "resume after epoch 1 == uninterrupted, bit for bit"
else
  bad "resume after epoch 1 differs from the uninterrupted run"
fi
# Another seed gives other parameters, so the bit-for-bit comparisons above are not vacuous.
if run --config "$cfg" --epochs 2 "${small[@]}" --set net.seed=43 --save other.safetensors &&
   ! "$tool" same full.safetensors other.safetensors >/dev/null 2>&1; then
  ok "another seed gives other parameters"
else
  bad "another seed gave the same parameters"
fi
finish
