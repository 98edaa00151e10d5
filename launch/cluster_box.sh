#!/usr/bin/env bash
# cluster_box.sh — a real Slurm cluster in miniature on this host: N nodes, each a set of Linux namespaces
# (network, mount with a private /tmp, /dev/shm and Slurm spool, UTS hostname), joined by tbf-shaped veth links
# to a bridge in a hub namespace that runs the controller (slurmctld; munged beside it). Needs root.
#   ./launch/cluster_box.sh up [--nodes N] [--cpus-per-node C] [--link-gbit X | --link-mbit X]
#                                                        start (idempotent); default 2 nodes, 2 CPUs, 1 Gbit/s
#                                                        links (--link-mbit: in Mbit/s, e.g. 50 for slow links)
#   ./launch/cluster_box.sh status                       namespaces, daemons, link shaping, sinfo, squeue
#   ./launch/cluster_box.sh exec NODE CMD...             run CMD in NODE's namespaces (NODE: hub, n1 ... nN),
#                                                        with SLURM_CONF and the box's Open MPI settings set
#   ./launch/cluster_box.sh submit [SBATCH OPTIONS] [-- TRAINER OPTIONS]
#                                                        sbatch launch/slurm.sbatch on the box (CPU backend,
#                                                        comm mpi) and wait for it as sbatch --wait does, print
#                                                        the job's output, exit with the job's exit code
#   ./launch/cluster_box.sh link NODE up|down|RATE       take NODE's link down or up, or reshape it: RATE in
#                                                        Gbit/s (0.5), or with a unit (50mbit, 2gbit)
#   ./launch/cluster_box.sh kill-node NODE               SIGKILL every process on NODE (a node crash), then
#                                                        start its slurmd again
#   ./launch/cluster_box.sh down                         remove every namespace, process and file it made
#   ./launch/cluster_box.sh check                        exit 0 when a box can run here, else 2 with the reason
#                                                        (a check only: it installs nothing)
#   ./launch/cluster_box.sh install                      install the box's Debian packages (apt-get), then check
# Plain Open MPI works too: `cluster_box.sh exec n1 mpirun -H n1,n2 -np 2 build/trainer ...` (the box's rsh
# agent enters a node's namespaces; $DDP_BOX_DIR/hostfile lists the nodes with their slots).
# Addresses are 10.250.0.0/24, which exists only inside the box's namespaces (no route, no NAT): nothing the
# box runs can reach anything outside it. Environment: DDP_BOX (name, default ddpbox: namespaces ddpbox-hub,
# ddpbox-n1 ...), DDP_BOX_DIR (state, default /var/tmp/$DDP_BOX; not under /tmp, which nodes have private).
# submit passes CONFIG, TRAINER, LAUNCHER (srun | mpirun), OUT_ROOT (default out/box), EXTRA_ARGS and the rest
# of the environment (DDP_TEST_* hooks) on to the job script. Exit status: 0 ok, 2 missing root / namespaces / packages / bad arguments, else the failure.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
box=${DDP_BOX:-ddpbox}
dir=${DDP_BOX_DIR:-/var/tmp/$box}
net=10.250.0                        # hub .1, node i .(10 + i)
me=cluster_box.sh

