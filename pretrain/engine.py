"""The one place zerolm touches DeepSpeed: building the engine, stepping it, checkpointing it.

The trainer sees :class:`Engine` only. Everything DeepSpeed-specific — the generated ds_config,
ZeRO stage 0–3, CPU offload, precision, the optimizer handed in as a client optimizer (torch
AdamW: no JIT-compiled op is needed on the default path), the LR schedule, checkpoint save/load —
lives here, so the same trainer runs on CPU/gloo and on N nodes × 8 GPUs/NCCL.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from zerolm.config import TrainConfig

log = logging.getLogger(__name__)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` after ``step`` optimizer steps: linear warmup over
    ``warmup_steps`` then cosine decay to ``min_lr_ratio`` at ``max_steps`` (GPT-3, Brown et al.
    2020 §B; nanoGPT ``get_lr``)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_ds_config(cfg: TrainConfig, micro_batch_size: int, grad_accum: int, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON config generated from our train config (one source of truth).

    Args:
        cfg: the train section.
        micro_batch_size: sequences per rank per forward pass.
        grad_accum: gradient accumulation steps.
        world_size: data-parallel size.

    Returns:
        A dict ``deepspeed.initialize(config=…)`` accepts; also written to the run dir.
    """
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        zero.update(contiguous_gradients=True, overlap_comm=torch.cuda.is_available())
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": micro_batch_size * grad_accum * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16", "loss_scale": 0},
        # a client torch optimizer (no JIT build); with offload on CPU-only machines too
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


class _SkippableAdamW(torch.optim.AdamW):
    """torch AdamW with DeepSpeed's ``overflow`` protocol: when ``overflow`` is set the step is a
    no-op, and the engine counts it as skipped and leaves the LR schedule where it was. ZeRO 1–3
    detect non-finite gradients themselves; this gives stage 0 the same behaviour."""

    overflow = False

    def step(self, closure=None):  # noqa: D102
        if self.overflow:
            return None
        return super().step(closure)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and embeddings, none on biases and norm gains (nanoGPT)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Engine:
    """A DeepSpeed engine around a ``transformers`` model.

    Args:
        model: the model (already initialised identically on every rank).
        cfg: the train section (ZeRO stage, offload, precision, optimizer, schedule).
        micro_batch_size, grad_accum, world_size: the batch arithmetic (see ``build_ds_config``).

    Use: ``loss = engine.forward(batch).loss; engine.backward(loss); engine.step()`` once per
    micro-batch; DeepSpeed applies the optimizer at the accumulation boundary.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, micro_batch_size: int, grad_accum: int, world_size: int) -> None:
        import deepspeed

        self.cfg = cfg
        self.grad_accum = grad_accum
        self.ds_config = build_ds_config(cfg, micro_batch_size, grad_accum, world_size)
        if cfg.activation_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        opt = _SkippableAdamW(
            _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
        )
        self._client_opt = opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=self.ds_config
        )
        self.device = self.engine.device

    # -- the step --------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> Any:
        """Run the model on a batch of ``(micro_batch_size, seq_len)`` tensors moved to the device."""
        return self.engine(**{k: v.to(self.device, non_blocking=True) for k, v in batch.items()})

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients (DeepSpeed scales by 1/grad_accum)."""
        self.engine.backward(loss)

    def step(self, skip: bool = False) -> None:
        """Advance one micro-step; at the accumulation boundary apply the optimizer unless the
        gradients are non-finite (ZeRO 1–3 detect it) or ``skip`` is set (stage 0)."""
        self._client_opt.overflow = bool(skip) and self.cfg.zero_stage == 0
        self.engine.step()
        self._client_opt.overflow = False

    def step_applied(self) -> bool:
        """Whether the last boundary ``step()`` changed the parameters."""
        return bool(self.engine.was_step_applied())

    @property
    def lr(self) -> float:
        """Current learning rate."""
        return float(self.scheduler.get_last_lr()[0])

    def grad_norm(self) -> float | None:
        """Global gradient 2-norm of the last applied step (before clipping), or None."""
        n = self.engine.get_global_grad_norm()
        if n is None:
            return None
        return float(n.item() if torch.is_tensor(n) else n)

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped model (parameters partitioned at ZeRO-3)."""
        return self.engine.module

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, root: Path, tag: str) -> None:
        """DeepSpeed checkpoint (model, optimizer, LR schedule; ZeRO shards per rank) under
        ``root/tag``; all ranks must call it. No ``latest`` file: the trainer writes its own."""
        self.engine.save_checkpoint(str(root), tag=tag, save_latest=False)

    def load(self, root: Path, tag: str) -> None:
        """Restore everything :meth:`save` wrote.

        Raises:
            RuntimeError: DeepSpeed could not load the checkpoint (missing or unreadable files).
        """
        path, _ = self.engine.load_checkpoint(
            str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")
