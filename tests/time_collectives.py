"""Test helper (run under ``torchrun``, one process per rank, gloo): what
:func:`zerolm.pretrain.distributed.collective_rates` measures, and the same three collectives timed here at
another message size, independently of it.

Usage: ``torchrun --standalone --nproc_per_node 2 tests/time_collectives.py OUT_JSON``. Rank 0 writes
``{"rates": collective_rates(), "timed": {name: seconds}, "bytes": S, "world_size": n}`` with each timed
collective the best of 5 (barrier before each; the slowest rank's time).
"""

from __future__ import annotations

import json
import sys
import time


def main(out_path: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    from zerolm.pretrain.distributed import collective_rates

    rates = collective_rates()
    n, size = dist.get_world_size(), 6 << 20  # bytes, not one of collective_rates' own sizes
    whole, part = torch.ones(size // 4), torch.empty(size // 4 // n)
    ops = {"all_reduce": lambda: dist.all_reduce(whole), "all_gather": lambda: dist.all_gather_into_tensor(whole, part),
           "reduce_scatter": lambda: dist.reduce_scatter_tensor(part, whole)}
    timed = {}
    for name, op in ops.items():
        op()
        best = float("inf")
        for _ in range(5):
            dist.barrier()
            t0 = time.perf_counter()
            op()
            best = min(best, time.perf_counter() - t0)
        slowest = torch.tensor([best], dtype=torch.float64)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        timed[name] = float(slowest)
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump({"rates": rates, "timed": timed, "bytes": size, "world_size": n}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
