"""Writing files and folders so that a reader never sees half of one and user data is never lost.

The one owner of atomic writes in zerolm: every file another process (or a resumed run) may read —
checkpoint records, result JSON, reports, figures, exported folders — is written to a temporary
name beside its destination and renamed into place (``os.replace`` is atomic on POSIX file
systems), so a kill mid-write leaves the old file or none, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from zerolm.errors import DataError


def _tmp_name(path: Path) -> Path:
    """A unique temporary name beside ``path`` (same folder, so the rename stays on one file system)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (temporary file beside it, then rename).

    Creates missing parent folders. Returns the path.

    Raises:
        OSError: the folder is not writable; the destination is left as it was.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(p)
    try:
        tmp.write_text(text, encoding=encoding)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def write_json(path: str | Path, obj: Any, indent: int | None = 1, **dumps_kwargs: Any) -> Path:
    """Write ``obj`` as JSON (with a trailing newline) atomically; ``dumps_kwargs`` go to
    :func:`json.dumps` (e.g. ``sort_keys=True``, ``default=str``, ``ensure_ascii=False``)."""
    return write_text(path, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]], **dumps_kwargs: Any) -> Path:
    """Write one JSON object per line atomically."""
    return write_text(path, "".join(json.dumps(r, **dumps_kwargs) + "\n" for r in rows))


def write_with(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Atomically create ``path`` with a writer that takes a path (``torch.save``, ``fig.savefig``,
    ``pyarrow.parquet.write_table`` …): the writer writes a temporary file, which is then renamed.

    The temporary name keeps the destination's suffix, so writers that infer a format from it
    (matplotlib) still do.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(p).with_suffix(p.suffix)
    try:
        writer(tmp)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def save_figure(fig: Any, path: str | Path, **savefig_kwargs: Any) -> Path:
    """Save a matplotlib figure atomically (``fig.savefig`` to a temporary file, then rename)."""
    return write_with(path, lambda tmp: fig.savefig(tmp, **savefig_kwargs))


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


@contextlib.contextmanager
def staged_dir(out: str | Path, is_ours: Callable[[Path], bool] | None = None, what: str = "output folder") -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it into place when the block ends cleanly.

    Usage::

        with staged_dir(out, is_ours=lambda p: (p / "meta.json").is_file(), what="export directory") as tmp:
            model.save_pretrained(tmp)
            write_json(tmp / "meta.json", meta)

    A reader of ``out`` sees the old folder or the new one, never half of one; on an exception the
    temporary folder is removed and ``out`` is untouched. The new folder gets mode 0755
    (``mkdtemp`` makes 0700) and its files are made readable by all (safetensors writes 0600).

    Args:
        out: the destination folder.
        is_ours: when given, an existing non-empty ``out`` must satisfy it (see
            :func:`check_replaceable`), checked before any work.
        what: the folder's name in error messages.

    Raises:
        DataError: ``out`` exists and may not be replaced.
    """
    out = Path(out)
    if is_ours is not None:
        check_replaceable(out, is_ours, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        for f in tmp.rglob("*"):
            if f.is_file() and not f.is_symlink():
                os.chmod(f, f.stat().st_mode | 0o644)  # safetensors writes its file 0600
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
