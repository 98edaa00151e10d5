#!/usr/bin/env bash
# cli_activations.sh — the activations and [maxpool] pad= in a whole training run: tests/activations.cfg (every
# activation once, a padded max pool) trains 2 epochs on a little Fashion-MNIST with a finite, falling loss; the
# step replayed from the emulated CUDA graph (DDP_TEST_CPU_GRAPH=1: the separate activation ops recorded like the
# others) gives the same parameters as op by op; and the config errors exit 2 naming the layer and key (a pad over
# half the window, an unknown activation). Run by ctest: cli_activations.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
make_tmp --cd
cfg=$src/tests/activations.cfg

# ---- config errors (no data needed)
sed '/^\[maxpool\]/,/^pad=/s/^pad=1/pad=2/' "$cfg" >badpad.cfg
run --config badpad.cfg --print-config
[ $? -eq 2 ] && has "[maxpool] 'pool1': pad" && has "at most half the window" && ok "maxpool pad > size/2: exit 2 naming the layer and key" ||
  bad "maxpool pad > size/2 (exit 2 naming [maxpool] 'pool1': pad)"
sed 's/^activation=gelu/activation=gelu_tanh/' "$cfg" >badact.cfg
run --config badact.cfg --print-config
[ $? -eq 2 ] && has "conv1.activation: 'gelu_tanh' is not one of" && has "hardswish, gelu" && ok "unknown activation: exit 2 listing the names" ||
  bad "unknown activation (exit 2 naming conv1.activation and the choices)"

need_data
small=(--set data.train_limit=512 --set data.test_limit=128 --threads 1)
if run --config "$cfg" "${small[@]}" --save full.safetensors; then
  losses=$(sed -n 's/^epoch [0-9]*\/[0-9]*  loss \([0-9.naif]*\) .*/\1/p' "$tmp/out" | tr '\n' ' ')
  if awk -v l="$losses" 'BEGIN { n = split(l, a, " "); exit !(n == 2 && a[1] + 0 == a[1] && a[2] < a[1] && a[1] < 2.31) }'; then
    ok "every activation trains: epoch losses $losses"
  else
    bad "epoch losses '$losses' (want two finite values, falling, below ln 10)"
  fi
else
  bad "tests/activations.cfg: 2 epochs (exit $?)"
fi
if DDP_TEST_CPU_GRAPH=1 run --config "$cfg" "${small[@]}" --save graph.safetensors &&
   "$tool" same full.safetensors graph.safetensors >/dev/null 2>"$tmp/err"; then
  ok "graph replay (CPU emulation) == op by op, bit for bit"
else
  bad "graph replay (CPU emulation) differs from op by op"
fi
finish
