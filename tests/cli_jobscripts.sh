#!/usr/bin/env bash
# cli_jobscripts.sh — launch/slurm.sbatch and launch/pbs.sh: `bash -n` and shellcheck clean, and in DRY_RUN mode
# (with a fake allocation in the environment) they print exactly the launch command expected.
# Run by ctest: cli_jobscripts.sh TRAINER SOURCE_DIR BINARY_DIR
. "$(dirname "$0")/testlib.sh" "$@"
make_tmp
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# expect NAME WANT_LINE -- env assignments... -- script
# The script's last line of output must equal WANT_LINE.
expect() {
  local name=$1 want=$2; shift 3
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  if ! env -i PATH="$PATH" HOME="${HOME:-/tmp}" DRY_RUN=1 "${envs[@]}" bash "$@" >"$tmp/out" 2>"$tmp/err"; then
    fail "$name: exit status $?"; cat "$tmp/err"; return
  fi
  local got
  got=$(tail -n 1 "$tmp/out")
  if [ "$got" != "$want" ]; then
    fail "$name"
    echo "  want: $want"
    echo "  got:  $got"
  fi
}

for s in slurm.sbatch pbs.sh; do
  bash -n "$src/launch/$s" || fail "bash -n $s"
  if command -v shellcheck >/dev/null; then
    shellcheck "$src/launch/$s" || fail "shellcheck $s"
  else
    echo "note: shellcheck not installed, lint skipped"
  fi
done

# ---- Slurm: srun with the MPI plugin (default), inside a fake 3-node x 4-GPU allocation
expect slurm-srun \
  "srun --mpi=pmix --ntasks=12 --ntasks-per-node=4 --cpus-per-task=6 --cpu-bind=cores --gpu-bind=none build/trainer --config configs/x.cfg --backend cuda --comm nccl --threads 6 --metrics /scratch/o/4242/metrics.jsonl --save /scratch/o/4242/checkpoint.safetensors --resume-if-exists --epochs 2" \
  -- SLURM_SUBMIT_DIR="$src" SLURM_JOB_ID=4242 SLURM_JOB_NUM_NODES=3 SLURM_NTASKS=12 SLURM_NTASKS_PER_NODE="4(x3)" \
     SLURM_CPUS_PER_TASK=6 CONFIG=configs/x.cfg OUT_ROOT=/scratch/o EXTRA_ARGS="--epochs 2" -- "$src/launch/slurm.sbatch"
expect slurm-srun-plugin \
  "srun --mpi=pmi2 --ntasks=8 --ntasks-per-node=4 --cpus-per-task=8 --cpu-bind=cores --gpu-bind=none build/trainer --config configs/fashion_mnist_cnn_cuda.cfg --backend cuda --comm nccl --threads 8 --metrics out/7/metrics.jsonl --save out/7/checkpoint.safetensors --resume-if-exists" \
  -- SLURM_JOB_ID=7 SRUN_MPI=pmi2 -- "$src/launch/slurm.sbatch"
# ---- Slurm: mpirun inside the allocation, CPU backend with MPI, environment forwarded only when set
expect slurm-mpirun \
  "mpirun -np 4 --map-by ppr:2:node:PE=16 --bind-to core -x PATH -x NCCL_DEBUG /opt/ddp/trainer --config configs/x.cfg --backend cpu --comm mpi --threads 16 --metrics out/99/metrics.jsonl --save out/99/checkpoint.safetensors --resume-if-exists" \
  -- SLURM_SUBMIT_DIR="$src" SLURM_JOB_ID=99 SLURM_JOB_NUM_NODES=2 SLURM_NTASKS=4 SLURM_NTASKS_PER_NODE=2 \
     SLURM_CPUS_PER_TASK=16 LAUNCHER=mpirun TRAINER=/opt/ddp/trainer CONFIG=configs/x.cfg BACKEND=cpu COMM=mpi \
     NCCL_DEBUG=WARN -- "$src/launch/slurm.sbatch"
# outside an allocation: the #SBATCH defaults (2 nodes x 4 tasks, 8 cpus per task)
expect slurm-defaults \
  "srun --mpi=pmix --ntasks=8 --ntasks-per-node=4 --cpus-per-task=8 --cpu-bind=cores --gpu-bind=none build/trainer --config configs/fashion_mnist_cnn_cuda.cfg --backend cuda --comm nccl --threads 8 --metrics out/dryrun/metrics.jsonl --save out/dryrun/checkpoint.safetensors --resume-if-exists" \
  -- -- "$src/launch/slurm.sbatch"

# ---- PBS: a fake node file with 2 nodes x 4 processes
printf '%s\n' n01 n01 n01 n01 n02 n02 n02 n02 >"$tmp/nodefile"
expect pbs-mpirun \
  "mpirun -np 8 --hostfile $tmp/nodefile --map-by ppr:4:node:PE=8 --bind-to core -x PATH build/trainer --config configs/x.cfg --backend cuda --comm nccl --threads 8 --metrics /scratch/o/5151/metrics.jsonl --save /scratch/o/5151/checkpoint.safetensors --resume-if-exists --trace /scratch/t" \
  -- PBS_O_WORKDIR="$src" PBS_JOBID=5151.pbs-server PBS_NODEFILE="$tmp/nodefile" CONFIG=configs/x.cfg \
     OUT_ROOT=/scratch/o EXTRA_ARGS="--trace /scratch/t" -- "$src/launch/pbs.sh"
