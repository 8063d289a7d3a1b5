"""Automatic loss-spike recovery: the robust test against an independent computation, and real runs
with an injected fault (a one-step LR blow-up ×1000 at one global batch) that roll back, skip exactly
the recorded data window, rejoin the uninterrupted run's loss curve, survive a kill in the middle of a
recovery, and stop after too many recoveries with the checkpoints intact."""

from __future__ import annotations

import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_pretrain import REPO, _cmd, _env, base_args, evals, losses, result  # noqa: F401 - fixture
from zerolm.config import SpikeRecoveryConfig
from zerolm.pretrain import checkpoint as ckpt
from zerolm.pretrain.spikes import SpikeDetector

STEPS = 20
SPIKE_BATCH = 14  # the update that trains global batch 14 runs at lr × 1000; step 15's loss shows it
# global batch 16 (micro-batch 4 × 2 ranks × accumulation 2); checkpoints every 2 steps but only the
# newest kept (plus the one a rollback needs); the detector's history is short for a 20-step run
COMMON = [f"train.max_steps={STEPS}", "train.eval_every=100", "train.eval_batches=4", "train.save_every=2",
          "train.keep_last=1", "train.global_batch_size=16", "train.warmup_steps=2", "model.dropout=0.0",
          "train.spike_recovery.window=10", "train.spike_recovery.min_history=5"]
INJECT = [f"train.inject_spike_at_batches=[{SPIKE_BATCH}]"]


def test_detector_flags_what_an_independent_median_mad_rule_flags():
    """A noisy falling loss with two planted spikes: the detector flags exactly the steps that a rule
    computed here with numpy (median and MAD of the last ``window`` unflagged losses) flags; a spike
    does not enter the history (the step after the first spike is judged against the same history)."""
    rng = np.random.default_rng(0)
    series = list(6.0 * np.exp(-np.arange(120) / 60) + 2.0 + rng.normal(0, 0.03, 120))
    series[70] += 3.0
    series[71] += 2.5
    series[100] = series[99] * 1.05  # a small bump: inside the noise-or-10% band, not a spike
    cfg = SpikeRecoveryConfig(window=20, min_history=10, threshold_mads=6.0, min_relative_increase=0.1, patience=2)
    det = SpikeDetector(cfg)
    hist: list[float] = []
    expected, got, recover = [], [], []
    for step, x in enumerate(series, start=1):
        window = hist[-20:]
        flag = False
        if len(window) >= 10:
            med = float(np.median(window))
            mad = float(np.median(np.abs(np.array(window) - med)))
            flag = x > max(med + 6.0 * 1.4826 * mad, 1.1 * med)
        if flag:
            expected.append(step)
        else:
            hist.append(x)
        v = det.observe(step, x)
        if v.spike:
            got.append(step)
        if v.recover:
            recover.append((step, v.first_step))
    assert expected == [71, 72], expected  # the planted spikes and nothing else
    assert got == expected
    assert recover == [(72, 71)], "patience 2: the second spiking step in a row asks for a rollback"
    assert len(det.history) == 20 and 71 not in det.history
    assert statistics.median(det.history) == pytest.approx(float(np.median(hist[-20:])))


