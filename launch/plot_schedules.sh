#!/usr/bin/env bash
# plot_schedules.sh — each learning-rate schedule as the trainer runs it: short epochs on a slice of the data,
# the lr of every epoch's last step from --metrics, one PNG (gnuplot) and a CSV.
#   ./launch/plot_schedules.sh [--out DIR] [--epochs 30] [--warmup 3] [--lr 0.01]
# Schedules: constant, step (steps at 40 % and 70 % of the epochs, gamma 0.1), cosine, onecycle (min_lr = lr/100),
# each with `warmup` epochs of linear warmup (onecycle: its own 30 % when warmup is 0). Output: DIR/schedules.csv
# (epoch, one lr column per schedule), DIR/schedules.png.
set -euo pipefail
self=$(readlink -f "$0")  # --help and re-runs read it after the cd below
cd "$(dirname "$self")/.."
out=schedules epochs=30 warmup=3 lr=0.01
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --lr) lr=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$self"; exit 0 ;;
    *) echo "plot_schedules.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
trainer=${TRAINER:-build/trainer}
[ -x "$trainer" ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j "$(nproc)" >/dev/null; }
mkdir -p "$out"
s1=$(( epochs * 4 / 10 )) s2=$(( epochs * 7 / 10 ))
min_lr=$(python3 -c "print($lr / 100)")
for s in constant step cosine onecycle; do
  args=(--config configs/fashion_mnist_cnn.cfg --threads 1 --epochs "$epochs" --batch 64 --quiet
        --set data.train_limit=320 --set data.test_limit=64 --set net.lr="$lr" --set net.schedule="$s"
        --set net.warmup_epochs="$warmup" --metrics "$out/lr_$s.jsonl")
  case $s in
    step) args+=(--set net.steps="$s1,$s2" --set net.gamma=0.1) ;;
    cosine|onecycle) args+=(--set net.min_lr="$min_lr") ;;
  esac
  rm -f "$out/lr_$s.jsonl"
  "$trainer" "${args[@]}" >/dev/null
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
names = ["constant", "step", "cosine", "onecycle"]
cols = {n: [json.loads(l)["lr"] for l in open(f"{out}/lr_{n}.jsonl") if l.strip()] for n in names}
with open(f"{out}/schedules.csv", "w") as f:
    f.write("epoch," + ",".join(names) + "\n")
    for e in range(len(cols["constant"])):
        f.write(f"{e + 1}," + ",".join(f"{cols[n][e]:.6g}" for n in names) + "\n")
PY
gnuplot <<EOF2
set terminal pngcairo size 1000,700 noenhanced
set output "$out/schedules.png"
set datafile separator ","
set multiplot layout 2,2 title "ddp-cnn learning-rate schedules: lr of each epoch's last step (lr=$lr, warmup $warmup epochs)"
set xlabel "epoch"
set ylabel "learning rate"
set yrange [0:*]
set grid
names = "constant step cosine onecycle"
do for [i=2:5] {
  set title word(names, i - 1)
  plot "$out/schedules.csv" using 1:i with linespoints notitle
}
unset multiplot
EOF2
echo "wrote $out/schedules.csv and $out/schedules.png"
