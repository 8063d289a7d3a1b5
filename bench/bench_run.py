"""One 2-rank ``zerolm pretrain`` run on the bundled corpus, as the CPU benchmarks start it.

``bench/comm_sweep.py``, ``bench/trainer_ab.py``, ``bench/mlm_recipe.py``, ``bench/elastic_resume.py`` and
``bench/continued_pretraining.py`` (any bench that runs whole trainings) start the same command: ``torchrun --standalone --nproc_per_node N -m zerolm.pretrain --config
configs/pretrain/tiny_gpt.yaml`` with the run's overrides, the bundled corpus and tokenizer
(``data/corpus``, ``data/tokenizer``: ``make quickstart`` prepares both), W&B off, ``OMP_NUM_THREADS=1``
per rank and ``DS_ACCELERATOR=cpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def require_bundled_data() -> None:
    """Stop with a message naming what to run when ``data/corpus`` or ``data/tokenizer`` is missing.

    Raises:
        SystemExit: a folder is missing.
    """
    for d in ("data/corpus/train", "data/tokenizer"):
        if not (REPO / d).exists():
            raise SystemExit(f"missing {d}: run `make quickstart` (or zerolm data prepare / tokenizer train) first")


def bundled_data_overrides() -> list[str]:
    """Config overrides that point a run at the bundled corpus (train and validation) and tokenizer."""
    return [f"data.tokenizer_dir={REPO / 'data/tokenizer'}",
            f"data.sources=[{{name: corpus, paths: ['{REPO}/data/corpus/train/*.jsonl']}}]",
            f"data.validation_sources=[{{name: corpus, paths: ['{REPO}/data/corpus/validation/*.jsonl']}}]"]


def run_pretrain(run_dir: Path, overrides: list[str], *, config: str | Path = "configs/pretrain/tiny_gpt.yaml",
                 bundled_data: bool = True, nproc: int = 2, pythonpath: str | None = None, timeout: float | None = 1800,
                 output: str | Path = "capture", check: bool = True) -> subprocess.CompletedProcess:
    """Train ``config`` (relative to the repository, default the tiny GPT) into ``run_dir`` on ``nproc`` ranks.

    The command is ``torchrun --standalone --nproc_per_node NPROC -m zerolm.pretrain --config CONFIG
    train.run_dir=RUN_DIR tracking.wandb_mode=disabled [bundled data] OVERRIDES``: ``overrides`` come last,
    so they win (``tracking.wandb_mode=offline`` among them also sets ``WANDB_MODE``). Each rank runs with
    ``OMP_NUM_THREADS=1``, ``DS_ACCELERATOR=cpu`` and the Hub offline.

    Args:
        bundled_data: point the run at ``data/corpus`` and ``data/tokenizer`` (:func:`bundled_data_overrides`);
            off for a bench that names its own sources.
        pythonpath: goes first on ``PYTHONPATH`` (``bench/trainer_ab.py`` runs an older revision's package
            that way); the run then starts outside the repository, where the working tree's own
            ``zerolm/`` cannot shadow it (``python -m`` puts the working directory first on ``sys.path``).
        output: ``"capture"`` (stdout/stderr on the returned object), ``"inherit"`` (this process's console)
            or a log file path (both streams, overwritten).
        check: stop on a failed run; off returns it (``returncode``) for the caller to record.

    Raises:
        SystemExit: ``check`` and the run failed (the command and the end of its stderr, or the log's path).
        subprocess.TimeoutExpired: the run took longer than ``timeout`` seconds.
    """
    modes = [o.split("=", 1)[1] for o in overrides if o.startswith("tracking.wandb_mode=")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": (modes or ["disabled"])[-1],
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "zerolm.pretrain",
           "--config", str(REPO / config), f"train.run_dir={run_dir}", "tracking.wandb_mode=disabled",
           *(bundled_data_overrides() if bundled_data else []), *overrides]
    kw = dict(cwd="/tmp" if pythonpath else REPO, env=env, timeout=timeout)
    if output == "capture":
        r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    elif output == "inherit":
        print("$", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, **kw)
    else:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w") as fh:
            r = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, **kw)
    if check and r.returncode != 0:
        tail = r.stderr[-3000:] if output == "capture" else f"(output: {output})"
        raise SystemExit(f"run failed ({r.returncode}): {' '.join(cmd)}\n{tail}")
    return r
