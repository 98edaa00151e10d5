#!/usr/bin/env bash
# scaling_study.sh — strong and weak scaling of the trainer over np = 1, 2, 4, ... MAX_NP, measured and modelled.
#   ./launch/scaling_study.sh                         CPU ranks here: out/scaling/, np 1 2 4, 1 thread per rank
#   ./launch/scaling_study.sh --out out/s8 --max-np 8 --backend cuda --comm nccl --threads 0   (one GPU per rank)
#   ./launch/scaling_study.sh --max-np 2 --steps 5 -- --set conv1.filters=8    (after --: more trainer options)
#   sudo ./launch/scaling_study.sh --box 1 --out out/box-1g    one rank per node of a cluster in a box
#                                                   (launch/cluster_box.sh) with 1 Gbit/s links
# Every run does EPOCHS epochs of exactly STEPS steps (data.train_limit = STEPS x global batch); the last epoch's
# metrics of rank 0 are used (the first one warms up). Outputs in the output directory:
#   scaling.csv         mode, np, global batch, images/s, per rank, step/compute/comm/exposed ms, efficiency,
#                       and the model's figures next to them (launch/perf_model.py; docs/parallelism.md, "Scaling study")
#   scaling.png         throughput and efficiency vs np, measured and modelled, with the ideal line
#   scaling_model.png   the model's weak-scaling efficiency up to --model-max-n ranks, with and without overlap,
#                       for the all-reduce alpha/beta measured here and for the GPU alpha/beta
#   metrics_<mode>_np<N>.jsonl, log_<mode>_np<N>.txt, bench_allreduce_<i>.txt, cores_*.jsonl, summary.txt
# Options (environment variables in brackets):
#   --out DIR [OUT]            output directory (default out/scaling)
#   --max-np N [MAX_NP]        largest np, doubled from 1 (default 4)
#   --steps N [STEPS]          steps per epoch and run (default 20)
#   --epochs N [EPOCHS]        epochs per run, the last is measured (default 2)
#   --batch N [BATCH]          per-rank batch in weak mode = global batch in strong mode (default 64)
#   --modes "M..." [MODES]     strong and/or weak (default "strong weak")
#   --config FILE [CONFIG]     default configs/fashion_mnist_cnn.cfg
#   --threads N [THREADS]      threads per rank (default 1; 0 = the trainer's choice)
#   --backend NAME, --comm NAME, --bucket-kb N, --no-overlap     passed to the trainer (and the model)
#   --test-limit N [TEST_LIMIT]  test samples evaluated per epoch (default 500)
#   --build DIR [BUILD]        where trainer and bench_allreduce are (default build; built if missing)
#   --mpirun "CMD" [MPIRUN]    launcher (default: mpirun --bind-to none, --oversubscribe and
#                              --allow-run-as-root when needed)
#   --box GBIT                 run on a cluster in a box: MAX_NP nodes whose links are shaped to GBIT Gbit/s
#                              (cluster_box.sh up, made or reshaped; left up), one rank per node through plain
#                              mpirun (--map-by node), so bench_allreduce and np > 1 runs cross the links. The
#                              nodes share this host's cores: the model's cores are measured as usual
#   --cores N [CORES]          cores the ranks share on this host, for the model (0 = ranks do not share
#                              cores, e.g. one GPU each). Default with the cpu backend: the EFFECTIVE cores,
#                              measured: nproc/threads independent np 1 runs at once vs one alone
#                              (cores = nproc * t_alone / t_together); with threads 0: nproc; otherwise 0
#   --alpha-us X --beta-gbps Y ring all-reduce constants; default: measured with bench_allreduce at np 2
#                              (3 times; the least disturbed fit, lowest a + 256 KiB/b, is used)
#   --gpu-alpha-us X --gpu-beta-gbps Y --gpu-compute-ms Z --gpu-baseline FILE   the GPU prediction's inputs
#                              (defaults 10 us, 150 GB/s (H100 NVLink), 0.5 ms/step assumed; with a cuda study,
#                              its own np 1 metrics)
#   --model-max-n N            extrapolate up to N ranks (default 1024)
set -euo pipefail
self=$(readlink -f "$0")  # --help and re-runs read it after the cd below
cd "$(dirname "$self")/.."

