"""Which masked-LM recipe learns within the quickstart's budget? Runs the real quickstart BERT job
(``torchrun --standalone --nproc_per_node 2 -m zerolm.pretrain --config configs/pretrain/quickstart_bert.yaml``:
300 steps × global batch 16 × seq 128, ZeRO-2) once per (recipe, seed), each with its config overrides,
one run at a time, and prints a markdown table: recipe, seed, validation MLM loss and masked-token
accuracy (both at the fixed evaluation masking rate ``data.eval_mlm_probability``, 15%), wall seconds.

Every finished run is appended to ``bench/results/mlm_recipe.jsonl`` (one JSON object per run: recipe,
seed, overrides, metrics, wall seconds, exit code), so a sweep can be stopped and the table rebuilt
with ``--table-only``.

    .venv/bin/python bench/mlm_recipe.py --recipes mbert30 mbert40 --seeds 1234
    .venv/bin/python bench/mlm_recipe.py --table-only

A recipe is a name in :data:`RECIPES` or an ad-hoc ``name:key=value,key=value`` (overrides of the
quickstart config). The seed sets both ``train.seed`` (init, dropout) and ``data.seed`` (shuffling,
masking).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import run_pretrain  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/pretrain/quickstart_bert.yaml"
RESULTS = ROOT / "bench" / "results" / "mlm_recipe.jsonl"

# every recipe names family, shape, masking rate and lr itself, whatever the quickstart file says
_BERT = ["model.family=bert", "model.preset=small", "model.d_ff=1024", "train.warmup_steps=30"]
_MBERT = ["model.family=modernbert", "model.preset=small", "train.warmup_steps=30"]
#: name → overrides of the quickstart config (applied on top of whatever the file says).
RECIPES: dict[str, list[str]] = {
    # the recipe the quickstart shipped before issue 14: post-LN BERT, 15% masking, lr 1e-3
    "bert15-1e-3": [*_BERT, "data.mlm_probability=0.15", "train.lr=1e-3"],
    "bert30-2e-3": [*_BERT, "data.mlm_probability=0.30", "train.lr=2e-3"],
    "bert40-1e-3": [*_BERT, "data.mlm_probability=0.40", "train.lr=1e-3"],
    # ModernBERT 4 × 256, GLU width 768 (3·d_model) as in the calibration run, global attention everywhere
    "mbert15-2e-3": [*_MBERT, "model.d_ff=768", "data.mlm_probability=0.15", "train.lr=2e-3"],
    "mbert30-1e-3": [*_MBERT, "model.d_ff=768", "data.mlm_probability=0.30", "train.lr=1e-3"],
    "mbert30-2e-3": [*_MBERT, "model.d_ff=768", "data.mlm_probability=0.30", "train.lr=2e-3"],
    "mbert30-3e-3": [*_MBERT, "model.d_ff=768", "data.mlm_probability=0.30", "train.lr=3e-3"],
    "mbert40-2e-3": [*_MBERT, "model.d_ff=768", "data.mlm_probability=0.40", "train.lr=2e-3"],
    "mbert40-3e-3": [*_MBERT, "model.d_ff=768", "data.mlm_probability=0.40", "train.lr=3e-3"],
    # warm-up 10 / 60 of 300 steps instead of 30; AdamW beta2 0.98 instead of 0.95
    "mbert30-2e-3-wu10": [*_MBERT, "model.d_ff=768", "data.mlm_probability=0.30", "train.lr=2e-3", "train.warmup_steps=10"],
    "mbert30-2e-3-wu60": [*_MBERT, "model.d_ff=768", "data.mlm_probability=0.30", "train.lr=2e-3", "train.warmup_steps=60"],
    "mbert30-2e-3-b2.98": [*_MBERT, "model.d_ff=768", "data.mlm_probability=0.30", "train.lr=2e-3", "train.beta2=0.98"],
    # ModernBERT's own GLU width rule (1.5·d_model = 384)
    "mbert30-2e-3-ff384": [*_MBERT, "model.d_ff=384", "data.mlm_probability=0.30", "train.lr=2e-3"],
}


def parse_recipe(spec: str) -> tuple[str, list[str]]:
    """``name`` (a key of :data:`RECIPES`) or ``name:key=value,key=value`` → (name, overrides)."""
    if ":" in spec:
        name, rest = spec.split(":", 1)
        return name, [kv for kv in rest.split(",") if kv]
    if spec not in RECIPES:
        raise SystemExit(f"unknown recipe {spec!r}; known: {', '.join(RECIPES)} (or name:key=value,...)")
    return spec, RECIPES[spec]


def run_one(name: str, overrides: list[str], seed: int, nproc: int, run_root: Path) -> dict:
    """Train one (recipe, seed) with torchrun and return its record (metrics from the run's result.json)."""
    run_dir = run_root / f"{name}-s{seed}"
    args = [*overrides, f"train.seed={seed}", f"data.seed={seed}"]
    log = run_root / f"{name}-s{seed}.log"
    t0 = time.perf_counter()
    rc = run_pretrain(run_dir, args, config=CONFIG, nproc=nproc, timeout=None, output=log, check=False).returncode
    wall = time.perf_counter() - t0
    result = {}
    if (run_dir / "result.json").is_file():
        result = json.loads((run_dir / "result.json").read_text())
    return {"recipe": name, "seed": seed, "overrides": overrides, "rc": rc, "wall_s": round(wall, 1),
            "eval_loss": result.get("eval/loss"), "eval_accuracy": result.get("eval/accuracy"),
            "eval_tokens": result.get("eval/tokens"), "step": result.get("step"), "log": str(log)}


def table(records: list[dict]) -> str:
    """The markdown table of run records (one row per run, in order)."""
    lines = ["| recipe | seed | val loss | masked-token acc | wall s |", "|---|---|---|---|---|"]
    for r in records:
        loss = f"{r['eval_loss']:.3f}" if r.get("eval_loss") is not None else f"failed (rc {r['rc']})"
        acc = f"{r['eval_accuracy']:.3f}" if r.get("eval_accuracy") is not None else "-"
        lines.append(f"| {r['recipe']} | {r['seed']} | {loss} | {acc} | {r['wall_s']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", nargs="*", default=["mbert30-2e-3", "mbert40-2e-3"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[1234])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--run-root", default="runs/bench_mlm")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--table-only", action="store_true", help="print the table of the results file and exit")
    a = ap.parse_args()
    results = Path(a.results)
    if not a.table_only:
        results.parent.mkdir(parents=True, exist_ok=True)
        for spec in a.recipes:
            name, overrides = parse_recipe(spec)
            for seed in a.seeds:
                rec = run_one(name, overrides, seed, a.nproc, ROOT / a.run_root)
                with open(results, "a") as fh:  # one line per finished run: a stopped sweep keeps its runs
                    fh.write(json.dumps(rec) + "\n")
                print(table([rec]).splitlines()[-1], flush=True)
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.is_file() else []
    print(table(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
