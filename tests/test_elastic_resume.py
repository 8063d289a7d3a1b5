"""Elastic resume with real processes: a tiny GPT run continued on another number of ranks (and loader
workers) trains on exactly what the uninterrupted run trains on — same losses, same LR schedule, same
tokens — and a change that cannot be resumed stops before any work, changing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_pretrain import base_args, latest, losses, result, run, snapshot  # noqa: F401 - fixture
from zerolm.config import load_config
from zerolm.errors import ConfigError
from zerolm.pretrain.trainer import batch_arithmetic

STEPS = 6
# global batch 16 = micro-batch 4 (tiny_gpt.yaml) × accumulation 2 × 2 ranks; no dropout, so that the
# losses of a run split over other world sizes can be compared with the uninterrupted one
COMMON = [f"train.max_steps={STEPS}", "train.eval_every=100", "train.save_every=2", "train.warmup_steps=2",
          "model.dropout=0.0"]


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def lrs(run_dir) -> dict[int, float]:
    return {r["step"]: r["train/lr"] for r in rows(run_dir) if "train/lr" in r}


@pytest.fixture(scope="module")
def reference(base_args, tmp_path_factory):  # noqa: F811
    """The uninterrupted run: 2 ranks, ZeRO-2, 6 steps."""
    run_dir = tmp_path_factory.mktemp("elastic") / "reference"
    run(base_args, run_dir, *COMMON, "train.zero_stage=2", "train.gradient_accumulation_steps=2")
    return run_dir


@pytest.mark.parametrize("stage,pieces,batch", [
    (2, [(2, 0), (1, 0), (2, 2)], "train.gradient_accumulation_steps=2"),
    (3, [(2, 1), (1, 0), (2, 0)], "train.global_batch_size=16"),
])  # ZeRO-0 1 ↔ 2 (no universal checkpoint: every rank reads the replicated state) is in test_elastic_engine.py
def test_resume_on_another_number_of_ranks_continues_the_run(base_args, reference, tmp_path, stage, pieces, batch):  # noqa: F811
    """The run is split into pieces of 2 steps on (ranks, loader workers) as listed — ZeRO-2 and ZeRO-3
    2 → 1 → 2 ranks — and must match the uninterrupted 2-rank run: every step's loss
    within 1e-3 (the same samples in every global batch, the same model and Adam state), the LR of every
    step, the tokens seen, one metrics row per step and one W&B run id. At ZeRO-2 the config names the
    accumulation (2): on 1 rank it is re-derived to 4 so that the global batch stays 16."""
    run_dir = tmp_path / "run"
    logs = []
    for i, (nproc, workers) in enumerate(pieces):
        stop = [f"train.stop_at_step={2 * (i + 1)}"] if i < len(pieces) - 1 else []
        out = run(base_args, run_dir, *COMMON, f"train.zero_stage={stage}", batch, f"data.num_workers={workers}",
                  *stop, nproc=nproc)
        logs.append(" ".join((out.stdout + out.stderr).split()))
    for i in range(1, len(pieces)):
        (was, w_was), (now, w_now) = pieces[i - 1], pieces[i]
        assert "resumed from" in logs[i] and f"step {2 * i}," in logs[i], logs[i][-2000:]
        if was != now:
            assert f"data-parallel world size {was} → {now}" in logs[i], logs[i][-2000:]
            assert f"gradient accumulation steps {4 // was} → {4 // now}" in logs[i]
            assert "model and optimizer loaded from DeepSpeed's universal checkpoint" in logs[i]
        if w_was != w_now:
            assert f"data.num_workers {w_was} → {w_now}" in logs[i]
    a, b = losses(reference), losses(run_dir)
    assert sorted(b) == list(range(1, STEPS + 1)), b
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst < 1e-3, f"ZeRO-{stage} {pieces}: largest loss difference {worst:.2e}\n{a}\n{b}"
    assert a[STEPS] < a[1], "the loss goes down"
    la, lb = lrs(reference), lrs(run_dir)
    assert all(abs(la[s] - lb[s]) <= 1e-9 * la[s] for s in la), (la, lb)
    assert [r["step"] for r in rows(run_dir) if "train/loss" in r] == list(range(1, STEPS + 1)), "one row per step"
    assert result(run_dir)["tokens_seen"] == result(reference)["tokens_seen"] == STEPS * 16 * 64
    ids = {json.loads((p / "zerolm_complete.json").read_text())["wandb_run_id"]
           for p in (run_dir / "checkpoints").glob("step_*")}
    assert len(ids) == 1 and None not in ids, "every piece continues the same W&B run"
    assert (run_dir / "checkpoints" / "step_00000002" / "universal" / "zero").is_dir(), "converted beside the checkpoint"
    saved = load_config(run_dir / "config.yaml")  # the run's own config restarts it on any world size
    assert [batch_arithmetic(saved, w) for w in (1, 2, 4)] == [(4, 4, 16), (4, 2, 16), (4, 1, 16)]


def test_batch_arithmetic_keeps_the_resumed_global_batch():
    cfg = load_config(None, ["train.gradient_accumulation_steps=2", "data.micro_batch_size=4"])
    assert batch_arithmetic(cfg, 1, keep_global=16) == (4, 4, 16)
    assert batch_arithmetic(cfg, 4, keep_global=16) == (4, 1, 16)
    pinned = load_config(None, ["train.global_batch_size=32", "data.micro_batch_size=4"])
    assert batch_arithmetic(pinned, 2, keep_global=16) == (4, 4, 32), "an explicit global batch wins (and is refused later)"
    with pytest.raises(ConfigError, match=r"global batch 16 on 3 .* World sizes that keep it at micro-batch 4: \[1, 2, 4\]; "
                                          r"no micro-batch size does on 3 ranks"):
        batch_arithmetic(cfg, 3, keep_global=16)
    with pytest.raises(ConfigError, match=r"on 8 .* micro-batch sizes that keep it on 8 ranks: \[1, 2\]"):
        batch_arithmetic(cfg, 8, keep_global=16)


def test_a_change_that_cannot_be_resumed_stops_before_any_work(base_args, reference, tmp_path):  # noqa: F811
    """From a 2-rank checkpoint: on 1 rank with elastic resume forbidden, and on 3 ranks (16 sequences do
    not split over 3), the run stops with an error naming the numbers and the way out, and leaves every
    file of the run directory as it was."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    before = snapshot(run_dir)
    common = [*COMMON, "train.zero_stage=2", "train.gradient_accumulation_steps=2", "train.max_steps=8"]
    out = run(base_args, run_dir, *common, "train.elastic_resume=false", nproc=1, check=False)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0 and "data-parallel world size 2 → 1" in text, text[-3000:]
    assert "train.elastic_resume=true" in text and "--nproc_per_node 2" in text and "resumed from" not in text
    out = run(base_args, run_dir, *common, nproc=3, check=False)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0 and "cannot keep the checkpoint's global batch 16 on 3" in text, text[-3000:]
    assert "World sizes that keep it at micro-batch 4: [1, 2, 4]" in text
    assert snapshot(run_dir) == before, "nothing in the run directory changed"
    assert latest(run_dir) == f"step_{STEPS:08d}"
