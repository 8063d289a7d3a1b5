"""Plan vs reality on a run directory: what a pretraining run measured beside what :mod:`zerolm.launch.plan`
predicts for it.

:func:`read_run` reads what a run recorded about itself (``result.json``'s ``memory`` and ``throughput``,
or ``metrics.jsonl`` for older runs); :func:`compare_run` plans the run's own ``config.yaml`` for its world
size (:func:`zerolm.launch.plan.plan_run`) and sets the plan beside the measurements — memory per rank and
step time, with ratios; :func:`compare_renderables` shows that as rich tables (``zerolm plan RUN_DIR``);
:func:`measured_mfu` / :func:`measured_step_model` give a run's measured MFU (and its links' speed) to plan
another config with (``zerolm plan CONFIG --mfu-from RUN_DIR``). Formulas and the benchmark of the plan's accuracy: ``docs/plan.md``.
"""

from __future__ import annotations

import math
from typing import Any

from zerolm.errors import ConfigError
from zerolm.launch.plan import _dur, _gib, _model_counts, _vocab_of, plan_renderables, plan_run

def _read_json(path) -> Any:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({type(e).__name__}: {e})") from e


def _median(values: list[float]) -> float | None:
    import statistics

    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return statistics.median(values) if values else None


def read_run(run_dir) -> dict[str, Any]:
    """What a finished (or running) pretraining run recorded about its memory and throughput.

    Reads ``RUN_DIR/config.yaml`` (the resolved config the run used), ``result.json`` (its ``memory`` and
    ``throughput`` sections, written by the trainer), ``ds_config.json`` and ``metrics.jsonl``. Runs from
    before the trainer recorded ``memory``/``throughput`` fall back to ``metrics.jsonl`` (rank 0 only; the
    throughput medians are then taken here over the log windows after the first, as the trainer does; no
    RSS baseline exists there) — ``notes`` says so.

    Returns:
        ``{"run_dir", "cfg" (ZeroLMConfig), "world_size", "world_size_source", "throughput" ({"step_time_s",
        "tokens_per_second", "mfu", "windows", "peak_tflops_per_rank"} or values None), "memory" ({"kind":
        "rss" | "cuda" | "rss_absolute" | None, "bytes": [per rank], "baseline_bytes", "peak_bytes", "text"}),
        "cuda" (bool: the run recorded CUDA memory), "collectives" (the collective rates the trainer measured,
        :func:`zerolm.pretrain.distributed.collective_rates`, or None), "notes" (list of str)}``. Bytes are ints/floats
        (GiB × 2³⁰ as recorded).

    Raises:
        ConfigError: ``run_dir`` is not a folder or has no ``config.yaml`` (the message names the file); the
            config fails validation; ``result.json`` / ``metrics.jsonl`` / ``ds_config.json`` exist but are not
            readable JSON (named); neither ``result.json`` nor ``metrics.jsonl`` exists.
    """
    from pathlib import Path

    from zerolm.config import load_config

    root = Path(run_dir)
    cfg_path = root / "config.yaml"
    if not root.is_dir():
        raise ConfigError(f"{root}: not a directory (expected a run directory holding config.yaml)")
    if not cfg_path.is_file():
        raise ConfigError(f"{cfg_path}: not found — {root} is not a zerolm run directory")
    cfg = load_config(cfg_path)
    notes: list[str] = []
    res_path, met_path, ds_path = root / "result.json", root / "metrics.jsonl", root / "ds_config.json"
    result: dict[str, Any] = {}
    if res_path.is_file():
        result = _read_json(res_path)
        if not isinstance(result, dict):
            raise ConfigError(f"{res_path}: unreadable (expected a JSON object, got {type(result).__name__})")
    elif not met_path.is_file():
        raise ConfigError(f"{res_path}: not found (nor {met_path.name}): the run recorded nothing to compare with")
    else:
        notes.append(f"no {res_path.name} (run unfinished?): read {met_path.name} only")
    windows: list[dict[str, Any]] = []
    if met_path.is_file():
        import json

        try:
            lines = met_path.read_text().splitlines()
            rows = [json.loads(ln) for ln in lines if ln.strip()]
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{met_path}: unreadable ({type(e).__name__}: {e})") from e
        windows = [r for r in rows if isinstance(r, dict) and "train/step_time_s" in r]

    mem_rec = result.get("memory") if isinstance(result.get("memory"), dict) else None
    thr_rec = result.get("throughput") if isinstance(result.get("throughput"), dict) else None

    # world size: the per-rank memory lists, else the DeepSpeed batch arithmetic, else 1
    world, world_src = None, ""
    if mem_rec and isinstance(mem_rec.get("peak_rss_gib"), list) and mem_rec["peak_rss_gib"]:
        world, world_src = len(mem_rec["peak_rss_gib"]), "ranks recorded in result.json memory"
    elif isinstance(result.get("world_size"), int):
        world, world_src = result["world_size"], "result.json world_size"
    elif ds_path.is_file():
        ds = _read_json(ds_path)
        try:
            world = int(ds["train_batch_size"]) // (int(ds["train_micro_batch_size_per_gpu"]) * int(ds.get("gradient_accumulation_steps", 1)))
            world_src = "ds_config.json: train_batch_size ÷ (micro-batch × accumulation)"
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            world = None
    if not world or world < 1:
        world, world_src = 1, "not recorded: assumed 1"
        notes.append("world size not recorded: assumed 1")

    # throughput
    if thr_rec and thr_rec.get("step_time_s") is not None:
        thr = {k: thr_rec.get(k) for k in ("step_time_s", "tokens_per_second", "mfu", "windows", "peak_tflops_per_rank")}
        thr["source"] = f"{res_path.name} throughput (medians over {thr.get('windows')} log windows after the first)"
    else:
        use = windows[1:] if len(windows) > 1 else windows
        thr = {"step_time_s": _median([w.get("train/step_time_s") for w in use]),
               "tokens_per_second": _median([w.get("train/tokens_per_second") for w in use]),
               "mfu": _median([w.get("train/mfu") for w in use]), "windows": len(use), "peak_tflops_per_rank": None,
               "source": f"{met_path.name} (rank 0; medians over {len(use)} log windows"
                         f"{' after the first' if len(windows) > 1 else ''}; no throughput in result.json)"}
        if windows:
            notes.append(f"throughput from {met_path.name} (older run: no throughput section in result.json)")

    # memory
    cuda = False
    mem: dict[str, Any] = {"kind": None, "bytes": None, "baseline_bytes": None, "peak_bytes": None, "text": "not recorded"}
    if mem_rec:
        cu = mem_rec.get("cuda_max_allocated_gib")
        if isinstance(cu, list) and cu and all(isinstance(v, (int, float)) for v in cu):
            cuda = True
            mem.update(kind="cuda", bytes=[v * 2**30 for v in cu],
                       text="torch.cuda.max_memory_allocated per rank (tensors only; no CUDA context or allocator cache)")
        else:
            base, peak = mem_rec.get("baseline_rss_gib"), mem_rec.get("peak_rss_gib")
            if isinstance(base, list) and isinstance(peak, list) and len(base) == len(peak) and peak:
                mem.update(kind="rss", bytes=[(p - b) * 2**30 for p, b in zip(peak, base)],
                           baseline_bytes=[b * 2**30 for b in base], peak_bytes=[p * 2**30 for p in peak],
                           text=f"peak RSS − baseline RSS per rank; baseline: {mem_rec.get('baseline', 'not described')}")
    elif windows:
        cu = [w["memory/cuda_max_allocated_gib"] for w in windows if isinstance(w.get("memory/cuda_max_allocated_gib"), (int, float))]
        rss = [w["memory/rss_gib"] for w in windows if isinstance(w.get("memory/rss_gib"), (int, float))]
        if cu:
            cuda = True
            mem.update(kind="cuda", bytes=[max(cu) * 2**30],
                       text=f"rank 0's largest torch.cuda.max_memory_allocated in {met_path.name} (older run)")
        elif rss:
            mem.update(kind="rss_absolute", bytes=[max(rss) * 2**30],
                       text=f"rank 0's largest RSS at a log window in {met_path.name} (older run: no baseline recorded, "
                            "so this includes the Python/torch/DeepSpeed runtime — not comparable with the plan)")
        notes.append(f"memory from {met_path.name}, rank 0 only (older run: no memory section in result.json)")
    coll = result.get("collectives") if isinstance(result.get("collectives"), dict) else None
    return {"run_dir": str(root), "cfg": cfg, "world_size": world, "world_size_source": world_src,
            "throughput": thr, "memory": mem, "cuda": cuda, "collectives": coll, "notes": notes}


