"""Plan a pretraining run before it starts: memory per rank, time, money, energy and CO2e.

:func:`plan_run` turns a validated :class:`zerolm.config.ZeroLMConfig` (from a YAML file or built in
code) and a few facts about the hardware into a plain dict; :func:`plan_renderables` shows that dict as
rich tables (the CLI prints them; ``zerolm plan --json`` prints the dict). Every number carries the
assumption it rests on. Formulas and sources: ``docs/plan.md``.

After a run, :func:`zerolm.launch.plan_vs_run.compare_run` plans the run's own ``config.yaml`` for its world size and sets the plan
beside what the run measured (``result.json``'s ``memory`` and ``throughput``, or ``metrics.jsonl`` for
older runs): memory per rank and step time, with ratios; :func:`zerolm.launch.plan_vs_run.measured_step_model`
gives a run's measured compute MFU and collective rates to plan another config with (``zerolm plan CONFIG
--mfu-from RUN_DIR``), and :func:`comm_seconds` the communication each ZeRO stage adds to a step.

Memory per rank (bytes), ``N`` parameters, ``g`` data-parallel ranks, ``w`` bytes of the working
dtype (2 for bf16/fp16, 4 for fp32), Adam(W):

* working parameters ``w·N`` (``w·N/g`` at ZeRO-3), working gradients ``w·N`` at ZeRO-0; at ZeRO-1/2 the
  gradient partition DeepSpeed keeps, ``w·N/g`` plus the parameters that straddle a partition boundary
  (:func:`zero12_grad_partition_elems`; ZeRO-1 with ``contiguous_gradients`` keeps it as ZeRO-2 does, its full
  gradients are transient and counted with the reduction buffer); at ZeRO-3 they are reduce-scattered
  straight into the fp32 partition, so only a transient bucket is held,
* optimizer state: fp32 master parameters ``4·N`` + two fp32 Adam moments ``8·N`` (the ZeRO paper's
  ``K = 12``, Rajbhandari et al. 2020 §3) + the fp32 gradient partition the optimizer steps with
  (``4·N``; DeepSpeed keeps it in mixed precision, in fp32 it is the working gradient itself), divided
  by ``g`` from ZeRO-1 on. In fp32 DeepSpeed's ZeRO-1/2 still clone an fp32 master partition; at
  ZeRO-0 in fp32 there is no master copy, nor at ZeRO-3 without offload when ``train.share_fp32_master``
  (the default) lets the engine re-point the master at the parameter partition.
* ZeRO-3 adds the largest layer gathered with its gradient (``2·w·largest_layer``), as DeepSpeed's
  ``estimate_zero3_model_states_mem_needs`` does.

This reproduces DeepSpeed's ``estimate_zero2/3_model_states_mem_needs`` exactly for bf16/fp16, apart from the
straddling parameters, which the estimator leaves out and DeepSpeed's own partitioning confirms (tested).
Apart from the model states: DeepSpeed's gradient-reduction buffer (:func:`comm_buffer_bytes`, read from
DeepSpeed 0.19.8's code with the bucket sizes of the config zerolm generates). Activations: Korthikanti et al. 2022 (eq. 2, no sequence/tensor parallelism), see :func:`activation_bytes`.
"""

from __future__ import annotations

import math
from typing import Any

from zerolm.config import ZeroLMConfig
from zerolm.errors import ConfigError
from zerolm.pretrain.ds_config import DS_REDUCE_BUCKET_SIZE

GB = 1e9  # device memory is labelled in decimal GB; we take the label at its word

#: Devices users have: dense peak TFLOP/s of the training dtype (tensor cores, no sparsity), memory (GB)
#: and board power (TDP, W). Sources: NVIDIA data sheets (A100: 312 TF bf16, 400 W SXM; H100 SXM: 989 TF
#: dense bf16, 700 W; H200 SXM: 989 TF, 141 GB, 700 W; V100 SXM2: 125 TF fp16 tensor, 300 W).
DEVICES: dict[str, dict[str, Any]] = {
    "a100": {"peak_tflops": 312.0, "memory_gb": 80.0, "tdp_w": 400.0, "name": "NVIDIA A100 80GB SXM"},
    "a100-40gb": {"peak_tflops": 312.0, "memory_gb": 40.0, "tdp_w": 400.0, "name": "NVIDIA A100 40GB SXM"},
    "h100": {"peak_tflops": 989.0, "memory_gb": 80.0, "tdp_w": 700.0, "name": "NVIDIA H100 SXM"},
    "h200": {"peak_tflops": 989.0, "memory_gb": 141.0, "tdp_w": 700.0, "name": "NVIDIA H200 SXM"},
    "v100": {"peak_tflops": 125.0, "memory_gb": 32.0, "tdp_w": 300.0, "name": "NVIDIA V100 32GB SXM2 (fp16 tensor)",
             "bf16": False},
    "cpu": {"peak_tflops": None, "memory_gb": None, "tdp_w": None, "name": "this machine's CPU (measured matmul, in the plan's precision)"},
}

#: Defaults printed as assumptions.
DEFAULT_MFU = 0.4
DEFAULT_PUE = 1.2  # hyperscale data centres ~1.1-1.2; Uptime Institute's 2023 survey average is 1.58
DEFAULT_GRID_G_PER_KWH = 475.0  # IEA world-average electricity carbon intensity (2019)
HOURS_PER_YEAR = 365.0 * 24.0
#: Framework overhead left out of the formulas (CUDA context, allocator fragmentation, comm buckets):
#: reserved off the device memory before deciding whether a plan fits.
OVERHEAD_FRACTION = 0.10

#: DeepSpeed 0.19.8 default (elements) of ZeRO-0's all-reduce buffer (deepspeed/runtime/engine.py,
#: ``MEMORY_OPT_ALLREDUCE_SIZE``, the ``bucket_size`` of ``allreduce_gradients``); its ``reduce_bucket_size``
#: default is ``DS_REDUCE_BUCKET_SIZE`` (pretrain/ds_config.py), which zerolm's ``build_ds_config`` lowers to
#: ``min(N, 5e8)`` at ZeRO-1/2 and to ``min(max(d_model², 2²²), N)`` at ZeRO-3 unless ``train.comm`` sets it.
DS_ZERO0_ALLREDUCE_SIZE = 500_000_000
#: ZeRO-3 defaults (runtime/zero/config.py) zerolm leaves unset: parameters of at most this many elements are kept
#: whole on every rank (``stage3_param_persistence_threshold``) and gathered parameters are kept while their
#: next use is within this many elements of the module order (``stage3_max_reuse_distance``).
DS_PARAM_PERSISTENCE_THRESHOLD = 100_000
DS_MAX_REUSE_DISTANCE = 1_000_000_000

_OFFLOADS = (("none", False, False), ("optimizer", True, False), ("optimizer+params", True, True))


def _working_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


