"""Classification benchmark: test accuracy and macro-F1 of finetuned models against a TF-IDF +
logistic-regression baseline on the same stratified splits, all in one run.

    .venv/bin/python bench/classify.py                      # MiniLM-L6, quickstart BERT/GPT (if exported), TF-IDF+LR
    .venv/bin/python bench/classify.py --models minilm --datasets bbc_news --steps-scale 0.5

Each finetune is ``python -m zerolm.finetune classify`` in its own process (the same entry point users run;
one process, ZeRO-2, fp32); the baseline (scikit-learn, ``pip install -e '.[dev]'``) reads the very
splits :func:`finetune.classify.prepare_data` makes. Models ``bert``/``gpt`` are the quickstart exports
``runs/quickstart/{bert,gpt}-hf`` (``make quickstart``), skipped when absent. Targets (issue 5):
MiniLM ≥ 0.80 accuracy on Rotten Tomatoes, ≥ 0.95 on BBC News.
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

MODELS = {"minilm": "minilm", "bert": "runs/quickstart/bert-hf", "gpt": "runs/quickstart/gpt-hf"}
# per dataset: max_length, micro batch, steps (≈ 1 epoch of RT, ≈ 1.3 of BBC), per model family: lr
DATASETS = {
    "rotten_tomatoes": {"max_length": 64, "micro": 32, "steps": 320},
    "bbc_news": {"max_length": 128, "micro": 16, "steps": 150},
}
LR = {"minilm": 1e-4, "bert": 5e-4, "gpt": 5e-4}


def tfidf_baseline(dataset: str, seed: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from zerolm.finetune.classify import prepare_data
    from zerolm.config import FinetuneConfig

    t0 = time.perf_counter()
    p = prepare_data(FinetuneConfig(data=dataset, split_seed=seed))
    (tr_x, tr_y), (te_x, te_y) = p["splits"]["train"], p["splits"]["test"]
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    clf = LogisticRegression(C=10.0, max_iter=2000)
    clf.fit(vec.fit_transform(tr_x), tr_y)
    pred = clf.predict(vec.transform(te_x))
    return {"accuracy": accuracy_score(te_y, pred), "macro_f1": f1_score(te_y, pred, average="macro"),
            "examples": len(te_y), "seconds": time.perf_counter() - t0, "steps": "-"}


def finetune(model: str, dataset: str, work: Path, scale: float, seed: int) -> dict:
    d = DATASETS[dataset]
    steps = max(10, int(d["steps"] * scale))
    run_dir = work / f"{model}-{dataset}"
    cmd = [sys.executable, "-m", "zerolm.finetune", "classify", "--model", MODELS[model], "--data", dataset,
           "--run-dir", str(run_dir), f"finetune.max_length={d['max_length']}", f"finetune.split_seed={seed}",
           f"data.micro_batch_size={d['micro']}", f"train.max_steps={steps}", f"train.warmup_steps={max(1, steps // 10)}",
           f"train.lr={LR[model]}", "train.eval_every=100000", f"train.log_every={max(1, steps // 5)}",
           "tracking.wandb_mode=disabled"]
    t0 = time.perf_counter()
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    m = json.loads((run_dir / "hf" / "classification_metrics.json").read_text())
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "examples": m["examples"],
            "seconds": time.perf_counter() - t0, "steps": steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every finetune's steps (quick runs)")
    ap.add_argument("--seed", type=int, default=1234, help="split seed (finetune.split_seed)")
    ap.add_argument("--work-dir", default="runs/bench_classify")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    work = (REPO / args.work_dir).resolve()
    rows = []
    for dataset in args.datasets:
        rows.append(("tfidf+logreg", dataset, tfidf_baseline(dataset, args.seed)))
        print(f"{rows[-1][0]:>14} {dataset:>16}: {rows[-1][2]['accuracy']:.4f}", flush=True)
        for model in args.models:
            if model != "minilm" and not (REPO / MODELS[model] / "config.json").is_file():
                print(f"skip {model}: {MODELS[model]} not found (run `make quickstart`)", flush=True)
                continue
            rows.append((model, dataset, finetune(model, dataset, work, args.steps_scale, args.seed)))
            print(f"{model:>14} {dataset:>16}: {rows[-1][2]['accuracy']:.4f} ({rows[-1][2]['seconds']:.0f} s)", flush=True)
    print()
    print("| model | dataset | steps | test examples | accuracy | macro-F1 | accuracy ÷ TF-IDF | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    base = {d: r["accuracy"] for m, d, r in rows if m == "tfidf+logreg"}
    for model, dataset, r in rows:
        print(f"| {model} | {dataset} | {r['steps']} | {r['examples']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
              f"{r['accuracy'] / base[dataset]:.3f} | {r['seconds']:.0f} |")
    if args.out:
        Path(args.out).write_text(json.dumps([{"model": m, "dataset": d, **r} for m, d, r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
