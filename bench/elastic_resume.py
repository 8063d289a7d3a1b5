"""Benchmark: what an elastic resume costs, and what logical shards cost the data loader.

1. Convert and resume. For each model preset and ZeRO stage: train 1 step on 2 ranks and checkpoint
   (``python -m zerolm.pretrain`` under torchrun, seq_len 64, micro-batch 1, global batch 2); then
   resume that checkpoint for one more step (a) on 2 ranks — the same world size, the baseline — and
   (b) on 1 rank — an elastic resume: DeepSpeed's universal conversion (once) and load. Prints the
   checkpoint size, the conversion time (from the trainer's log) and both resumes' wall time (process
   start to exit, one step included). (a) and (b) start from copies of the same checkpoint.

2. Data loader throughput, one process, no loader workers, ``--tokens`` tokens per measurement:
   today's layout before logical shards (one packed stream per reader, read in order — what the
   loader did at 1 rank × 1 worker) vs logical shards at global batch 8 and 64 on 1 rank (8 or 64
   streams, each with its own packer; with fewer files than shards every stream walks every file and
   owns every 8th/64th record). ABBA order over ``--rounds`` rounds (this machine drifts 15–25%);
   medians and the ratio to the baseline measured in the same run.

    .venv/bin/python bench/elastic_resume.py [--presets tiny small gpt3-125m] [--stages 2 3]
        [--tokens 600000] [--rounds 2] [--skip-resume] [--skip-data]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import run_pretrain  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _train(args, run_dir: Path, nproc: int, max_steps: int) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = run_pretrain(run_dir, [*args, f"train.max_steps={max_steps}", "train.save_every=1", "train.eval_every=1000"],
                     bundled_data=False, nproc=nproc, timeout=None)
    return time.perf_counter() - t0, " ".join((r.stdout + r.stderr).split())


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def bench_resume(presets: list[str], stages: list[int], corpus: str, tokenizer: str) -> None:
    print("\n## convert and resume (one step after the resume; wall = process start to exit)\n")
    print("| preset | ZeRO | parameters | checkpoint MB | universal MB | convert s | resume 2→2 s | resume 2→1 s |")
    print("|---|---|---|---|---|---|---|---|")
    for preset in presets:
        for stage in stages:
            base = [f"model.preset={preset}", f"train.zero_stage={stage}", "data.seq_len=64", "data.micro_batch_size=1",
                    "train.global_batch_size=2", "train.warmup_steps=1", f"data.tokenizer_dir={tokenizer}",
                    f"data.sources=[{{name: corpus, paths: ['{corpus}/train/*.jsonl']}}]",
                    f"data.validation_sources=[{{name: corpus, paths: ['{corpus}/validation/*.jsonl']}}]"]
            with tempfile.TemporaryDirectory(dir=REPO / "runs" if (REPO / "runs").is_dir() else None) as tmp:
                first = Path(tmp) / "first"
                _, log = _train(base, first, 2, 1)
                params = re.search(r"([\d.]+[MKB]?) params", log)
                same, elastic = Path(tmp) / "same", Path(tmp) / "elastic"
                shutil.copytree(first, same)
                shutil.copytree(first, elastic)
                ckpt_mb = _size_mb(first / "checkpoints" / "step_00000001")
                shutil.rmtree(first)
                wall_same, _ = _train(base, same, 2, 2)
                wall_elastic, log = _train(base, elastic, 1, 2)
                m = re.search(r"to a universal checkpoint in ([\d.]+) s", log)
                if "resumed from" not in log or not m:
                    raise SystemExit(f"the 1-rank run did not resume elastically:\n{log[-3000:]}")
                uni = elastic / "checkpoints" / "step_00000001" / "universal"
                print(f"| {preset} | {stage} | {params.group(1) if params else '?'} | {ckpt_mb:.1f} | {_size_mb(uni):.1f} | "
                      f"{float(m.group(1)):.2f} | {wall_same:.1f} | {wall_elastic:.1f} |", flush=True)


def _baseline_tokens(cfg, tok, n_tokens: int) -> int:
    """Today's layout before logical shards: one packed stream, micro-batches of consecutive samples."""
    import numpy as np
    import torch

    from zerolm.data_pipeline.loader import PackedStream
    from zerolm.data_pipeline.sources import resolve_files

    sources = [(s, resolve_files(s)) for s in cfg.sources]
    stream = iter(PackedStream(cfg, sources, tok, 0, 1, True))
    seen = 0
    while seen < n_tokens:
        rows = [next(stream) for _ in range(cfg.micro_batch_size)]
        batch = {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in ("input_ids", "labels", "attention_mask")}
        seen += int(batch["attention_mask"].sum())
    return seen


def _logical_tokens(cfg, tok, n_tokens: int, glob: int) -> int:
    from zerolm.data_pipeline.loader import PackedDataLoader

    seen = 0
    for batch in PackedDataLoader(cfg, tokenizer=tok, global_batch_size=glob):
        seen += int(batch["attention_mask"].sum())
        if seen >= n_tokens:
            return seen
    return seen


def bench_data(corpus: str, tokenizer: str, n_tokens: int, rounds: int) -> None:
    import torch

    from zerolm.config import DataConfig, SourceConfig
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer

    torch.set_num_threads(1)
    src = [SourceConfig(name="corpus", paths=[f"{corpus}/train/*.jsonl"])]
    cfg = DataConfig(sources=src, validation_sources=src, tokenizer_dir=tokenizer, seq_len=256, micro_batch_size=8,
                     num_workers=0)
    tok = load_pipeline_tokenizer(tokenizer)
    runs = {"one stream (before)": lambda: _baseline_tokens(cfg, tok, n_tokens),
            "logical shards, global batch 8": lambda: _logical_tokens(cfg, tok, n_tokens, 8),
            "logical shards, global batch 64": lambda: _logical_tokens(cfg, tok, n_tokens, 64)}
    names = list(runs)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):  # ABBA
            t0 = time.perf_counter()
            seen = runs[name]()
            rates[name].append(seen / (time.perf_counter() - t0))
    base = statistics.median(rates[names[0]])
    print(f"\n## data loader, 1 process, 1 thread, seq_len 256, micro-batch 8, {n_tokens} tokens per run, "
          f"{rounds} rounds ABBA\n")
    print("| layout | tokens/s per core (median) | runs | vs before |")
    print("|---|---|---|---|")
    for name in names:
        med = statistics.median(rates[name])
        print(f"| {name} | {med:,.0f} | {', '.join(f'{x:,.0f}' for x in rates[name])} | {med / base:.2f}× |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--tokenizer", default="data/tokenizer")
    ap.add_argument("--presets", nargs="+", default=["tiny", "small", "gpt3-125m"])
    ap.add_argument("--stages", nargs="+", type=int, default=[2, 3])
    ap.add_argument("--tokens", type=int, default=600_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-resume", action="store_true")
    ap.add_argument("--skip-data", action="store_true")
    a = ap.parse_args()
    corpus, tokenizer = str(Path(a.corpus).resolve()), str(Path(a.tokenizer).resolve())
    if not (Path(corpus) / "manifest.json").is_file():
        raise SystemExit(f"no prepared corpus at {corpus}: run `make quickstart` (or zerolm data prepare) first")
    if not a.skip_data:
        bench_data(corpus, tokenizer, a.tokens, a.rounds)
    if not a.skip_resume:
        bench_resume(a.presets, a.stages, corpus, tokenizer)


if __name__ == "__main__":
    main()
