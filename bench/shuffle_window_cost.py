"""Benchmark: what ``data.shuffle_window`` costs at start and on resume.

A window of W blocks is packed (tokenized) per logical shard before its first sample is emitted, and a
restore re-packs the current window from the packer states at its start, then skips the samples already
emitted (``data_pipeline.loader.PackedStream``). This bench times, for each window, one rank of a 2-rank
run of CONFIG (default: the quickstart BERT):

* **start** — ``PackedDataLoader`` construction to its first training micro-batch;
* **resume** — after ``--steps`` optimizer steps, ``state_dict()`` → a new loader → ``load_state_dict`` → its
  first micro-batch, which must equal the uninterrupted loader's next one (checked, printed).

Windows run in ABBA order (``--windows 512,4096`` → 512, 4096, 4096, 512) and each figure is the mean of
its two runs, with both printed: this machine drifts 15–25 % minute to minute. Tokenization runs in the
main process here (``num_workers=0``), as a DataLoader worker would run it off the training loop::

    .venv/bin/python bench/shuffle_window_cost.py [--config configs/pretrain/quickstart_bert.yaml]
        [--windows 512,4096] [--steps 100] [--rank 0] [--world-size 2]

Needs the prepared corpus and tokenizer (``zerolm data prepare``, ``zerolm tokenizer train``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(config: str, window: int, steps: int, rank: int, world_size: int) -> dict:
    """Seconds to the first micro-batch at start and on resume after ``steps`` steps, and whether the
    resumed micro-batch equals the uninterrupted one."""
    import torch

    from zerolm.config import load_config
    from zerolm.data_pipeline.loader import PackedDataLoader

    cfg = load_config(ROOT / config, [f"data.shuffle_window={window}", "data.num_workers=0"]).data
    t = time.perf_counter()
    loader = PackedDataLoader(cfg, rank=rank, world_size=world_size)
    it = iter(loader)
    next(it)
    start = time.perf_counter() - t
    for _ in range(steps * loader.accumulation - 1):
        next(it)
    state = loader.state_dict()
    want = next(it)
    t = time.perf_counter()
    again = PackedDataLoader(cfg, rank=rank, world_size=world_size)
    again.load_state_dict(state)
    got = next(iter(again))
    resume = time.perf_counter() - t
    same = all(torch.equal(got[k], want[k]) for k in want)
    return {"window": window, "start_s": start, "resume_s": resume, "same_batch": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/pretrain/quickstart_bert.yaml")
    ap.add_argument("--windows", default="512,4096")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world-size", type=int, default=2)
    a = ap.parse_args(argv)
    windows = [int(w) for w in a.windows.split(",") if w]
    order = windows + windows[::-1]
    runs: dict[int, list[dict]] = {w: [] for w in windows}
    for w in order:
        r = measure(a.config, w, a.steps, a.rank, a.world_size)
        runs[w].append(r)
        print(f"  window {w}: start {r['start_s']:.2f} s, resume {r['resume_s']:.2f} s, "
              f"resumed batch = uninterrupted: {r['same_batch']}", flush=True)
    print(f"\n{a.config}, rank {a.rank} of {a.world_size}, resume after {a.steps} steps (ABBA, mean of 2)")
    print("| shuffle_window | start s (runs) | resume s (runs) | resumed batch exact |")
    print("|---|---|---|---|")
    for w in windows:
        rs = runs[w]
        st = [r["start_s"] for r in rs]
        re_ = [r["resume_s"] for r in rs]
        print(f"| {w} | {sum(st) / len(st):.2f} ({', '.join(f'{x:.2f}' for x in st)}) | "
              f"{sum(re_) / len(re_):.2f} ({', '.join(f'{x:.2f}' for x in re_)}) | {all(r['same_batch'] for r in rs)} |")
    return 0 if all(r["same_batch"] for rs in runs.values() for r in rs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
