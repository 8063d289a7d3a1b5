"""`zerolm plan`: model-state memory against DeepSpeed's own estimators, the GPT-3 175B check against
published figures (Lambda Labs 2020; Patterson et al. 2021 Table 4), bad input, and the CLI."""

from __future__ import annotations

import json
import math

import pytest

from zerolm.config import DataConfig, ModelConfig, TrainConfig, ZeroLMConfig, load_config
from zerolm.errors import ConfigError
from zerolm.launch.plan import plan_run

QUICKSTART = "configs/pretrain/quickstart_gpt.yaml"


def _row(plan, stage, offload):
    (row,) = [r for r in plan["memory"] if r["zero_stage"] == stage and r["offload"] == offload]
    return row


def _device(row):
    return row["params"] + row["grads"] + row["optimizer"] + row["gathered"]


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_model_states_match_deepspeed_estimators(preset):
    import torch
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from zerolm.pretrain.models import build_model

    vocab = 1000
    mcfg = ModelConfig(family="gpt2", preset=preset)
    torch.manual_seed(0)
    model = build_model(mcfg, vocab_size=vocab, seq_len=64,
                        special_ids={"bos": 0, "eos": 1, "pad": 2})  # a real model: DeepSpeed counts its tensors
    n, largest = model_to_params(model)
    cfg = ZeroLMConfig(model=mcfg, data=DataConfig(seq_len=64, micro_batch_size=2),
                       train=TrainConfig(precision="bf16"))  # DeepSpeed's estimators assume 16-bit params
    for world in (1, 2, 8):
        plan = plan_run(cfg, gpus=world, gpu_type="a100", vocab_size=vocab)
        assert plan["model"]["params"] == n
        assert plan["model"]["largest_layer_params"] == largest
        for offload, stage2_cpu_offload in (("none", False), ("optimizer", True)):
            _, gpu = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=world, cpu_offload=stage2_cpu_offload)
            assert _device(_row(plan, 2, offload)) == pytest.approx(gpu, abs=1.0), (world, offload)
        for offload, opt, par in (("none", False, False), ("optimizer", True, False), ("optimizer+params", True, True)):
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                n, largest, num_gpus_per_node=world, cpu_offload=opt, cpu_offload_params=par)
            row = _row(plan, 3, offload)
            assert _device(row) == pytest.approx(gpu, abs=1.0), (world, offload)
            if opt:  # DeepSpeed's CPU figure is for the whole node, with a 1.5x buffer factor
                assert row["cpu"] * world * 1.5 == pytest.approx(cpu, abs=2.0), (world, offload)


def _gpt3_175b() -> ZeroLMConfig:
    # Brown et al. 2020, Table 2.1: 96 layers, d_model 12288, 96 heads, context 2048; GPT-2 BPE vocabulary 50257
    return ZeroLMConfig(
        model=ModelConfig(family="gpt2", n_layer=96, n_head=96, d_model=12288),
        data=DataConfig(seq_len=2048, micro_batch_size=1),
        train=TrainConfig(precision="fp16", zero_stage=3),
    )


def test_gpt3_175b_against_lambda_and_patterson():
    cfg = _gpt3_175b()
    tokens = 300e9
    # Lambda Labs (2020): 28 TFLOP/s effective per V100 -> 355 GPU-years, $4.6M at $1.50/GPU-hour.
    lam = plan_run(cfg, gpus=1, gpu_type="v100", tokens=tokens, mfu=28.0 / 125.0, price_per_gpu_hour=1.50,
                   vocab_size=50257)
    assert 170e9 < lam["model"]["params"] < 180e9
    assert lam["time"]["gpu_years"] == pytest.approx(355, rel=0.15)
    assert lam["cost"]["usd"] == pytest.approx(4.6e6, rel=0.15)

    # Patterson et al. 2021, Table 4: 3.14e23 FLOPs, 10,000 V100s, 14.8 days, 330 W average system power
    # per processor, PUE 1.1, 1,287 MWh, 0.429 kgCO2e/kWh, 552 tCO2e.
    implied_mfu = 3.14e23 / (10_000 * 125e12 * 14.8 * 86400)  # = 0.196 of the V100's 125 TFLOP/s
    assert implied_mfu == pytest.approx(0.1965, abs=1e-3)
    pat = plan_run(cfg, gpus=10_000, gpu_type="v100", tokens=tokens, mfu=implied_mfu, pue=1.1,
                   power_watts=330.0, grid_intensity_g_per_kwh=429.0, vocab_size=50257)
    assert pat["time"]["total_flops"] == pytest.approx(3.14e23, rel=0.15)
    assert pat["time"]["wall_days"] == pytest.approx(14.8, rel=0.15)
    assert pat["energy"]["kwh"] / 1000 == pytest.approx(1287, rel=0.15)
    assert pat["energy"]["co2e_kg"] / 1000 == pytest.approx(552, rel=0.15)
    # the V100's 300 W TDP instead of the measured 330 W also lands within 15%
    tdp = plan_run(cfg, gpus=10_000, gpu_type="v100", tokens=tokens, mfu=implied_mfu, pue=1.1,
                   grid_intensity_g_per_kwh=429.0, vocab_size=50257)
    assert tdp["device"]["power_w"] == 300.0
    assert tdp["energy"]["kwh"] / 1000 == pytest.approx(1287, rel=0.15)
    # a 175B model's states alone (16N/rank at ZeRO-0 -> 2.8 TB) do not fit a 32 GB V100; ZeRO-3 over 10,000 does
    assert not _row(pat, 0, "none")["fits_ckpt"]
    assert _row(pat, 3, "none")["params"] == pytest.approx(2 * pat["model"]["params"] / 10_000)