def _auto_precision(gpu_type: str) -> tuple[str, str]:
    """What ``train.precision=auto`` trains in on ``gpu_type`` (as
    :func:`zerolm.pretrain.engine.resolve_precision` decides on the device itself), and the assumption
    text. ``cpu`` measures this machine's bf16 ÷ fp32 matmul rate (~0.6 s)."""
    if gpu_type == "cpu":
        from zerolm.pretrain.metrics import bf16_matmul_speedup, cpu_precision_choice

        chosen, why = cpu_precision_choice(bf16_matmul_speedup())
        return chosen, f"train.precision=auto -> {chosen}: {why}"
    name = DEVICES[gpu_type]["name"]
    if DEVICES[gpu_type].get("bf16", True):
        return "bf16", f"train.precision=auto -> bf16 ({name} has bf16 tensor cores)"
    return "fp32", (f"train.precision=auto -> fp32: {name} has no bf16 (train.precision=fp16 uses its fp16 tensor "
                    f"cores, whose peak is the one below)")


def model_state_bytes(n_params: int, largest_layer: int, *, stage: int, dp: int, precision: str,
                      offload_optimizer: bool = False, offload_params: bool = False,
                      share_fp32_master: bool = True, grad_partition: float | None = None,
                      contiguous_gradients: bool = True) -> dict[str, float]:
    """Model-state bytes per rank (device and CPU) for Adam(W) under DeepSpeed ZeRO.

    Args:
        n_params: N, unique parameters.
        largest_layer: parameters of the largest single module (ZeRO-3 gathers one at a time).
        stage: ZeRO stage 0-3; dp: data-parallel ranks (≥1); precision: ``fp32`` | ``bf16`` | ``fp16``.
        offload_optimizer / offload_params: DeepSpeed ``offload_optimizer`` / ``offload_param`` to CPU.
        share_fp32_master: ``train.share_fp32_master``: an fp32 ZeRO-3 run without offload keeps no
            separate fp32 master (the engine re-points it at the parameter partition).
        grad_partition: gradient elements a ZeRO-1/2 rank keeps (:func:`zero12_grad_partition_elems`: ``N/g``
            plus the parameters straddling partition boundaries); None: ``N/g``, as DeepSpeed's estimator.
        contiguous_gradients: ``train.comm.contiguous_gradients``. With it, ZeRO-1 keeps the same gradient
            partition as ZeRO-2 (its full working gradients are transient, counted by :func:`comm_buffer_bytes`);
            without it ZeRO-1 keeps the full ``w·N`` (the ZeRO paper's P_os; not measured here).

    Returns:
        ``{"params", "grads", "optimizer", "gathered", "device", "cpu"}`` in bytes (floats; ``device`` is the
        sum of the device-resident ones, ``cpu`` what lives in host memory for this rank).

    Raises:
        ConfigError: optimizer offload at stage 0, parameter offload below stage 3, dp < 1.
    """
    if dp < 1:
        raise ConfigError(f"data-parallel size must be >= 1 (got {dp})")
    if offload_optimizer and stage == 0:
        raise ConfigError("offload_optimizer needs zero_stage >= 1")
    if offload_params and stage != 3:
        raise ConfigError("offload_params needs zero_stage=3")
    w = _working_bytes(precision)
    n = float(n_params)
    params = w * n / (dp if stage == 3 else 1)
    part = n / dp if grad_partition is None else float(grad_partition)
    if stage == 3:
        grads = 0.0  # reduce-scattered straight into the fp32 partition (counted in the optimizer)
    elif stage == 2 or (stage == 1 and contiguous_gradients):
        grads = w * part  # grads_in_partition (stage_1_and_2.py copy_grads_in_partition)
    else:
        grads = w * n
    from zerolm.pretrain.ds_config import shares_fp32_master

    mixed = precision != "fp32"
    shared = shares_fp32_master(stage, precision, offload_optimizer, offload_params, share_fp32_master)
    master = 4.0 * n if (mixed or stage >= 1) and not shared else 0.0
    fp32_grad = 4.0 * n if (mixed or stage == 3) else 0.0
    optimizer = (master + fp32_grad + 8.0 * n) / (dp if stage >= 1 else 1)
    gathered = 2.0 * w * largest_layer if stage == 3 else 0.0
    cpu = 0.0
    dev_params, dev_grads, dev_opt = params, grads, optimizer
    if offload_optimizer:
        cpu += optimizer
        dev_opt = 0.0
        if stage == 2:  # gradient partitions are copied to host memory as they are reduced
            dev_grads = 0.0
    if offload_params:
        cpu += params
        dev_params = 0.0
    return {
        "params": dev_params, "grads": dev_grads, "optimizer": dev_opt, "gathered": gathered,
        "device": dev_params + dev_grads + dev_opt + gathered, "cpu": cpu,
    }


def zero12_grad_partition_elems(group_numels: list[list[int]], dp: int) -> int:
    """Gradient elements DeepSpeed's ZeRO-1/2 keeps per rank (``grads_in_partition``), on the rank that keeps most.

    Read from DeepSpeed 0.19.8 ``stage_1_and_2.py``: each optimizer parameter group is flattened in order and
    padded to a multiple of ``2·g`` elements (``nccl_start_alignment_factor`` 2), then cut into ``g`` equal
    partitions; ``get_partition_info`` lists the parameters that overlap a rank's partition, and
    ``copy_grads_in_partition`` allocates ``grads_in_partition`` with the WHOLE size of each of them. A parameter
    that straddles a partition boundary (often the embedding) is therefore held whole on both sides: the
    figure is ``N/g`` plus up to one parameter per boundary and group. ZeRO-1 does the same when
    ``contiguous_gradients`` is on (zerolm's default), so it keeps the same gradient partition as ZeRO-2.

    Args:
        group_numels: per parameter group (``pretrain.engine.weight_decay_groups`` order), the element count of
            each parameter in order.
        dp: data-parallel ranks (≥ 1).

    Returns:
        The largest rank's sum of the sizes of the parameters overlapping its partitions (elements).
    """
    per_rank = [0] * dp
    for sizes in group_numels:
        total = sum(sizes)
        part = (total + (-total) % (2 * dp)) // dp
        for r in range(dp):
            lo, hi, at = part * r, part * (r + 1), 0
            for size in sizes:
                if lo <= at < hi or at < lo < at + size:
                    per_rank[r] += size
                at += size
    return max(per_rank)


