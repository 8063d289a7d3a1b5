"""Plan a pretraining run before it starts: memory per rank, time, money, energy and CO2e.

:func:`plan_run` turns a validated :class:`zerolm.config.ZeroLMConfig` (from a YAML file or built in
code) and a few facts about the hardware into a plain dict; :func:`plan_renderables` shows that dict as
rich tables (the CLI prints them; ``zerolm plan --json`` prints the dict). Every number carries the
assumption it rests on. Formulas and sources: ``docs/plan.md``.

After a run, :func:`zerolm.launch.plan_vs_run.compare_run` plans the run's own ``config.yaml`` for its world size and sets the plan
beside what the run measured (``result.json``'s ``memory`` and ``throughput``, or ``metrics.jsonl`` for
older runs): memory per rank and step time, with ratios; :func:`zerolm.launch.plan_vs_run.measured_step_model`
gives a run's measured compute MFU and collective rates to plan another config with (``zerolm plan CONFIG
--mfu-from RUN_DIR``), and :func:`zerolm.launch.ds_costs.comm_seconds` the communication each ZeRO stage adds to a step.

The DeepSpeed memory and communication formulas it adds up live in :mod:`zerolm.launch.ds_costs`.
"""

from __future__ import annotations

import math
from typing import Any

from zerolm.config import ZeroLMConfig
from zerolm.errors import ConfigError
from zerolm.launch.ds_costs import (  # noqa: F401 - re-exported: the plan's formulas, importable from here as before
    DS_MAX_REUSE_DISTANCE, DS_PARAM_PERSISTENCE_THRESHOLD, DS_REDUCE_BUCKET_SIZE, DS_ZERO0_ALLREDUCE_SIZE,
    activation_bytes, comm_buffer_bytes, comm_seconds, model_state_bytes, zero12_grad_partition_elems,
    zero3_whole_param_bytes)

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

_OFFLOADS = (("none", False, False), ("optimizer", True, False), ("optimizer+params", True, True))


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
