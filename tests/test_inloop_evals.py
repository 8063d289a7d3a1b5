"""Downstream few-shot evals inside the pretraining loop (``train.eval_tasks``, :mod:`zerolm.evals.inloop`).

Tiny runs of the real entry point (``python -m zerolm.pretrain`` / ``torchrun``) score tasks on the live
model at every evaluation; the run's final checkpoint is exported and scored by the few-shot harness
(``run_fewshot``, an independent load of the exported folder in this process): the metrics must be the
ones the run logged at that step — on 1 rank (ZeRO-2), on 2 ranks at ZeRO-3 (parameters gathered, each
rank scoring a different number of documents), and for a masked LM (pseudo-log-likelihood).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = 4  # evaluations (loss + downstream) at steps 2 and 4; checkpoint at 4
# odd limits: on 2 ranks, rank 0 scores one document more than rank 1 (and, with batch 2, runs more forwards)
TASKS = {"piqa": {"limit": 7, "shots": [0, 1]}, "boolq": {"limit": 6, "shots": [0]}}
# ZeRO-3 with d_model 256: the weight matrices (≥ 65k elements; 196k–512k but the attention output) exceed
# DeepSpeed's persistence threshold (1e5 elements), so they are really partitioned across the 2 ranks
Z3 = ("train.zero_stage=3", "model.d_model=256", "train.eval_tasks_batch_size=2")


def _tasks_override(tasks: dict) -> str:
    items = ", ".join(f"{{task: {t}, limit: {v['limit']}, shots: [{', '.join(map(str, v['shots']))}]}}"
                      for t, v in tasks.items())
    return f"train.eval_tasks=[{items}]"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled",
            "WANDB_API_KEY": "", "HF_TOKEN": ""}


def _train(prepared_corpus, trained_tokenizer, run_dir: Path, *overrides: str, nproc: int = 1,
           config: str = "tiny_gpt", check: bool = True) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "zerolm.pretrain"] if nproc == 1 else
                [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "zerolm.pretrain"])
    cmd = [*launcher, "--config", str(REPO / f"configs/pretrain/{config}.yaml"),
           f"data.tokenizer_dir={trained_tokenizer}",
           f"data.sources=[{{name: corpus, paths: ['{prepared_corpus}/train/*.jsonl']}}]",
           f"data.validation_sources=[{{name: corpus, paths: ['{prepared_corpus}/validation/*.jsonl']}}]",
           "tracking.wandb_mode=disabled", "train.peak_flops=1e12", f"train.max_steps={STEPS}", "train.eval_every=2",
           f"train.save_every={STEPS}", "train.eval_batches=1", "train.log_every=2", "train.warmup_steps=0",
           f"train.run_dir={run_dir}", *overrides]
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"training failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def _rows(run_dir: Path) -> dict[int, dict]:
    """metrics.jsonl merged per step."""
    out: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["step"], {}).update(row)
    return out


def _export_and_score(run_dir: Path, out: Path, tasks: dict) -> dict[str, dict]:
    """Export the run's final checkpoint, then score it with the few-shot harness, task by task (one
    process here, batch 16: another split of the work and other batches than the run's)."""
    from zerolm.evals.fewshot import run_fewshot
    from zerolm.pretrain.export import export_checkpoint

    export_checkpoint(run_dir, out / "hf")
    return {t: run_fewshot(str(out / "hf"), [t], v["shots"], v["limit"], out / f"fewshot_{t}")["results"][t]
            for t, v in tasks.items()}


def _assert_logged_equals_harness(logged: dict, harness: dict[str, dict]) -> int:
    n = 0
    for task, by_k in harness.items():
        for k_str, entry in by_k.items():
            suffix = f"_{k_str}shot" if k_str != "0" else ""
            for metric, value in entry["metrics"].items():
                key = f"eval/{task}/{metric}{suffix}"
                assert logged[key] == pytest.approx(value, abs=1e-9), (key, logged[key], value)
                assert logged[f"{key}_stderr"] == pytest.approx(entry["stderr"][metric], abs=1e-9), key
                n += 1
    return n


