#!/usr/bin/env bash
# bench_comm.sh — gradient communication in the cluster box (launch/cluster_box.sh): step time, weak scaling
# efficiency and exposed communication of the trainer for parallel.compress x parallel.hierarchy, at several link
# speeds and 1 or 2 ranks per node, with PyTorch DDP (gloo, launch/bench_torch_ddp.py) and its comm hooks beside.
#   ./launch/bench_comm.sh [--config configs/cifar10_resnet18.cfg] [--batch 16] [--steps 12] [--links 1000,50]
#                          [--rpn 1,2] [--compress none,bf16,powersgd] [--hierarchy flat,node] [--torch]
#                          [--powersgd-rank 4] [--bucket-kb auto] [--warm-link MBIT] [--out out/bench_comm]
#                          [--build build] [--venv DIR] [--baselines-only]
# Needs root (the box). Data: data.format=synthetic (only the step is timed, as in bench_torch_ddp.py). Each
# cell: a baseline at the same per-rank batch, then 2 nodes x rpn ranks, one thread per rank; step and exposed
# times are means over the steps after the first two. The baseline is rpn ranks on one node (weak scaling across
# nodes: np 1 for 1 rank per node, else the node's ranks with their all-reduce over loopback). The box's nodes
# share this machine's cores: on a 2-core VM, 2 nodes x 2 ranks give each rank half a core where the baseline gave
# it one, so their efficiency is capped near 0.5 by the CPU before any link counts. Writes OUT/rows.csv (link_mbit,rpn,ranks,impl,compress,hierarchy,step_ms,exposed_ms,eff,bucket_kb,
# pred_ms,batch,powersgd_rank) and prints it as a table.
# --warm-link MBIT: each run starts at MBIT and its link is set to the row's speed after its second step (the
# timed steps are then the ones after the third): for links so slow that start-up (the probe, an uncompressed
# first step) would take minutes. bucket_kb=auto then plans for MBIT: give --bucket-kb. --bucket-kb: the trainer's parallel.bucket_kb (default auto: each row also gives the cap
# chosen and the exposed communication predicted, pred_ms; PyTorch DDP keeps its 25 MB buckets). --links: Mbit/s
# per node link (docs/clusters.md derives the GPU-equivalent ones).
# --venv: a Python environment with torch, on a path the box's nodes see (their /tmp is private; default
# $BENCH_VENV or /var/tmp/ddp-bench-venv); without torch the PyTorch rows are left out with a note.
set -euo pipefail
self=$(readlink -f "$0")
repo=$(cd "$(dirname "$self")/.." && pwd)
cd "$repo"
config=configs/cifar10_resnet18.cfg batch=16 steps=12 links=1000,50 rpns=1,2 compresses=none,bf16,powersgd
hierarchies=flat,node torch=0 prank=4 bkb=auto out=out/bench_comm build=build venv=${BENCH_VENV:-/var/tmp/ddp-bench-venv}
warm="" baselines_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --config) config=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --links) links=$2; shift 2 ;;
    --rpn) rpns=$2; shift 2 ;;
    --compress) compresses=$2; shift 2 ;;
    --hierarchy) hierarchies=$2; shift 2 ;;
    --torch) torch=1; shift ;;
    --powersgd-rank) prank=$2; shift 2 ;;
    --bucket-kb) bkb=$2; shift 2 ;;
    --warm-link) warm=$2; shift 2 ;;
    --baselines-only) baselines_only=1; shift ;;
    --out) out=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --venv) venv=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d'; exit 0 ;;
    *) echo "bench_comm.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