def test_activations_and_largest_micro_batch():
    cfg = ZeroLMConfig(model=ModelConfig(family="gpt2", n_layer=2, n_head=4, d_model=64),
                       data=DataConfig(seq_len=32, micro_batch_size=4), train=TrainConfig(precision="bf16", zero_stage=0))
    plan = plan_run(cfg, gpus=1, gpu_type="a100", vocab_size=500, gpu_memory_gb=0.01)
    s, b, h, a, L, V = 32, 4, 64, 4, 2, 500
    full = L * s * b * h * (34 + 5 * a * s / h) + 4 * s * b * V  # Korthikanti eq. 2 + fp32 logits
    ckpt = L * 2 * s * b * h + s * b * h * (34 + 5 * a * s / h) + 4 * s * b * V
    row = _row(plan, 0, "none")
    assert row["activations_no_ckpt"] == pytest.approx(full)
    assert row["activations_ckpt"] == pytest.approx(ckpt)
    states = plan["model"]["params"] * 20  # bf16 ZeRO-0: 2+2 working + 4 master + 4 fp32 grad + 8 moments
    assert _device(row) == pytest.approx(states)
    usable = 0.01e9 * 0.9
    assert row["max_micro_batch_no_ckpt"] == math.floor((usable - states) / (full / b))
    assert row["fits_no_ckpt"] == (states + full <= usable)


@pytest.mark.parametrize("kwargs, match", [
    ({"gpu_type": "tpu9"}, "unknown --gpu-type"),
    ({"gpus": 0}, "--gpus"),
    ({"tokens": -5}, "--tokens"),
    ({"mfu": 1.5}, "--mfu"),
    ({"pue": 0.9}, "--pue"),
])
def test_bad_input_is_a_config_error(kwargs, match):
    cfg = load_config(QUICKSTART)
    with pytest.raises(ConfigError, match=match):
        plan_run(cfg, **kwargs)


def test_invalid_model_config_is_a_config_error():
    cfg = ZeroLMConfig(model=ModelConfig(family="gpt2", n_layer=2, n_head=3, d_model=64))
    with pytest.raises(ConfigError, match="divisible"):
        plan_run(cfg, vocab_size=100)


def test_cli_table_and_json(capsys):
    from zerolm.cli import main

    assert main(["plan", QUICKSTART, "--gpus", "2", "--gpu-type", "h100", "--price-per-gpu-hour", "2"]) == 0
    out = capsys.readouterr().out
    assert "memory per rank" in out and "GPU-hours" in out and "assumption" in out
    assert main(["plan", QUICKSTART, "--gpu-type", "h100", "--tokens", "1e9", "--json", "data.seq_len=64"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"]["seq_len"] == 64 and plan["time"]["tokens"] == 1e9
    fpt = plan["time"]["flops_per_token"]
    assert plan["time"]["wall_s"] == pytest.approx(1e9 * fpt / (989e12 * 0.4))
    assert sum(r["current"] for r in plan["memory"]) == 1
    assert main(["plan", QUICKSTART, "--gpu-type", "nope"]) == 2


def test_every_preset_and_family_plans():
    from zerolm.pretrain.models import available_presets

    combos = [("gpt2", p) for p in available_presets()] + [("llama", "small"), ("bert", "small"), ("modernbert", "small")]
    for family, preset in combos:
        cfg = ZeroLMConfig(model=ModelConfig(family=family, preset=preset), data=DataConfig(seq_len=128),
                           train=TrainConfig(precision="bf16"))
        plan = plan_run(cfg, gpus=4, gpu_type="h200", tokens=1e9, vocab_size=8000)
        assert plan["model"]["params"] > 0 and plan["time"]["wall_s"] > 0, (family, preset)
        # bf16: ZeRO-3 over 4 ranks holds a quarter of ZeRO-0's parameters and 16-byte optimizer state
        z0, z3 = _row(plan, 0, "none"), _row(plan, 3, "none")
        assert z3["params"] == pytest.approx(z0["params"] / 4)
        assert z0["optimizer"] == pytest.approx(16 * plan["model"]["params"])
        assert z3["optimizer"] == pytest.approx(z0["optimizer"] / 4)
