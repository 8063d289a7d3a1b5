# One torchrun agent per node of the allocation ({{nproc}} ranks each; {{world}} as submitted, another
# number when the job was requeued onto another node count); the agents meet at the c10d rendezvous
# on the first node. USR1 is ignored by the launcher processes (its default action would
# kill them) and re-enabled by the trainer, which checkpoints on it.
srun --ntasks-per-node=1 --kill-on-bad-exit=1{{srun_cpus}} \
    bash -c 'trap "" USR1; exec "$@"' zerolm-task \
    "$BIN/torchrun" --nnodes="$SLURM_JOB_NUM_NODES" --nproc-per-node={{nproc}} \
    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" --max-restarts=0 \
    -m {{module}} {{train_args}} &
