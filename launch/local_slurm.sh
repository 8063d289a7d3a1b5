#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for tests and for trying the sbatch scripts.
#
#   launch/local_slurm.sh start DIR    install Slurm if missing (Debian packages, needs root + apt),
#                                      write DIR/slurm.conf, start slurmctld + slurmd, wait until
#                                      the node is idle, print `export SLURM_CONF=DIR/slurm.conf`
#   launch/local_slurm.sh stop DIR     cancel this cluster's jobs, `scontrol shutdown`, then end
#                                      only the daemons this script started (pids in DIR/run/)
#   launch/local_slurm.sh status DIR   print the node and the queue
#
# Everything — config, state, spool, logs, pid files — lives under DIR, so several clusters (a test
# run beside a developer's) can coexist: each start picks free TCP ports. Configuration as found by
# trying Slurm 22.05 on Debian 12 without systemd/cgroups (docs/stack-notes.md):
# proctrack/linuxproc, task/none, select/cons_tres + CR_Core, the node line from `slurmd -C`,
# NodeName=localhost NodeAddr=127.0.0.1, `slurmd -N localhost`, auth/none + cred/none,
# MailProg=/bin/true. Clients find the cluster through SLURM_CONF.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
action=$1
dir=$(realpath -m -- "$2")
conf=$dir/slurm.conf
log() { echo "[local_slurm] $*" >&2; }

apt_retry() {  # apt may briefly hold its lock (another apt, unattended upgrades): retry
    local i
    for i in 1 2 3 4 5; do
        if DEBIAN_FRONTEND=noninteractive "$@"; then return 0; fi
        log "apt failed (attempt $i): retrying in 3 s"
        sleep 3
    done
    return 1
}

install_slurm() {
    local missing=()
    for b in slurmctld slurmd scontrol sbatch srun squeue scancel; do
        command -v "$b" >/dev/null 2>&1 || missing+=("$b")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ $(id -u) -eq 0 ]] || { log "Slurm is not installed and installing it needs root"; exit 3; }
    command -v apt-get >/dev/null 2>&1 || { log "Slurm is not installed and apt-get is unavailable"; exit 3; }
    log "installing Slurm (missing: ${missing[*]})"
    apt_retry apt-get update -qq
    apt_retry apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_ports() {  # two consecutive free ports, away from the Slurm defaults 6817/6818
    local p
    for _ in $(seq 1 200); do
        p=$((30000 + RANDOM % 20000))
        if port_free "$p" && port_free "$((p + 1))"; then echo "$p"; return 0; fi
    done
    log "no free port pair found"; exit 1
}

pid_of() {  # the pid in DIR/run/NAME.pid when that process is alive and is NAME
    local f=$dir/run/$1.pid pid
    [[ -f $f ]] || return 1
    pid=$(<"$f")
    [[ -n $pid && -r /proc/$pid/comm && $(</proc/"$pid"/comm) == "$1" ]] || return 1
    echo "$pid"
}

start() {
    install_slurm
    if pid_of slurmctld >/dev/null || pid_of slurmd >/dev/null; then
        log "a cluster is already running from $dir"; echo "export SLURM_CONF=$conf"; return 0
    fi
    mkdir -p "$dir"/{state,spool,log,run,tmp}
    local port node
    port=$(pick_ports)
    # the hardware line of this machine, renamed to localhost (drop the UpTime line)
    node=$(slurmd -C | head -n 1 | sed -E 's/^NodeName=[^ ]+/NodeName=localhost NodeAddr=127.0.0.1/')
    cat >"$conf" <<EOF
# one-node Slurm cluster written by launch/local_slurm.sh
ClusterName=zerolm-local
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
# a requeued job may start again after the credential lifetime (default 120 s)
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# schedule every 2 s (defaults: 60 s main, 30 s backfill): a requeued job starts soon after it is eligible
SchedulerParameters=sched_interval=2,bf_interval=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
MinJobAge=600
KillWait=30
InactiveLimit=0
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
TmpFS=$dir/tmp
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
$node State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF=$conf
    slurmctld -f "$conf"
    slurmd -f "$conf" -N localhost
    local state=""
    for _ in $(seq 1 150); do
        state=$(scontrol show node localhost 2>/dev/null | sed -nE 's/.*State=([A-Z+_]+).*/\1/p' | head -n 1)
        if [[ $state == IDLE* ]]; then
            log "node localhost is idle (slurmctld pid $(pid_of slurmctld), slurmd pid $(pid_of slurmd), port $port)"
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        sleep 0.2
    done
    log "node did not become idle (state: ${state:-none}); logs in $dir/log"
    tail -n 20 "$dir"/log/*.log >&2 || true
    stop
    exit 1
}

stop() {
    export SLURM_CONF=$conf
    local ctld slurmd_pid pid
    if ctld=$(pid_of slurmctld); then
        # this cluster's jobs (SLURM_CONF names it): cancel them and give their steps time to end
        if [[ -n $(squeue -h -o %i 2>/dev/null) ]]; then
            scancel --user "$(id -un)" 2>/dev/null || true
            for _ in $(seq 1 150); do
                [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
        scontrol shutdown >/dev/null 2>&1 || true
    fi
    for name in slurmctld slurmd; do
        pid=$(pid_of "$name") || continue
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) still running: SIGTERM"; kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            if kill -0 "$pid" 2>/dev/null; then log "$name (pid $pid): SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
        fi
    done
    log "stopped the cluster in $dir"
}

status() {
    export SLURM_CONF=$conf
    scontrol show node localhost
    squeue
}

case $action in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) usage ;;
esac
