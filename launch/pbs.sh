#!/bin/bash
# pbs.sh — ddp-cnn on a PBS Pro / OpenPBS or Torque cluster: one rank per GPU across nodes, under mpirun.
#   qsub launch/pbs.sh                                  (from the repository root, after building build/)
#   qsub -v CONFIG=configs/cifar10_cnn.cfg,EXTRA_ARGS="--epochs 2" launch/pbs.sh
#   DRY_RUN=1 bash launch/pbs.sh                        print the launch command, run nothing
#   bash launch/pbs.sh --help                           this text
# A rerun job (qrerun) continues from its checkpoint (--resume-if-exists).
# Keep RANKS_PER_NODE equal to the GPUs requested per node: rank r on a node drives GPU r (its node-local rank).
# PBS Pro / OpenPBS resource request (Torque: replace the select line with  #PBS -l nodes=2:ppn=4:gpus=4):
#PBS -N ddp-cnn
#PBS -l select=2:ncpus=32:ngpus=4:mpiprocs=4
#PBS -l walltime=01:00:00
#PBS -j oe

# ---- Edit these (or pass them with qsub -v NAME=VALUE,...) ---------------------------------------------------
CONFIG=${CONFIG:-configs/fashion_mnist_cnn_cuda.cfg}  # trainer config
TRAINER=${TRAINER:-build/trainer}                     # the trainer binary (build it on the cluster first)
OUT_ROOT=${OUT_ROOT:-out}                             # outputs go to $OUT_ROOT/<job id>/
BACKEND=${BACKEND:-cuda}                              # net.backend: cuda | cpu
COMM=${COMM:-nccl}                                    # parallel.comm: nccl | mpi
RANKS_PER_NODE=${RANKS_PER_NODE:-auto}                # = GPUs per node; auto: mpiprocs (from $PBS_NODEFILE), else 4
CPUS_PER_RANK=${CPUS_PER_RANK:-8}                     # cores bound to each rank (CPU backend: its threads)
NODES=${NODES:-2}                                     # only without $PBS_NODEFILE (DRY_RUN outside a job)
LAUNCHER=${LAUNCHER:-mpirun}                          # mpirun (Open MPI) | mpiexec (MPICH / Intel MPI Hydra)
EXTRA_ARGS=${EXTRA_ARGS:-}                            # more trainer options, e.g. "--epochs 2 --trace out/trace"
DRY_RUN=${DRY_RUN:-0}                                 # 1: print the launch command and exit
# --------------------------------------------------------------------------------------------------------------
set -euo pipefail
case "${1:-}" in
  -h|--help) sed -n '2,/^#PBS/p' "$0" | sed '$d; s/^# \{0,1\}//'
             sed -n '/^# ---- Edit/,/^# -----/p' "$0" | sed '1d; $d'; exit 0 ;;
esac
cd "${PBS_O_WORKDIR:-.}"

job=${PBS_JOBID:-dryrun}
job=${job%%.*}                                       # "1234.server" -> "1234"
hostfile=${PBS_NODEFILE:-}
if [ -n "$hostfile" ]; then
  # PBS lists a host once per MPI process (mpiprocs / ppn): count the distinct ones.
  nodes=$(sort -u "$hostfile" | wc -l)
  hosts=$(awk '!seen[$0]++' "$hostfile" | paste -sd, -)
  [ "$RANKS_PER_NODE" = auto ] && RANKS_PER_NODE=$(grep -cxF "$(head -n 1 "$hostfile")" "$hostfile")
else
  nodes=$NODES
  hosts=""
fi
[ "$RANKS_PER_NODE" = auto ] && RANKS_PER_NODE=4
np=$((nodes * RANKS_PER_NODE))
outdir=$OUT_ROOT/$job

# GPU binding: every rank sees all of its node's GPUs and the trainer selects GPU <node-local rank>
# (cudaSetDevice(local_rank)), so CUDA_VISIBLE_DEVICES must stay unset per rank; cores are bound per rank.
# shellcheck disable=SC2206  # EXTRA_ARGS is a list of words on purpose
trainer_args=(--config "$CONFIG" --backend "$BACKEND" --comm "$COMM" --threads "$CPUS_PER_RANK"
              --metrics "$outdir/metrics.jsonl" --save "$outdir/checkpoint.safetensors" --resume-if-exists
              $EXTRA_ARGS)
case "$LAUNCHER" in
  mpirun)
    cmd=(mpirun -np "$np")
    [ -n "$hostfile" ] && cmd+=(--hostfile "$hostfile")
    cmd+=(--map-by "ppr:$RANKS_PER_NODE:node:PE=$CPUS_PER_RANK" --bind-to core)
    for v in PATH LD_LIBRARY_PATH NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_HCA; do  # forward those that are set
      [ -n "${!v:-}" ] && cmd+=(-x "$v")
    done ;;
  mpiexec)
    cmd=(mpiexec -n "$np" -ppn "$RANKS_PER_NODE")
    [ -n "$hosts" ] && cmd+=(-hosts "$hosts")
    cmd+=(-genvall) ;;
  *) echo "pbs.sh: LAUNCHER must be mpirun or mpiexec, not '$LAUNCHER'" >&2; exit 2 ;;
esac
cmd+=("$TRAINER" "${trainer_args[@]}")

line=$(printf '%q ' "${cmd[@]}")
if [ "$DRY_RUN" = 1 ]; then
  echo "# job $job: $nodes node(s) x $RANKS_PER_NODE rank(s) = $np rank(s); outputs in $outdir/"
  echo "${line% }"
  exit 0
fi
mkdir -p "$outdir"
echo "job $job: $nodes node(s) x $RANKS_PER_NODE rank(s) = $np rank(s) from $(hostname); outputs in $outdir/"
echo "${line% }" | tee "$outdir/command.txt"
exec "${cmd[@]}"