box=launch/cluster_box.sh
"$box" check >/dev/null || exit 2
[ -x "$build/trainer" ] || { echo "bench_comm.sh: $build/trainer not built (launch/test.sh or cmake)" >&2; exit 2; }
[ -f "$config" ] || { echo "bench_comm.sh: no config '$config'" >&2; exit 2; }
case "$out" in /*) ;; *) out=$repo/$out ;; esac
case "$out" in /tmp|/tmp/*) echo "bench_comm.sh: --out must not be under /tmp (the box's nodes have their own)" >&2; exit 2 ;; esac
mkdir -p "$out"
if [ "$torch" = 1 ] && ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "note: no torch in --venv $venv: the PyTorch DDP rows are left out"; torch=0
fi

mpi=(mpirun --allow-run-as-root --bind-to none --mca btl "self,tcp" --mca btl_tcp_if_include eth0
     --mca oob_tcp_if_include eth0)
# The trainer's arguments for every run: synthetic data, steps+2 steps in one epoch (the epoch's means are what
# we read); the start-up lines (bucket_kb=auto's choice and prediction) go to each run's log.
# (lr 1e-3: the recipes' rates are for their batch, and a timing run should not diverge at this one)
# (bucket_kb only for the runs with all-reduces: a cap chosen for PowerSGD's whole layers may give the baseline's
# split ones too many buckets)
targs=(--config "$repo/$config" --batch "$batch" --threads 1 --epochs 1 --set net.lr=0.001 --log-every 0.001
       --set data.format=synthetic --set data.test_limit="$batch" --set net.eval_batch="$batch")
# steps + skip steps of `batch` per rank at np ranks (weak scaling: the set grows with the ranks); the first `skip`
# steps are start-up (and with --warm-link the step during which the link changes)
skip=2
[ -n "$warm" ] && skip=3
limit() { echo "data.train_limit=$(( (steps + skip) * batch * $1 ))"; }
rows=$out/rows.csv
echo "link_mbit,rpn,ranks,impl,compress,hierarchy,step_ms,exposed_ms,eff,bucket_kb,pred_ms,batch,powersgd_rank" >"$rows"

# last_metric FILE KEY: a number of the last JSON line of a metrics file (nested keys with dots).
last_metric() {
  python3 - "$1" "$2" <<'PY'
import json, sys
d = json.loads(open(sys.argv[1]).read().splitlines()[-1])
for k in sys.argv[2].split("."):
    d = d[k]
print(d)
PY
}

# steady STEPS_JSONL: mean step_s and exposed_comm_s over the steps after the first `skip` (start-up, and
# PowerSGD's uncompressed warm-up: powersgd_start_step=2), from the per-step metrics (--log-every: every step).
steady() {
  python3 - "$1" "$skip" <<'PY'
import json, sys
# each line's step_s and exposed_comm_s are the epoch's means so far: totals by step, then the difference
rows = {r["step"]: r for r in map(json.loads, filter(str.strip, open(sys.argv[1])))}
k = int(sys.argv[2])
a, b = rows[k], rows[max(rows)]
n = b["step"] - k
print((b["step_s"] * b["step"] - a["step_s"] * k) / n, (b["exposed_comm_s"] * b["step"] - a["exposed_comm_s"] * k) / n)
PY
}

# run_ours LINK RPN COMPRESS HIERARCHY
run_ours() {
  local link=$1 rpn=$2 comp=$3 hier=$4 np=$(( 2 * $2 )) tag m
  tag="ours-$1-$2-$3-$4"
  m=$out/$tag.jsonl
  rm -f "$m" "${m%.jsonl}.steps.jsonl"
  [ -n "$warm" ] && set_link "$warm"
  "$box" exec n1 "${mpi[@]}" -H "n1:$rpn,n2:$rpn" -np "$np" "$repo/$build/trainer" "${targs[@]}" --set "$(limit "$np")" \
    --set parallel.compress="$comp" --set parallel.hierarchy="$hier" --set parallel.powersgd_rank="$prank" \
    --set parallel.bucket_kb="$bkb" \
    --set parallel.powersgd_start_step=2 --metrics "$m" >"$out/$tag.log" 2>&1 &
  local pid=$!
  if [ -n "$warm" ]; then  # the row's link once step 2 is in the per-step metrics
    while kill -0 "$pid" 2>/dev/null && ! grep -q '"step": *2[,}]' "${m%.jsonl}.steps.jsonl" 2>/dev/null; do sleep 0.05; done
    set_link "$link"
  fi
  wait "$pid" || { echo "  $tag failed: $(tail -n 2 "$out/$tag.log" | tr '\n' ' ')"; return 0; }
  local step exp eff kb pred
  read -r step exp < <(steady "${m%.jsonl}.steps.jsonl")
  eff=$(awk -v b="${base_step[$rpn]}" -v s="$step" 'BEGIN { print b / s }')
  kb=$(last_metric "$m" bucket_kb)
  pred=$(sed -n 's/.*predicted exposed comm \([0-9.]*\) ms.*/\1/p' "$out/$tag.log" | head -n 1)
  awk -v l="$link" -v r="$rpn" -v n="$np" -v c="$comp" -v h="$hier" -v s="$step" -v e="$exp" -v f="$eff" \
    -v k="$kb" -v p="${pred:--}" -v bt="$batch" -v pr="$prank" \
    'BEGIN { printf "%s,%s,%s,ddp-cnn,%s,%s,%.1f,%.1f,%.3f,%s,%s,%s,%s\n", l, r, n, c, h, s * 1e3, e * 1e3, f, k, p, bt, pr }' >>"$rows"
}

