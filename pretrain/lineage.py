"""The training stages behind a model: where a run started (``RUN_DIR/init_from.json``, written by
:mod:`zerolm.pretrain.init_from`) and the lineage an export records (base model, stages, tokens per
stage; ``zerolm_export.json`` and the model card)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zerolm.errors import DataError

INIT_FILE = "init_from.json"  # in the run directory: the start of this stage and the stages before it


def read_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN_DIR/init_from.json``, or None for a run that started from random weights.

    Raises:
        DataError: the file exists but is unreadable.
    """
    path = Path(run_dir) / INIT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable: {e}") from e


def this_stage(run_dir: str | Path, cfg, tokens_seen: int | None, step: int | None) -> list[dict[str, Any]]:
    """The lineage of a run's model: the stages before it (``init_from.json``) + this run as the last stage."""
    record = read_record(run_dir)
    before = list(record.get("lineage") or []) if record else []
    stage = {"start": record["init_from"] if record else "random init", "run_dir": str(Path(run_dir).resolve()),
             "data": [s.name for s in cfg.data.sources], "steps": step, "tokens": tokens_seen}
    return before + [stage]
