"""Benchmark: DeepSpeed ZeRO communication settings (``train.comm``) on 2 ranks, one run per setting.

For each ZeRO stage in ``--stages`` the trainer runs ``torchrun --nproc_per_node 2 -m zerolm.pretrain``
with zerolm's defaults (the baseline) and with each variant of ``VARIANTS[stage]`` (one ``train.comm``
key changed), on the bundled corpus, GPT-2 6 layers × d_model 512 × 8 heads, seq_len 256, micro-batch
4, gradient accumulation 1, fp32, eager (``train.compile=off``: the comparison is about communication),
``OMP_NUM_THREADS=1`` per rank. Order per stage: baseline, v1 … vk, vk … v1, baseline (mirrored: on
this machine, whose speed drifts 15–25 % minute to minute, every setting then sits on average at the
middle of the sequence, which cancels a linear drift). Each run reports the trainer's own median
tokens/s over its logged windows after the first (``result.json`` ``throughput``); a variant's ratio
is the mean of its two runs over the mean of the baseline's two, and the spread is its two runs'
ratios to the baseline's mean. Writes ``bench/results/comm_sweep.json``::

    .venv/bin/python bench/comm_sweep.py [--stages 1,2,3] [--steps 24] [--variants NAME,NAME]
        [--out bench/results/comm_sweep.json] [-- extra.overrides=...]

Each run also records its peak RSS per rank and its validation loss (the settings must not change the
arithmetic: every run of the sweep ends at the same loss). Needs ``data/corpus`` and ``data/tokenizer``
(``make quickstart`` prepares both). About a minute per run, 28 minutes for all variants of three
stages on 2 quiet cores; the two ranks own both cores, so run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import REPO, require_bundled_data, run_pretrain  # noqa: E402

#: one train.comm key changed per variant (name → overrides); the baseline is zerolm's defaults
VARIANTS: dict[int, dict[str, list[str]]] = {
    1: {"overlap_comm=on": ["train.comm.overlap_comm=on"],
        "contiguous_gradients=false": ["train.comm.contiguous_gradients=false"],
        "buckets 2e7": ["train.comm.reduce_bucket_size=2e7", "train.comm.allgather_bucket_size=2e7"]},
    2: {"overlap_comm=on": ["train.comm.overlap_comm=on"],
        "contiguous_gradients=false": ["train.comm.contiguous_gradients=false"],
        "buckets 2e7": ["train.comm.reduce_bucket_size=2e7", "train.comm.allgather_bucket_size=2e7"]},
    3: {"overlap_comm=on": ["train.comm.overlap_comm=on"],
        "reduce_bucket_size 2e7": ["train.comm.reduce_bucket_size=2e7"],
        "param_persistence_threshold 0": ["train.comm.param_persistence_threshold=0"],
        "param_persistence_threshold 1e6": ["train.comm.param_persistence_threshold=1e6"],
        "hf-auto": ["train.comm.reduce_bucket_size=262144", "train.comm.prefetch_bucket_size=235930",
                                       "train.comm.param_persistence_threshold=5120"]},
}
# transformers' DeepSpeed integration fills "auto" with reduce_bucket_size = d_model², at ZeRO-3
# stage3_prefetch_bucket_size = 0.9·d_model² and stage3_param_persistence_threshold = 10·d_model
# (d_model = 512 here); ZeRO-1/2 get the same reduce bucket
for _stage in (1, 2):
    VARIANTS[_stage]["hf-auto"] = ["train.comm.reduce_bucket_size=262144"]

SHAPE = ["model.family=gpt2", "model.preset=null", "model.n_layer=6", "model.d_model=512", "model.n_head=8",
         "data.seq_len=256", "data.micro_batch_size=4", "train.gradient_accumulation_steps=1",
         "train.global_batch_size=null", "train.precision=fp32", "train.compile=off"]


def run_once(run_dir: Path, stage: int, steps: int, extra: list[str]) -> dict:
    """One 2-rank training run; returns its tokens/s (median over logged windows) and wall seconds."""
    t0 = time.perf_counter()
    run_pretrain(run_dir, [*SHAPE, f"train.zero_stage={stage}", f"train.max_steps={steps}",
                           f"train.log_every={max(1, steps // 8)}", f"train.eval_every={10 * steps}",
                           f"train.save_every={10 * steps}", "train.eval_batches=1",
                           "tracking.emissions.enabled=false", *extra])
    res = json.loads((run_dir / "result.json").read_text())
    ds = json.loads((run_dir / "ds_config.json").read_text()) if (run_dir / "ds_config.json").exists() else None
    return {"tokens_per_second": float(res["throughput"]["tokens_per_second"]), "wall_s": time.perf_counter() - t0,
            "peak_rss_gib": (res.get("memory") or {}).get("peak_rss_gib"),
            "eval_loss": res.get("eval/loss"), "zero_optimization": (ds or {}).get("zero_optimization")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--variants", default=None, help="comma-separated variant names to run (default: all of the stage's)")
    ap.add_argument("--out", default=str(REPO / "bench/results/comm_sweep.json"))
    ap.add_argument("overrides", nargs="*", help="config overrides for every run (after --)")
    args = ap.parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    require_bundled_data()
    summary: dict = {"steps": args.steps, "shape": SHAPE, "overrides": args.overrides, "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages:
            names = [n for n in VARIANTS[stage] if args.variants is None or n in args.variants.split(",")]
            order = ["baseline", *names, *reversed(names), "baseline"]
            runs: dict[str, list[dict]] = {n: [] for n in ["baseline", *names]}
            for i, name in enumerate(order):
                extra = [] if name == "baseline" else VARIANTS[stage][name]
                got = run_once(Path(tmp) / f"z{stage}_{i}", stage, args.steps, [*extra, *args.overrides])
                runs[name].append(got)
                print(f"ZeRO-{stage} {name:34s} {got['tokens_per_second']:8,.0f} tokens/s  ({got['wall_s']:.0f} s)", flush=True)
            base = statistics.mean(r["tokens_per_second"] for r in runs["baseline"])
            table = {}
            for name in names:
                tps = [r["tokens_per_second"] for r in runs[name]]
                table[name] = {"ratio": statistics.mean(tps) / base, "run_ratios": [t / base for t in tps]}
                print(f"ZeRO-{stage} {name:34s} {table[name]['ratio']:.3f}× baseline "
                      f"(runs {', '.join(f'{x:.3f}' for x in table[name]['run_ratios'])})", flush=True)
            b = [r["tokens_per_second"] for r in runs["baseline"]]
            summary["stages"][str(stage)] = {"order": order, "runs": runs, "baseline_tokens_per_second": b,
                                             "baseline_spread": (max(b) - min(b)) / base, "variants": table}
            print(f"ZeRO-{stage} baseline runs {b[0]:,.0f} / {b[1]:,.0f} tokens/s (spread {(max(b) - min(b)) / base:.1%})",
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