def measured_mfu(run_dir, for_cfg=None) -> tuple[float, str]:
    """The median MFU a run measured (``result.json`` throughput, else ``metrics.jsonl``), for
    ``plan_run(mfu=..., mfu_source=...)``.

    MFU carries over between runs that differ in length, data or number of nodes; it does not carry over
    a change of how each step runs. With ``for_cfg`` (the config being planned), the source names what
    differs among ZeRO stage, offload, precision, activation checkpointing and compile — e.g. ZeRO-3's
    parameter gathers and partitioning hooks are time that is not FLOPs: in ``bench/plan_accuracy.py`` a
    ZeRO-0 run's MFU predicted ZeRO-3 step times 1.4–1.85× too short (``docs/plan.md``).

    Returns:
        ``(mfu, "measured in RUN_DIR (...)")``, the source with ``; differs from the plan: …`` when it does.

    Raises:
        ConfigError: as :func:`read_run`; or the run recorded no positive MFU.
    """
    return _mfu_of(read_run(run_dir), for_cfg)


def _mfu_of(run: dict[str, Any], for_cfg=None, modelled: tuple[str, ...] = ()) -> tuple[float, str]:
    """:func:`measured_mfu` on a :func:`read_run` result; settings in ``modelled`` are not named as
    differences (the plan accounts for them)."""
    v = run["throughput"].get("mfu")
    if not isinstance(v, (int, float)) or not (0 < v < math.inf):
        raise ConfigError(f"{run['run_dir']}: no usable measured MFU (got {v!r}) in result.json or metrics.jsonl")
    warn = "; above 1: that run's peak reading was low (busy machine)" if v > 1 else ""
    if for_cfg is not None:
        differs = [f"{key} {a} (plan: {b})" for key, a, b in _step_settings(run["cfg"], for_cfg)
                   if a != b and key not in modelled]
        if differs:
            warn += "; differs from the plan: " + ", ".join(differs) + " — measure MFU with the plan's settings"
    return float(v), f"measured in {run['run_dir']}: {run['throughput']['source']}{warn}"


