#!/usr/bin/env bash
# stop_signals.sh — run a launcher (mpirun, mpiexec) so that SIGINT/SIGTERM/SIGHUP sent to this script (Ctrl-C,
# a scheduler's preemption, an SSH hang-up) stop the job the trainer's way: every rank stops at the same step,
# rank 0 writes the checkpoint (--save), and the job exits 5.
#   launch/stop_signals.sh mpirun -np 4 build/trainer --config configs/x.cfg --save ck.safetensors
#
# Why: mpirun treats a TERM or INT of its own as "kill the job" (its ranks get TERM, then KILL, and mpirun exits 1
# whatever they return), but it forwards SIGUSR1 to the ranks and then exits with their code. So the launcher
# runs in a session of its own (a terminal's Ctrl-C reaches only this script) and each stop signal becomes one
# SIGUSR1 to it. A second signal is forwarded the same way and never cuts the checkpoint short.
set -uo pipefail
if [ $# -eq 0 ] || [ "$1" = "--help" ] || [ "$1" = "-h" ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  [ $# -eq 0 ] && exit 2 || exit 0
fi
stop_requests=0
forward() {
  stop_requests=$((stop_requests + 1))
  echo "stop_signals.sh: $1: asking the ranks to stop at the next agreed step (SIGUSR1 to $2)" >&2
  kill -USR1 "$child" 2>/dev/null || true
}
setsid "$@" </dev/null &
child=$!
for sig in INT TERM HUP; do
  # shellcheck disable=SC2064
  trap "forward SIG$sig $1" "$sig"
done
# wait returns early (status > 128) when a trapped signal arrives: wait again until the launcher has ended.
while :; do
  wait "$child"
  rc=$?
  kill -0 "$child" 2>/dev/null || break
done
exit "$rc"
