"""Test helper (run as one process per rank) for ``tests/test_elastic_engine.py``: train a tiny GPT-2
with :class:`zerolm.pretrain.engine.Engine` on random token batches, save DeepSpeed checkpoints, and
load checkpoints written at another data-parallel world size with ``Engine.load(…, saved_world_size=…)``,
dumping what the loaded engine holds so the test can compare it with an independent reference.

Usage: ``python tests/elastic_engine_worker.py SPEC_JSON``; the JSON file holds ``{"out": DIR, "tasks":
[...]}``. The caller sets MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK. Tasks (run in order,
one process group for all):

* ``{"kind": "reference"}`` (1 rank): ZeRO-0, accumulation 2, 4 optimizer steps; saves the checkpoint
  ``OUT/w1_z0/step_3`` after step 3 and dumps ``OUT/reference.pt``: the loss of every step, the weights
  and Adam moments (``exp_avg``, ``exp_avg_sq``, ``step``) per parameter name after step 3 and the
  weights after step 4. The math of every world size is the same: each optimizer step sees the same
  global batch of 4 sequences (rows split over ranks × micro-steps) and DeepSpeed averages the
  gradients over both.
* ``{"kind": "train_save", "stage": S}``: 3 optimizer steps at ZeRO-S, saved as ``OUT/wW_zS/step_3``
  (W = this world size), then a 4th step: ``OUT/wW_zS/uninterrupted.pt`` holds the 4 losses and the
  weights after step 4.
* ``{"kind": "load", "stage": S, "src": "w2_z3"}``: a fresh engine at ZeRO-S loads ``OUT/<src>/step_3``
  with ``saved_world_size`` = the source's (when it equals this one: the plain path), then dumps
  (rank 0) ``OUT/loaded_<src>_to_wW.pt``: the mode ``load`` returned, per-parameter fp32 weights and
  Adam moments as the engine holds them (read back with DeepSpeed's ``safe_get_full_*`` accessors,
  or the torch optimizer's state at ZeRO-0), the Adam ``step`` values, weight decay per group of
  DeepSpeed's optimizer and of the client torch optimizer, the LR, the engine's global
  steps/samples; then one more optimizer step (its loss, the weights, LR, Adam and global steps
  after it).
* ``{"kind": "share_master", "share": B}`` (``tests/test_zero3_fp32_master.py``): ZeRO-3 fp32 with
  ``train.share_fp32_master`` = B; 2 optimizer steps, checkpoint ``OUT/wW_z3_share{B}/step_2``, 2
  more; rank 0 dumps ``run_rank0.pt``: bytes freed, DeepSpeed's partition sizes, the bytes of the
  distinct storages behind the working + master partitions (before and after), weights before/after.
* ``{"kind": "share_resume"}``: a fresh shared engine loads ``OUT/wW_z3_share1/step_2`` and trains
  steps 3–4 (``resumed.pt``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

GLOBAL_BATCH = 4
MICRO = 2
SEQ_LEN = 32
VOCAB = 96
SAVE_STEP = 3


def train_config(stage: int, share: bool = True):
    from zerolm.config import TrainConfig

    return TrainConfig(zero_stage=stage, precision="fp32", lr=3e-3, warmup_steps=2, max_steps=10, min_lr_ratio=0.1,
                       weight_decay=0.1, grad_clip=1.0, share_fp32_master=share)


def build_engine(stage: int, world: int, share: bool = True):
    """A tiny GPT-2 (same initial weights on every rank) in a zerolm Engine; global batch 4."""
    from zerolm.config import ModelConfig
    from zerolm.pretrain.engine import Engine
    from zerolm.pretrain.models import SPECIAL_ROLES, build_model, resolve_model_config

    torch.manual_seed(0)
    model = build_model(resolve_model_config(ModelConfig(family="gpt2", preset="tiny")), vocab_size=VOCAB,
                        seq_len=SEQ_LEN, special_ids={r: i for i, r in enumerate(SPECIAL_ROLES)})
    accum = GLOBAL_BATCH // (MICRO * world)
    return Engine(model, train_config(stage, share), micro_batch_size=MICRO, grad_accum=accum, world_size=world)


def global_batch(step: int) -> torch.Tensor:
    """The ``(4, SEQ_LEN)`` token ids of optimizer step ``step`` (0-based), the same for any world size."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randint(7, VOCAB, (GLOBAL_BATCH, SEQ_LEN), generator=g)


