#!/usr/bin/env bash
# bench_cpu.sh — ddp-cnn vs PyTorch on the CPU, side by side in one run: same model, optimizer, batch, threads and
# synthetic in-memory data; prints one table of images/s, GFLOP/s, % of FP32 peak and peak RSS, and the ratio.
#   ./launch/bench_cpu.sh [--config configs/fashion_mnist_cnn.cfg] [--batch 64] [--threads 2] [--steps N]
#                         [--warmup W] [--build build] [--venv DIR] [--no-install]
# Both sides run W warm-up steps then N timed ones on data.format=synthetic (ddp-cnn) and the same shape of random
# tensors (launch/bench_torch.py --data synthetic), so no JPEG folder is needed: `--config configs/resnet50.cfg
# --batch 16` works as it is. Default N/W: 300/20, or 6/2 for inputs of 96x96 and more (ResNet-50 at batch 16 is
# seconds a step on 2 cores). ddp-cnn's rate is taken from its per-step metrics between the end of step W and the
# end of step W+N (the trainer runs under mpirun -np 1, one epoch of exactly W+N steps, so the epoch line gives
# its FLOPs per image); PyTorch times the same N steps after the same W. GFLOP/s = images/s x ddp-cnn's training
# FLOPs per image (metrics gflop_per_s / images_per_s), for both sides; % of peak against this CPU's FP32 peak
# for the threads used. Peak RSS: the trainer's (getrusage of its process tree) and PyTorch's (bench_torch.py's
# own getrusage), next to ddp-cnn's start-up memory report (--verbose: MiB per image for activations and their
# gradients, workspace). PyTorch: the pip venv --venv (default $BENCH_VENV or /tmp/ddp-bench-venv), created with
# `python3 -m venv` + `pip install torch torchvision` from PyPI when missing (--no-install: never); Debian's
# python3-torch, when installed, is a second row. The load average before and after is printed: other processes
# on the machine slow either side down. Benchmark only: no test depends on PyTorch.
set -euo pipefail
self=$(readlink -f "$0")  # --help and re-runs read it after the cd below
cd "$(dirname "$self")/.."
batch=64 threads=2 steps='' warmup='' config=configs/fashion_mnist_cnn.cfg build=build install=1
venv=${BENCH_VENV:-/tmp/ddp-bench-venv}
while [ $# -gt 0 ]; do
  case "$1" in
    --batch) batch=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    -h|--help) sed -n '2,20p' "$self" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench_cpu.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
for v in "$batch" "$threads" ${steps:+"$steps"} ${warmup:+"$warmup"}; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench_cpu.sh: '$v' is not a positive integer" >&2; exit 2; }
done
[ -f "$config" ] || { echo "bench_cpu.sh: no config $config" >&2; exit 2; }
[ -x "$build/trainer" ] || { cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build "$build" -j "$(nproc)" >/dev/null; }
trainer=$(readlink -f "$build/trainer")
export TRAINER=$trainer  # launch/torch_model.py expands [include]/[repeat] with it
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
load0=$(cut -d' ' -f1-3 /proc/loadavg)

# The net's input, from the effective configuration: the default step counts depend on its size.
"$trainer" --config "$config" --set data.format=synthetic --print-config >"$out/cfg.ini"
px=$(awk -F= '/^\[net\]/ { n = 1; next } /^\[/ { n = 0 } n && ($1 == "height" || $1 == "width") { p = p ? p * $2 : $2 } END { print p }' "$out/cfg.ini")
if [ "$px" -ge $((96 * 96)) ]; then : "${steps:=6}" "${warmup:=2}"; else : "${steps:=300}" "${warmup:=20}"; fi

# --- ddp-cnn ------------------------------------------------------------------------------------------------
mpi=(mpirun --bind-to none -np 1)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
# One epoch of exactly warmup + steps steps (the epoch line gives the FLOPs per image), one small test batch.
n_train=$(( (steps + warmup) * batch ))
python3 - "$out/rss" "${mpi[@]}" "$trainer" --config "$config" --batch "$batch" --threads "$threads" --epochs 1 \
  --set data.format=synthetic --set data.train_limit="$n_train" --set data.test_limit="$batch" \
  --metrics "$out/m.jsonl" --log-every 0.001 --verbose >"$out/ours.log" 2>&1 <<'PY' || { tail -20 "$out/ours.log" >&2; exit 1; }
import resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode  # the tree's peak: the largest process waited for (the trainer)
open(sys.argv[1], "w").write(f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f}\n")
sys.exit(rc)
PY
read -r ours flop_per_img <<<"$(python3 - "$out/m.jsonl" "$warmup" "$steps" "$batch" <<'PY'
import json, sys
path, w, n, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
steps = [json.loads(l) for l in open(path.replace(".jsonl", ".steps.jsonl"))]
epoch = json.loads(open(path).read().splitlines()[-1])
t = {s["step"]: s["elapsed_s"] for s in steps}
a = min(k for k in t if k >= w)                # the first step record at or after the warm-up
z = max(t)
rate = (z - a) * b / (t[z] - t[a]) if z > a and t[z] > t[a] else epoch["images_per_s"]
print(f"{rate:.2f} {epoch['gflop_per_s'] / epoch['images_per_s'] * 1e9:.6g}")
PY
)"
ours_rss=$(cat "$out/rss")
mem=$(sed -n 's/^memory per rank: //p' "$out/ours.log")

