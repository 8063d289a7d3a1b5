"""Pretraining with real processes: 2-rank ZeRO-2/3 under torchrun, exact resume, kill -9, a truncated
checkpoint, checkpoint compatibility and retention rules, non-finite loss skips, signal-triggered saves (SIGTERM,
SIGUSR1, Ctrl-C) and export of the result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import shutil

import psutil
import pytest
import torch

from zerolm.pretrain.trainer import batch_arithmetic
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
        return [sys.executable, "-m", "zerolm.pretrain"]
    if launcher == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--module", "zerolm.pretrain"]
    return [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "zerolm.pretrain"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline",
            "WANDB_API_KEY": "", "HF_TOKEN": ""}


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


def snapshot(run_dir) -> dict[str, bytes]:
    """Every file of a run directory (but the lock file) with its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(Path(run_dir).rglob("*"))
            if p.is_file() and p.name != ".zerolm.lock"}


RESUME_COMMON = ["model.dropout=0.1", "train.max_steps=8", "train.gradient_accumulation_steps=2", "train.eval_every=4"]


@pytest.fixture(scope="module")
def stopped_2rank(base_args, tmp_path_factory):
    """A tiny GPT run stopped at step 4 of 8 on 2 ranks (ZeRO-2), with checkpoints at steps 2 and 4:
    the issue's scenario. Tests copy it before changing it. It runs at DeepSpeed's own reduce bucket (5e8
    elements), the runs that resume it at zerolm's default (the parameter count)."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    run(base_args, run_dir, "train.zero_stage=2", *RESUME_COMMON, "train.save_every=2", "train.stop_at_step=4",
        "train.comm.reduce_bucket_size=5e8")
    return run_dir


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
def test_two_ranks_resume_exactly(base_args, tmp_path, stage, stopped_2rank):
    """N steps + resume + N steps gives bitwise the losses of 2N uninterrupted steps (dropout on,
    gradient accumulation 2), also when the first N steps ran at other bucket sizes (the sums of two ranks'
    gradients do not depend on how they are bucketed): at ZeRO-2 DeepSpeed's 5e8-element reduce bucket
    before zerolm's min(N, 5e8), at ZeRO-3 DeepSpeed's bucket sizes and persistence threshold before
    zerolm's width-derived ones."""
    common = [f"train.zero_stage={stage}", *RESUME_COMMON, f"train.save_every={2 if stage == 2 else 4}"]
    ref, res = tmp_path / "ref", tmp_path / "resumed"
    run(base_args, ref, *common)
    if stage == 2:
        shutil.copytree(stopped_2rank, res)
    else:
        # the first half at DeepSpeed's own ZeRO-3 sizes (zerolm's defaults before 1047bb1: all of the tiny model's
        # parameters but the embeddings stay whole under a 1e5 persistence threshold), the second at zerolm's
        # width-derived ones (10·d: all but the biases and norms are partitioned): a checkpoint from before the change resumes exactly
        run(base_args, res, *common, "train.stop_at_step=4", "train.comm.reduce_bucket_size=5e8",
            "train.comm.prefetch_bucket_size=5e7", "train.comm.param_persistence_threshold=1e5")
        ds_cfg = json.loads((res / "ds_config.json").read_text())["zero_optimization"]
        assert ds_cfg["stage3_param_persistence_threshold"] == 100_000
    assert result(res)["status"] == "stopped" and latest(res) == "step_00000004"
    out = run(base_args, res, *common)
    assert "resumed from" in out.stderr + out.stdout
    resumed_cfg = json.loads((res / "ds_config.json").read_text())
    if stage == 3:
        assert resumed_cfg["zero_optimization"]["stage3_param_persistence_threshold"] < 100_000
    else:  # the resumed half ran at the parameter count, the uninterrupted run too
        bucket = resumed_cfg["zero_optimization"]["reduce_bucket_size"]
        assert bucket < 500_000_000 and json.loads((ref / "ds_config.json").read_text())["zero_optimization"]["reduce_bucket_size"] == bucket
    a, b = losses(ref), losses(res)
    assert sorted(a) == list(range(1, 9)) and a == b, f"ZeRO-{stage}: {a} vs {b}"
    assert evals(ref) == evals(res)
    assert a[8] < a[1], "loss goes down"
    ids = {json.loads((d / "checkpoints" / t / "zerolm_complete.json").read_text())["wandb_run_id"]
           for d in (res,) for t in ("step_00000004", "step_00000008")}
    assert len(ids) == 1 and None not in ids, "the resumed run continues the same W&B run id"
    assert list((res / "wandb").glob(f"offline-run-*-{ids.pop()}")), "W&B wrote the run offline"
    assert result(ref)["eval/perplexity"] > 1 and result(ref)["tokens_seen"] == 8 * 2 * 4 * 2 * 64


