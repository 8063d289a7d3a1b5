"""Benchmark: continued (domain-adaptive) pretraining with ``model.init_from`` on real data.

What it runs. ``torchrun --standalone --nproc_per_node 2 -m zerolm.pretrain --config CONFIG`` with
``model.init_from=BASE`` on one source of the bundled corpus (default: SmolLM2-135M on
``legal_multilexsum``, ``configs/pretrain/continue_smollm2_legal.yaml``), then ``zerolm export``.
The in-loop downstream evals of the config (PIQA, BoolQ) are read from the run's ``metrics.jsonl``
(step 0 = the base model: ``train.eval_at_start``).

How it is scored, independently of the trainer: the held-out documents of the source
(``data/corpus/validation/<source>-*.jsonl``), tokenized with the base model's own tokenizer by the
packed validation pipeline (each document + EOS, concatenated, cut into ``seq_len`` blocks; the first
``--eval-batches`` batches), scored by the base folder and by the exported folder, each loaded with
``AutoModelForCausalLM.from_pretrained`` alone: mean next-token cross-entropy in float64 and its
perplexity. Target (issue 15): perplexity ≥ 10 % lower after ≤ 20 minutes on 2 CPU cores; PIQA
acc_norm and BoolQ acc within 2 points of the start (± their standard errors).

    .venv/bin/python bench/continued_pretraining.py                      # SmolLM2 → legal, 40 steps
    .venv/bin/python bench/continued_pretraining.py --init-from runs/quickstart/gpt --source legal_multilexsum \\
        --config configs/pretrain/quickstart_gpt.yaml --steps 100 --lr 5e-4 --no-eval-tasks

Results: one JSON line appended to ``--out`` (default ``bench/results/continued_pretraining.jsonl``)
and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import run_pretrain  # noqa: E402

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def perplexity(model_dir: Path, run_dir: Path, batches: int) -> dict:
    """Mean next-token cross-entropy (nats, float64) of ``model_dir`` on the first ``batches``
    validation batches of the run's config (world size 1), and its perplexity."""
    import torch

    from transformers import AutoModelForCausalLM

    from zerolm.config import load_config
    from zerolm.data_pipeline.loader import PackedDataLoader

    cfg = load_config(run_dir / "config.yaml")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    loader = PackedDataLoader(cfg.data, split="validation", rank=0, world_size=1)
    nll, count, t0 = 0.0, 0, time.perf_counter()
    for _, batch in zip(range(batches), loader):
        labels = batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).logits[:, :-1].double()
        target = labels[:, 1:]
        keep = target != -100
        logp = torch.log_softmax(logits[keep], dim=-1)
        nll -= float(logp.gather(1, target[keep].unsqueeze(1)).sum())
        count += int(keep.sum())
    loss = nll / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/pretrain/continue_smollm2_legal.yaml")
    ap.add_argument("--init-from", default=None, help="model.init_from (default: the config's)")
    ap.add_argument("--source", default="legal_multilexsum", help="corpus source to continue on")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--steps", type=int, default=None, help="train.max_steps (default: the config's)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=None, help="train.seed and data.seed (default: the config's)")
    ap.add_argument("--eval-batches", type=int, default=16, help="validation batches for the independent perplexity")
    ap.add_argument("--no-eval-tasks", action="store_true", help="train.eval_tasks=[] (no in-loop downstream evals)")
    ap.add_argument("--work", default="runs/bench_continue")
    ap.add_argument("--out", default="bench/results/continued_pretraining.jsonl")
    a = ap.parse_args()

    work = (REPO / a.work).resolve()
    run_dir = work / "run"
    export = work / "export"
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    overrides = [
        f"data.sources=[{{name: {a.source}, paths: ['{a.corpus}/train/{a.source}-*.jsonl']}}]",
        f"data.validation_sources=[{{name: {a.source}, paths: ['{a.corpus}/validation/{a.source}-*.jsonl']}}]",
        "train.eval_at_start=true",
        "tracking.wandb_mode=offline",
    ]
    if a.init_from:
        overrides += [f"model.init_from={a.init_from}", "model.preset=null"]
    if a.steps:
        overrides += [f"train.max_steps={a.steps}", f"train.eval_every={a.steps}", f"train.save_every={a.steps}"]
    if a.lr:
        overrides.append(f"train.lr={a.lr}")
    if a.seed is not None:
        overrides += [f"train.seed={a.seed}", f"data.seed={a.seed}"]
    if a.no_eval_tasks:
        overrides.append("train.eval_tasks=[]")
    t0 = time.perf_counter()
    run_pretrain(run_dir, overrides, config=a.config, bundled_data=False, timeout=None, output="inherit")
    train_s = time.perf_counter() - t0
    subprocess.run([sys.executable, "-m", "zerolm", "export", str(run_dir), str(export)], cwd=REPO, check=True)

    from zerolm.config import load_config
    from zerolm.pretrain.init_from import read_record

    base = Path(read_record(run_dir)["path"])
    before = perplexity(base, run_dir, a.eval_batches)
    after = perplexity(export, run_dir, a.eval_batches)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cfg = load_config(run_dir / "config.yaml")
    evals = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("eval/") and "/" in k[5:]:
                evals.setdefault(k, {})[r["step"]] = v
    train_rows = [r for r in rows if "train/tokens_per_second" in r]
    tps = [r["train/tokens_per_second"] for r in train_rows[1:]] or [r["train/tokens_per_second"] for r in train_rows]
    mfu = [r["train/mfu"] for r in train_rows[1:]] or [r["train/mfu"] for r in train_rows]
    result = json.loads((run_dir / "result.json").read_text())
    record = {
        "init_from": cfg.model.init_from, "base": str(base), "seed": cfg.train.seed, "source": a.source, "steps": result["step"],
        "tokens": result["tokens_seen"], "lr": cfg.train.lr, "seq_len": cfg.data.seq_len,
        "global_batch": cfg.train.global_batch_size, "wall_s": round(train_s, 1),
        "before": before, "after": after, "perplexity_change": after["perplexity"] / before["perplexity"] - 1,
        "tokens_per_s": sorted(tps)[len(tps) // 2] if tps else None, "mfu": sorted(mfu)[len(mfu) // 2] if mfu else None,
        "in_loop": evals, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = REPO / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"\n{cfg.model.init_from} on {a.source}: {result['step']} steps, {result['tokens_seen']:,} tokens, "
          f"{train_s / 60:.1f} min (incl. start-up and evals)")
    print(f"held-out {a.source} perplexity: {before['perplexity']:.2f} → {after['perplexity']:.2f} "
          f"({100 * record['perplexity_change']:+.1f} %; {after['tokens']:,} tokens)")
    if record["tokens_per_s"]:
        print(f"median training throughput {record['tokens_per_s']:.0f} tokens/s, MFU {100 * record['mfu']:.1f} %")
    for k, by_step in sorted(evals.items()):
        if k.endswith("_stderr"):
            continue
        err = evals.get(k + "_stderr", {})
        cells = ", ".join(f"step {s}: {v:.3f}" + (f" ± {err[s]:.3f}" if s in err else "") for s, v in sorted(by_step.items()))
        print(f"{k}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
