"""One import name: the installed distribution exposes `zerolm` and nothing else at the top level,
so installing zerolm never shadows (or is shadowed by) another distribution's `evals` or `launch`.

Both install kinds are checked from a folder outside the repository (where the working directory
cannot stand in for site-packages): the editable install this suite runs in, and a wheel built
from the same tree and unpacked into a fresh folder (what `pip install zerolm` would put into
site-packages).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("pretrain", "finetune", "evals", "launch", "data_pipeline")
PROBE = """
import importlib, importlib.util, json, sys
mods = {}
for name in ["zerolm", "zerolm.cli"] + [f"zerolm.{p}" for p in %r]:
    mods[name] = importlib.import_module(name).__file__
bare = {p: importlib.util.find_spec(p) is not None for p in %r}
from zerolm.pretrain.models import available_presets, presets_dir
print(json.dumps({"files": mods, "bare": bare, "presets_dir": str(presets_dir()), "presets": available_presets()}))
""" % (list(SUBPACKAGES), list(SUBPACKAGES))


def _probe(cwd: Path, extra_path: Path | None = None) -> dict:
    import json
    import os

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _top_level_of_record(names: list[str]) -> set[str]:
    """Top-level importable names in a RECORD/file list: first path parts that are packages or modules."""
    tops = set()
    for n in names:
        first = n.split("/", 1)[0]
        if first.endswith((".dist-info", ".data")) or first.endswith(".pth") or first.startswith("__editable__"):
            continue
        tops.add(first[:-3] if first.endswith(".py") else first)
    return tops


def test_editable_install_exposes_only_zerolm(tmp_path):
    dist = metadata.distribution("zerolm")
    assert dist.read_text("top_level.txt").split() == ["zerolm"]
    probe = _probe(tmp_path)
    for sub in SUBPACKAGES:
        # the folder at the repository's top level is what `zerolm.<sub>` imports
        assert Path(probe["files"][f"zerolm.{sub}"]) == REPO / sub / "__init__.py"
        assert probe["bare"][sub] is False, f"`import {sub}` must not work outside the repository"
    assert probe["presets_dir"] == str(REPO / "configs" / "models") and "tiny" in probe["presets"]


def test_wheel_installs_one_top_level_name_and_imports(tmp_path):
    # build from a copy of the sources: setuptools leaves a build/ folder in the tree it builds, and a
    # stale one there would put deleted modules into later wheels
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for pkg in ("zerolm", "configs", *SUBPACKAGES):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("zerolm-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        z.extractall(site)
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        assert z.read(f"{info}/top_level.txt").decode().split() == ["zerolm"]
        record = [line.split(",")[0] for line in z.read(f"{info}/RECORD").decode().splitlines() if line]
    assert _top_level_of_record(record) == {"zerolm"}
    # package data travels with the code: eval task YAMLs and the launch templates
    assert "zerolm/evals/tasks/boolq.yaml" in record and "zerolm/launch/templates/sbatch_header.sh" in record
    # and so do the model presets and default configs (configs/ of the repository)
    assert "zerolm/configs/models/tiny.yaml" in record and "zerolm/configs/finetune/classify.yaml" in record
    probe = _probe(tmp_path, extra_path=site)
    for sub in SUBPACKAGES:
        assert Path(probe["files"][f"zerolm.{sub}"]).is_relative_to(site / "zerolm" / sub)
        assert probe["bare"][sub] is False
    presets = sorted(p.stem for p in (REPO / "configs" / "models").glob("*.yaml"))
    assert probe["presets_dir"] == str(site / "zerolm" / "configs" / "models") and probe["presets"] == presets