def _signature_from(run_dir: Path, tag: str, **changes) -> dict:
    from zerolm.pretrain import checkpoint as ckpt

    return {**ckpt.saved_signature(run_dir / "checkpoints", tag), **changes}


def test_resume_plan_refuses_intact_incompatible_checkpoints(stopped_2rank, tmp_path, trained_tokenizer):
    """Decided from the records before any DeepSpeed load: an intact checkpoint of another shape of run
    is never skipped for an older one; damage alone falls back; all damaged → error naming each."""
    from zerolm.config import ModelConfig
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
    from zerolm.pretrain import checkpoint as ckpt
    from zerolm.pretrain.models import build_model, resolve_model_config, special_ids_of

    root = stopped_2rank / "checkpoints"
    same = _signature_from(stopped_2rank, "step_00000004")
    assert same["world_size"] == 2 and same["global_batch_size"] == 16 and same["objective"] == "clm"
    assert ckpt.plan_resume(root, same).candidates == ["step_00000004", "step_00000002"]
    # a micro-batch / accumulation trade at the same global batch is compatible
    assert ckpt.plan_resume(root, {**same, "micro_batch_size": 2, "gradient_accumulation_steps": 4}).blocked is None
    cases = {
        "ZeRO stage 2 → 3": {"zero_stage": 3},
        "objective clm → mlm": {"objective": "mlm"},
        "global batch 16 → 32": {"global_batch_size": 32, "gradient_accumulation_steps": 4},
        "data.seq_len 64 → 128": {"data_layout": {**same["data_layout"], "seq_len": 128}},
        "data-parallel world size 2 → 1": {"world_size": 1, "elastic_resume": False},
        "data-pipeline state format zerolm-data-state/2 → x": {"data_layout": {**same["data_layout"], "format": "x"}},
    }
    # another world size is an elastic resume, not an incompatibility
    assert ckpt.plan_resume(root, {**same, "world_size": 1, "gradient_accumulation_steps": 4}).candidates[0] == "step_00000004"
    tok = load_pipeline_tokenizer(trained_tokenizer)
    torch.manual_seed(0)
    wider = resolve_model_config(ModelConfig(family="gpt2", preset="tiny", n_layer=3))
    model = build_model(wider, vocab_size=tok.vocab_size, seq_len=64, special_ids=special_ids_of(tok))
    cases["model shape (n_layer 2 → 3)"] = {"model_config": {**same["model_config"], "n_layer": 3},
                                            "model_shapes": ckpt.model_shapes(model)}
    cases["model shape (tensor transformer.h.2."] = {
        "model_shapes": ckpt.model_shapes(model)}
    for what, change in cases.items():
        plan = ckpt.plan_resume(root, {**same, **change})
        assert plan.candidates == [] and plan.blocked[0] == "step_00000004", what
        assert what in plan.blocked[1] and "Nothing in" in plan.error(root), (what, plan.blocked[1])
    # damage (not incompatibility) falls back to the previous checkpoint ...
    damaged = tmp_path / "checkpoints"
    shutil.copytree(root, damaged)
    (damaged / "step_00000004" / "zerolm_client_rank1.pt").unlink()
    plan = ckpt.plan_resume(damaged, same)
    assert plan.candidates == ["step_00000002"] and "missing file zerolm_client_rank1.pt" in plan.damaged["step_00000004"]
    # ... and a checkpoint older than the damaged one is still checked for compatibility
    assert ckpt.plan_resume(damaged, {**same, "world_size": 1, "elastic_resume": False}).blocked[0] == "step_00000002"
    # when every checkpoint is damaged the run does not start from step 0
    (damaged / "step_00000002" / "zerolm_complete.json").unlink()
    plan = ckpt.plan_resume(damaged, same)
    err = plan.error(damaged)
    assert plan.candidates == [] and "step_00000004: missing file" in err and "step_00000002: no completion record" in err


