"""Benchmark: how close ``zerolm plan`` comes to what a run measures (memory per rank, step time).

For each preset (default ``tiny``, ``small`` and ``gpt3-125m`` — 12 layers × d_model 768, ~91M parameters
with the bundled 8,000-token vocabulary) under ZeRO 0, 1, 2 and 3, one real pretraining run on 2 ranks:
``torchrun --standalone --nproc_per_node 2 bench/plan_accuracy_worker.py`` = ``zerolm pretrain`` on
``configs/pretrain/tiny_gpt.yaml`` with the preset, fp32, seq_len 128, a small micro-batch, a handful of
steps, log every step, gloo, ``DS_ACCELERATOR=cpu``, ``OMP_NUM_THREADS=1``, on the bundled
``data/corpus`` + ``data/tokenizer``. Each run's ``result.json`` (written by the trainer) is then
compared with the plan by :func:`zerolm.launch.plan_vs_run.compare_run`:

* **Model-state memory per rank** — predicted: the plan's params + grads + optimizer bytes for the run's
  stage on 2 ranks (the ZeRO-3 "gathered" largest layer, ``2·w·largest``, is transient — alive only inside
  that layer's forward/backward — so it is not part of this comparison; it is in the predicted total);
  measured independently of the formula: the bytes of the
  distinct tensor storages the DeepSpeed engine and optimizer hold on this rank just before the last
  optimizer step (gradients alive, Adam state present), counted by the worker
  (``pretrain_throughput_worker._account``: parameters / ZeRO-3 partitions, gradients and gradient
  partitions, fp32 master partition, Adam moments). DeepSpeed's gradient-reduction buckets are counted
  apart (``buckets``) and are not model states. Target ±10 %.
* **Total memory per rank** — predicted: model states + DeepSpeed's reduction buffer (touched pages) + at
  ZeRO-3 the parameters held whole + activations (Korthikanti eq. 2 ×2 for fp32 + fp32 logits + the loss);
  the same measurement against the plan without the buffer/whole-parameter/loss terms is shown as ``before``.
  Measured (the target's figure, ``net``): the trainer's peak RSS minus **the runtime's baseline**, the
  RSS of everything the plan does not model — the Python runtime, torch, DeepSpeed, the process group,
  the data loader, the tokenizer, the matmul-peak buffers — taken when the model has been built, before
  the DeepSpeed engine, less the model's own 4·N bytes (column ``pre-model`` is that baseline above the
  trainer's start). The trainer's peak covers the whole run, its final evaluation and checkpoint
  included. Target ±25 %. The workers run with glibc's mmap threshold fixed at 64 KiB
  (``MALLOC_MMAP_THRESHOLD_=65536``, ``MALLOC_TRIM_THRESHOLD_=0``): by default glibc raises that threshold
  to the size of each freed mmap'ed block, after which tensors of that size come from the heap and
  their pages stay resident after a free — RSS then counts freed activations as live (default glibc:
  net ratios 1.13–1.93; ``--glibc-default`` measures that way). Also shown: ``total`` — peak RSS minus
  the RSS when the trainer starts (after imports and process-group init); ``train`` — the peak right
  after the last optimizer step. With ``--tensor-peak``, measured a third way (``tensors``): the most
  bytes of live torch tensors from the end of step 1 to the end of the last step, summed from
  ``torch.profiler``'s allocator events (``plan_accuracy_worker --tensor-peak``) — what
  ``torch.cuda.max_memory_allocated`` measures on a GPU. The profiler's own event buffers then add to
  RSS, unevenly (tiny GPT ZeRO-0, peak RSS − trainer start per rank: 299–875 MiB with it, 336–367
  without), so the RSS columns of such a run are not the target's figure.
* **Step time** — predicted with an MFU measured on a DIFFERENT run, never the run's own: the same
  preset's ZeRO-0 run predicts its ZeRO-1/2/3 runs, and its ZeRO-1 run predicts ZeRO-0 (column ``MFU
  from``), as ``zerolm plan --mfu-from`` does: the source run's communication (modelled from the collective
  rates it measured, ``zerolm.launch.ds_costs.comm_seconds``) is taken out of its MFU and the predicted run's
  stage's communication added (column ``comm``; ``no-comm``: the whole-step MFU without that term); the peak
  is the predicted run's own measured matmul peak. Measured: the trainer's median s/step over the log windows
  after the first. Each preset × stage runs ``--repeat`` times (default 2, ABBA order: stages up, then down)
  and the faster run is kept — other jobs on the machine only ever slow a run down. Target ±25 %.

Writes ``bench/results/plan_accuracy.json`` and prints the table. About 8–9 minutes on 2 quiet cores (two repeats)::

    .venv/bin/python bench/plan_accuracy.py [--presets tiny,small,gpt3-125m] [--stages 0,1,2,3] [--steps 6] [--repeat 2]
        [--seq-len 128] [--micro-batch tiny=8,small=8,gpt3-125m=2] [--work DIR] [--keep] [--reuse] [--out FILE]
        [--tensor-peak] [--glibc-default]

Run it on a quiet machine: two ranks own both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "plan_accuracy_worker.py"
MiB = 2**20
TARGETS = {"model_states": 0.10, "total": 0.25, "step_time": 0.25}


def _env(glibc_default: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    if not glibc_default:  # freed tensors go back to the OS, so RSS follows live memory (module docstring)
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false",
               RAYON_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", WANDB_MODE="disabled",
               PYTHONUNBUFFERED="1")
    env.pop("LOCAL_SIZE", None)
    return env


def _args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,small,gpt3-125m")
    ap.add_argument("--stages", default="0,1,2,3")
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per run (log every step; the first window is dropped)")
    ap.add_argument("--repeat", type=int, default=2,
                    help="runs per preset x stage, in ABBA order (stages up, then down); the faster one is kept")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", default="tiny=8,small=8,gpt3-125m=2", help="PRESET=N,... (others: 4)")
    ap.add_argument("--base", default="configs/pretrain/tiny_gpt.yaml")
    ap.add_argument("--work", default=None, help="folder for the runs (default: a temporary one, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reuse", action="store_true",
                    help="with --work: reuse runs already finished there (result.json + acct files), re-analyse only")
    ap.add_argument("--out", default="bench/results/plan_accuracy.json")
    ap.add_argument("--tensor-peak", action="store_true",
                    help="also measure live torch tensors with torch.profiler (its event buffers inflate the RSS columns)")
    ap.add_argument("--glibc-default", action="store_true",
                    help="keep glibc's dynamic mmap threshold (freed heap pages then stay in RSS)")
    return ap.parse_args(argv)


def _run_one(a, preset: str, stage: int, micro: int, work: Path, repeat: int = 0) -> dict:
    import yaml

    from zerolm.config import load_config
    from zerolm.fsutil import write_text

    tag = f"{preset}_z{stage}" + (f"_r{repeat}" if repeat else "")
    run_dir, acct = work / tag, work / f"{tag}_acct"
    cfg = load_config(ROOT / a.base, [
        f"model.preset={preset}", f"data.seq_len={a.seq_len}", f"data.micro_batch_size={micro}", "data.num_workers=0",
        f"train.zero_stage={stage}", "train.precision=fp32", f"train.max_steps={a.steps}", "train.warmup_steps=1",
        "train.log_every=1", f"train.eval_every={a.steps}", "train.eval_batches=1", f"train.save_every={a.steps}",
        "train.keep_last=1", f"train.run_dir={run_dir}", "tracking.wandb_mode=disabled", "tracking.emissions.enabled=false",
    ])
    cfg_path = work / f"{tag}.yaml"
    write_text(cfg_path, yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           "--config", str(cfg_path), "--acct", str(acct), *(["--tensor-peak"] if a.tensor_peak else [])]
    log = work / f"{tag}.log"
    t0 = time.perf_counter()
    done = (run_dir / "result.json").is_file() and all((acct / f"acct_rank{r}.json").is_file() for r in range(2))
    rc = 0
    if not (a.reuse and done):
        with open(log, "w") as f:
            rc = subprocess.run(cmd, cwd=ROOT, env=_env(a.glibc_default), stdout=f, stderr=subprocess.STDOUT, timeout=900).returncode
    if rc:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise SystemExit(f"{tag} failed (exit {rc}); last lines of {log}:\n{tail}")
    accts = [json.loads((acct / f"acct_rank{r}.json").read_text()) for r in range(2)]
    result = json.loads((run_dir / "result.json").read_text())
    print(f"  {tag}: {time.perf_counter() - t0:.0f} s", flush=True)
    return {"preset": preset, "stage": stage, "micro_batch": micro, "run_dir": str(run_dir), "acct": accts,
            "throughput": result.get("throughput"), "memory": result.get("memory")}


def _states_measured(acct: dict) -> float:
    b = acct["bytes"]
    return float(sum(b.get(k, 0) for k in ("params", "grads", "opt_master", "opt_state")))


def _within(ratio: float | None, tol: float) -> bool:
    return ratio is not None and abs(ratio - 1.0) <= tol


def analyse(runs: list[dict]) -> list[dict]:
    """One row per run and rank: predicted vs measured model states, total memory and step time."""
    from zerolm.launch.plan_vs_run import compare_run, measured_step_model

    by = {(r["preset"], r["stage"]): r for r in runs}
    rows = []
    for r in runs:
        src_stage = 1 if r["stage"] == 0 else 0  # an MFU measured on ANOTHER run of the same preset
        src = by.get((r["preset"], src_stage)) or next(
            (o for o in runs if o["preset"] == r["preset"] and o is not r), None)
        if src is None or not (src.get("throughput") or {}).get("mfu"):
            raise SystemExit(f"{r['preset']} ZeRO-{r['stage']}: no other run of this preset to take the MFU from")
        # as `zerolm plan --mfu-from SRC` does: SRC's compute MFU (its modelled communication taken out) and its
        # measured collective rates, with this run's ZeRO stage's communication added
        model = measured_step_model(src["run_dir"])
        cmp = compare_run(r["run_dir"], mfu=model["mfu"], comm_rates=model["comm_rates"], comm_source=model["comm_source"])
        flat = compare_run(r["run_dir"], mfu=src["throughput"]["mfu"])  # the whole-step MFU, no communication term
        t_plan = cmp["plan"]["time"]
        mem = r["memory"] or {}
        for rank in range(2):
            acct = r["acct"][rank]
            st_meas = _states_measured(acct)
            (prow,) = [x for x in cmp["plan"]["memory"] if x["current"]]
            # the ZeRO-3 gathered layer is transient (alive inside a layer's forward/backward only): not at the
            # counting point, so compared apart; the plan's total still includes it
            st_pred = prow["params"] + prow["grads"] + prow["optimizer"]
            tot_pred = cmp["memory"]["predicted_total"]
            base = mem["baseline_rss_gib"][rank] * 2**30
            tot_meas = mem["peak_rss_gib"][rank] * 2**30 - base
            train_meas = (acct["train_peak_rss"] - base) if acct.get("train_peak_rss") else None
            # what the runtime holds before the model states exist: RSS when the model is built (before the
            # DeepSpeed engine) minus the baseline minus the model's own fp32 bytes (data pipeline, tokenizer,
            # matmul-peak buffers, allocator caches) — the trainer's baseline is taken before all of these
            tl = acct.get("timeline") or []
            pre_model = (tl[0][1] - base - 4.0 * cmp["plan"]["model"]["params"]) if tl else None
            act_now = cmp["plan"]["activations_current"]
            before = st_pred + prow["gathered"] + act_now["total"] - act_now["loss"]  # the plan without buffers/loss
            rows.append({
                "preset": r["preset"], "params": cmp["plan"]["model"]["params"], "zero_stage": r["stage"], "rank": rank,
                "micro_batch": r["micro_batch"],
                "model_states_predicted": st_pred, "gathered_predicted": prow["gathered"], "model_states_measured": st_meas, "model_states_ratio": st_meas / st_pred,
                "model_states_measured_parts": acct["bytes"], "buckets_bytes": acct["bytes"].get("comm_buckets", 0),
                "buckets_resident_bytes": acct["resident"].get("comm_buckets", 0),
                "activations_predicted": cmp["memory"]["predicted_activations"],
                "total_predicted": tot_pred, "total_measured": tot_meas, "total_ratio": tot_meas / tot_pred,
                "buffers_predicted": cmp["memory"]["predicted_buffers"], "buffers_timing": cmp["memory"]["buffers_timing"],
                "loss_predicted": act_now["loss"],
                "total_predicted_before": before, "total_ratio_before": tot_meas / before,
                "runtime_before_model": pre_model,
                "total_ratio_net_runtime": (tot_meas - pre_model) / tot_pred if pre_model is not None else None,
                "tensor_peak_measured": acct.get("tensor_peak"),
                "tensor_peak_ratio": acct["tensor_peak"] / tot_pred if acct.get("tensor_peak") else None,
                "tensor_live_window_start": acct.get("tensor_live_window_start"),
                "tensor_peak_whole_run": acct.get("tensor_peak_whole_run"),
                "train_peak_measured": train_meas, "train_peak_ratio": train_meas / tot_pred if train_meas else None,
                "baseline_rss": base,
                "excess_bytes": tot_meas - tot_pred,
                "timeline": [[lab, rss - base, peak - base] for lab, rss, peak in acct.get("timeline", [])],
                "step_time_predicted_s": cmp["time"]["predicted_step_time_s"],
                # the same MFU applied to the peak it was measured against (= the source run's achieved FLOP/s):
                # free of the noise in this run's own peak reading
                "step_time_predicted_src_peak_s": t_plan["compute_s_per_step"]
                * r["throughput"]["peak_tflops_per_rank"] / src["throughput"]["peak_tflops_per_rank"]
                + (t_plan["comm_s_per_step"] or 0.0),
                "step_time_measured_s": cmp["time"]["measured_step_time_s"], "step_time_ratio": cmp["time"]["ratio"],
                "step_time_comm_predicted_s": t_plan["comm_s_per_step"], "src_comm_modelled_s": model["run_comm_s"],
                "comm": t_plan["comm"], "collectives_src": model["comm_rates"],
                "step_time_predicted_no_comm_s": flat["time"]["predicted_step_time_s"],
                "step_time_ratio_no_comm": flat["time"]["ratio"],
                "src_peak_tflops_per_rank": src["throughput"]["peak_tflops_per_rank"],
                "mfu_used": model["mfu"], "src_mfu": src["throughput"]["mfu"], "mfu_from": f"ZeRO-{src['stage']} run",
                "own_mfu": r["throughput"]["mfu"], "peak_tflops_per_rank": r["throughput"]["peak_tflops_per_rank"],
                "windows": r["throughput"]["windows"], "repeats_step_time_s": r.get("repeats_step_time_s"),
            })
    return rows


def _table(rows: list[dict]) -> str:
    head = (f"{'preset':<10} {'params':>7} {'Z':>1} {'r':>1} | {'states MiB pred':>15} {'meas':>7} {'ratio':>5} | "
            f"{'total MiB pred':>14} {'meas':>7} {'ratio':>5} {'before':>6} {'buf':>5} {'pre-model':>9} {'net':>5} {'train':>5} {'excess':>6} {'tensors':>7} {'ratio':>5} | {'step s pred':>11} {'meas':>6} "
            f"{'ratio':>5} {'src pk':>6} {'comm':>6} {'no-comm':>7} {'MFU from':>9}")
    out = [head, "-" * len(head)]
    for w in rows:
        out.append(
            f"{w['preset']:<10} {w['params'] / 1e6:>6.1f}M {w['zero_stage']:>1} {w['rank']:>1} | "
            f"{w['model_states_predicted'] / MiB:>15.1f} {w['model_states_measured'] / MiB:>7.1f} {w['model_states_ratio']:>5.2f} | "
            f"{w['total_predicted'] / MiB:>14.1f} {w['total_measured'] / MiB:>7.1f} {w['total_ratio']:>5.2f} "
            f"{w['total_ratio_before']:>6.2f} {w['buffers_predicted'] / MiB:>5.0f} "
            f"{(w['runtime_before_model'] or 0) / MiB:>9.0f} {w['total_ratio_net_runtime'] or float('nan'):>5.2f} "
            f"{w['train_peak_ratio'] if w['train_peak_ratio'] is not None else float('nan'):>5.2f} "
            f"{w['excess_bytes'] / MiB:>6.0f} {(w['tensor_peak_measured'] or float('nan')) / MiB:>7.0f} "
            f"{w['tensor_peak_ratio'] if w['tensor_peak_ratio'] is not None else float('nan'):>5.2f} | "
            f"{w['step_time_predicted_s']:>11.3f} {w['step_time_measured_s']:>6.3f} {w['step_time_ratio']:>5.2f} "
            f"{w['step_time_measured_s'] / w['step_time_predicted_src_peak_s']:>6.2f} "
            f"{w['step_time_comm_predicted_s'] if w['step_time_comm_predicted_s'] is not None else float('nan'):>6.3f} "
            f"{w['step_time_ratio_no_comm']:>7.2f} {w['mfu_from']:>9}")
    return "\n".join(out)


def _summary(rows: list[dict]) -> dict:
    keys = {"model_states": "model_states_ratio", "total": "total_ratio_net_runtime",
            "total_from_trainer_start": "total_ratio", "total_before": "total_ratio_before", "total_tensors": "tensor_peak_ratio",
            "step_time": "step_time_ratio", "step_time_no_comm": "step_time_ratio_no_comm"}
    out = {}
    for name, key in keys.items():
        vals = [w[key] for w in rows if w[key] is not None]
        if not vals:
            continue
        if name.startswith("step_time"):  # one figure per run, not per rank
            vals = [w[key] for w in rows if w["rank"] == 0]
        if name == "step_time":
            src = [w["step_time_measured_s"] / w["step_time_predicted_src_peak_s"] for w in rows if w["rank"] == 0]
            out["step_time_src_peak"] = {"target": f"±{TARGETS[name]:.0%}", "within": sum(_within(v, TARGETS[name]) for v in src),
                                         "of": len(src), "min_ratio": min(src), "max_ratio": max(src)}
        tol = TARGETS[name.split("_")[0] if name.startswith("total") else ("step_time" if name.startswith("step_time") else name)]
        out[name] = {"target": f"±{tol:.0%}", "within": sum(_within(v, tol) for v in vals),
                     "of": len(vals), "min_ratio": min(vals), "max_ratio": max(vals)}
    return out


def main(argv=None) -> None:
    a = _args(argv)
    os.environ.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for need in ("data/corpus/train", "data/tokenizer/tokenizer.json"):
        if not (ROOT / need).exists():
            raise SystemExit(f"missing {ROOT / need}: prepare the bundled corpus and tokenizer first")
    micro = {k: int(v) for k, v in (kv.split("=") for kv in a.micro_batch.split(",") if kv)}
    presets = [p for p in a.presets.split(",") if p]
    stages = [int(s) for s in a.stages.split(",") if s]
    tmp = None
    if a.work:
        work = Path(a.work).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="plan_accuracy_")
        work = Path(tmp.name)
    t0 = time.perf_counter()
    runs = []
    try:
        for preset in presets:
            tries: dict[int, list[dict]] = {}
            for k in range(max(1, a.repeat)):  # ABBA: 0,1,2,3 then 3,2,1,0 — drift hits both ends alike
                for stage in (stages if k % 2 == 0 else stages[::-1]):
                    tries.setdefault(stage, []).append(_run_one(a, preset, stage, micro.get(preset, 4), work, k))
            for stage in stages:  # other jobs only ever slow a run down: the faster repeat is the measurement
                best = min(tries[stage], key=lambda r: r["throughput"]["step_time_s"])
                best["repeats_step_time_s"] = [r["throughput"]["step_time_s"] for r in tries[stage]]
                runs.append(best)
        rows = analyse(runs)
    finally:
        if tmp is not None and not a.keep:
            tmp.cleanup()
    summary = _summary(rows)
    print()
    print("plan vs measured, 2 ranks (torchrun, gloo, CPU, fp32, OMP_NUM_THREADS=1), seq_len", a.seq_len,
          f", {a.steps} steps per run")
    print(_table(rows))
    print("states: plan's params+grads+optimizer (ZeRO-3's transient gathered layer excluded) vs bytes of the tensors DeepSpeed holds on the rank "
          "before the last optimizer step")
    print("total: plan's states+buffers(+ZeRO-3 whole params)+activations vs the trainer's peak RSS - RSS at the trainer's start (after "
          "imports and process-group init, before data loader and model); 'train' = peak right after the last optimizer step")
    print("before: the same measurement / the plan without DeepSpeed's reduction buffer and the loss transient; "
          "buf: the plan's reduction buffer (MiB; ZeRO-0: the flat all-reduce copy, max'ed with the activations)")
    print("pre-model: RSS when the model is built, before the DeepSpeed engine, minus baseline minus the model's 4N "
          "bytes = the runtime the plan does not model (data pipeline, tokenizer, matmul-peak buffers, allocator); "
          "net: (measured - pre-model) / predicted = peak RSS - the runtime's baseline, the figure the ±25% target is "
          "counted on (summary line 'total')")
    print("glibc: " + ("default (dynamic mmap threshold: freed heap pages stay in RSS)" if a.glibc_default else
                       "MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 (freed tensors leave RSS)"))
    print("excess: measured - predicted total (MiB): runtime, transient copies and caches the plan leaves out")
    print("tensors: the most bytes of live torch tensors (torch.profiler memory events, main thread) from the end of "
          "step 1 to the end of the last step - the CPU counterpart of torch.cuda.max_memory_allocated; ratio: / the "
          "plan's total")
    print("step: FLOPs/step / (2 x this run's measured peak x compute MFU of the run named in 'MFU from', same preset: "
          "its MFU with its own modelled communication taken out) + this run's ZeRO stage's communication ('comm', s, from "
          "the source run's measured collective rates; zerolm.launch.ds_costs.comm_seconds); 'src pk': the same on the source "
          "run's own peak, free of this run's peak noise; 'no-comm': measured / the whole-step MFU's prediction (no "
          "communication term, as before)")
    print("memory timeline of rank 0 (MiB above baseline: RSS / peak RSS):")
    for w in rows:
        if w["rank"] == 0 and w["timeline"]:
            pts = [w["timeline"][0], w["timeline"][1]] + [t for t in w["timeline"][2:] if t[0].startswith(("step 1", "step 2"))]
            print(f"  {w['preset']} ZeRO-{w['zero_stage']}: " + "; ".join(
                f"{lab} {rss / MiB:.0f}/{pk / MiB:.0f}" for lab, rss, pk in pts))
    for k, v in summary.items():
        print(f"  {k}: {v['within']}/{v['of']} within {v['target']} (ratios {v['min_ratio']:.2f}-{v['max_ratio']:.2f})")
    print(f"wall time {time.perf_counter() - t0:.0f} s")
    out = ROOT / a.out
    out.parent.mkdir(parents=True, exist_ok=True)
    from zerolm.fsutil import write_json

    write_json(out, {"settings": {"presets": presets, "stages": stages, "steps": a.steps, "seq_len": a.seq_len,
                                  "micro_batch": micro, "ranks": 2, "precision": "fp32", "device": "cpu",
                                  "glibc_default": a.glibc_default, "tensor_peak": a.tensor_peak,
                                  "base_config": a.base},
                     "rows": rows, "summary": summary, "targets": TARGETS})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
