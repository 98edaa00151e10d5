#!/usr/bin/env bash
# run.sh — install missing packages, build Release into build/, and train.
#   ./launch/run.sh                               default config (Fashion-MNIST), one rank
#   NP=2 ./launch/run.sh --epochs 2               two ranks under mpirun
#   ./launch/run.sh --config configs/cifar10_cnn.cfg --metrics out/m.jsonl
# Any argument is passed to the trainer (see build/trainer --help). Environment: NP (ranks), TRAINER_CUDA.
set -euo pipefail
case "${1:-}" in -h|--help)  # this text, then the trainer's options where it is built; nothing is installed or run
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  trainer=$(dirname "$0")/../build/trainer
  if [ -x "$trainer" ]; then echo; "$trainer" --help; else echo "(build/trainer --help lists the trainer's options once built)"; fi
  exit 0 ;;
esac
cd "$(dirname "$0")/.."
source launch/deps.sh
ddp_install_deps

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "-DTRAINER_CUDA=${TRAINER_CUDA:-AUTO}" >/dev/null
cmake --build build -j "$(nproc)" >/dev/null

args=("$@")
case " $* " in *" --config "*) ;; *) args=(--config configs/fashion_mnist_cnn.cfg "${args[@]}") ;; esac
np=${NP:-1}
mpirun_flags=(--bind-to none)
[ "$(id -u)" -eq 0 ] && mpirun_flags+=(--allow-run-as-root)
[ "$np" -gt "$(nproc)" ] && mpirun_flags+=(--oversubscribe)
# Ctrl-C / TERM / HUP: the ranks stop at an agreed step, save (--save) and the job exits 5 (launch/stop_signals.sh).
exec launch/stop_signals.sh mpirun "${mpirun_flags[@]}" -np "$np" build/trainer "${args[@]}"