out=${OUT:-out/scaling} max_np=${MAX_NP:-4} steps=${STEPS:-20} epochs=${EPOCHS:-2} batch=${BATCH:-64}
modes=${MODES:-strong weak} config=${CONFIG:-configs/fashion_mnist_cnn.cfg} threads=${THREADS:-1}
test_limit=${TEST_LIMIT:-500} build=${BUILD:-build} mpirun_cmd=${MPIRUN:-} cores=${CORES:-}
backend="" comm="" bucket_kb="" overlap=1 alpha_us="" beta_gbps="" model_max_n=1024 box_gbit=""
gpu_args=() extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --max-np) max_np=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --modes) modes=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --backend) backend=$2; shift 2 ;;
    --comm) comm=$2; shift 2 ;;
    --bucket-kb) bucket_kb=$2; shift 2 ;;
    --no-overlap) overlap=0; shift ;;
    --test-limit) test_limit=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --mpirun) mpirun_cmd=$2; shift 2 ;;
    --box) box_gbit=$2; shift 2 ;;
    --cores) cores=$2; shift 2 ;;
    --alpha-us) alpha_us=$2; shift 2 ;;
    --beta-gbps) beta_gbps=$2; shift 2 ;;
    --gpu-alpha-us|--gpu-beta-gbps|--gpu-compute-ms|--gpu-baseline) gpu_args+=("$1" "$2"); shift 2 ;;
    --model-max-n) model_max_n=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "scaling_study.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in max_np steps epochs batch test_limit model_max_n; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "scaling_study.sh: $v must be a positive integer, not '${!v}'" >&2; exit 2; }
done
for m in $modes; do
  [ "$m" = weak ] || [ "$m" = strong ] || { echo "scaling_study.sh: mode '$m' is not strong or weak" >&2; exit 2; }
done
for tool in python3 gnuplot mpirun; do
  command -v "$tool" >/dev/null || { echo "scaling_study.sh: $tool not found (launch/deps.sh installs it)" >&2; exit 2; }