def _run(base, run_dir, *overrides, nproc=2, env=None, check=True):
    launcher = "torchrun" if nproc > 1 else "python"
    r = subprocess.run([*_cmd(nproc, launcher), *base, f"train.run_dir={run_dir}", *COMMON, *overrides], cwd=REPO,
                       env={**_env(), **(env or {})}, capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"training failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def _merged(run_dir: Path, tag: str) -> dict:
    from zerolm.data_pipeline.loader import merge_states

    return merge_states(ckpt.load_data_state(run_dir / "checkpoints", tag))


@pytest.fixture(scope="module")
def reference(base_args, tmp_path_factory):  # noqa: F811
    """The uninterrupted run (1 rank: the same global batches as 2 ranks, see test_elastic_resume)."""
    run_dir = tmp_path_factory.mktemp("spikes") / "reference"
    _run(base_args, run_dir, nproc=1)
    return run_dir


@pytest.fixture(scope="module")
def recovered(base_args, tmp_path_factory):  # noqa: F811
    run_dir = tmp_path_factory.mktemp("spikes") / "recovered"
    out = _run(base_args, run_dir, *INJECT)
    return run_dir, out.stdout + out.stderr


def test_a_spike_rolls_back_skips_the_window_and_rejoins_the_run(base_args, reference, recovered, trained_tokenizer):  # noqa: F811
    run_dir, log = recovered
    assert result(reference)["spike_recoveries"] == [], "no false alarm on the clean run"
    (rec,) = result(run_dir)["spike_recoveries"]
    # step 15's loss is the first computed on the blown-up weights; the newest checkpoint at a step
    # ≤ 15 − 1 − margin 1 is step 12 (step 14's holds the bad update and is set aside)
    assert rec["detected_at_step"] == rec["first_spike_step"] == 15
    assert rec["rolled_back_to"] == "step_00000012" and rec["rollback_step"] == 12
    assert rec["skipped_batches"] == [13, 15] and rec["skipped_samples"] == 3 * 16
    ref = losses(reference)
    assert rec["loss"] > 2 * ref[15], f"the fault really spikes the loss: {rec['loss']:.2f} vs {ref[15]:.2f}"
    assert "loss spike recovery 1: rolled back to" in log
    # the history after the rollback: one row per step, steps 13.. trained again, no spike left in it
    got = losses(run_dir)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert all(got[s] == pytest.approx(ref[s], abs=1e-3) for s in range(1, 13)), "identical before the spike"
    assert all(got[s] < 1.2 * ref[s] for s in range(13, STEPS + 1)), (got, ref)
    final_ref, final_got = evals(reference)[STEPS], evals(run_dir)[STEPS]
    assert abs(final_got - final_ref) < 0.05 * final_ref, (final_got, final_ref)
    # exactly the recorded window was skipped: the reference's data state at its last step, advanced
    # by 3 global batches with a loader of our own, is the recovered run's data state at its last step
    from zerolm.config import load_config
    from zerolm.data_pipeline.loader import PackedDataLoader

    cfg = load_config(reference / "config.yaml")
    loader = PackedDataLoader(cfg.data, rank=0, world_size=1, global_batch_size=16)
    loader.load_state_dict(_merged(reference, f"step_{STEPS:08d}"))
    it = iter(loader)
    for _ in range(3 * 16 // cfg.data.micro_batch_size):
        next(it)
    mine, theirs = loader.state_dict(), _merged(run_dir, f"step_{STEPS:08d}")
    assert mine["steps"] == theirs["steps"] == STEPS + 3
    assert mine["shards"] == theirs["shards"]
    # retention kept step 12 for the rollback although keep_last=1; what was rolled back over is gone
    # once the new line passed its step; the record holds the data state a restart continues from
    root = run_dir / "checkpoints"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [f"step_{STEPS - 2:08d}", f"step_{STEPS:08d}"]
    assert ckpt.read_recoveries(root)[0]["data_states"]


def test_a_kill_in_the_middle_of_a_recovery_resumes_into_the_same_run(base_args, recovered, tmp_path):  # noqa: F811
    """Killed after the recovery was recorded and before it rolled back (step 14's checkpoint still in
    place, ``latest`` naming it): the restart finishes the rollback, skips the same batches and
    trains exactly what the uninterrupted recovery trained."""
    run_dir = tmp_path / "killed"
    out = _run(base_args, run_dir, *INJECT, env={"ZEROLM_TEST_EXIT_IN_RECOVERY": "1"}, check=False)
    assert out.returncode != 0
    root = run_dir / "checkpoints"
    assert ckpt.latest_tag(root) == "step_00000014" and (root / "step_00000014").is_dir()
    assert len(ckpt.read_recoveries(root)) == 1
    out = _run(base_args, run_dir, *INJECT)
    log = out.stdout + out.stderr
    assert "rolled back" in log and "resumed from" in log and "continuing the loss-spike recovery" in log
    (rec,) = result(run_dir)["spike_recoveries"]
    assert rec["skipped_batches"] == [13, 15]
    want, got = losses(recovered[0]), losses(run_dir)
    assert sorted(got) == sorted(want)
    assert max(abs(got[s] - want[s]) for s in want) < 1e-5, (got, want)
    assert evals(run_dir)[STEPS] == pytest.approx(evals(recovered[0])[STEPS], abs=1e-5)


def test_too_many_recoveries_stop_the_run_with_the_checkpoints_intact(base_args, tmp_path):  # noqa: F811
    run_dir = tmp_path / "unstable"
    out = _run(base_args, run_dir, "train.inject_spike_at_batches=[10,16]", "train.spike_recovery.max_recoveries=1",
               nproc=1, check=False)
    log = " ".join((out.stdout + out.stderr).split())  # the error is printed wrapped to the console width
    assert out.returncode != 0
    assert "1 loss-spike recoveries within the last 1000 global batches already" in log, log[-3000:]
    root = run_dir / "checkpoints"
    newest = ckpt.latest_tag(root)
    assert newest is not None and ckpt.check(root, newest) is None, "the last good checkpoint is intact"
    assert len(ckpt.read_recoveries(root)) == 1