@pytest.fixture(scope="module")
def one_rank(prepared_corpus, trained_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("inloop_1rank")
    r = _train(prepared_corpus, trained_tokenizer, root / "run", _tasks_override(TASKS), "train.zero_stage=2")
    return root, r


@pytest.fixture(scope="module")
def two_ranks_z3(prepared_corpus, trained_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("inloop_2rank_z3")
    r = _train(prepared_corpus, trained_tokenizer, root / "run", _tasks_override(TASKS), *Z3, nproc=2)
    return root, r


@pytest.mark.parametrize("which", ["one_rank", "two_ranks_z3"])
def test_inloop_metrics_equal_the_harness_on_the_export(which, request):
    root, _ = request.getfixturevalue(which)
    harness = _export_and_score(root / "run", root, TASKS)
    logged = _rows(root / "run")[STEPS]
    assert _assert_logged_equals_harness(logged, harness) == 2 * 2 + 1  # piqa acc, acc_norm × k = 0, 1; boolq acc


def test_metrics_at_every_evaluation_timed_and_in_the_log(one_rank):
    root, r = one_rank
    rows = _rows(root / "run")
    for step in (2, STEPS):
        assert {"eval/loss", "eval/piqa/acc", "eval/piqa/acc_norm_1shot", "eval/boolq/acc"} <= rows[step].keys()
        assert rows[step]["eval/downstream_seconds"] >= rows[step]["eval/piqa/seconds"] + rows[step]["eval/boolq/seconds"] > 0
    assert not any(k.startswith("eval/piqa") for s, row in rows.items() if s not in (2, STEPS) for k in row)
    result = json.loads((root / "run" / "result.json").read_text())
    assert result["eval/piqa/acc"] == rows[STEPS]["eval/piqa/acc"]
    log = r.stdout + r.stderr
    assert log.count("piqa (n=7): acc ") == 2 and log.count("boolq (n=6): acc ") == 2, log[-3000:]


def test_zero3_training_is_unchanged_by_the_evals(two_ranks_z3, prepared_corpus, trained_tokenizer, tmp_path):
    """The ZeRO-3 hooks detached for scoring are re-attached: the same run without eval_tasks trains the
    same losses after the evaluation at step 2."""
    root, _ = two_ranks_z3
    _train(prepared_corpus, trained_tokenizer, tmp_path / "plain", *Z3[:2], nproc=2)
    with_evals, plain = _rows(root / "run"), _rows(tmp_path / "plain")
    for step in (2, STEPS):
        assert with_evals[step]["train/loss"] == pytest.approx(plain[step]["train/loss"], rel=1e-6, abs=0)
        assert with_evals[step]["eval/loss"] == pytest.approx(plain[step]["eval/loss"], rel=1e-6, abs=0)


def test_masked_lm_scores_choices_by_pseudo_log_likelihood(prepared_corpus, trained_tokenizer, tmp_path):
    tasks = {"piqa": {"limit": 4, "shots": [0]}}
    _train(prepared_corpus, trained_tokenizer, tmp_path / "run", _tasks_override(tasks), config="tiny_bert")
    harness = _export_and_score(tmp_path / "run", tmp_path, tasks)
    assert _assert_logged_equals_harness(_rows(tmp_path / "run")[STEPS], harness) == 2


def test_unknown_task_fails_before_training(prepared_corpus, trained_tokenizer, tmp_path):
    r = _train(prepared_corpus, trained_tokenizer, tmp_path / "run", "train.eval_tasks=[piqa, no_such_task]",
               check=False)
    assert r.returncode != 0
    assert "no_such_task" in r.stderr + r.stdout
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_config_items_and_their_errors():
    from zerolm.config import load_config
    from zerolm.errors import ConfigError

    items = load_config(None, ["train.eval_tasks=[piqa, {task: boolq, limit: 50, shots: [0, 5]}]"]).train.eval_tasks
    assert [(i.task, i.limit, i.shots) for i in items] == [("piqa", 100, [0]), ("boolq", 50, [0, 5])]
    assert load_config(None, []).train.eval_tasks == []
    for bad, words in (("[piqa, piqa]", "twice"), ("[{task: piqa, shots: [-1]}]", "non-negative"),
                       ("[{task: piqa, limit: 0}]", "limit"), ("[{task: piqa, shot: [1]}]", "shot")):
        with pytest.raises(ConfigError, match=words):
            load_config(None, [f"train.eval_tasks={bad}"])


# ------------------------------------------------------------------ Engine.full_parameters at ZeRO-3

def _engine_worker(out_path: str) -> None:
    """One rank of :func:`test_full_parameters_lets_ranks_run_different_forwards` (run by torchrun)."""
    import copy

    import torch

    from zerolm.config import ModelConfig, TrainConfig
    from zerolm.pretrain import distributed
    from zerolm.pretrain.engine import Engine
    from zerolm.pretrain.models import build_model, resolve_model_config

    env = distributed.detect()
    distributed.init(env)
    torch.manual_seed(0)
    model = build_model(resolve_model_config(ModelConfig(family="gpt2", preset="tiny", d_model=256)), vocab_size=2000,
                        seq_len=64, special_ids={"bos": 1, "eos": 2, "pad": 0})
    reference = copy.deepcopy(model).eval()  # the same weights, never partitioned
    engine = Engine(model, TrainConfig(zero_stage=3, lr=1e-3, precision="fp32"), 2, 1, env.world_size)
    probe = torch.arange(3, 19).reshape(1, 16)
    engine.eval()
    # before any training step: DeepSpeed's trace is still being recorded (its pre-forward hook runs a collective)
    with engine.full_parameters() as module, torch.no_grad():
        whole = sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in reference.parameters())
        logits = [module(input_ids=probe).logits for _ in range(1 + 2 * env.rank)]  # rank 0: 1 forward, rank 1: 3
    diff = max(float((l - reference(input_ids=probe).logits).abs().max()) for l in logits)
    partitioned = sum(p.numel() for p in engine.module.parameters())
    engine.train()
    torch.manual_seed(1 + env.rank)
    losses = []
    for _ in range(2):
        x = torch.randint(0, 2000, (2, 64))
        loss = engine.forward({"input_ids": x, "labels": x}).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    if env.is_main:
        Path(out_path).write_text(json.dumps({"whole": whole, "max_abs_diff": diff, "partitioned_numel": partitioned,
                                              "full_numel": sum(p.numel() for p in reference.parameters()),
                                              "losses": losses}))
    distributed.shutdown()


def test_full_parameters_lets_ranks_run_different_forwards(tmp_path):
    """ZeRO-3 on 2 ranks, matrices above DeepSpeed's persistence threshold: inside
    ``Engine.full_parameters`` the ranks run 1 and 3 forwards (before the first step, while DeepSpeed
    records its trace) without a collective, with the unpartitioned model's logits; afterwards the
    parameters are partitioned again and training continues."""
    out = tmp_path / "worker.json"
    r = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", __file__, str(out)], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    res = json.loads(out.read_text())
    assert res["whole"] and res["max_abs_diff"] < 1e-5
    assert res["partitioned_numel"] < res["full_numel"] / 2  # partitioned again (small params persist whole)
    assert all(0 < l < 20 for l in res["losses"])


if __name__ == "__main__":
    _engine_worker(sys.argv[1])
    from zerolm.pretrain import distributed as _dist

    _dist.exit_process(0)  # skip the interpreter teardown that aborts now and then after a process group (STACK_FACTS)