done
trainer=$build/trainer bench=$build/bench_allreduce
if [ ! -x "$trainer" ] || [ ! -x "$bench" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build "$build" -j "$(nproc)" >/dev/null
fi

# Launcher: oversubscription is normal here (CPU ranks on a small machine); root needs its flag.
if [ -n "$box_gbit" ]; then
  up_log=$(mktemp)
  launch/cluster_box.sh up --nodes "$max_np" --cpus-per-node "$(nproc)" --link-gbit "$box_gbit" >"$up_log" 2>&1 ||
    { cat "$up_log" >&2; rm -f "$up_log"; echo "scaling_study.sh: no cluster in a box (see above)" >&2; exit 2; }
  rm -f "$up_log"
  echo "# cluster in a box: $max_np node(s), links $box_gbit Gbit/s, one rank per node"
  mpirun_cmd="launch/cluster_box.sh exec n1 mpirun --hostfile ${DDP_BOX_DIR:-/var/tmp/${DDP_BOX:-ddpbox}}/hostfile"
  mpirun_cmd+=" --map-by node --bind-to none"
fi
if [ -n "$mpirun_cmd" ]; then
  read -r -a mpi <<<"$mpirun_cmd"
else
  mpi=(mpirun --bind-to none --oversubscribe)
  [ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
fi
pass=(--config "$config" --threads "$threads" --batch "$batch" --epochs "$epochs" --set "data.test_limit=$test_limit")
[ -n "$backend" ] && pass+=(--backend "$backend")
[ -n "$comm" ] && pass+=(--comm "$comm")
[ -n "$bucket_kb" ] && pass+=(--bucket-kb "$bucket_kb")
[ "$overlap" = 0 ] && pass+=(--no-overlap)
# The effective settings (config + options + extra trainer options) the model needs.
effective=$("$trainer" "${pass[@]}" "${extra[@]}" --print-config) ||
  { echo "scaling_study.sh: the trainer rejects these options (see above)" >&2; exit 2; }
setting() { sed -n "s/^$1=//p" <<<"$effective" | sed -n 1p; }
eff_backend=$(setting backend) eff_comm=$(setting comm) eff_bucket=$(setting bucket_kb) overlap=$(setting overlap)
model_threads=$threads
if [ "$eff_backend" = cpu ] && [ "$threads" = 0 ]; then
  # The trainer gives each rank nproc / (ranks on the host) threads: N ranks share what one rank had.
  model_threads=$(nproc) cores=${cores:-$(nproc)}
fi
[ "$model_threads" = 0 ] && model_threads=1
mkdir -p "$out"
rm -f "$out"/metrics_*_np*.jsonl "$out"/cores_*.jsonl "$out"/bench_allreduce_*.txt "$out"/scaling*.dat \
  "$out"/scaling.csv

# ---- all-reduce latency and bandwidth (ring alpha, beta) from bench_allreduce at np 2
if [ -z "$alpha_us" ] || [ -z "$beta_gbps" ]; then
  bench_args=(-b 1K -e 4M)
  [ "$eff_comm" = nccl ] && bench_args+=(-c nccl)
  echo "# all-reduce: ${mpi[*]} -np 2 $bench ${bench_args[*]}  (3 times)"
  for i in 1 2 3; do
    "${mpi[@]}" -np 2 "$bench" "${bench_args[@]}" >"$out/bench_allreduce_$i.txt" 2>&1 ||
      { cat "$out/bench_allreduce_$i.txt" >&2; echo "scaling_study.sh: bench_allreduce failed" >&2; exit 1; }
    grep '^# fit' "$out/bench_allreduce_$i.txt"
  done
  read -r alpha_us beta_gbps < <(python3 launch/perf_model.py ring-fit 2 "$out"/bench_allreduce_[123].txt)
fi
echo "# ring all-reduce model: alpha = $alpha_us us per hop, beta = $beta_gbps GB/s"

# ---- effective cores of this host for CPU ranks (they share it): one np 1 run alone, then nproc/threads at once
run1=("${pass[@]}" --scaling weak --set "data.train_limit=$((steps * batch))" --steps $((steps * epochs)))
if [ -z "$cores" ] && [ "$eff_backend" = cpu ]; then
  copies=$(( $(nproc) / threads )); [ "$copies" -ge 1 ] || copies=1
  "${mpi[@]}" -np 1 "$trainer" "${run1[@]}" "${extra[@]}" --metrics "$out/cores_alone.jsonl" >/dev/null 2>&1 </dev/null
  pids=()
  for i in $(seq 1 "$copies"); do
    "${mpi[@]}" -np 1 "$trainer" "${run1[@]}" "${extra[@]}" --metrics "$out/cores_together_$i.jsonl" \
      >/dev/null 2>&1 </dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
  together=()  # the runs' epoch records (not their per-step files, *.steps.jsonl)
  for f in "$out"/cores_together_*.jsonl; do [[ $f == *.steps.jsonl ]] || together+=("$f"); done
  cores=$(python3 launch/perf_model.py cores "$(nproc)" "$out/cores_alone.jsonl" "${together[@]}")
  echo "# effective cores: $cores of $(nproc) ($copies np 1 runs at once vs one alone)"
fi
cores=${cores:-0}

# ---- the runs
params=""
for mode in $modes; do
  np=1
  while [ "$np" -le "$max_np" ]; do
    if [ "$mode" = weak ]; then global=$((batch * np)); else global=$batch; fi
    if [ "$mode" = strong ] && [ $((batch % np)) -ne 0 ]; then
      echo "# $mode np $np: skipped (global batch $batch is not divisible by $np)"
      np=$((np * 2)); continue
    fi
    run=("${pass[@]}" --scaling "$mode" --set "data.train_limit=$((steps * global))"
         --steps $((steps * epochs)) --metrics "$out/metrics_${mode}_np$np.jsonl")
    [ "$np" -gt 1 ] && run+=(--baseline "$out/metrics_${mode}_np1.jsonl")
    log=$out/log_${mode}_np$np.txt
    printf '# %-6s np %-3s global batch %-5s ' "$mode" "$np" "$global"
    t0=$(date +%s%N)
    if ! "${mpi[@]}" -np "$np" "$trainer" "${run[@]}" "${extra[@]}" >"$log" 2>&1 </dev/null; then
      echo "FAILED"; tail -n 5 "$log" >&2
      echo "scaling_study.sh: run failed: ${mpi[*]} -np $np $trainer ${run[*]} ${extra[*]} (log: $log)" >&2
      exit 1
    fi
    echo "$(( ($(date +%s%N) - t0) / 1000000 )) ms"
    [ -n "$params" ] || params=$(sed -n 's/.* \([0-9][0-9]*\) parameters,.*/\1/p' "$log" | sed -n 1p)
    np=$((np * 2))
  done
done
[ -n "$params" ] || { echo "scaling_study.sh: no parameter count in the trainer's log" >&2; exit 1; }

# ---- model vs measurement
gpu_base=()
if [ "$eff_backend" = cuda ]; then
  ref_mode=weak; [[ " $modes " == *" weak "* ]] || ref_mode=strong
  gpu_base=(--gpu-baseline "$out/metrics_${ref_mode}_np1.jsonl")
fi
python3 launch/perf_model.py study --dir "$out" --params "$params" --bucket-kb "$eff_bucket" --overlap "$overlap" \
  --alpha-us "$alpha_us" --beta-gbps "$beta_gbps" --cores "$cores" --threads "$model_threads" \
  --model-max-n "$model_max_n" "${gpu_base[@]}" "${gpu_args[@]}" | tee "$out/summary.txt"

# ---- plots
ov=$([ "$overlap" = 1 ] && echo "overlap on" || echo "overlap off")
where=""
[ -n "$box_gbit" ] && where=", one rank per node, links $box_gbit Gbit/s (cluster in a box)"
thr="" eff=""
for mode in strong weak; do
  f=$out/scaling_$mode.dat
  [ -s "$f" ] || continue
  c=$([ "$mode" = weak ] && echo 1 || echo 2)
  thr+="'$f' using 1:2 title '$mode, measured' with linespoints pt 7 lc $c, "
  thr+="'$f' using 1:3 title '$mode, model' with lines dt 2 lw 2 lc $c, "
  thr+="'$f' using 1:4 title '$mode, ideal (np x np 1)' with lines lc $c lw 0.5, "
  eff+="'$f' using 1:5 title '$mode, measured' with linespoints pt 7 lc $c, "
  eff+="'$f' using 1:6 title '$mode, model' with lines dt 2 lw 2 lc $c, "
done
gnuplot <<GP
set terminal pngcairo size 1300,560 font ",10" noenhanced
set output '$out/scaling.png'
set multiplot layout 1,2 title "ddp-cnn scaling: $eff_backend backend, $eff_comm, batch $batch, $steps steps/epoch, $ov$where"
set logscale x 2
set xlabel 'ranks (np)'
set grid
set key top left
set ylabel 'images/s (global)'
plot ${thr%, }
set ylabel 'scaling efficiency'
set yrange [0:1.15]
set key bottom left
plot $eff 1 title 'ideal' with lines lc rgb "gray"
unset multiplot
GP
gpu_title=$(sed -n 's/.*\(GPU alpha = .*\)/\1/p' "$out/summary.txt")
gnuplot <<GP
set terminal pngcairo size 900,640 font ",10" noenhanced
set output '$out/scaling_model.png'
set title "ddp-cnn model: weak scaling efficiency, batch $batch per rank (launch/perf_model.py)"
set logscale x 2
set xrange [1:$model_max_n]
set yrange [0:1.05]
set xlabel 'ranks N'
set ylabel 'predicted scaling efficiency'
set grid
set key outside below
plot '$out/scaling_model.dat' using 1:2 title "$eff_comm here: alpha = $alpha_us us, beta = $beta_gbps GB/s, overlap" with lines lw 2 lc 1, \\
     '' using 1:3 title 'same, no overlap' with lines lw 2 dt 2 lc 1, \\
     '' using 1:6 title "$gpu_title, overlap" with lines lw 2 lc 3, \\
     '' using 1:7 title 'same, no overlap' with lines lw 2 dt 2 lc 3, \\
     1 title 'ideal' with lines lc rgb "gray"
GP
echo "# wrote $out/scaling.csv $out/scaling.png $out/scaling_model.png"
