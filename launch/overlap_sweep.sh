#!/usr/bin/env bash
# overlap_sweep.sh — how much of the gradient all-reduce backward hides, per bucket size, overlap on and off.
#   ./launch/overlap_sweep.sh [--np 2] [--steps 200] [--buckets "16 64 128 256 1024"] [-- trainer options]
# Each point is one epoch of `steps` steps (train_limit = steps x global batch) of the default config; the
# figures are rank 0's metrics (README "Outputs"): comm_s (all-reduce in flight per step), exposed_comm_s
# (waiting after backward per step) and their ratio. Prints a table; the JSONL files stay in out/overlap/.
# Environment: TRAINER (default build/trainer).
set -euo pipefail
cd "$(dirname "$0")/.."
np=2 steps=200 buckets="16 64 128 256 1024" batch=64
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --np) np=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --buckets) buckets=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "overlap_sweep.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
trainer=${TRAINER:-build/trainer}
[ -n "${TRAINER:-}" ] || [ -x build/trainer ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j "$(nproc)" >/dev/null; }
out=out/overlap
mkdir -p "$out"
mpi=(mpirun --bind-to none -np "$np")
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
[ "$np" -gt "$(nproc)" ] && mpi+=(--oversubscribe)
threads=$(( $(nproc) / np )); [ "$threads" -ge 1 ] || threads=1

printf '%-9s %-8s %-9s %-10s %-12s %-14s %-10s %-9s\n' bucket_kb buckets overlap step_ms backward_ms comm_ms exposed_ms exp/comm
for kb in $buckets; do
  for ov in 1 0; do
    m="$out/np${np}_kb${kb}_ov${ov}.jsonl"
    flags=(); [ "$ov" -eq 0 ] && flags=(--no-overlap)
    "${mpi[@]}" "$trainer" --config configs/fashion_mnist_cnn.cfg --batch "$batch" --threads "$threads" \
      --epochs 1 --bucket-kb "$kb" "${flags[@]}" --set data.train_limit=$(( steps * batch * np )) \
      --set data.test_limit=1000 --metrics "$m" --quiet "${extra[@]}" >/dev/null
    python3 - "$m" "$kb" "$ov" <<'PY'
import json, sys
m = json.loads(open(sys.argv[1]).read().splitlines()[-1])
c, e = m["comm_s"], m["exposed_comm_s"]
print(f"{sys.argv[2]:<9} {m['n_buckets']:<8} {'on' if sys.argv[3] == '1' else 'off':<9} {m['step_s']*1e3:<10.2f} "
      f"{m['backward_s']*1e3:<12.2f} {c*1e3:<14.3f} {e*1e3:<10.3f} {e / c if c > 0 else 0:<9.2f}")
PY
  done
done
