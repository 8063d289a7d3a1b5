"""Issue 18: does ``torch.compile`` (inductor) pay for itself in a pretraining run, and after how many steps?

    OMP_NUM_THREADS=1 .venv/bin/python bench/compile_gain.py [--shapes tiny,small,6x512] [--steps 12] [--rounds 2]

Per shape, one process, one thread (a rank's share of this 2-core machine), the bundled corpus' real
packed batches (``data/corpus``, ``data/tokenizer``), a GPT-2 of that shape and the training step
zerolm runs (forward with labels, backward, gradient clipping at 1.0, fused AdamW):

1. **compile cost**: the first call of ``torch.compile(model)`` (forward + backward graphs, inductor's
   C++ kernels) minus an eager step; a fresh inductor cache directory per shape, so it is the cost a
   first run pays (a later run on the same machine reuses the cache and pays less: measured too, as
   the "warm cache" line, by compiling a second copy in the same process).
2. **steady-state step time**, eager vs compiled, on the *same* weights and optimizer (the compiled
   module wraps the eager one), measured ``--rounds`` times in A B B A order (eager, compiled, compiled,
   eager: this machine drifts 15–25 % minute to minute; the mirror cancels a linear drift), ``--steps``
   optimizer steps per block after one untimed step per block.
3. **break-even**: compile cost ÷ (eager − compiled seconds per step) = the optimizer steps a run needs
   before compiling has paid (None when compiled is not faster).
4. **agreement**: the first compiled step's loss against an eager forward pass on the same batch and
   weights (``|Δ loss|``; inductor reorders float sums, so ~1e-6, not 0).

What it leaves out: the trainer's gradient all-reduce and DeepSpeed's step (not compiled), so on 2 ranks
the saving is the same seconds per step out of a longer step — the break-even in steps is the same.

Prints a table and writes ``bench/results/compile_gain.json``. The engine's ``train.compile: auto``
threshold is chosen from these figures (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (n_layer, d_model, n_head, seq_len, micro_batch)
    "tiny": (2, 64, 2, 64, 4),  # configs/models/tiny.yaml, configs/pretrain/tiny_gpt.yaml's batch
    "small": (4, 256, 4, 128, 8),  # the quickstart GPT (configs/pretrain/quickstart_gpt.yaml)
    "6x512": (6, 512, 8, 256, 4),  # bench/pretrain_throughput.py's default shape
}


def _batches(tok_dir: str, corpus: str, seq_len: int, micro: int, n: int):
    from zerolm.config import DataConfig, SourceConfig
    from zerolm.data_pipeline.loader import PackedDataLoader
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer

    tok = load_pipeline_tokenizer(tok_dir)
    dcfg = DataConfig(sources=[SourceConfig(name="bundled", paths=[os.path.join(corpus, "train", "*.jsonl")])],
                      tokenizer_dir=tok_dir, seq_len=seq_len, micro_batch_size=micro, num_workers=0)
    it = iter(PackedDataLoader(dcfg, rank=0, world_size=1, tokenizer=tok))
    return [next(it)["input_ids"] for _ in range(n)], tok


def _model(shape, tok):
    from zerolm.config import ModelConfig
    from zerolm.pretrain.models import build_model, resolve_model_config, special_ids_of

    n_layer, d_model, n_head, seq_len, _ = shape
    torch.manual_seed(1234)
    cfg = resolve_model_config(ModelConfig(family="gpt2", n_layer=n_layer, d_model=d_model, n_head=n_head))
    return build_model(cfg, vocab_size=tok.vocab_size, seq_len=seq_len, special_ids=special_ids_of(tok))


def _step(fn, params, opt, ids, losses: list | None = None) -> float:
    t0 = time.perf_counter()
    loss = fn(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if losses is not None:
        losses.append(float(loss.detach()))
    return time.perf_counter() - t0


def measure(name: str, a) -> dict:
    shape = SHAPES[name]
    batches, tok = _batches(a.tokenizer, a.corpus, shape[3], shape[4], 4 * a.rounds * (a.steps + 1) + 8)
    model = _model(shape, tok).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    k = iter(range(10**9))
    nxt = lambda: batches[next(k) % len(batches)]  # noqa: E731
    eager_first = _step(model, params, opt, nxt())
    eager_first = min(eager_first, _step(model, params, opt, nxt()))
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold cache: what a first run pays
        compiled = torch.compile(model)
        ids = nxt()
        with torch.no_grad():  # the eager loss of the batch the first compiled step trains on
            eager_loss = float(model(input_ids=ids, labels=ids).loss)
        got: list[float] = []
        first = _step(compiled, params, opt, ids, got)
        # a second compile of the same model, warm cache (FX graph cache hits): what a later run pays
        torch._dynamo.reset()
        compiled = torch.compile(model)
        warm = _step(compiled, params, opt, nxt())
        blocks: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(a.rounds):
            for which in ("eager", "compiled", "compiled", "eager"):
                fn = model if which == "eager" else compiled
                _step(fn, params, opt, nxt())  # untimed: settle caches after the switch
                blocks[which] += [_step(fn, params, opt, nxt()) for _ in range(a.steps)]
    eager_s, comp_s = statistics.median(blocks["eager"]), statistics.median(blocks["compiled"])
    cost, cost_warm = first - eager_first, warm - eager_first
    gain = eager_s - comp_s
    return {
        "shape": dict(zip(("n_layer", "d_model", "n_head", "seq_len", "micro_batch"), shape)),
        "params": sum(p.numel() for p in params),
        "eager_step_s": eager_s, "compiled_step_s": comp_s, "speedup": eager_s / comp_s,
        "eager_spread": [min(blocks["eager"]), max(blocks["eager"])],
        "compiled_spread": [min(blocks["compiled"]), max(blocks["compiled"])],
        "compile_cost_s": cost, "compile_cost_warm_cache_s": cost_warm,
        "loss_eager": eager_loss, "loss_compiled": got[0], "loss_abs_diff": abs(got[0] - eager_loss),
        "break_even_steps": cost / gain if gain > 0 else None,
        "break_even_steps_warm_cache": cost_warm / gain if gain > 0 else None,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="tiny,small,6x512")
    ap.add_argument("--steps", type=int, default=12, help="timed optimizer steps per block")
    ap.add_argument("--rounds", type=int, default=2, help="A B B A rounds")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--tokenizer", default="data/tokenizer")
    ap.add_argument("--out", default="bench/results/compile_gain.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    res = {"torch": torch.__version__, "threads": torch.get_num_threads(), "shapes": {}}
    print(f"{'shape':<7} {'params':>9} {'eager s':>8} {'comp. s':>8} {'speedup':>8} {'compile s':>10} "
          f"{'warm s':>7} {'break-even':>11} {'(warm)':>7} {'|Δ loss|':>9}")
    for name in a.shapes.split(","):
        r = measure(name.strip(), a)
        res["shapes"][name] = r
        be = lambda v: "never" if v is None else f"{v:.0f}"  # noqa: E731
        print(f"{name:<7} {r['params']:>9,} {r['eager_step_s']:>8.4f} {r['compiled_step_s']:>8.4f} {r['speedup']:>7.2f}x "
              f"{r['compile_cost_s']:>10.1f} {r['compile_cost_warm_cache_s']:>7.1f} {be(r['break_even_steps']):>11} "
              f"{be(r['break_even_steps_warm_cache']):>7} {r['loss_abs_diff']:>9.1e}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
