"""``train.compile`` (torch.compile of the model for the training steps): the auto rule, that the
configs ``make test`` and the quickstart run stay eager, and that ``on`` really hands the module to
DeepSpeed's compile while evaluation stays eager.

No compiled step runs here (inductor's first compile of even the tiny GPT takes minutes on 2 cores);
``bench/compile_gain.py`` compiles and times real steps and checks the compiled loss against eager.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from single_rank import run_as_single_rank

from zerolm.config import COMPILE_MIN_STEPS, TrainConfig, load_config
from zerolm.pretrain.ds_config import compile_decision

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kwargs, on", [
    ({}, False),  # the default run length (100 steps) stays eager
    ({"max_steps": COMPILE_MIN_STEPS - 1}, False),
    ({"max_steps": COMPILE_MIN_STEPS}, True),
    ({"max_steps": 10 * COMPILE_MIN_STEPS, "zero_stage": 3}, False),  # auto stays off at ZeRO-3
    ({"max_steps": 10 * COMPILE_MIN_STEPS, "zero_stage": 0}, True),
    ({"max_steps": 5, "compile": "on"}, True),
    ({"max_steps": 10 * COMPILE_MIN_STEPS, "compile": "off"}, False),
    ({"max_steps": 50, "compile_min_steps": 50}, True),
    ({"max_steps": 5, "compile": True}, True),  # YAML's bare `on` (train.compile=on on the command line)
    ({"max_steps": 10 * COMPILE_MIN_STEPS, "compile": False}, False),
])
def test_auto_rule(kwargs, on):
    enabled, reason = compile_decision(TrainConfig(**kwargs))
    assert enabled is on
    assert "train.compile=" in reason


def test_on_and_off_on_the_command_line():
    for word, on in (("on", True), ("off", False), ("auto", False)):
        cfg = load_config(str(REPO / "configs" / "pretrain" / "tiny_gpt.yaml"), [f"train.compile={word}"])
        assert cfg.train.compile == word and compile_decision(cfg.train)[0] is on


def test_test_and_quickstart_configs_run_eager():
    # the quickstart: auto, and its 300 steps are below the threshold
    for name in ("quickstart_gpt", "quickstart_bert"):
        cfg = load_config(str(REPO / "configs" / "pretrain" / f"{name}.yaml"), [])
        assert cfg.train.compile == "auto" and not compile_decision(cfg.train)[0], name
    # the test configs: off, also for the tests that set max_steps=100000 and stop by signal
    for name in ("tiny_gpt", "tiny_bert"):
        cfg = load_config(str(REPO / "configs" / "pretrain" / f"{name}.yaml"), ["train.max_steps=100000"])
        assert cfg.train.compile == "off" and not compile_decision(cfg.train)[0], name


def _worker(out_path: str) -> None:
    """One process, world size 1: a tiny GPT-2 in an Engine with ``train.compile=on``; records what the
    engine reports, whether the module was compiled in place, and that an eval-mode forward runs eager
    (no graph compiled) with the eager model's numbers."""
    import torch
    from torch._dynamo.utils import counters

    from zerolm.config import ModelConfig
    from zerolm.pretrain import distributed
    from zerolm.pretrain.engine import Engine
    from zerolm.pretrain.models import SPECIAL_ROLES, build_model, resolve_model_config

    distributed.init(distributed.detect())
    out = {}
    for mode in ("on", "off"):
        torch.manual_seed(0)
        model = build_model(resolve_model_config(ModelConfig(family="gpt2", preset="tiny")), vocab_size=96, seq_len=32,
                            special_ids={r: i for i, r in enumerate(SPECIAL_ROLES)})
        engine = Engine(model, TrainConfig(zero_stage=2, lr=1e-3, compile=mode, precision="fp32"), 2, 1, 1)
        x = torch.randint(7, 96, (2, 32), generator=torch.Generator().manual_seed(1))
        engine.eval()
        before = sum(counters["stats"].values())
        with torch.no_grad():
            loss = float(engine.forward({"input_ids": x, "labels": x}).loss)
        out[mode] = {"features": engine.features(), "compiled": engine.compiled, "reason": engine.compile_reason,
                     "compiled_in_place": getattr(engine.module, "_compiled_call_impl", None) is not None,
                     "dynamo_calls_in_eval": sum(counters["stats"].values()) - before, "eval_loss": loss}
        engine.train()
    Path(out_path).write_text(json.dumps(out))
    distributed.shutdown()


def test_compile_on_compiles_the_module_and_evaluation_stays_eager(tmp_path):
    out = tmp_path / "compile.json"
    r = run_as_single_rank(__file__, str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    on, off = got["on"], got["off"]
    assert on["compiled"] and on["features"]["compiled"] and on["compiled_in_place"]
    assert not off["compiled"] and not off["features"]["compiled"] and not off["compiled_in_place"]
    assert on["dynamo_calls_in_eval"] == 0  # force_eager: dynamo never ran the frame
    assert on["eval_loss"] == off["eval_loss"]  # same weights, same eager math


if __name__ == "__main__":
    _worker(sys.argv[1])
    from zerolm.pretrain import distributed as _dist

    _dist.exit_process(0)  # skip the interpreter teardown that aborts now and then after a process group
