#!/usr/bin/env bash
# cli_precision.sh — net.precision emulated on the CPU (docs/precision.md), end to end on small Fashion-MNIST runs:
# bf16 and fp16 train to a test loss close to fp32's, tf32 is fp32 on the CPU, layout=nhwc is accepted and changes
# nothing; np 2 == np 1 under bf16 emulation (the parameters within the tolerance of test_ddp's np 2 vs np 1 checks,
# while bf16 vs fp32 differ by far more); with compress=bf16 the bf16 gradients backward writes, sent as they are,
# give the run the float32 ones cast by the comm give, bit for bit; fp16 loss scaling: grows every loss_scale_growth_interval steps, and a
# forced overflow on rank 1 (DDP_TEST_NONFINITE_GRAD) is skipped on both ranks with the scale halved (metrics and
# checkpoint), the replicas still equal; the same overflow without loss scaling (fp32) stops the run as diverged;
# an fp16 run resumed mid-epoch == uninterrupted, bit for bit (the scaler's state travels in the checkpoint);
# net.act_storage=compute (16-bit activation buffers) == float32 buffers bit for bit (np 2, bf16 gradients, the
# emulated CUDA graph, a residual net at fp16, --eval, the forced overflow); bad values are exit 2 naming the key.
# Run by ctest: cli_precision.sh TRAINER SOURCE_DIR BINARY_DIR
# needs: mpi
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
need_tool
make_tmp --cd
cfg=$src/configs/fashion_mnist_cnn.cfg
small=(--config "$cfg" --threads 1 --set data.train_limit=2048 --set data.test_limit=500 --epochs 1)
# the test loss of the last "done:" line, and its figures without the timing
test_loss() { sed -n 's/^done: .*test loss \([0-9.]*\),.*/\1/p' "$1"; }
figures() { sed -n 's/^done: .*training time; //p' "$1"; }
json() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readlines()[-1])[sys.argv[2]])' "$1" "$2"; }

# ---- 1. bf16 and fp16 train like fp32; tf32 is fp32 on the CPU; layout=nhwc changes nothing
for p in fp32 tf32 bf16 fp16; do
  run "${small[@]}" --set net.precision=$p --metrics $p.jsonl && cp "$tmp/out" $p.out || bad "precision=$p: exit $?"
done
l32=$(test_loss fp32.out)
for p in bf16 fp16; do
  lp=$(test_loss $p.out)
  if [ -n "$lp" ] && awk -v a="$l32" -v b="$lp" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 0.03 && b < 1.0) }' &&
     [ "$(json $p.jsonl precision)" = $p ] && grep -q "note: net.precision=$p emulated on the CPU" $p.out; then
    ok "precision=$p: test loss $lp vs fp32 $l32 (within 0.03)"
  else
    bad "precision=$p: test loss '$lp' vs fp32 '$l32'"
  fi
done
if [ -n "$(figures fp32.out)" ] && [ "$(figures tf32.out)" = "$(figures fp32.out)" ] && grep -q "tf32 changes only a GPU" tf32.out; then
  ok "precision=tf32 on the CPU: the fp32 run exactly ($(figures tf32.out)), with a note"
else bad "precision=tf32 on the CPU differs from fp32"; fi
# the step replayed from a graph (the CPU capture emulation): the rounding is stream work, captured like the rest
if DDP_TEST_CPU_GRAPH=1 run "${small[@]}" --set net.precision=bf16 && [ "$(figures "$tmp/out")" = "$(figures bf16.out)" ]; then
  ok "bf16 replayed from the (emulated) CUDA graph == op by op: $(figures bf16.out)"
else bad "bf16 under the CPU capture emulation differs from op by op: '$(figures "$tmp/out")'"; fi
run "${small[@]}" --set net.precision=bf16 --set net.layout=nhwc
if grep -q "layout=nhwc matters only on a GPU" "$tmp/out" && [ "$(figures "$tmp/out")" = "$(figures bf16.out)" ]; then
  ok "layout=nhwc on the CPU: accepted with a note, the same run as nchw"
else bad "layout=nhwc on the CPU"; fi