def measured_step_model(run_dir, for_cfg=None) -> dict[str, Any]:
    """What a run measured, split into compute and communication, to plan another config with
    (``zerolm plan CONFIG --mfu-from RUN_DIR``; ``plan_run(mfu=..., comm_rates=...)``).

    A run that recorded its collective rates (``result.json`` ``collectives``, trainers from this version on,
    2+ ranks) gives the MFU of its compute alone: ``MFU_compute = MFU × t / (t − c)``, with ``t`` its median
    step time and ``c`` the communication :func:`zerolm.launch.ds_costs.comm_seconds` predicts for its own ZeRO
    stage and ranks from those rates. The plan then adds the communication of the planned stage and ranks —
    so a ZeRO-0 run can plan ZeRO-3, whose parameter gathers cost time that is not FLOPs. Without rates
    (one rank, an older run, or a modelled ``c`` ≥ 0.9·``t``) this is :func:`measured_mfu` with the
    communication inside the MFU.

    The MFU is against the peak the run measured (``peak_tflops`` here): planning the same kind of device, pass
    it as the plan's peak so that the run's achieved FLOP/s carry over, not a fresh reading of the peak.

    Returns:
        ``{"mfu", "mfu_source", "comm_rates" (or None), "comm_source", "run_comm_s" (``c``, or None),
        "peak_tflops" (the run's, or None), "cuda" (the run recorded CUDA memory)}``.

    Raises:
        ConfigError: as :func:`measured_mfu`.
    """
    run = read_run(run_dir)
    mfu, src = _mfu_of(run, for_cfg)
    rates, thr = run["collectives"], run["throughput"]
    step, peak = thr.get("step_time_s"), thr.get("peak_tflops_per_rank")
    base = {"mfu": mfu, "mfu_source": src, "comm_rates": None, "comm_source": None, "run_comm_s": None,
            "peak_tflops": peak if isinstance(peak, (int, float)) and peak > 0 else None, "cuda": run["cuda"]}
    if not rates or not step or not peak:
        return base
    own = plan_run(run["cfg"], gpus=run["world_size"], gpu_type="a100" if run["cuda"] else "cpu", mfu=mfu,
                   mfu_source="measured", peak_tflops=peak, comm_rates=rates)
    c = own["time"]["comm_s_per_step"] or 0.0
    if c >= 0.9 * step:
        base["mfu_source"] += f"; its modelled communication ({c:.3g} s) is ≥ 0.9× its step time: rates not used"
        return base
    _, src = _mfu_of(run, for_cfg, modelled=("train.zero_stage",))  # the stage's communication is modelled now
    return {**base, "mfu": mfu * step / (step - c),
            "mfu_source": f"{src}; its modelled communication {c:.3g} s of its {step:.3g} s/step taken out",
            "comm_rates": rates,
            "comm_source": f"measured by {run['run_dir']} ({rates.get('backend')}, {rates.get('world_size')} ranks)",
            "run_comm_s": c}


