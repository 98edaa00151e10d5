#!/usr/bin/env bash
# gpu_check.sh — run on a machine with an NVIDIA GPU: build the CUDA backend into build-gpu/, run the GPU tests, the
# GPU benchmark (launch/bench_gpu.sh) and the 5-epoch Fashion-MNIST timing runs (CUDA Graphs on and off).
#   ./launch/gpu_check.sh [--all-tests] [--no-tests] [--no-bench] [--no-train] [--werror] [--archs 90] [--wheels]
# Sources .deps/env.sh when there is one (made by launch/gpu_deps.sh on a Debian machine: Open MPI, libinih,
# libcjson, cmocka, OpenBLAS, pkg-config, Fashion-MNIST). cuDNN and NCCL come from CUDNN_ROOT / NCCL_ROOT, else the
# CUDA toolkit, else python3's pip wheels (nvidia/cudnn, nvidia/nccl; first with --wheels). With the device tool:
#   run(command="./launch/gpu_check.sh", carry=[".deps"])
# Everything printed also goes to $OUT/gpu_check.log when OUT is set (with ctest's log and the runs' metrics).
# Exit: 0 all passed; 1 a build, test or run failed; 2 no GPU (one line) or a bad argument.
set -euo pipefail
if [ -n "${OUT:-}" ] && [ -z "${DDP_GPU_CHECK_LOGGED:-}" ]; then
  mkdir -p "$OUT"
  DDP_GPU_CHECK_LOGGED=1 "$0" "$@" 2>&1 | tee "$OUT/gpu_check.log"
  exit "${PIPESTATUS[0]}"
fi
cd "$(dirname "$0")/.."

tests=gpu bench=1 train=1 werror=OFF archs=90 wheels=0
while [ $# -gt 0 ]; do
  case "$1" in
    --all-tests) tests=all; shift ;;
    --no-tests) tests=none; shift ;;
    --no-bench) bench=0; shift ;;
    --no-train) train=0; shift ;;
    --werror) werror=ON; shift ;;
    --archs) archs=$2; shift 2 ;;
    --wheels) wheels=1; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

if ! gpus=$(nvidia-smi -L 2>/dev/null) || ! grep -q '^GPU ' <<<"$gpus"; then
  echo "gpu_check.sh: no NVIDIA GPU here (nvidia-smi -L lists none): run it on a GPU machine" >&2
  exit 2
fi

status=0
t_start=$SECONDS
section() { printf '\n== %s (at %ds)\n' "$1" $((SECONDS - t_start)); }
failed() { echo "gpu_check.sh: FAILED: $*" >&2; status=1; }

# ---------------------------------------------------------------------------------------------------------
section "machine"
if [ -f .deps/env.sh ]; then
  # shellcheck source=/dev/null
  . .deps/env.sh
  echo "deps: .deps/env.sh ($DDP_DEPS)"
else
  echo "deps: no .deps/env.sh: Open MPI, libinih, libcjson, cmocka, OpenBLAS must be installed"
fi
for d in /usr/local/cuda/bin /usr/local/cuda-*/bin; do
  if ! command -v nvcc >/dev/null && [ -x "$d/nvcc" ]; then export PATH=$d:$PATH; fi
done
command -v nvcc >/dev/null || { echo "gpu_check.sh: no nvcc (CUDA toolkit) on PATH or in /usr/local/cuda" >&2; exit 1; }
echo "$gpus"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
echo "os: $(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null); $(ldd --version 2>/dev/null | head -1)"
echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none)"
echo "cc: $(cc --version 2>/dev/null | head -1 || echo none)"
echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo none)"
echo "python3: $(command -v python3) $(python3 -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo '(no torch)')"
if ! mpirun --version >/dev/null 2>&1; then
  echo "gpu_check.sh: mpirun does not run here:" >&2
  mpirun --version 2>&1 | head -5 >&2 || true
  ldd "$(command -v mpirun 2>/dev/null || echo /nonexistent)" 2>&1 | grep -E 'not found|GLIBC' >&2 || true
  exit 1
fi
echo "mpi: $(mpirun --version | head -1) at $(command -v mpirun)"