# ---- 2. np 2 == np 1 under bf16 emulation (np 1 x batch 64, np 2 x batch 32), and bf16 != fp32. SGD, as test_ddp's
# sync batch norm check: the per-rank GEMMs differ from the whole batch's in fp32's last bit, which now and then
# moves a value across a bf16 rounding boundary, and Adam's division by sqrt(v) turns such differences in near-zero
# gradients into lr-sized steps (measured with Adam after 30 steps: 0.15 max relative, 1.2e-3 relative L2 against
# bf16 vs fp32's 3.6e-2; with SGD: 8.5e-7 and bf16 vs fp32 0.24).
eq=(--config "$cfg" --threads 1 --set data.train_limit=2048 --set data.test_limit=100 --steps 30 --set net.optimizer=sgd)
timeout -k 2 300 "${mpi[@]}" -np 1 "$trainer" "${eq[@]}" --batch 64 --set net.precision=bf16 --save np1.st >"$tmp/out" 2>"$tmp/err" &&
timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" "${eq[@]}" --batch 32 --set net.precision=bf16 --save np2.st >"$tmp/out" 2>"$tmp/err" &&
timeout -k 2 300 "$trainer" "${eq[@]}" --batch 64 --save fp32.st >"$tmp/out" 2>"$tmp/err" || bad "np 1 / np 2 runs: exit $?"
# the largest relative parameter difference, |a - b| / max(|a|, 1e-2), as tests/test_ddp.c measures np 2 vs np 1
d12=$("$tool" reldiff np1.st np2.st | cut -d' ' -f1) d32=$("$tool" reldiff np1.st fp32.st | cut -d' ' -f1)
if awk -v a="$d12" -v b="$d32" 'BEGIN { exit !(a < 1e-5 && b > 1e-3) }'; then
  ok "bf16: np 2 == np 1 after 30 steps (max relative difference $d12 < 1e-5; bf16 vs fp32: $d32)"
else
  bad "bf16: np 2 vs np 1 max relative difference '$d12' (want < 1e-5), bf16 vs fp32 '$d32' (want > 1e-3)"
fi

# ---- 2b. precision=bf16 with compress=bf16: backward writes bf16 gradients, sent as they are; the same run as when
# backward writes float32 and the comm casts (DDP_TEST_GRADS32), bit for bit (np 2: halving is exact in bf16)
g16=("${eq[@]}" --batch 32 --set net.precision=bf16 --set parallel.compress=bf16)
if timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" "${g16[@]}" --save g16.st >g16.out 2>"$tmp/err" &&
   DDP_TEST_GRADS32=1 timeout -k 2 300 "${mpi[@]}" -np 2 -x DDP_TEST_GRADS32 "$trainer" "${g16[@]}" --save g32.st \
     >g32.out 2>"$tmp/err" &&
   grep -q "as written by backward" g16.out && ! grep -q "as written by backward" g32.out &&
   "$tool" same g16.st g32.st >/dev/null && ! "$tool" same g16.st np2.st >/dev/null; then
  ok "bf16 gradients from backward on the wire == float32 cast by the comm, bit for bit (np 2, 30 steps; != uncompressed)"
else
  bad "bf16 gradients from backward vs cast by the comm: '$("$tool" same g16.st g32.st 2>&1)'; max relative difference '$("$tool" reldiff g16.st g32.st 2>&1)'"
fi

# ---- 2c. net.act_storage=compute on the CPU: 16-bit activation buffers (each op stores its outputs rounded) give the
# emulation's float32 buffers rounded after each op bit for bit (every activation here relu or none), at np 2 with and
# without the bf16 gradients of 2b, on the residual net (batch norm, shortcut, global average pooling) at fp16, and in
# --eval (the logits read back from 16 bits); the start-up note says which buffers
if timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" "${eq[@]}" --batch 32 --set net.precision=bf16 --set net.act_storage=compute \
     --save s16.st >s16.out 2>"$tmp/err" &&
   timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" "${g16[@]}" --set net.act_storage=compute --save s16g.st >/dev/null 2>"$tmp/err" &&
   grep -q "activations held in 16-bit bf16 buffers" s16.out && ! grep -q "16-bit bf16 buffers" g16.out &&
   "$tool" same s16.st np2.st >/dev/null && "$tool" same s16g.st g16.st >/dev/null; then
  ok "act_storage=compute, bf16, np 2: == float32 buffers bit for bit, with and without bf16 gradients from backward"
