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


def _deepspeed_grad_partition(model, world: int) -> int:
    """Gradient elements the fullest rank's ZeRO-1/2 optimizer keeps, from DeepSpeed's ``get_partition_info``:
    each group (matrices, then the rest) flattened, padded to 2·world, cut into equal partitions."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    groups = ([p for p in model.parameters() if p.dim() >= 2], [p for p in model.parameters() if p.dim() < 2])
    held = []
    for rank in range(world):
        total = 0
        for group in groups:
            numel = sum(p.numel() for p in group)
            size = (numel + (-numel) % (2 * world)) // world
            inside, _, _ = DeepSpeedZeroOptimizer.get_partition_info(None, group, size, rank)
            total += sum(p.numel() for p in inside)
        held.append(total)
    return max(held)


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
        # DeepSpeed's estimator counts the gradient partition as N/g; its optimizer keeps the parameters that
        # straddle a partition boundary whole (the plan counts them): cut here with DeepSpeed's own code
        straddle = 2 * (_deepspeed_grad_partition(model, world) - n / world)
        for offload, stage2_cpu_offload in (("none", False), ("optimizer", True)):
            _, gpu = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=world, cpu_offload=stage2_cpu_offload)
            extra = straddle if offload == "none" else 0.0  # offloaded: reduced into the exact fp32 partition
            assert _device(_row(plan, 2, offload)) == pytest.approx(gpu + extra, abs=1.0), (world, offload)
        for offload, opt, par in (("none", False, False), ("optimizer", True, False), ("optimizer+params", True, True)):
            cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
                n, largest, num_gpus_per_node=world, cpu_offload=opt, cpu_offload_params=par)
            row = _row(plan, 3, offload)
            assert _device(row) == pytest.approx(gpu, abs=1.0), (world, offload)
            if opt:  # DeepSpeed's CPU figure is for the whole node, with a 1.5x buffer factor
                assert row["cpu"] * world * 1.5 == pytest.approx(cpu, abs=2.0), (world, offload)


def test_fp32_zero3_master_shared_only_where_the_engine_shares_it():
    """fp32 ZeRO-3 without offload: no separate fp32 master when ``train.share_fp32_master`` (the engine
    re-points it at the parameter partition, tests/test_zero3_fp32_master.py measures the bytes); with it
    off, with offload, at ZeRO-1/2 or in bf16 the 4N master stays, written out here from the formula."""
    mcfg = ModelConfig(family="gpt2", preset="tiny")
    for share in (True, False):
        cfg = ZeroLMConfig(model=mcfg, data=DataConfig(seq_len=64, micro_batch_size=2),
                           train=TrainConfig(precision="fp32", zero_stage=3, share_fp32_master=share))
        plan = plan_run(cfg, gpus=4, gpu_type="a100", vocab_size=1000)
        n = plan["model"]["params"]
        # optimizer partition: (fp32 grad 4N + Adam moments 8N [+ master 4N]) / g
        assert _row(plan, 3, "none")["optimizer"] == pytest.approx((12 * n + (0 if share else 4 * n)) / 4)
        assert _row(plan, 3, "optimizer")["cpu"] == pytest.approx(16 * n / 4)  # offload keeps DeepSpeed's copy
        assert _row(plan, 2, "none")["optimizer"] == pytest.approx(12 * n / 4)  # ZeRO-1/2: master 4N + Adam 8N
        bf16 = ZeroLMConfig(model=mcfg, data=cfg.data, train=TrainConfig(precision="bf16", zero_stage=3,
                                                                         share_fp32_master=share))
        assert _row(plan_run(bf16, gpus=4, gpu_type="a100", vocab_size=1000), 3, "none")["optimizer"] == \
            pytest.approx(16 * n / 4)


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
    # Korthikanti eq. 2 + fp32 logits + the loss (log_softmax output, its gradient, the logits' gradient)
    full = L * s * b * h * (34 + 5 * a * s / h) + 4 * s * b * V + 12 * s * b * V
    ckpt = L * 2 * s * b * h + s * b * h * (34 + 5 * a * s / h) + 4 * s * b * V + 12 * s * b * V
    row = _row(plan, 0, "none")
    assert row["activations_no_ckpt"] == pytest.approx(full)
    assert row["activations_ckpt"] == pytest.approx(ckpt)
    states = plan["model"]["params"] * 20  # bf16 ZeRO-0: 2+2 working + 4 master + 4 fp32 grad + 8 moments
    assert _device(row) == pytest.approx(states)
    usable = 0.01e9 * 0.9
    flat = 2 * plan["model"]["params"]  # ZeRO-0's flattened bf16 all-reduce copy, after backward (N < 5e8)
    assert row["buffers"] == pytest.approx(flat) and row["buffers_timing"] == "after_backward"
    assert row["total_no_ckpt"] == pytest.approx(states + max(full, flat))
    assert row["max_micro_batch_no_ckpt"] == math.floor((usable - states) / (full / b))
    assert row["fits_no_ckpt"] == (states + max(full, flat) <= usable)


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


# -- plan vs reality on a run directory ------------------------------------------------------------
def _run_dir(tmp_path, *, stage=2, micro=4, seq=64, result=None, metrics=None, ds=None):
    """A hand-made run directory: config.yaml as the trainer writes it (the resolved config), plus the
    given result.json / metrics.jsonl / ds_config.json."""
    from zerolm.config import save_config
    from zerolm.pretrain.models import resolve_model_config

    cfg = load_config("configs/pretrain/tiny_gpt.yaml", [
        f"data.seq_len={seq}", f"data.micro_batch_size={micro}", f"train.zero_stage={stage}",
        f"data.tokenizer_dir={tmp_path / 'no_tokenizer'}"])  # no tokenizer: vocab = tokenizer.vocab_size
    cfg = cfg.model_copy(update={"model": resolve_model_config(cfg.model)})
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    if result is not None:
        (run / "result.json").write_text(json.dumps(result))
    if metrics is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if ds is not None:
        (run / "ds_config.json").write_text(json.dumps(ds))
    return run, cfg


def _tiny_params(vocab, seq, world):
    """Unique parameters of the tiny GPT-2, counted here on a real model (tied embeddings once), and the
    gradient elements its fullest ZeRO-1/2 rank keeps out of ``world`` (DeepSpeed's own partitioning)."""
    from zerolm.pretrain.models import build_model, resolve_model_config

    model = build_model(resolve_model_config(ModelConfig(family="gpt2", preset="tiny")), vocab_size=vocab,
                        seq_len=seq, special_ids={"bos": 0, "eos": 1, "pad": 2})
    n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return n, _deepspeed_grad_partition(model, world)


RESULT = {"status": "completed", "step": 20,
          "memory": {"baseline_rss_gib": [0.50, 0.52], "peak_rss_gib": [0.90, 0.96], "baseline": "after imports"},
          "throughput": {"step_time_s": 0.2, "tokens_per_second": 2560.0, "mfu": 0.3, "windows": 4,
                         "peak_tflops_per_rank": 0.1}}


def test_compare_run_against_an_independent_computation(tmp_path):
    from zerolm.launch.plan_vs_run import compare_run

    run, cfg = _run_dir(tmp_path, result=RESULT)
    V, s, b, L, h, a, g = cfg.tokenizer.vocab_size, 64, 4, 2, 64, 2, 2  # tiny: 2 layers, d_model 64, 2 heads
    n, part = _tiny_params(V, s, g)
    cmp = compare_run(run)
    assert cmp["world_size"] == 2 and cmp["device"]["type"] == "cpu" and cmp["device"]["peak_tflops"] == 0.1
    # fp32 ZeRO-2 on 2 ranks: params 4N + the gradient partition (about N/2: the parameters overlapping the
    # fullest rank's partition) + (fp32 master 4N + Adam 8N)/2
    states = 4 * n + 4 * part + 6 * n
    assert n / 2 < part < n
    assert cmp["memory"]["predicted_model_states"] == pytest.approx(states)
    # Korthikanti eq. 2 (x2 fp32) + fp32 logits + loss (log_softmax output, its gradient, the logits' gradient)
    act = L * s * b * h * (34 + 5 * a * s / h) * 2 + 4 * s * b * V + 12 * s * b * V
    bucket = 4 * n  # ZeRO-2's reduction bucket on CPU: the N fp32 gradients written into it
    assert cmp["memory"]["predicted_buffers"] == pytest.approx(bucket)
    assert cmp["memory"]["predicted_total"] == pytest.approx(states + bucket + act)
    measured = [(0.90 - 0.50) * 2**30, (0.96 - 0.52) * 2**30]
    assert cmp["memory"]["measured"] == pytest.approx(measured)
    assert cmp["memory"]["ratio"] == pytest.approx([m / (states + bucket + act) for m in measured])
    step = (b * g * s) * (6 * n + 12 * L * h * s) / (g * 0.1e12 * 0.3)
    assert cmp["time"]["predicted_step_time_s"] == pytest.approx(step)
    assert cmp["time"]["ratio"] == pytest.approx(0.2 / step)
    assert cmp["time"]["consistent_by_construction"] and "measured in" in cmp["time"]["mfu_source"]
    # an MFU from elsewhere makes it a prediction: half the MFU, twice the time
    other = compare_run(run, mfu=0.15)
    assert other["time"]["predicted_step_time_s"] == pytest.approx(2 * step)
    assert not other["time"]["consistent_by_construction"]


def test_compare_run_older_run_reads_metrics_jsonl(tmp_path):
    from zerolm.launch.plan_vs_run import compare_run

    windows = [{"step": i, "train/step_time_s": t, "train/mfu": u, "train/tokens_per_second": 1000.0 / t,
                "memory/rss_gib": r} for i, (t, u, r) in enumerate([(9.0, 0.01, 0.7), (0.3, 0.2, 0.8), (0.5, 0.4, 0.9),
                                                                    (0.4, 0.3, 0.85)], 1)]
    run, _ = _run_dir(tmp_path, result={"status": "completed"}, metrics=windows + [{"step": 4, "eval/loss": 5.0}],
                      ds={"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1})
    cmp = compare_run(run)
    assert cmp["world_size"] == 2  # 8 / (4 x 1) from ds_config.json
    assert cmp["time"]["measured_step_time_s"] == pytest.approx(0.4)  # median of the windows after the first
    assert cmp["time"]["mfu"] == pytest.approx(0.3)
    assert cmp["memory"]["kind"] == "rss_absolute" and cmp["memory"]["ratio"] is None  # no baseline: no ratio
    assert cmp["memory"]["measured"] == pytest.approx([0.9 * 2**30])
    assert any("metrics.jsonl" in n for n in cmp["notes"])


def test_compare_run_bad_directory_is_a_config_error(tmp_path):
    from zerolm.launch.plan_vs_run import compare_run

    with pytest.raises(ConfigError, match="config.yaml"):
        compare_run(tmp_path)
    with pytest.raises(ConfigError, match="not a directory"):
        compare_run(tmp_path / "missing")
    run, _ = _run_dir(tmp_path)
    (run / "result.json").write_text("{not json")
    with pytest.raises(ConfigError, match="result.json"):
        compare_run(run)
    (run / "result.json").unlink()  # neither result.json nor metrics.jsonl
    with pytest.raises(ConfigError, match="result.json"):
        compare_run(run)


def test_mfu_from_a_run_that_steps_differently_names_what_differs(tmp_path, capsys):
    """An MFU measured at ZeRO-0 carries no ZeRO-3 gathers: the plan's MFU assumption names each step
    setting in which the measured run and the planned config differ, and nothing when they agree."""
    from zerolm.cli import main

    run, _ = _run_dir(tmp_path, stage=0, result=RESULT)  # the tiny test config: compile off, fp32
    assert main(["plan", QUICKSTART, "--json", "--mfu-from", str(run), "train.zero_stage=3", "train.compile=off",
                 "train.activation_checkpointing=true"]) == 0
    said = json.loads(capsys.readouterr().out)["assumptions"]["mfu"]
    assert "train.zero_stage 0 (plan: 3)" in said and "train.activation_checkpointing False (plan: True)" in said
    assert "compile" not in said and "precision" not in said and said.startswith("0.3 (measured in")
    assert main(["plan", QUICKSTART, "--json", "--mfu-from", str(run), "train.zero_stage=0", "train.compile=off"]) == 0
    assert "differs" not in json.loads(capsys.readouterr().out)["assumptions"]["mfu"]
    # "auto" is compared as what it decides: on for a run as long as compile_min_steps, off below it
    long = ["train.zero_stage=0", "train.compile=auto", "train.compile_min_steps=50"]
    assert main(["plan", QUICKSTART, "--json", "--mfu-from", str(run), *long, "train.max_steps=50"]) == 0
    assert "train.compile off (plan: on)" in json.loads(capsys.readouterr().out)["assumptions"]["mfu"]
    assert main(["plan", QUICKSTART, "--json", "--mfu-from", str(run), *long, "train.max_steps=49"]) == 0
    assert "differs" not in json.loads(capsys.readouterr().out)["assumptions"]["mfu"]


def test_cli_mfu_from_and_run_dir(tmp_path, capsys):
    from zerolm.cli import main

    run, _ = _run_dir(tmp_path, result=RESULT)
    assert main(["plan", QUICKSTART, "--gpu-type", "h100", "--tokens", "1e9", "--json", "--mfu-from", str(run)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["time"]["mfu"] == 0.3 and plan["assumptions"]["mfu"].startswith("0.3 (measured in")
    assert plan["time"]["wall_s"] == pytest.approx(1e9 * plan["time"]["flops_per_token"] / (989e12 * 0.3))
    assert main(["plan", QUICKSTART, "--mfu", "0.5", "--mfu-from", str(run)]) == 2  # one or the other
    assert main(["plan", QUICKSTART, "--mfu-from", str(tmp_path / "nowhere")]) == 2
    errors = capsys.readouterr().out
    assert "not both" in errors and "nowhere" in errors
    assert main(["plan", str(run), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["memory"]["measured"] == pytest.approx([0.4 * 2**30, 0.44 * 2**30])
    assert main(["plan", str(run)]) == 0
    out = capsys.readouterr().out
    assert "plan vs measured" in out and "consistent by construction" in out
    assert main(["plan", str(tmp_path)]) == 2  # a folder without config.yaml


# ------------------------------------------------------------------ DeepSpeed's gradient-reduction buffer

def test_bucket_sizes_are_those_deepspeed_reads_from_the_generated_config():
    """The plan's bucket sizes = what DeepSpeed 0.19.8 parses out of the ds_config zerolm generates (no bucket
    keys are set, so DeepSpeed's defaults) and ZeRO-0's all-reduce buffer = ``allreduce_gradients``' default."""
    import inspect

    from deepspeed.runtime.engine import MEMORY_OPT_ALLREDUCE_SIZE, DeepSpeedEngine
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    from zerolm.launch.ds_costs import DS_REDUCE_BUCKET_SIZE, DS_ZERO0_ALLREDUCE_SIZE
    from zerolm.pretrain.ds_config import build_ds_config

    for stage in (1, 2, 3):
        zero = build_ds_config(TrainConfig(zero_stage=stage, precision="fp32"), 4, 1, 2)["zero_optimization"]
        assert DeepSpeedZeroConfig(**zero).reduce_bucket_size == DS_REDUCE_BUCKET_SIZE
    # with the model's width, ZeRO-3 gets transformers' "auto" values (d², 0.9·d², 10·d); ZeRO-1/2 keep DeepSpeed's
    for stage in (1, 2):
        zero = build_ds_config(TrainConfig(zero_stage=stage, precision="fp32"), 4, 1, 2, hidden_size=256)["zero_optimization"]
        assert DeepSpeedZeroConfig(**zero).reduce_bucket_size == DS_REDUCE_BUCKET_SIZE
    # ... except that the reduce bucket is at least 2**22 elements (a latency-bound reduce-scatter per flush below it)
    z3 = DeepSpeedZeroConfig(**build_ds_config(TrainConfig(zero_stage=3, precision="fp32"), 4, 1, 2, hidden_size=256)["zero_optimization"])
    assert (z3.reduce_bucket_size, z3.prefetch_bucket_size, z3.param_persistence_threshold) == (4_194_304, 58982, 2560)
    wide = build_ds_config(TrainConfig(zero_stage=3, precision="fp32"), 4, 1, 2, hidden_size=4096, n_params=10**10)
    assert wide["zero_optimization"]["reduce_bucket_size"] == 4096 * 4096
    # with the parameter count, ZeRO-1/2's bucket is min(N, 5e8) (DeepSpeed parses it back); ZeRO-3's is capped at
    # N; a train.comm value wins
    for stage in (1, 2):
        for n, want in ((1_234_567, 1_234_567), (10**9, DS_REDUCE_BUCKET_SIZE)):
            zero = build_ds_config(TrainConfig(zero_stage=stage, precision="fp32"), 4, 1, 2, hidden_size=256, n_params=n)["zero_optimization"]
            assert DeepSpeedZeroConfig(**zero).reduce_bucket_size == want
        given = TrainConfig(zero_stage=stage, precision="fp32", comm={"reduce_bucket_size": 7_000_000})
        assert build_ds_config(given, 4, 1, 2, n_params=1000)["zero_optimization"]["reduce_bucket_size"] == 7_000_000
    small = build_ds_config(TrainConfig(zero_stage=3, precision="fp32"), 4, 1, 2, hidden_size=256, n_params=1000)["zero_optimization"]
    assert small == {**build_ds_config(TrainConfig(zero_stage=3, precision="fp32"), 4, 1, 2, hidden_size=256)["zero_optimization"],
                     "reduce_bucket_size": 1000}
    # allreduce_gradients is wrapped (no __wrapped__): read its signature from the module's source
    assert "def allreduce_gradients(self, bucket_size=MEMORY_OPT_ALLREDUCE_SIZE)" in inspect.getsource(DeepSpeedEngine)
    assert MEMORY_OPT_ALLREDUCE_SIZE == DS_ZERO0_ALLREDUCE_SIZE


def test_comm_buffers_in_the_plan_rows():
    """Per stage, on a GPU (whole allocation, overlap_comm on) and on CPU (touched pages): the bucket arithmetic
    written out here from DeepSpeed's code, and how each row's total uses it."""
    cfg = ZeroLMConfig(model=ModelConfig(family="gpt2", n_layer=2, n_head=4, d_model=64),
                       data=DataConfig(seq_len=32, micro_batch_size=4), train=TrainConfig(precision="bf16", zero_stage=2))
    gpu = plan_run(cfg, gpus=2, gpu_type="a100", vocab_size=500)
    n = gpu["model"]["params"]
    B3 = min(max(64 * 64, 2**22), n)  # ZeRO-3: d_model², at least 2**22, at most N (build_ds_config's width default)
    assert B3 == n
    B = n  # ZeRO-1/2: min(N, 5e8) (build_ds_config with the parameter count)
    # bf16: w = 2; two ZeRO-1/2 buckets; ZeRO-1's full gradients become views into them (its partition copy is
    # in "grads", as at ZeRO-2)
    expect_gpu = {0: 2 * n, 1: 2 * 2 * B, 2: 2 * 2 * B, 3: 2 * B3}
    cpu = plan_run(cfg, gpus=2, gpu_type="cpu", vocab_size=500, peak_tflops=0.1)
    expect_cpu = {0: 2 * n, 1: 2 * n, 2: 2 * n, 3: 2 * B3}  # N ≤ B: only N elements are ever written
    for plan in (gpu, cpu):
        assert _row(plan, 1, "none")["grads"] == _row(plan, 2, "none")["grads"]
    # without contiguous_gradients ZeRO-1 keeps the full gradients as model states (the ZeRO paper's P_os)
    plain = ZeroLMConfig(model=cfg.model, data=cfg.data,
                         train=TrainConfig(precision="bf16", zero_stage=2, comm={"contiguous_gradients": False}))
    plain = plan_run(plain, gpus=2, gpu_type="cpu", vocab_size=500, peak_tflops=0.1)
    assert _row(plain, 1, "none")["grads"] == 2 * n and _row(plain, 1, "none")["buffers"] == 0
    for plan, expect in ((gpu, expect_gpu), (cpu, expect_cpu)):
        for stage, buf in expect.items():
            row = _row(plan, stage, "none")
            assert row["buffers"] == pytest.approx(buf)
            dev = _device(row)
            act = row["activations_no_ckpt"]
            # ZeRO-3 from step 2 on: every parameter whole (N < 5e8: all reused within stage3_max_reuse_distance),
            # less the estimator's gathered layer's parameters (already in "gathered")
            z3 = 2 * n - 2 * plan["model"]["largest_layer_params"] if stage == 3 else 0
            assert row["zero3_whole_params"] == pytest.approx(z3)
            total = dev + max(act, buf) if stage == 0 else dev + buf + z3 + act
            assert row["total_no_ckpt"] == pytest.approx(total)
    assert f"reduce_bucket_size {n:.3g} elements at ZeRO-1/2" in gpu["assumptions"]["buffers"]


def _bucket_worker(out_path: str) -> None:
    """One process, world size 1: a real DeepSpeed engine per ZeRO stage 1-3 (fp32, tiny GPT-2); after one
    backward, the bytes DeepSpeed allocated for its gradient-reduction bucket(s) and how many of them are
    resident (mincore(2))."""
    import ctypes
    import mmap
    from pathlib import Path

    import torch

    from zerolm.pretrain import distributed
    from zerolm.pretrain.engine import Engine
    from zerolm.pretrain.models import build_model, resolve_model_config

    def resident(t) -> int:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        ptr, nbytes, page = t.data_ptr(), t.numel() * t.element_size(), mmap.PAGESIZE
        start = ptr - ptr % page
        npages = (ptr + nbytes - start + page - 1) // page
        vec = (ctypes.c_ubyte * npages)()
        assert libc.mincore(ctypes.c_void_p(start), ctypes.c_size_t(ptr + nbytes - start), vec) == 0
        return sum(v & 1 for v in vec) * page

    env = distributed.detect()
    distributed.init(env)
    out = {}
    for stage in (1, 2, 3):
        torch.manual_seed(0)
        model = build_model(resolve_model_config(ModelConfig(family="gpt2", preset="tiny")), vocab_size=500,
                            seq_len=32, special_ids={"bos": 1, "eos": 2, "pad": 0})
        n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        engine = Engine(model, TrainConfig(zero_stage=stage, lr=1e-3, precision="fp32"), 2, 1, 1)
        opt = engine.optimizer

        def look(opt=opt, stage=stage, n=n) -> None:
            bufs = []
            for bucket in opt.ipg_buckets.values():
                bufs += list(bucket.buffer) if isinstance(bucket.buffer, list) else [bucket.buffer]
            if bufs and stage not in out:
                out[stage] = {"n": n, "d": model.config.hidden_size, "allocated": sum(b.numel() * b.element_size() for b in bufs),
                              "resident": sum(resident(b) for b in bufs), "page": mmap.PAGESIZE}

        if stage < 3:  # ZeRO-1/2 release their bucket at the end of backward: look just before
            release = opt._release_ipg_buffers

            def looking_release(release=release, look=look) -> None:
                look()
                release()

            opt._release_ipg_buffers = looking_release
        x = torch.randint(0, 500, (2, 32))
        engine.backward(engine.forward({"input_ids": x, "labels": x}).loss)
        look()  # ZeRO-3 keeps its bucket for the whole run
        engine.step()
        del engine, model
    # ZeRO-3, matrices above the persistence threshold: which parameters are whole at the end of step 2's forward
    torch.manual_seed(0)
    model = build_model(resolve_model_config(ModelConfig(family="gpt2", preset="tiny", d_model=256)), vocab_size=500,
                        seq_len=32, special_ids={"bos": 1, "eos": 2, "pad": 0})
    engine = Engine(model, TrainConfig(zero_stage=3, lr=1e-3, precision="fp32"), 2, 1, 1)
    for step in range(2):
        x = torch.randint(0, 500, (2, 32))
        loss = engine.forward({"input_ids": x, "labels": x}).loss
        params = list(engine.engine.module.parameters())
        whole = sum(p.ds_numel for p in params if p.data.numel() == p.ds_numel)
        if step == 0:  # the trace is being recorded: released after use
            out["z3_step1_whole"] = whole
        else:
            out["z3"] = {"persistent": sum(p.ds_numel for p in params if p.ds_persist), "whole": whole,
                         "n": sum(p.ds_numel for p in params)}
        engine.backward(loss)
        engine.step()
    Path(out_path).write_text(json.dumps(out))
    distributed.shutdown()


def test_comm_buffer_matches_what_deepspeed_allocates_and_touches(tmp_path):
    """A real 1-process DeepSpeed engine per stage: the bucket DeepSpeed allocates = ``w·B`` (the GPU figure),
    and the pages gradients were written to = ``w·N`` (the CPU figure)."""
    from single_rank import run_as_single_rank

    from zerolm.launch.ds_costs import comm_buffer_bytes, zero3_whole_param_bytes

    out = tmp_path / "buckets.json"
    r = run_as_single_rank(__file__, str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    for stage in (1, 2, 3):
        g = got[str(stage)]
        # ZeRO-3: d_model² elements, at least 2**22, at most N; ZeRO-1/2: the parameter count (the worker counts it
        # on its model; the bytes allocated are what tell that the engine passed it)
        bucket = {"reduce_bucket_size": min(max(g["d"] ** 2, 2**22), g["n"]) if stage == 3 else g["n"]}
        alloc = comm_buffer_bytes(g["n"], stage=stage, precision="fp32", overlap_comm=False, **bucket)["buffer"]
        touched = comm_buffer_bytes(g["n"], stage=stage, precision="fp32", resident_only=True, **bucket)["buffer"]
        assert g["allocated"] == alloc
        assert abs(g["resident"] - touched) <= 2 * g["page"] + 0.01 * touched, (stage, g, touched)
    # ZeRO-3: the plan's persistent count = DeepSpeed's ds_persist flags; whole at the end of step 2's forward =
    # persistent + retained (every parameter: N < 5e8)
    z3 = got["z3"]
    cfg = ZeroLMConfig(model=ModelConfig(family="gpt2", preset="tiny", d_model=256), data=DataConfig(seq_len=32),
                       train=TrainConfig(zero_stage=3, precision="fp32"))
    plan = plan_run(cfg, gpus=1, gpu_type="cpu", vocab_size=500, peak_tflops=0.1)
    assert plan["model"]["params"] == z3["n"] and plan["model"]["persistent_params"] == z3["persistent"] > 0
    assert got["z3_step1_whole"] < z3["n"]  # step 1 (trace incomplete) released them: the count can tell
    whole = zero3_whole_param_bytes(z3["n"], z3["persistent"], 0, precision="fp32")
    assert whole["persistent"] + whole["retained"] == 4 * z3["whole"] == 4 * z3["n"]


if __name__ == "__main__":
    import sys

    _bucket_worker(sys.argv[1])
    from zerolm.pretrain import distributed as _dist

    _dist.exit_process(0)  # skip the interpreter teardown that aborts now and then after a process group (STACK_FACTS)
