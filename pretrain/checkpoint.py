"""Checkpoints that are never half-picked: write everything, then a completion record, then the
``latest`` pointer; resume from the newest checkpoint that is complete and intact.

Layout (``RUN_DIR/checkpoints``)::

    latest                              the newest complete tag (written last, atomically)
    step_00000040/                      DeepSpeed engine state (model, optimizer, LR schedule)
        zerolm_client_rank{r}.pt        per rank: data-pipeline state, RNG states
        config.yaml                     the resolved config of the run
        zerolm_complete.json            written after every rank saved: step, tokens, metrics,
                                        and the size of every file (truncation check)

A checkpoint whose completion record is missing, or whose files no longer have the recorded
sizes (a kill mid-write, a truncated copy), is skipped with a warning and the previous good one
is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

COMPLETE = "zerolm_complete.json"
LATEST = "latest"


def tag_for(step: int) -> str:
    """The checkpoint tag of an optimizer step: ``step_00000040``."""
    return f"step_{step:08d}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def client_state_file(root: Path, tag: str, rank: int) -> Path:
    """Where a rank's client state lives."""
    return root / tag / f"zerolm_client_rank{rank}.pt"


def save_client_state(root: Path, tag: str, rank: int, state: dict[str, Any]) -> None:
    """Write one rank's client state (temp file + rename)."""
    path = client_state_file(root, tag, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_client_state(root: Path, tag: str, rank: int) -> dict[str, Any]:
    """Read one rank's client state."""
    return torch.load(client_state_file(root, tag, rank), map_location="cpu", weights_only=False)


def mark_complete(root: Path, tag: str, record: dict[str, Any], keep_last: int) -> None:
    """On rank 0, after every rank saved: write the completion record with the size of every
    file, then point ``latest`` at ``tag``, then delete checkpoints beyond the newest ``keep_last``.
    """
    d = root / tag
    files = {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file() and p.name != COMPLETE}
    _atomic_write(d / COMPLETE, json.dumps({**record, "tag": tag, "files": files}, indent=1, sort_keys=True))
    _atomic_write(root / LATEST, tag + "\n")
    complete = [t for t in list_tags(root) if (root / t / COMPLETE).is_file()]
    for old in complete[:-keep_last]:
        shutil.rmtree(root / old, ignore_errors=True)
    for t in list_tags(root):  # debris of interrupted saves older than the newest good one
        if t < tag and not (root / t / COMPLETE).is_file():
            shutil.rmtree(root / t, ignore_errors=True)


def list_tags(root: Path) -> list[str]:
    """All ``step_*`` directories, oldest first."""
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def check(root: Path, tag: str) -> str | None:
    """Why ``tag`` cannot be resumed from, or None when it is complete and intact."""
    rec_path = root / tag / COMPLETE
    if not rec_path.is_file():
        return "no completion record (interrupted while saving)"
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable completion record: {e}"
    for name, size in rec.get("files", {}).items():
        p = root / tag / name
        if not p.is_file():
            return f"missing file {name}"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, {size} were written (truncated or changed)"
    return None


def read_record(root: Path, tag: str) -> dict[str, Any]:
    """The completion record of a checkpoint."""
    return json.loads((root / tag / COMPLETE).read_text())


def resumable_tags(root: Path) -> list[str]:
    """Tags to try, newest first: the intact ones. Logs a warning for each newer checkpoint that
    is skipped and why (a corrupt newest checkpoint means falling back to the previous one)."""
    good = []
    for tag in reversed(list_tags(root)):
        why = check(root, tag)
        if why is None:
            good.append(tag)
        else:
            log.warning("checkpoint %s is not usable (%s); falling back to an older one", root / tag, why)
    return good