else
  bad "act_storage=compute bf16 at np 2 vs float32 buffers: '$("$tool" same s16.st np2.st 2>&1)' / '$("$tool" same s16g.st g16.st 2>&1)'"
fi
# the step with 16-bit buffers captured and replayed (the CPU capture emulation): the bf16 run of section 1 exactly
if DDP_TEST_CPU_GRAPH=1 run "${small[@]}" --set net.precision=bf16 --set net.act_storage=compute &&
   grep -q "CUDA graph" "$tmp/out" && [ "$(figures "$tmp/out")" = "$(figures bf16.out)" ]; then
  ok "act_storage=compute replayed from the (emulated) CUDA graph == bf16 with float32 buffers: $(figures bf16.out)"
else bad "act_storage=compute under the CPU capture emulation: '$(figures "$tmp/out")' vs '$(figures bf16.out)'"; fi
rn=(--config "$src/configs/fashion_resnet.cfg" --threads 1 --set data.train_limit=256 --set data.test_limit=64 --steps 6
    --batch 32 --set net.precision=fp16 --set net.loss_scale_init=1024)
if run "${rn[@]}" --set net.act_storage=fp32 --save r32.st && run "${rn[@]}" --set net.act_storage=compute --save r16.st &&
   "$tool" same r16.st r32.st >"$tmp/same" 2>&1; then
  ok "act_storage=compute, fp16, fashion_resnet 6 steps: == float32 buffers, $(cat "$tmp/same")"
else bad "act_storage=compute fp16 on fashion_resnet: '$(cat "$tmp/same" 2>/dev/null)'"; fi
ev=(--eval np1.st --threads 1 --set data.test_limit=300 --set net.precision=bf16)
if run "${ev[@]}" --set net.act_storage=fp32 && sed -n '/test loss/,$p' "$tmp/out" >ev32.txt &&
   run "${ev[@]}" --set net.act_storage=compute && sed -n '/test loss/,$p' "$tmp/out" >ev16.txt &&
   [ -s ev32.txt ] && cmp -s ev32.txt ev16.txt; then
  ok "act_storage=compute --eval: loss, accuracy and confusion matrix == float32 buffers ($(head -1 ev16.txt | cut -c1-60))"
else bad "act_storage=compute --eval differs: $(diff ev32.txt ev16.txt 2>&1 | head -3)"; fi

# ---- 3. fp16 loss scaling at np 2: 10 steps per epoch, the scale doubling every 4 good steps from 1024
ls=(--config "$cfg" --threads 1 --set data.train_limit=640 --set data.test_limit=100 --epochs 1 --batch 32
    --set net.precision=fp16 --set net.loss_scale_init=1024 --set net.loss_scale_growth_interval=4)
