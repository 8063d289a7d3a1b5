"""Benchmark: validation loss at equal tokens — zerolm's pretraining vs Hugging Face ``Trainer``.

What is compared. One model family (``--family gpt2`` causal-LM; ``bert`` or ``modernbert`` masked-LM),
trained twice per seed from the same zerolm config file (generated here):

* **zerolm**: ``torchrun --standalone --nproc_per_node 2 -m zerolm.pretrain --config <yaml>``, then
  ``zerolm export RUN_DIR OUT`` (the Hugging Face folder users get).
* **HF**: ``transformers.Trainer`` (``bench/pretrain_quality_worker.py hf``, torchrun, 2 ranks) on the
  run_clm.py / run_mlm.py data recipe — tokenize every training document, append the separator,
  concatenate, group into ``seq_len`` blocks, ``DataCollatorForLanguageModeling(mlm=False)`` or
  ``(mlm=True, mlm_probability=p)`` — then ``Trainer.save_model``.

Kept identical: the model (``pretrain.models.build_model`` after ``torch.manual_seed(seed)``, as
zerolm's trainer does: the same initial weights), the tokenizer (``data/tokenizer``), the corpus
(``data/corpus`` train), 2 ranks (gloo, ``OMP_NUM_THREADS=1``), the DeepSpeed config
(``pretrain.ds_config.build_ds_config``: ZeRO-2, fp32, clipping 1.0), torch AdamW with the same lr,
betas, eps and weight decay (decay on matrices/embeddings, none on biases/norms — the worker checks
that HF's grouping equals zerolm's and records it), the LR schedule (zerolm's ``lr_at``: linear
warm-up (s+1)/W then cosine to ``min_lr_ratio``; HF gets it as a ``LambdaLR`` from a ``Trainer``
subclass overriding ``create_scheduler`` — HF's own ``cosine_with_min_lr`` warms up from 0, one step
behind), micro-batch × 2 ranks = global batch, ``seq_len``, steps, so tokens = steps × global batch ×
seq_len. zerolm's spike recovery is off (HF has none; a rollback would change the data seen).

How it is scored. One evaluator, in the bench, for both (``… worker eval``): the validation split
(``data/corpus/validation``, files sorted) tokenized with zerolm's tokenizer, each document + its
separator, concatenated, cut into fixed blocks (masked-LM: [CLS] + seq_len−2 tokens + [SEP]); for
masked-LM one fixed 15 % 80/10/10 masking, drawn once from ``torch.Generator().manual_seed(…)``, of
the blocks repeated ``--eval-mask-draws`` times (default 4: ~20 k masked tokens instead of ~5 k),
whatever ``--mlm-probability`` training used. Each final model is loaded with
``AutoModelFor{CausalLM,MaskedLM}.from_pretrained`` (a weight that does not load is an error);
reported: mean cross-entropy over the predicted tokens (nats; ``logsumexp − target logit`` in
float64), top-1 accuracy on them, and per seed zerolm − HF with its paired per-token standard error
(tokens of a block are correlated: a lower bound on the evaluation noise). Target: zerolm ≤ HF +
0.02 nats per seed; the seed-to-seed spread |seed1 − seed2| of each trainer is printed beside it so
the target can be read against the training noise.

Defaults: ``--family bert``, preset small, micro-batch 8, seq_len 128, 2000 steps, 2 seeds (1234,
1235), lr = the quickstart's (gpt2 2e-3, masked-LM 1e-3), warm-up 10 % of the steps, cosine to 0.1×,
AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1, clipping 1.0 (zerolm's ``TrainConfig``).

Order: per seed, zerolm then HF for even seed indices and HF then zerolm for odd ones (ABBA) —
only wall times depend on it. Results: one JSON line per run plus a summary line appended to
``--out`` (default ``bench/results/pretrain_quality.jsonl``).

Differences that remain (the two recipes, not removable without changing either):

* Data order and mixture. zerolm deals the training files to ``global_batch`` logical shards
  (16 files, 16 shards → one file per sequence slot of every global batch, file-level shuffle,
  looping each file on its own; with files of unequal size the shards drift apart by epochs —
  ``zerolm data prepare`` now writes equal files, which moved the masked-LM's 2000-step gap by less
  than its seed-to-seed scatter, docs/recipes.md). HF shuffles all blocks of the corpus uniformly each
  epoch (DistributedSampler).
  2000 steps × 16 × 128 = 4.1 M tokens ≈ 1.1 epochs of the 3.7 M-token corpus. zerolm's
  ``data.shuffle_window`` (``--shuffle-window``, default: the shipped quickstart config's — GPT 512,
  masked-LM 4096) emits each shard's blocks in a shuffled order within windows of that many blocks.
  Measured (gpt2 small, 600 steps, seed 1234): without it zerolm was 0.075 nats behind HF (both
  seeds), with 512 level (−0.001); re-splitting the corpus into 64 randomly mixed files instead
  changed nothing (5.188 vs 5.189): the order within a shard, not the file imbalance, was the gap.
  The ModernBERT masked-LM at 2000 steps needed more: +0.016 / +0.046 nats (seeds 1234 / 1235) behind
  HF at 512, +0.005 / −0.001 at 4096 (a window longer than a shard's 2000 samples: one shuffle over
  the whole run; docs/recipes.md).
* Masking (masked-LM). zerolm masks each block with a seed derived from (seed, shard, sample)
  (numpy PCG64), random replacements from the non-special ids; HF's collator masks with the global
  torch RNG (``set_seed(seed)`` on every rank, so both ranks may draw the same position pattern),
  random replacements from the whole vocabulary. Same 80/10/10 and rate.
* Masked-LM block layout: by default HF gets zerolm's layout ([CLS] + 126 tokens + [SEP], documents
  separated by [SEP]) so that the evaluation blocks are in-distribution for both;
  ``--hf-mlm-blocks run_mlm`` gives HF run_mlm.py's (each document [CLS] … [SEP], 128-token blocks).
* Loss normalisation: HF runs with ``average_tokens_across_devices=False``, so both trainers take
  each rank's mean token loss and DeepSpeed averages the gradients over ranks — identical
  normalisation. transformers 5's default (True, ``--hf-average-tokens``) divides the summed loss by
  the global token count and multiplies by the world size; ``BertForMaskedLM`` ignores the count
  (plain mean ``CrossEntropyLoss``), so on 2 ranks HF then trains BERT on 2× its loss — logged
  loss 14.4 for a validation loss of 7.3 in a 20-step run here, gradients doubled, gradient clipping
  at 1.0 acting like 0.5. GPT-2 and ModernBERT honour the count (no doubling).
* Packing across documents without attention masks between them in both (GPT-2/RoBERTa style);
  run_clm.py drops each 1000-document group's remainder, zerolm's packer carries it over.

Cost. Measured here with ``--steps 20 --seeds 1``, preset small, seq_len 128, micro-batch 8, while
other jobs loaded the 2 cores (load average ~4.5): 1.4–1.7 s per step for either trainer (gpt2 and
bert alike), ~15 s start-up per zerolm run (+ ~5 s export), ~30 s per HF run (tokenizing the
corpus: ~16 s), evaluation 10–30 s per model (×4 mask draws for masked-LM). So ``--steps 2000
--seeds 2`` (4 trainings) takes about 3.5 h per family at that pace; on a quiet machine, at the
quickstart's pace (~0.6–0.8 s/step), about 1.5–2 h. The bench prints its own projection from the
step times it measured (last line of the table).

Needs the prepared corpus and tokenizer (``zerolm data prepare --out data/corpus``; ``zerolm tokenizer
train --data data/corpus --out data/tokenizer``). Run it on a quiet machine::

    .venv/bin/python bench/pretrain_quality.py --family gpt2 [--steps 2000] [--seeds 2] [--preset small]
        [--micro-batch 8] [--seq-len 128] [--lr …] [--warmup-steps …] [--mlm-probability 0.15]
        [--hf-mlm-blocks zerolm|run_mlm] [--hf-average-tokens] [--eval-mask-draws 4] [--work-dir DIR]
        [--out bench/results/pretrain_quality.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_args import add_run_args
from pretrain_throughput import ROOT, _check_data, _run, _torchrun

WORKER = Path(__file__).resolve().parent / "pretrain_quality_worker.py"
TARGET_NATS = 0.02
#: Default learning rate per objective: the quickstart GPT's (configs/pretrain/quickstart_gpt.yaml) and the
#: former post-LN BERT quickstart's (the ModernBERT quickstart's is 2e-3: pass ``--lr 2e-3``).
DEFAULT_LR = {"clm": 2e-3, "mlm": 1e-3}


def shipped_shuffle_window(objective: str) -> int:
    """``data.shuffle_window`` of the shipped quickstart config for ``objective`` ("clm" → quickstart_gpt,
    "mlm" → quickstart_bert): the bench compares what a user runs."""
    import yaml

    name = "quickstart_gpt" if objective == "clm" else "quickstart_bert"
    cfg = yaml.safe_load((ROOT / "configs" / "pretrain" / f"{name}.yaml").read_text())
    return int(cfg["data"]["shuffle_window"])


def zerolm_config(a: argparse.Namespace, seed: int, run_dir: Path, objective: str) -> dict:
    """The zerolm config both trainers read (JSON is YAML)."""
    corpus = os.path.abspath(a.corpus)
    model = {"family": a.family, "preset": a.preset, "dropout": 0.0}
    model.update({k: v for k, v in (("n_layer", a.n_layer), ("d_model", a.d_model), ("n_head", a.n_head),
                                    ("d_ff", a.d_ff)) if v})
    return {
        "data": {
            "sources": [{"name": "bundled", "paths": [os.path.join(corpus, "train", "*.jsonl")]}],
            "validation_sources": [{"name": "bundled", "paths": [os.path.join(corpus, "validation", "*.jsonl")]}],
            "tokenizer_dir": os.path.abspath(a.tokenizer), "objective": objective, "seq_len": a.seq_len,
            "micro_batch_size": a.micro_batch, "num_workers": 0, "seed": seed, "mlm_probability": a.mlm_probability,
            "shuffle_window": shipped_shuffle_window(objective) if a.shuffle_window is None else a.shuffle_window,
        },
        "model": model,
        "train": {
            "run_dir": str(run_dir), "max_steps": a.steps, "gradient_accumulation_steps": a.grad_accum,
            "lr": a.lr, "warmup_steps": a.warmup_steps, "min_lr_ratio": a.min_lr_ratio, "seed": seed,
            "zero_stage": a.zero_stage, "precision": a.precision, "log_every": a.log_every,
            "eval_every": 10**9, "eval_batches": 1, "save_every": 10**9, "keep_last": 1,
            "spike_recovery": {"enabled": False},
        },
        "tracking": {"wandb_mode": "disabled"},
    }


def run_zerolm(a, work: Path, seed: int, cfg_path: Path, run_dir: Path) -> dict:
    wall = _run(f"zerolm (seed {seed})", [*_torchrun(2), "-m", "zerolm.pretrain", "--config", str(cfg_path)],
                work / f"zerolm_s{seed}.log", a.timeout)
    out = work / f"zerolm_s{seed}_hf"
    t0 = time.perf_counter()
    _run(f"zerolm export (seed {seed})", [sys.executable, "-m", "zerolm", "export", str(run_dir), str(out), "--quiet"],
         work / f"zerolm_s{seed}_export.log", a.timeout)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    losses = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    steps = [r["train/step_time_s"] for r in rows if "train/step_time_s" in r]
    return {"trainer": "zerolm", "wall_s": wall, "step_s_median": statistics.median(steps) if steps else None, "export_s": time.perf_counter() - t0, "model_dir": str(out),
            "train_loss_log": losses, "lr_log": [(r["step"], r["train/lr"]) for r in rows if "train/lr" in r],
            "result": json.loads((run_dir / "result.json").read_text())}


def run_hf(a, work: Path, seed: int, cfg_path: Path) -> dict:
    out, model_dir = work / f"hf_s{seed}.json", work / f"hf_s{seed}_model"
    wall = _run(f"HF Trainer (seed {seed})", [*_torchrun(2), str(WORKER), "hf", "--config", str(cfg_path), "--out", str(out),
                                              "--model-out", str(model_dir), "--hf-mlm-blocks", a.hf_mlm_blocks,
                                              *(["--hf-average-tokens"] if a.hf_average_tokens else [])],
                work / f"hf_s{seed}.log", a.timeout)
    return {**json.loads(out.read_text()), "wall_s": wall, "model_dir": str(model_dir)}


def render(a, runs: list[dict], summary: dict) -> str:
    mlm = summary["objective"] == "mlm"
    L = [f"{a.family} (preset {a.preset}), seq_len {a.seq_len}, global batch {summary['global_batch']} "
         f"({a.micro_batch} × {a.grad_accum} × 2 ranks), lr {a.lr:g}, warm-up {a.warmup_steps}, cosine to "
         f"{a.min_lr_ratio:g}×; " + (f"training masking {a.mlm_probability:.0%}, evaluation 15% (fixed); " if mlm else "")
         + f"validation: {summary['eval_blocks']} blocks"
         + (f" × {summary['eval_mask_draws']} fixed mask draws" if mlm else "")
         + f", {summary['eval_tokens']} predicted tokens", ""]
    hdr = "| family | trainer | seed | steps | tokens | val loss (nats) | " + ("masked acc | " if mlm else "next-token acc | ") \
          + "train loss (last log) | wall s |"
    L += [hdr, "|" + "---|" * (hdr.count("|") - 1)]
    for r in runs:
        L.append(f"| {a.family} | {r['trainer']} | {r['seed']} | {a.steps} | {r['tokens']:,} | {r['val_loss']:.4f} | "
                 f"{r['val_acc']:.4f} | {r['train_loss_last']:.4f} | {r['wall_s']:.0f} |")
    if summary["diff_per_seed"]:
        L += ["", "| seed | zerolm − HF (nats) | ± paired s.e. | target ≤ +%.2f |" % TARGET_NATS, "|---|---|---|---|"]
    for s, d in summary["diff_per_seed"].items():
        se = summary["paired_se"].get(str(s))
        L.append(f"| {s} | {d:+.4f} | {f'{se:.4f}' if se is not None else '-'} | {'MET' if d <= TARGET_NATS else 'NOT MET'} |")
    if summary.get("spread"):
        L.append("")
        L.append("seed-to-seed spread |seed1 − seed2| of val loss: " + ", ".join(
            f"{k} {v:.4f}" for k, v in summary["spread"].items()))
    if summary["diff_mean"] is not None:
        L.append(f"mean zerolm − HF over seeds: {summary['diff_mean']:+.4f} nats → target "
                 + ("MET" if summary["target_met"] else "NOT MET"))
    p = summary["projected_2000x2"]
    L.append("median step s: " + ", ".join(f"{k} {v:.2f}" for k, v in p["step_s"].items() if v)
             + f" → --steps 2000 --seeds 2 would take ~{p['s'] / 60:.0f} min on this machine now")
    for note in summary["notes"]:
        L.append("note: " + note)
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap)
    # model shape from --preset unless --n-layer/--d-model/--n-head are given
    ap.set_defaults(seq_len=128, micro_batch=8, n_layer=None, d_model=None, n_head=None)
    ap.add_argument("--family", default="bert", help="gpt2 (causal-LM), bert or modernbert (masked-LM)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--shuffle-window", type=int, default=None,
                    help="zerolm data.shuffle_window (default: the shipped quickstart config's for the objective — "
                         "GPT 512, masked-LM 4096; 0 = the packed stream's order)")
    ap.add_argument("--d-ff", type=int, default=None, help="feed-forward width (default: the family's; the quickstart ModernBERT: 768)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, default=2, help="number of seeds (seed0, seed0+1, …)")
    ap.add_argument("--seed0", type=int, default=1234)
    ap.add_argument("--lr", type=float, default=None, help="default: the quickstart's (gpt2 2e-3, masked-LM 1e-3)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of --steps (the quickstart's ratio)")
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--mlm-probability", type=float, default=0.15, help="training masking rate (evaluation: 15%%)")
    ap.add_argument("--hf-mlm-blocks", choices=["zerolm", "run_mlm"], default="zerolm")
    ap.add_argument("--eval-mask-draws", type=int, default=4,
                    help="masked-LM evaluation: fixed 15%% maskings of the validation blocks (more tokens, less noise)")
    ap.add_argument("--hf-average-tokens", action="store_true",
                    help="HF: average_tokens_across_devices=True, transformers 5's default (off here: see the docstring)")
    ap.add_argument("--log-every", type=int, default=None, help="default: steps/20")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per training run")
    ap.add_argument("--work-dir", default=None, help="keep runs, models and logs here (default: a temp dir, removed)")
    ap.add_argument("--out", default="bench/results/pretrain_quality.jsonl")
    ap.add_argument("--trainers", default="zerolm,hf", choices=["zerolm,hf", "zerolm", "hf"],
                    help="train and evaluate only one side (a diagnostic: no zerolm − HF difference is reported)")
    a = ap.parse_args()
    os.chdir(ROOT)
    from zerolm.pretrain.models import objective_of

    objective = objective_of(a.family)
    a.lr = a.lr if a.lr is not None else DEFAULT_LR[objective]
    a.warmup_steps = a.warmup_steps if a.warmup_steps is not None else max(a.steps // 10, 1)
    a.log_every = a.log_every or max(a.steps // 20, 1)
    _check_data(a.corpus, a.tokenizer)
    work = Path(a.work_dir).resolve() if a.work_dir else Path(tempfile.mkdtemp(prefix="zerolm_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    global_batch = a.micro_batch * a.grad_accum * 2
    tokens = a.steps * global_batch * a.seq_len
    t_start = time.perf_counter()
    runs: list[dict] = []
    try:
        for i in range(a.seeds):
            seed = a.seed0 + i
            run_dir = work / f"zerolm_s{seed}_run"
            # a --work-dir used before: zerolm would resume from the old run's checkpoint (and train nothing)
            for old in (run_dir, work / f"zerolm_s{seed}_hf", work / f"hf_s{seed}_model"):
                shutil.rmtree(old, ignore_errors=True)
            cfg = zerolm_config(a, seed, run_dir, objective)
            cfg_path = work / f"config_s{seed}.yaml"
            cfg_path.write_text(json.dumps(cfg, indent=1))
            order = ("zerolm", "hf") if i % 2 == 0 else ("hf", "zerolm")  # ABBA over seeds
            for kind in (k for k in order if k in a.trainers.split(",")):
                print(f"[{time.perf_counter() - t_start:7.1f}s] {kind} seed {seed} …", flush=True)
                r = run_zerolm(a, work, seed, cfg_path, run_dir) if kind == "zerolm" else run_hf(a, work, seed, cfg_path)
                runs.append({**r, "seed": seed, "config": str(cfg_path), "order": len(runs)})
        print(f"[{time.perf_counter() - t_start:7.1f}s] evaluating {len(runs)} models …", flush=True)
        ev_out = work / "eval.json"
        models = [f"{r['trainer']}_s{r['seed']}={r['model_dir']}" for r in runs]
        _run("evaluation", [sys.executable, str(WORKER), "eval", "--config", runs[0]["config"], "--out", str(ev_out),
                            "--eval-mask-draws", str(a.eval_mask_draws), "--models", *models], work / "eval.log", a.timeout)
        ev = json.loads(ev_out.read_text())
    except BaseException:
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    for r in runs:
        r.update(ev["models"][f"{r['trainer']}_s{r['seed']}"])
        r["tokens"] = tokens
        r["train_loss_last"] = r["train_loss_log"][-1][1] if r["train_loss_log"] else float("nan")
    by = {(r["trainer"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    both = a.trainers == "zerolm,hf"
    diff = {s: by[("zerolm", s)]["val_loss"] - by[("hf", s)]["val_loss"] for s in seeds} if both else {}
    spread = {}
    if len(seeds) >= 2:
        for t in a.trainers.split(","):
            v = [by[(t, s)]["val_loss"] for s in seeds]
            spread[t] = max(v) - min(v)
    notes = []
    inits = {r.get("init_digest") for r in runs if r["trainer"] == "hf"}
    hf0 = next((r for r in runs if r["trainer"] == "hf"), None)
    if hf0 and not hf0["decay_groups_match_zerolm"]:
        notes.append(f"HF decays {hf0['decay_only_hf']} and not {hf0['decay_only_zerolm']} unlike zerolm")
    if hf0 and hf0["blocks_in_dataset"] < a.steps * global_batch:
        notes.append(f"HF's dataset has {hf0['blocks_in_dataset']} blocks for {a.steps * global_batch} samples: "
                     f"{hf0['epochs']:.2f} epochs")
    # what --steps 2000 --seeds 2 would take at the step times measured here (start-up, export, eval kept)
    fixed = sum(r["wall_s"] + r.get("export_s", 0) - (r["step_s_median"] or 0) * a.steps for r in runs) / len(seeds)
    per_step = sum(r["step_s_median"] or 0 for r in runs) / len(seeds)
    ev_s = sum(r["eval_s"] for r in runs) / len(seeds)
    projected = {"steps": 2000, "seeds": 2, "s": 2 * (fixed + per_step * 2000 + ev_s),
                 "step_s": {f"{r['trainer']}_s{r['seed']}": r["step_s_median"] for r in runs}}
    summary = {
        "kind": "summary", "family": a.family, "objective": objective, "preset": a.preset, "steps": a.steps,
        "seeds": seeds, "tokens": tokens, "global_batch": global_batch, "seq_len": a.seq_len, "lr": a.lr,
        "warmup_steps": a.warmup_steps, "min_lr_ratio": a.min_lr_ratio,
        "mlm_probability": a.mlm_probability if objective == "mlm" else None, "eval_blocks": ev["blocks"],
        "eval_tokens": runs[0]["val_tokens"], "eval_mask_draws": ev.get("mask_draws"), "diff_per_seed": diff,
        "paired_se": {k: v["se"] for k, v in ev.get("paired", {}).items()}, "diff_mean": statistics.mean(diff.values()) if diff else None,
        "spread": spread, "target_nats": TARGET_NATS, "target_met": all(d <= TARGET_NATS for d in diff.values()) if diff else None,
        "hf_init_digests": sorted(inits), "projected_2000x2": projected, "bench_wall_s": time.perf_counter() - t_start, "notes": notes,
        "command": " ".join([".venv/bin/python", "bench/pretrain_quality.py", *sys.argv[1:]]),
    }
    text = render(a, runs, summary)
    print()
    print(text)
    print(f"\nbench wall time {summary['bench_wall_s']:.0f} s")
    summary["table"] = text
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    rows = [{"kind": "run", "bench_started": stamp, "family": a.family, **{k: v for k, v in r.items() if k != "result"},
             "zerolm_result": r.get("result")} for r in runs] + [{**summary, "bench_started": stamp}]
    from zerolm.fsutil import write_jsonl

    out = Path(a.out)
    old = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    write_jsonl(out, old + rows, default=str)
    print(f"appended {len(rows)} lines to {out}")
    if not a.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
