"""Test helper (run under ``torchrun``, one process per rank): how many all-reduces zerolm's training
loop issues, counted by wrapping ``torch.distributed.all_reduce``.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/count_collectives.py SPEC_JSON OUT_JSON``; the
spec is ``make_ds_checkpoint``'s (``runs`` with ``run_dir``, ``family``, ``zero_stage``, ``steps``;
``corpus_dir``, ``tokenizer_dir``, ``seq_len``), each run with ``gradient_accumulation_steps`` 4 and
no logging, evaluation or checkpoint before its last step. Rank 0 writes ``{run_dir: count}`` —
the all-reduces zerolm itself issues in ``Trainer.run`` (not the trainer's construction, not DeepSpeed's
gradient reductions).
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
    env = distributed.detect()
    distributed.init(env)
    count = {"n": 0, "on": False}
    real = dist.all_reduce

    def counting(*a, **kw):
        # zerolm's own reductions only: DeepSpeed's gradient all-reduces (ZeRO-0 buckets) go through
        # deepspeed/comm and are the optimizer's business, not the loop's
        if count["on"] and "deepspeed" not in sys._getframe(1).f_code.co_filename:
            count["n"] += 1
        return real(*a, **kw)

    dist.all_reduce = counting
    counts = {}
    for run in spec["runs"]:
        cfg = load_config(None, overrides(spec, run) + ["train.global_batch_size=16", "train.log_every=1000"])
        trainer = Trainer(cfg, env)
        try:
            count.update(n=0, on=True)
            trainer.run()
            count["on"] = False
            counts[run["run_dir"]] = count["n"]
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