def _step_settings(measured, planned) -> list[tuple[str, Any, Any]]:
    """(key, measured run's value, planned config's value) of the settings that change what a step costs
    beyond its FLOPs. ``train.compile`` is compared as what it decides (``"on"``/``"off"``, by
    :func:`~zerolm.pretrain.ds_config.compile_decision`): ``"auto"`` is off in a short run and on in a long one."""
    from zerolm.pretrain.ds_config import compile_decision

    keys = ("zero_stage", "offload_optimizer", "offload_params", "precision", "activation_checkpointing")
    rows = [(f"train.{k}", getattr(measured.train, k), getattr(planned.train, k)) for k in keys
            # a planned precision=auto is what the run itself resolved to on its device (it saved the result)
            if not (k == "precision" and planned.train.precision == "auto")]
    compiled = ["on" if compile_decision(c.train)[0] else "off" for c in (measured, planned)]
    return [*rows, ("train.compile", *compiled)]


def compare_run(run_dir, *, mfu: float | None = None, gpu_type: str | None = None,
                vocab_size: int | None = None, comm_rates: dict[str, Any] | None = None,
                comm_source: str | None = None) -> dict[str, Any]:
    """Plan a finished run's own config and compare the plan with what the run measured.

    The plan is :func:`plan_run` on ``RUN_DIR/config.yaml`` for the run's world size, with the peak the run
    measured (``throughput.peak_tflops_per_rank``; for older runs derived as
    ``flops_per_token × tokens/s per rank ÷ MFU`` from its own records), on ``gpu_type`` (default ``cpu``
    when the run recorded no CUDA memory, else ``a100`` — the device is not recorded; pass the real one).

    Memory per rank: predicted = the row of the run's ZeRO stage/offload — model states (device) + DeepSpeed's
    gradient-reduction buffer (:func:`comm_buffer_bytes`; at ZeRO-0 it replaces the activations in the peak) +
    activations (with/without checkpointing as configured); on CPU the offloaded (host) states live in the
    same RAM and are added. Measured = peak RSS − the baseline RSS the trainer took (CPU) or
    ``torch.cuda.max_memory_allocated`` (CUDA). Ratio = measured ÷ predicted.

    Step time: predicted = tokens per step × FLOPs per token ÷ (ranks × peak × MFU), plus, with ``comm_rates``
    (then ``mfu`` is the compute's alone: :func:`measured_step_model`), the communication of the run's ZeRO
    stage (:func:`zerolm.launch.ds_costs.comm_seconds`). With the run's own measured MFU (default) this is
    consistent by construction (MFU was computed from the same step times); only a given ``mfu`` (assumed, or
    measured on another run) makes it a prediction.

    Returns:
        ``{"run_dir", "world_size", "device", "plan" (the plan_run dict), "memory": {"stage", "offload",
        "predicted_model_states", "predicted_activations", "predicted_host", "predicted_total", "measured"
        (per rank or None), "ratio" (per rank or None), "kind", "text", "predicted_buffers", "buffers_timing"}, "time": {"mfu", "mfu_source",
        "predicted_step_time_s", "measured_step_time_s", "ratio", "consistent_by_construction",
        "measured_source"}, "notes"}`` (bytes; seconds).

    Raises:
        ConfigError: as :func:`read_run` and :func:`plan_run`; a run without recorded throughput and no
            ``mfu`` given.
    """
    from zerolm.pretrain.models import flops_per_token, resolve_model_config

    run = read_run(run_dir)
    cfg, world, thr = run["cfg"], run["world_size"], run["throughput"]
    notes = list(run["notes"])
    gtype = gpu_type or ("a100" if run["cuda"] else "cpu")
    if gpu_type is None and run["cuda"]:
        notes.append("device type not recorded: planned as a100 (pass --gpu-type)")
    peak = thr.get("peak_tflops_per_rank")
    if peak is None and thr.get("mfu") and thr.get("tokens_per_second"):
        mc = resolve_model_config(cfg.model)
        vocab, _ = _vocab_of(cfg, vocab_size)
        n = _model_counts(mc, vocab=vocab, seq_len=cfg.data.seq_len)["total"]
        fpt = flops_per_token(n, mc.n_layer, mc.d_model, cfg.data.seq_len)
        peak = fpt * thr["tokens_per_second"] / world / thr["mfu"] / 1e12
        notes.append("peak not recorded: derived from the run's own tokens/s and MFU")
    if mfu is None:
        if not thr.get("mfu"):
            raise ConfigError(f"{run['run_dir']}: no measured MFU recorded; give --mfu")
        mfu_v, src, by_construction = float(thr["mfu"]), f"measured in {run['run_dir']} (this run: consistent by construction)", True
    else:
        mfu_v, src, by_construction = float(mfu), "given (--mfu)", False
    if comm_rates and by_construction:
        raise ConfigError("compare_run: comm_rates go with a compute-only mfu from another run (measured_step_model)")
    plan = plan_run(cfg, gpus=world, gpu_type=gtype, mfu=mfu_v, mfu_source=src, comm_rates=comm_rates,
                    comm_source=comm_source,
                    peak_tflops=peak if peak is not None and peak > 0 else None, vocab_size=vocab_size,
                    peak_source=f"the matmul peak {run['run_dir']} measured and computed its MFU against")
    (row,) = [r for r in plan["memory"] if r["current"]]
    key = "ckpt" if cfg.train.activation_checkpointing else "no_ckpt"
    states = row["params"] + row["grads"] + row["optimizer"] + row["gathered"]
    host = row["cpu"] if gtype == "cpu" else 0.0
    total = row[f"total_{key}"] + host
    measured = run["memory"]["bytes"]
    comparable = run["memory"]["kind"] in ("rss", "cuda")
    pred_step = plan["time"]["step_time_s"]
    meas_step = thr.get("step_time_s")
    return {
        "run_dir": run["run_dir"], "world_size": world, "world_size_source": run["world_size_source"],
        "device": plan["device"], "plan": plan,
        "memory": {"stage": row["zero_stage"], "offload": row["offload"], "predicted_model_states": states,
                   "predicted_activations": row[f"activations_{key}"], "predicted_buffers": row["buffers"],
                   "predicted_zero3_whole_params": row["zero3_whole_params"],
                   "buffers_timing": row["buffers_timing"], "predicted_host": host, "predicted_total": total,
                   "measured": measured,
                   "ratio": [m / total for m in measured] if (measured and comparable and total > 0) else None,
                   "kind": run["memory"]["kind"], "text": run["memory"]["text"]},
        "time": {"mfu": mfu_v, "mfu_source": src, "predicted_step_time_s": pred_step, "measured_step_time_s": meas_step,
                 "ratio": (meas_step / pred_step) if meas_step else None, "consistent_by_construction": by_construction,
                 "measured_source": thr.get("source")},
        "notes": notes,
    }