def comm_buffer_bytes(n_params: int, *, stage: int, precision: str, reduce_bucket_size: int = DS_REDUCE_BUCKET_SIZE,
                      overlap_comm: bool = False, resident_only: bool = False, grad_accum: int = 1,
                      contiguous_gradients: bool = True) -> dict[str, Any]:
    """DeepSpeed's gradient-reduction buffer per rank (bytes), beyond the model states of :func:`model_state_bytes`.

    Read from DeepSpeed 0.19.8 (``w`` working bytes, ``N`` parameters, ``B`` = ``reduce_bucket_size`` elements):

    * ZeRO-0 — ``engine.py`` ``allreduce_gradients`` → ``buffered_allreduce_fallback`` → ``allreduce_no_retain``
      → ``allreduce_bucket``: after backward the gradients are flattened into one new tensor of up to
      ``MEMORY_OPT_ALLREDUCE_SIZE`` elements (``w·min(N, 5e8)``), all-reduced and copied back. The activations
      are freed by then, so this competes with them: ``timing = "after_backward"``.
    * ZeRO-1/2 with ``contiguous_gradients`` (zerolm sets it) — ``stage_1_and_2.py`` ``setup_buckets`` allocates
      ``torch.empty(reduce_bucket_size)`` (two with ``overlap_comm``) before every backward, and
      ``reduce_independent_p_g_buckets_and_remove_grads`` copies each gradient into it and re-points ``param.grad``
      at the copy. On a GPU the whole allocation counts (``w·B``, ×2 with overlap); in CPU RAM only the touched
      pages are resident (``w·min(N, B·buffers)``). ZeRO-1 keeps its full working gradients (``w·N``) until the
      accumulation boundary, then copies them into the bucket (they ARE views into it from then on) and this
      rank's part into ``grads_in_partition``, which :func:`model_state_bytes` counts; so at ZeRO-1 the extra
      is ``max(bucket, w·N)`` (with accumulation > 1 on a GPU, bucket + ``w·N``: the gradients accumulate
      outside it first; without ``contiguous_gradients`` the ``w·N`` is in the model states instead). At ZeRO-2
      the bucket comes on top of the gradient partition (``grads_in_partition``).
    * ZeRO-3 — ``stage3.py`` ``__init__`` allocates one ``torch.empty(reduce_bucket_size)`` per dtype for the whole
      run; ``__add_grad_to_ipg_bucket`` copies gradients into it until it is full (``w·B`` on a GPU,
      ``w·min(N, B)`` resident in CPU RAM). The plan counts no working gradients at ZeRO-3, so all of it is extra.

    Stages 1–3 fill their bucket during backward, while activations are alive: ``timing = "backward"``.

    Args:
        n_params: N. stage: 0-3. precision: ``fp32`` | ``bf16`` | ``fp16`` (``w`` = 4 or 2; the bucket's dtype is
            the parameters'; ZeRO-1 with a separate fp32 gradient-accumulation dtype is not modelled).
        reduce_bucket_size: elements (the ds_config's ``zero_optimization.reduce_bucket_size``).
        overlap_comm: the ds_config's ``zero_optimization.overlap_comm`` (a second ZeRO-1/2 bucket).
        resident_only: count touched pages only (CPU RAM measured as RSS) instead of the allocation (GPU).
        grad_accum: gradient-accumulation steps.
        contiguous_gradients: ``train.comm.contiguous_gradients`` (ZeRO-1: where the full gradients are counted).

    Returns:
        ``{"buffer": bytes of the buffer, "extra": bytes not already in the model states, "timing":
        "backward" | "after_backward", "source": "file: function"}``.
    """
    w = _working_bytes(precision)
    n, b = float(n_params), float(reduce_bucket_size)
    if stage == 0:
        buf = w * min(n, float(DS_ZERO0_ALLREDUCE_SIZE))
        return {"buffer": buf, "extra": buf, "timing": "after_backward",
                "source": "deepspeed/runtime/engine.py: allreduce_gradients / allreduce_bucket (flatten)"}
    if stage in (1, 2):
        nbuf = 2 if overlap_comm else 1
        buf = w * min(n, b * nbuf) if resident_only else w * b * nbuf
        if stage == 1:
            inside = w * n if (resident_only or grad_accum == 1) else 0.0  # the working gradients live in it
            extra = max(0.0, buf - inside) + (w * n if contiguous_gradients else 0.0)
        else:
            extra = buf
        return {"buffer": buf, "extra": extra, "timing": "backward",
                "source": "deepspeed/runtime/zero/stage_1_and_2.py: setup_buckets / "
                          "reduce_independent_p_g_buckets_and_remove_grads"}
    buf = w * min(n, b) if resident_only else w * b
    return {"buffer": buf, "extra": buf, "timing": "backward",
            "source": "deepspeed/runtime/zero/stage3.py: __init__ (ipg bucket) / __add_grad_to_ipg_bucket"}


