#!/usr/bin/env bash
# cli_buckets.sh — parallel.bucket_kb=auto (src/bucket_plan.c): bad values are exit 2 naming the key; auto reads
# back from --print-config; at np 2 on the reference CNN the start-up probe prints its choice and the run trains
# with exactly those buckets (the same buckets and the same losses, bit for bit, as the chosen cap given
# explicitly); one rank probes only with force_allreduce=1; ResNet-50 (94 MB of gradients at 2 classes) stays
# within the request slots, each bucket within the cap; launch/perf_model.py's compression, skew and hierarchy
# terms against sums by hand.
# needs: mpi
. "$(dirname "$0")/testlib.sh" "$@"
need_data
need_mpirun
make_tmp --cd
base=(--config "$src/configs/fashion_mnist_cnn.cfg" --threads 1 --epochs 1 --set data.train_limit=2560
  --set data.test_limit=200)
line_re='^buckets: auto -> cap ([0-9]+) KiB, ([0-9]+) buckets, predicted exposed comm [0-9.]+ ms \(link alpha [0-9.]+ us, beta [0-9.]+ GB/s'

# ---- bad values: one line, exit 2, naming the key
for v in 0 auto5 -1 Auto; do
  run "${base[@]}" --set parallel.bucket_kb=$v
  rc=$?
  if [ "$rc" -eq 2 ] && has "parallel.bucket_kb" && [ "$(wc -l <"$tmp/err")" -eq 1 ]; then
    ok "bucket_kb=$v: exit 2, $(cut -c1-110 "$tmp/err")"
  else
    bad "bucket_kb=$v: exit $rc, want 2 and one line naming parallel.bucket_kb"
  fi
done

# ---- auto reads back: --print-config writes bucket_kb=auto, and that file prints the same again
run "${base[@]}" --bucket-kb auto --print-config && cp "$tmp/out" auto.cfg
if grep -qx "bucket_kb=auto" auto.cfg && run --config auto.cfg --print-config && diff <(grep -v '^#' auto.cfg) <(grep -v '^#' "$tmp/out") >/dev/null; then
  ok "--print-config: bucket_kb=auto, and it reads back to the same configuration"
else
  bad "--print-config with bucket_kb=auto: $(grep bucket_kb auto.cfg)"
fi

# figure NAME FILE: a number from the last metrics record
figure() { python3 -c "import json,sys; print(json.loads(open(sys.argv[2]).read().splitlines()[-1])[sys.argv[1]])" "$1" "$2"; }

# ---- np 2: the choice, the start line, the metrics; then the chosen cap given explicitly trains the same bits
timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" "${base[@]}" --bucket-kb auto --metrics auto.jsonl >"$tmp/out" 2>"$tmp/err"
rc=$?
choice=$(grep -E "$line_re" "$tmp/out")
if [ "$rc" -eq 0 ] && [[ $choice =~ $line_re ]]; then
  cap=${BASH_REMATCH[1]} nb=${BASH_REMATCH[2]}
  if [ $((cap & (cap - 1))) -eq 0 ] && [ "$cap" -ge 4 ] && [ "$cap" -le 65536 ] &&
     grep -q "$nb bucket(s) of $cap KiB" "$tmp/out" && [ "$(figure bucket_kb auto.jsonl)" = "$cap" ] &&
     [ "$(figure n_buckets auto.jsonl)" = "$nb" ] &&
     [ "$(python3 -c "import json; print(sum(json.loads(open('auto.jsonl').read().splitlines()[-1])['bucket_bytes']))")" = $((4 * 121930)) ]; then
    ok "np 2, auto: $choice"
  else
    bad "np 2, auto: the choice ($choice) is not what the run used: $(grep -m1 'bucket(s)' "$tmp/out")"
  fi
  timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" "${base[@]}" --bucket-kb "$cap" --metrics fixed.jsonl >"$tmp/out" 2>"$tmp/err"
  same=1
  for k in bucket_bytes train_loss test_loss test_acc; do
    [ "$(figure $k auto.jsonl)" = "$(figure $k fixed.jsonl)" ] || same=0
  done
  if [ "$same" = 1 ] && ! grep -q "^buckets: auto" "$tmp/out"; then
    ok "np 2, bucket_kb=$cap given: the same buckets and losses as auto, no probe (train loss $(figure train_loss auto.jsonl))"
  else
    bad "np 2, bucket_kb=$cap given differs from auto: $(figure bucket_bytes fixed.jsonl) vs $(figure bucket_bytes auto.jsonl)"
  fi
else
  bad "np 2, auto: exit $rc, choice line: '${choice:-none}'"
fi

# ---- one rank: nothing to probe without all-reduces; force_allreduce=1 probes its own comm
run "${base[@]}" --bucket-kb auto --steps 3
if [ $? -eq 0 ] && ! grep -q "^buckets: auto" "$tmp/out"; then ok "np 1: no all-reduce, no probe"; else bad "np 1, auto"; fi
run "${base[@]}" --bucket-kb auto --steps 3 --set parallel.force_allreduce=1
if [ $? -eq 0 ] && grep -qE "$line_re" "$tmp/out"; then
  ok "np 1, force_allreduce=1: $(grep -oE 'cap [0-9]+ KiB, [0-9]+ buckets' "$tmp/out")"
else
  bad "np 1, force_allreduce=1, auto: no choice line"
fi

# ---- ResNet-50 (configs/resnet50.cfg at 32x32, 2 classes: 23.5 M parameters, 94 MB): within the request slots
mkdir -p img/a img/b
for i in 0 1; do
  python3 "$src/tests/make_images.py" png "img/a/$i.png" 40 36 3
  python3 "$src/tests/make_images.py" png "img/b/$i.png" 36 40 3
