# shellcheck shell=bash
# testlib.sh — the start every tests/cli_*.sh shares, sourced with the test's own arguments:
#   . "$(dirname "$0")/testlib.sh" "$@"        (ctest passes TRAINER SRC BUILD)
# It sets trainer, src, build, tool (ckpt_tool), data (Fashion-MNIST), mpi (mpirun for ranks on this host) and
# the pass/fail counters; a test calls the need_* checks it needs, make_tmp, then ok/bad/run and ends in finish.
set -uo pipefail
trainer=${1:-} src=${2:-} build=${3:-}
tool=$build/tests/ckpt_tool
data=/usr/share/datasets/fashion-mnist
# Ranks on this host over shared memory; vader's single-copy mechanism off (CMA is refused in containers).
mpi=(mpirun --oversubscribe --bind-to none --mca btl self,vader --mca btl_vader_single_copy_mechanism none)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
fails=0 passes=0

need_data() { [ -f "$data/train-images-idx3-ubyte.gz" ] || { echo "SKIP: $data not installed (launch/deps.sh)"; exit 77; }; }
need_mpirun() { command -v mpirun >/dev/null || { echo "SKIP: no mpirun"; exit 77; }; }
# not_sanitized WHY: skip in a sanitized build tree (a test whose programs are not the sanitized ones, run once)
not_sanitized() {
  if grep -q '^TRAINER_SANITIZE:[A-Z]*=..*' "$build/CMakeCache.txt" 2>/dev/null; then echo "SKIP: sanitized build ($1)"; exit 77; fi
}
# small_cnn_cfg FILE [NET KEYS] [AFTER THE CONV] [AFTER THE FIRST DENSE]: the small Fashion-MNIST CNN the np tests
# train (batch 16, 2048 + 500 samples, 16 KiB buckets, comm_timeout_s $SMALL_CFG_TIMEOUT or 60), with extra
# [net] keys and layer text at the two places tests vary it (one key or section per line).
small_cnn_cfg() {
  cat >"$1" <<CFG
[net]
batch=16
epochs=1
channels=1
height=28
width=28
threads=1
seed=5
eval_batch=500
${2:-}
[data]
train_limit=2048
test_limit=500
[parallel]
bucket_kb=16
comm_timeout_s=${SMALL_CFG_TIMEOUT:-60}
[conv]
filters=8
${3:-}
[maxpool]
[dense]
units=32
activation=relu
${4:-}
[dense]
units=10
[softmax]
CFG
}
need_tool() { [ -x "$tool" ] || { echo "FAIL: $tool not built"; exit 1; }; }
# make_tmp [--cd]: $tmp, a directory removed when the test exits (--cd: the test runs inside it).
make_tmp() {
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if [ "${1:-}" = --cd ]; then cd "$tmp" || exit 1; fi
}
ok() { passes=$((passes + 1)); echo "ok   $*"; }
# bad: a failed check, with the first lines of the last command's stderr ($tmp/err); a sanitizer's report whole
# (up to 60 lines: its allocation stack is what tells a leak's origin).
bad() {
  fails=$((fails + 1)); echo "FAIL $*"
  local n=5
  grep -q "Sanitizer" "$tmp/err" 2>/dev/null && n=60
  sed 's/^/    | /' "$tmp/err" 2>/dev/null | head -"$n"
}
# run ARGS...: the trainer, stdout in $tmp/out, stderr in $tmp/err, ended after 300 s.
run() { timeout -k 2 300 "$trainer" "$@" >"$tmp/out" 2>"$tmp/err"; }
finish() { echo "${1:+$1: }$passes passed, $fails failed"; [ "$fails" -eq 0 ]; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }  # seconds since a now() value
has() { grep -qF -- "$1" "$tmp/err"; }                                       # the last stderr holds this text
