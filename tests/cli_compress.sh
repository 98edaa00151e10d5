#!/usr/bin/env bash
# needs: mpi
# cli_compress.sh — parallel.compress=bf16|fp16 (gradients all-reduced in 16 bits, docs/parallelism.md) at np 2:
#   * none, bf16 and fp16 with overlap on: each run passes the end-of-epoch replica check (exit 0), says which
#     compression runs, ends with a test loss within 0.05 of compress=none's, and trains differently from it
#     (the buckets really went through 16 bits);
#   * fp16 with net.accum_steps=2, and bf16 with overlap off;
#   * bf16 and fp16 with a sync batch norm (its statistics' all-reduces stay float32, in the middle of backward
#     while buckets are in flight);
#   * bad input: parallel.compress=zip is exit 2 naming the key.
# Run by ctest: cli_compress.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
make_tmp

write_cfg() { small_cnn_cfg "$1" "" "${2:-}"; }  # write_cfg FILE [EXTRA LAYER TEXT after the conv]
write_cfg "$tmp/plain.cfg"
write_cfg "$tmp/bn.cfg" "activation=linear
[batchnorm]
sync=1
activation=relu"

# np2 NAME CFG ARGS...: a 2-rank run, metrics in $tmp/NAME.jsonl; rc is its exit code.
np2() {
  local name=$1 cfg=$2
  shift 2
  timeout -k 5 300 "${mpi[@]}" -np 2 "$trainer" --config "$cfg" --metrics "$tmp/$name.jsonl" "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
}
# The last epoch's figure KEY of run NAME.
fig() { grep -o "\"$2\":[^,}]*" "$tmp/$1.jsonl" | tail -1 | cut -d: -f2; }
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t) }'; }

# ---- plain config: none, bf16, fp16 (overlap on)
for c in none bf16 fp16; do
  np2 "$c" "$tmp/plain.cfg" --set "parallel.compress=$c"
  if [ "$rc" -ne 0 ]; then bad "compress=$c: exit $rc"; continue; fi
  if [ "$c" = none ]; then
    if grep -q "^compression:" "$tmp/out"; then bad "compress=none printed a compression line"; else ok "compress=none: exit 0"; fi
    continue
  fi
  line=$(grep "^compression:" "$tmp/out")
  if [[ "$line" != *"as $c"* ]]; then bad "compress=$c: start-up line missing or wrong: '$line'"; continue; fi
  l=$(fig "$c" test_loss) l0=$(fig none test_loss) t=$(fig "$c" train_loss) t0=$(fig none train_loss)
  if ! close "$l" "$l0" 0.05; then bad "compress=$c: test loss $l, compress=none's $l0 (want within 0.05)"
  elif [ "$t" = "$t0" ]; then bad "compress=$c: train loss $t exactly compress=none's: were the buckets compressed?"
  else ok "compress=$c: replica check passed, test loss $l (none: $l0), train loss $t (none: $t0)"; fi
done

# ---- with accumulation, without overlap
np2 fp16_accum "$tmp/plain.cfg" --set parallel.compress=fp16 --set net.accum_steps=2
l=$(fig fp16_accum test_loss)
if [ "$rc" -eq 0 ] && [ -n "$l" ]; then ok "compress=fp16 accum_steps=2: exit 0, test loss $l"; else bad "compress=fp16 accum_steps=2: exit $rc"; fi
np2 bf16_seq "$tmp/plain.cfg" --set parallel.compress=bf16 --no-overlap
l=$(fig bf16_seq test_loss) l1=$(fig bf16 test_loss)
# Overlap changes when a bucket is reduced, not what: the parameters, and so the losses, are the same.
if [ "$rc" -eq 0 ] && [ "$l" = "$l1" ]; then ok "compress=bf16 overlap=0: exit 0, test loss $l = overlap on's"
else bad "compress=bf16 overlap=0: exit $rc, test loss $l (overlap on: $l1)"; fi

# ---- sync batch norm: statistics in float32 between compressed buckets
np2 bn_none "$tmp/bn.cfg"
l0=$(fig bn_none test_loss)
for c in bf16 fp16; do
  np2 "bn_$c" "$tmp/bn.cfg" --set "parallel.compress=$c"
  l=$(fig "bn_$c" test_loss)
  if [ "$rc" -eq 0 ] && close "$l" "$l0" 0.05; then ok "sync BN, compress=$c: exit 0, test loss $l (none: $l0)"
  else bad "sync BN, compress=$c: exit $rc, test loss '$l' (none: '$l0')"; fi
done

# ---- bad input
run --config "$tmp/plain.cfg" --set parallel.compress=zip --steps 1
if [ $? -eq 2 ] && has "parallel" && has "compress" && [ "$(wc -l <"$tmp/err")" -le 2 ]; then
  ok "compress=zip: exit 2: $(head -1 "$tmp/err")"
else bad "compress=zip: want exit 2 naming parallel.compress"; fi

finish cli_compress