def test_retention_deletes_only_what_this_run_line_superseded(tmp_path):
    """keep-last counts only checkpoints of this run line; a checkpoint that could not be loaded is moved
    aside, never deleted nor overwritten; debris of an interrupted save goes once a good one of a later
    or the same step is complete."""
    from zerolm.pretrain import checkpoint as ckpt

    root = tmp_path / "checkpoints"

    def write(step: int, complete: bool = True) -> str:
        tag = ckpt.tag_for(step)
        (root / tag).mkdir(parents=True)
        (root / tag / "weights.pt").write_bytes(bytes(range(step)) * 10)
        if complete:
            ckpt.mark_complete(root, tag, {"step": step})
        return tag

    for s in (2, 4, 6):
        write(s)
    (root / "step_00000006" / "weights.pt").write_bytes(b"cut")  # damaged: truncated
    write(8, complete=False)  # debris of an interrupted save
    plan = ckpt.plan_resume(root, {})
    assert plan.candidates == ["step_00000004", "step_00000002"] and set(plan.damaged) == {"step_00000006", "step_00000008"}
    line, written = ckpt.lineage(root, "step_00000004"), set()
    assert line == {"step_00000002", "step_00000004"}

    def save(step: int) -> list[str]:
        tag = ckpt.tag_for(step)
        if (root / tag).exists():
            ckpt.set_aside(root, tag)
        write(step)
        written.add(tag)
        return ckpt.prune(root, 1, line | written, tag)

    assert save(5) == ["step_00000002", "step_00000004"]  # the resumed line; 6 and 8 are not counted
    assert save(6) == ["step_00000005"] and (root / "step_00000006.unloadable" / "weights.pt").read_bytes() == b"cut"
    assert save(8) == ["step_00000006", "step_00000008.unloadable"]  # debris goes: a good step 8 exists
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000006.unloadable", "step_00000008"]
    assert ckpt.list_tags(root) == ["step_00000008"] and ckpt.latest_tag(root) == "step_00000008"


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
    damaged = victim.read_bytes()
    out = run(base_args, run_dir, *common)
    log = out.stderr + out.stdout
    assert "step_00000008 is not usable" in log and "truncated" in log
    assert "resumed from" in log and "step_00000004" in log
    assert losses(run_dir) == reference, "steps 5-8 are redone identically from the step-4 checkpoint"
    kept = run_dir / "checkpoints/step_00000008.unloadable" / victim.name
    assert kept.read_bytes() == damaged, "the checkpoint that could not be loaded is moved aside, not overwritten"
    assert latest(run_dir) == "step_00000008" and (run_dir / "checkpoints/step_00000004").is_dir()


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
    from zerolm.pretrain.ds_checkpoint import consolidated_state_dict

    weights, source = consolidated_state_dict(run_dir / "checkpoints/step_00000004")
    assert source == ("module" if stage == 0 else "zero_to_fp32")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values()), "no NaN reached the weights"
    logged = losses(run_dir)
    assert 3 not in logged and all(v == v for v in logged.values()), "train/loss averages good steps only"


