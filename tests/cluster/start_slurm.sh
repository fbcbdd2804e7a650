#!/usr/bin/env bash
# Start a real single-node SLURM cluster from Debian packages for the tests and for trying
# profiles/slurm on one machine: munged, MariaDB + slurmdbd (so `sacct` answers, as on a
# real site), slurmctld and slurmd on localhost. Every file (config, munge key, sockets,
# database, logs, state) lives under STATE_DIR: nothing in /etc is changed and
# stop_slurm.sh STATE_DIR stops it all. One exception: /etc/slurm/slurm.conf, the place
# every SLURM client looks when SLURM_CONF is unset, gets one `Include STATE_DIR/slurm.conf`
# line, because snakemake's slurm-jobstep plugin strips SLURM_* variables before its `srun`
# inside each job (a real site has its config there too). An existing slurm.conf that this
# script did not write is never replaced: the script refuses to start instead.
# Needs root (slurmd starts jobs as their user).
#
#   tests/cluster/start_slurm.sh /tmp/slurm    # prints `export SLURM_CONF=/tmp/slurm/slurm.conf`
#   export SLURM_CONF=/tmp/slurm/slurm.conf; sinfo; sbatch ...
#   tests/cluster/stop_slurm.sh /tmp/slurm
#
# Partitions: `cpu` (default) and `gpu`. This is a CPU machine: the node declares
# `Gres=gpu:2` backed by two placeholder files, so `--gpus=1` requests are scheduled and
# accounted exactly as on a GPU node, but the job sees no device (CUDA_VISIBLE_DEVICES is set).
# The node declares at least 8 CPUs and 32 GB (SlurmdParameters=config_overrides) so
# every rule's threads/mem_mb fit on a small test machine; CPUs are oversubscribed.
#
# Environment: SLURM_PORT_BASE (default 16817: slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB),
# SLURM_NODE_CPUS, SLURM_NODE_MEM_MB.
set -euo pipefail

STATE=$(realpath -m "${1:?usage: start_slurm.sh STATE_DIR}")
PORT=${SLURM_PORT_BASE:-16817}
NPROC=$(nproc)
CPUS=${SLURM_NODE_CPUS:-$((NPROC > 8 ? NPROC : 8))}
MEM_HW=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
MEM=${SLURM_NODE_MEM_MB:-$((MEM_HW > 32000 ? MEM_HW : 32000))}
NODE=$(hostname -s)

if [ "$(id -u)" != 0 ]; then
  echo "start_slurm.sh: must run as root (slurmd runs jobs as the submitting user)" >&2
  exit 2
fi
for cmd in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sacctmgr; do
  command -v "$cmd" >/dev/null || { echo "start_slurm.sh: $cmd not found (apt-get install slurm-wlm slurmdbd munge mariadb-server)" >&2; exit 3; }
done
ETC_CONF=/etc/slurm/slurm.conf
MARK="# faceprep test cluster (tests/cluster/start_slurm.sh)"
if [ -e "$ETC_CONF" ] && ! grep -qxF "$MARK" "$ETC_CONF"; then
  echo "start_slurm.sh: $ETC_CONF exists and is not ours: is this machine in a real cluster?" >&2
  exit 4
fi
# one test cluster per machine: jobs read the Include line, so a second would take it over
OTHER=$(sed -n 's/^Include //p' "$ETC_CONF" 2>/dev/null || true)
if [ -n "$OTHER" ] && [ -e "$OTHER" ]; then
  echo "start_slurm.sh: a test cluster is running from $(dirname "$OTHER"); stop_slurm.sh it first" >&2
  exit 4
fi
if [ -e "$STATE/slurm.conf" ]; then
  echo "start_slurm.sh: $STATE already holds a cluster; stop_slurm.sh it first" >&2
  exit 4
fi

mkdir -p "$STATE"/{munge,db,ctld,spool,log,gpu}
LOG=$STATE/log

# wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
wait_for() {
  local limit=$1 what=$2 start=$SECONDS; shift 2
  while [ $((SECONDS - start)) -lt "$limit" ]; do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "start_slurm.sh: $what did not come up in ${limit}s; logs in $LOG:" >&2
  tail -n 20 "$LOG"/*.log >&2 || true
  return 1
}

# --- munge: a fresh key only this cluster uses --------------------------------------------
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1 count=1024 status=none
chmod 400 "$STATE/munge/munge.key"
MUNGE_SOCKET=$STATE/munge/munge.socket
munged --force --num-threads=10 --socket="$MUNGE_SOCKET" --key-file="$STATE/munge/munge.key" \
  --pid-file="$STATE/munge/munged.pid" --log-file="$LOG/munged.log" --seed-file="$STATE/munge/seed"
wait_for 10 munged munge --socket="$MUNGE_SOCKET" -n

# --- MariaDB for slurmdbd (TCP on localhost only, its own data folder) --------------------
mariadb-install-db --no-defaults --datadir="$STATE/db" --user=root \
  --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1
DB_SOCKET=$STATE/mariadb.sock
mariadbd --no-defaults --user=root --datadir="$STATE/db" --socket="$DB_SOCKET" \
  --bind-address=127.0.0.1 --port=$((PORT + 3)) --pid-file="$STATE/mariadb.pid" \
  --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=32M --skip-log-bin \
  >/dev/null 2>&1 &
wait_for 60 MariaDB mariadb --no-defaults -S "$DB_SOCKET" -e "select 1"
DB_PASS=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
mariadb --no-defaults -S "$DB_SOCKET" -e "
  CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
  CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

# --- configuration ------------------------------------------------------------------------
cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$((PORT + 2))
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$((PORT + 3))
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$STATE/slurmdbd.conf"

touch "$STATE/gpu/gpu0" "$STATE/gpu/gpu1"
cat >"$STATE/gres.conf" <<EOF
# placeholder files: a CPU machine's stand-in for two GPUs (see start_slurm.sh)
NodeName=$NODE Name=gpu File=$STATE/gpu/gpu[0-1]
EOF

cat >"$STATE/slurm.conf" <<EOF
ClusterName=faceprep
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
# no cgroups: works inside containers; processes are tracked through /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
# keep finished jobs in slurmctld too (squeue-based status queries)
MinJobAge=3600
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT + 2))
# for slurmdbd this is the munge socket its clients (slurmctld, sacct) authenticate with
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
# the slurm plugin names the rule in --comment (job names are the run id)
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:2 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
mkdir -p "$(dirname "$ETC_CONF")"
printf '%s\nInclude %s\n' "$MARK" "$STATE/slurm.conf" >"$ETC_CONF.tmp"
mv "$ETC_CONF.tmp" "$ETC_CONF"
# every daemon and client finds slurmdbd.conf and gres.conf beside SLURM_CONF
export SLURM_CONF=$STATE/slurm.conf

# --- daemons ------------------------------------------------------------------------------
slurmdbd
wait_for 30 slurmdbd sacctmgr -i list cluster
sacctmgr -i add cluster faceprep >/dev/null 2>&1 || true
slurmctld -f "$STATE/slurm.conf"
wait_for 30 slurmctld scontrol ping
slurmd -f "$STATE/slurm.conf"
node_idle() { sinfo -h -n "$NODE" -o %T | grep -qx idle; }
wait_for 30 "slurmd (node $NODE idle)" node_idle

echo "export SLURM_CONF=$STATE/slurm.conf"
