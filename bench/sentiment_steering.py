"""Issue 17's benchmark: steer SmolLM2-135M toward positive and negative continuations, judge with VADER.

    .venv/bin/python bench/sentiment_steering.py --methods rloo ppo --targets positive negative \\
        --seeds 1234 --minutes 23 --reward runs/finetune/classify_polarity/hf [-- key=value ...]

Each (method, target, seed) is one ``torchrun --nproc_per_node 2 -m zerolm.finetune sentiment
--report`` run into ``runs/bench_sentiment/<method>-<target>-<seed>[-<tag>]`` with ``sentiment.max_minutes``
= ``--minutes`` (the documented CPU budget; a run dir that already holds a report is read, not rerun:
``--fresh`` reruns). The runs' ``sentiment_report.json`` give the table printed at the end and written
to ``bench/results/sentiment_steering.json`` / ``.md``:

* the independent judge's (VADER, never optimised) target rate of the **continuation alone**, before
  (the untuned policy) and after, the paired difference ± its standard error, overall and per prompt
  kind — for control codes the baseline that counts is the untuned model prompted with the code;
* KL to the reference (nats/sample), reference perplexity after ÷ before, distinct-2;
* the issue's targets as pass/fail: Δ ≥ 30 pp at KL ≤ 10, perplexity ≤ 1.5×, distinct-2 ≥ 0.9
  (control codes: ≥ 10 pp over prompting with the code).

Runs are sequential: each uses both cores. Control codes train one model for both targets (in the
positive run's directory); the negative run reports on that export (``--report-only``). Method
``rloo-codes`` / ``ppo-codes`` is RLOO / PPO with ``sentiment.rl_codes=true``: control codes learnt by RL
(one model for both targets, judged against prompting the untuned model with the code, like ``control``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
KINDS = ("review", "tweet", "news", "wiki", "story")


def coded(method: str) -> bool:
    """Whether ``method`` trains control codes (one model for both targets, judged against the code alone)."""
    return method == "control" or method.endswith("-codes")


def run_one(method: str, target: str, seed: int, args, extra: list[str]) -> dict:
    tag = f"-{args.tag}" if args.tag else ""
    run = REPO / "runs" / "bench_sentiment" / f"{method}-{target}-{seed}{tag}"
    rep = run / "sentiment_report.json"
    # one control-code model serves both targets: it is trained in the positive run, the other target reports on it
    trained = REPO / "runs" / "bench_sentiment" / f"{method}-positive-{seed}{tag}"
    report_only = coded(method) and target != "positive"
    base_method = method.removesuffix("-codes")
    codes = ["sentiment.rl_codes=true"] if method.endswith("-codes") else []
    if report_only and not (trained / "hf").is_dir():
        run_one(method, "positive", seed, args, extra)
    if args.fresh or not rep.is_file():
        how = ["--report-only", f"sentiment.export_dir={trained / 'hf'}"] if report_only else \
            ["--report", f"sentiment.max_minutes={args.minutes}"]
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(args.nproc), "-m", "zerolm.finetune",
               "sentiment", "--method", base_method, "--target", target, "--reward", args.reward, "--run-dir", str(run),
               *how, "--quiet", f"sentiment.seed={seed}", "tracking.wandb_mode=disabled", *codes, *extra]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
        t0 = time.perf_counter()
        print("$", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        (run).mkdir(parents=True, exist_ok=True)
        (run / "bench.log").write_text(r.stdout + "\n" + r.stderr)
        if r.returncode:
            raise SystemExit(f"{method}/{target}/{seed} failed ({r.returncode}); see {run / 'bench.log'}:\n{r.stderr[-3000:]}")
        print(f"  {method}/{target}/{seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(rep.read_text())


def row(method: str, target: str, seed: int, rep: dict) -> dict:
    base = "before_with_code" if coded(method) else "before"
    b, a = rep[base], rep["after"]
    jd = rep["judge_delta_vs_code"] if base == "before_with_code" else rep["judge_delta_continuation"]
    delta = a["judge_target_rate_continuation"] - b["judge_target_rate_continuation"]
    ppl = a["reference_perplexity"] / rep["before"]["reference_perplexity"]
    out = {"method": method, "target": target, "seed": seed, "steps": rep.get("training", {}).get("steps"),
           "minutes": round((rep.get("training", {}).get("seconds") or 0) / 60, 1), "prompts": rep["prompts"]["count"],
           "judge_before": b["judge_target_rate_continuation"], "judge_after": a["judge_target_rate_continuation"],
           "judge_delta": delta, "judge_delta_se": jd["se"],
           "reward_rate_before": b["reward_target_rate"], "reward_rate_after": a["reward_target_rate"],
           "kl": a["kl_to_reference"], "ppl_ratio": ppl, "distinct_2": a["distinct_2"],
           "by_kind": {k: {"before": v[base]["judge_target_rate_continuation"], "after": v["after"]["judge_target_rate_continuation"],
                           "delta": v["after"]["judge_target_rate_continuation"] - v[base]["judge_target_rate_continuation"],
                           "n": v["count"]} for k, v in rep.get("by_kind", {}).items()}}
    need = 0.10 if coded(method) else 0.30
    out["target_met"] = bool(delta >= need and out["kl"] <= 10 and ppl <= 1.5 and out["distinct_2"] >= 0.9)
    return out


def markdown(rows: list[dict]) -> str:
    head = ("| method | target | seed | steps (min) | VADER continuation before → after | Δ ± se | reward-model rate "
            "before → after | KL | ppl ratio | distinct-2 | " + " | ".join(f"Δ {k}" for k in KINDS) + " | met |")
    lines = [head, "|" + "---|" * (11 + len(KINDS))]
    for r in rows:
        se = f" ± {100 * r['judge_delta_se']:.1f}" if r["judge_delta_se"] is not None else ""
        kinds = " | ".join(f"{100 * r['by_kind'][k]['delta']:+.0f} (n={r['by_kind'][k]['n']})" if k in r["by_kind"] else "–" for k in KINDS)
        lines.append(f"| {r['method']} | {r['target']} | {r['seed']} | {r['steps']} ({r['minutes']}) | "
                     f"{r['judge_before']:.3f} → {r['judge_after']:.3f} | {100 * r['judge_delta']:+.1f}{se} pp | "
                     f"{r['reward_rate_before']:.3f} → {r['reward_rate_after']:.3f} | {r['kl']:.2f} | {r['ppl_ratio']:.2f} | "
                     f"{r['distinct_2']:.3f} | {kinds} | {'yes' if r['target_met'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["rloo", "ppo"])
    ap.add_argument("--targets", nargs="+", default=["positive", "negative"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1234])
    ap.add_argument("--minutes", type=float, default=23)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--reward", default="runs/finetune/classify_polarity/hf")
    ap.add_argument("--fresh", action="store_true", help="rerun runs that already have a report")
    ap.add_argument("--tag", default="", help="suffix of the run folders and result files, to keep a variant's runs "
                    "apart (e.g. another reward model)")
    ap.add_argument("extra", nargs="*", help="key=value overrides for every run (after --)")
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        for target in args.targets:
            for method in args.methods:
                rows.append(row(method, target, seed, run_one(method, target, seed, args, args.extra)))
    md = markdown(rows)
    print(md)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "sentiment_steering" + (f"-{args.tag}" if args.tag else "")
    (out / f"{name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    (out / f"{name}.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
