"""The DeepSpeed JSON config zerolm generates from its own config, and the rules that decide it.

One source of truth for what DeepSpeed is told (:func:`build_ds_config`: batch arithmetic, ZeRO stage,
offload, precision, communication and bucket sizes) and for the choices the engine makes around it
(:func:`compile_decision`, :func:`shares_fp32_master`). Pure functions of the config (no DeepSpeed
import): the engine (:mod:`zerolm.pretrain.engine`) uses them at start-up, and ``zerolm plan`` /
``zerolm launch ds-config`` call the same ones, so a preview cannot drift from what runs.
"""

from __future__ import annotations

from typing import Any

import torch

from zerolm.config import TrainConfig


#: DeepSpeed 0.19.8's ``zero_optimization.reduce_bucket_size`` default (elements; runtime/zero/config.py).
DS_REDUCE_BUCKET_SIZE = 500_000_000


def zero12_reduce_bucket(n_params: int) -> int:
    """ZeRO-1/2 ``reduce_bucket_size`` (elements) for a model of ``n_params`` trainable parameters:
    ``min(N, 5e8)``.

    DeepSpeed 0.19.8 ``stage_1_and_2.py`` ``setup_buckets`` allocates ``torch.empty(reduce_bucket_size)``
    per gradient dtype before every backward (two with ``overlap_comm``, which zerolm turns on with CUDA)
    and copies each gradient into it; a reduction starts when the next gradient would not fit, and the
    rest at the end of backward. With ``B ≥ N`` every gradient fits, so one reduction at the end of
    backward, whatever ``B`` is; ``B = N`` keeps that and allocates ``w·N`` instead of ``w·5e8`` bytes
    (2 GB per buffer in fp32, 1 GB in bf16: for a 125M-parameter model on a GPU, 2–4 GB held for nothing).
    Measured on 2 CPU ranks (``bench/plan_accuracy.py``, column ``tensors``: the peak of live tensor
    bytes from ``torch.profiler``, fp32): gpt3-125m ZeRO-2 3,126 → 1,567 MiB per rank, ZeRO-1 3,173 → 1,614,
    the tiny GPT 1,926 → 112 (docs/plan.md); the losses stay bitwise equal (``tests/test_pretrain.py``
    resumes a ZeRO-2 run started at 5e8). Models of more than 5e8 parameters keep DeepSpeed's bucket.
    """
    return int(min(max(int(n_params), 1), DS_REDUCE_BUCKET_SIZE))


#: The smallest ZeRO-3 ``reduce_bucket_size`` zerolm sets by default (elements; 16 MiB in fp32, 8 MiB in bf16).
#: Each flush of the bucket is one reduce-scatter, which costs a fixed latency α on top of its bytes ÷ bandwidth
#: β; a bucket keeps α under ~10 % of the transfer when it holds ≥ 10·α·β bytes: ~5 MB with gloo on this
#: machine (α ≈ 0.3 ms, β ≈ 0.7–1.8 GB/s, ``distributed.collective_rates``), ~2–20 MB with NCCL (α ≈ 10–50 µs,
#: β ≈ 100–400 GB/s). transformers' d² is below that for every model narrower than 2048.
ZERO3_MIN_REDUCE_BUCKET = 1 << 22


def zero3_width_defaults(hidden_size: int, n_params: int | None = None) -> dict[str, int]:
    """ZeRO-3 bucket sizes from the model width ``d`` = ``hidden_size`` (elements): ``reduce_bucket_size``
    ``max(d², 2²²)`` (at most ``n_params`` when given), ``stage3_prefetch_bucket_size`` 0.9·d²,
    ``stage3_param_persistence_threshold`` 10·d.

    The prefetch and persistence values are the ones transformers' DeepSpeed integration puts for ``"auto"``
    (``HfTrainerDeepSpeedConfig``), which most HF Trainer + ZeRO-3 runs use. DeepSpeed's own defaults (5e8 / 5e7
    / 1e5) hold a reduce bucket of 5e8 elements for the whole run (2 GB in fp32 on a GPU) and gather up to 5e7
    parameters ahead; measured here (``bench/comm_sweep.py``, GPT-2 6×512, 2 ranks): the same tokens/s (1.006×)
    at 0.85× the peak RSS per rank (docs/performance.md).

    The reduce bucket has a floor, :data:`ZERO3_MIN_REDUCE_BUCKET`: with transformers' d² a narrow model flushes
    its bucket once per parameter or two, each flush a latency-bound reduce-scatter. Measured on 2 CPU ranks
    (fp32, ``bench/plan_accuracy.py`` shapes, s/step, d² → floor): tiny 0.240 → 0.193, small 0.822 → 0.741,
    gpt3-125m 4.26 → 3.93 (ZeRO-0: 0.148, 0.619, 3.12); docs/performance.md. Capped at the parameter count,
    since a larger bucket only allocates more (DeepSpeed 0.19.8 ``stage3.py`` allocates
    ``torch.empty(reduce_bucket_size)`` per gradient dtype for the whole run)."""
    d = int(hidden_size)
    bucket = max(d * d, ZERO3_MIN_REDUCE_BUCKET)
    if n_params:
        bucket = min(bucket, max(int(n_params), 1))
    return {"reduce_bucket_size": bucket, "stage3_prefetch_bucket_size": int(0.9 * d * d),
            "stage3_param_persistence_threshold": 10 * d}


