#!/usr/bin/env bash
# speedrun.sh — time to a target test accuracy: trains a config and reports the first epoch whose test accuracy
# reaches the target, with the training time up to it (sum of the epochs' training time, evaluation excluded)
# and the wall time; then the best accuracy of the run and when it came.
#   ./launch/speedrun.sh [--config configs/fashion_resnet.cfg] [--target 0.94] [--epochs N] [--np N]
#                        [--backend cpu|cuda] [--out DIR] [-- TRAINER OPTIONS...]
# --backend defaults to cuda when the build has CUDA and a GPU is present, else cpu. The whole run goes on to its
# last epoch (the schedule is set by the epochs), so the report also gives the final and best accuracy.
# Output: DIR/metrics.jsonl (one row per epoch), DIR/speedrun.json (the summary), and a table on stdout.
# Exit status: 0 when the target was reached, 1 when not, 2 on bad arguments.
set -euo pipefail
self=$(readlink -f "$0")  # --help and re-runs read it after the cd below
cd "$(dirname "$self")/.."
config=configs/fashion_resnet.cfg target=0.94 epochs="" np=1 backend="" out=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --np) np=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,11p' "$self"; exit 0 ;;
    *) echo "speedrun.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -f "$config" ] || { echo "speedrun.sh: $config: no such config" >&2; exit 2; }
python3 -c "import sys; t=float(sys.argv[1]); sys.exit(0 if 0 < t <= 1 else 1)" "$target" 2>/dev/null ||
  { echo "speedrun.sh: --target $target: want a test accuracy in (0, 1]" >&2; exit 2; }
trainer=${TRAINER:-build/trainer}
[ -x "$trainer" ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j "$(nproc)" >/dev/null; }
if [ -z "$backend" ]; then
  backend=cpu
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && grep -q libcudart <<<"$(ldd "$trainer")"; then backend=cuda; fi
fi
[ -n "$out" ] || out=$(mktemp -d /tmp/speedrun.XXXXXX)
mkdir -p "$out"
rm -f "$out/metrics.jsonl"
args=(--config "$config" --set "net.backend=$backend" --metrics "$out/metrics.jsonl")
[ -n "$epochs" ] && args+=(--epochs "$epochs")
[ "$backend" = cuda ] && args+=(--set parallel.comm=nccl)
launch=()
if [ "$np" -gt 1 ] || command -v mpirun >/dev/null; then
  launch=(mpirun --bind-to none -np "$np")
  [ "$(id -u)" -eq 0 ] && launch+=(--allow-run-as-root)
  command -v mpirun >/dev/null || { echo "speedrun.sh: --np $np needs mpirun" >&2; exit 2; }
fi
echo "speedrun: $config, target $target, backend $backend, np $np -> $out"
start=$(date +%s.%N)
"${launch[@]}" "$trainer" "${args[@]}" "${extra[@]}"
end=$(date +%s.%N)
python3 - "$out" "$target" "$start" "$end" "$config" "$backend" "$np" <<'PY'
import json, sys
out, target, start, end, config, backend, np_ = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7])
rows = [json.loads(l) for l in open(f"{out}/metrics.jsonl") if l.strip()]
print(f"{'epoch':>5} {'test_acc':>8} {'test_loss':>9} {'epoch_s':>8} {'train_s':>8} {'img/s':>8}")
train_s, reached, best = 0.0, None, None
for r in rows:
    train_s += r["epoch_s"]
    acc = r["test_acc"]
    print(f"{r['epoch']:5d} {acc:8.4f} {r['test_loss']:9.4f} {r['epoch_s']:8.1f} {train_s:8.1f} {r['images_per_s']:8.0f}")
    if reached is None and acc >= target:
        reached = {"epoch": r["epoch"], "train_s": round(train_s, 2), "test_acc": acc}
    if best is None or acc > best["test_acc"]:
        best = {"epoch": r["epoch"], "train_s": round(train_s, 2), "test_acc": acc}
summary = {"config": config, "backend": backend, "np": np_, "target": target, "reached": reached, "best": best,
           "epochs": len(rows), "wall_s": round(end - start, 1)}
json.dump(summary, open(f"{out}/speedrun.json", "w"), indent=1)
if reached:
    print(f"target {target}: reached at epoch {reached['epoch']} after {reached['train_s']:.1f} s of training "
          f"(test acc {reached['test_acc']:.4f})")
else:
    print(f"target {target}: not reached in {len(rows)} epochs")
print(f"best test acc {best['test_acc']:.4f} at epoch {best['epoch']} after {best['train_s']:.1f} s of training; "
      f"wall time of the whole run {end - start:.1f} s")
sys.exit(0 if reached else 1)
PY