# run_torch LINK RPN HOOK (the baselines first)
declare -A torch_base base_step
run_torch() {
  local link=$1 rpn=$2 hook=$3 np=$(( 2 * $2 )) tag line pid sync=()
  tag="torch-$1-$2-$3"
  rm -f "$out/$tag.ready" "$out/$tag.go"
  if [ -n "$warm" ]; then set_link "$warm"; sync=(--ready-file "$out/$tag.ready" --go-file "$out/$tag.go"); fi
  "$box" exec n1 "${mpi[@]}" -H "n1:$rpn,n2:$rpn" -np "$np" -x MASTER_ADDR=10.250.0.11 -x TRAINER="$repo/$build/trainer" \
    "$venv/bin/python" "$repo/launch/bench_torch_ddp.py" --config "$repo/$config" --batch "$batch" --steps "$steps" \
    --hook "$hook" --powersgd-rank "$prank" --powersgd-start 2 --warmup 2 --lr 0.001 "${sync[@]}" \
    >"$out/$tag.out" 2>"$out/$tag.err" &
  pid=$!
  if [ -n "$warm" ]; then
    while kill -0 "$pid" 2>/dev/null && [ ! -e "$out/$tag.ready" ]; do sleep 0.05; done
    set_link "$link"
    touch "$out/$tag.go"
  fi
  wait "$pid" && line=$(grep '^torch-ddp' "$out/$tag.out") ||
    { echo "  $tag failed: $(tail -n 2 "$out/$tag.err" | tr '\n' ' ')"; return 0; }
  echo "$line" >"$out/$tag.log"
  python3 - "$line" "${torch_base[$rpn]}" "$link" "$rpn" "$np" "$hook" "$batch" "$prank" >>"$rows" <<'PY'
import sys
kv = dict(p.split("=", 1) for p in sys.argv[1].split()[1:])
base = float(sys.argv[2])
step, exp = float(kv["step_ms"]), float(kv["exposed_ms"])
print(f"{sys.argv[3]},{sys.argv[4]},{sys.argv[5]},pytorch-ddp,{sys.argv[6]},flat,{step:.1f},{exp:.1f},{base / step:.3f},"
      f"25600,-,{sys.argv[7]},{sys.argv[8]}")
PY
}
set_link() { for n in n1 n2; do "$box" link "$n" "${1}mbit" >/dev/null; done; }

"$box" up --nodes 2 --cpus-per-node 2 --link-mbit "${links%%,*}" >"$out/box-up.log" 2>&1 ||
  { cat "$out/box-up.log"; exit 1; }
trap '"$box" down >/dev/null 2>&1' EXIT
# Baselines (rpn ranks on one node, same per-rank batch and threads, no link): weak efficiency = step(one node) /
# step(two nodes).
for rpn in ${rpns//,/ }; do
  b=$out/base-ours-$rpn.jsonl
  rm -f "$b" "${b%.jsonl}.steps.jsonl"
  bn=$rpn  # ranks of the baseline, all on n1
  if [ "$bn" = 1 ]; then
    "$box" exec n1 "$repo/$build/trainer" "${targs[@]}" --set "$(limit 1)" --metrics "$b" >"${b%.jsonl}.log" 2>&1
  else
    "$box" exec n1 "${mpi[@]}" -H "n1:$bn" -np "$bn" "$repo/$build/trainer" "${targs[@]}" --set "$(limit "$bn")" \
      --metrics "$b" >"${b%.jsonl}.log" 2>&1
  fi || { echo "bench_comm.sh: the one-node baseline ($bn ranks) failed:"; tail -n 5 "${b%.jsonl}.log"; exit 1; }
  read -r base_step[$rpn] _ < <(skip=2 steady "${b%.jsonl}.steps.jsonl")
  echo "baseline for $rpn rank(s) per node: $bn on one node: ddp-cnn step $(awk -v s="${base_step[$rpn]}" 'BEGIN { printf "%.1f", s * 1e3 }') ms"
  if [ "$torch" = 1 ]; then
    torch_base[$rpn]=$("$box" exec n1 "${mpi[@]}" -H "n1:$bn" -np "$bn" -x TRAINER="$repo/$build/trainer" \
      "$venv/bin/python" "$repo/launch/bench_torch_ddp.py" --config "$repo/$config" --batch "$batch" --steps "$steps" \
      --warmup 2 --lr 0.001 --master-addr 127.0.0.1 2>/dev/null | sed -n 's/.*step_ms=\([0-9.]*\).*/\1/p')
    [ -n "${torch_base[$rpn]}" ] || { echo "note: the PyTorch one-node baseline failed: PyTorch rows left out"; torch=0; }
    echo "baseline for $rpn rank(s) per node: $bn on one node: PyTorch step ${torch_base[$rpn]:-?} ms"
  fi
done
[ "$baselines_only" = 1 ] && exit 0
for link in ${links//,/ }; do
  set_link "$link"
  echo "link ${link} Mbit/s"
  for rpn in ${rpns//,/ }; do
    for comp in ${compresses//,/ }; do
      for hier in ${hierarchies//,/ }; do
        [ "$rpn" = 1 ] && [ "$hier" = node ] && continue  # one rank per node: node == flat
        run_ours "$link" "$rpn" "$comp" "$hier"
      done
      if [ "$torch" = 1 ]; then
        case "$comp" in none) run_torch "$link" "$rpn" none ;; bf16) run_torch "$link" "$rpn" bf16 ;;
          fp16) run_torch "$link" "$rpn" fp16 ;; powersgd) run_torch "$link" "$rpn" powersgd ;; esac
      fi
    done
  done
done
echo
column -s, -t "$rows"
