#!/usr/bin/env bash
# cli_log.sh — logs that read well in a cluster job: with stdout not a terminal (a file, as in a Slurm log), a
# progress line every --log-every seconds with step, loss, img/s and ETA; the epoch line short, the step-time
# breakdown only with --verbose; a bad --log-every is exit 2. Curves: --tensorboard DIR writes an event file whose
# records (framing, CRC-32C, Event fields; tests/tb_read.py, and TensorBoard's own reader where it is installed)
# hold the live train/* scalars and each epoch's figures equal to --metrics'; launch/plot_metrics.sh draws PNGs.
# Run by ctest: cli_log.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
need_data
make_tmp
check() {
  if eval "$2"; then echo "ok   $1"; passes=$((passes + 1))
  else echo "FAIL $1"; sed 's/^/    | /' "$tmp/out" | head -12; fails=$((fails + 1)); fi
}
args=(--config "$src/configs/fashion_mnist_cnn.cfg" --epochs 2 --threads 1 --set data.train_limit=6400
      --set data.test_limit=500)

timeout 120 "$trainer" "${args[@]}" --log-every 0.3 >"$tmp/out" 2>&1
check "exit 0" '[ $? -eq 0 ]'
check "progress lines with step, loss, img/s and ETA" \
  'grep -Eq "^  step [0-9]+ \(epoch [12]/2, [0-9]+/100\) loss [0-9.]+ [0-9]+ img/s ETA [0-9hms]+$" "$tmp/out"'
check "short epoch lines (no breakdown)" \
  '[ "$(grep -c "^epoch [12]/2  loss" "$tmp/out")" -eq 2 ] && ! grep -q "fwd" "$tmp/out"'
echo "excerpt:"; grep -E "^(  step|epoch)" "$tmp/out" | head -4 | sed 's/^/    /'

timeout 120 "$trainer" "${args[@]}" --log-every 0 --verbose >"$tmp/out" 2>&1
check "--log-every 0: no progress lines; --verbose: the breakdown under each epoch" \
  '! grep -q "ETA" "$tmp/out" && [ "$(grep -c "^  step .* ms: fwd .* efficiency" "$tmp/out")" -eq 2 ]'

timeout 30 "$trainer" "${args[@]}" --log-every x >"$tmp/out" 2>&1
check "--log-every x: exit 2, one line" '[ $? -eq 2 ] && [ "$(wc -l <"$tmp/out")" -eq 1 ] && grep -q "log-every" "$tmp/out"'
# ---- TensorBoard event files and plots
timeout 120 "$trainer" "${args[@]}" --log-every 0.3 --tensorboard "$tmp/tb" --metrics "$tmp/m.jsonl" >"$tmp/out" 2>&1
check "--tensorboard: exit 0, one event file" '[ $? -eq 0 ] && [ "$(ls "$tmp/tb" | grep -c tfevents)" -eq 1 ]'
python3 "$src/tests/tb_read.py" "$tmp"/tb/events.* >"$tmp/tb.jsonl" 2>"$tmp/out"
check "event file: every record's length and data CRC-32C check, version record first" '[ $? -eq 0 ]'
check "live train/loss, train/lr, train/images_per_s at --log-every, each epoch's figures" \
  'python3 - "$tmp/tb.jsonl" "$tmp/m.jsonl" <<"PY" >"$tmp/out" 2>&1
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
m = [json.loads(l) for l in open(sys.argv[2])]
tags = {e["tag"] for e in ev}
assert {"train/loss", "train/lr", "train/images_per_s", "epoch/test_acc", "epoch/train_loss"} <= tags, tags
live = [e for e in ev if e["tag"] == "train/loss"]
assert len(live) >= 2 and all(0 < e["value"] < 5 for e in live), live
for rec in m:  # each epoch: the same figures at the same step, to float precision
    got = {e["tag"]: e["value"] for e in ev if e["step"] == rec["step"] and e["tag"].startswith("epoch/")}
    for k in ("test_acc", "test_loss", "train_loss", "train_acc"):
        assert abs(got["epoch/" + k] - rec[k]) <= 1e-6 * max(1, abs(rec[k])), (k, got, rec[k])
print(len(ev), "scalars,", len(live), "live loss points, epochs at steps", [r["step"] for r in m])
PY'
cat "$tmp/out"
check "per-step records in m.steps.jsonl at --log-every, the same values as the live TensorBoard curves" \
  'python3 - "$tmp/m.steps.jsonl" "$tmp/tb.jsonl" <<"PY" >"$tmp/out" 2>&1
import json, sys, time
st = [json.loads(l) for l in open(sys.argv[1])]
ev = {(e["step"], e["tag"]): e["value"] for e in map(json.loads, open(sys.argv[2]))}
assert len(st) >= 2, st
keys = {"epoch", "step", "time", "elapsed_s", "loss", "lr", "images_per_s", "grad_norm", "step_s", "comm_s",
        "exposed_comm_s", "data_wait_s"}
for r in st:
    assert set(r) == keys, set(r) ^ keys
    assert abs(r["time"] - time.time()) < 600 and r["elapsed_s"] >= 0 and r["images_per_s"] > 0 and r["step_s"] > 0
    assert abs(ev[(r["step"], "train/loss")] - r["loss"]) <= 1e-6 * r["loss"], r
steps = [r["step"] for r in st]
assert steps == sorted(steps) and len(set(steps)) == len(steps), steps
print(len(st), "step records, steps", steps[:3], "...")
PY'
cat "$tmp/out"
if python3 -c "import tensorboard" 2>/dev/null; then
  check "TensorBoard's own reader takes the file" 'python3 - "$tmp/tb" <<"PY" >"$tmp/out" 2>&1
import sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1]); acc.Reload()
assert "epoch/test_acc" in acc.Tags()["scalars"], acc.Tags()
print("tensorboard:", len(acc.Scalars("epoch/test_acc")), "epoch/test_acc points")
PY'
else
  echo "skip TensorBoard's own reader (python3 package tensorboard not installed)"
fi
"$trainer" --eval x.safetensors --tensorboard "$tmp/tb2" >"$tmp/out" 2>&1
check "--tensorboard with --eval: exit 2" '[ $? -eq 2 ] && grep -q "tensorboard" "$tmp/out"'
if command -v gnuplot >/dev/null; then
  bash "$src/launch/plot_metrics.sh" "$tmp/m.jsonl" --out "$tmp/plots" >"$tmp/out" 2>&1
  check "plot_metrics.sh: loss, accuracy and throughput PNGs" \
    'for f in loss accuracy throughput; do [ "$(head -c 4 "$tmp/plots/$f.png" | od -An -c | tr -d " ")" = "211PNG" ] || exit 1; done'
  bash "$src/launch/plot_metrics.sh" "$tmp/tb.jsonl" --out "$tmp/plots2" >"$tmp/out" 2>&1
  check "plot_metrics.sh on a file with no epoch record: exit 2" '[ $? -eq 2 ]'
else
  echo "skip plot_metrics.sh (no gnuplot)"
fi
echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