run_ls() { timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" "${ls[@]}" "$@" >"$tmp/out" 2>"$tmp/err"; }
if run_ls --metrics clean.jsonl --save clean.st && [ "$(json clean.jsonl skipped_steps)" = 0 ] &&
   [ "$(json clean.jsonl loss_scale)" = 4096 ]; then
  ok "fp16 at np 2, no overflow: 10 steps, scale 1024 -> 4096 (doubled after steps 4 and 8), none skipped"
else
  bad "fp16 at np 2 without overflow: skipped '$(json clean.jsonl skipped_steps)' scale '$(json clean.jsonl loss_scale)' (want 0, 4096)"
fi
# rank 1's gradients hold an Inf at step 5: both ranks skip it, the scale halves (2048 -> 1024), then doubles once
# more after 4 good steps (2048); the end-of-epoch replica check passes (the run succeeds)
if DDP_TEST_NONFINITE_GRAD=1:5 run_ls --metrics over.jsonl --save over.st && [ "$(json over.jsonl skipped_steps)" = 1 ] &&
   [ "$(json over.jsonl loss_scale)" = 2048 ] && [ "$("$tool" meta over.st skipped_steps)" = 1 ] &&
   [ "$("$tool" meta over.st loss_scale)" = 2048 ] && [ "$("$tool" meta over.st optim_t)" = 9 ] &&
   ! "$tool" same over.st clean.st >/dev/null 2>&1; then
  ok "fp16 at np 2, Inf on rank 1 at step 5: 1 step skipped on both ranks (replicas equal), scale halved: 2048 at the end, optimizer steps 9 of 10"
else
  bad "fp16 forced overflow: exit/skipped '$(json over.jsonl skipped_steps 2>/dev/null)' scale '$(json over.jsonl loss_scale 2>/dev/null)' (want 1, 2048)"
fi
# the same with 16-bit activation buffers (the Inf written as a 16-bit pattern, the loss scale applied by softmax_xent
# before its gradient is stored in fp16): the same run bit for bit
if DDP_TEST_NONFINITE_GRAD=1:5 run_ls --set net.act_storage=compute --save over16.st && "$tool" same over16.st over.st >/dev/null; then
  ok "fp16 forced overflow with act_storage=compute: the same skipped step and checkpoint as float32 buffers"
else bad "fp16 forced overflow with act_storage=compute differs: '$("$tool" same over16.st over.st 2>&1)'"; fi
# the same Inf without loss scaling: the divergence check stops the run (exit 3): the hook does inject
DDP_TEST_NONFINITE_GRAD=1:5 timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" "${ls[@]}" --set net.precision=fp32 >"$tmp/out" 2>"$tmp/err"
rc=$?
if [ $rc -eq 3 ] && has "diverged at step 5"; then ok "fp32 with the same Inf: exit 3, $(grep -o 'diverged at step 5[^(]*' "$tmp/err" | head -1)"
else bad "fp32 with an injected Inf: exit $rc (want 3)"; fi

# ---- 4. fp16 resumed mid-epoch == uninterrupted (scale, good-step count and skipped steps in the checkpoint)
rs=("${ls[@]}" --epochs 2)
if DDP_TEST_NONFINITE_GRAD=0:3 run "${rs[@]}" --save full.st && DDP_TEST_NONFINITE_GRAD=0:3 run "${rs[@]}" --steps 7 --save part.st &&
   run "${rs[@]}" --resume part.st --save resumed.st && "$tool" same full.st resumed.st >"$tmp/same" 2>"$tmp/err" &&
   [ "$("$tool" meta resumed.st loss_scale)" = "$("$tool" meta full.st loss_scale)" ] &&
   [ "$("$tool" meta resumed.st skipped_steps)" = 1 ]; then
  ok "fp16 resumed at step 7 == uninterrupted (scale $("$tool" meta full.st loss_scale), 1 skipped): $(cat "$tmp/same")"
else
  bad "fp16 resume differs from the uninterrupted run"
fi

# ---- 5. bad values: exit 2, one line naming the key
expect2() {
  local want=$1; shift
  "$trainer" --config "$cfg" --steps 1 "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ $rc -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && has "$want"; then ok "exit 2: $(cat "$tmp/err")"
  else bad "$* : exit $rc, want 2 naming '$want'"; fi
}
expect2 "net.precision: 'fp8' is not one of fp32|tf32|bf16|fp16" --set net.precision=fp8
expect2 "net.layout: 'chwn' is not one of nchw|nhwc" --set net.layout=chwn
expect2 "net.tf32=1 with net.precision=bf16" --set net.precision=bf16 --set net.tf32=1 --set net.backend=cuda
# layout=nhwc with backend=cuda passes validation (without a GPU the one complaint is the missing device)
"$trainer" --config "$cfg" --steps 1 --set net.layout=nhwc --set net.backend=cuda >"$tmp/out" 2>"$tmp/err"
if ! grep -q "net.layout" "$tmp/err"; then ok "layout=nhwc with backend=cuda: accepted by validation"
else bad "layout=nhwc with backend=cuda refused: $(cat "$tmp/err")"; fi
expect2 "loss_scale_growth_interval" --set net.loss_scale_growth_interval=0
expect2 "net.act_storage: 'half' is not one of auto|fp32|compute" --set net.act_storage=half
finish precision
