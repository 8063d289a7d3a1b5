"""Elastic resume of the model/optimizer state: ``Engine.load(root, tag, saved_world_size=W)`` on a
DeepSpeed checkpoint written at another data-parallel world size (2 → 1 rank at ZeRO-0/1/2/3, 1 → 2 ranks
at ZeRO-0/2), in real gloo process groups (``tests/elastic_engine_worker.py``, one process per rank).

Independent references: the fp32 weights the checkpoint holds (consolidated by ``zero_to_fp32`` /
the ZeRO-0 module, not by the universal path), the Adam moments of a one-process ZeRO-0 run of the
same 3 steps on the same global batches (the math of every world size is the same; fp32 tolerance),
the schedule's LR (``lr_at``), and the uninterrupted run's 4th step (loss and weights).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zerolm.config import TrainConfig
from zerolm.errors import TrainingError
from zerolm.pretrain.ds_checkpoint import consolidated_state_dict, convert_to_universal
from zerolm.pretrain.engine import lr_at

REPO = Path(__file__).resolve().parents[1]
SAVE_STEP = 3
TAG = f"step_{SAVE_STEP}"
# the worker's schedule (tests/elastic_engine_worker.py: train_config)
CFG = TrainConfig(lr=3e-3, warmup_steps=2, max_steps=10, min_lr_ratio=0.1, weight_decay=0.1)
CASES = {  # dump name: (ZeRO stage, mode Engine.load must report)
    "loaded_w2_z0_to_w1": (0, "stage0"),
    "loaded_w2_z1_to_w1": (1, "universal"),
    "loaded_w2_z2_to_w1": (2, "universal"),
    "loaded_w2_z3_to_w1": (3, "universal"),
    "loaded_w1_z0_to_w2": (0, "stage0"),
    "loaded_w1_z2_to_w2": (2, "universal"),
    "loaded_w2_z2_to_w2": (2, "same"),  # the plain path (saved_world_size = this one) stays as it was
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, name: str, world: int, tasks: list[dict]) -> None:
    """Run the worker on ``world`` gloo ranks (one process group for all ``tasks``)."""
    spec = out / f"{name}.json"
    spec.write_text(json.dumps({"out": str(out), "tasks": tasks}))
    port, procs = _free_port(), []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world),
               "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        log = open(out / f"{name}.rank{rank}.log", "w")
        cmd = [sys.executable, str(REPO / "tests" / "elastic_engine_worker.py"), str(spec)]
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for proc, log in procs:
        try:
            rc = proc.wait(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
        log.close()
        if rc != 0:
            failed.append(f"{log.name} ({rc}):\n" + Path(log.name).read_text()[-4000:])
    assert not failed, "\n".join(failed)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three launches: 1 rank (reference, 1-rank checkpoints) → 2 ranks (load the 1-rank ones, write
    2-rank ones) → 1 rank (load the 2-rank ones)."""
    out = tmp_path_factory.mktemp("elastic")
    _launch(out, "one", 1, [{"kind": "reference"}, {"kind": "train_save", "stage": 2}])
    _launch(out, "two", 2, [{"kind": "load", "stage": 0, "src": "w1_z0"}, {"kind": "load", "stage": 2, "src": "w1_z2"},
                            *({"kind": "train_save", "stage": s} for s in (0, 1, 2, 3)),
                            {"kind": "load", "stage": 2, "src": "w2_z2"}])
    _launch(out, "back", 1, [{"kind": "load", "stage": s, "src": f"w2_z{s}"} for s in (0, 1, 2, 3)])
    return out


def _close(got: dict, want: dict, what: str, atol: float, rtol: float = 0.0) -> None:
    assert set(got) == set(want), what
    for name in want:
        torch.testing.assert_close(got[name].float(), want[name].float(), atol=atol, rtol=rtol,
                                   msg=lambda m, n=name: f"{what} {n}: {m}")


