# DeepSpeed hostfile from the allocation: one line per node, {{nproc}} slots each.
HOSTFILE=$RUN_DIR/slurm/hostfile-$SLURM_JOB_ID
mkdir -p "$RUN_DIR/slurm"
printf '%s slots={{nproc}}\n' "${NODES[@]}" >"$HOSTFILE"
echo "[zerolm] hostfile $HOSTFILE:"; cat "$HOSTFILE"
# One deepspeed launcher per node, started by srun (no ssh/pdsh); node rank = SLURM_NODEID, the
# node's line in the hostfile; {{world}} ranks in all. USR1 is ignored by the launcher processes
# (DeepSpeed's would kill its ranks) and re-enabled by the trainer, which checkpoints on it.
srun --ntasks-per-node=1 --kill-on-bad-exit=1{{srun_cpus}} \
    bash -c 'trap "" USR1; exec "$0" --node_rank="$SLURM_NODEID" "$@"' \
    "$BIN/deepspeed" --hostfile="$HOSTFILE" --no_ssh --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    --module {{module}} {{train_args}} &