expect pbs-mpiexec \
  "mpiexec -n 4 -ppn 2 -hosts n01\\,n02 -genvall build/trainer --config configs/fashion_mnist_cnn_cuda.cfg --backend cuda --comm nccl --threads 4 --metrics out/6/metrics.jsonl --save out/6/checkpoint.safetensors --resume-if-exists" \
  -- PBS_JOBID=6 PBS_NODEFILE="$tmp/nodefile" RANKS_PER_NODE=2 CPUS_PER_RANK=4 LAUNCHER=mpiexec -- "$src/launch/pbs.sh"
expect pbs-defaults \
  "mpirun -np 12 --map-by ppr:4:node:PE=8 --bind-to core -x PATH build/trainer --config configs/fashion_mnist_cnn_cuda.cfg --backend cuda --comm nccl --threads 8 --metrics out/dryrun/metrics.jsonl --save out/dryrun/checkpoint.safetensors --resume-if-exists" \
  -- NODES=3 -- "$src/launch/pbs.sh"

# A bad LAUNCHER is refused (exit 2), and nothing is created in dry-run mode.
mkdir "$tmp/cwd"
for s in slurm.sbatch pbs.sh; do
  (cd "$tmp/cwd" && env -i PATH="$PATH" DRY_RUN=1 LAUNCHER=ssh bash "$src/launch/$s" >/dev/null 2>&1)
  [ $? -eq 2 ] || fail "$s LAUNCHER=ssh: want exit 2"
  (cd "$tmp/cwd" && env -i PATH="$PATH" DRY_RUN=1 bash "$src/launch/$s" >/dev/null 2>&1) || fail "$s dry run"
done
[ -z "$(ls -A "$tmp/cwd")" ] || fail "a dry run created files: $(ls -A "$tmp/cwd")"

# --help prints help and launches nothing: launchers on PATH that record any call, run from an empty directory.
mkdir -p "$tmp/bin" "$tmp/help"
for l in srun mpirun mpiexec sbatch; do
  printf '#!/bin/sh\necho "%s $*" >>"%s/launched"\n' "$l" "$tmp" >"$tmp/bin/$l"
  chmod +x "$tmp/bin/$l"
done
for s in slurm.sbatch pbs.sh; do
  for h in --help -h; do
    if ! (cd "$tmp/help" && env -i PATH="$tmp/bin:$PATH" SLURM_JOB_ID=1 SLURM_NTASKS=2 bash "$src/launch/$s" "$h" \
          >"$tmp/out" 2>&1); then
      fail "$s $h: exit status not 0"
    fi
    { grep -q "^$s — " "$tmp/out" && grep -q "LAUNCHER" "$tmp/out"; } || fail "$s $h: no help text"
  done
done
# Every launch/ script: --help by a relative path from another directory (the scripts cd to the repository
# first) prints its own help, exit 0, and launches, installs or builds nothing (test.sh, run.sh and fuzz.sh
# used to start their work; most others printed nothing from outside the repository root).
for f in "$src"/launch/*.sh; do
  s=${f##*/} rel=$(realpath --relative-to="$tmp/help" "$f")
  if ! (cd "$tmp/help" && env -i PATH="$tmp/bin:$PATH" timeout 20 bash "$rel" --help >"$tmp/out" 2>&1); then
    fail "launch/$s --help (as $rel): exit status not 0: $(head -3 "$tmp/out")"
  fi
  grep -qE "^(# )?$s — " "$tmp/out" || fail "launch/$s --help: no help text: $(head -3 "$tmp/out")"
done
[ ! -e "$tmp/launched" ] || fail "--help launched: $(cat "$tmp/launched")"
[ -z "$(ls -A "$tmp/help")" ] || fail "--help created files: $(ls -A "$tmp/help")"

# cluster_box.sh check only checks: with its packages missing (a dpkg-query that knows none) it exits 2 naming
# them and the `install` verb, and runs no apt-get.
if [ "$(id -u)" -eq 0 ]; then
  mkdir -p "$tmp/nopkg"
  printf '#!/bin/sh\nexit 1\n' >"$tmp/nopkg/dpkg-query"
  printf '#!/bin/sh\necho "apt-get $*" >>%s/apt-called\nexit 0\n' "$tmp" >"$tmp/nopkg/apt-get"
  chmod +x "$tmp/nopkg/dpkg-query" "$tmp/nopkg/apt-get"
  PATH="$tmp/nopkg:$PATH" bash "$src/launch/cluster_box.sh" check >"$tmp/out" 2>&1
  rc=$?
  [ "$rc" -eq 2 ] && grep -q "packages missing:.*install them: cluster_box.sh install" "$tmp/out" ||
    fail "cluster_box.sh check with packages missing: exit $rc: $(head -2 "$tmp/out")"
  [ ! -e "$tmp/apt-called" ] || fail "cluster_box.sh check ran apt-get: $(cat "$tmp/apt-called")"
fi

if [ "$fails" -ne 0 ]; then echo "$fails failure(s)"; exit 1; fi
echo "PASS"
