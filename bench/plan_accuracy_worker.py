"""Per-rank worker of ``bench/plan_accuracy.py`` (run under torchrun): zerolm's own pretraining
(``zerolm pretrain --config CONFIG``, unchanged — it writes ``RUN_DIR/result.json`` with its memory and
throughput records) with one addition: just before every optimizer step from the second on, the bytes of
the model-state tensors this rank holds are counted (``pretrain_throughput_worker._account``: distinct
storages of parameters / ZeRO-3 partitions, gradients and gradient partitions, the fp32 master partition,
the Adam moments, and the gradient reduction buckets). Gradients are alive then and the Adam state exists
(from the first step), so this is the model states' high-water mark. The last count is written to
``--acct/acct_rank<R>.json``, with the peak RSS (``ru_maxrss``) right after the last optimizer step (the
trainer's own peak also covers its final evaluation and checkpoint), and a timeline of (RSS, peak RSS) at
engine construction and around each optimizer step. Counting walks a few hundred tensors
and takes milliseconds.

With ``--tensor-peak`` (plan_accuracy.py passes it) the run is also profiled with ``torch.profiler``
(``profile_memory=True``): every allocation and free of the CPU tensor allocator, with its size and time.
Their running sum is the bytes of live tensors, and its maximum from the end of the first optimizer step
to the end of the last one is ``tensor_peak`` — what ``torch.cuda.max_memory_allocated`` measures on a
GPU, which RSS cannot give on a CPU (RSS also holds the Python runtime, libraries, and heap pages the
allocator freed but glibc kept). Only allocations on the profiled (main) thread are seen; numpy arrays
the data pipeline holds are not torch tensors and are not counted.

Not a public entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("DS_ACCELERATOR", "cpu")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pretrain_throughput_worker import _account  # noqa: E402  (the existing tensor ledger)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--acct", required=True, help="folder for acct_rank<R>.json")
    ap.add_argument("--tensor-peak", action="store_true", help="profile tensor allocations (see the module docstring)")
    a = ap.parse_args(argv)

    import contextlib
    import resource

    import psutil
    from torch.profiler import ProfilerActivity, profile, record_function

    from zerolm.cli import main as zerolm_main
    from zerolm.pretrain.engine import Engine

    original, original_init = Engine.step, Engine.__init__
    state: dict = {"boundary_steps": 0, "last": None, "timeline": []}

    def mark(label: str) -> None:
        """(label, RSS now, peak RSS so far) in bytes: where the memory goes, for the report."""
        state["timeline"].append([label, psutil.Process().memory_info().rss,
                                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024])

    def marking_init(self, *args, **kwargs) -> None:
        mark("model built, before the DeepSpeed engine")
        original_init(self, *args, **kwargs)
        mark("engine built")

    def counting_step(self, skip: bool = False) -> None:
        if self.engine.is_gradient_accumulation_boundary():
            state["boundary_steps"] += 1
            mark(f"step {state['boundary_steps']}: after backward")
            if state["boundary_steps"] >= 2:  # Adam state exists from the first step on
                acct = _account(self)
                acct["rss"] = psutil.Process().memory_info().rss
                acct["at_step"] = state["boundary_steps"]
                state["last"] = acct
        out = original(self, skip)
        if state["boundary_steps"] >= 1:
            with record_function(f"zerolm_mark:step_end:{state['boundary_steps']}"):
                pass
        # peak RSS through the training steps (the trainer's own peak also covers its final eval + checkpoint)
        state["train_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        mark(f"step {state['boundary_steps']}: after the optimizer step")
        return out

    Engine.step = counting_step
    Engine.__init__ = marking_init
    rank = int(os.environ.get("RANK", "0"))
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True) if a.tensor_peak else contextlib.nullcontext()
    with prof:
        rc = zerolm_main(["pretrain", "--config", a.config])
    peak = _tensor_peak(prof) if a.tensor_peak else {}
    os.makedirs(a.acct, exist_ok=True)
    with open(os.path.join(a.acct, f"acct_rank{rank}.json"), "w") as f:
        json.dump({**(state["last"] or {}), "train_peak_rss": state.get("train_peak_rss"),
                   "timeline": state["timeline"], **peak}, f, indent=1)
    return rc


def _tensor_peak(prof) -> dict:
    """``tensor_peak`` (bytes): the most bytes of live CPU tensors between the end of the first optimizer
    step and the end of the last one; ``tensor_live_window_start`` (bytes): live at the window's start;
    ``tensor_peak_whole_run``: the same maximum over the whole run (model construction included)."""
    events = prof.profiler.kineto_results.events()
    mem = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    marks = sorted((e.start_ns(), e.name()) for e in events if e.name().startswith("zerolm_mark:step_end:"))
    if not mem or len(marks) < 2:
        return {}
    start, end = marks[0][0], marks[-1][0]
    live = at_start = peak = whole = 0
    for t, n in mem:
        live += n
        whole = max(whole, live)
        if t <= start:
            at_start = live
        elif t <= end:
            peak = max(peak, live)
    return {"tensor_peak": max(peak, at_start), "tensor_live_window_start": at_start, "tensor_peak_whole_run": whole,
            "tensor_events": len(mem)}


if __name__ == "__main__":
    from zerolm.pretrain.distributed import exit_process

    exit_process(main())
