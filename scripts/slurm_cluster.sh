#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the tests marked `slurm` (tests/distributed/
# test_slurm.py) and for trying the SLURM commands of docs/scaling-out.md without a cluster:
#
#   sudo bash scripts/slurm_cluster.sh          # install (Debian's slurm-wlm + munge) and start
#   bash scripts/slurm_cluster.sh stop          # stop the daemons
#
# Run as root on Debian or Ubuntu; no systemd needed. Partitions: `cpu` (the default) and `urgent`,
# whose jobs preempt `cpu` jobs (PreemptMode=REQUEUE), as a higher-priority queue does on a real
# cluster. JobRequeue=0, as on many clusters: a job is requeued only when it asked for --requeue.
set -euo pipefail

CONF_DIR=/etc/slurm
STATE_DIR=/var/spool/slurmctld
SPOOL_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm

stop() {
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    pkill -x munged 2>/dev/null || true
}

if [[ "${1:-start}" == "stop" ]]; then
    stop
    exit 0
fi

if [[ $EUID -ne 0 ]]; then
    echo "scripts/slurm_cluster.sh: run as root (it installs packages and starts daemons)" >&2
    exit 2
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        slurmctld slurmd slurm-client munge
fi

node=$(hostname -s)
cpus=$(nproc)
# What slurmd finds minus room for the system; a node that reports less than RealMemory is drained.
memory_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) * 9 / 10 ))

mkdir -p "$CONF_DIR" "$STATE_DIR" "$SPOOL_DIR" "$LOG_DIR"
cat > "$CONF_DIR/slurm.conf" <<EOF
ClusterName=vicreg
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SPOOL_DIR
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups and no systemd here: processes are tracked by their parent ids.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobRequeue=0
ReturnToService=2
MpiDefault=none
# Jobs leave squeue this long after they end (srun/sbatch users poll it; there is no accounting).
MinJobAge=120
KillWait=30
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$node CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=cpu Nodes=$node Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=$node MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
rm -f "$CONF_DIR/cgroup.conf"

stop
sleep 1
# munged runs as the munge user, with its socket and log directories owned by it.
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
[[ -f /etc/munge/munge.key ]] || mungekey --create
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
runuser -u munge -- munged

slurmctld -c   # -c: a fresh state, no jobs or reservations of an earlier start
slurmd
for _ in $(seq 1 60); do
    if sinfo --noheader --states=idle --format=%n 2>/dev/null | grep -qx "$node"; then
        echo "slurm cluster up: node $node, $cpus CPUs, ${memory_mb} MB; partitions: cpu (default), urgent"
        exit 0
    fi
    sleep 0.5
done
echo "scripts/slurm_cluster.sh: the node did not come up; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log" >&2
sinfo >&2 || true
exit 1
