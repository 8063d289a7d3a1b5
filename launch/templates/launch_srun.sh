# One task per {{unit}} ({{nproc}} per node, {{world}} in all): each rank reads SLURM_PROCID /
# SLURM_NTASKS / SLURM_LOCALID (pretrain.distributed.detect) and meets the others at
# MASTER_ADDR:MASTER_PORT. USR1 is ignored until the trainer installs its handler.
srun --ntasks-per-node={{nproc}} --kill-on-bad-exit=1{{srun_cpus}} \
    bash -c 'trap "" USR1; exec "$@"' zerolm-task \
    "$PY" -m {{module}} {{train_args}} &
