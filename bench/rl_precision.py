"""RL step time in fp32 and under bf16 autocast (``sentiment.precision``), measured in the same session.

    .venv/bin/python bench/rl_precision.py --steps 5 --rounds 1 \\
        --reward runs/finetune/classify_polarity/hf [-- key=value ...]

Runs ``torchrun --nproc_per_node 2 -m zerolm.finetune sentiment --method rloo`` (the documented RLOO
config, ``configs/finetune/sentiment_rloo.yaml``: SmolLM2-135M, 8 prompts × 4 samples per step, top 8
blocks trained) for ``--steps`` steps in each precision, in ABBA order per round (fp32, bf16, bf16, fp32:
this machine drifts 15–25 % within minutes, so each precision gets an early and a late slot). Each run's
step time is the median of ``ppo/step_time_s`` over its steps after the first (the first pays one-off
warm-up). Prints per run the median step time, the rollout share and the last step's mean reward and KL
(a bf16 run that diverged would show there), then the speed-up fp32 ÷ bf16 per round and its spread.
Writes ``bench/results/rl_precision.json``. Runs go to ``runs/bench_rl_precision/`` (replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def one_run(precision: str, slot: str, args, extra: list[str]) -> dict:
    """One RLOO run of ``args.steps`` steps in ``precision``; its step times and last metrics."""
    run = REPO / "runs" / "bench_rl_precision" / f"{slot}-{precision}"
    shutil.rmtree(run, ignore_errors=True)
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(args.nproc), "-m", "zerolm.finetune",
           "sentiment", "--method", "rloo", "--target", "positive", "--reward", args.reward, "--run-dir", str(run),
           "--quiet", f"sentiment.steps={args.steps}", "sentiment.max_minutes=null", f"sentiment.precision={precision}",
           f"sentiment.save_every={10 * args.steps}", "tracking.wandb_mode=disabled", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
           "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{precision} run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [x["ppo/step_time_s"] for x in rows[1:]]
    rollout = [x["ppo/rollout_time_s"] for x in rows[1:]]
    out = {"precision": precision, "slot": slot, "wall_s": round(time.perf_counter() - t0, 1),
           "step_s": statistics.median(steps), "rollout_share": statistics.median(r / s for r, s in zip(rollout, steps)),
           "last_reward": rows[-1]["ppo/mean_reward"], "last_kl": rows[-1]["ppo/kl"], "step_times": steps}
    print(f"  {slot} {precision}: {out['step_s']:.2f} s/step (rollout {100 * out['rollout_share']:.0f} %), "
          f"last step reward {out['last_reward']:+.3f}, KL {out['last_kl']:.3f}; {out['wall_s']:.0f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="RL steps per run (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=1, help="ABBA rounds (4 runs each)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--reward", default="runs/finetune/classify_polarity/hf")
    ap.add_argument("extra", nargs="*", help="key=value overrides for every run (after --)")
    args = ap.parse_args()
    if args.steps < 2:
        raise SystemExit("--steps must be at least 2 (the first step is not timed)")
    runs = []
    for k in range(args.rounds):
        for j, precision in enumerate(("fp32", "bf16", "bf16", "fp32")):
            runs.append(one_run(precision, f"r{k}s{j}", args, args.extra))
    speedups = []
    for k in range(args.rounds):
        mine = runs[4 * k: 4 * k + 4]
        fp32 = statistics.mean(r["step_s"] for r in mine if r["precision"] == "fp32")
        bf16 = statistics.mean(r["step_s"] for r in mine if r["precision"] == "bf16")
        speedups.append(fp32 / bf16)
        print(f"round {k}: fp32 {fp32:.2f} s/step, bf16 {bf16:.2f} s/step, speed-up {fp32 / bf16:.2f}×")
    per_run = [a["step_s"] / b["step_s"] for k in range(args.rounds)
               for a, b in ((runs[4 * k], runs[4 * k + 1]), (runs[4 * k + 3], runs[4 * k + 2]))]
    print(f"speed-up fp32 ÷ bf16: mean {statistics.mean(speedups):.2f}× over {args.rounds} round(s); adjacent pairs "
          f"{min(per_run):.2f}–{max(per_run):.2f}×")
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "rl_precision.json").write_text(json.dumps({"args": vars(args), "runs": runs, "speedups": speedups,
                                                       "adjacent_pairs": per_run}, indent=1))


if __name__ == "__main__":
    main()
