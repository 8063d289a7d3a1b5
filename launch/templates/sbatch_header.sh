#!/bin/bash
# zerolm on Slurm: {{summary}}.
# Rendered by `zerolm launch slurm`; submit with `sbatch {{script_name}}`.
#
# Preemption and time limit: Slurm sends USR1 to this script {{signal_lead}} s before the time limit
# (and a preempting site or an admin can send it with `scancel --signal=USR1 --batch JOBID`). The
# script forwards USR1 to every training process; the trainer checkpoints at the next step boundary
# and exits 0; then the script requeues the job (`scontrol requeue`). The requeued job runs this same
# script, and the trainer resumes from {{run_dir}}/checkpoints/latest.
#
# DeepSpeed config the trainer generates from the zerolm config (pretrain.ds_config.build_ds_config;
# a copy for review: ds_config.json beside this script): {{ds_summary}}.
#SBATCH --job-name={{job_name}}
#SBATCH --nodes={{nodes}}
#SBATCH --ntasks-per-node={{ntasks_per_node}}
{{resource_lines}}#SBATCH --time={{time}}
{{partition_line}}#SBATCH --output={{log_dir}}/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@{{signal_lead}}
#SBATCH --requeue
{{extra_lines}}
set -uo pipefail
cd {{workdir}}
{{env_lines}}PY={{python}}
BIN={{bin_dir}}
RUN_DIR={{run_dir}}
STARTED=$(date +%s)

# Rendezvous: the first node of the allocation, on a port derived from the job id (the same on
# every node and after a requeue; pretrain.distributed.detect derives the same for plain srun).
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
export MASTER_ADDR=${NODES[0]}
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))
echo "[zerolm] $(date '+%F %T') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${#NODES[@]} node(s): ${NODES[*]}; rendezvous $MASTER_ADDR:$MASTER_PORT"

# USR1 (time limit ahead, or preemption): tell every process of the training step to checkpoint.
# `scancel --signal` reaches all processes of the job's steps, not this script. It is repeated every
# 60 s in case it arrived while the trainer was still starting (before its handler is installed).
PREEMPTED=0
RESENDER=
on_usr1() {
    echo "[zerolm] $(date '+%F %T') USR1: asking the training processes to checkpoint and exit"
    scancel --signal=USR1 "$SLURM_JOB_ID"
    if [[ $PREEMPTED -eq 0 ]]; then
        PREEMPTED=1
        ( while sleep 60; do scancel --signal=USR1 "$SLURM_JOB_ID"; done ) &
        RESENDER=$!
    fi
}
trap on_usr1 USR1
# SIGTERM (scancel, or preemption by the scheduler, which requeues by itself): the trainer
# checkpoints on it too; wait for it.
trap 'echo "[zerolm] $(date "+%F %T") SIGTERM: waiting for the training processes to checkpoint"' TERM

