#!/usr/bin/env bash
# Stop the cluster start_slurm.sh STATE_DIR started: cancel its jobs, stop slurmd,
# slurmctld, slurmdbd, MariaDB and munged (each by its pid file, waiting for it to exit),
# remove the /etc/slurm/slurm.conf it wrote, then remove STATE_DIR (keep it, logs included, with --keep).
# Usage: stop_slurm.sh STATE_DIR [--keep]
set -uo pipefail
STATE=$(realpath -m "${1:?usage: stop_slurm.sh STATE_DIR [--keep]}")
KEEP=${2:-}
[ -d "$STATE" ] || exit 0
export SLURM_CONF=$STATE/slurm.conf

if [ -e "$STATE/slurmctld.pid" ] && scontrol ping >/dev/null 2>&1; then
  jobs=$(squeue -h -o %i 2>/dev/null)
  [ -n "$jobs" ] && scancel $jobs 2>/dev/null
fi

# stop PIDFILE NAME: TERM, wait up to 30 s, then KILL
stop() {
  local pidfile=$1 name=$2 pid
  [ -s "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  # only a process that is still the daemon we started (pids get reused)
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$name"; then return 0; fi
  kill "$pid" 2>/dev/null
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "stop_slurm.sh: $name ($pid) ignored TERM for 30 s; killing it" >&2
  kill -9 "$pid" 2>/dev/null
}
stop "$STATE/slurmd.pid" slurmd
stop "$STATE/slurmctld.pid" slurmctld
stop "$STATE/slurmdbd.pid" slurmdbd
stop "$STATE/mariadb.pid" mariadbd
stop "$STATE/munge/munged.pid" munged

# the Include line start_slurm.sh wrote, if it points at this cluster
ETC_CONF=/etc/slurm/slurm.conf
if grep -qxF "Include $STATE/slurm.conf" "$ETC_CONF" 2>/dev/null; then rm -f "$ETC_CONF"; fi

[ "$KEEP" = --keep ] || rm -rf "$STATE"
