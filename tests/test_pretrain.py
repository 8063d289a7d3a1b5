"""Pretraining with real processes: 2-rank ZeRO-2/3 under torchrun, exact resume, kill -9, a
truncated checkpoint, non-finite loss skips, signal-triggered saves and export of the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from pretrain.trainer import batch_arithmetic
from zerolm.config import load_config
from zerolm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def base_args(prepared_corpus, trained_tokenizer):
    return [
        "--config", str(REPO / "configs/pretrain/tiny_gpt.yaml"),
        f"data.tokenizer_dir={trained_tokenizer}",
        f"data.sources=[{{name: corpus, paths: ['{prepared_corpus}/train/*.jsonl']}}]",
        f"data.validation_sources=[{{name: corpus, paths: ['{prepared_corpus}/validation/*.jsonl']}}]",
        "tracking.wandb_mode=offline",
    ]


def _cmd(nproc: int, launcher: str = "torchrun") -> list[str]:
    if nproc == 1 and launcher == "python":
        return [sys.executable, "-m", "pretrain"]
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--module", "pretrain"]
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "pretrain"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline",
            "PYTHONPATH": str(REPO), "WANDB_API_KEY": "", "HF_TOKEN": ""}


def run(base, run_dir, *overrides, nproc=2, launcher="torchrun", check=True, timeout=300):
    r = subprocess.run([*_cmd(nproc, launcher), *base, f"train.run_dir={run_dir}", *overrides], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"training failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def losses(run_dir) -> dict[int, float]:
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def evals(run_dir) -> dict[int, float]:
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["eval/loss"] for r in rows if "eval/loss" in r}


def result(run_dir) -> dict:
    return json.loads((Path(run_dir) / "result.json").read_text())


def latest(run_dir) -> str:
    return (Path(run_dir) / "checkpoints/latest").read_text().strip()


# ---------------------------------------------------------------------------------------------
def test_batch_arithmetic_derives_the_third_and_rejects_disagreement():
    cfg = load_config(None, ["train.global_batch_size=64"])
    assert batch_arithmetic(cfg, 2) == (8, 4, 64)
    cfg = load_config(None, ["train.gradient_accumulation_steps=3", "data.micro_batch_size=2"])
    assert batch_arithmetic(cfg, 4) == (2, 3, 24)
    cfg = load_config(None, ["train.global_batch_size=48", "train.gradient_accumulation_steps=3"])
    assert batch_arithmetic(cfg, 2) == (8, 3, 48)
    cfg = load_config(None, ["train.global_batch_size=60", "train.gradient_accumulation_steps=3", "data.micro_batch_size=8"])
    with pytest.raises(ConfigError, match="global_batch_size=60 != data.micro_batch_size=8"):
        batch_arithmetic(cfg, 2)
    with pytest.raises(ConfigError, match="not divisible"):
        batch_arithmetic(load_config(None, ["train.global_batch_size=20"]), 2)


@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_resume_exactly(base_args, tmp_path, stage):
    """N steps + resume + N steps gives bitwise the losses of 2N uninterrupted steps (dropout on,
    gradient accumulation 2)."""
    common = [f"train.zero_stage={stage}", "model.dropout=0.1", "train.max_steps=8", "train.gradient_accumulation_steps=2",
              "train.eval_every=4", "train.save_every=4"]
    ref, res = tmp_path / "ref", tmp_path / "resumed"
    run(base_args, ref, *common)
    run(base_args, res, *common, "train.stop_at_step=4")
    assert result(res)["status"] == "stopped" and latest(res) == "step_00000004"
    out = run(base_args, res, *common)
    assert "resumed from" in out.stderr + out.stdout
    a, b = losses(ref), losses(res)
    assert sorted(a) == list(range(1, 9)) and a == b, f"ZeRO-{stage}: {a} vs {b}"
    assert evals(ref) == evals(res)
    assert a[8] < a[1], "loss goes down"
    ids = {json.loads((d / "checkpoints" / t / "zerolm_complete.json").read_text())["wandb_run_id"]
           for d in (res,) for t in ("step_00000004", "step_00000008")}
    assert len(ids) == 1 and None not in ids, "the resumed run continues the same W&B run id"
    assert list((res / "wandb").glob(f"offline-run-*-{ids.pop()}")), "W&B wrote the run offline"
    assert result(ref)["eval/perplexity"] > 1 and result(ref)["tokens_seen"] == 8 * 2 * 4 * 2 * 64


def test_kill_9_mid_run_then_resume_from_last_complete_checkpoint(base_args, tmp_path):
    common = ["train.max_steps=3000", "train.save_every=5", "train.eval_every=1000", "train.keep_last=2"]
    run_dir = tmp_path / "killed"
    p = subprocess.Popen([*_cmd(2), *base_args, f"train.run_dir={run_dir}", *common], cwd=REPO, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (run_dir / "checkpoints/latest").exists() and latest(run_dir) >= "step_00000015":
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no checkpoint appeared")
    finally:  # kill -9 the launcher and every rank (torchrun's workers run in their own session)
        procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
        for proc in procs:
            proc.kill()
        psutil.wait_procs(procs, timeout=30)
    killed_at = latest(run_dir)
    step = int(killed_at.split("_")[1])
    out = run(base_args, run_dir, *common, f"train.stop_at_step={step + 4}")
    assert f"resumed from {run_dir / 'checkpoints'}" in out.stderr
    ref = tmp_path / "reference"
    run(base_args, ref, *common, f"train.stop_at_step={step + 4}")
    a, b = losses(ref), losses(run_dir)
    assert all(a[s] == b[s] for s in range(1, step + 5)), "the resumed run matches an uninterrupted one"
    assert len(list((run_dir / "checkpoints").glob("step_*"))) <= 3, "old checkpoints are pruned"


def test_truncated_newest_checkpoint_falls_back_to_previous(base_args, tmp_path):
    common = ["train.max_steps=8", "train.save_every=4", "train.eval_every=100"]
    run_dir = tmp_path / "run"
    run(base_args, run_dir, *common)
    reference = losses(run_dir)
    victim = sorted((run_dir / "checkpoints/step_00000008").glob("*optim_states.pt"))[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = run(base_args, run_dir, *common)
    log = out.stderr + out.stdout
    assert "step_00000008 is not usable" in log and "truncated" in log
    assert "resumed from" in log and "step_00000004" in log
    assert losses(run_dir) == reference, "steps 5-8 are redone identically from the step-4 checkpoint"


@pytest.mark.parametrize("nproc,stage", [(2, 2), (1, 0)])
def test_nonfinite_loss_skips_the_update(base_args, tmp_path, nproc, stage):
    run_dir = tmp_path / "nan"
    run(base_args, run_dir, f"train.zero_stage={stage}", "train.max_steps=4", "train.save_every=1", "train.keep_last=4",
        "train.inject_nonfinite_at_steps=[3]", nproc=nproc, launcher="torchrun" if nproc > 1 else "python")
    assert result(run_dir)["nonfinite_skipped"] == 1
    tags = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*"))
    assert tags == ["step_00000001", "step_00000002", "step_00000004"], "no checkpoint taken on the poisoned step"
    states = torch.load(run_dir / "checkpoints/step_00000004/mp_rank_00_model_states.pt", weights_only=False)
    assert states["skipped_steps"] == 1, "DeepSpeed discarded exactly one optimizer step"
    assert states["lr_scheduler"]["last_epoch"] == 3, "the LR schedule did not advance on the skipped step"
    if stage == 0:
        weights = states["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        weights = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), "step_00000004")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values()), "no NaN reached the weights"
    logged = losses(run_dir)
    assert 3 not in logged and all(v == v for v in logged.values()), "train/loss averages good steps only"


def test_k_nonfinite_in_a_row_stops_with_last_good_checkpoint(base_args, tmp_path):
    run_dir = tmp_path / "diverged"
    out = run(base_args, run_dir, "train.max_steps=10", "train.save_every=1", "train.max_consecutive_nonfinite=3",
              "train.inject_nonfinite_at_steps=[3,4,5]", check=False)
    assert out.returncode != 0
    assert "3 non-finite losses in a row at step 5" in out.stdout + out.stderr
    assert latest(run_dir) == "step_00000002"


@pytest.mark.parametrize("sig,nproc", [(signal.SIGTERM, 1), (signal.SIGUSR1, 2)])
def test_signal_saves_at_next_step_and_exits_cleanly(base_args, tmp_path, sig, nproc):
    run_dir = tmp_path / f"sig{sig}"
    common = ["train.max_steps=5000", "train.save_every=100000", "train.eval_every=100000"]
    p = subprocess.Popen([*_cmd(nproc, "python" if nproc == 1 else "torchrun"), *base_args, f"train.run_dir={run_dir}", *common],
                         cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.05)
    workers = [p.pid] if nproc == 1 else [c.pid for c in psutil.Process(p.pid).children() if "python" in c.name()]
    assert len(workers) == nproc
    for pid in workers:  # as Slurm's --signal does: every task gets it
        os.kill(pid, sig)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 0, out[-3000:]
    res = result(run_dir)
    assert res["status"] == "preempted" and 5 <= res["step"] < 5000
    assert latest(run_dir) == f"step_{res['step']:08d}"


def test_runs_under_python_and_deepspeed_launcher_and_exports(base_args, tmp_path, trained_tokenizer):
    """The same entry point as one plain python process and as 2 ranks under the deepspeed
    launcher (ZeRO-3); the sharded ZeRO-3 checkpoint exports to a Hugging Face folder that loads."""
    single = tmp_path / "single"
    run(base_args, single, "train.max_steps=3", nproc=1, launcher="python")
    assert result(single)["step"] == 3
    ds = tmp_path / "ds"
    run(base_args, ds, "train.max_steps=4", "train.zero_stage=3", launcher="deepspeed")
    assert result(ds)["step"] == 4 and (ds / "checkpoints/step_00000004").is_dir()
    out = tmp_path / "hf"
    r = subprocess.run([sys.executable, "-m", "zerolm", "export", str(ds), str(out)], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    text = gen("The court", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("The court") and len(text) > len("The court")


def test_bert_mlm_with_offload_and_activation_checkpointing_then_fill_mask(base_args, tmp_path):
    """Masked-LM at ZeRO-3 with optimizer and parameter offload, activation checkpointing and a
    worker per rank; evaluation reports masked-token accuracy; the export answers fill-mask."""
    run_dir = tmp_path / "bert"
    args = [a if not a.endswith("tiny_gpt.yaml") else str(REPO / "configs/pretrain/tiny_bert.yaml") for a in base_args]
    run(args, run_dir, "train.max_steps=6", "train.eval_every=3", "train.zero_stage=3", "train.offload_optimizer=true",
        "train.offload_params=true", "train.activation_checkpointing=true", "data.num_workers=1")
    res = result(run_dir)
    assert 0 <= res["eval/accuracy"] <= 1 and res["eval/perplexity"] > 1
    assert (run_dir / "loss.png").stat().st_size > 1000
    a = losses(run_dir)
    assert sorted(a) == list(range(1, 7)) and all(v == v for v in a.values())
    out = tmp_path / "bert-hf"
    r = subprocess.run([sys.executable, "-m", "zerolm", "export", str(run_dir), str(out)], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "-m", "zerolm", "sample", str(out)], cwd=REPO, env={**_env(), "COLUMNS": "200"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "masked-lm" in r.stdout and "masked-token accuracy" in r.stdout, r.stderr[-2000:]


def test_tokens_per_second_counts_real_tokens_not_padding():
    from pretrain.trainer import _real_tokens

    padded = {"input_ids": torch.ones(2, 6, dtype=torch.long),
              "attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])}
    assert _real_tokens(padded) == 8  # dynamic padding (finetuning): 12 positions, 8 tokens
    assert _real_tokens({"input_ids": torch.ones(3, 4, dtype=torch.long)}) == 12  # packed: every position


def test_a_second_run_on_the_same_run_dir_fails_fast(tmp_path):
    from pretrain.distributed import detect
    from pretrain.trainer import _lock_run_dir
    from zerolm.errors import TrainingError

    env = detect({}, set_env=False)  # one process
    held = _lock_run_dir(tmp_path / "run", env)
    with pytest.raises(TrainingError, match="in use by another zerolm run"):
        _lock_run_dir(tmp_path / "run", env)
    held.close()  # the first run ends (or dies): the directory is free again
    _lock_run_dir(tmp_path / "run", env).close()