# --- PyTorch ------------------------------------------------------------------------------------------------
torch_py=''
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch" 2>/dev/null; then
  torch_py=$venv/bin/python
elif [ "$install" = 1 ]; then
  echo "installing torch + torchvision into $venv (python3 -m venv; pip, PyPI) ..."
  if { [ -x "$venv/bin/python" ] || python3 -m venv "$venv"; } &&
     "$venv/bin/pip" install --quiet torch torchvision >"$out/pip.log" 2>&1; then
    torch_py=$venv/bin/python
  else
    echo "  PyPI install failed ($(tail -n 1 "$out/pip.log" 2>/dev/null)); PyTorch (pip) not measured"
  fi
fi
pys=()
[ -n "$torch_py" ] && pys+=("pip:$torch_py")
/usr/bin/python3 -c "import torch" 2>/dev/null && pys+=("debian:/usr/bin/python3")
declare -A T_IPS=() T_RSS=() T_VER=()
for p in "${pys[@]}"; do
  tag=${p%%:*} py=${p#*:}
  if line=$("$py" launch/bench_torch.py --config "$config" --data synthetic --batch "$batch" --threads "$threads" \
            --steps "$steps" --warmup "$warmup" 2>"$out/torch.err"); then
    T_IPS[$tag]=$(sed -n 's/.*images_per_s=\([0-9.]*\).*/\1/p' <<<"$line")
    T_RSS[$tag]=$(sed -n 's/.*max_rss_mib=\([0-9.]*\).*/\1/p' <<<"$line")
    T_VER[$tag]=$(sed -n 's/.*version=\([^ ]*\).*/\1/p' <<<"$line")
  else
    echo "torch ($tag) failed: $(tail -n 1 "$out/torch.err")"
  fi
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table ------------------------------------------------------------------------------------------------
# FP32 peak of the threads used: FMA = 2 units x lanes x 2 flops per cycle and core (AVX-512: 16 lanes, AVX2: 8),
# at the maximum clock lscpu reports (else the current one from /proc/cpuinfo).
rows=("ddp-cnn $ours $ours_rss")
for tag in pip debian; do
  [ -n "${T_IPS[$tag]:-}" ] && rows+=("torch-${T_VER[$tag]}($tag) ${T_IPS[$tag]} ${T_RSS[$tag]}")
done
python3 - "$threads" "$flop_per_img" "$config" "$batch" "$steps" "$warmup" "$load0" "$load1" "$mem" "${rows[@]}" <<'PY'
import re, subprocess, sys
threads, fpi = int(sys.argv[1]), float(sys.argv[2])
config, batch, steps, warmup, load0, load1, mem = sys.argv[3:10]
rows = [r.split() for r in sys.argv[10:]]
info = open("/proc/cpuinfo").read()
flags = re.search(r"^flags\s*:(.*)$", info, re.M).group(1).split()
model = re.search(r"^model name\s*:\s*(.*)$", info, re.M).group(1).strip()
lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags and "fma" in flags else 4
try:
    mhz = float(re.search(r"CPU max MHz:\s*([\d.]+)", subprocess.run(["lscpu"], capture_output=True, text=True).stdout).group(1))
except Exception:
    mhz = float(re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M).group(1))
peak = threads * 2 * lanes * 2 * mhz / 1e3
print(f"bench_cpu.sh: {config}, batch {batch}, {threads} thread(s), synthetic data, {steps} timed steps after {warmup} "
      f"warm-up; {model}, peak {peak:.1f} GFLOP/s FP32 ({threads} x 2 FMA x {lanes} lanes x 2 x {mhz / 1e3:.2f} GHz); "
      f"training {fpi / 1e9:.3f} GFLOP per image")
print(f"{'':<24} {'img/s':>9} {'GFLOP/s':>9} {'% peak':>7} {'peak RSS MiB':>13}")
for name, ips, rss in rows:
    g = float(ips) * fpi / 1e9
    print(f"{name:<24} {float(ips):>9.2f} {g:>9.1f} {100 * g / peak:>6.1f}% {rss:>13}")
ours = float(rows[0][1])
for name, ips, _ in rows[1:]:
    print(f"ratio ddp-cnn / {name}: {ours / float(ips):.2f}x")
if len(rows) == 1:
    print("torch: not measured (no venv with torch, no python3-torch)")
print(f"ddp-cnn start-up memory (--verbose): {mem}")
print(f"load average before: {load0}; after: {load1}")
PY