def test_k_nonfinite_in_a_row_stops_with_last_good_checkpoint(base_args, tmp_path):
    run_dir = tmp_path / "diverged"
    out = run(base_args, run_dir, "train.max_steps=10", "train.save_every=1", "train.max_consecutive_nonfinite=3",
              "train.inject_nonfinite_at_steps=[3,4,5]", "train.spike_recovery.enabled=false", check=False)
    assert out.returncode != 0
    assert "3 non-finite losses in a row at step 5" in out.stdout + out.stderr
    assert latest(run_dir) == "step_00000002"


@pytest.mark.parametrize("sig,nproc", [(signal.SIGTERM, 1), (signal.SIGUSR1, 2)])
def test_signal_saves_at_next_step_and_exits_cleanly(base_args, tmp_path, sig, nproc):
    """A signal arriving during step 3 (the trainer's test hook sends it, on 2 ranks to rank 1 only, so
    the stop must travel to rank 0 through the all-reduce) checkpoints exactly step 3 and exits 0."""
    run_dir = tmp_path / f"sig{sig}"
    common = ["train.max_steps=5000", "train.save_every=100000", "train.eval_every=100000"]
    env = {**_env(), "ZEROLM_TEST_SIGNAL_AT_STEP": f"3:{signal.Signals(sig).name}" + (":1" if nproc == 2 else "")}
    r = subprocess.run([*_cmd(nproc, "python" if nproc == 1 else "torchrun"), *base_args, f"train.run_dir={run_dir}", *common],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"received {signal.Signals(sig).name}" in r.stdout + r.stderr
    res = result(run_dir)
    assert res["status"] == "preempted" and res["step"] == 3
    assert latest(run_dir) == "step_00000003" and sorted(losses(run_dir)) == [1, 2, 3]


def test_a_full_disk_stops_the_run_before_a_checkpoint_is_half_written(base_args, tmp_path):
    """The run directory alone on a disk with room for 1.5 checkpoints (the checkpoint module's test hook):
    the run resumed from its step-2 checkpoint stops before any rank writes step 4, with an error that
    names the space needed and free, and the step-2 checkpoint intact; once there is room, the same
    command resumes from step 2 and finishes."""
    from zerolm.pretrain import checkpoint as ckpt

    run_dir = tmp_path / "full"
    common = ["train.max_steps=4", "train.save_every=2", "tracking.wandb_mode=disabled"]
    run(base_args, run_dir, *common, "train.stop_at_step=2", nproc=1, launcher="python")
    root = run_dir / "checkpoints"
    size = sum(p.stat().st_size for p in (root / "step_00000002").rglob("*") if p.is_file())
    used = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    disk = used + size // 2  # room for half a checkpoint more
    r = subprocess.run([*_cmd(1, "python"), *base_args, f"train.run_dir={run_dir}", *common], cwd=REPO,
                       env={**_env(), "ZEROLM_TEST_DISK_BYTES": str(disk)}, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "not enough disk space to write checkpoint step_00000004" in out, out[-3000:]
    assert "MiB are free there" in out and "step_00000002, is intact" in out, out[-3000:]
    assert ckpt.list_tags(root) == ["step_00000002"] and latest(run_dir) == "step_00000002"
    assert ckpt.check(root, "step_00000002") is None
    out = run(base_args, run_dir, *common, nproc=1, launcher="python")
    assert "resumed from" in out.stdout + out.stderr
    assert result(run_dir)["status"] == "completed" and latest(run_dir) == "step_00000004"


def test_a_signal_during_the_last_step_leaves_the_run_completed(base_args, tmp_path):
    """SIGTERM arriving during the last step (``max_steps`` 3): the step is saved as every last step is and the
    status stays ``completed`` — not ``preempted``, which would make the sbatch script requeue a finished job."""
    run_dir = tmp_path / "last"
    env = {**_env(), "ZEROLM_TEST_SIGNAL_AT_STEP": "3:SIGTERM"}
    r = subprocess.run([*_cmd(1, "python"), *base_args, f"train.run_dir={run_dir}", "train.max_steps=3",
                        "train.save_every=100", "tracking.wandb_mode=disabled"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "received SIGTERM" in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    res = result(run_dir)
    assert res["status"] == "completed" and res["step"] == 3 and latest(run_dir) == "step_00000003", res


@pytest.mark.parametrize("launcher", ["python", "torchrun"])
def test_ctrl_c_checkpoints_at_the_next_step_and_exits(base_args, tmp_path, launcher):
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group of one ``python -m
    zerolm.pretrain`` (with a loader worker, which ignores it: its rank decides what Ctrl-C means, and a worker
    that died with it could fail the batch the rank waits for), or to torchrun, which forwards it to its ranks. Every rank checkpoints the step it is in and exits within seconds, with
    status ``interrupted`` (before, each rank raised KeyboardInterrupt wherever it was: no checkpoint,
    and torchrun killed the ranks stuck in their collectives after its 30 s shutdown timeout)."""
    run_dir = tmp_path / "ctrl_c"
    common = ["train.max_steps=100000", "train.save_every=100000", "train.eval_every=100000", "train.log_every=1",
              "tracking.wandb_mode=disabled", *(["data.num_workers=1"] if launcher == "python" else [])]
    log_path = tmp_path / "run.log"
    with open(log_path, "w") as log_file:
        p = subprocess.Popen([*_cmd(1 if launcher == "python" else 2, launcher), *base_args, f"train.run_dir={run_dir}",
                              *common], cwd=REPO, env=_env(), stdout=log_file, stderr=subprocess.STDOUT,
                             start_new_session=True)  # its own process group, as a terminal's foreground job
    try:
        metrics, deadline = run_dir / "metrics.jsonl", time.time() + 180
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert p.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        if launcher == "python":
            workers = psutil.Process(p.pid).children()
            assert workers, "the loader worker is running"
            for w in workers:  # SigIgn: the mask of ignored signals, bit n-1 for signal n (proc(5))
                ignored = int(next(l for l in open(f"/proc/{w.pid}/status") if l.startswith("SigIgn:")).split()[1], 16)
                assert ignored >> (signal.SIGINT - 1) & 1, f"loader worker {w.pid} does not ignore SIGINT"
            os.killpg(p.pid, signal.SIGINT)  # the rank and its loader worker
        else:
            p.send_signal(signal.SIGINT)  # torchrun; its ranks run in sessions of their own
        sent = time.time()
        p.wait(timeout=60)
        took = time.time() - sent
    finally:
        for proc in psutil.Process().children(recursive=True):
            if proc.pid == p.pid or p.pid in [a.pid for a in proc.parents()]:
                proc.kill()
    log = log_path.read_text()
    if launcher == "python":
        assert p.returncode == 0, log[-3000:]
    assert "forcefully" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    for rank in range(1 if launcher == "python" else 2):
        assert f"[rank{rank}] WARNING zerolm.pretrain.trainer: received SIGINT" in log, log[-3000:]
    res = result(run_dir)
    assert res["status"] == "interrupted" and 3 <= res["step"] < 100000, res
    assert latest(run_dir) == f"step_{res['step']:08d}"
    assert (run_dir / "checkpoints" / latest(run_dir) / "zerolm_complete.json").is_file()
    assert took < 20, f"{took:.1f} s from Ctrl-C to exit"


def test_a_second_ctrl_c_stops_at_once():
    """:class:`StopRequests`: SIGTERM/SIGUSR1 ask for a checkpoint as preemption, SIGINT as an
    interruption (preemption wins the status, so that the job is requeued); a second SIGINT raises
    KeyboardInterrupt at once; :meth:`restore` puts the previous handlers back."""
    from zerolm.pretrain.distributed import StopRequests

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    stops = StopRequests().install()
    try:
        assert stops.flags() == [0.0, 0.0] and StopRequests.status(*stops.flags()) is None
        os.kill(os.getpid(), signal.SIGINT)
        assert stops.flags() == [0.0, 1.0] and StopRequests.status(*stops.flags()) == "interrupted"
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stops.flags() == [1.0, 1.0] and StopRequests.status(*stops.flags()) == "preempted"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
    finally:
        stops.restore()
    assert {s: signal.getsignal(s) for s in before} == before
    assert StopRequests.status(2.0, 0.0) == "preempted" and StopRequests.status(0.0, 2.0) == "interrupted"


def test_ranks_checkpoint_and_exit_when_torchrun_is_killed(base_args, tmp_path):
    """``kill -9`` of torchrun (whose workers run in their own sessions): both ranks get SIGTERM from the
    kernel (PR_SET_PDEATHSIG), checkpoint at the next step boundary and exit, releasing the run
    directory's lock; the same command then resumes, and every step is logged exactly once."""
    run_dir = tmp_path / "orphaned"
    common = ["train.max_steps=100000", "train.save_every=100000", "train.eval_every=100000", "train.log_every=1",
              "tracking.wandb_mode=disabled"]
    log_path = tmp_path / "launcher.log"
    ranks: list[psutil.Process] = []
    with open(log_path, "w") as log_file:
        p = subprocess.Popen([*_cmd(2), *base_args, f"train.run_dir={run_dir}", *common], cwd=REPO, env=_env(),
                             stdout=log_file, stderr=subprocess.STDOUT)
    try:
        metrics, deadline = run_dir / "metrics.jsonl", time.time() + 180
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert p.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        ranks = [c for c in psutil.Process(p.pid).children(recursive=True)
                 if "zerolm.pretrain" in c.cmdline() and not any("torchrun" in a for a in c.cmdline())]
        assert len(ranks) == 2, [c.cmdline() for c in ranks]
        p.kill()  # SIGKILL: torchrun cannot forward anything to its workers
        p.wait()
        _, alive = psutil.wait_procs(ranks, timeout=120)
        assert not alive, f"ranks outlived their launcher:\n{log_path.read_text()[-3000:]}"
    finally:  # whatever happened, leave no process behind
        leftovers = list(ranks)
        try:
            leftovers += psutil.Process(p.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        p.kill()
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        p.wait()
    log = log_path.read_text()
    for rank in (0, 1):  # from the kernel (once per exiting launcher thread that was its parent)
        assert f"[rank{rank}] WARNING zerolm.pretrain.trainer: received SIGTERM" in log, log[-3000:]
    res = result(run_dir)
    stopped = res["step"]
    assert res["status"] == "preempted" and 3 <= stopped < 100000
    assert latest(run_dir) == f"step_{stopped:08d}"
    assert (run_dir / "checkpoints" / latest(run_dir) / "zerolm_complete.json").is_file()
    out = run(base_args, run_dir, *common, f"train.stop_at_step={stopped + 2}")
    assert f"resumed from {run_dir / 'checkpoints'}" in out.stderr, out.stderr[-3000:]
    steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, stopped + 3)), "every step logged exactly once across both pieces"
    assert result(run_dir)["status"] == "stopped" and result(run_dir)["step"] == stopped + 2


def test_runs_as_one_plain_python_process(base_args, tmp_path):
    """The entry point without any launcher: one ``python -m zerolm.pretrain`` process (no RANK/WORLD_SIZE
    in its environment) trains, checkpoints and reports as a world of one. (The deepspeed launcher:
    test_launch.py's 2-rank job under Slurm; a sharded ZeRO-3 checkpoint exported and generating
    greedily through ``pipeline``: test_export.py.)"""
    single = tmp_path / "single"
    out = run(base_args, single, "train.max_steps=3", "train.save_every=3", nproc=1, launcher="python")
    res = result(single)
    assert res["status"] == "completed" and res["step"] == 3 and len(res["memory"]["peak_rss_gib"]) == 1, res
    assert latest(single) == "step_00000003" and "× 1 ranks" in out.stdout + out.stderr
    marker = json.loads((single / "checkpoints" / "step_00000003" / "zerolm_complete.json").read_text())
    assert marker["world_size"] == 1


def test_bert_mlm_with_offload_and_activation_checkpointing_then_fill_mask(base_args, tmp_path):
    """Masked-LM at ZeRO-3 with optimizer and parameter offload, activation checkpointing and a
    worker per rank; evaluation reports masked-token accuracy; the export answers fill-mask with the
    model's own top-5."""
    run_dir = tmp_path / "bert"
    args = [a if not a.endswith("tiny_gpt.yaml") else str(REPO / "configs/pretrain/tiny_bert.yaml") for a in base_args]
    out = run(args, run_dir, "train.max_steps=6", "train.eval_every=3", "train.zero_stage=3", "train.offload_optimizer=true",
              "train.offload_params=true", "train.activation_checkpointing=true", "data.num_workers=1")
    # what DeepSpeed was given, and what the built engine and model report (the trainer's startup line)
    zero = json.loads((run_dir / "ds_config.json").read_text())["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert "offload optimizer, offload params, activation checkpointing" in out.stdout + out.stderr
    res = result(run_dir)
    metrics = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert res["eval/accuracy"] == next(m["eval/accuracy"] for m in metrics if m["step"] == 6 and "eval/accuracy" in m)
    assert res["eval/perplexity"] > 1
    assert (run_dir / "loss.png").stat().st_size > 1000
    a = losses(run_dir)
    assert sorted(a) == list(range(1, 7)) and all(v == v for v in a.values())
    hf = tmp_path / "bert-hf"
    r = subprocess.run([sys.executable, "-m", "zerolm", "export", str(run_dir), str(hf)], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    sentence = "Paris is the capital of [MASK]."
    r = subprocess.run([sys.executable, "-m", "zerolm", "sample", str(hf), "--prompt", sentence], cwd=REPO,
                       env={**_env(), "COLUMNS": "250"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "masked-lm" in r.stdout and "masked-token accuracy" in r.stdout, r.stderr[-2000:]
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    model, tok = AutoModelForMaskedLM.from_pretrained(hf).eval(), AutoTokenizer.from_pretrained(hf)
    enc = tok(sentence.replace("[MASK]", tok.mask_token), return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, int((enc["input_ids"][0] == tok.mask_token_id).nonzero())]
    top = torch.softmax(logits, -1).topk(5)
    # a fill that decodes to whitespace only is shown as ␣
    row = ", ".join(f"{tok.decode([i]).strip() or '␣'} ({p:.2f})" for i, p in zip(top.indices.tolist(), top.values.tolist()))
    assert row in " ".join(r.stdout.split()), (row, r.stdout)


def test_tokens_per_second_counts_real_tokens_not_padding():
    from zerolm.pretrain.trainer import _real_tokens

    padded = {"input_ids": torch.ones(2, 6, dtype=torch.long),
              "attention_mask": torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]])}
    assert _real_tokens(padded) == 8  # dynamic padding (finetuning): 12 positions, 8 tokens
    assert _real_tokens({"input_ids": torch.ones(3, 4, dtype=torch.long)}) == 12  # packed: every position


def test_a_second_run_on_the_same_run_dir_fails_fast(tmp_path):
    from zerolm.pretrain.distributed import detect
    from zerolm.pretrain.distributed import lock_run_dir
    from zerolm.errors import TrainingError

    env = detect({}, set_env=False)  # one process
    held = lock_run_dir(tmp_path / "run", env)
    with pytest.raises(TrainingError, match="in use by another zerolm run"):
        lock_run_dir(tmp_path / "run", env)
    held.close()  # the first run ends (or dies): the directory is free again
    lock_run_dir(tmp_path / "run", env).close()
