#!/usr/bin/env bash
# overlap_sweep.sh — how much of the gradient all-reduce backward hides, per bucket size, overlap on and off.
#   ./launch/overlap_sweep.sh [--np 2] [--steps 200] [--buckets "16 64 128 256 1024"] [--repeat 3] [-- trainer options]
#   sudo ./launch/overlap_sweep.sh --box 1        the same across the nodes of a cluster in a box, 1 Gbit/s links
#   ./launch/overlap_sweep.sh --paired ...         overlap off and on alternating step by step inside each run
# Each point is one epoch of `steps` steps (train_limit = steps x global batch) of the default config; the
# figures are rank 0's metrics (docs/outputs.md): comm_s (all-reduce in flight per step), exposed_comm_s
# (waiting after backward per step), skew_s (the part of that wait spent on a peer still in backward) and
# net = exposed_comm_s - skew_s (waiting for communication itself). Every bucket size runs --repeat times,
# overlap on and off alternating, and the table gives the median of each figure, exposed(on) / exposed(off) and
# net(on) / net(off), and skew(on) / exposed(off): the lowest exposed on/off that hiding every byte of the
# all-reduce could give, since overlap cannot hide a peer that is still computing. JSONL files stay in
# out/overlap/.
# --paired: instead of separate runs with and without overlap, each run alternates the two step by step
# (parallel.overlap=2) and reports both halves (metrics ab_off, ab_on), 2 x --steps steps; a run-to-run drift
# of the machine then falls on both alike.
# --box GBIT: one rank per node of launch/cluster_box.sh's box (made or reshaped to --np nodes and GBIT Gbit/s;
# left up). --mpirun "CMD": the launcher for ranks on this host (default: mpirun --bind-to none, with
# --oversubscribe and --allow-run-as-root where needed; also from MPIRUN). --test-limit N: test images of the
# evaluation that ends each run (default 1000; it is not timed). Environment: TRAINER (default build/trainer),
# OUT (default out/overlap).
set -euo pipefail
self=$(readlink -f "$0")  # --help and re-runs read it after the cd below
cd "$(dirname "$self")/.."
np=2 steps=200 buckets="16 64 128 256 1024" batch=64 repeat=3 box_gbit="" mpirun_cmd=${MPIRUN:-} test_limit=1000
paired=0
extra=()
usage() { echo "overlap_sweep.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in --np|--steps|--buckets|--batch|--repeat|--box|--mpirun|--test-limit)
    [ $# -ge 2 ] || usage "$1 needs a value (see --help)" ;; esac
  case "$1" in
    --np) np=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --buckets) buckets=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --box) box_gbit=$2; shift 2 ;;
    --mpirun) mpirun_cmd=$2; shift 2 ;;
    --test-limit) test_limit=$2; shift 2 ;;
    --paired) paired=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage "unknown argument '$1' (see --help)" ;;
  esac