die() { echo "$me: $2" >&2; exit "$1"; }
[[ $box =~ ^[a-z][a-z0-9-]{0,11}$ ]] || die 2 "DDP_BOX '$box' must be 1-12 of [a-z0-9-], starting with a letter"
case "$dir" in /tmp|/tmp/*) die 2 "DDP_BOX_DIR '$dir' is under /tmp, which every node has private" ;; esac

# ---------------------------------------------------------------------------------------------------------
# Requirements: one line each when missing (exit 2)

box_packages=(slurm-wlm slurm-wlm-basic-plugins munge openmpi-bin iproute2 util-linux)

# require [install]: root, the packages, Slurm's PMIx plugin and namespaces are there (exit 2 with the reason,
# else nothing). With `install`, missing packages are installed first (apt-get); without, a check only.
require() {
  [ "$(id -u)" -eq 0 ] || die 2 "needs root (network namespaces, veth, tc, mounts); run it with sudo"
  local missing="" p
  for p in "${box_packages[@]}"; do
    grep -q "install ok installed" <<<"$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" || missing+=" $p"
  done
  if [ -n "$missing" ] && [ "${1:-}" != install ]; then
    die 2 "packages missing:$missing (install them: $me install)"
  fi
  if [ -n "$missing" ]; then
    echo "$me: installing:$missing"
    # shellcheck disable=SC2086  # a list of package names
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        $missing; } >/dev/null 2>&1 || die 2 "packages missing and apt-get install failed:$missing"
  fi
  [ -e /usr/lib/x86_64-linux-gnu/slurm-wlm/mpi_pmix.so ] || [ -n "$(find /usr/lib -name 'mpi_pmix*.so' 2>/dev/null)" ] ||
    die 2 "Slurm's mpi/pmix plugin is missing (package slurm-wlm-basic-plugins)"
  if ! unshare --net --mount --uts true 2>/dev/null; then
    die 2 "cannot create network/mount/UTS namespaces here (container without CAP_SYS_ADMIN?)"
  fi
}

# ---------------------------------------------------------------------------------------------------------
# Helpers

ns() { echo "$box-$1"; }                                    # namespace of node n1 / hub
holder() { cat "$dir/run/$1.holder" 2>/dev/null; }        # pid of the process that holds a node's namespaces
is_up() { [ -f "$dir/box.env" ] && grep -q "^$(ns hub)\b" <<<"$(ip netns list 2>/dev/null)"; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
# shellcheck disable=SC1091  # written by write_files
load_env() {
  [ -f "$dir/box.env" ] || die 1 "box '$box' is not up (run: $0 up)"
  . "$dir/box.env"
  LINK_MBIT=${LINK_MBIT:-$(rate_mbit "${LINK_GBIT:-1}")}
}
node_names() { local i; for i in $(seq 1 "$NODES"); do echo "n$i"; done; }

# Run a command inside a node's (or the hub's) namespaces, with the box's settings.
in_node() {
  local node=$1; shift
  local pid; pid=$(holder "$node")
  alive "$pid" || die 1 "node '$node' is not running in box '$box'"
  # Entering a mount namespace resets the working directory: keep ours (nodes see all but /tmp).
  local wd=$PWD
  case "$wd/" in "$repo"/*) ;; /tmp/*) wd=/ ;; esac
  # Over plain TCP Open MPI's default one-sided component cannot open the window the trainer's watchdog reads
  # to name the ranks that did not arrive; UCX's can. TCP only: UCX's shared-memory paths would reach across
  # the box's nodes (one kernel), which real nodes cannot.
  nsenter -t "$pid" --net --mount --uts --wd="$wd" -- env SLURM_CONF="$dir/etc/slurm.conf" \
    OMPI_MCA_plm_rsh_agent="$dir/rsh" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    OMPI_MCA_osc="${OMPI_MCA_osc:-ucx}" UCX_TLS="${UCX_TLS:-tcp,self}" "$@"
}

# A link rate as Mbit/s: "0.5" (Gbit/s, the unit of --link-gbit), "50mbit", "2gbit"; empty when not a rate of at
# least 0.1 Mbit/s.
rate_mbit() {
  awk -v r="$1" 'BEGIN {
    if (r ~ /^[0-9]*\.?[0-9]+mbit$/) m = substr(r, 1, length(r) - 4) + 0
    else if (r ~ /^[0-9]*\.?[0-9]+gbit$/) m = substr(r, 1, length(r) - 4) * 1000
    else if (r ~ /^[0-9]*\.?[0-9]+$/) m = r * 1000
    else exit
    if (m >= 0.1) printf "%g", m }'
}
rate_text() { awk -v m="$1" 'BEGIN { if (m >= 1000) printf "%g Gbit/s", m / 1000; else printf "%g Mbit/s", m }'; }

# tbf at X Mbit/s (in kbit/s for tc) with a burst of 0.5 ms at the rate: at least 64 KiB from 1 Gbit/s up (so tbf
# reaches the rate there), below that at least two full frames (3028 B). A fixed 64 KiB would let a small message
# through at the veth's speed after any pause -- 52 ms of traffic at 10 Mbit/s: a 4 KiB all-reduce took 0.04 ms
# at 50 Mbit/s with it and takes 1.46 ms (2 x 4 KiB on the wire) with 3 KB; TCP still gets 96 % of the rate.
tc_shape() {  # tc_shape NETNS DEV MBIT
  local kbit burst
  kbit=$(awk -v m="$3" 'BEGIN { printf "%d", m * 1000 + 0.5 }')
  [ "$kbit" -ge 100 ] || die 2 "a link rate must be at least 0.1 Mbit/s, not '$3' Mbit/s"
  burst=$(awk -v k="$kbit" 'BEGIN { b = k * 1000 / 8 * 0.0005; f = k >= 1000000 ? 65536 : 3028
                                    if (b < f) b = f; printf "%d", b }')
  ip netns exec "$1" tc qdisc replace dev "$2" root tbf rate "${kbit}kbit" burst "$burst" latency 50ms
}

# The box's daemons keep none of the caller's descriptors but 0-2: one they inherited would stay open until
# `down` (a caller's `flock 9` lock was held that way, and the next `flock` hung). Call in a subshell.
close_fds() {
  local fd
  for fd in /proc/$BASHPID/fd/*; do fd=${fd##*/}; if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi; done
}

