"""zerolm's trainer on one GPU: tokens/s, MFU and peak memory for GPT-3 125M/350M, ZeRO-1/2, compile off/on.

    python3 bench/gpu_bench.py --out "$OUT"                      # on the GPU machine (bench/gpu.sh runs it)
    .venv/bin/python bench/gpu_bench.py --dry-run                 # print the planned commands, validate them
    .venv/bin/python bench/gpu_bench.py --smoke                   # CPU: tiny, fp32, 3 steps, end to end

Each run is a fresh ``python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m zerolm.pretrain
--config configs/pretrain/quickstart_gpt.yaml`` with overrides: the preset, bf16, the ZeRO stage,
``train.compile``, ``--steps`` steps of ``--micro-batch`` sequences of ``--seq-len`` tokens (accumulation 1)
on the bundled corpus (``data/corpus``, ``data/tokenizer``), evaluation and checkpoints only at the last step
(the trainer always does both there; one validation batch), W&B and codecarbon off, and
``train.peak_flops`` = the device's dense bf16 peak from ``launch/plan.py``'s ``DEVICES`` (an unknown device:
the trainer measures a matmul peak, and the table says so). The figures are the run's own ``result.json``:
``throughput`` (medians over the log windows after the first, so a compile's first steps are left out) and
``memory.cuda_max_allocated_gib``; ``metrics.jsonl`` gives the data-wait fraction. Runs go in order of
importance (ZeRO-2 before ZeRO-1, which on one GPU partitions nothing; per stage, each preset eager then
compiled), and a run whose estimated time (from the runs so far) would overrun ``--max-minutes`` is skipped
and listed as such. Writes ``gpu_bench.json`` and ``gpu_bench.md`` under ``--out`` after every run, so a
cut-off session still returns what finished; each run's full log and run folder stay under ``--runs-dir``
(checkpoints deleted unless ``--keep-runs``).

Anchor: llm-foundry's MPT-125M reaches 44.8 % MFU (amp_bf16, seq 2048, 8× A100-80GB, FSDP;
mosaicml/llm-foundry scripts/train/benchmarking/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/pretrain/quickstart_gpt.yaml"
ANCHOR = ("llm-foundry MPT-125M: 44.8 % MFU (amp_bf16, seq 2048, 8x A100-80GB, FSDP; "
          "mosaicml/llm-foundry scripts/train/benchmarking/README.md)")
#: lines of a run's output echoed to this driver's output (the rest stays in the run's log file)
#: GPT-3's learning rates (Brown et al. 2020, Table 2.1) for its presets: a steady loss at these sizes
GPT3_LR = {"gpt3-125m": 6.0e-4, "gpt3-350m": 3.0e-4, "gpt3-1.3b": 2.0e-4}
_ECHO = ("tok/s", "Error", "error:", "Traceback", "OutOfMemory", "train.compile")


def device_key(name: str) -> str | None:
    """The key of ``zerolm.launch.plan.DEVICES`` for a device name as ``torch.cuda.get_device_name()`` or
    ``nvidia-smi`` print it ('NVIDIA H200', 'NVIDIA H100 80GB HBM3', 'NVIDIA A100-SXM4-80GB'), or None.

    DEVICES holds the SXM parts' peaks; the PCIe and NVL variants of the H100/H200 run at lower clocks
    and power (a lower dense peak), so they map to None (unknown) rather than to a wrong peak. The A100's
    bf16 peak (312 TFLOP/s) is the same for SXM and PCIe; 40 GB parts map to ``a100-40gb``.
    """
    n = name.upper().replace("-", " ")
    if "H200" in n or "H100" in n:
        if "PCIE" in n or "NVL" in n:
            return None
        return "h200" if "H200" in n else "h100"
    if "A100" in n:
        return "a100-40gb" if "40GB" in n.replace(" ", "") else "a100"
    if "V100" in n:
        return "v100"
    return None


def peak_flops(name: str) -> tuple[float | None, str]:
    """The dense bf16 peak (FLOP/s) of the device named ``name`` from ``launch/plan.py``'s ``DEVICES`` and a
    note saying where it comes from; ``(None, note)`` for a device not there (the trainer then measures a
    matmul peak itself, ``train.peak_flops`` unset)."""
    from zerolm.launch.plan import DEVICES

    key = device_key(name)
    if key is None or DEVICES[key]["peak_tflops"] is None:
        return None, f"{name!r} is not in launch/plan.py DEVICES: MFU is against the trainer's measured matmul peak"
    dev = DEVICES[key]
    return dev["peak_tflops"] * 1e12, f"{dev['name']} data sheet, dense bf16: {dev['peak_tflops']:g} TFLOP/s (DEVICES[{key!r}])"


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring); ``--smoke`` replaces the run grid by the CPU smoke run."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench/results/gpu"),
                    help="folder for gpu_bench.json / gpu_bench.md (default $OUT, else bench/results/gpu)")
    ap.add_argument("--runs-dir", default="/tmp/zerolm_gpu_bench", help="run folders and per-run logs")
    ap.add_argument("--presets", default="gpt3-125m,gpt3-350m", help="model presets (configs/models/), in order")
    ap.add_argument("--stages", default="2,1", help="ZeRO stages, in order")
    ap.add_argument("--compile", default="off,on", help="train.compile variants, in order")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=16)
    ap.add_argument("--num-workers", type=int, default=8, help="data-loader workers (tokenize ahead of the GPU)")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "fp16"])
    ap.add_argument("--max-minutes", type=float, default=7.0, help="total time budget; later runs are skipped")
    ap.add_argument("--device-name", default=None, help="use this device name for the peak lookup (default: CUDA's)")
    ap.add_argument("--no-matmul", action="store_true", help="skip this driver's own bf16 matmul measurement")
    ap.add_argument("--keep-runs", action="store_true", help="keep the runs' checkpoints")
    ap.add_argument("--dry-run", action="store_true", help="print and validate the commands, run nothing")
    ap.add_argument("--smoke", action="store_true", help="CPU check: tiny preset, fp32, 3 steps, ZeRO-1, compile off")
    ap.add_argument("extra", nargs="*", help="further config overrides for every run (after --)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.presets, args.stages, args.compile, args.steps = "tiny", "1", "off", 3
        args.precision, args.seq_len, args.micro_batch, args.num_workers = "fp32", 128, 4, 1
    if args.steps < 2:
        ap.error("--steps must be at least 2 (the first log window is left out of the medians)")
    return args


def plan_runs(args: argparse.Namespace, peak: float | None) -> list[dict[str, Any]]:
    """The runs in execution order: one dict per (stage, preset, compile) with its ``name``, ``overrides``
    and full ``command`` (argv). Paths are absolute: runs start outside the repository (``python -m``
    puts the working directory first on ``sys.path``, where the repository's own ``zerolm/`` folder would
    shadow the ``zerolm`` package)."""
    runs_dir = Path(args.runs_dir).resolve()
    steps = args.steps
    # one process, accumulation 1: each step is one micro-batch, which the loader workers must split evenly
    # (data_pipeline/loader.py step_layout): the most workers <= --num-workers that divide it
    workers = max(w for w in range(1, max(args.num_workers, 1) + 1) if args.micro_batch % w == 0)
    log_every = max(1, steps // 10)
    far = steps + 1000  # eval/save only where the trainer always does them: the last step
    corpus, tok = REPO / "data/corpus", REPO / "data/tokenizer"
    runs = []
    for stage in (int(s) for s in _split(args.stages)):
        for preset in _split(args.presets):
            for comp in _split(args.compile):
                name = f"{preset}_z{stage}_compile-{comp}"
                ov = [f"model.preset={preset}", f"train.precision={args.precision}", f"train.zero_stage={stage}",
                      f"train.compile={comp}", f"train.max_steps={steps}", f"train.warmup_steps={min(30, steps // 10)}",
                      f"train.run_dir={runs_dir / name}", f"train.log_every={log_every}",
                      f"train.eval_every={far}", f"train.save_every={far}", "train.eval_batches=1", "train.keep_last=1",
                      "train.spike_recovery.enabled=false",  # a benchmark: no rollbacks to early checkpoints
                      f"data.seq_len={args.seq_len}", f"data.micro_batch_size={args.micro_batch}",
                      f"data.num_workers={workers}", f"data.tokenizer_dir={tok}",
                      f"data.sources=[{{name: corpus, paths: ['{corpus}/train/*.jsonl']}}]",
                      f"data.validation_sources=[{{name: corpus, paths: ['{corpus}/validation/*.jsonl']}}]",
                      "tracking.wandb_mode=disabled", "tracking.emissions.enabled=false"]
                if preset in GPT3_LR:
                    ov.append(f"train.lr={GPT3_LR[preset]}")
                if peak is not None:
                    ov.append(f"train.peak_flops={peak!r}")
                ov += list(args.extra)
                cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                       "-m", "zerolm.pretrain", "--config", str(CONFIG), *ov]
                runs.append({"name": name, "preset": preset, "zero_stage": stage, "compile": comp,
                             "num_workers": workers, "run_dir": str(runs_dir / name), "overrides": ov, "command": cmd})
    return runs


def validate(runs: list[dict[str, Any]]) -> None:
    """Load every run's config through ``zerolm.config.load_config`` and resolve its model preset; adds
    ``n_layer``, ``d_model`` and ``weight`` (12·L·d², the non-embedding parameters, for time estimates).

    Raises:
        ConfigError: a run's overrides do not validate, or its preset does not exist.
    """
    from zerolm.config import load_config
    from zerolm.pretrain.models import resolve_model_config

    for r in runs:
        mc = resolve_model_config(load_config(CONFIG, r["overrides"]).model)
        r.update(n_layer=mc.n_layer, d_model=mc.d_model, weight=12 * mc.n_layer * mc.d_model**2)


def estimate_seconds(run: dict[str, Any], done: list[dict[str, Any]]) -> float | None:
    """Wall seconds ``run`` should take, from the finished runs: the slowest of the same preset and
    compile setting; else a run of the same compile setting (else any, ×2 for compiling) with its training
    time scaled by the non-embedding parameter ratio and its start-up/teardown time kept; None before
    any run finished."""
    ok = [d for d in done if d.get("wall_s") is not None]
    same = [d["wall_s"] for d in ok if d["preset"] == run["preset"] and d["compile"] == run["compile"]]
    if same:
        return max(same)
    refs = [d for d in ok if d["compile"] == run["compile"]] or ok
    if not refs:
        return None
    factor = 1.0 if any(d["compile"] == run["compile"] for d in refs) else (2.0 if run["compile"] == "on" else 1.0)
    ests = []
    for d in refs:
        train = float(d.get("train_seconds") or d["wall_s"])
        fixed = max(d["wall_s"] - train, 0.0)
        ests.append((fixed + train * run["weight"] / d["weight"]) * factor)
    return max(ests)


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def read_run(run_dir: Path) -> dict[str, Any]:
    """The figures of one finished run from its ``result.json`` and ``metrics.jsonl`` (missing ones None)."""
    res = json.loads((run_dir / "result.json").read_text())
    thr, mem = res.get("throughput", {}), res.get("memory", {})
    rows = []
    mpath = run_dir / "metrics.jsonl"
    if mpath.is_file():
        rows = [json.loads(line) for line in mpath.read_text().splitlines() if line.strip()]
    windows = [r for r in rows if "train/tokens_per_second" in r]
    steady = windows[1:] or windows
    losses = [r["train/loss"] for r in windows if "train/loss" in r]
    cuda_mem = mem.get("cuda_max_allocated_gib")
    return {"status": res.get("status"), "steps_done": res.get("step"), "parameters": res.get("parameters"),
            "train_seconds": res.get("train_seconds"), "step_time_s": thr.get("step_time_s"),
            "tokens_per_second": thr.get("tokens_per_second"), "mfu": thr.get("mfu"),
            "peak_tflops_used": thr.get("peak_tflops_per_rank"), "windows": thr.get("windows"),
            "first_window_step_time_s": windows[0]["train/step_time_s"] if windows else None,
            "data_wait_fraction": _median([r["train/data_wait_fraction"] for r in steady if "train/data_wait_fraction" in r]),
            "final_loss": losses[-1] if losses else None,
            "cuda_max_allocated_gib": max(cuda_mem) if cuda_mem else None,
            "peak_rss_gib": max(mem["peak_rss_gib"]) if mem.get("peak_rss_gib") else None}


def _pump(stream, log_path: Path) -> None:
    with open(log_path, "w") as log:
        for line in stream:
            log.write(line)
            if any(k in line for k in _ECHO):
                print("    | " + line.rstrip()[-200:], flush=True)


def run_one(run: dict[str, Any], env: dict[str, str], cwd: Path, timeout: float) -> dict[str, Any]:
    """Start one run (its own process group), echo its progress lines, stop it at ``timeout`` seconds
    (SIGTERM to the group, SIGKILL 15 s later). Returns ``rc``, ``wall_s``, ``log``, ``timed_out``."""
    log_path = cwd / f"{run['name']}.log"
    t0 = time.perf_counter()
    proc = subprocess.Popen(run["command"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", start_new_session=True)
    pump = threading.Thread(target=_pump, args=(proc.stdout, log_path), daemon=True)
    pump.start()
    timed_out = False
    try:
        proc.wait(timeout=max(timeout, 1.0))
    except subprocess.TimeoutExpired:
        timed_out = True
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    pump.join(timeout=10)
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1), "log": str(log_path),
            "timed_out": timed_out}


def _tail(path: str, n: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def render_markdown(summary: dict[str, Any]) -> str:
    """The results as a markdown page: the setup, one table row per run, the compile on/off ratios,
    the skipped runs and the anchor."""
    a = summary["args"]
    lines = [f"# zerolm on one GPU: {summary['device']}", "",
             f"{a['precision']}, seq_len {a['seq_len']}, micro-batch {a['micro_batch']} (accumulation 1, one process), "
             f"{a['steps']} steps per run, bundled corpus (vocabulary {summary.get('vocab_size', '?')}), "
             f"{summary.get('num_workers', a['num_workers'])} loader workers. Peak for MFU: {summary['peak_note']}.",
             f"Versions: {summary.get('versions', {})}.", ""]
    if summary.get("matmul_tflops"):
        lines.append(f"This driver's bf16 matmul (8192³, torch) measured {summary['matmul_tflops']:.0f} TFLOP/s "
                     f"(MFU vs measured = tokens/s × FLOPs/token ÷ that).")
        lines.append("")
    lines += ["| run | params | ZeRO | compile | status | tokens/s | s/step | MFU vs dense peak | MFU vs measured matmul "
              "| peak GiB (CUDA) | data wait | first-window s/step | wall s | on/off tokens/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by = {(r["preset"], r["zero_stage"], r["compile"]): r for r in summary["runs"]}
    for r in summary["runs"]:
        off = by.get((r["preset"], r["zero_stage"], "off"))
        ratio = None
        if r["compile"] == "on" and off and off.get("tokens_per_second") and r.get("tokens_per_second"):
            ratio = r["tokens_per_second"] / off["tokens_per_second"]
        mfu_meas = None
        if r.get("mfu") is not None and r.get("peak_tflops_used") and summary.get("matmul_tflops"):
            mfu_meas = r["mfu"] * r["peak_tflops_used"] / summary["matmul_tflops"]
        params = f"{r['parameters'] / 1e6:.0f}M" if isinstance(r.get("parameters"), (int, float)) else "–"
        lines.append(f"| {r['preset']} | {params} | {r['zero_stage']} | {r['compile']} | {r.get('status') or r.get('error', '?')} "
                     f"| {_f(r.get('tokens_per_second'), ',.0f')} | {_f(r.get('step_time_s'), '.4f')} "
                     f"| {_pct(r.get('mfu'))} | {_pct(mfu_meas)} | {_f(r.get('cuda_max_allocated_gib'), '.2f')} "
                     f"| {_pct(r.get('data_wait_fraction'), 0)} "
                     f"| {_f(r.get('first_window_step_time_s'), '.3f')} | {_f(r.get('wall_s'), '.0f')} "
                     f"| {_f(ratio, '.3f')} |")
    if summary["skipped"]:
        lines += ["", "Skipped (time budget): " + "; ".join(f"{s['name']} ({s['why']})" for s in summary["skipped"])]
    lines += ["", f"Anchor: {ANCHOR}.", "",
              "tokens/s, s/step and MFU are the medians of the trainer's log windows after the first "
              "(result.json `throughput`); MFU counts 6·N + 12·L·d·T FLOPs per token (pretrain/models.py "
              "flops_per_token). Peak GiB: torch.cuda.max_memory_allocated. The first window holds the compile; "
              "wall s includes start-up, the final validation batch and checkpoint.", ""]
    return "\n".join(lines)


def _device_info(args: argparse.Namespace) -> tuple[str, bool]:
    """(device name, CUDA available): ``--device-name`` if given; a dry run imports no torch."""
    if args.dry_run:
        return args.device_name or "unknown (dry run)", False
    import torch

    cuda = torch.cuda.is_available()
    return args.device_name or (torch.cuda.get_device_name(0) if cuda else "cpu"), cuda


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("torch", "deepspeed", "transformers", "pydantic", "omegaconf", "triton"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def main(argv: list[str] | None = None) -> int:
    """Plan, validate and (unless ``--dry-run``) run the benchmark; returns the exit status (0 when at
    least one run finished and none failed; 1 if any failed; 2 before any work on a bad plan).
    With ``--dry-run`` prints one command per run."""
    t_start = time.perf_counter()
    args = parse_args(argv)
    from zerolm.errors import ConfigError

    device, cuda = _device_info(args)
    peak, peak_note = peak_flops(device) if device not in ("cpu", "unknown (dry run)") else (
        None, f"{device}: MFU is against the trainer's measured matmul peak")
    runs = plan_runs(args, peak)
    if not runs:
        print("no runs planned: --presets, --stages and --compile must each name at least one", file=sys.stderr)
        return 2
    try:
        validate(runs)
    except ConfigError as e:
        print(f"invalid run config: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for r in runs:
            print(shlex.join(r["command"]))
        return 0

    out = Path(args.out)
    runs_dir = Path(args.runs_dir).resolve()
    if runs_dir.exists():
        shutil.rmtree(runs_dir)
    runs_dir.mkdir(parents=True)
    for p in (REPO / "data/corpus/train", REPO / "data/tokenizer"):
        if not p.is_dir():
            print(f"missing {p}: carry data/corpus and data/tokenizer (or run `zerolm data prepare` / "
                  f"`zerolm tokenizer train`)", file=sys.stderr)
            return 2
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           # zerolm's CLI defaults DS_ACCELERATOR to cpu (zerolm/cli.py main): name the real one
           "DS_ACCELERATOR": "cuda" if cuda else "cpu"}
    if not cuda:
        env.setdefault("OMP_NUM_THREADS", "1")
    from zerolm.fsutil import write_json, write_text

    summary: dict[str, Any] = {"device": device, "peak_flops": peak, "peak_note": peak_note, "anchor": ANCHOR,
                               "args": {k: v for k, v in vars(args).items()}, "versions": _versions(),
                               "config": str(CONFIG.relative_to(REPO)), "num_workers": runs[0]["num_workers"],
                               "runs": [], "skipped": []}
    try:
        summary["vocab_size"] = json.loads((REPO / "data/tokenizer/zerolm_tokenizer.json").read_text())["vocab_size"]
    except (OSError, ValueError, KeyError):
        pass
    if cuda and not args.no_matmul:
        import torch

        from zerolm.pretrain.metrics import measure_matmul_peak

        summary["matmul_tflops"] = measure_matmul_peak("cuda", torch.bfloat16, n=8192, seconds=0.5) / 1e12
        torch.cuda.empty_cache()
    print(f"device: {device}; peak: {peak_note}; {len(runs)} runs planned, budget {args.max_minutes:g} min", flush=True)
    if summary.get("matmul_tflops"):
        print(f"bf16 matmul 8192^3: {summary['matmul_tflops']:.0f} TFLOP/s", flush=True)

    def save() -> None:
        write_json(out / "gpu_bench.json", summary, default=str)
        write_text(out / "gpu_bench.md", render_markdown(summary))

    budget = 60.0 * args.max_minutes
    failed = False
    for r in runs:
        elapsed = time.perf_counter() - t_start
        est = estimate_seconds(r, summary["runs"])
        left = budget - elapsed
        if (est is not None and est > left) or left < 20:
            why = f"estimated {est:.0f} s, {max(left, 0):.0f} s left" if est is not None else f"{max(left, 0):.0f} s left"
            summary["skipped"].append({"name": r["name"], "why": why})
            print(f"skip {r['name']}: {why}", flush=True)
            save()
            continue
        print(f"run {r['name']} (est. {'?' if est is None else f'{est:.0f} s'}, {left:.0f} s left)", flush=True)
        got = run_one(r, env, runs_dir, timeout=left)
        row = {k: r[k] for k in ("name", "preset", "zero_stage", "compile", "n_layer", "d_model", "weight", "overrides")}
        row.update(wall_s=got["wall_s"], rc=got["rc"], log=got["log"])
        rd = Path(r["run_dir"])
        if got["rc"] == 0 and (rd / "result.json").is_file():
            row.update(read_run(rd))
            print(f"  {r['name']}: {_f(row['tokens_per_second'], ',.0f')} tokens/s, "
                  f"{_pct(row['mfu'])} MFU, "
                  f"{_f(row['step_time_s'], '.4f')} s/step, peak {_f(row['cuda_max_allocated_gib'], '.2f')} GiB CUDA, "
                  f"data wait {_pct(row['data_wait_fraction'], 0)}, "
                  f"wall {got['wall_s']:.0f} s", flush=True)
        else:
            failed = True
            row["error"] = "timeout" if got["timed_out"] else f"exit {got['rc']}"
            row["wall_s"] = None if got["timed_out"] else got["wall_s"]
            row["log_tail"] = _tail(got["log"])
            print(f"  {r['name']} FAILED ({row['error']}); last lines of {got['log']}:\n{row['log_tail']}", flush=True)
        if not args.keep_runs and rd.is_dir():
            for child in rd.iterdir():  # checkpoints are GBs at 350M: keep only the small records
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
        summary["runs"].append(row)
        save()
    summary["total_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(f"wrote {out / 'gpu_bench.json'} and {out / 'gpu_bench.md'} ({summary['total_s']:.0f} s)", flush=True)
    print(render_markdown(summary), flush=True)
    ok = [r for r in summary["runs"] if "error" not in r]
    return 1 if failed or not ok else 0


if __name__ == "__main__":
    sys.exit(main())