def compare_renderables(cmp: dict[str, Any]) -> list[Any]:
    """Rich renderables of a :func:`compare_run` result: per-rank memory (GiB) and step time, predicted vs
    measured with ratios, then the plan's own tables, the measurement sources and any notes."""
    from rich.table import Table

    m, t = cmp["memory"], cmp["time"]
    tab = Table(title=f"plan vs measured: {cmp['run_dir']} ({cmp['world_size']} ranks, ZeRO-{m['stage']}, "
                      f"offload {m['offload']}, {cmp['device']['type']})")
    for col in ("quantity", "rank", "predicted", "measured", "measured ÷ predicted"):
        tab.add_column(col, justify="left" if col == "quantity" else "right")
    measured = m["measured"] or [None]
    for r, val in enumerate(measured):
        ratio = m["ratio"][r] if m["ratio"] else None
        tab.add_row("memory (GiB)" if r == 0 else "", str(r) if m["measured"] else "—", _gib(m["predicted_total"]),
                    "—" if val is None else _gib(val), "—" if ratio is None else f"{ratio:.2f}")
    tab.add_row("step time", "all", _dur(t["predicted_step_time_s"]),
                "—" if t["measured_step_time_s"] is None else _dur(t["measured_step_time_s"]),
                "—" if t["ratio"] is None else f"{t['ratio']:.2f}")
    out: list[Any] = [tab,
                      f"predicted memory = model states {_gib(m['predicted_model_states'])} GiB + "
                      + (f"max(activations {_gib(m['predicted_activations'])} GiB, all-reduce copy "
                         f"{_gib(m['predicted_buffers'])} GiB after backward)" if m["buffers_timing"] == "after_backward"
                         else f"reduction bucket {_gib(m['predicted_buffers'])} GiB + "
                              + (f"ZeRO-3 whole parameters {_gib(m['predicted_zero3_whole_params'])} GiB + "
                                 if m["predicted_zero3_whole_params"] else "") + "activations "
                              f"{_gib(m['predicted_activations'])} GiB")
                      + (f" + host (offloaded) {_gib(m['predicted_host'])} GiB" if m["predicted_host"] else ""),
                      f"measured memory: {m['text']}",
                      f"step time: MFU {t['mfu']:.3g} {t['mfu_source']}; measured: {t['measured_source']}"]
    out += [f"note: {n}" for n in cmp["notes"]]
    return out + plan_renderables(cmp["plan"])


__all__ = ["compare_renderables", "compare_run", "measured_mfu", "measured_step_model", "read_run"]
