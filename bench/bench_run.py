"""One 2-rank ``zerolm pretrain`` run on the bundled corpus, as the CPU benchmarks start it.

``bench/comm_sweep.py`` and ``bench/trainer_ab.py`` (and any bench that times whole training runs) build
the same command: ``torchrun --standalone --nproc_per_node N -m zerolm.pretrain --config
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


def run_pretrain(run_dir: Path, overrides: list[str], *, nproc: int = 2, pythonpath: str | None = None,
                 timeout: float = 1800) -> subprocess.CompletedProcess:
    """Train the tiny-GPT config with ``overrides`` (applied after the bundled data's) into ``run_dir``.

    ``pythonpath`` goes first on ``PYTHONPATH`` (``bench/trainer_ab.py`` runs an older revision's package
    that way); the run then starts outside the repository, where the working tree's own ``zerolm/`` cannot
    shadow it (``python -m`` puts the working directory first on ``sys.path``).

    Raises:
        SystemExit: the run failed (the command and the end of its stderr).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled",
           "TOKENIZERS_PARALLELISM": "false"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "zerolm.pretrain",
           "--config", str(REPO / "configs/pretrain/tiny_gpt.yaml"), f"train.run_dir={run_dir}",
           "tracking.wandb_mode=disabled", *bundled_data_overrides(), *overrides]
    r = subprocess.run(cmd, cwd="/tmp" if pythonpath else REPO, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r