# spawn LOG CMD...: CMD in the background in a session of its own, stdin /dev/null, output to LOG. CMD execs
# in place of the subshell: $! is CMD.
spawn() {
  local log=$1; shift
  (close_fds; exec setsid "$@" </dev/null >>"$log" 2>&1) &
}

# The node's holder: a process that keeps its namespaces alive; daemons and jobs enter them with nsenter.
start_holder() {  # start_holder NAME IS_NODE
  local name=$1 is_node=$2 setup
  setup="hostname $name && mount --bind '$dir/etc/hosts' /etc/hosts"
  if [ "$is_node" = 1 ]; then
    # A repository under /tmp would vanish behind the private /tmp: carry it across.
    local carry=""
    case "$repo" in /tmp/*)
      mkdir -p "$dir/run/$name.repo"
      setup+=" && mount --bind '$repo' '$dir/run/$name.repo'"
      carry=" && mkdir -p '$repo' && mount --move '$dir/run/$name.repo' '$repo'" ;;
    esac
    setup+=" && mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs -o mode=1777 tmpfs /dev/shm$carry"
    setup+=" && mkdir -p /tmp/slurmd"
  fi
  # nsenter, unshare and sh all exec: $! is the holder itself.
  spawn "$dir/log/holder-$name.log" nsenter --net="/var/run/netns/$(ns "$name")" \
    unshare --uts --mount --propagation private -- sh -c "$setup && exec sleep infinity"
  echo $! >"$dir/run/$name.holder"
}

start_slurmd() {  # start_slurmd NODE
  local pid; pid=$(holder "$1")
  spawn "$dir/log/slurmd-$1.out" nsenter -t "$pid" --net --mount --uts -- slurmd -D -f "$dir/etc/slurm.conf" -N "$1"
}

# Wait (bounded) until sinfo shows every node idle.
wait_ready() {
  local t0=$SECONDS states
  while :; do
    states=$(in_node hub sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | awk '{print $2}' | sort -u | tr '\n' ' ')
    [ "$states" = "idle " ] && return 0
    if [ $((SECONDS - t0)) -ge "${1:-60}" ]; then
      echo "$me: nodes not idle after ${1:-60} s (states: ${states:-none}); logs in $dir/log/" >&2
      in_node hub sinfo -N >&2 || true
      return 1
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------------------------------------------------
# Configuration files

write_files() {
  local i
  mkdir -p "$dir"/{run,log,etc,ctld,munge,out}
  {
    echo "127.0.0.1 localhost"
    echo "$net.1 hub"
    for i in $(seq 1 "$NODES"); do echo "$net.$((10 + i)) n$i"; done
  } >"$dir/etc/hosts"
  for i in $(seq 1 "$NODES"); do echo "n$i slots=$CPUS"; done >"$dir/hostfile"
  cat >"$dir/etc/slurm.conf" <<EOF
# Written by launch/cluster_box.sh for box '$box'.
ClusterName=$box
# Job ids differ from one box to the next, so a new job never finds an old job's checkpoint in OUT_ROOT/<id>/.
FirstJobId=$(( $(date +%s) % 60000000 + 1000 ))
SlurmctldHost=hub($net.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it starts again (default 120 s).
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=20
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=/tmp/slurmd
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
SwitchType=switch/none
SchedulerType=sched/builtin
SchedulerParameters=sched_min_interval=200000
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
KillWait=5
InactiveLimit=0
MinJobAge=600
JobRequeue=1
PropagateResourceLimits=NONE
EOF
  for i in $(seq 1 "$NODES"); do
    echo "NodeName=n$i NodeAddr=$net.$((10 + i)) CPUs=$CPUS RealMemory=1024 State=UNKNOWN"
  done >>"$dir/etc/slurm.conf"
  echo "PartitionName=box Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$dir/etc/slurm.conf"
  # Open MPI's rsh agent: "rsh [options] HOST COMMAND..." runs COMMAND in HOST's namespaces.
  cat >"$dir/rsh" <<EOF
#!/bin/sh
while [ \$# -gt 0 ]; do case "\$1" in -*) shift ;; *) break ;; esac; done
host=\$1; shift
pid=\$(cat "$dir/run/\$host.holder" 2>/dev/null) || { echo "box rsh: no node '\$host'" >&2; exit 255; }
exec nsenter -t "\$pid" --net --mount --uts --wd="\$PWD" -- /bin/sh -c "\$*"
EOF
  chmod 755 "$dir/rsh"
  write_env
}

# box.env: the box's shape (a box from before --link-mbit has LINK_GBIT only: load_env reads both).
write_env() { printf 'NODES=%s\nCPUS=%s\nLINK_MBIT=%s\n' "$NODES" "$CPUS" "$LINK_MBIT" >"$dir/box.env"; }

start_munged() {
  chown munge:munge "$dir/munge"
  chmod 755 "$dir/munge"        # clients need to reach the socket
  head -c 1024 /dev/urandom >"$dir/munge/munge.key"
  chown munge:munge "$dir/munge/munge.key"
  chmod 400 "$dir/munge/munge.key"
  touch "$dir/log/munged.log" && chown munge:munge "$dir/log/munged.log"
  (close_fds; exec runuser -u munge -- munged --socket="$dir/munge/munge.socket" --key-file="$dir/munge/munge.key" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed") ||
    die 1 "munged did not start (see $dir/log/munged.log)"
}

# ---------------------------------------------------------------------------------------------------------
# Commands

print_how() {
  cat <<EOF
box '$box' is up: $NODES node(s) x $CPUS CPU(s), links $(rate_text "$LINK_MBIT") (state in $dir)
$(in_node hub sinfo)
submit the job script:   $0 submit [--nodes=2 --ntasks-per-node=1] [-- --epochs 1 --steps 50]
                         LAUNCHER=mpirun $0 submit ...
or run plain mpirun:     $0 exec n1 mpirun --hostfile $dir/hostfile -np $NODES build/trainer --config ...
Slurm commands:          $0 exec hub sinfo | squeue | scancel ...
remove it:               $0 down
EOF
}

cmd_up() {
  local nodes=2 cpus=2 mbit=1000
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) nodes=${2:-}; shift 2 ;;
      --cpus-per-node) cpus=${2:-}; shift 2 ;;
      --link-gbit|--link-mbit)
        [[ ${2:-} =~ ^[0-9]*\.?[0-9]+$ ]] || die 2 "$1 must be a number, not '${2:-}'"
        mbit=$(rate_mbit "$2$([ "$1" = --link-mbit ] && echo mbit)")
        [ -n "$mbit" ] || die 2 "$1 $2: a link rate must be at least 0.1 Mbit/s"
        shift 2 ;;
      *) die 2 "up: unknown argument '$1' (see --help)" ;;
    esac
  done
  [[ $nodes =~ ^[1-9][0-9]?$ ]] || die 2 "--nodes must be 1..99, not '$nodes'"
  [[ $cpus =~ ^[1-9][0-9]*$ ]] || die 2 "--cpus-per-node must be a positive integer, not '$cpus'"
  require install  # `up` installs what is missing; `check` only checks
  if is_up; then
    load_env
    if [ "$NODES" = "$nodes" ] && [ "$CPUS" = "$cpus" ]; then
      local n ok=1
      for n in hub $(node_names); do alive "$(holder "$n")" || ok=0; done
      alive "$(cat "$dir/run/slurmctld.pid" 2>/dev/null)" || ok=0
      alive "$(cat "$dir/munge/munged.pid" 2>/dev/null)" || ok=0
      if [ "$ok" = 1 ]; then
        if [ "$LINK_MBIT" != "$mbit" ]; then
          for n in $(node_names); do
            tc_shape "$(ns "$n")" eth0 "$mbit"; tc_shape "$(ns hub)" "v${n#n}" "$mbit"
          done
          LINK_MBIT=$mbit
          write_env
        fi
        for n in $(node_names); do alive "$(cat "$dir/run/slurmd-$n.pid" 2>/dev/null)" || start_slurmd "$n"; done
        wait_ready 60 || exit 1
        print_how
        return 0
      fi
    fi
    echo "$me: box '$box' is up with another shape or a dead daemon: rebuilding it"
  fi
  cmd_down >/dev/null
  NODES=$nodes CPUS=$cpus LINK_MBIT=$mbit
  write_files
  start_munged
  # The network: a bridge in the hub, one veth pair per node, tbf on both ends.
  ip netns add "$(ns hub)"
  ip -n "$(ns hub)" link set lo up
  ip -n "$(ns hub)" link add br0 type bridge
  ip -n "$(ns hub)" addr add "$net.1/24" dev br0
  ip -n "$(ns hub)" link set br0 up
  local i n
  for i in $(seq 1 "$NODES"); do
    n=n$i
    ip netns add "$(ns "$n")"
    ip -n "$(ns "$n")" link set lo up
    ip link add "v$i" netns "$(ns hub)" type veth peer name eth0 netns "$(ns "$n")"
    ip -n "$(ns hub)" link set "v$i" master br0 up
    ip -n "$(ns "$n")" addr add "$net.$((10 + i))/24" dev eth0
    ip -n "$(ns "$n")" link set eth0 up
    tc_shape "$(ns "$n")" eth0 "$LINK_MBIT" || die 2 "tc tbf is not available here (kernel module sch_tbf)"
    tc_shape "$(ns hub)" "v$i" "$LINK_MBIT"
  done
  start_holder hub 0
  for n in $(node_names); do start_holder "$n" 1; done
  # Holders are ready once they sleep in their own UTS namespace.
  local t0=$SECONDS
  for n in hub $(node_names); do
    until [ "$(nsenter -t "$(holder "$n")" --uts hostname 2>/dev/null)" = "$n" ] &&
          [ "$(readlink "/proc/$(holder "$n")/exe" 2>/dev/null)" != "$(command -v sh)" ] &&
          grep -q sleep "/proc/$(holder "$n")/comm" 2>/dev/null; do
      alive "$(holder "$n")" || die 1 "node $n did not start (see $dir/log/holder-$n.log)"
      [ $((SECONDS - t0)) -lt 30 ] || die 1 "node $n not ready after 30 s"
      sleep 0.1
    done
  done
  spawn "$dir/log/slurmctld.out" nsenter -t "$(holder hub)" --net --mount --uts -- slurmctld -D -f "$dir/etc/slurm.conf"
  for n in $(node_names); do start_slurmd "$n"; done
  wait_ready 90 || exit 1
  print_how
}

cmd_down() {
  local nsname pids t0 any=0
  for nsname in $(ip netns list 2>/dev/null | awk -v p="^$box-" '$1 ~ p {print $1}'); do
    any=1
    pids=$(ip netns pids "$nsname" 2>/dev/null || true)
    # shellcheck disable=SC2086
    if [ -n "$pids" ]; then kill -TERM $pids 2>/dev/null || true; fi
  done
  t0=$SECONDS
  for nsname in $(ip netns list 2>/dev/null | awk -v p="^$box-" '$1 ~ p {print $1}'); do
    while pids=$(ip netns pids "$nsname" 2>/dev/null) && [ -n "$pids" ] && [ $((SECONDS - t0)) -lt 10 ]; do
      sleep 0.2
    done
    # shellcheck disable=SC2086
    if [ -n "$pids" ]; then kill -KILL $pids 2>/dev/null || true; fi
  done
  for nsname in $(ip netns list 2>/dev/null | awk -v p="^$box-" '$1 ~ p {print $1}'); do
    t0=$SECONDS
    while [ -n "$(ip netns pids "$nsname" 2>/dev/null)" ] && [ $((SECONDS - t0)) -lt 5 ]; do sleep 0.1; done
    ip netns del "$nsname" 2>/dev/null || true
  done
  local mpid; mpid=$(cat "$dir/munge/munged.pid" 2>/dev/null || true)
  if alive "$mpid" && grep -q munged "/proc/$mpid/comm" 2>/dev/null; then
    kill -TERM "$mpid"; any=1
    t0=$SECONDS; while alive "$mpid" && [ $((SECONDS - t0)) -lt 5 ]; do sleep 0.1; done
    if alive "$mpid"; then kill -KILL "$mpid" 2>/dev/null || true; fi
  fi
  if [ -d "$dir" ]; then
    any=1
    # A node's carried repository mount lives only in its (gone) mount namespace; the folder is empty.
    rm -rf "$dir"
  fi
  [ "$any" = 1 ] && echo "box '$box' removed" || echo "box '$box' was not up"
}

cmd_status() {
  if ! is_up; then echo "box '$box' is down"; return 3; fi
  load_env
  echo "box '$box': $NODES node(s) x $CPUS CPU(s), links $(rate_text "$LINK_MBIT"), state in $dir"
  local n pid
  for n in hub $(node_names); do
    pid=$(holder "$n")
    printf '  %-4s namespaces %s (holder %s)  processes: %s\n' "$n" "$(alive "$pid" && echo up || echo DOWN)" \
      "$pid" "$(ip netns pids "$(ns "$n")" 2>/dev/null | wc -l)"
    [ "$n" = hub ] || ip netns exec "$(ns "$n")" tc qdisc show dev eth0 | sed 's/^/       /'
  done
  in_node hub sinfo -N
  in_node hub squeue
}

cmd_exec() {
  [ $# -ge 2 ] || die 2 "exec NODE CMD... (NODE: hub, n1 ...)"
  load_env
  in_node "$@"
}

cmd_link() {
  [ $# -eq 2 ] || die 2 "link NODE up|down|RATE (RATE: Gbit/s, or 50mbit, 2gbit)"
  load_env
  local n=$1 i=${1#n} mbit
  { [ "$n" != hub ] && [ -n "$(holder "$n")" ]; } || die 2 "link: no node '$n'"
  case "$2" in
    up|down) ip -n "$(ns hub)" link set "v$i" "$2" ;;
    *)
      mbit=$(rate_mbit "$2")
      [ -n "$mbit" ] || die 2 "link: '$2' is not a rate of at least 0.1 Mbit/s (Gbit/s, or 50mbit, 2gbit)"
      tc_shape "$(ns "$n")" eth0 "$mbit"; tc_shape "$(ns hub)" "v$i" "$mbit" ;;
  esac
}

cmd_kill_node() {
  [ $# -eq 1 ] || die 2 "kill-node NODE"
  load_env
  local n=$1 hp pids t0
  hp=$(holder "$n")
  { [ "$n" != hub ] && alive "$hp"; } || die 2 "kill-node: no node '$n'"
  t0=$SECONDS
  while pids=$(ip netns pids "$(ns "$n")" | grep -vx "$hp") && [ -n "$pids" ]; do
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    [ $((SECONDS - t0)) -lt 10 ] || die 1 "kill-node: processes left on $n: $pids"
    sleep 0.1
  done
  rm -f "$dir/run/slurmd-$n.pid"
  start_slurmd "$n"
}

cmd_submit() {
  load_env
  local sb=() tr=()
  while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then shift; tr=("$@"); break; fi
    sb+=("$1"); shift
  done
  local out_root=${OUT_ROOT:-out/box}
  case "$out_root" in /*) mkdir -p "$out_root" ;; *) mkdir -p "$repo/$out_root" ;; esac
  local log=$dir/out/job-%j.log jobid rc=0 info state code sig t_lost=""
  # The box's shape replaces the script's GPU-cluster #SBATCH defaults; the caller's options come last and win.
  local args=(--parsable --nodes="$NODES" --ntasks-per-node=1 --cpus-per-task=1 --gpus-per-node=0
              --time=00:30:00 --output="$log" --open-mode=append "${sb[@]}" launch/slurm.sbatch)
  local extra="${EXTRA_ARGS:-} ${tr[*]:-}"
  set +e
  jobid=$(cd "$repo" && in_node hub env CONFIG="${CONFIG:-configs/fashion_mnist_cnn.cfg}" BACKEND=cpu COMM=mpi \
     CPU_BIND=none MPIRUN_BIND=none LAUNCHER="${LAUNCHER:-srun}" OUT_ROOT="$out_root" EXTRA_ARGS="$extra" \
     TRAINER="${TRAINER:-build/trainer}" sbatch "${args[@]}")
  rc=$?
  set -e
  jobid=${jobid%%;*}
  { [ "$rc" -eq 0 ] && [[ $jobid =~ ^[0-9]+$ ]]; } || die 1 "sbatch failed (exit $rc)"
  # What sbatch --wait does, polling every 0.5 s: sbatch --wait backs off to 32 s between its polls.
  while :; do
    info=$(in_node hub scontrol -o show job "$jobid" 2>/dev/null || true)
    state=$(sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' <<<"$info")
    case "$state" in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|PREEMPTED|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE) break ;; esac
    if [ -z "$state" ]; then
      t_lost=${t_lost:-$SECONDS}
      [ $((SECONDS - t_lost)) -lt 30 ] || die 1 "job $jobid: the controller no longer knows it"
    else
      t_lost=""
    fi
    sleep 0.5
  done
  read -r code sig < <(sed -n 's/.* ExitCode=\([0-9]*\):\([0-9]*\).*/\1 \2/p' <<<"$info")
  rc=${code:-1}
  [ "${sig:-0}" -gt 0 ] && rc=$((128 + sig))
  [ -f "$dir/out/job-$jobid.log" ] && cat "$dir/out/job-$jobid.log"
  echo "job $jobid: $state, exit $rc (output: $dir/out/job-$jobid.log)"
  return "$rc"
}

case "${1:-}" in
  up) shift; cmd_up "$@" ;;
  check) require; echo "cluster_box.sh: a box can run here" ;;
  install) require install; echo "cluster_box.sh: a box can run here (packages installed)" ;;
  down) shift; [ "$(id -u)" -eq 0 ] || die 2 "needs root"; cmd_down ;;
  status) shift; cmd_status ;;
  exec) shift; cmd_exec "$@" ;;
  submit) shift; cmd_submit "$@" ;;
  link) shift; cmd_link "$@" ;;
  kill-node) shift; cmd_kill_node "$@" ;;
  -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die 2 "usage: $me up|down|status|exec|submit|link|kill-node|check|install (see --help)" ;;
esac
