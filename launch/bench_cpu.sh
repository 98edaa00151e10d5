#!/usr/bin/env bash
# bench_cpu.sh — ddp-cnn vs PyTorch on the CPU, same model, batch, threads and data; prints images/s and ratio.
#   ./launch/bench_cpu.sh [--config configs/fashion_mnist_cnn.cfg] [--batch 64] [--threads 2] [--steps 300] [--build build]
# --build: the build directory whose trainer runs (e.g. one configured with -DTRAINER_DNNL=OFF, to compare).
# Also prints ddp-cnn's achieved GFLOP/s (metrics gflop_per_s) and its fraction of this CPU's FP32 peak.
# ddp-cnn's figure is the training-loop throughput of its metrics (one epoch-like run of --steps steps, data
# gathered from memory as in PyTorch). PyTorch runs only when Debian's python3-torch is installed
# (apt-get install python3-torch); it is never a test dependency.
set -euo pipefail
self=$(readlink -f "$0")  # --help and re-runs read it after the cd below
cd "$(dirname "$self")/.."
batch=64 threads=2 steps=300 config=configs/fashion_mnist_cnn.cfg build=build
while [ $# -gt 0 ]; do
  case "$1" in
    --batch) batch=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    -h|--help) sed -n '2,7p' "$self"; exit 0 ;;
    *) echo "bench_cpu.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ -x "$build/trainer" ] || { cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build "$build" -j "$(nproc)" >/dev/null; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mpi=(mpirun --bind-to none -np 1)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)

# Warm-up steps are excluded the same way as in PyTorch: run steps+20 and use the epoch's steady rate.
n_train=$(( (steps + 20) * batch ))
"${mpi[@]}" "$build/trainer" --config "$config" --batch "$batch" --threads "$threads" \
  --epochs 1 --set data.train_limit="$n_train" --set data.test_limit=1000 --metrics "$out/m.jsonl" --quiet >/dev/null
ours=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['images_per_s'])" "$out/m.jsonl")
gflops=$(python3 -c "import json,sys; print(round(json.loads(open(sys.argv[1]).read().splitlines()[-1])['gflop_per_s'], 2))" "$out/m.jsonl")
printf 'ddp-cnn  images_per_s=%s batch=%s threads=%s gflop_per_s=%s\n' "$ours" "$batch" "$threads" "$gflops"
# FP32 peak of the threads used: AVX2 FMA = 2 units x 8 lanes x 2 flops per cycle and core (AVX-512: 16 lanes),
# at the maximum clock lscpu reports (else the current one from /proc/cpuinfo).
python3 - "$gflops" "$threads" <<'PY'
import re, subprocess, sys
gf, threads = float(sys.argv[1]), int(sys.argv[2])
info = open("/proc/cpuinfo").read()
flags = re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split()
lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags and "fma" in flags else 4
try:
    mhz = float(re.search(r"CPU max MHz:\s*([\d.]+)", subprocess.run(["lscpu"], capture_output=True, text=True).stdout).group(1))
except Exception:
    mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M).group(1))
peak = threads * 2 * lanes * 2 * mhz / 1e3
print(f"peak     {peak:.1f} GFLOP/s FP32 ({threads} cores x 2 FMA x {lanes} lanes x 2 flops x {mhz / 1e3:.2f} GHz); "
      f"ddp-cnn at {100 * gf / peak:.1f} % of it")
PY

if /usr/bin/python3 -c "import torch" 2>/dev/null; then
  line=$(/usr/bin/python3 launch/bench_torch.py --config "$config" --batch "$batch" --threads "$threads" --steps "$steps")
  echo "$line"
  theirs=$(sed -n 's/.*images_per_s=\([0-9.]*\).*/\1/p' <<<"$line")
  python3 -c "import sys; print(f'ratio ddp-cnn/torch = {float(sys.argv[1])/float(sys.argv[2]):.2f}x')" "$ours" "$theirs"
else
  echo "torch    not installed (apt-get install python3-torch) — ratio not measured"
fi
