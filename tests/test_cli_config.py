"""The typed config and the `zerolm` console script."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zerolm.config import load_config, save_config
from zerolm.errors import ConfigError


def test_overrides_are_typed_and_unknown_keys_are_named(tmp_path):
    cfg = load_config(None, ["data.seq_len=512", "data.objective=mlm", "tokenizer.vocab_size=4000"])
    assert cfg.data.seq_len == 512 and cfg.data.objective == "mlm" and cfg.tokenizer.vocab_size == 4000
    with pytest.raises(ConfigError, match=r"data\.seq_lenn"):
        load_config(None, ["data.seq_lenn=512"])
    with pytest.raises(ConfigError, match=r"data\.seq_len: .*integer"):
        load_config(None, ["data.seq_len=long"])
    with pytest.raises(ConfigError, match=r"data\.objective"):
        load_config(None, ["data.objective=seq2seq"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["data.seq_len"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_file_then_overrides_and_saved_config_round_trips(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(
        "data:\n  seq_len: 128\n  sources:\n    - {name: a, paths: [x.jsonl], weight: 2}\n    - {name: b, paths: [y.txt]}\n"
    )
    cfg = load_config(f, ["data.micro_batch_size=3"])
    assert [s.weight for s in cfg.data.sources] == [2.0, 1.0] and cfg.data.micro_batch_size == 3
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg
    f.write_text("data:\n  sources:\n    - {name: a, paths: [x.jsonl]}\n    - {name: a, paths: [y.txt]}\n")
    with pytest.raises(ConfigError, match="unique"):
        load_config(f)


def _zerolm(*args, cwd=None):
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "zerolm", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def _leaves(parser, path=()):
    """``(command path, parser)`` of every leaf subcommand of an argparse tree (a parser without
    subparsers), found by walking the real parser's subparser actions."""
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from _leaves(child, (*path, name))


def test_help_everywhere():
    """`--help` of the top level and of every leaf subcommand of the real parser exits 0 and shows that
    leaf's usage and its description (or help line); one process answers them all (as `python -m zerolm`
    would, through zerolm.cli.main)."""
    import contextlib
    import io

    from zerolm.cli import build_parser, main

    leaves = list(_leaves(build_parser()))
    names = {" ".join(p) for p, _ in leaves}
    # not blind: the commands of every area are there (data, tokenizer, pretrain, finetune, eval, export,
    # sample, launch, publish)
    assert {"data prepare", "data inspect", "tokenizer train", "pretrain", "finetune classify", "finetune sentiment",
            "eval fewshot", "eval bias", "export", "sample", "launch slurm", "launch local", "launch ds-config",
            "publish"} <= names, names
    for path, leaf in [((), None), *leaves]:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            main([*path, "--help"])
        text = " ".join(out.getvalue().split())  # argparse wraps lines: compare with whitespace folded
        assert exit_info.value.code == 0, (path, text)
        assert text.startswith(f"usage: {' '.join(('zerolm', *path))}"), (path, text[:200])
        if leaf is not None:
            assert leaf.description, f"`zerolm {' '.join(path)}` has no description"
            assert " ".join(leaf.description.split())[:60] in text, (path, text[:400])
    r = _zerolm("eval", "bias", "--help")  # and through the console script, in a fresh process
    assert r.returncode == 0 and "usage: zerolm eval bias" in r.stdout and "CrowS-Pairs" in r.stdout


def test_cli_inspect_on_the_real_corpus(prepared_corpus, trained_tokenizer):
    r = _zerolm("data", "inspect", "--data", str(prepared_corpus), "--tokenizer", str(trained_tokenizer),
                "--batches", "5", "--samples", "6", "data.seq_len=256", "data.num_workers=0")
    assert r.returncode == 0, r.stderr
    assert "packed sample 0" in r.stdout and "padding fraction" in r.stdout and "0.00%" in r.stdout
    assert "</s>" in r.stdout, "document boundaries are shown"


def test_cli_errors_are_one_clear_line(tmp_path):
    r = _zerolm("data", "inspect", "data.seq_len=abc")
    assert r.returncode == 2 and "data.seq_len" in r.stdout and "Traceback" not in r.stdout + r.stderr
    r = _zerolm("data", "inspect", "--data", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "nowhere" in r.stdout and "Traceback" not in r.stdout + r.stderr


def test_deepspeed_accelerator_defaults_to_cpu_only_without_cuda(monkeypatch):
    """The CLI sets ``DS_ACCELERATOR=cpu`` only where torch sees no CUDA device: on a GPU machine
    DeepSpeed must pick CUDA (a forced ``cpu`` would train on the CPU accelerator), and a value the
    user set is never changed."""
    import torch

    from zerolm.cli import default_ds_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    env: dict[str, str] = {}
    default_ds_accelerator(env)
    assert env == {"DS_ACCELERATOR": "cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    env = {}
    default_ds_accelerator(env)
    assert env == {}
    env = {"DS_ACCELERATOR": "xpu"}
    default_ds_accelerator(env)
    assert env == {"DS_ACCELERATOR": "xpu"}
