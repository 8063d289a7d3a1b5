"""The one place zerolm touches DeepSpeed: starting the process group, building the engine,
stepping it, checkpointing it, and reading a checkpoint back as fp32 Hugging Face weights.

The trainer sees :class:`Engine` only. Everything DeepSpeed-specific — the process group
(:func:`init_distributed`), the generated ds_config, ZeRO stage 0–3, CPU offload, precision, the
optimizer handed in as a client optimizer (torch AdamW: no JIT-compiled op is needed on the
default path), the LR schedule, checkpoint save/load — lives here, with two companions: the generated
ds_config (:mod:`zerolm.pretrain.ds_config`) and the checkpoint folders as files (universal conversion, and
consolidating a ZeRO-sharded checkpoint into one fp32 state dict for export and finetuning:
:mod:`zerolm.pretrain.ds_checkpoint`), so the same trainer runs on CPU/gloo and on N nodes × 8
GPUs/NCCL. The checkpoint *layout* (completion record, discovery, retention) is
:mod:`zerolm.pretrain.checkpoint`'s.

Elastic resume (a checkpoint written at another data-parallel world size: :meth:`Engine.load` with
``saved_world_size``). ZeRO 1–3 use DeepSpeed's own universal checkpointing: rank 0 converts the
checkpoint once, in-process (``deepspeed.checkpoint.ds_to_universal.main``, one worker, no child
processes), into ``<tag>/universal`` (built in a temporary sibling and renamed into place, so an
interrupted conversion leaves nothing half-written; a later resume reuses it, and retention deletes
it with its checkpoint; a shared filesystem is assumed, as for checkpoints themselves); then every
rank loads it with the engine's ``load_universal`` switch on: each rank takes its own slice of every
parameter's fp32 weights and Adam ``exp_avg``/``exp_avg_sq``/``step``; the LR scheduler,
``global_steps`` and ``global_samples`` come from rank 0's model-states file. ZeRO-3's universal
loader gives every param group the hyper-parameters of group 0 (the no-decay group would silently
get weight decay) and one shared ``step`` tensor to all sub-groups (AdamW increments it in place, so
it would advance once per sub-group per step): :meth:`Engine.load` re-applies each group's saved
hyper-parameters and unshares the step after the load. The converter knows Adam's state only (it
reads ``exp_avg``/``exp_avg_sq`` by name; another optimizer fails with ``KeyError: 'exp_avg'``):
zerolm always trains with AdamW. At ZeRO-0 (which universal checkpoints do not support) every rank
holds the whole optimizer state and DeepSpeed writes it once, to ``mp_rank_00_model_states.pt``: its
plain load reads that file on every rank at any world size (its world-size check guards only ZeRO
shards). DeepSpeed saves no RNG or data state: that is the trainer's
(:mod:`zerolm.pretrain.checkpoint`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from zerolm.config import TrainConfig
from zerolm.pretrain.ds_config import build_ds_config, compile_decision, shares_fp32_master
from zerolm.errors import ConfigError, TrainingError
from zerolm.pretrain.ds_checkpoint import ensure_universal_checkpoint, saved_param_groups

log = logging.getLogger(__name__)


def skip_shm_build() -> None:
    """Stop DeepSpeed's CPU backend from JIT-compiling its shared-memory all-reduce op.

    DeepSpeed 0.19.8's ``TorchBackend`` builds ``deepspeed_shm_comm`` with ninja+gcc in every
    ``init_distributed`` on Linux (30–80 s on a fresh machine); it only serves inference all-reduce,
    while ZeRO training uses the gloo collectives. Call after ``import deepspeed``, before
    ``deepspeed.init_distributed``. (``sys.modules``: ``import deepspeed.comm.torch as m`` would give
    the torch package, which ``deepspeed.comm`` re-exports under that name.)
    """
    import deepspeed  # noqa: F401 - loads deepspeed.comm.torch

    ds_torch_comm = sys.modules.get("deepspeed.comm.torch")
    if ds_torch_comm is not None and hasattr(ds_torch_comm, "build_shm_op"):
        ds_torch_comm.build_shm_op = lambda: None


def init_distributed(local_rank: int) -> None:
    """Start the process group through DeepSpeed from the ``env://`` variables
    (:func:`zerolm.pretrain.distributed.detect` sets them): NCCL on this process's GPU when CUDA is
    present, else gloo (without building the shared-memory op, see :func:`skip_shm_build`)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    else:
        skip_shm_build()
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def resolve_precision(requested: str, *, resumed: str | None = None,
                      cpu_bf16_speedup: Callable[[], float] | None = None) -> tuple[str, str]:
    """The precision a run trains in, and why: ``train.precision=auto`` made concrete.

    ``auto`` is bf16 mixed precision (bf16 working weights, fp32 master weights and optimizer state in
    DeepSpeed) wherever it is fast, else fp32 — the default of current pretraining recipes on hardware
    with bf16 units (torchtitan's FSDP ``mixed_precision_param``; llm-foundry's ``amp_bf16``):

    * a run that continues a checkpoint keeps the checkpoint's precision (``resumed``), so a restart on
      other hardware never switches it silently;
    * CUDA: bf16 where DeepSpeed's accelerator supports it (Ampere and newer), else fp32 (fp16 needs
      loss scaling; it is never chosen for you);
    * CPU: bf16 when ``cpu_bf16_speedup()`` (bf16 ÷ fp32 matmul FLOP/s, measured; the caller makes it
      the same on every rank) is at least :data:`~zerolm.pretrain.metrics.BF16_MIN_MATMUL_SPEEDUP`.

    Args:
        requested: ``train.precision``: ``auto`` | ``fp32`` | ``bf16`` | ``fp16`` (anything but ``auto``
            is returned as it is).
        resumed: the precision recorded by the checkpoint this run continues, if any.
        cpu_bf16_speedup: measures the CPU's bf16 ÷ fp32 matmul rate (default
            :func:`~zerolm.pretrain.metrics.bf16_matmul_speedup`); called only for ``auto`` on CPU.

    Returns:
        ``(precision, reason)``: one of ``fp32``/``bf16``/``fp16`` and a log line (empty unless ``auto``).
    """
    if requested != "auto":
        return requested, ""
    if resumed:
        return resumed, f"train.precision=auto: {resumed}, the precision of the checkpoint this run continues"
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    if acc.device_name() != "cpu":
        if acc.is_bf16_supported():
            return "bf16", f"train.precision=auto: bf16, the {acc.device_name()} accelerator supports it"
        return "fp32", f"train.precision=auto: fp32, the {acc.device_name()} accelerator has no bf16"
    from zerolm.pretrain.metrics import bf16_matmul_speedup, cpu_precision_choice

    choice, why = cpu_precision_choice((cpu_bf16_speedup or bf16_matmul_speedup)())
    return choice, f"train.precision=auto: {choice}, {why}"