def build_ds_config(cfg: TrainConfig, micro_batch_size: int, grad_accum: int, world_size: int,
                    hidden_size: int | None = None, n_params: int | None = None) -> dict[str, Any]:
    """The DeepSpeed JSON config generated from our train config (one source of truth).

    Args:
        cfg: the train section.
        micro_batch_size: sequences per rank per forward pass.
        grad_accum: gradient accumulation steps.
        world_size: data-parallel size.
        hidden_size: the model's width (``config.hidden_size``); at ZeRO-3 the bucket sizes that
            ``train.comm`` leaves unset follow it (:func:`zero3_width_defaults`). None: DeepSpeed's defaults.
        n_params: the model's trainable parameter count; at ZeRO-1/2 an unset ``train.comm.reduce_bucket_size``
            becomes ``min(N, 5e8)`` (:func:`zero12_reduce_bucket`), at ZeRO-3 it caps the width default.
            None: DeepSpeed's 5e8 at ZeRO-1/2, no cap at ZeRO-3.

    Returns:
        A dict ``deepspeed.initialize(config=…)`` accepts; also written to the run dir.

    Raises:
        ConfigError: ``cfg.precision`` is still ``auto`` (resolve it first:
            :func:`zerolm.pretrain.engine.resolve_precision`, which the trainer calls at start).
    """
    if cfg.precision == "auto":
        from zerolm.errors import ConfigError

        raise ConfigError("train.precision=auto must be resolved to fp32, bf16 or fp16 before the DeepSpeed config is "
                          "built (zerolm.pretrain.engine.resolve_precision; the trainer does it at start)")
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    if cfg.zero_stage >= 1:
        comm = cfg.comm
        overlap = torch.cuda.is_available() if comm.overlap_comm == "auto" else comm.overlap_comm == "on"
        zero.update(contiguous_gradients=comm.contiguous_gradients, overlap_comm=overlap)
        if cfg.zero_stage == 3 and hidden_size:
            zero.update(zero3_width_defaults(hidden_size, n_params))
        if cfg.zero_stage in (1, 2) and n_params:
            zero["reduce_bucket_size"] = zero12_reduce_bucket(n_params)
        for key, ds_key in (("reduce_bucket_size", "reduce_bucket_size"), ("allgather_bucket_size", "allgather_bucket_size"),
                            ("prefetch_bucket_size", "stage3_prefetch_bucket_size"),
                            ("param_persistence_threshold", "stage3_param_persistence_threshold")):
            value = getattr(comm, key)
            if value is not None:  # a train.comm value wins over both defaults
                zero[ds_key] = int(value)
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


def compile_decision(cfg: TrainConfig) -> tuple[bool, str]:
    """Whether the training steps run ``torch.compile``'d, and why (logged at start-up).

    ``train.compile``: ``"on"`` / ``"off"`` as given; ``"auto"``: on when ``max_steps ≥
    compile_min_steps`` (the compile time is paid once at the first step; the threshold is where the
    measured steady-state gain has paid it back on this project's CPU bench, ``bench/compile_gain.py``)
    and the ZeRO stage is 0–2 (ZeRO-3 gathers parameters in per-module hooks that split the graph;
    not measured here: ``"on"`` tries it).

    Returns:
        ``(enabled, reason)``.
    """
    if cfg.compile != "auto":
        return cfg.compile == "on", f"train.compile={cfg.compile}"
    if cfg.zero_stage == 3:
        return False, "train.compile=auto: off at ZeRO-3"
    if cfg.max_steps < cfg.compile_min_steps:
        return False, f"train.compile=auto: off, max_steps {cfg.max_steps} < compile_min_steps {cfg.compile_min_steps}"
    return True, f"train.compile=auto: on, max_steps {cfg.max_steps} >= compile_min_steps {cfg.compile_min_steps}"


def shares_fp32_master(stage: int, precision: str, offload_optimizer: bool, offload_params: bool,
                       enabled: bool = True) -> bool:
    """Whether zerolm's engine keeps one copy of the fp32 master (see :func:`share_fp32_master`).

    The one rule both the engine and ``zerolm plan`` (``launch/plan.py``) follow: ZeRO-3, fp32 training,
    no optimizer or parameter offload, and ``train.share_fp32_master`` on (``enabled``). Everywhere
    else DeepSpeed's separate master stays (bf16/fp16 need an fp32 master; offload keeps it on the host;
    ZeRO-1/2: see :func:`share_fp32_master`).
    """
    return bool(enabled) and stage == 3 and precision == "fp32" and not (offload_optimizer or offload_params)
