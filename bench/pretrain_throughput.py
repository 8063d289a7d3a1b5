"""Benchmark: zerolm's pretraining trainer vs Hugging Face ``transformers.Trainer``, and ZeRO memory.

Measured in one invocation, same model (GPT-2 family, default 6 layers × d_model 512 × 8 heads,
seq_len 256), same DeepSpeed config (``pretrain.ds_config.build_ds_config``: default ZeRO-2, torch
AdamW as the client optimizer, gradient clipping 1.0), same tokens per optimizer step (micro-batch 4 ×
accumulation 1 × 2 ranks × seq_len), 2 ranks under ``torchrun`` (gloo), one thread per rank
(``OMP_NUM_THREADS=1``). Precision: by default (``--precision default``) each trainer runs its own
default — zerolm ``train.precision=auto`` (bf16 on a CPU whose bf16 matmul is ≥ 1.5× its fp32 one, else
fp32; the table says which it picked), HF Trainer fp32 (``bf16=False``); ``--precision fp32|bf16`` runs
both in that precision. The memory table runs fp32 unless ``--precision bf16``.

1. **Matmul peak** per rank: ``pretrain.metrics.measure_matmul_peak`` (fp32 2048² matmul) on both
   ranks at once, one thread each — what zerolm's trainer measures at start-up — the median of 3–5
   readings, taken first, before each HF run and before the memory runs; MFU uses their mean for
   both frameworks (a warning is printed when they spread by more than 15 %).
2. **zerolm**: ``torchrun --standalone --nproc_per_node 2 -m zerolm.pretrain --config <generated yaml>``
   (log every step, no eval/checkpoint until the last step). Steady state = the steps after
   ``--warmup``: tokens/s by wall clock (arrival times of the per-step lines in
   ``RUN_DIR/metrics.jsonl``, the same measure as the HF callback) and as the trainer reports it
   (``train/tokens_per_second``, which leaves out its own logging call).
3. **HF Trainer** (``bench/pretrain_throughput_worker.py hf``): ``TrainingArguments(deepspeed=<the
   same dict>)`` on the run_clm.py data recipe (tokenize + EOS, concatenate, cut into seq_len
   blocks; map-style ``datasets.Dataset``; the Trainer's DistributedSampler shards it), timed by a
   ``TrainerCallback`` at ``on_step_end`` over the same steps.
   MFU = (6·N + 12·L·d_model·T) × tokens/s per rank ÷ peak per rank (``pretrain.models.flops_per_token``);
   a bf16 zerolm run's MFU is against its trainer's own start-up bf16 matmul reading.
   The two trainers run ``--rounds`` times each in ABBA order (zerolm, HF, HF, zerolm), ``--steps``
   measured steps per trainer split over the rounds: these shared machines change speed by tens of
   percent within minutes, and the interleaving cancels a steady drift. Tokens/s = all measured
   tokens ÷ all measured time; the median step is shown as well.
4. **ZeRO 0/1/2/3 memory per rank** (``… worker mem``): zerolm's ``Engine`` for each stage, a few steps
   on real packed batches; after the last backward (gradients alive, Adam state present) the bytes
   of the distinct tensor storages this rank holds — parameters (module tensors / ZeRO-3
   partitions), gradients, optimizer (fp32 master partition + Adam moments) — plus the gradient
   reduction buckets (allocated vs resident pages, mincore(2)) and the process RSS (end, after
   ``malloc_trim``, peak). Ratios are against ZeRO-0. In fp32, DeepSpeed 0.19.8 keeps its fp32 master
   partition as a second copy of the (already fp32) parameter partition at every stage — at ZeRO-3
   the no-copy branch compares a ``torch.device`` with a device-name string and never fires, so
   zerolm's engine shares the one copy (``train.share_fp32_master``, docs/zero3-fp32-master.md);
   ``--deepspeed-copy-row`` adds a row (3c) with DeepSpeed's copy kept, for comparison.

Targets (reported, not enforced): zerolm ≥ 1.3× HF Trainer tokens/s; zerolm MFU ≥ 50 % of the
measured peak; ZeRO-3 parameter+optimizer bytes per rank ≤ 0.55× ZeRO-0.

Needs the prepared corpus and tokenizer (``zerolm data prepare --out data/corpus``;
``zerolm tokenizer train --data data/corpus --out data/tokenizer``). About 5½ minutes on 2 quiet
cores (up to ~9 when the machine is slow)::

    .venv/bin/python bench/pretrain_throughput.py [--steps 30] [--rounds 2] [--warmup 3] [--zero-stage 2]
        [--n-layer 6 --d-model 512 --n-head 8 --seq-len 256 --micro-batch 4 --grad-accum 1]
        [--mem-stages 0,1,2,3] [--deepspeed-copy-row] [--skip-hf] [--skip-mem]
        [--out bench/results/pretrain_throughput.json]

Run it on a quiet machine: two ranks own both cores, anything else running skews the figures.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_args import add_run_args

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "pretrain_throughput_worker.py"
GiB, MiB = 2**30, 2**20


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DS_ACCELERATOR="cpu", TOKENIZERS_PARALLELISM="false",
               RAYON_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", WANDB_MODE="disabled",
               PYTHONUNBUFFERED="1")
    env.pop("LOCAL_SIZE", None)
    return env


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


def _fail(what: str, log: Path, rc: int) -> None:
    tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else []
    raise SystemExit(f"{what} failed (exit {rc}); last lines of {log}:\n" + "\n".join(tail))


def _run(what: str, cmd: list[str], log: Path, timeout: float) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = -1
    if rc:
        _fail(what, log, rc)
    return time.perf_counter() - t0


def _check_data(corpus: str, tokenizer: str) -> None:
    problems = []
    if not glob.glob(os.path.join(corpus, "train", "*.jsonl")):
        problems.append(f"no training shards {corpus}/train/*.jsonl — run: .venv/bin/zerolm data prepare --out {corpus}")
    if not glob.glob(os.path.join(corpus, "validation", "*.jsonl")):
        problems.append(f"no validation shards {corpus}/validation/*.jsonl — run: .venv/bin/zerolm data prepare --out {corpus}")
    for f in ("tokenizer.json", "tokenizer.model"):
        if not os.path.isfile(os.path.join(tokenizer, f)):
            problems.append(f"no {tokenizer}/{f} — run: .venv/bin/zerolm tokenizer train --data {corpus} --out {tokenizer}")
            break
    if problems:
        raise SystemExit("missing inputs:\n  " + "\n  ".join(problems))


def _model_args(a: argparse.Namespace) -> list[str]:
    return ["--corpus", a.corpus, "--tokenizer", a.tokenizer, "--n-layer", str(a.n_layer), "--d-model", str(a.d_model),
            "--n-head", str(a.n_head), "--seq-len", str(a.seq_len), "--micro-batch", str(a.micro_batch),
            "--grad-accum", str(a.grad_accum), "--precision", a.precision]


# -- phases ----------------------------------------------------------------------------------------
def measure_peak(a, work: Path, tag: str) -> dict:
    out = work / f"peak_{tag}.json"
    _run(f"matmul peak ({tag})", [*_torchrun(a.nproc), str(WORKER), "peak", "--out", str(out)], work / f"peak_{tag}.log", 300)
    return json.loads(out.read_text())


def run_zerolm(a, work: Path, i: int = 0) -> dict:
    from zerolm.config import load_config

    run_dir = work / f"zerolm_run{i}"
    total = a.warmup + a.run_steps
    cfg = {
        "data": {
            "sources": [{"name": "bundled", "paths": [os.path.join(os.path.abspath(a.corpus), "train", "*.jsonl")]}],
            "validation_sources": [{"name": "bundled", "paths": [os.path.join(os.path.abspath(a.corpus), "validation", "*.jsonl")]}],
            "tokenizer_dir": os.path.abspath(a.tokenizer), "objective": "clm", "seq_len": a.seq_len,
            "micro_batch_size": a.micro_batch, "num_workers": a.num_workers,
        },
        "model": {"family": "gpt2", "n_layer": a.n_layer, "d_model": a.d_model, "n_head": a.n_head},
        "train": {
            "run_dir": str(run_dir), "max_steps": total, "gradient_accumulation_steps": a.grad_accum,
            "zero_stage": a.zero_stage, **({} if a.precision == "default" else {"precision": a.precision}), "log_every": 1,
            "eval_every": 10**9, "eval_batches": 1, "save_every": 10**9, "keep_last": 1,
        },
        "tracking": {"wandb_mode": "disabled"},
    }
    cfg_path = work / f"zerolm_bench{i}.yaml"
    cfg_path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    cmd = [*_torchrun(a.nproc), "-m", "zerolm.pretrain", "--config", str(cfg_path)]
    log = work / f"zerolm{i}.log"
    metrics = run_dir / "metrics.jsonl"
    arrivals: dict[int, float] = {}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=f, stderr=subprocess.STDOUT)
        pos, buf = 0, ""
        while True:  # stamp each per-step metrics line as it lands (polling costs ~nothing)
            done = proc.poll() is not None
            if metrics.exists():
                with open(metrics) as m:
                    m.seek(pos)
                    chunk = m.read()
                    pos = m.tell()
                now = time.perf_counter()
                buf += chunk
                *lines, buf = buf.split("\n")
                for line in lines:
                    if line.strip():
                        arrivals.setdefault(json.loads(line)["step"], now - t0)
            if done:
                break
            if time.perf_counter() - t0 > a.timeout:
                proc.kill()
                break
            time.sleep(0.02)
    if proc.returncode:
        _fail("zerolm trainer", log, proc.returncode)
    rows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    return {"command": " ".join(["OMP_NUM_THREADS=1", "torchrun --standalone --nproc_per_node", str(a.nproc),
                                 "-m zerolm.pretrain --config", str(cfg_path)]),
            "config": cfg, "rows": rows, "arrivals": arrivals, "wall_s": time.perf_counter() - t0,
            "result": json.loads((run_dir / "result.json").read_text()),
            "precision": load_config(run_dir / "config.yaml").train.precision}  # what the trainer ran (auto resolved)


def run_hf(a, work: Path, i: int = 0) -> dict:
    out = work / f"hf{i}.json"
    cmd = [*_torchrun(a.nproc), str(WORKER), "hf", "--out", str(out), *_model_args(a), "--zero-stage", str(a.zero_stage),
           "--steps", str(a.warmup + a.run_steps), "--peak-reps", "3"]
    wall = _run("HF Trainer", cmd, work / f"hf{i}.log", a.timeout)
    res = json.loads(out.read_text())
    res["wall_s"] = wall
    res["command"] = "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node %d %s" % (
        a.nproc, " ".join(str(c) for c in cmd[len(_torchrun(a.nproc)):]))
    return res


def run_mem(a, work: Path, stage: int, ds_copy: bool = False, peak_reps: int = 0) -> dict:
    tag = f"zero{stage}" + ("_dscopy" if ds_copy else "")
    out = work / f"mem_{tag}.json"
    cmd = [*_torchrun(a.nproc), str(WORKER), "mem", "--out", str(out), *_model_args(a), "--zero-stage", str(stage),
           "--steps", str(a.mem_steps), "--peak-reps", str(peak_reps), *(["--deepspeed-fp32-copy"] if ds_copy else [])]
    wall = _run(f"ZeRO-{stage} memory", cmd, work / f"mem_{tag}.log", a.timeout)
    res = json.loads(out.read_text())
    res["wall_s"] = wall
    return res


# -- summary ---------------------------------------------------------------------------------------
def _steady(times: list[float], warmup: int, steps: int) -> float:
    """Seconds for steps warmup+1 … warmup+steps from a list of step-end times (index 0 = step 1)."""
    return times[warmup + steps - 1] - times[warmup - 1]


def _median_step(times: list[float], warmup: int, steps: int) -> float:
    """Median duration of those steps (robust to a burst of load from elsewhere on the machine)."""
    t = times[warmup - 1:warmup + steps]
    return statistics.median(b - a for a, b in zip(t, t[1:]))


def _pool(runs_ends: list[list[float]], warmup: int, steps: int, tps_step: int) -> dict:
    """Tokens/s over the measured steps of several runs of one trainer (total tokens ÷ total time),
    the median step's tokens/s over all of them, and each run's tokens/s."""
    secs = [_steady(e, warmup, steps) for e in runs_ends]
    durs = [d for e in runs_ends for d in (lambda t: [b - a for a, b in zip(t, t[1:])])(e[warmup - 1:warmup + steps])]
    return {"tokens_per_s": len(secs) * steps * tps_step / sum(secs),
            "tokens_per_s_median_step": tps_step / statistics.median(durs),
            "tokens_per_s_per_run": [steps * tps_step / x for x in secs]}


def summarize(a, peak_flops: float, zs: list[dict], hfs: list[dict], mem: dict[str, dict]) -> dict:
    tps_step = a.micro_batch * a.grad_accum * a.nproc * a.seq_len
    steps = a.run_steps
    res: dict = {"tokens_per_step": tps_step, "peak_flops_per_rank": peak_flops, "frameworks": {}}
    fpt = None
    if zs:
        from zerolm.pretrain.models import flops_per_token

        n_params = zs[0]["result"]["parameters"]
        fpt = flops_per_token(n_params, a.n_layer, a.d_model, a.seq_len)
        ends, meas = [], []
        for z in zs:
            rows = {r["step"]: r for r in z["rows"] if "train/tokens_per_second" in r}
            ends.append([z["arrivals"][s] for s in range(1, a.warmup + steps + 1)])
            meas += [rows[s] for s in range(a.warmup + 1, a.warmup + steps + 1)]
        pooled = _pool(ends, a.warmup, steps, tps_step)
        reported = len(meas) * tps_step / sum(tps_step / r["train/tokens_per_second"] for r in meas)
        # the peak the trainer measured at its start-up, recovered from its (tokens/s, MFU) pairs
        own_peak = statistics.median(fpt * r["train/tokens_per_second"] / a.nproc / r["train/mfu"] for r in meas)
        losses = [r["train/loss"] for r in zs[0]["rows"] if "train/loss" in r]
        res["frameworks"]["zerolm"] = {
            **pooled, "tokens_per_s_trainer_reported": reported, "step_s": tps_step / pooled["tokens_per_s"],
            # MFU against the matmul peak of the dtype the model computed in: a bf16 run against the trainer's own
            # start-up reading (a bf16 matmul), an fp32 run against the bench's fp32 readings
            "precision": zs[0]["precision"],
            "mfu": fpt * pooled["tokens_per_s"] / a.nproc / (peak_flops if zs[0]["precision"] == "fp32" else own_peak),
            "trainer_own_peak_flops": own_peak,
            "trainer_reported_mfu_mean": statistics.mean(r["train/mfu"] for r in meas),
            "data_wait_fraction": statistics.mean(r["train/data_wait_fraction"] for r in meas),
            "loss_first": losses[0], "loss_last": losses[-1], "rss_gib": meas[-1].get("memory/rss_gib"),
            "run_wall_s": [z["wall_s"] for z in zs], "command": zs[0]["command"], "n_params": n_params,
        }
    if hfs:
        hf = hfs[0]
        fpt = hf["flops_per_token"]
        pooled = _pool([h["step_ends"] for h in hfs], a.warmup, steps, tps_step)
        res["frameworks"]["hf_trainer"] = {
            **pooled, "step_s": tps_step / pooled["tokens_per_s"], "mfu": fpt * pooled["tokens_per_s"] / a.nproc / peak_flops,
            "loss_first": hf["losses"][0], "loss_last": hf["losses"][-1], "run_wall_s": [h["wall_s"] for h in hfs],
            "command": hf["command"], "data": hf["data"], "deepspeed_engine": hf["deepspeed_engine"],
            "zero_stage_seen": hf["zero_stage"], "optimizer_wrapper": hf["optimizer"], "n_params": hf["n_params"],
        }
    res["flops_per_token"] = fpt
    fw = res["frameworks"]
    if "zerolm" in fw and "hf_trainer" in fw:
        res["speedup_vs_hf"] = fw["zerolm"]["tokens_per_s"] / fw["hf_trainer"]["tokens_per_s"]
        res["speedup_vs_hf_median_step"] = (fw["zerolm"]["tokens_per_s_median_step"]
                                            / fw["hf_trainer"]["tokens_per_s_median_step"])
    if mem:
        table = {}
        for stage, m in sorted(mem.items()):
            ranks = m["per_rank"]

            def mx(f):
                return max(f(r) for r in ranks)

            b = lambda r, k: r["in_step"]["bytes"].get(k, 0)  # noqa: E731
            table[stage] = {
                "params": mx(lambda r: b(r, "params")),
                "grads": mx(lambda r: b(r, "grads")),
                "optimizer": mx(lambda r: b(r, "opt_master") + b(r, "opt_state")),
                "opt_master": mx(lambda r: b(r, "opt_master")),
                "opt_state": mx(lambda r: b(r, "opt_state")),
                "param_opt": mx(lambda r: b(r, "params") + b(r, "opt_master") + b(r, "opt_state")),
                "param_grad_opt": mx(lambda r: b(r, "params") + b(r, "grads") + b(r, "opt_master") + b(r, "opt_state")),
                "comm_buckets_allocated": mx(lambda r: b(r, "comm_buckets")),
                "comm_buckets_resident": mx(lambda r: r["in_step"]["resident"].get("comm_buckets", 0)),
                "rss_end": mx(lambda r: r["rss_end"]),
                "rss_end_trimmed": mx(lambda r: r["rss_end_trimmed"]),
                "shared_fp32_master_bytes": mx(lambda r: r.get("shared_fp32_master_bytes", 0)),
                "peak_rss": mx(lambda r: r["peak_rss"]),
                "rss_after_model_build": mx(lambda r: r["rss_after_model_build"]),
                "step_s": mx(lambda r: r["step_s"]),
                "losses_rank0": ranks[0]["losses"],
                "wall_s": m["wall_s"],
            }
        if "0" in table:
            base = table["0"]
            for row in table.values():
                for k in ("params", "grads", "optimizer", "param_opt", "param_grad_opt", "rss_end", "rss_end_trimmed", "peak_rss"):
                    row[f"{k}_vs_zero0"] = row[k] / base[k] if base[k] else None
        res["memory_per_rank"] = table
    targets = {}
    if "speedup_vs_hf" in res:
        targets["speedup_vs_hf>=1.3"] = {"value": res["speedup_vs_hf"], "met": res["speedup_vs_hf"] >= 1.3}
    if "zerolm" in fw:
        targets["zerolm_mfu>=0.50"] = {"value": fw["zerolm"]["mfu"], "met": fw["zerolm"]["mfu"] >= 0.5}
    memt = res.get("memory_per_rank", {})
    if "3" in memt and "0" in memt:
        v = memt["3"]["param_opt_vs_zero0"]
        targets["zero3_param_opt<=0.55x_zero0"] = {"value": v, "met": v <= 0.55}
    if "3c" in memt and "0" in memt:
        v = memt["3c"]["param_opt_vs_zero0"]
        targets["(before, 3c) ZeRO-3 with DeepSpeed's fp32 copy"] = {"value": v, "met": v <= 0.55}
    res["targets"] = targets
    return res


def render(a, r: dict, peaks: list[dict]) -> str:
    L = []
    L.append(f"model: gpt2 {a.n_layer} layers, d_model {a.d_model}, {a.n_head} heads, seq_len {a.seq_len}"
             + (f", {r['frameworks'].get('zerolm', r['frameworks'].get('hf_trainer', {})).get('n_params', 0) / 1e6:.1f}M params"
                if r["frameworks"] else "")
             + f" | {a.nproc} ranks × 1 thread (gloo) | micro-batch {a.micro_batch} × accumulation {a.grad_accum}"
             f" → {r['tokens_per_step']} tokens/step | precision: "
             + (f"zerolm {r['frameworks'].get('zerolm', {}).get('precision', 'auto')} (its default, auto), HF fp32 (its default)"
                if a.precision == "default" else a.precision) + f" | ZeRO-{a.zero_stage}")
    pk = ", ".join(f"{p['peak_flops_per_rank'] / 1e9:.1f}" for p in peaks)
    L.append(f"matmul peak per rank (fp32 2048², both ranks at once, 1 thread each): {r['peak_flops_per_rank'] / 1e9:.1f} "
             f"GFLOP/s (runs: {pk}) | FLOPs/token 6N+12·L·d·T = {r['flops_per_token'] / 1e6:.1f} M"
             if r.get("flops_per_token") else "")
    n = a.rounds
    L.append(f"steady state, wall clock: {n} run{'s' if n > 1 else ''} per trainer"
             + (" in ABBA order (zerolm, HF, HF, zerolm …)" if n > 1 else "")
             + f", each {a.warmup} warm-up + {a.run_steps} measured steps → {n * a.run_steps} measured steps per trainer")
    spread = max(p["peak_flops_per_rank"] for p in peaks) / min(p["peak_flops_per_rank"] for p in peaks)
    if spread > 1.15:
        L.append(f"WARNING: the matmul peak moved {100 * (spread - 1):.0f}% during the bench: the machine's speed changed "
                 "(other load?); ABBA order cancels a steady drift, not bursts — treat the ratios with care")
    L.append("")
    fw = r["frameworks"]
    if fw:
        hdr = (f"{'trainer':<26} {'tokens/s':>9} {'s/step':>7} {'MFU':>6} {'vs HF':>6} {'median-step tok/s':>18} "
               f"{'vs HF':>6} {'loss first→last':>16}")
        L += [hdr, "-" * len(hdr)]
        hf_tps = fw.get("hf_trainer", {}).get("tokens_per_s")
        names = {"zerolm": "zerolm (python -m zerolm.pretrain)", "hf_trainer": "HF transformers.Trainer"}
        for k in ("zerolm", "hf_trainer"):
            if k in fw:
                f = fw[k]
                vs = f"{f['tokens_per_s'] / hf_tps:.2f}x" if hf_tps else "-"
                hf_med = fw.get("hf_trainer", {}).get("tokens_per_s_median_step")
                vsm = f"{f['tokens_per_s_median_step'] / hf_med:.2f}x" if hf_med else "-"
                L.append(f"{names[k]:<26} {f['tokens_per_s']:>9.0f} {f['step_s']:>7.3f} {f['mfu']:>6.1%} {vs:>6} "
                         f"{f['tokens_per_s_median_step']:>18.0f} {vsm:>6} {f['loss_first']:>7.3f}→{f['loss_last']:<7.3f}")
        if n > 1:
            L.append("  tokens/s per run: " + "; ".join(
                f"{names[k].split(' ')[0] if k == 'zerolm' else 'HF'} " + ", ".join(f"{x:.0f}" for x in fw[k]["tokens_per_s_per_run"])
                for k in ("zerolm", "hf_trainer") if k in fw))
        if "zerolm" in fw:
            z = fw["zerolm"]
            L.append(f"  zerolm as its metrics.jsonl reports it: {z['tokens_per_s_trainer_reported']:.0f} tokens/s, "
                     f"MFU {z['trainer_reported_mfu_mean']:.1%} against its own start-up peak "
                     f"{z['trainer_own_peak_flops'] / 1e9:.1f} GFLOP/s; data wait {z['data_wait_fraction']:.1%}")
        if "hf_trainer" in fw:
            L.append(f"  HF data: {fw['hf_trainer']['data']}; engine {fw['hf_trainer']['deepspeed_engine']} "
                     f"ZeRO-{fw['hf_trainer']['zero_stage_seen']} ({fw['hf_trainer']['optimizer_wrapper']})")
        L.append("")
    mem = r.get("memory_per_rank")
    if mem:
        hdr = (f"{'ZeRO':<5} {'params':>8} {'grads':>8} {'optim':>8} {'param+opt':>10} {'vs 0':>6} {'p+g+o':>8} {'vs 0':>6} "
               f"{'buckets res/alloc':>18} {'RSS end':>8} {'trimmed':>8} {'vs 0':>6} {'peak RSS':>9} {'vs 0':>6} {'s/step':>7}")
        L.append("memory per rank (MiB; max over ranks; after the last backward: gradients alive, Adam state present)")
        L += [hdr, "-" * len(hdr)]
        for stage, m in mem.items():
            def rt(k):
                v = m.get(f"{k}_vs_zero0")
                return f"{v:.2f}x" if v is not None else "-"
            L.append(f"{stage:<5} {m['params'] / MiB:>8.1f} {m['grads'] / MiB:>8.1f} {m['optimizer'] / MiB:>8.1f} "
                     f"{m['param_opt'] / MiB:>10.1f} {rt('param_opt'):>6} {m['param_grad_opt'] / MiB:>8.1f} {rt('param_grad_opt'):>6} "
                     f"{m['comm_buckets_resident'] / MiB:>7.0f}/{m['comm_buckets_allocated'] / MiB:<10.0f} "
                     f"{m['rss_end'] / MiB:>8.0f} {m['rss_end_trimmed'] / MiB:>8.0f} {rt('rss_end_trimmed'):>6} "
                     f"{m['peak_rss'] / MiB:>9.0f} {rt('peak_rss'):>6} {m['step_s']:>7.3f}")
        L.append("optim = DeepSpeed's fp32 master partition + Adam moments (in fp32 training the master is a second copy "
                 "of this rank's parameter partition at ZeRO-1/2; zerolm's ZeRO-3 shares one copy);\nbuckets = gradient reduction buffers "
                 "(resident pages / allocated, reduce_bucket_size 5e8 elements);\n"
                 "trimmed = RSS after malloc_trim(0) (without glibc's cache of freed pages); s/step of the few memory steps")
        if "3c" in mem:
            L.append("3c = ZeRO-3 with DeepSpeed's second fp32 copy as the master (share_fp32_master=false); row 3 shares "
                     f"one copy ({mem.get('3', {}).get('shared_fp32_master_bytes', 0) / MiB:.0f} MiB freed per rank; losses "
                     + ("identical to 3c" if mem['3c']['losses_rank0'] == mem.get('3', {}).get('losses_rank0') else
                        "DIFFER from 3c") + ")")
        L.append("")
    if r["targets"]:
        L.append("targets:")
        for k, t in r["targets"].items():
            v = t["value"]
            L.append(f"  {k:<32} {v:.3f}  {'MET' if t['met'] else 'NOT MET'}")
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_args(ap, precision_default="default")
    ap.add_argument("--steps", type=int, default=30, help="measured optimizer steps per trainer (split over the rounds)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per trainer, in ABBA order")
    ap.add_argument("--warmup", type=int, default=3, help="untimed optimizer steps before them")
    ap.add_argument("--num-workers", type=int, default=0, help="zerolm data.num_workers (0: tokenize in the rank)")
    ap.add_argument("--mem-stages", default="0,1,2,3", help="ZeRO stages for the memory table")
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--deepspeed-copy-row", action="store_true",
                    help="add a ZeRO-3 row (3c) with DeepSpeed's second fp32 copy kept as the master "
                         "(train.share_fp32_master=false), to compare with zerolm's default (+~40 s)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-zerolm", action="store_true")
    ap.add_argument("--skip-mem", action="store_true")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per phase")
    ap.add_argument("--work-dir", default=None, help="keep run dirs and logs here (default: a temp dir, removed)")
    ap.add_argument("--out", default="bench/results/pretrain_throughput.json")
    a = ap.parse_args()
    a.nproc = 2
    a.run_steps = -(-a.steps // max(a.rounds, 1))
    if a.warmup < 1:
        ap.error("--warmup must be ≥ 1 (the first step end is the clock's origin)")
    os.chdir(ROOT)
    _check_data(a.corpus, a.tokenizer)
    import psutil

    busy = psutil.cpu_percent(interval=1.0)  # the machine's CPU use over the last second, before we start
    if busy > 25:
        print(f"warning: the CPUs were {busy:.0f}% busy before start: something else is running; figures will be "
              "skewed", file=sys.stderr)
    work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="zerolm_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    phases: dict[str, float] = {}

    def phase(name, fn, *args):
        print(f"[{time.perf_counter() - t_start:6.1f}s] {name} …", flush=True)
        t = time.perf_counter()
        out = fn(*args)
        phases[name] = time.perf_counter() - t
        return out

    try:
        # the peak is measured three times, bracketing the runs: a job of its own first, then at the start of the
        # HF job and of the first memory job (no extra start-up)
        peaks = [dict(phase("matmul peak", measure_peak, a, work, "start"), where="own job, first")]
        zs, hfs = [], []
        for i in range(a.rounds):  # ABBA: zerolm, HF, HF, zerolm, … (a steady drift in machine speed cancels)
            for kind in (("zerolm", "hf") if i % 2 == 0 else ("hf", "zerolm")):
                if kind == "zerolm" and not a.skip_zerolm:
                    zs.append(phase(f"zerolm trainer (run {i + 1})", run_zerolm, a, work, i))
                elif kind == "hf" and not a.skip_hf:
                    hfs.append(phase(f"HF Trainer (run {i + 1})", run_hf, a, work, i))
                    if hfs[-1].get("peak"):
                        peaks.append(dict(hfs[-1]["peak"], where=f"HF job {i + 1}, before training"))
        mem = {}
        if not a.skip_mem:
            stages = [int(x) for x in a.mem_stages.split(",") if x.strip()]
            for i, s in enumerate(stages):
                mem[str(s)] = phase(f"ZeRO-{s} memory", run_mem, a, work, s, False, 5 if i == 0 else 0)
                if mem[str(s)]["per_rank"][0].get("peak"):
                    peaks.append(dict(mem[str(s)]["per_rank"][0]["peak"], where=f"ZeRO-{s} memory job, before the engine"))
            if 3 in stages and a.precision == "fp32" and a.deepspeed_copy_row:
                mem["3c"] = phase("ZeRO-3 memory, DeepSpeed's fp32 copy", run_mem, a, work, 3, True)
    except BaseException:
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    peak = statistics.mean(p["peak_flops_per_rank"] for p in peaks)
    r = summarize(a, peak, zs, hfs, mem)
    total = time.perf_counter() - t_start
    r.update(peaks=peaks, phases_s=phases, bench_wall_s=total, args=vars(a),
             command="OMP_NUM_THREADS=1 (set per run) " + " ".join([".venv/bin/python", "bench/pretrain_throughput.py", *sys.argv[1:]]))
    text = render(a, r, peaks)
    print()
    print(text)
    print(f"\nbench wall time {total:.0f} s (" + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()) + ")")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    r["table"] = text
    out.write_text(json.dumps(r, indent=1, default=str))
    print(f"wrote {out}")
    if not a.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
