"""Few-shot log-likelihood scoring: items/s of zerolm against lm-evaluation-harness, and agreement of
the scores, on the same model, task, documents and prompts, in one process.

    .venv/bin/python bench/evals.py                                   # quickstart GPT + SmolLM2, PIQA k=0 and k=5
    .venv/bin/python bench/evals.py --models smollm2 --tasks piqa,commonsense_qa --configs 0:100

For each model × task × (k, limit):

* **ours** — :func:`evals.fewshot.score_items` (prompt building, tokenisation, shared-context
  multiple-choice scoring, per-item metrics) on the first ``limit`` documents, timed twice: before and
  after lm-eval (A B A; the mean of the two A's cancels a linear drift of this shared machine's load).
* **lm-eval** — ``lm_eval.simple_evaluate`` with lm-eval's ``HFLM`` (fp32, same batch size, model
  loaded beforehand so loading is not timed) on a task YAML generated from ours over the same
  documents (:func:`evals.lm_eval_ref.lm_eval_reference`). At k = 0 lm-eval renders the prompts from the
  same templates; at k > 0 it is given our prompts (its sampler draws examples differently per
  process count), so both score identical (prompt, choice) pairs.
* **lm-eval engine** — ``HFLM.loglikelihood`` alone on exactly our (prompt, choice) requests: no task
  set-up or data loading, the strictest comparison.
* ``--with-full`` adds ours without context sharing (one full forward per choice,
  ``LanguageModel.loglikelihood``) to show where the speed comes from.

Agreement: metrics (points = percentage points) and the largest per-item |Δ log-likelihood|.
Targets (issues 7, 18): speed ≥ 1.5× lm-eval on every task × k; scores within 0.5 points. Results:
bench/results/evals.json; the method and the latest table: docs/evals-speed.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _k, _v in {"DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

MODELS = {"gpt": "runs/quickstart/gpt-hf", "smollm2": "smollm2"}


def _time_ours(lm, task, n: int, k: int, seed: int, shared: bool = True) -> tuple[float, list[dict]]:
    from zerolm.evals.fewshot import score_items

    t0 = time.perf_counter()
    records = score_items(lm, task, list(range(n)), k, seed, shared_context=shared)
    return time.perf_counter() - t0, records


def bench_one(model: str, lm, hflm, task_name: str, k: int, limit: int, seed: int, work: Path,
              batch_size: int, with_full: bool) -> dict:
    import numpy as np

    from zerolm.evals.fewshot import aggregate
    from zerolm.evals.lm_eval_ref import lm_eval_reference
    from zerolm.evals.tasks import load_task

    task = load_task(task_name)
    n = min(limit, len(task.test_docs))
    t_a1, recs = _time_ours(lm, task, n, k, seed)
    ref = lm_eval_reference(model, task_name, k, n, work / f"{Path(model).name}_{task_name}_{k}",
                            batch_size=batch_size, seed=seed, lm_eval_model=hflm)
    # lm-eval's scoring engine alone on exactly our requests (no task set-up, no data loading)
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(r["context"], task.config.target_delimiter + c),
                     idx=j) for r in recs for j, c in enumerate(r["choices"])]
    t0 = time.perf_counter()
    hflm.loglikelihood(reqs, disable_tqdm=True)
    t_engine = time.perf_counter() - t0
    t_a2, recs2 = _time_ours(lm, task, n, k, seed)
    ours_s = (t_a1 + t_a2) / 2
    means, _ = aggregate(recs, task.config.metric_list)
    row = {"model": model, "task": task_name, "k": k, "n": n,
           "ours_seconds": [round(t_a1, 3), round(t_a2, 3)], "lm_eval_seconds": round(ref["seconds"], 3),
           "lm_eval_engine_seconds": round(t_engine, 3),
           "ours_items_per_s": n / ours_s, "lm_eval_items_per_s": n / ref["seconds"],
           "lm_eval_engine_items_per_s": n / t_engine,
           "speedup": ref["seconds"] / ours_s, "speedup_vs_engine": t_engine / ours_s,
           "metrics_ours": means, "metrics_lm_eval": ref["metrics"]}
    row["max_abs_points_diff"] = max(abs(100 * (means[m] - ref["metrics"][m])) for m in means if m in ref["metrics"])
    row["max_abs_ll_diff"] = float(max(np.max(np.abs(np.asarray(a["lls"]) - np.asarray(b["lls"])))
                                       for a, b in zip(recs, ref["items"])))
    row["same_prompts"] = all(a["context"] == b["context"] for a, b in zip(recs, ref["items"]))
    row["runs_identical"] = [r["lls"] for r in recs] == [r["lls"] for r in recs2]
    if with_full:
        t_full, _ = _time_ours(lm, task, n, k, seed, shared=False)
        row["ours_full_items_per_s"] = n / t_full
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="gpt,smollm2", help=f"comma list of {', '.join(MODELS)} or model folders")
    p.add_argument("--tasks", default="piqa")
    p.add_argument("--configs", default="0:100,5:20", help="comma list of k:limit")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--with-full", action="store_true", help="also time ours without context sharing")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "evals.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    from zerolm.evals.lm_eval_ref import make_lm_eval_model
    from zerolm.evals.lm import load_lm

    configs = [(int(c.split(":")[0]), int(c.split(":")[1])) for c in args.configs.split(",")]
    work = Path(args.out).parent / "evals_work"
    rows = []
    for name in args.models.split(","):
        model = MODELS.get(name, name)
        if model.startswith("runs/") and not (REPO / model).is_dir():
            print(f"skip {name}: {model} not found (make quickstart)")
            continue
        model = str(REPO / model) if (REPO / model).is_dir() else model
        lm = load_lm(model, batch_size=args.batch_size)
        hflm = make_lm_eval_model(model, args.batch_size)
        for task in args.tasks.split(","):
            for k, limit in configs:
                row = bench_one(model, lm, hflm, task, k, limit, args.seed, work, args.batch_size, args.with_full)
                row["model"] = name
                rows.append(row)
                print(json.dumps({key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}),
                      flush=True)
        del lm, hflm
    head = (f"{'model':<8} {'task':<15} {'k':>2} {'n':>4} {'ours it/s':>9} {'lm-eval it/s':>12} {'speedup':>7}"
            f" {'engine it/s':>11} {'speedup':>7}  {'acc ours':>8} {'acc lm-eval':>11} {'max Δpts':>8}"
            f" {'max |Δll|':>9}")
    print("\n" + head)
    for r in rows:
        acc_o, acc_r = r["metrics_ours"].get("acc"), r["metrics_lm_eval"].get("acc")
        print(f"{r['model']:<8} {r['task']:<15} {r['k']:>2} {r['n']:>4} {r['ours_items_per_s']:>9.2f} "
              f"{r['lm_eval_items_per_s']:>12.2f} {r['speedup']:>6.2f}x {r['lm_eval_engine_items_per_s']:>11.2f} "
              f"{r['speedup_vs_engine']:>6.2f}x  {acc_o:>8.4f} {acc_r:>11.4f} "
              f"{r['max_abs_points_diff']:>8.3f} {r['max_abs_ll_diff']:>9.2e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=2, default=float) + "\n")
    print(f"\nwritten {out}")
    bad = [r for r in rows if r["max_abs_points_diff"] > 0.5 or not r["same_prompts"]]
    for r in bad:
        print(f"DISAGREEMENT: {r['model']} {r['task']} k={r['k']}: {r['max_abs_points_diff']:.3f} points, "
              f"same prompts: {r['same_prompts']}")
    slow = [r for r in rows if r["speedup"] < 1.5]
    if slow:
        print("below the 1.5x target (end to end): "
              + ", ".join(f"{r['model']} {r['task']} k={r['k']} {r['speedup']:.2f}x" for r in slow))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