def check_precision(precision: str) -> None:
    """Refuse a precision this machine's accelerator cannot train in, before any work.

    DeepSpeed's accelerator reports what it supports (its CPU accelerator: bf16 yes, fp16 no — its
    ``deepspeed.initialize`` would otherwise fail after the model, data and run directory were built).

    Raises:
        ConfigError: ``train.precision`` is fp16 or bf16 and the accelerator does not support it.
    """
    if precision == "fp32":
        return
    from deepspeed.accelerator import get_accelerator

    acc = get_accelerator()
    supported = acc.is_fp16_supported() if precision == "fp16" else acc.is_bf16_supported()
    if not supported:
        usable = ["bf16"] if precision == "fp16" and acc.is_bf16_supported() else []
        raise ConfigError(f"train.precision={precision}: the {acc.device_name()} accelerator of this machine cannot "
                          f"train in {precision} (DeepSpeed's accelerator reports it unsupported); use "
                          + " or ".join(f"train.precision={p}" for p in [*usable, "fp32"]))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Multiplier of ``cfg.lr`` after ``step`` optimizer steps: linear warmup over
    ``warmup_steps`` then cosine decay to ``min_lr_ratio`` at ``max_steps`` (GPT-3, Brown et al.
    2020 §B; nanoGPT ``get_lr``)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class _SkippableAdamW(torch.optim.AdamW):
    """torch AdamW with DeepSpeed's ``overflow`` protocol: when ``overflow`` is set the step is a
    no-op, and the engine counts it as skipped and leaves the LR schedule where it was. ZeRO 1–3
    detect non-finite gradients themselves; this gives stage 0 the same behaviour."""

    overflow = False

    def step(self, closure=None):  # noqa: D102
        if self.overflow:
            return None
        return super().step(closure)


