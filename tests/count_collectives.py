"""Test helper (run under ``torchrun``, one process per rank): how many all-reduces zerolm's training
loop issues, counted by wrapping ``torch.distributed.all_reduce``.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/count_collectives.py SPEC_JSON OUT_JSON``; the
spec is ``make_ds_checkpoint``'s (``runs`` with ``run_dir``, ``family``, ``zero_stage``, ``steps``;
``corpus_dir``, ``tokenizer_dir``, ``seq_len``), each run with ``gradient_accumulation_steps`` 4 and
no logging, evaluation or checkpoint before its last step. Rank 0 writes ``{run_dir: {"all_reduces": count,
"bytes": {collective: bytes}, "calls": {collective: calls}, "n_params": N}}`` — ``count``: the all-reduces zerolm itself issues in
``Trainer.run`` (not the trainer's construction, not DeepSpeed's gradient reductions); ``bytes``: what rank 0's
all-reduces (tensor), all-gathers (output) and reduce-scatters (input) moved during ``Trainer.run``, DeepSpeed's
included.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_ds_checkpoint import overrides  # noqa: E402


def main(spec_path: str, out_path: str) -> None:
    import torch.distributed as dist

    from zerolm.config import load_config
    from zerolm.pretrain import distributed
    from zerolm.pretrain.trainer import Trainer

    spec = json.loads(Path(spec_path).read_text())
    count = {"n": 0, "on": False}
    # every rank's bytes per collective kind during Trainer.run, DeepSpeed's included (deepspeed.comm calls these
    # torch.distributed functions): all-reduce the tensor, all-gather the output, reduce-scatter the input
    moved = {"on": False, "bytes": {}, "calls": {}}

    def measuring(name, real_fn, which):
        def wrapped(*a, **kw):
            if moved["on"]:
                t = which(a, kw)
                moved["bytes"][name] = moved["bytes"].get(name, 0) + t.numel() * t.element_size()
                moved["calls"][name] = moved["calls"].get(name, 0) + 1
            return real_fn(*a, **kw)
        return wrapped

    real = measuring("all_reduce", dist.all_reduce, lambda a, kw: a[0] if a else kw["tensor"])

    def counting(*a, **kw):
        # zerolm's own reductions only: DeepSpeed's gradient all-reduces (ZeRO-0 buckets) go through
        # deepspeed/comm and are the optimizer's business, not the loop's
        if count["on"] and "deepspeed" not in sys._getframe(1).f_code.co_filename:
            count["n"] += 1
        return real(*a, **kw)

    dist.all_reduce = counting
    dist.all_gather_into_tensor = measuring("all_gather", dist.all_gather_into_tensor,
                                            lambda a, kw: a[0] if a else kw["output_tensor"])
    dist.reduce_scatter_tensor = measuring("reduce_scatter", dist.reduce_scatter_tensor,
                                           lambda a, kw: a[1] if len(a) > 1 else kw["input"])
    # patched before the process group starts: deepspeed.comm's backend keeps a reference to the all-gather and
    # reduce-scatter functions it finds when it is set up
    env = distributed.detect()
    distributed.init(env)
    counts = {}
    for run in spec["runs"]:
        cfg = load_config(None, overrides(spec, run) + ["train.global_batch_size=16", "train.log_every=1000"])
        trainer = Trainer(cfg, env)
        try:
            count.update(n=0, on=True)
            moved.update(on=True, bytes={}, calls={})
            trainer.run()
            count["on"] = moved["on"] = False
            counts[run["run_dir"]] = {"all_reduces": count["n"], "bytes": moved["bytes"], "calls": moved["calls"],
                                      "vocab": trainer.engine.engine.module.config.vocab_size, "n_params": sum(
                getattr(q, "ds_numel", q.numel()) for q in trainer.engine.engine.module.parameters() if q.requires_grad)}
        finally:
            trainer.release()
        del trainer
    if env.is_main:
        Path(out_path).write_text(json.dumps(counts))
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    from zerolm.pretrain.distributed import exit_process

    exit_process(0)
