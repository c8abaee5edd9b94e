#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for trying `revgn sweep hydra/launcher=slurm` and for tests/test_slurm.py.
#
#   tools/slurm_cluster.sh up      install slurm + munge if missing (apt), write the config, start the daemons
#   tools/slurm_cluster.sh down    stop the daemons `up` started (by pid), nothing else
#   tools/slurm_cluster.sh status  one line: up (node state) or down
#
# Everything lives in .slurm/ (git-ignored): slurm.conf, state, spool, logs, pid files. Clients (sinfo, sbatch,
# submitit) find the config through /etc/slurm/slurm.conf, which `up` links to .slurm/slurm.conf when there is no
# such file yet, and `down` unlinks again; a real /etc/slurm/slurm.conf is never touched. No systemd: the daemons
# are started by hand (containers' policy-rc.d keeps apt from starting them).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${REVGN_SLURM_DIR:-$ROOT/.slurm}"
CONF="$DIR/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
PACKAGES="slurmctld slurmd slurm-client munge"
# A requeued job waits cred_expire + 1 s before it may start again (121 s with SLURM's default).
CRED_EXPIRE=10

die() { echo "slurm-cluster: $*" >&2; exit 1; }

# The pid in $1 when that process is alive and is the program $2 (a recycled pid is not ours).
live_pid() {
  local f=$1 name=$2 pid
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ $(</proc/"$pid"/comm) == "$name" ]] && echo "$pid"
}

node_state() { sinfo -h -N -o %t 2>/dev/null | head -n1; }

install_missing() {
  local need=()
  command -v slurmctld >/dev/null || need+=(slurmctld)
  command -v slurmd >/dev/null || need+=(slurmd)
  command -v sinfo >/dev/null || need+=(slurm-client)
  command -v munged >/dev/null || need+=(munge)
  ((${#need[@]})) || return 0
  command -v apt-get >/dev/null || die "needs ${need[*]} and there is no apt-get here: install $PACKAGES by hand"
  echo "slurm-cluster: installing ${need[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q --no-install-recommends "${need[@]}" >"$DIR/apt.log" 2>&1 ||
    { apt-get update -q >>"$DIR/apt.log" 2>&1 &&
      apt-get install -y -q --no-install-recommends "${need[@]}" >>"$DIR/apt.log" 2>&1; }; } ||
    die "apt-get install ${need[*]} failed (see $DIR/apt.log)"
}

write_conf() {
  local host cpus mem_mb
  host=$(hostname -s)
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 * 0.9 / 1024}' /proc/meminfo)
  mkdir -p "$DIR"/{state,spool,log,run}
  cat >"$CONF" <<EOF
# Written by tools/slurm_cluster.sh up: one node ($host), partition debug, no accounting.
ClusterName=revgn
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# A requeued job may start again after cred_expire + 1 s: look at pending jobs every 2 s, not every 30-60 s.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=30
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

link_conf() {
  if [[ -L $ETC_CONF ]]; then
    [[ $(readlink "$ETC_CONF") == "$CONF" ]] && return 0
    [[ -e $ETC_CONF ]] && [[ $(readlink "$ETC_CONF") == */.slurm/slurm.conf ]] &&
      die "$ETC_CONF points to another checkout's test cluster ($(readlink "$ETC_CONF")): stop that one first"
    ln -sfn "$CONF" "$ETC_CONF"  # a dangling link from a removed checkout
  elif [[ -e $ETC_CONF ]]; then
    die "$ETC_CONF exists and is not this project's: this machine has a SLURM set-up already, use that one"
  else
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -s "$CONF" "$ETC_CONF"
  fi
}

start_munge() {
  if pgrep -x munged >/dev/null; then
    return 0  # somebody's munged (maybe ours from an earlier `up`): it signs credentials for us as well
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  [[ -f /etc/munge/munge.key ]] || { mungekey --create --force >/dev/null 2>&1 ||
    die "no /etc/munge/munge.key and mungekey could not create one"; chown munge:munge /etc/munge/munge.key; }
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid ||
    die "munged did not start (see /var/log/munge/munged.log)"
  cp /run/munge/munged.pid "$DIR/run/munged.pid"  # ours: `down` stops it
}

wait_idle() {
  local state=""
  for _ in $(seq 1 60); do
    state=$(node_state)
    case $state in
      idle*|mix*|alloc*) return 0 ;;
      down*|drain*) scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "node not idle after 30 s (state '${state:-no answer}'; logs in $DIR/log)"
}

up() {
  [[ $(id -u) == 0 ]] || die "needs root (apt-get, munged as the munge user, slurmd): run as root or with sudo"
  mkdir -p "$DIR"
  if live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null && live_pid "$DIR/run/slurmd.pid" slurmd >/dev/null &&
     [[ -n $(node_state) ]]; then
    echo "slurm-cluster: already up ($(hostname -s): $(node_state))"
    return 0
  fi
  install_missing
  write_conf
  link_conf
  start_munge
  live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null ||
    nice -n 5 slurmctld -f "$CONF" || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
  live_pid "$DIR/run/slurmd.pid" slurmd >/dev/null ||
    nice -n 5 slurmd -f "$CONF" || die "slurmd did not start (see $DIR/log/slurmd.log)"
  wait_idle
  echo "slurm-cluster: up — node $(hostname -s) ($(nproc) CPUs), partition debug; config $CONF;" \
    "\`make slurm-down\` stops it"
}

stop_pid() {
  local f=$1 name=$2 pid
  if pid=$(live_pid "$f" "$name"); then
    kill "$pid"
    for _ in $(seq 1 100); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    [[ -d /proc/$pid ]] && kill -9 "$pid"
    echo "slurm-cluster: stopped $name ($pid)"
  fi
  rm -f "$f"
}

down() {
  [[ -d $DIR ]] || { echo "slurm-cluster: not running"; return 0; }
  [[ $(id -u) == 0 ]] || die "needs root to stop the daemons"
  if live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    # This cluster's jobs first (they are all this checkout's): none outlives it as an orphaned slurmstepd.
    SLURM_CONF=$CONF scancel --partition=debug >/dev/null 2>&1 || true
    for _ in $(seq 1 80); do
      [[ -z $(SLURM_CONF=$CONF squeue -h -o %i 2>/dev/null) ]] && break
      sleep 0.5
    done
  fi
  stop_pid "$DIR/run/slurmd.pid" slurmd
  stop_pid "$DIR/run/slurmctld.pid" slurmctld
  stop_pid "$DIR/run/munged.pid" munged
  if [[ -L $ETC_CONF && $(readlink "$ETC_CONF") == "$CONF" ]]; then rm -f "$ETC_CONF"; fi
  echo "slurm-cluster: down"
}

status() {
  if live_pid "$DIR/run/slurmctld.pid" slurmctld >/dev/null && [[ -n $(node_state) ]]; then
    echo "slurm-cluster: up ($(hostname -s): $(node_state))"
  else
    echo "slurm-cluster: down"
    return 1
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