def weight_decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The optimizer's two parameter groups, in this order: weight decay on matrices and embeddings
    (``p.dim() >= 2``), none on biases and norm gains (nanoGPT). DeepSpeed's ZeRO-1/2 flattens and partitions
    each group on its own, so :func:`zerolm.launch.ds_costs.zero12_grad_partition_elems` plans with this split."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def share_fp32_master(zero3_optimizer: Any) -> int:
    """Make a ZeRO-3 optimizer that trains in fp32 keep one copy of this rank's parameter partition.

    DeepSpeed's ZeRO-3 steps AdamW on ``fp32_partitioned_groups_flat`` (the fp32 master partition, one
    flat 1-D tensor per sub-group) and copies the result into ``fp16_partitioned_groups_flat`` (the
    working partition the forward pass gathers; fp32 too when the run is fp32). Its
    ``_create_fp32_partitions`` means to reuse the working partition as the master when the two have
    the same dtype and device, but in 0.19.8 it compares ``tensor.device`` (a ``torch.device``) with the
    accelerator's device *name* (a ``str``), which is never equal, so it always clones: every rank holds
    its ``4·N/g`` bytes of fp32 weights twice. This re-points each master sub-group at its working
    partition (``.data``; the Python objects the AdamW state and the param groups are keyed on stay the
    same), before the first optimizer step: the numbers are equal, every later step updates the one
    copy in place, and DeepSpeed's copy master → working becomes a copy onto itself. Checkpoints are
    unchanged: both ``load`` paths (plain and universal) write the master then copy it into the working
    partition, and the saved master tensors are views of the same per-rank buffer as before.

    Only sub-groups whose two tensors have the same dtype, device and size and still equal values are
    shared (offload, mixed precision and NVMe swapping keep DeepSpeed's copy). ZeRO-1/2 also clone an
    fp32 master in fp32 runs, by design; sharing it is not done: their working partition is a view
    into the whole model's flat buffer, so ``torch.save`` of the optimizer shard would write the whole
    buffer on every rank. Write-up: ``docs/zero3-fp32-master.md``.

    Args:
        zero3_optimizer: the engine's ``DeepSpeedZeroOptimizer_Stage3`` (``engine.optimizer``).

    Returns:
        Bytes of the fp32 master partitions freed on this rank (0 when nothing could be shared).
    """
    working = getattr(zero3_optimizer, "fp16_partitioned_groups_flat", None)
    master = getattr(zero3_optimizer, "fp32_partitioned_groups_flat", None)
    if not working or not master or len(working) != len(master):
        return 0
    freed = 0
    for low, high in zip(working, master):
        if low is None or high is None or low.dtype != high.dtype or low.device != high.device \
                or low.shape != high.shape or low.numel() == 0:
            continue
        if low.untyped_storage().data_ptr() == high.untyped_storage().data_ptr():
            continue  # already one copy (a DeepSpeed that fixed the comparison)
        if not torch.equal(low, high):
            continue  # not a fresh clone: leave it alone
        freed += high.numel() * high.element_size()
        high.data = low.data
    if freed:
        log.debug("ZeRO-3 fp32 master shares the parameter partition: %.1f MiB freed on this rank", freed / 2**20)
    return freed


