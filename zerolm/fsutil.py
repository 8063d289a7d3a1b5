"""Writing output folders so that a reader never sees half of one and user data is never lost."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from zerolm.errors import DataError


def check_replaceable(out: Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """Refuse to overwrite anything but an empty folder or one zerolm wrote before.

    Args:
        out: the output folder.
        is_ours: tells whether an existing non-empty folder is a previous output of this kind
            (e.g. it holds the expected manifest).
        what: the folder's name in messages (e.g. ``"corpus.out_dir"``, ``"export directory"``).

    Raises:
        DataError: ``out`` is a file, or a non-empty folder that is not ours.
    """
    if out.exists() and not out.is_dir():
        raise DataError(f"{what} {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not is_ours(out):
        raise DataError(f"{what} {out} is not empty and is not a previous zerolm output: refusing to replace it "
                        "(choose another folder or remove it)")


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out`` by renames on one filesystem. An existing
    ``out`` is moved aside first and deleted only after the swap; on failure it is put back."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