done
for v in "--np $np" "--steps $steps" "--batch $batch" "--repeat $repeat" "--test-limit $test_limit"; do
  [[ ${v#* } =~ ^[1-9][0-9]*$ ]] || usage "${v%% *} must be a positive integer, got '${v#* }'"
done
read -r -a kbs <<<"$buckets"
[ ${#kbs[@]} -gt 0 ] || usage "--buckets needs at least one size in KiB"
for kb in "${kbs[@]}"; do [[ $kb =~ ^[1-9][0-9]*$ ]] || usage "--buckets: '$kb' is not a size in KiB"; done
trainer=${TRAINER:-build/trainer}
[ -n "${TRAINER:-}" ] || [ -x build/trainer ] || { cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build build -j "$(nproc)" >/dev/null; }
out=${OUT:-out/overlap}
mkdir -p "$out"
threads=$(( $(nproc) / np )); [ "$threads" -ge 1 ] || threads=1
if [ -n "$box_gbit" ]; then
  launch/cluster_box.sh up --nodes "$np" --cpus-per-node "$(nproc)" --link-gbit "$box_gbit" >/dev/null ||
    { echo "overlap_sweep.sh: no cluster in a box" >&2; exit 2; }
  mpi=(launch/cluster_box.sh exec n1 mpirun --hostfile "${DDP_BOX_DIR:-/var/tmp/${DDP_BOX:-ddpbox}}/hostfile"
       --map-by node --bind-to none -np "$np")
  threads=1  # the nodes share this host's cores
  tag=box${box_gbit}g_
elif [ -n "$mpirun_cmd" ]; then
  read -r -a mpi <<<"$mpirun_cmd"
  mpi+=(-np "$np")
  tag=""
else
  mpi=(mpirun --bind-to none -np "$np")
  [ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
  [ "$np" -gt "$(nproc)" ] && mpi+=(--oversubscribe)
  tag=""
fi

files=()
for kb in "${kbs[@]}"; do
  for r in $(seq 1 "$repeat"); do
    modes=(ov1 ov0); [ "$paired" -eq 1 ] && modes=(ab)
    for mode in "${modes[@]}"; do
      m="$out/${tag}np${np}_kb${kb}_${mode}_r$r.jsonl"
      flags=() n=$steps
      case $mode in ov0) flags=(--no-overlap) ;; ab) flags=(--set parallel.overlap=2) n=$((2 * steps)) ;; esac
      "${mpi[@]}" "$trainer" --config configs/fashion_mnist_cnn.cfg --batch "$batch" --threads "$threads" \
        --epochs 1 --bucket-kb "$kb" "${flags[@]}" --set data.train_limit=$(( n * batch * np )) \
        --set data.test_limit="$test_limit" --metrics "$m" --quiet "${extra[@]}" >/dev/null
      files+=("$m")
    done
  done
done
python3 - "${files[@]}" <<'PY'
import json, re, statistics, sys
runs = {}
paired = False
for f in sys.argv[1:]:
    kb, mode = re.search(r"_kb(\d+)_(ov\d|ab)_r\d+\.jsonl$", f).groups()
    m = json.loads(open(f).read().splitlines()[-1])
    if mode == "ab":  # one run, both halves
        paired = True
        for ov, half in ((0, "ab_off"), (1, "ab_on")):
            runs.setdefault((int(kb), ov), []).append(dict(m[half], n_buckets=m["n_buckets"]))
    else:
        runs.setdefault((int(kb), int(mode[2])), []).append(m)
med = lambda ms, k: statistics.median(m[k] for m in ms) * 1e3
net = lambda ms: statistics.median(m["exposed_comm_s"] - m.get("skew_s", 0) for m in ms) * 1e3
print(f"{'bucket_kb':<9} {'buckets':<8} {'overlap':<8} {'step_ms':<9} {'backward_ms':<12} {'comm_ms':<9} "
      f"{'exposed_ms':<11} {'skew_ms':<8} {'net_ms':<8} {'exposed on/off':<15} {'net on/off':<11} "
      f"{'skew(on)/exposed(off)':<21} (median of {len(next(iter(runs.values())))}"
      f"{' runs, each alternating overlap off and on step by step' if paired else ''})")
floors = []
for kb in sorted({k for k, _ in runs}):
    off, off_net = med(runs[(kb, 0)], "exposed_comm_s"), net(runs[(kb, 0)])
    for ov in (1, 0):
        ms = runs[(kb, ov)]
        e, n = med(ms, "exposed_comm_s"), net(ms)
        ratio = f"{e / off:.2f}" if ov == 1 and off > 0 else ""
        ratio_net = f"{n / off_net:.2f}" if ov == 1 and off_net > 0 else ""
        skew = med(ms, 'skew_s') if 'skew_s' in ms[0] else 0
        floor = f"{skew / off:.2f}" if ov == 1 and off > 0 else ""
        if floor: floors.append((kb, skew / off))
        print(f"{kb:<9} {ms[0]['n_buckets']:<8} {'on' if ov else 'off':<8} {med(ms, 'step_s'):<9.2f} "
              f"{med(ms, 'backward_s'):<12.2f} {med(ms, 'comm_s'):<9.3f} {e:<11.3f} "
              f"{skew:<8.3f} {n:<8.3f} {ratio:<15} {ratio_net:<11} {floor:<21}")
# Overlap hides communication, not a peer that is still computing: with it the wait cannot fall below skew(on),
# so exposed on/off cannot fall below skew(on)/exposed(off) however well the all-reduce is hidden.
high = [f"{kb} KiB ({f:.2f})" for kb, f in floors if f > 0.5]
if high:
    print(f"note: at {', '.join(high)} the wait with overlap is mostly ranks waiting for a peer still in backward "
          f"(load imbalance, skew_ms), more than half the wait without overlap: no all-reduce schedule can halve "
          f"exposed there; net on/off is the part overlap controls")
PY
