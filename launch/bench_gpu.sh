#!/usr/bin/env bash
# bench_gpu.sh — ddp-cnn (CUDA backend) vs PyTorch eager and torch.compile on one GPU: same model, Adam, batch and
# in-memory Fashion-MNIST; prints images/s of each and the ratio ddp-cnn/torch for each batch size.
#   ./launch/bench_gpu.sh [--batches "64 512"] [--train-limit 60000] [--epochs 2] [--build build-gpu] [--comm nccl]
#                         [--compile] [--tf32] [--backend cpu] [--config configs/fashion_mnist_cnn_cuda.cfg]
# ddp-cnn's figure is `images_per_s` of the last epoch in its --metrics (a run of --epochs epochs on the first
# --train-limit samples), so start-up, cuDNN's algorithm search and the CUDA Graph capture of the first epoch stay
# out. PyTorch (launch/bench_torch.py --device cuda, with python3 or $PYTHON) times as many steps as one such epoch
# after 50 warm-up steps (torch.compile compiles in those, only with --compile). The trainer runs directly (world
# 1, no mpirun). Data: $DDP_FMNIST_DIR, else Debian's Fashion-MNIST. --backend cpu: both on the CPU, no GPU needed
# (a check of this script; launch/gpu_check.sh --no-gpu uses it). Needs a built trainer (launch/gpu_check.sh
# builds build-gpu/) and a GPU (exit 2 without). Exit 1 when a ddp-cnn run fails (PyTorch absent or failing is
# reported in the table, not an error). --config: any config; PyTorch builds the same model from it
# (launch/torch_model.py).
set -euo pipefail
self=$(readlink -f "$0")  # --help and re-runs read it after the cd below
cd "$(dirname "$self")/.."
batches="64 512" limit=60000 epochs=2 build=build-gpu comm=nccl compile=0 tf32=0 backend=cuda
config=configs/fashion_mnist_cnn_cuda.cfg
while [ $# -gt 0 ]; do
  case "$1" in
    --batches) batches=$2; shift 2 ;;
    --train-limit) limit=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --comm) comm=$2; shift 2 ;;
    --compile) compile=1; shift ;;
    --no-compile) compile=0; shift ;;
    --tf32) tf32=1; shift ;;
    --backend) backend=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$self"; exit 0 ;;
    *) echo "bench_gpu.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
case "$backend" in
  cuda) device=cuda ;;
  cpu) device=cpu comm=mpi tf32=0 ;;
  *) echo "bench_gpu.sh: --backend cuda or cpu" >&2; exit 2 ;;
esac
if [ "$backend" = cuda ] && ! grep -q '^GPU ' <<<"$(timeout 20 nvidia-smi -L 2>/dev/null)"; then
  echo "bench_gpu.sh: no NVIDIA GPU here (nvidia-smi -L lists none)" >&2
  exit 2
fi
[ -x "$build/trainer" ] || { echo "bench_gpu.sh: no $build/trainer: build it first (launch/gpu_check.sh)" >&2; exit 2; }
data=${DDP_FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
[ -f "$data/train-images-idx3-ubyte.gz" ] || { echo "bench_gpu.sh: no Fashion-MNIST in $data" >&2; exit 2; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# PyTorch brings its own CUDA libraries: it runs without the ones .deps/env.sh put on LD_LIBRARY_PATH.
py=(env "LD_LIBRARY_PATH=${DDP_DEPS_BASE_LD_LIBRARY_PATH-${LD_LIBRARY_PATH:-}}" "${PYTHON:-python3}")
have_torch=1
timeout 120 "${py[@]}" -c 'import sys, torch; sys.exit(0 if sys.argv[1] == "cpu" or torch.cuda.is_available() else 1)' \
  "$device" 2>/dev/null || have_torch=0

# ours BATCH: images_per_s of the last epoch of a run.
ours() {
  local m=$out/m$1.jsonl
  if ! "$build/trainer" --config "$config" --batch "$1" --epochs "$epochs" \
       --backend "$backend" --comm "$comm" --set net.tf32="$tf32" \
       --set data.train_images="$data/train-images-idx3-ubyte.gz" --set data.train_labels="$data/train-labels-idx1-ubyte.gz" \
       --set data.test_images="$data/t10k-images-idx3-ubyte.gz" --set data.test_labels="$data/t10k-labels-idx1-ubyte.gz" \
       --set data.train_limit="$limit" --set data.test_limit=1000 --metrics "$m" --quiet >"$out/log" 2>&1; then
    tail -20 "$out/log" >&2
    return 1
  fi
  tail -n 1 "$m" | sed -n 's/.*"images_per_s":\([0-9.]*\).*/\1/p'
}
# theirs BATCH [--compile]: PyTorch's images_per_s, or the reason it has none.
theirs() {
  local b=$1 line
  shift
  [ "$have_torch" -eq 1 ] || { echo "no-torch"; return 0; }
  local args=(--device "$device" --config "$config" --batch "$b" --steps $((limit / b)) --warmup 50 --data "$data" "$@")
  [ "$tf32" -eq 1 ] && args+=(--tf32)
  if line=$("${py[@]}" launch/bench_torch.py "${args[@]}" 2>"$out/err"); then
    echo "$line" >&2
    sed -n 's/.*images_per_s=\([0-9.]*\).*/\1/p' <<<"$line"
  else
    { echo "$line"; tail -5 "$out/err"; } >&2
    echo "failed"
  fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2fx", a / b; else printf "-" }'; }

where=CPU
[ "$backend" = cuda ] && where=$(timeout 20 nvidia-smi --query-gpu=name --format=csv,noheader | sed -n 1p)
echo "bench_gpu.sh: $where; ddp-cnn backend=$backend comm=$comm epochs=$epochs train_limit=$limit tf32=$tf32;" \
     "torch $([ "$have_torch" -eq 1 ] && "${py[@]}" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo absent)"
rows=() status=0
for b in $batches; do
  o=$(ours "$b") || { o=failed; status=1; }
  echo "ddp-cnn batch=$b images_per_s=$o (epoch $epochs of $epochs)"
  e=$(theirs "$b")
  c=skipped
  [ "$compile" -eq 1 ] && c=$(theirs "$b" --compile)
  rows+=("$(printf '%-6s %14s %14s %8s %16s %8s' "$b" "$o" "$e" "$(ratio "$o" "$e")" "$c" "$(ratio "$o" "$c")")")
done
echo
printf '%-6s %14s %14s %8s %16s %8s\n' batch ddp-cnn torch-eager ratio torch-compile ratio
printf '%s\n' "${rows[@]}"
echo "(images/s on one $([ "$backend" = cuda ] && echo GPU || echo CPU); ratio = ddp-cnn / torch)"
exit "$status"
