"""What DeepSpeed ZeRO costs per rank: model-state, buffer and activation memory, and the seconds of collectives per
optimizer step — the formulas :func:`zerolm.launch.plan.plan_run` adds up, each read from DeepSpeed 0.19.8's
code or a paper and checked against DeepSpeed itself in the tests (``tests/test_plan.py``,
``tests/test_comm_model.py``, ``tests/test_step_sync.py``). Sources and the plan they feed: ``docs/plan.md``.

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

from typing import Any

from zerolm.errors import ConfigError
from zerolm.pretrain.ds_config import DS_REDUCE_BUCKET_SIZE

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


def _working_bytes(precision: str) -> int:
    return 4 if precision == "fp32" else 2


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
