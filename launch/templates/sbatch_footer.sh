SRUN_PID=$!

# A trapped signal interrupts `wait`: wait again until the training step has really ended.
while :; do
    wait "$SRUN_PID"
    rc=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break
done
[[ -n $RESENDER ]] && kill "$RESENDER" 2>/dev/null
echo "[zerolm] $(date '+%F %T') training step ended with exit code $rc"

# The trainer's summary of this run (written after the job started): completed, stopped or preempted.
STATUS=$("$PY" - "$RUN_DIR/result.json" "$STARTED" <<'PYEOF' 2>/dev/null
import json, os, sys
path, started = sys.argv[1], float(sys.argv[2])
if os.path.getmtime(path) >= started:
    print(json.load(open(path)).get("status", ""))
PYEOF
)
if [[ $PREEMPTED -eq 1 && $STATUS != completed ]]; then
    echo "[zerolm] $(date '+%F %T') run status '${STATUS:-unknown}', checkpoint $(cat "$RUN_DIR/checkpoints/latest" 2>/dev/null || echo none): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" && exit 0
    echo "[zerolm] scontrol requeue failed: resubmit this script to resume" >&2
    exit 1
fi
exit "$rc"