done
timeout -k 2 300 "${mpi[@]}" -np 2 "$trainer" --config "$src/configs/resnet50.cfg" --threads 1 --epochs 1 \
  --set net.batch=2 --set net.height=32 --set net.width=32 --set net.classes=2 --set fc.units=2 \
  --set data.train_dir=img --set data.test_dir=img --set data.val_fraction=0 --set data.resize=32 \
  --set net.eval_batch=2 --bucket-kb auto --metrics r50.jsonl >"$tmp/out" 2>"$tmp/err"
rc=$?
choice=$(grep -E "$line_re" "$tmp/out")
if [ "$rc" -eq 0 ] && [[ $choice =~ $line_re ]] && python3 - "${BASH_REMATCH[1]}" <<'PY'
import json, sys
m = json.loads(open("r50.jsonl").read().splitlines()[-1])
cap, sizes = int(sys.argv[1]) * 1024, m["bucket_bytes"]
ok = m["bucket_kb"] * 1024 == cap and len(sizes) == m["n_buckets"] <= 248 and max(sizes) <= cap
ok = ok and sum(sizes) == 4 * 23512130
sys.exit(0 if ok else 1)
PY
then
  ok "ResNet-50, np 2, auto: $choice"
else
  bad "ResNet-50, np 2, auto: exit $rc, '${choice:-no choice line}'"
fi
# ---- launch/perf_model.py's wire terms against hand sums (the reference CNN's 121,930 parameters, 15 slices of
# 32 KiB, np 2, alpha 10 us, beta 1 GB/s: comm = 15 x 20 us + 487,720 B / 1 GB/s = 0.78772 ms)
pm() { python3 "$src/launch/perf_model.py" comm --params 121930 --np 2 --alpha-us 10 --beta-gbps 1 --bucket-kb 32 "$@"; }
printf '32x1x3x3\n32\n64x32x3x3\n64\n64x1600\n64\n10x64\n10\n' >cnn_shapes.txt
# PowerSGD rank 1: 41 + 352 + 1664 + 74 values for the four matrices, 170 for the biases (2,301 x 4 B), 2 rounds
want=("0.78772 0.78772 487720" "0.54386 0.54386 243860" "0.609204 0.609204 9204" "0.78772 2.78772 487720")
got=("$(pm)" "$(pm --compress bf16)" "$(pm --compress powersgd --tensors cnn_shapes.txt)" "$(pm --skew-ms 2)")
for i in 0 1 2 3; do
  if [ "${got[$i]}" = "${want[$i]}" ]; then ok "perf_model.py comm case $i: ${got[$i]}"; else bad "perf_model.py comm case $i: '${got[$i]}', want '${want[$i]}'"; fi
done
# 16 ranks, 8 per node: by node (NVLink-like 2 us / 150 GB/s inside, 2 leaders) beats the flat ring; auto takes it
h() { python3 "$src/launch/perf_model.py" comm --params 25557032 --np 16 --alpha-us 10 --beta-gbps 1.5625 \
  --bucket-kb 25600 --ranks-per-node 8 --intra-alpha-us 2 --intra-beta-gbps 150 --hierarchy "$1" | cut -d' ' -f1; }
flat=$(h flat) node=$(h node) auto=$(h auto)
if awk -v f="$flat" -v n="$node" -v a="$auto" 'BEGIN { exit !(n < f && a == n) }'; then
  ok "perf_model.py hierarchy: flat $flat ms, by node $node ms, auto $auto ms"
else
  bad "perf_model.py hierarchy: flat $flat, node $node, auto $auto"
fi
# perf_model.py box on a hand-made bench_comm.sh output: one 1 MB bucket of a 1-D tensor of 250,000 floats at
# 8 Mbit/s (1 MB/s at link efficiency 1, alpha 0), 2 x 1 ranks: 1 s on the wire, 0.5 s of it hidden behind backward
# is not possible for the only bucket (the last), so 1 s exposed; compute 1 s (the baseline's steps); host 5 ns per
# byte of the 2 x 1 MB the ranks send, over 2 cores: 5 ms. Model 2005 ms against a measured 2000: +0.2 %.
mkdir -p box
printf '250000\n' >box/shapes.txt
printf 'link_mbit,rpn,ranks,impl,compress,hierarchy,step_ms,exposed_ms,eff,bucket_kb,pred_ms,batch,powersgd_rank\n8,1,2,ddp-cnn,none,flat,2000,1000,0.5,1024,-,4,1\n8,1,2,pytorch-ddp,none,flat,2100,1000,0.48,25600,-,4,1\n' >box/rows.csv
printf '{"epoch":1,"bucket_bytes":[1000000]}\n' >box/ours-8-1-none-flat.jsonl
for k in 1 2 3; do printf '{"step":%d,"step_s":1.0,"exposed_comm_s":0}\n' "$k"; done >box/base-ours-1.steps.jsonl
printf '{"epoch":1,"backward_s":0.5,"gflop_per_s":10,"step_s":1.0}\n' >box/base-ours-1.jsonl
out=$(python3 "$src/launch/perf_model.py" box --dir box --tensors box/shapes.txt --link-eff 1 --alpha-ms 0 \
  --host-ns-per-byte 5 --cores 2 2>&1)
row=$(echo "$out" | awk '$1 == 8 && $4 == "flat" { print $9, $10 }')
if [ "$row" = "2005.0 +0.2%" ] && echo "$out" | grep -q "over 1 rows (1 within 15%)"; then
  ok "perf_model.py box: model $row against 2000 ms measured (PyTorch rows not modelled)"
else
  bad "perf_model.py box: '$row'"; echo "$out" | sed 's/^/    | /' | head -8
fi
finish buckets