@pytest.mark.parametrize("case", list(CASES))
def test_load_at_another_world_size(runs, case):
    stage, mode = CASES[case]
    src = case.split("_", 1)[1].rsplit("_to_", 1)[0]  # w2_z3
    d = torch.load(runs / f"{case}.pt", weights_only=False)
    ref = torch.load(runs / "reference.pt", weights_only=False)
    assert d["mode"] == mode

    # weights: exactly what the checkpoint holds (consolidated without the universal path)
    saved, _ = consolidated_state_dict(runs / src / TAG)
    _close(d["fp32"], {n: saved[n] for n in d["fp32"]}, "weights", atol=0.0)
    # Adam moments per parameter: the one-process ZeRO-0 run of the same 3 steps (fp32 tolerance);
    # not readable per parameter after a same-size ZeRO-1/2 load (the next step checks them there)
    if d["exp_avg"]:
        _close(d["exp_avg"], ref["exp_avg"], "exp_avg", atol=1e-6, rtol=1e-4)
        _close(d["exp_avg_sq"], ref["exp_avg_sq"], "exp_avg_sq", atol=1e-6, rtol=1e-4)
    else:
        assert mode == "same"
    assert d["steps"] and set(d["steps"]) == {float(SAVE_STEP)}, d["steps"]
    # the no-decay group (biases, norm gains) keeps no decay, in DeepSpeed's optimizer and the torch one
    assert d["wd_wrapper"] == [0.1, 0.0] and d["wd_client"] == [0.1, 0.0], (d["wd_wrapper"], d["wd_client"])
    # the schedule continues at step 3; DeepSpeed's counters too
    want_lr = CFG.lr * lr_at(SAVE_STEP, CFG)
    assert d["lr"] == pytest.approx(want_lr, rel=1e-9) and d["group_lrs"] == pytest.approx([want_lr] * 2, rel=1e-9)
    assert (d["global_steps"], d["global_samples"]) == (SAVE_STEP, SAVE_STEP * 4)

    # one more optimizer step: the uninterrupted run's 4th step (loss; weights at fp32 tolerance)
    cont = torch.load(runs / src / "uninterrupted.pt", weights_only=False)
    assert d["loss_next"] == pytest.approx(cont["losses"][SAVE_STEP], abs=1e-4)
    assert d["loss_next"] == pytest.approx(ref["losses"][SAVE_STEP], abs=1e-4)
    _close(d["weights_next"], cont["weights4"], "weights after the next step", atol=5e-5)
    assert set(d["steps_next"]) == {float(SAVE_STEP + 1)}, d["steps_next"]
    assert d["global_steps_next"] == SAVE_STEP + 1
    assert d["lr_next"] == pytest.approx(CFG.lr * lr_at(SAVE_STEP + 1, CFG), rel=1e-9)

    tag_dir = runs / src / TAG
    if mode == "universal":  # converted once, in place, no temp debris; DeepSpeed's pointer names it
        assert (tag_dir / "universal" / "zero" / "optimizer_state.pt").is_file()
        assert not list(tag_dir.glob(".universal.tmp-*"))
        assert (tag_dir / "latest_universal").read_text().strip() == "universal"
    elif mode == "stage0":
        assert not (tag_dir / "universal").exists()


def test_conversion_is_reused_and_failures_are_clear(runs, tmp_path):
    """A converted copy is reused (not rewritten); debris of a killed conversion is removed; a folder
    the converter cannot read (a ZeRO-0 checkpoint) raises TrainingError naming it and leaves no
    ``universal``."""
    tag_dir = runs / "w2_z3" / TAG
    marker = tag_dir / "universal" / "zero" / "optimizer_state.pt"
    before = marker.stat().st_mtime_ns
    assert convert_to_universal(tag_dir) == tag_dir / "universal"
    assert marker.stat().st_mtime_ns == before

    # a fresh copy of the 2-rank ZeRO-2 checkpoint with debris of an interrupted conversion
    import shutil

    fresh = tmp_path / TAG
    shutil.copytree(runs / "w2_z2" / TAG, fresh, ignore=shutil.ignore_patterns("universal", "latest_universal"))
    (fresh / ".universal.tmp-dead" / "zero").mkdir(parents=True)
    out = convert_to_universal(fresh)
    assert (out / "zero" / "optimizer_state.pt").is_file() and not (fresh / ".universal.tmp-dead").exists()

    with pytest.raises(TrainingError, match=str(runs / "w1_z0" / TAG)):
        convert_to_universal(runs / "w1_z0" / TAG)
    assert not (runs / "w1_z0" / TAG / "universal").exists()
    assert not list((runs / "w1_z0" / TAG).glob(".universal.tmp-*"))
