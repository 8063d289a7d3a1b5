"""bench/gpu_bench.py (the one-GPU benchmark driver) and its shell scripts, without a GPU: the planned
commands validate as zerolm configs, the device-peak lookup matches launch/plan.py's table, the time
estimate and the result parsing. The driver's CPU smoke run (``--smoke``) is not run here (CI time)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from zerolm.config import load_config

REPO = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_bench", REPO / "bench/gpu_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gb = _driver()


def _planned(capsys, *argv: str) -> list[list[str]]:
    assert gb.main(["--dry-run", *argv]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_dry_run_commands_validate_as_configs(capsys):
    cmds = _planned(capsys, "--device-name", "NVIDIA H200")
    assert len(cmds) == 8  # 2 presets × 2 stages × 2 compile settings
    seen = []
    for cmd in cmds:
        assert cmd[0] == sys.executable
        assert cmd[1:9] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                            "-m", "zerolm.pretrain", "--config"]
        assert Path(cmd[9]) == REPO / "configs/pretrain/quickstart_gpt.yaml"
        cfg = load_config(cmd[9], cmd[10:])  # the overrides as zerolm itself reads them
        t, d = cfg.train, cfg.data
        assert t.precision == "bf16" and t.max_steps == 200
        assert t.eval_every > t.max_steps and t.save_every > t.max_steps
        assert t.peak_flops == 989e12  # launch/plan.py DEVICES["h200"]: 989 TFLOP/s dense bf16
        assert d.seq_len == 1024 and d.micro_batch_size == 16 and 16 % d.num_workers == 0
        assert t.global_batch_size is None and t.gradient_accumulation_steps is None  # accumulation 1
        assert cfg.tracking.wandb_mode == "disabled" and cfg.tracking.emissions.enabled is False
        assert d.tokenizer_dir == str(REPO / "data/tokenizer")
        assert d.sources[0].paths == [f"{REPO}/data/corpus/train/*.jsonl"]
        seen.append((cfg.model.preset, t.zero_stage, t.compile))
    assert set(seen) == set(itertools.product(["gpt3-125m", "gpt3-350m"], [1, 2], ["off", "on"]))
    # the most important first: 125M ZeRO-2 eager, then compiled, then 350M; ZeRO-1 last
    assert seen[:4] == [("gpt3-125m", 2, "off"), ("gpt3-125m", 2, "on"), ("gpt3-350m", 2, "off"), ("gpt3-350m", 2, "on")]


def test_dry_run_options_and_unknown_device(capsys):
    cmds = _planned(capsys, "--presets", "gpt3-350m", "--stages", "1", "--compile", "on", "--steps", "50",
                    "--seq-len", "512", "--micro-batch", "12", "--device-name", "Some Future GPU")
    assert len(cmds) == 1
    cfg = load_config(cmds[0][9], cmds[0][10:])
    assert (cfg.model.preset, cfg.train.zero_stage, cfg.train.compile, cfg.train.max_steps) == ("gpt3-350m", 1, "on", 50)
    assert cfg.data.seq_len == 512 and cfg.data.micro_batch_size == 12
    assert cfg.data.num_workers == 6  # the most workers <= 8 that split a micro-batch of 12
    assert cfg.train.peak_flops is None  # unknown device: the trainer measures its own peak


def test_dry_run_bad_preset_is_an_error(capsys):
    assert gb.main(["--dry-run", "--presets", "gpt3-125m,gpt3-nope"]) == 2
    err = capsys.readouterr().err
    assert "gpt3-nope" in err and "unknown preset" in err


@pytest.mark.parametrize("name, key, tflops", [
    ("NVIDIA H200", "h200", 989.0),
    ("NVIDIA H100 80GB HBM3", "h100", 989.0),
    ("NVIDIA A100-SXM4-80GB", "a100", 312.0),
    ("NVIDIA A100-SXM4-40GB", "a100-40gb", 312.0),
])
def test_peak_lookup_matches_plan_devices(name, key, tflops):
    from zerolm.launch.plan import DEVICES

    assert DEVICES[key]["peak_tflops"] == tflops  # the figures written in launch/plan.py's table
    assert gb.device_key(name) == key
    peak, note = gb.peak_flops(name)
    assert peak == tflops * 1e12 and key in note


@pytest.mark.parametrize("name", ["NVIDIA H100 PCIe", "NVIDIA H200 NVL", "NVIDIA GeForce RTX 4090", "cpu"])
def test_peak_lookup_unknown_devices(name):
    peak, note = gb.peak_flops(name)
    assert peak is None and "not in launch/plan.py DEVICES" in note


def test_shell_scripts_parse():
    for script in ("bench/gpu.sh", "bench/gpu_wheels.sh"):
        r = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
        assert r.returncode == 0, (script, r.stderr)


def test_time_estimate_from_finished_runs():
    done = [{"preset": "a", "compile": "off", "wall_s": 30.0, "train_seconds": 10.0, "weight": 100},
            {"preset": "a", "compile": "on", "wall_s": 90.0, "train_seconds": 60.0, "weight": 100}]
    run = {"preset": "b", "compile": "off", "weight": 300}
    # start-up 30 - 10 = 20 s kept, training 10 s × 3 (three times the non-embedding parameters)
    assert gb.estimate_seconds(run, done) == pytest.approx(20.0 + 30.0)
    assert gb.estimate_seconds({"preset": "a", "compile": "on", "weight": 100}, done) == 90.0
    assert gb.estimate_seconds(run, []) is None


def test_read_run_and_markdown(tmp_path):
    def fake(name, tps, mem, wait):
        d = tmp_path / name
        d.mkdir()
        (d / "result.json").write_text(json.dumps({
            "status": "completed", "step": 40, "parameters": 92_000_000, "train_seconds": 12.5,
            "throughput": {"step_time_s": 0.05, "tokens_per_second": tps, "mfu": 0.4, "windows": 3, "peak_tflops_per_rank": 989.0},
            "memory": {"peak_rss_gib": [3.0], "cuda_max_allocated_gib": [mem]}}))
        rows = [{"train/tokens_per_second": tps / 10, "train/step_time_s": 2.0, "train/data_wait_fraction": 0.9, "train/loss": 9.0}]
        rows += [{"train/tokens_per_second": tps, "train/step_time_s": 0.05, "train/data_wait_fraction": w, "train/loss": 5.0 - i}
                 for i, w in enumerate(wait)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return gb.read_run(d)

    off = fake("off", 100_000.0, 10.0, [0.1, 0.3, 0.2])
    assert off["tokens_per_second"] == 100_000.0 and off["cuda_max_allocated_gib"] == 10.0
    assert off["data_wait_fraction"] == pytest.approx(0.2)  # median of the windows after the first
    assert off["first_window_step_time_s"] == 2.0 and off["final_loss"] == 3.0
    on = fake("on", 150_000.0, 9.0, [0.0])
    base = {"preset": "gpt3-125m", "zero_stage": 2, "wall_s": 40.0}
    summary = {"device": "NVIDIA H200", "peak_note": "x", "matmul_tflops": 800.0, "skipped": [{"name": "z1", "why": "budget"}],
               "args": {"precision": "bf16", "seq_len": 1024, "micro_batch": 16, "steps": 40, "num_workers": 8},
               "runs": [{**base, "compile": "off", **off}, {**base, "compile": "on", **on}]}
    md = gb.render_markdown(summary)
    on_row = [line for line in md.splitlines() if line.startswith("| gpt3-125m") and "| on |" in line][0]
    assert on_row.rstrip().endswith("| 1.500 |")  # 150k / 100k tokens/s
    assert "| 49.5% |" in on_row  # MFU 40 % of 989 TFLOP/s is 49.5 % of a measured 800
    assert "z1 (budget)" in md and "44.8 % MFU" in md