def _activation_checkpointing(model: torch.nn.Module) -> bool:
    """Whether a ``transformers`` model recomputes activations in backward (its
    ``is_activation_checkpointing``; transformers 5 deprecated the ``gradient_checkpointing`` names)."""
    return bool(getattr(model, "is_activation_checkpointing", False))


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
        self.ds_config = build_ds_config(cfg, micro_batch_size, grad_accum, world_size,
                                         hidden_size=getattr(getattr(model, "config", None), "hidden_size", None),
                                         n_params=sum(p.numel() for p in model.parameters() if p.requires_grad))
        if cfg.activation_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        opt = _SkippableAdamW(
            weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
            **{"fused": True} if cfg.adamw_impl == "fused" else {"foreach": True},
        )
        self._client_opt = opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, cfg))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=self.ds_config
        )
        self.device = self.engine.device
        shareable = shares_fp32_master(cfg.zero_stage, cfg.precision, cfg.offload_optimizer, cfg.offload_params,
                                       cfg.share_fp32_master)
        #: bytes of the fp32 master partition this rank no longer holds twice (0: nothing shared)
        self.shared_fp32_master_bytes = share_fp32_master(self.engine.optimizer) if shareable else 0
        #: whether the training steps run torch.compile'd, and why (``train.compile``)
        self.compiled, self.compile_reason = compile_decision(cfg)
        if self.compiled:
            # DeepSpeed compiles the module in place (``nn.Module.compile``, inductor on CPU and CUDA):
            # parameter names, hooks and checkpoints stay those of the eager module
            self.engine.compile()
        # DeepSpeed computes the pre-clipping gradient norm inside its ZeRO / mixed-precision
        # optimizers; at ZeRO-0 in fp32 it clips without keeping the norm, so we measure it here
        self._own_grad_norm = cfg.zero_stage == 0 and cfg.precision == "fp32"
        self._grad_norm: torch.Tensor | None = None

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
        if self._own_grad_norm and self.engine.is_gradient_accumulation_boundary():
            # gradients are reduced over ranks and scaled by 1/grad_accum by now (DeepSpeed's backward)
            grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
            self._grad_norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0) if grads else None
        self.engine.step()
        self._client_opt.overflow = False

    def step_applied(self) -> bool:
        """Whether the last boundary ``step()`` changed the parameters."""
        return bool(self.engine.was_step_applied())

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step uses (the schedule's, times :meth:`set_lr_scale`)."""
        return float(self._client_opt.param_groups[0]["lr"])

    def set_lr_scale(self, factor: float) -> None:
        """Make the next optimizer step use ``factor`` × the schedule's learning rate (1 = the schedule).

        The LR scheduler sets every group's LR from its base LR at each step, so a factor holds for one
        step; call again before each step it should apply to. Used after a loss-spike recovery (a lower
        LR for a while) and by the spike test hook (a one-step blow-up). ZeRO's optimizers train the
        client optimizer's parameter groups, so their LR is the one set here.
        """
        step = self.scheduler.last_epoch
        for group, base in zip(self._client_opt.param_groups, self.scheduler.base_lrs):
            group["lr"] = base * lr_at(step, self.cfg) * factor

    def grad_norm(self) -> float | None:
        """Global gradient 2-norm of the last applied step (before clipping), or None."""
        n = self._grad_norm if self._own_grad_norm else self.engine.get_global_grad_norm()
        if n is None:
            return None
        return float(n.item() if torch.is_tensor(n) else n)

    def features(self) -> dict[str, bool]:
        """What the built engine really does, read from DeepSpeed's ZeRO optimizer and the model
        (not from our config): ``offload_optimizer`` (optimizer state on the CPU),
        ``offload_params`` (ZeRO-3 parameters on the CPU), ``activation_checkpointing`` (the
        ``transformers`` model recomputes activations in backward), ``compiled`` (DeepSpeed's engine
        compiled the module: ``train.compile``)."""
        opt = self.engine.optimizer
        return {
            "offload_optimizer": bool(getattr(opt, "offload_optimizer", getattr(opt, "cpu_offload", False))),
            "offload_params": bool(getattr(opt, "offload_param", False)),
            "activation_checkpointing": _activation_checkpointing(self.engine.module),
            "compiled": bool(getattr(self.engine, "is_compiled", False)),
        }

    def train(self) -> None:
        """Training mode; the compiled forward (``train.compile``) is used again."""
        self.engine.train()
        if self.compiled:
            torch.compiler.set_stance("default")

    def eval(self) -> None:
        """Evaluation mode. A compiled model evaluates eagerly (``torch.compiler.set_stance
        ("force_eager")`` until :meth:`train`): no-grad passes and the few-shot evals' varying shapes
        would otherwise each compile new graphs, minutes on a CPU, for a few forward passes."""
        self.engine.eval()
        if self.compiled:
            torch.compiler.set_stance("force_eager")

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped model (parameters partitioned at ZeRO-3)."""
        return self.engine.module

    @contextlib.contextmanager
    def full_parameters(self):
        """Yield the wrapped model with every parameter whole on this rank, so that each rank may run
        forward passes of its own, a different number on each rank (in-loop downstream evals).

        ZeRO 0–2: every rank already holds the whole model; nothing changes. ZeRO-3: all parameters
        are gathered once (``deepspeed.zero.GatheredParameters``, read-only: ``modifier_rank=None``)
        and DeepSpeed's per-module fetch/release hooks are detached for the duration (DeepSpeed's own
        ``unwrap_model_for_generation`` does the same; its root pre-forward hook is detached too, as it
        runs a collective while the hooks' trace is being recorded). With the hooks attached, each
        forward would release the gathered parameters and re-gather them with collectives, and ranks
        running different numbers of forwards would deadlock. On exit the hooks are re-attached with
        the same module ids (their trace is re-recorded on the next training step) and the parameters
        partitioned again. All ranks must enter and leave together; memory: the whole model per rank.
        Changes made to the parameters inside are discarded at ZeRO-3.
        """
        module = self.engine.module
        if self.cfg.zero_stage != 3:
            yield module
            return
        import deepspeed

        offload = self.engine.optimizer.parameter_offload
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            for hook in [offload.fwd_pre_hook, *offload.forward_hooks, *offload.backward_hooks]:
                hook.remove()
            offload.forward_hooks, offload.backward_hooks = [], []
            try:
                yield module
            finally:
                # the same hooks, in the same order, as DeepSpeedZeRoOffload.setup_zero_stage3_hooks
                offload.fwd_pre_hook = module.register_forward_pre_hook(
                    lambda *_: offload.get_param_coordinator().reset_step())
                offload._register_deepspeed_module(module, count=[module.ds_id])

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, root: Path, tag: str) -> None:
        """DeepSpeed checkpoint (model, optimizer, LR schedule; ZeRO shards per rank) under
        ``root/tag``; all ranks must call it. No ``latest`` file: the trainer writes its own.

        At ZeRO-1/2 the model-states file carries DeepSpeed's ``universal_checkpoint_info`` (empty:
        no tensor/pipeline parallelism to describe), which its universal converter requires
        (ZeRO-3 checkpoints need none)."""
        client_state: dict[str, Any] = {}
        if self.cfg.zero_stage in (1, 2):
            from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

            client_state[UNIVERSAL_CHECKPOINT_INFO] = {}
        self.engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)

    @property
    def dp_world_size(self) -> int:
        """The engine's data-parallel world size."""
        return int(self.engine.dp_world_size)

    def load(self, root: Path, tag: str, saved_world_size: int | None = None) -> str:
        """Restore everything :meth:`save` wrote, also when it was written at another data-parallel
        world size (elastic resume; see the module docstring). All ranks must call it.

        Args:
            root: the checkpoints folder.
            tag: the checkpoint's folder name under ``root``.
            saved_world_size: the data-parallel world size the checkpoint was written at (from the
                trainer's completion record); None when unknown (taken to be this one).

        Returns:
            ``"same"`` (plain load at the saved world size), ``"universal"`` (ZeRO 1–3 at another
            world size: converted to ``root/tag/universal`` once, then loaded from there) or
            ``"stage0"`` (ZeRO-0 at another world size: every rank reads the one replicated state).

        Raises:
            TrainingError: the conversion or the load at another world size failed (the message names
                the checkpoint); raised on every rank.
            RuntimeError: DeepSpeed could not load the checkpoint at the same world size (missing or
                unreadable files).
        """
        root = Path(root)
        current = self.dp_world_size
        if saved_world_size is None or int(saved_world_size) == current:
            self._load_plain(root, tag)
            return "same"
        log.info("checkpoint %s was written at data-parallel world size %d, resuming at %d (ZeRO-%d)",
                 root / tag, saved_world_size, current, self.cfg.zero_stage)
        if self.cfg.zero_stage == 0:
            try:
                self._load_plain(root, tag)
            except Exception as e:  # noqa: BLE001 - DeepSpeed/torch errors of a damaged file
                raise TrainingError(f"cannot load ZeRO-0 checkpoint {root / tag} (written at world size "
                                    f"{saved_world_size}) at world size {current}: {type(e).__name__}: {e}") from e
            return "stage0"
        universal = ensure_universal_checkpoint(root / tag)
        try:
            self._load_universal(universal)
        except TrainingError:
            raise
        except Exception as e:  # noqa: BLE001 - DeepSpeed asserts/raises many kinds on a bad folder
            raise TrainingError(f"cannot load the universal copy {universal} of checkpoint {root / tag} "
                                f"(written at world size {saved_world_size}) at world size {current}: "
                                f"{type(e).__name__}: {e}") from e
        return "universal"

    def continue_optimizer(self, root: Path, tag: str, saved_world_size: int | None) -> str:
        """Continued pretraining with another run's optimizer (``model.init_optimizer=checkpoint``):
        load that checkpoint's engine state (weights — the ones the model was initialised with —,
        AdamW moments and step counts, the LR scheduler's step) as :meth:`load` does, then apply this
        run's optimizer settings: base LR ``cfg.lr``, betas, eps, weight decay per group. The LR then
        follows this config's schedule (:func:`lr_at`) from the checkpoint's step on. All ranks call it.

        Returns:
            As :meth:`load`.

        Raises:
            TrainingError, RuntimeError: as :meth:`load`.
        """
        how = self.load(Path(root), tag, saved_world_size)
        groups = self._client_opt.param_groups
        for g, wd in zip(groups, (self.cfg.weight_decay, 0.0)):
            g.update(weight_decay=wd, betas=(self.cfg.beta1, self.cfg.beta2), eps=self.cfg.eps, initial_lr=self.cfg.lr)
        self.scheduler.base_lrs = [self.cfg.lr] * len(groups)
        self.set_lr_scale(1.0)
        return how

    def _load_plain(self, root: Path, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(
            str(root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {root / tag}")

    def _load_universal(self, universal: Path) -> None:
        """Load a converted universal checkpoint folder into the built engine, then re-apply each
        param group's saved hyper-parameters (ZeRO-3's loader copies group 0's into every group)."""
        config = self.engine._config  # DeepSpeedEngine.load_universal_checkpoint() reads this flag
        before = config.load_universal_checkpoint
        config.load_universal_checkpoint = True
        try:
            path, _ = self.engine.load_checkpoint(str(universal.parent), tag=universal.name,
                                                  load_optimizer_states=True, load_lr_scheduler_states=True)
        finally:
            config.load_universal_checkpoint = before
        if path is None:
            raise TrainingError(f"DeepSpeed found no model-states file in {universal}")
        self._restore_param_group_hparams(saved_param_groups(universal))
        self._unshare_adam_steps()

    def _unshare_adam_steps(self) -> None:
        """Give every optimizer state entry its own ``step`` tensor. ZeRO-3's universal loader
        (``load_hp_checkpoint_state_from_checkpoint_dir_stage3``) stores one tensor object as the
        ``step`` of every sub-group; torch's AdamW increments ``step`` in place, once per sub-group
        step, so with k sub-groups the shared counter would advance by k per optimizer step and the
        bias correction of all but the first sub-group would be wrong."""
        fused = any(g.get("fused") for g in self._client_opt.param_groups)
        for p, st in self._client_opt.state.items():
            if torch.is_tensor(st.get("step")):
                # fused AdamW keeps ``step`` as a float32 tensor on the parameter's device (as its own
                # load_state_dict casts it); the converter's tensor may live elsewhere
                st["step"] = (st["step"].to(device=p.device, dtype=torch.float32) if fused else st["step"]).clone()

    def _restore_param_group_hparams(self, saved: list[dict[str, Any]] | None) -> None:
        """Give group ``i`` of the optimizer the hyper-parameters saved for group ``i`` (all keys but
        ``params``), as a same-world-size load does; without a readable saved list (or another
        number of groups), the configured weight decay per group (:func:`weight_decay_groups`)."""
        groups = self._client_opt.param_groups  # DeepSpeed's ZeRO wrappers expose these same dicts
        if saved is None or len(saved) != len(groups):
            log.warning("the checkpoint's optimizer param groups are unreadable or do not match (%s saved, %d "
                        "built): re-applying the configured weight decay per group",
                        None if saved is None else len(saved), len(groups))
            for g, wd in zip(groups, (self.cfg.weight_decay, 0.0)):
                g["weight_decay"] = wd
            return
        for g, s in zip(groups, saved):
            for k, v in s.items():
                if k != "params":
                    g[k] = v
        log.debug("param groups after the universal load: weight decay %s", [g.get("weight_decay") for g in groups])