def optimizer_step(engine, step: int, rank: int, world: int) -> float:
    """One optimizer step on this rank's rows of the global batch; returns the global mean loss."""
    import torch.distributed as dist

    rows = global_batch(step)
    accum = GLOBAL_BATCH // (MICRO * world)
    total = 0.0
    for a in range(accum):
        start = (a * world + rank) * MICRO
        ids = rows[start:start + MICRO]
        loss = engine.forward({"input_ids": ids, "labels": ids}).loss
        engine.backward(loss)
        engine.step()
        total += float(loss.detach())
    t = torch.tensor([total / accum])
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return float(t.item())


def named_params(engine) -> list[tuple[str, torch.nn.Parameter]]:
    return list(engine.module.named_parameters())


def full_states(engine, stage: int, moments: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """Per parameter name: fp32 weight, exp_avg, exp_avg_sq (with ``moments``) as the engine holds
    them (collective at ZeRO-3: all ranks call it). At ZeRO 1–2 DeepSpeed's per-parameter view of the
    optimizer state is linked at init (empty) and again by a universal load: read moments after
    such a load only."""
    out: dict[str, dict[str, torch.Tensor]] = {"fp32": {}, "exp_avg": {}, "exp_avg_sq": {}}
    if stage == 0:
        opt = engine._client_opt
        for name, p in named_params(engine):
            out["fp32"][name] = p.detach().float().clone()
            st = opt.state.get(p, {})
            for k in ("exp_avg", "exp_avg_sq"):
                out[k][name] = st[k].detach().clone() if k in st else None
        return out
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    for name, p in named_params(engine):
        out["fp32"][name] = safe_get_full_fp32_param(p).detach().float().clone().cpu()
        for k in ("exp_avg", "exp_avg_sq") if moments else ():
            out[k][name] = safe_get_full_optimizer_state(p, k).detach().clone().cpu()
    return out


def adam_steps(engine) -> list[float]:
    """The ``step`` of every state entry of the client torch optimizer (per parameter at ZeRO-0, per
    flat partition at ZeRO 1–3)."""
    return sorted(float(st["step"]) for st in engine._client_opt.state.values() if "step" in st)


def task_reference(out: Path, rank: int, world: int) -> None:
    assert world == 1, "the reference runs on one rank"
    engine = build_engine(0, 1)
    losses = []
    for s in range(SAVE_STEP):
        losses.append(optimizer_step(engine, s, rank, world))
    states = full_states(engine, 0)
    engine.save(out / "w1_z0", f"step_{SAVE_STEP}")
    steps = adam_steps(engine)
    losses.append(optimizer_step(engine, SAVE_STEP, rank, world))
    weights4 = {n: p.detach().clone() for n, p in named_params(engine)}
    torch.save({"losses": losses, "weights4": weights4}, out / "w1_z0" / "uninterrupted.pt")
    torch.save({"losses": losses, "weights3": states["fp32"], "exp_avg": states["exp_avg"],
                "exp_avg_sq": states["exp_avg_sq"], "steps": steps, "weights4": weights4}, out / "reference.pt")


def task_train_save(out: Path, stage: int, rank: int, world: int) -> None:
    engine = build_engine(stage, world)
    losses = [optimizer_step(engine, s, rank, world) for s in range(SAVE_STEP)]
    engine.save(out / f"w{world}_z{stage}", f"step_{SAVE_STEP}")
    losses.append(optimizer_step(engine, SAVE_STEP, rank, world))  # the uninterrupted run goes on
    weights4 = full_states(engine, stage, moments=False)["fp32"]
    if rank == 0:
        torch.save({"losses": losses, "weights4": weights4}, out / f"w{world}_z{stage}" / "uninterrupted.pt")


def task_load(out: Path, stage: int, src: str, rank: int, world: int) -> None:
    from zerolm.pretrain.engine import lr_at

    saved_world = int(src.split("_")[0][1:])
    engine = build_engine(stage, world)
    t0 = time.perf_counter()
    mode = engine.load(out / src, f"step_{SAVE_STEP}", saved_world_size=saved_world)
    load_s = time.perf_counter() - t0
    # DeepSpeed's per-parameter view of the moments is not relinked by a same-world-size ZeRO-1/2
    # load (its ``optim_fragment`` stays None): there, read the weights only
    states = full_states(engine, stage, moments=stage == 0 or mode != "same")
    cfg = train_config(stage)
    dump = {
        "mode": mode, "load_s": load_s, **states,
        "steps": adam_steps(engine),
        "wd_wrapper": [g["weight_decay"] for g in engine.engine.optimizer.param_groups],
        "wd_client": [g["weight_decay"] for g in engine._client_opt.param_groups],
        "group_lrs": [g["lr"] for g in engine._client_opt.param_groups],
        "lr": engine.lr, "lr_expected": cfg.lr * lr_at(SAVE_STEP, cfg),
        "global_steps": int(engine.engine.global_steps), "global_samples": int(engine.engine.global_samples),
        "universal_exists": (out / src / f"step_{SAVE_STEP}" / "universal").is_dir(),
    }
    dump["loss_next"] = optimizer_step(engine, SAVE_STEP, rank, world)
    dump["weights_next"] = full_states(engine, stage, moments=False)["fp32"]
    dump["lr_next"], dump["lr_next_expected"] = engine.lr, cfg.lr * lr_at(SAVE_STEP + 1, cfg)
    dump["global_steps_next"] = int(engine.engine.global_steps)
    dump["steps_next"] = adam_steps(engine)
    if rank == 0:
        torch.save(dump, out / f"loaded_{src}_to_w{world}.pt")


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a storage shared by several counts once)."""
    seen = {}
    for t in tensors:
        if t is not None and t.numel():
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def task_share_master(out: Path, share: bool, rank: int, world: int) -> None:
    """ZeRO-3 fp32 with the master partition shared (or DeepSpeed's copy): 2 optimizer steps, a
    checkpoint, 2 more; dumps losses, weights, and what this rank's partitions hold in memory."""
    engine = build_engine(3, world, share)
    opt = engine.engine.optimizer
    groups = lambda: [*opt.fp16_partitioned_groups_flat, *opt.fp32_partitioned_groups_flat]  # noqa: E731
    dump = {
        "freed": engine.shared_fp32_master_bytes,
        # DeepSpeed's own record of this rank's partition of every parameter (padding included)
        "partition_numel": sum(p.ds_tensor.numel() for p in engine.module.parameters()),
        "held_bytes": _storage_bytes(groups()),
        "weights0": full_states(engine, 3, moments=False)["fp32"],
    }
    losses = [optimizer_step(engine, s, rank, world) for s in range(2)]
    root = out / f"w{world}_z3_share{int(share)}"
    engine.save(root, "step_2")
    losses += [optimizer_step(engine, s, rank, world) for s in range(2, 4)]
    dump["held_bytes_after"] = _storage_bytes(groups())
    dump["adam_keys_are_masters"] = all(any(k is m for m in opt.fp32_partitioned_groups_flat)
                                        for k in engine._client_opt.state)
    dump.update(losses=losses, weights=full_states(engine, 3, moments=False)["fp32"])
    if rank == 0:
        torch.save(dump, root / f"run_rank{rank}.pt")


def task_share_resume(out: Path, rank: int, world: int) -> None:
    """A fresh shared-master ZeRO-3 engine loads the shared run's step-2 checkpoint (same world size)
    and trains steps 3 and 4."""
    engine = build_engine(3, world, True)
    root = out / f"w{world}_z3_share1"
    engine.load(root, "step_2", saved_world_size=world)
    opt = engine.engine.optimizer
    still = all(lo.untyped_storage().data_ptr() == hi.untyped_storage().data_ptr()
                for lo, hi in zip(opt.fp16_partitioned_groups_flat, opt.fp32_partitioned_groups_flat))
    losses = [optimizer_step(engine, s, rank, world) for s in range(2, 4)]
    weights = full_states(engine, 3, moments=False)["fp32"]
    if rank == 0:
        torch.save({"losses": losses, "weights": weights, "shared_after_load": still}, root / "resumed.pt")


def main(spec_path: str) -> None:
    from zerolm.pretrain import distributed

    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    env = distributed.detect()
    distributed.init(env)
    for task in spec["tasks"]:
        t0 = time.perf_counter()
        if task["kind"] == "reference":
            task_reference(out, env.rank, env.world_size)
        elif task["kind"] == "train_save":
            task_train_save(out, task["stage"], env.rank, env.world_size)
        elif task["kind"] == "share_master":
            task_share_master(out, task["share"], env.rank, env.world_size)
        elif task["kind"] == "share_resume":
            task_share_resume(out, env.rank, env.world_size)
        elif task["kind"] == "load":
            task_load(out, task["stage"], task["src"], env.rank, env.world_size)
        else:
            raise ValueError(f"unknown task {task}")
        print(f"rank {env.rank}: {task} done in {time.perf_counter() - t0:.2f} s", flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=os.environ.get("ELASTIC_LOG_LEVEL", "INFO"))
    main(sys.argv[1])
    from zerolm.pretrain.distributed import exit_process

    exit_process(0)  # skip the interpreter teardown that can SIGABRT after destroy_process_group