# ---------------------------------------------------------------------------------------------------------
section "cuDNN and NCCL"
# wheel_dir HEADER LIB: the root (with include/HEADER and lib/LIB*) of python3's nvidia.* wheel that holds HEADER.
wheel_dir() {
  python3 - "$1" "$2" 2>/dev/null <<'PY' || true
import glob, os, sys
try:
    import nvidia
    bases = list(nvidia.__path__)  # a namespace package: no __file__
except Exception:
    sys.exit(0)
for base in bases:
    for h in sorted(glob.glob(os.path.join(base, "**", "include", sys.argv[1]), recursive=True)):
        root = os.path.dirname(os.path.dirname(h))
        if glob.glob(os.path.join(root, "lib*", sys.argv[2] + "*")):
            print(root)
            sys.exit(0)
PY
}
# use_wheel NAME ROOT SONAME: sets wheel_root to a scratch root of links with the unversioned .so the linker wants
# (wheels ship only libX.so.N); the real lib folder goes on LD_LIBRARY_PATH: cuDNN loads its sub-libraries by name.
use_wheel() {
  local name=$1 src=$2 so=$3 dst=build-gpu/wheels/$1 lib f
  lib=$(dirname "$(find "$src"/lib* -maxdepth 1 -name "$so*" -print -quit)")
  rm -rf "$dst"
  mkdir -p "$dst/lib"
  ln -s "$src/include" "$dst/include"
  for f in "$lib"/*.so*; do ln -s "$f" "$dst/lib/"; done
  if [ ! -e "$dst/lib/$so" ]; then
    f=$(find "$lib" -maxdepth 1 -name "$so.*" -print | sort | head -1)
    ln -s "$f" "$dst/lib/$so"
  fi
  export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  echo "$name: pip wheel $src (scratch root $dst)"
  wheel_root=$PWD/$dst
}
cuda_inc=$(dirname "$(dirname "$(command -v nvcc)")")/include
cmake_dep_args=()
mkdir -p build-gpu
for pair in CUDNN:cudnn.h:libcudnn.so NCCL:nccl.h:libnccl.so; do
  IFS=: read -r var header so <<<"$pair"
  given=${var}_ROOT
  if [ -n "${!given:-}" ]; then
    echo "${var,,}: ${!given} (${var}_ROOT)"
    cmake_dep_args+=("-D${var}_ROOT=${!given}")
  elif { [ "$wheels" -eq 1 ] || { [ ! -f "$cuda_inc/$header" ] && [ ! -f "/usr/include/$header" ]; }; } &&
       src=$(wheel_dir "$header" "$so") && [ -n "$src" ]; then
    use_wheel "${var,,}" "$src" "$so"
    cmake_dep_args+=("-D${var}_ROOT=$wheel_root")
  elif [ -f "$cuda_inc/$header" ] || [ -f "/usr/include/$header" ]; then
    echo "${var,,}: the system's ($header in $cuda_inc or /usr/include)"
  else
    echo "gpu_check.sh: ${var,,} not found (no ${var}_ROOT, not in the toolkit, no python3 nvidia wheel)" >&2
    exit 1
  fi
done

# ---------------------------------------------------------------------------------------------------------
section "build (build-gpu, CUDA archs $archs)"
# The image's compiler may be newer than the one the tree is warning-clean with: warnings show, and do not stop
# the lease's one build (--werror restores -Werror).
if ! cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DTRAINER_CUDA=ON -DTRAINER_CUDA_ARCHS="$archs" \
       -DTRAINER_WERROR="$werror" "${cmake_dep_args[@]}" >build-gpu/configure.log 2>&1; then
  cat build-gpu/configure.log
  echo "gpu_check.sh: cmake configure failed" >&2
  exit 1
fi
grep -E 'CUDA backend|MPI_C:' build-gpu/configure.log || true
if ! cmake --build build-gpu -j "$(nproc)" >build-gpu/build.log 2>&1; then
  grep -E -B2 -A8 'error|Error' build-gpu/build.log | head -80
  echo "gpu_check.sh: build failed (build-gpu/build.log)" >&2
  exit 1
fi
echo "compiler warnings: $(grep -c -i 'warning' build-gpu/build.log || true)"
ldd build-gpu/trainer | grep -E 'cudnn|nccl|cublas|cudart|mpi|openblas|not found' || true

# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST: the configs' default folder, else the carried copy (made the default folder on a throwaway root
# machine, so that the tests that read it run too).
fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/train-images-idx3-ubyte.gz" ] && [ -n "${DDP_FMNIST_DIR:-}" ]; then
  if [ "$(id -u)" -eq 0 ] && mkdir -p /usr/share/datasets 2>/dev/null && ln -sfn "$DDP_FMNIST_DIR" "$fmnist" 2>/dev/null; then
    echo "data: $fmnist -> $DDP_FMNIST_DIR"
  else
    fmnist=$DDP_FMNIST_DIR
  fi
fi
data_args=()
if [ "$fmnist" != /usr/share/datasets/fashion-mnist ]; then
  data_args=(--set "data.train_images=$fmnist/train-images-idx3-ubyte.gz" --set "data.train_labels=$fmnist/train-labels-idx1-ubyte.gz"
             --set "data.test_images=$fmnist/t10k-images-idx3-ubyte.gz" --set "data.test_labels=$fmnist/t10k-labels-idx1-ubyte.gz")
fi
[ -f "$fmnist/train-images-idx3-ubyte.gz" ] || echo "gpu_check.sh: no Fashion-MNIST ($fmnist): the runs will fail" >&2

# ---------------------------------------------------------------------------------------------------------
if [ "$tests" != none ]; then
  section "tests ($tests)"
  ctest_args=(--test-dir build-gpu --output-on-failure --timeout 600)
  [ "$tests" = gpu ] && ctest_args+=(-R 'cuda|comm|train|ddp')
  ctest "${ctest_args[@]}" || failed "ctest ($tests)"
  if [ -n "${OUT:-}" ] && [ -f build-gpu/Testing/Temporary/LastTest.log ]; then
    cp build-gpu/Testing/Temporary/LastTest.log "$OUT/ctest.log"
  fi
fi

if [ "$bench" -eq 1 ]; then
  section "benchmark: ddp-cnn vs PyTorch on the GPU"
  DDP_FMNIST_DIR=$fmnist ./launch/bench_gpu.sh --build build-gpu || failed "bench_gpu.sh"
fi

# ---------------------------------------------------------------------------------------------------------
if [ "$train" -eq 1 ]; then
  section "5-epoch Fashion-MNIST runs (configs/fashion_mnist_cnn_cuda.cfg, 1 GPU)"
  mpi=(mpirun -np 1 --bind-to none --mca btl "self,vader")
  [ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
  runs=$(mktemp -d)
  summary=()
  # train_run LABEL ARGS...: 5 epochs; one line from its metrics: training and evaluation time, accuracy.
  train_run() {
    local label=$1 t0 line
    shift
    echo "-- $label: trainer --config configs/fashion_mnist_cnn_cuda.cfg --epochs 5 $*"
    t0=$(date +%s.%N)
    if ! "${mpi[@]}" build-gpu/trainer --config configs/fashion_mnist_cnn_cuda.cfg --epochs 5 "${data_args[@]}" \
         --metrics "$runs/$label.jsonl" "$@"; then
      failed "run $label"
      summary+=("$(printf '%-16s FAILED' "$label")")
      return 0
    fi
    line=$(python3 - "$label" "$runs/$label.jsonl" "$t0" "$(date +%s.%N)" <<'PY'
import json, sys
label, path, t0, t1 = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
rows = [json.loads(l) for l in open(path) if l.strip()]
last = rows[-1]
print(f"{label:<16} train_s={sum(r['epoch_s'] for r in rows):7.2f} eval_s={sum(r['eval_s'] for r in rows):6.2f} "
      f"wall_s={t1 - t0:7.2f} test_acc={last['test_acc']:.4f} images_per_s(epoch {last['epoch']})={last['images_per_s']:.0f}")
PY
)
    echo "$line"
    summary+=("$line")
  }
  train_run mpi-graph --comm mpi
  train_run mpi-nograph --comm mpi --set net.cuda_graph=0
  train_run nccl-graph --comm nccl
  section "summary: 5 epochs, batch 64, 1 GPU (train_s = sum of the epochs' training time)"
  printf '%s\n' "${summary[@]}"
  if [ -n "${OUT:-}" ]; then
    for f in "$runs"/*.jsonl; do
      [ -f "$f" ] && sed "s/^{/{\"run\":\"$(basename "$f" .jsonl)\",/" "$f"
    done >"$OUT/train_metrics.jsonl"
  fi
  rm -rf "$runs"
fi

section "done: $([ "$status" -eq 0 ] && echo "all passed" || echo "FAILURES above")"
exit "$status"