def comm_seconds(n_params: int, *, stage: int, dp: int, precision: str, grad_accum: int, rates: dict[str, Any],
                 reduce_bucket_size: int = DS_REDUCE_BUCKET_SIZE, fetching_modules: int = 0) -> dict[str, Any]:
    """Seconds per optimizer step that DeepSpeed 0.19.8 spends in collectives at ZeRO ``stage`` on ``dp``
    data-parallel ranks, none of it overlapped with compute (zerolm's ``overlap_comm`` is off on CPU; with it on,
    on GPUs, this is an upper bound).

    Each collective costs ``calls · latency + S · factor(dp) / bus_bandwidth`` (the α–β model with the rates
    :func:`zerolm.pretrain.distributed.collective_rates` measured; ``factor``: the ring algorithm's share,
    nccl-tests' bus bandwidth). ``S = w·N`` bytes (``w`` the working precision's bytes: gradients are reduced
    and parameters gathered in it). Per optimizer step, read from DeepSpeed's code:

    * ZeRO-0 — ``engine.py`` ``allreduce_gradients`` at the accumulation boundary: one all-reduce of ``S``
      (buckets of 5e8 elements);
    * ZeRO-1 — the same all-reduce at the boundary (``stage_1_and_2.py`` reduces its buckets with all-reduce:
      ``use_multi_rank_bucket_allreduce`` is on by default), in ``ceil(N/B)`` calls, then after the step
      ``all_gather_dp_groups``: an all-gather of the updated parameters (``S`` out, one call per optimizer group,
      2);
    * ZeRO-2 — the all-reduce on every micro-batch (gradients are partitioned as they are produced), the
      all-gather once;
    * ZeRO-3 — on every micro-batch an all-gather of the parameters (``S`` out; counted on 2 ranks,
      ``tests/test_step_sync.py``: the small persistent ones are in the flat partitions too) and a reduce-scatter of
      ``S`` in ``ceil(N/B)`` calls (``stage3.py`` ``__avg_scatter_grads``). The gathers come in 1.3–2.8 calls per
      micro-batch per module that owns a non-persistent parameter (counted by wrapping ``torch.distributed``: the
      tiny GPT's 10 such modules 28 per step at one micro-batch per step, 13.5 per micro-batch at 4; small's 18,
      51 per step: forward, backward and prefetch), taken as ``2 × fetching_modules`` latencies.

    Left out: offload's host↔device copies, the small all-reduces of the gradient norm and overflow checks,
    and DeepSpeed's own per-module hook time at ZeRO-3.

    Args:
        n_params: trainable parameters N.
        stage: ZeRO stage 0–3.
        dp: data-parallel ranks (no communication at 1).
        precision: ``fp32`` / ``bf16`` / ``fp16``.
        grad_accum: micro-batches per optimizer step.
        rates: :func:`~zerolm.pretrain.distributed.collective_rates`' dict (``latency_s``, ``bus_bytes_per_s``
            per collective).
        reduce_bucket_size: elements per reduction call (the ds_config's ``reduce_bucket_size``).
        fetching_modules: ZeRO-3 modules that own a parameter above the persistence threshold.

    Returns:
        ``{"seconds": s/step, "parts": [{"collective", "bytes", "calls", "per_step", "seconds"}]}``.

    Raises:
        KeyError: ``rates`` lacks a collective this stage uses.
    """
    from zerolm.pretrain.distributed import COLLECTIVE_BUS_FACTOR

    if dp <= 1:
        return {"seconds": 0.0, "parts": []}
    w, n = _working_bytes(precision), int(n_params)
    calls = max(1, -(-n // max(int(reduce_bucket_size), 1)))
    if stage == 0:
        plan = [("all_reduce", w * n, max(1, -(-n // DS_ZERO0_ALLREDUCE_SIZE)), 1)]
    elif stage in (1, 2):
        plan = [("all_reduce", w * n, calls, 1 if stage == 1 else grad_accum), ("all_gather", w * n, 2, 1)]
    else:
        plan = [("all_gather", w * n, 2 * max(int(fetching_modules), 1), grad_accum),
                ("reduce_scatter", w * n, calls, grad_accum)]
    parts, total = [], 0.0
    for name, nbytes, ncalls, per_step in plan:
        r = rates[name]
        sec = per_step * (ncalls * float(r["latency_s"]) + nbytes * COLLECTIVE_BUS_FACTOR[name](dp) / float(r["bus_bytes_per_s"]))
        parts.append({"collective": name, "bytes": nbytes, "calls": ncalls, "per_step": per_step, "seconds": sec})
        total += sec
    return {"seconds": total, "parts": parts}


def zero3_whole_param_bytes(n_params: int, persistent_params: int, largest_layer: int, *, precision: str,
                            max_reuse_distance: int = DS_MAX_REUSE_DISTANCE) -> dict[str, float]:
    """ZeRO-3 parameters held whole on a rank during training (bytes), beyond the partitions and the estimator's
    one gathered layer.

    From DeepSpeed 0.19.8's code:

    * ``runtime/zero/parameter_offload.py`` ``mark_persistent_parameters``: every parameter of at most
      ``stage3_param_persistence_threshold`` elements (default 1e5) is ``ds_persist`` — never released, whole on
      every rank: ``w·persistent_params``.
    * ``runtime/zero/partitioned_param_coordinator.py`` ``__params_to_release``: once the module trace is complete
      (from the second step on) a gathered parameter is NOT released after its module if it is used again within
      ``stage3_max_reuse_distance`` elements (default 1e9) of the module order. Forward is followed by backward in
      reverse, so a parameter at fraction ``x`` of the forward is next used after ``2·(1−x)·N`` elements: the
      parameters with ``2·(1−x)·N < D`` stay gathered from their forward to their backward —
      ``min(N − persistent, D/2)`` elements, all of them for models below ``D/2`` = 5e8 parameters. They are alive
      at the start of backward, with the activations.

    ``extra`` subtracts the parameter half of the estimator's gathered layer (``w·largest_layer``, already in the
    model states' ``gathered``).

    Returns:
        ``{"persistent", "retained", "extra"}`` in bytes.
    """
    w = _working_bytes(precision)
    persistent = w * float(persistent_params)
    retained = w * min(float(n_params - persistent_params), max_reuse_distance / 2.0)
    return {"persistent": persistent, "retained": retained,
            "extra": max(0.0, persistent + retained - w * float(largest_layer))}


def activation_bytes(*, seq_len: int, micro_batch: int, d_model: int, n_head: int, n_layer: int, vocab: int,
                     precision: str, checkpointing: bool) -> dict[str, float]:
    """Activation memory of one micro-batch (bytes).

    Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", eq. (2):
    per layer ``s·b·h·(34 + 5·a·s/h)`` bytes for 16-bit activations (1-byte dropout masks), ``s`` sequence,
    ``b`` micro-batch, ``h`` d_model, ``a`` heads. In fp32 the 16-bit terms double (we scale by 2, an
    approximation). With full activation checkpointing each layer keeps only its input, ``2·s·b·h``
    (``4·s·b·h`` in fp32), plus one layer's full activations while it is recomputed. Added explicitly:
    the fp32 logits ``4·s·b·V`` (Hugging Face upcasts them for the loss), and the loss at the start of
    backward, ``12·s·b·V`` (``loss``): ``transformers`` ``ForCausalLMLoss`` → ``torch.nn.functional.cross_entropy``
    = ``log_softmax`` + ``nll_loss``; ``log_softmax`` keeps its fp32 output (``4·s·b·V``) for backward, and when
    its backward runs the gradient of that output (from ``nll_loss``'s backward, dense) and the gradient of the
    logits (``4·s·b·V`` each) are alive together with it — while every layer's activations still are (the loss
    is the first thing backward visits, so this coincides with the activation peak). Left out: the ``5·a·s/h``
    attention-score term is not stored by fused/flash SDPA kernels (this is then an upper bound); MLP widths
    other than ``4h`` and grouped-query attention (the formula assumes GPT-2 shapes); embeddings' outputs;
    framework overhead.

    Returns:
        ``{"per_layer", "layers", "logits", "loss", "total"}`` in bytes.
    """
    s, b, h, a = float(seq_len), float(micro_batch), float(d_model), float(n_head)
    scale = 2.0 if precision == "fp32" else 1.0
    full_layer = s * b * h * (34.0 + 5.0 * a * s / h) * scale
    if checkpointing:
        layers = n_layer * 2.0 * s * b * h * scale + full_layer
    else:
        layers = n_layer * full_layer
    logits = 4.0 * s * b * vocab
    loss = 3.0 * 4.0 * s * b * vocab
    return {"per_layer": full_layer, "layers": layers, "logits": logits, "loss": loss, "total": layers + logits + loss}


def _model_counts(model_cfg, *, vocab: int, seq_len: int,
                  persistence_threshold: int = DS_PARAM_PERSISTENCE_THRESHOLD) -> dict[str, Any]:
    """Unique parameters, non-embedding parameters, the largest module's own parameters, the parameters
    ZeRO-3 keeps whole (at most ``persistence_threshold`` elements each) and each parameter's size per
    optimizer group (``zero12_groups``, for :func:`zero12_grad_partition_elems`), counted on a model built on
    the meta device (allocates nothing)."""
    import torch

    from zerolm.pretrain.engine import weight_decay_groups
    from zerolm.pretrain.models import build_model, count_parameters

    special = {"bos": 0, "eos": 1, "pad": 2, "unk": 3, "cls": 0, "sep": 1, "mask": 3}
    with torch.device("meta"):
        model = build_model(model_cfg, vocab_size=vocab, seq_len=seq_len, special_ids=special)
    counts = count_parameters(model)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    # parameters ZeRO-3 keeps whole (parameter_offload.py mark_persistent_parameters; named_parameters dedupes ties)
    persistent = sum(p.numel() for _, p in model.named_parameters() if p.numel() <= persistence_threshold)
    # modules whose forward makes ZeRO-3 gather parameters: those owning a non-persistent one (a tied one once)
    seen: set[int] = set()
    fetching = 0
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if p.numel() > persistence_threshold and id(p) not in seen]
        seen.update(id(p) for p in own)
        fetching += bool(own)
    groups = [[p.numel() for p in g["params"]] for g in weight_decay_groups(model, 0.0)]
    return {"total": counts["total"], "non_embedding": counts["non_embedding"], "largest_layer": int(largest),
            "persistent": int(persistent), "zero3_fetching_modules": fetching, "zero12_groups": groups}


def trainable_params(cfg: ZeroLMConfig, vocab_size: int | None = None) -> int:
    """Parameters the trainer will train for ``cfg`` (a model built from ``cfg.model`` on the meta device
    with the vocabulary of ``cfg.data.tokenizer_dir``, else ``tokenizer.vocab_size``; ties counted once):
    what ``build_ds_config``'s ``n_params`` gets from the live model in the engine.

    Raises:
        ConfigError: ``cfg.model`` gives no shape (a model loaded from a folder).
    """
    from zerolm.pretrain.models import resolve_model_config

    return _model_counts(resolve_model_config(cfg.model), vocab=_vocab_of(cfg, vocab_size)[0],
                         seq_len=cfg.data.seq_len)["total"]


def _vocab_of(cfg: ZeroLMConfig, vocab_size: int | None) -> tuple[int, str]:
    if vocab_size is not None:
        if vocab_size < 1:
            raise ConfigError(f"--vocab-size must be >= 1 (got {vocab_size})")
        return int(vocab_size), "given (--vocab-size)"
    from pathlib import Path

    tok_dir = Path(cfg.data.tokenizer_dir)
    if (tok_dir / "tokenizer.json").is_file() or (tok_dir / "tokenizer_config.json").is_file():
        try:
            from transformers import AutoTokenizer

            return len(AutoTokenizer.from_pretrained(str(tok_dir))), f"the tokenizer in {tok_dir}"
        except Exception as e:  # an unreadable folder: fall back, and say so
            return cfg.tokenizer.vocab_size, f"tokenizer.vocab_size (could not read {tok_dir}: {type(e).__name__})"
    return cfg.tokenizer.vocab_size, f"tokenizer.vocab_size ({tok_dir} has no tokenizer yet)"


def _check_number(name: str, value: float | None, *, low: float, strict: bool = False, high: float | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number (got {value!r})")
    if (value <= low) if strict else (value < low):
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {low} (got {value})")
    if high is not None and value > high:
        raise ConfigError(f"{name} must be <= {high} (got {value})")


def plan_run(cfg: ZeroLMConfig, *, gpus: int = 1, gpu_type: str = "a100", tokens: float | None = None,
             price_per_gpu_hour: float | None = None, grid_intensity_g_per_kwh: float | None = None,
             pue: float | None = None, mfu: float | None = None, peak_tflops: float | None = None,
             gpu_memory_gb: float | None = None, power_watts: float | None = None,
             vocab_size: int | None = None, mfu_source: str | None = None,
             peak_source: str | None = None, comm_rates: dict[str, Any] | None = None,
             comm_source: str | None = None) -> dict[str, Any]:
    """Plan a pretraining run: memory per rank, time, money, energy and CO2e, with every assumption.

    Args:
        cfg: a validated config (``load_config`` or built in code); its ``model``, ``data.seq_len``,
            ``data.micro_batch_size``, ``train.*`` (ZeRO stage, offload, precision, checkpointing, batch,
            ``max_steps``) are used.
        gpus: devices = data-parallel ranks (≥1).
        gpu_type: a key of :data:`DEVICES`.
        tokens: training tokens (default ``max_steps × global batch × seq_len``).
        price_per_gpu_hour: $ per device-hour (no money line without it).
        grid_intensity_g_per_kwh: gCO2e/kWh (default :data:`DEFAULT_GRID_G_PER_KWH`).
        pue: data-centre power usage effectiveness (default :data:`DEFAULT_PUE`).
        mfu: model FLOPs utilisation in (0, 1] (default :data:`DEFAULT_MFU`, marked assumed); with
            ``mfu_source`` (a measured one) any value > 0.
        peak_tflops: override the device's peak (for ``cpu`` the default is measured with
            :func:`zerolm.pretrain.metrics.measure_matmul_peak`, ~1 s).
        gpu_memory_gb: override the device memory (decimal GB).
        power_watts: average power per device (default its TDP; no energy line for ``cpu`` without it).
        vocab_size: override the vocabulary (else the tokenizer folder, else ``tokenizer.vocab_size``).
        peak_source: where a given ``peak_tflops`` comes from, printed beside it (default ``given``).
        mfu_source: where a given ``mfu`` comes from, printed beside it (default ``given``); e.g.
            ``measured in RUN_DIR`` from :func:`measured_mfu`.
        comm_rates: measured collective rates (:func:`zerolm.pretrain.distributed.collective_rates`, recorded
            in a run's ``result.json``). With them a step is compute + communication: ``mfu`` is then the MFU of
            the compute alone and :func:`comm_seconds` is added for the planned ZeRO stage and ranks
            (:func:`zerolm.launch.plan_vs_run.measured_step_model` gives both from a run). Without them the
            communication is inside the MFU.
        comm_source: where ``comm_rates`` come from, printed beside them.

    Returns:
        A JSON-able dict: ``model``, ``device``, ``memory`` (one row per ZeRO stage × offload, the config's
        marked ``current``; ``buffers`` = :func:`comm_buffer_bytes` ``extra`` with ``buffers_timing``; ``total_*``
        = device states + buffers + activations, or at ZeRO-0 states + max(activations, buffers)), ``time``, ``cost``, ``energy``, ``assumptions`` (name → text).

    Raises:
        ConfigError: unknown device, gpus < 1, negative tokens/price/intensity, PUE < 1, MFU outside (0, 1],
            an invalid model config — all before any work.
    """
    if gpu_type not in DEVICES:
        raise ConfigError(f"unknown --gpu-type {gpu_type!r}; known: {', '.join(DEVICES)}")
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise ConfigError(f"--gpus must be an integer >= 1 (got {gpus!r})")
    _check_number("--tokens", tokens, low=0, strict=True)
    _check_number("--price-per-gpu-hour", price_per_gpu_hour, low=0)
    _check_number("--grid-intensity", grid_intensity_g_per_kwh, low=0)
    _check_number("--pue", pue, low=1.0)
    # a measured MFU may exceed 1 when the run's peak reading was low (a busy machine): allowed, not assumed
    _check_number("--mfu", mfu, low=0, strict=True, high=None if mfu_source else 1.0)
    _check_number("--peak-tflops", peak_tflops, low=0, strict=True)
    _check_number("--gpu-memory", gpu_memory_gb, low=0, strict=True)
    _check_number("--power-watts", power_watts, low=0)
    if not isinstance(cfg, ZeroLMConfig):
        raise ConfigError(f"plan_run needs a ZeroLMConfig (got {type(cfg).__name__})")
    cfg = ZeroLMConfig.model_validate(cfg.model_dump(exclude_unset=True))  # re-validate one built or edited in code
    from zerolm.pretrain.models import flops_per_token, resolve_model_config

    mc = resolve_model_config(cfg.model)
    assumptions: dict[str, str] = {}
    vocab, vocab_src = _vocab_of(cfg, vocab_size)
    assumptions["vocab"] = f"{vocab} from {vocab_src}"
    seq, mb, tc = cfg.data.seq_len, cfg.data.micro_batch_size, cfg.train
    if tc.precision == "auto":
        chosen, assumptions["precision"] = _auto_precision(gpu_type)
        tc = tc.model_copy(update={"precision": chosen})
    # the ZeRO-3 bucket keys as build_ds_config sets them for this model's width (zero3_width_defaults)
    from zerolm.pretrain.ds_config import build_ds_config

    accum_now = tc.gradient_accumulation_steps or (max(1, tc.global_batch_size // (mb * gpus)) if tc.global_batch_size else 1)
    z3cfg = build_ds_config(tc.model_copy(update={"zero_stage": 3, "offload_optimizer": False, "offload_params": False}),
                            mb, accum_now, gpus, hidden_size=mc.d_model)["zero_optimization"]
    persist_at = int(z3cfg.get("stage3_param_persistence_threshold", DS_PARAM_PERSISTENCE_THRESHOLD))
    counts = _model_counts(mc, vocab=vocab, seq_len=seq, persistence_threshold=persist_at)
    n = counts["total"]
    # the reduce bucket is capped at the parameter count (zero3_width_defaults); the persistence threshold is not
    z3cfg = build_ds_config(tc.model_copy(update={"zero_stage": 3, "offload_optimizer": False, "offload_params": False}),
                            mb, accum_now, gpus, hidden_size=mc.d_model, n_params=n)["zero_optimization"]

    dev = dict(DEVICES[gpu_type])
    if peak_tflops is not None:
        peak, peak_src = float(peak_tflops), peak_source or "given (--peak-tflops)"
    elif dev["peak_tflops"] is not None:
        peak, peak_src = dev["peak_tflops"], f"{dev['name']} data sheet, dense {'fp32' if gpu_type == 'cpu' else 'bf16/fp16'}"
    else:
        from zerolm.pretrain.metrics import compute_dtype, measure_matmul_peak

        peak, peak_src = (measure_matmul_peak("cpu", compute_dtype(tc.precision)) / 1e12,
                          f"measured {tc.precision} matmul peak of this machine (this process's threads)")
    assumptions["peak"] = f"{peak:g} TFLOP/s per device: {peak_src}"
    mem_gb = gpu_memory_gb if gpu_memory_gb is not None else dev["memory_gb"]
    if mem_gb is None:  # cpu: physical memory
        import os

        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
        assumptions["memory"] = (f"{mem_gb:.1f} GB: this machine's physical memory; "
                                 f"{OVERHEAD_FRACTION:.0%} reserved for framework overhead")
    else:
        assumptions["memory"] = f"{mem_gb:g} GB per device ({'given' if gpu_memory_gb is not None else dev['name']}); " \
                                f"{OVERHEAD_FRACTION:.0%} reserved for framework overhead"
    usable = mem_gb * GB * (1.0 - OVERHEAD_FRACTION)

    # memory per rank
    rows = []
    # the bucket sizes and overlap_comm of the DeepSpeed config zerolm generates (pretrain/engine.py
    # build_ds_config); overlap_comm as it would be set on the planned device (on with CUDA)
    zcfg = build_ds_config(tc.model_copy(update={"zero_stage": 2, "offload_optimizer": False, "offload_params": False}),
                           mb, accum_now, gpus, hidden_size=mc.d_model, n_params=n)["zero_optimization"]
    bucket = bucket12 = int(zcfg.get("reduce_bucket_size", DS_REDUCE_BUCKET_SIZE))
    bucket3 = int(z3cfg.get("reduce_bucket_size", DS_REDUCE_BUCKET_SIZE))
    # build_ds_config: train.comm.overlap_comm, where "auto" means on with CUDA
    overlap = gpu_type != "cpu" if tc.comm.overlap_comm == "auto" else tc.comm.overlap_comm == "on"
    grad_part = zero12_grad_partition_elems(counts["zero12_groups"], gpus)
    offloads = list(_OFFLOADS)
    if tc.offload_params and not tc.offload_optimizer:
        offloads.append(("params", False, True))
    for stage in (0, 1, 2, 3):
        for name, off_opt, off_par in offloads:
            if (off_opt and stage == 0) or (off_par and stage != 3):
                continue
            ms = model_state_bytes(n, counts["largest_layer"], stage=stage, dp=gpus, precision=tc.precision,
                                   offload_optimizer=off_opt, offload_params=off_par,
                                   share_fp32_master=tc.share_fp32_master, grad_partition=grad_part,
                                   contiguous_gradients=tc.comm.contiguous_gradients)
            buf = comm_buffer_bytes(n, stage=stage, precision=tc.precision, reduce_bucket_size=bucket3 if stage == 3 else bucket,
                                    overlap_comm=overlap, resident_only=gpu_type == "cpu", grad_accum=accum_now,
                                    contiguous_gradients=tc.comm.contiguous_gradients)
            z3 = zero3_whole_param_bytes(n, counts["persistent"], counts["largest_layer"],
                                         precision=tc.precision)["extra"] if stage == 3 else 0.0
            row: dict[str, Any] = {"zero_stage": stage, "offload": name, **{k: ms[k] for k in ("params", "grads", "optimizer", "gathered", "cpu")},
                                   "buffers": buf["extra"], "buffers_timing": buf["timing"], "zero3_whole_params": z3,
                                   "current": stage == tc.zero_stage and off_opt == tc.offload_optimizer and off_par == tc.offload_params}
            for ckpt in (False, True):
                act = activation_bytes(seq_len=seq, micro_batch=mb, d_model=mc.d_model, n_head=mc.n_head,
                                       n_layer=mc.n_layer, vocab=vocab, precision=tc.precision, checkpointing=ckpt)
                per_b = act["total"] / mb  # every activation term is linear in the micro-batch
                key = "ckpt" if ckpt else "no_ckpt"
                if buf["timing"] == "after_backward":  # ZeRO-0's flat copy: the activations are gone by then
                    total = ms["device"] + max(act["total"], buf["extra"])
                    room = usable - ms["device"] if ms["device"] + buf["extra"] <= usable else 0.0
                else:
                    total = ms["device"] + buf["extra"] + z3 + act["total"]
                    room = usable - ms["device"] - buf["extra"] - z3
                row[f"activations_{key}"] = act["total"]
                row[f"total_{key}"] = total
                row[f"fits_{key}"] = total <= usable
                row[f"max_micro_batch_{key}"] = max(0, int(room // per_b))
            rows.append(row)
    act_now = activation_bytes(seq_len=seq, micro_batch=mb, d_model=mc.d_model, n_head=mc.n_head, n_layer=mc.n_layer,
                               vocab=vocab, precision=tc.precision, checkpointing=tc.activation_checkpointing)
    assumptions["activations"] = ("Korthikanti et al. 2022 eq. 2, s·b·h·(34+5as/h) B/layer (×2 in fp32); "
                                  "checkpointing 2sbh/layer + one layer; + fp32 logits 4sbV; + loss 12sbV (log_softmax output, "
                                  "its gradient and the logits' gradient at the start of backward: torch cross_entropy); "
                                  "leaves out flash-attention savings, GQA/non-4h MLPs")
    assumptions["buffers"] = (f"DeepSpeed gradient-reduction buffer, reduce_bucket_size {bucket:.3g} elements at ZeRO-1/2, "
                              f"{bucket3:.3g} at ZeRO-3 ({'train.comm.reduce_bucket_size' if tc.comm.reduce_bucket_size else 'ZeRO-1/2: min(N, 5e8); ZeRO-3: min(max(d_model², 2^22), N)'}), overlap_comm {overlap}, "
                              f"{'touched pages (CPU RSS)' if gpu_type == 'cpu' else 'whole allocation'}: ZeRO-0 flat "
                              "all-reduce copy w·min(N,5e8) after backward (engine.py allreduce_bucket), replacing the "
                              "activations in the peak; ZeRO-1/2 ipg bucket(s) (stage_1_and_2.py setup_buckets); ZeRO-1's full "
                              "gradients until they are copied into it; ZeRO-3 ipg bucket (stage3.py __init__); counted apart from the model states")
    assumptions["zero3_whole_params"] = (f"ZeRO-3: parameters <= {persist_at:.3g} elements kept whole (parameter_offload.py "
                                         "mark_persistent_parameters) + gathered parameters kept from forward to "
                                         "backward while reused within stage3_max_reuse_distance 1e9 elements "
                                         "(partitioned_param_coordinator.py __params_to_release): w·min(N, 5e8)")
    assumptions["model_states"] = ("Adam: working params+grads, fp32 master 4N + moments 8N + fp32 grad 4N "
                                   "(ZeRO paper K=12, DeepSpeed's +4N fp32 grad), partitioned per stage; ZeRO-1/2 "
                                   "gradient partition as DeepSpeed cuts it (parameters straddling a boundary whole, "
                                   f"largest rank: {grad_part:,} of {n:,} elements)"
                                   + ("; fp32 ZeRO-3 without offload: no separate master (train.share_fp32_master)"
                                      if tc.share_fp32_master and tc.precision == "fp32" else ""))

    # time
    fpt = flops_per_token(n, mc.n_layer, mc.d_model, seq)
    accum = tc.gradient_accumulation_steps
    if tc.global_batch_size is not None:
        seqs_per_step = tc.global_batch_size
    else:
        seqs_per_step = mb * (accum or 1) * gpus
    tokens_per_step = seqs_per_step * seq
    if tokens is None:
        tokens = float(tc.max_steps * tokens_per_step)
        assumptions["tokens"] = f"train.max_steps ({tc.max_steps}) × {seqs_per_step} sequences × seq_len {seq}"
    else:
        assumptions["tokens"] = "given (--tokens)"
    mfu_v = DEFAULT_MFU if mfu is None else float(mfu)
    total_flops = fpt * tokens
    compute_s = tokens_per_step * fpt / (gpus * peak * 1e12 * mfu_v)
    comm = None
    if comm_rates:
        comm = comm_seconds(n, stage=tc.zero_stage, dp=gpus, precision=tc.precision, grad_accum=accum_now,
                            rates=comm_rates, reduce_bucket_size=bucket3 if tc.zero_stage == 3 else (
                                bucket12 if tc.zero_stage else DS_ZERO0_ALLREDUCE_SIZE),
                            fetching_modules=counts["zero3_fetching_modules"])
        assumptions["mfu"] = (f"{mfu_v:g} of the compute, communication apart "
                              f"({'assumed default' if mfu is None else (mfu_source or 'given')})")
        rate_txt = ", ".join(f"{k.replace('_', '-')} {comm_rates[k]['bus_bytes_per_s'] / 1e9:.3g} GB/s"
                             for k in ("all_reduce", "all_gather", "reduce_scatter") if k in comm_rates)
        assumptions["communication"] = (
            f"{comm['seconds']:.3g} s/step at ZeRO-{tc.zero_stage} on {gpus} ranks: "
            + "; ".join(f"{p['collective'].replace('_', '-')} {p['bytes'] / 2**20:,.0f} MiB × {p['per_step']}" for p in comm["parts"])
            + f" (bus bandwidth {rate_txt}: {comm_source or 'given'}; α–β model, not overlapped with compute)")
    step_s = compute_s + (comm["seconds"] if comm else 0.0)
    eff_mfu = mfu_v if comm is None else compute_s * mfu_v / step_s
    if comm is None:
        assumptions["mfu"] = f"{mfu_v:g} ({'assumed default' if mfu is None else (mfu_source or 'given')})"
    steps = tokens / tokens_per_step
    wall_s = steps * step_s
    gpu_hours = gpus * wall_s / 3600.0
    time = {
        "flops_per_token": fpt, "total_flops": total_flops, "tokens": tokens, "tokens_per_step": tokens_per_step,
        "step_time_s": step_s, "tokens_per_s": tokens_per_step / step_s,
        "wall_s": wall_s, "wall_days": wall_s / 86400.0, "gpu_hours": gpu_hours, "gpu_years": gpu_hours / HOURS_PER_YEAR,
        "steps": steps, "mfu": eff_mfu, "compute_mfu": mfu_v if comm else None, "compute_s_per_step": compute_s,
        "comm_s_per_step": comm["seconds"] if comm else None, "comm": comm,
    }
    assumptions["flops"] = "6N + 12·L·d_model·seq_len per token (PaLM App. B; the trainer's MFU formula)"

    # money and footprint
    cost = None if price_per_gpu_hour is None else gpu_hours * price_per_gpu_hour
    assumptions["price"] = "not given (--price-per-gpu-hour)" if price_per_gpu_hour is None else f"${price_per_gpu_hour:g}/GPU-hour (given)"
    pue_v = DEFAULT_PUE if pue is None else float(pue)
    assumptions["pue"] = f"{pue_v:g} ({'assumed default' if pue is None else 'given'})"
    grid = DEFAULT_GRID_G_PER_KWH if grid_intensity_g_per_kwh is None else float(grid_intensity_g_per_kwh)
    assumptions["grid"] = f"{grid:g} gCO2e/kWh ({'assumed: IEA 2019 world average' if grid_intensity_g_per_kwh is None else 'given'})"
    watts = power_watts if power_watts is not None else dev["tdp_w"]
    if watts is None:
        energy_kwh = co2_kg = None
        assumptions["power"] = "unknown for cpu: give --power-watts"
    else:
        energy_kwh = gpus * watts / 1000.0 * (wall_s / 3600.0) * pue_v
        co2_kg = energy_kwh * grid / 1000.0
        assumptions["power"] = f"{watts:g} W per device ({'given' if power_watts is not None else 'TDP, ' + dev['name']})"
    return {
        "model": {"family": mc.family, "preset": mc.preset, "n_layer": mc.n_layer, "d_model": mc.d_model,
                  "n_head": mc.n_head, "vocab": vocab, "seq_len": seq, "micro_batch_size": mb,
                  "params": n, "non_embedding_params": counts["non_embedding"], "largest_layer_params": counts["largest_layer"],
                  "persistent_params": counts["persistent"],
                  "precision": tc.precision, "zero_stage": tc.zero_stage, "activation_checkpointing": tc.activation_checkpointing},
        "device": {"type": gpu_type, "count": gpus, "peak_tflops": peak, "memory_gb": mem_gb, "power_w": watts},
        "memory": rows,
        "activations_current": act_now,
        "time": time,
        "cost": {"usd": cost, "price_per_gpu_hour": price_per_gpu_hour},
        "energy": {"kwh": energy_kwh, "co2e_kg": co2_kg, "pue": pue_v, "grid_g_per_kwh": grid},
        "assumptions": assumptions,
    }


def _num(x: float) -> str:
    """3 significant digits below 100, whole numbers with thousands separators above."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _gib(x: float) -> str:
    return _num(x / 2**30)


def _dur(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.3g} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def plan_renderables(plan: dict[str, Any]) -> list[Any]:
    """Rich renderables of a :func:`plan_run` result: a memory table (GiB per rank) and a
    time/money/energy table whose last column names the assumption behind each number."""
    from rich.table import Table

    m, d = plan["model"], plan["device"]
    ckpt = m["activation_checkpointing"]
    key = "ckpt" if ckpt else "no_ckpt"
    other = "no_ckpt" if ckpt else "ckpt"
    mem = Table(title=f"memory per rank (GiB): {m['family']} {m['preset'] or 'custom'}, {m['params'] / 1e6:,.1f}M params, "
                      f"{m['precision']}, seq {m['seq_len']} × micro-batch {m['micro_batch_size']}, {d['count']} × {d['type']} "
                      f"({d['memory_gb']:.0f} GB)")
    for col in ("ZeRO", "offload", "params", "grads", "optim", "gathered", "buffers", f"activ.{' (ckpt)' if ckpt else ''}", "total",
                "fits", "max mb", f"max mb {'no ckpt' if ckpt else 'ckpt'}", "CPU/rank"):
        mem.add_column(col, justify="left" if col in ("ZeRO", "offload", "fits") else "right")
    for r in plan["memory"]:
        mem.add_row(
            f"{r['zero_stage']}{' *' if r['current'] else ''}", r["offload"], _gib(r["params"]), _gib(r["grads"]),
            _gib(r["optimizer"]), _gib(r["gathered"] + r["zero3_whole_params"]), _gib(r["buffers"]), _gib(r[f"activations_{key}"]), _gib(r[f"total_{key}"]),
            "yes" if r[f"fits_{key}"] else "[red]no[/red]", str(r[f"max_micro_batch_{key}"]),
            str(r[f"max_micro_batch_{other}"]), _gib(r["cpu"]), style="bold" if r["current"] else None,
        )
    t, e, a = plan["time"], plan["energy"], plan["assumptions"]
    run = Table(title="time, money, footprint (* = this config's ZeRO setting)")
    run.add_column("quantity")
    run.add_column("value", justify="right")
    run.add_column("assumption")
    run.add_row("parameters", f"{m['params']:,}", f"vocabulary: {a['vocab']}")
    run.add_row("FLOPs per token", f"{t['flops_per_token']:.4g}", a["flops"])
    run.add_row("tokens", f"{t['tokens']:.4g}", a["tokens"])
    run.add_row("training FLOPs", f"{t['total_flops']:.4g}", "")
    run.add_row("peak per device", f"{d['peak_tflops']:g} TFLOP/s", a["peak"])
    if t.get("comm"):
        run.add_row("MFU (compute)", f"{t['compute_mfu']:.3g}", a["mfu"])
        run.add_row("communication", _dur(t["comm_s_per_step"]) + "/step", a["communication"])
        run.add_row("MFU (step)", f"{t['mfu']:.3g}", "compute + communication")
    else:
        run.add_row("MFU", f"{t['mfu']:.3g}", a["mfu"])
    run.add_row("step time", _dur(t["step_time_s"]), f"{t['tokens_per_step']:,} tokens/step")
    run.add_row("tokens/s", f"{t['tokens_per_s']:,.0f}", f"{d['count']} devices")
    run.add_row("wall time", _dur(t["wall_s"]), f"{t['steps']:,.0f} steps")
    run.add_row("GPU-hours", _num(t["gpu_hours"]), f"{_num(t['gpu_years'])} GPU-years")
    run.add_row("cost", "—" if plan["cost"]["usd"] is None else f"${_num(plan['cost']['usd'])}", a["price"])
    run.add_row("energy", "—" if e["kwh"] is None else f"{_num(e['kwh'])} kWh", f"{a['power']}; PUE {a['pue']}")
    run.add_row("CO2e", "—" if e["co2e_kg"] is None else f"{_num(e['co2e_kg'])} kg", a["grid"])
    return [mem, run, f"activations: {a['activations']}", f"model states: {a['model_states']}", f"buffers: {a['buffers']}",
            f"ZeRO-3 whole parameters (in 'gathered'): {a['zero3_whole_params']}"]


__all__ = ["DEFAULT_GRID_G_PER_KWH", "DEFAULT_MFU", "DEFAULT_PUE", "DEVICES", "DS_REDUCE_BUCKET_SIZE",
           "DS_MAX_REUSE_DISTANCE", "DS_PARAM_PERSISTENCE_THRESHOLD", "DS_ZERO0_ALLREDUCE_SIZE", "OVERHEAD_FRACTION",
           "activation_bytes", "comm_buffer_bytes", "comm_seconds", "model_state_bytes",
           "plan_renderables", "plan_run", "zero3_whole_param_bytes"]
