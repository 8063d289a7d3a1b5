"""Reading raw documents from local or fsspec paths, sharded, resumable, and robust to bad input.

A source (:class:`zerolm.config.SourceConfig`) names paths or globs of ``.txt`` (one document per
line), ``.jsonl`` (one JSON object per line, text in ``text_field``), ``.parquet`` or ``.arrow``
files, optionally compressed (``.gz``, ``.bz2``, ``.xz``, ``.zst``), on any fsspec filesystem; or a
Hugging Face dataset (``hf_dataset``: a ``save_to_disk`` folder, a local dataset repository or a Hub
id) and its ``split``, whose files are read the same way.

Sharding. The documents of a source are split among ``num_shards = world_size × num_workers``
readers so that no document is read twice in one pass:

* when the source has at least as many files as readers, each reader owns whole files
  (the file list is shuffled per epoch with a seeded RNG, then dealt round-robin);
* otherwise every reader walks every file and owns every ``num_shards``-th record
  (the same rule :func:`datasets.distributed.split_dataset_by_node` uses when shards do not divide).
  For a plain local text file, the readers of one process share an index of its line starts
  (built once, :func:`line_starts`) and seek straight to their records instead of reading every line.

Positions. Every document comes with a :class:`DocPosition` (epoch, index in the reader's file plan,
record number, byte offset of the record in the uncompressed stream). Restarting a reader at a
position re-reads that exact record first, so a resumed stream continues exactly where it stopped.

Bad input never stops the stream: each bad record yields a :class:`Skip` with a reason
(``invalid_utf8``, ``empty``, ``too_long``, ``malformed_json``, ``missing_field``, ``binary``) that the
caller counts; so does a bad file (:data:`FILE_REASONS`: ``unreadable_file`` — cannot be opened, e.g. a
bad parquet footer or no permission; ``binary_file``; ``damaged_file`` — a truncated or corrupt
compressed stream, a parquet row group that cannot be read, an I/O error mid-read: the documents
before the damage are kept, the rest of the file is skipped, a warning names the file and the record
where it broke). Damage is met at the same record on every pass, so a resume gives the same stream. A path that matches nothing or a
format that is not supported raises :class:`~zerolm.errors.DataError` before any reading starts.
"""

from __future__ import annotations

import io
import json
import logging
import lzma
import os
import random
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import fsspec
import numpy as np

from zerolm.config import SourceConfig
from zerolm.errors import DataError

log = logging.getLogger(__name__)

FILE_REASONS = frozenset({"unreadable_file", "binary_file", "damaged_file"})  # skips of (the rest of) a file


def _damage_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged file raises: truncated streams (EOFError), corrupt gzip/bz2 and I/O
    errors (OSError), xz (LZMAError), zlib, zstandard (ZstdError) and pyarrow (ArrowInvalid is a
    ValueError, ArrowIOError an OSError)."""
    errors: list[type[BaseException]] = [EOFError, OSError, ValueError, zlib.error, lzma.LZMAError]
    try:
        import zstandard

        errors.append(zstandard.ZstdError)
    except ImportError:  # pragma: no cover - zstandard is a dependency
        pass
    return tuple(errors)


_DAMAGE = _damage_errors()

_COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}
# the package that gives fsspec a codec the standard library lacks (Python < 3.14 has no zstd)
_CODEC_PACKAGES = {"zstd": "zstandard"}
_FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}
_SNIFF_BYTES = 8192
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileRef:
    """One input file: a full path or URL, its format and compression (None when plain)."""

    url: str
    format: str
    compression: str | None


class DocPosition(NamedTuple):
    """Where a record starts: ``epoch``, ``file_pos`` (index into the reader's file plan for that
    epoch), ``record`` (line or row number in the file, 0-based) and ``offset`` (byte offset of the
    line in the uncompressed stream; 0 for parquet)."""

    epoch: int
    file_pos: int
    record: int
    offset: int


class Doc(NamedTuple):
    """A good document and the position of its record."""

    text: str
    pos: DocPosition


class Skip(NamedTuple):
    """A skipped record (or whole file) and why; ``where`` is ``path:line`` for the log."""

    reason: str
    where: str


def mix64(*values: int) -> int:
    """Deterministic 64-bit hash of integers (splitmix64 finaliser, Steele et al. 2014), used to
    derive per-epoch / per-sample seeds that do not depend on Python's hash randomisation."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h


def _detect(url: str, declared: str) -> tuple[str | None, str | None]:
    name = url.rsplit("/", 1)[-1].lower()
    compression = None
    for ext, comp in _COMPRESSIONS.items():
        if name.endswith(ext):
            compression, name = comp, name[: -len(ext)]
            break
    if declared != "auto":
        return declared, compression
    for ext, fmt in _FORMATS.items():
        if name.endswith(ext):
            return fmt, compression
    return None, compression


def resolve_files(source: SourceConfig, key: str = "data.sources") -> list[FileRef]:
    """Expand a source's paths and globs into files, in sorted order.

    Args:
        source: the source config.
        key: the config key of the source, used in error messages.

    Returns:
        The source's files (at least one).

    Raises:
        DataError: a path or glob matches nothing, a file's format cannot be told from its name
            (set ``format`` explicitly), or its compression has no codec installed (``.zst`` needs
            the ``zstandard`` package) — the message names the path and the config key.
    """
    if source.hf_dataset:
        return _resolve_hf_dataset(source, key)
    files: list[FileRef] = []
    for pattern in source.paths:
        try:
            fs, _, paths = fsspec.get_fs_token_paths(pattern)
        except Exception as e:  # unknown protocol, missing optional filesystem package, …
            raise DataError(f"{key} (source {source.name!r}): cannot open {pattern!r}: {e}") from e
        paths = [p for p in paths if fs.isfile(p)]
        if not paths:
            raise DataError(f"{key} (source {source.name!r}): no file matches {pattern!r}")
        for p in sorted(paths):
            url = fs.unstrip_protocol(p) if fs.protocol not in ("file", ("file", "local")) else p
            fmt, comp = _detect(url, source.format)
            if fmt is None:
                raise DataError(
                    f"{key} (source {source.name!r}): unknown format of {url!r}; supported: "
                    ".txt, .jsonl, .parquet (optionally .gz/.bz2/.xz/.zst), or set format explicitly"
                )
            if comp is not None and comp not in fsspec.available_compressions():
                raise DataError(
                    f"{key} (source {source.name!r}): {url!r} is {comp}-compressed but fsspec has no {comp} "
                    f"codec in this environment; install {_CODEC_PACKAGES.get(comp, 'a ' + comp + ' codec')!r}"
                )
            files.append(FileRef(url, fmt, comp))
    return files


_LINE_INDEX: dict[tuple[str, int, int], np.ndarray] = {}
_INDEX_CHUNK = 1 << 24


def line_starts(path: str) -> np.ndarray:
    """Byte offsets (int64, ascending) at which the lines of a plain local file start; a final
    newline starts no line. Cached per process, keyed by path, size and modification time (so the
    readers of every logical shard in a process scan each file once); read in 16 MiB chunks."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    cached = _LINE_INDEX.get(key)
    if cached is not None:
        return cached
    parts, base = [np.zeros(1, dtype=np.int64)], 0
    with open(path, "rb") as f:
        while chunk := f.read(_INDEX_CHUNK):
            parts.append(np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10).astype(np.int64) + base + 1)
            base += len(chunk)
    starts = np.concatenate(parts)
    if starts[-1] >= base:  # a newline at the very end (or an empty file) starts no line
        starts = starts[:-1]
    if len(_LINE_INDEX) > 4096:  # bound the cache (8 bytes per line of every file seen)
        _LINE_INDEX.clear()
    _LINE_INDEX[key] = starts
    return starts


_RETRIES = 3  # attempts after the first, for a remote file that fails to open or mid-read
_BACKOFF_S = 0.5  # doubled after each failed attempt


def _is_remote(ref: "FileRef") -> bool:
    """A URL with a protocol other than the local file system's."""
    return "://" in ref.url and not ref.url.startswith("file://")


def _transient(e: BaseException) -> bool:
    """An error worth a retry (network, time-out, I/O) rather than damage in the bytes themselves (a
    truncated or corrupt compressed stream, which a retry would only meet again)."""
    if isinstance(e, (EOFError, zlib.error, lzma.LZMAError, ValueError)):
        return False
    return isinstance(e, (OSError, TimeoutError, ConnectionError)) and not isinstance(
        e, (FileNotFoundError, PermissionError, IsADirectoryError)) and "CRC" not in str(e) and "Invalid data" not in str(e)


def _open_with_retries(ref: "FileRef", remote: bool):
    """``fsspec.open(…).open()`` of a file; a remote one is retried ``_RETRIES`` times with exponential
    backoff on a transient error (a missing file or a denied permission is not retried)."""
    for attempt in range(_RETRIES + 1 if remote else 1):
        try:
            return fsspec.open(ref.url, "rb", compression=ref.compression).open()
        except Exception as e:
            if attempt == _RETRIES or not remote or not _transient(e):
                raise
            log.warning("opening %s failed (%s: %s); retry %d of %d", ref.url, type(e).__name__, e, attempt + 1, _RETRIES)
            time.sleep(_BACKOFF_S * 2 ** attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def _is_plain_local(ref: "FileRef") -> bool:
    return ref.compression is None and "://" not in ref.url and os.path.isfile(ref.url)


#: shards' bytes per epoch (largest ÷ smallest) above which :func:`unequal_shards_warning` speaks
UNEQUAL_SHARDS_RATIO = 1.5


def unequal_shards_warning(name: str, files: list[FileRef], num_shards: int, seed: int = 0,
                           shuffle_files: bool = True) -> str | None:
    """What to tell the user when whole files of unequal size are dealt to the logical shards, else None.

    With at least as many files as shards (:class:`ShardedReader`'s ``by_file`` dealing) each logical shard
    reads whole files and starts its next epoch when its own files are done. Shards whose files are
    smaller run ahead by epochs: one pass of the loader is then no longer one pass over the corpus (some
    documents are read twice before others once), which makes the data order noisier than a uniform
    shuffle at short horizons (the long-run share of each document stays proportional to its size).
    Files of equal size keep the shards in step: ``zerolm data prepare`` writes them.

    Speaks when the shards' bytes in epoch 0 differ by more than :data:`UNEQUAL_SHARDS_RATIO`; silent with
    fewer files than shards (every shard strides over every file) or when a file is remote (no size read).
    """
    if len(files) < num_shards or any(_is_remote(f) or not os.path.isfile(f.url) for f in files):
        return None
    sizes = [os.path.getsize(f.url) for f in files]
    reader = ShardedReader(files, "text", 0, num_shards, seed=seed, shuffle_files=shuffle_files, name=name)
    per_shard = [0] * num_shards
    for i, f in enumerate(reader.file_order(0)):
        per_shard[i % num_shards] += sizes[f]
    lo, hi = min(per_shard), max(per_shard)
    if lo and hi / lo <= UNEQUAL_SHARDS_RATIO:
        return None
    return (f"source {name!r}: its {len(files)} files ({min(sizes) / 1e6:.2f}–{max(sizes) / 1e6:.2f} MB) are dealt "
            f"whole to {num_shards} logical shards (the global batch), which then read {lo / 1e6:.2f}–{hi / 1e6:.2f} MB "
            "per epoch each: the shards drift apart by epochs, and one pass of the loader reads some documents "
            "twice before others once. Files of equal size avoid it (zerolm data prepare writes them).")


def _saved_dataset_files(folder: Path, source: SourceConfig, key: str) -> list[FileRef]:
    """The Arrow files of a ``Dataset.save_to_disk`` folder, in order (its ``state.json``)."""
    try:
        state = json.loads((folder / "state.json").read_text())
        names = [f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{key} (source {source.name!r}): {folder} is not a readable save_to_disk dataset: {e}") from e
    missing = [n for n in names if not (folder / n).is_file()]
    if not names or missing:
        raise DataError(f"{key} (source {source.name!r}): {folder}/state.json lists {len(names)} file(s), missing: {missing}")
    return [FileRef(str(folder / n), "arrow", None) for n in names]


def _resolve_hf_dataset(source: SourceConfig, key: str) -> list[FileRef]:
    """The files of ``source.hf_dataset``'s ``source.split``: a ``Dataset``/``DatasetDict.save_to_disk``
    folder (its Arrow files), or a local dataset repository or Hub id (the data files ``datasets``
    resolves for the split — its card's ``configs``, else its file-name conventions — read as parquet,
    jsonl, txt or arrow; a Hub id needs the network and reads ``hf://`` URLs)."""
    ref, split = source.hf_dataset, source.split
    folder = Path(ref)
    if folder.is_dir() and (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        if split not in splits:
            raise DataError(f"{key} (source {source.name!r}): {ref} has no split {split!r}; its splits: {splits}")
        return _saved_dataset_files(folder / split, source, key)
    if folder.is_dir() and (folder / "state.json").is_file():
        return _saved_dataset_files(folder, source, key)
    import datasets

    try:
        builder = datasets.load_dataset_builder(ref)
        data_files = builder.config.data_files or {}
    except Exception as e:  # noqa: BLE001 - not found, offline, mixed formats …
        raise DataError(f"{key} (source {source.name!r}): cannot resolve Hugging Face dataset {ref!r}: "
                        f"{type(e).__name__}: {e}") from e
    if split not in data_files:
        raise DataError(f"{key} (source {source.name!r}): dataset {ref!r} has no split {split!r}; its splits: "
                        f"{sorted(data_files)}")
    files = []
    for url in data_files[split]:
        fmt, comp = _detect(str(url), source.format)
        if fmt is None:
            raise DataError(f"{key} (source {source.name!r}): unknown format of {url!r} in dataset {ref!r}")
        files.append(FileRef(str(url), fmt, comp))
    if not files:
        raise DataError(f"{key} (source {source.name!r}): dataset {ref!r} split {split!r} has no data files")
    return files


def _head(f) -> bytes:
    """Up to the first ``_SNIFF_BYTES`` bytes of a stream positioned at 0, leaving it at 0
    (a seekable file is rewound; a forward-only stream wrapped in ``io.BufferedReader`` is peeked)."""
    if isinstance(f, io.BufferedReader) and not f.seekable():
        return f.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
    head = f.read(_SNIFF_BYTES)
    f.seek(0)
    return head


def _skip_to(f, offset: int) -> None:
    """Move a stream at position 0 to byte ``offset`` of the uncompressed data (forward-only streams
    are read and discarded in ``_READ_CHUNK`` pieces)."""
    if f.seekable():
        f.seek(offset)
        return
    left = offset
    while left > 0:
        chunk = f.read(min(left, _READ_CHUNK))
        if not chunk:
            return
        left -= len(chunk)


class ShardedReader:
    """Reads one shard of a source's documents, forever (epochs) or for ``max_epochs``.

    Args:
        files: the source's files (:func:`resolve_files`).
        text_field: the JSON key / parquet column holding the text.
        shard: this reader's index in ``[0, num_shards)``.
        num_shards: readers sharing the source (data-parallel ranks × loader workers).
        seed: seeds the per-epoch file shuffle.
        shuffle_files: shuffle the file order each epoch.
        max_document_bytes: longer records are skipped as ``too_long`` (never held in memory whole).
        name: the source's name (for messages).

    Iterating :meth:`read` yields :class:`Doc` and :class:`Skip` items in a deterministic order that
    depends only on the arguments, the epoch and the data.
    """

    def __init__(
        self,
        files: list[FileRef],
        text_field: str,
        shard: int,
        num_shards: int,
        seed: int = 0,
        shuffle_files: bool = True,
        max_document_bytes: int = 1_000_000,
        name: str = "",
    ) -> None:
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} not in [0, {num_shards})")
        self.files = files
        self.text_field = text_field
        self.shard = shard
        self.num_shards = num_shards
        self.seed = seed
        self.shuffle_files = shuffle_files
        self.max_document_bytes = max_document_bytes
        self.name = name
        self.by_file = len(files) >= num_shards
        self._bad_files: list[str] = []  # files of the current epoch that could not be read (for the error)

    def file_order(self, epoch: int) -> list[int]:
        """The source's file indices in the order of ``epoch`` (shuffled by ``(seed, epoch)`` when
        ``shuffle_files``); with ``by_file``, position ``i`` goes to shard ``i % num_shards``."""
        order = list(range(len(self.files)))
        if self.shuffle_files:
            random.Random(mix64(self.seed, epoch)).shuffle(order)
        return order

    def plan(self, epoch: int) -> list[tuple[int, int, int]]:
        """This reader's files for ``epoch`` as ``(file index, stride, first owned record)``."""
        order = self.file_order(epoch)
        if self.by_file:
            return [(f, 1, 0) for i, f in enumerate(order) if i % self.num_shards == self.shard]
        n = self.num_shards
        return [(f, n, (self.shard - f) % n) for f in order]

    def read(self, start: DocPosition | None = None, max_epochs: int | None = None) -> Iterator[Doc | Skip]:
        """Yield documents and skips from ``start`` (inclusive) on.

        Raises:
            DataError: reading forever (``max_epochs=None``) and a whole epoch produced no document
                for this shard (empty or all-bad input, or fewer records than shards).
        """
        epoch, file_pos, record, offset = start if start is not None else (0, 0, 0, 0)
        while max_epochs is None or epoch < max_epochs:
            plan = self.plan(epoch)
            produced = False
            self._bad_files = []
            for fp in range(file_pos, len(plan)):
                fidx, stride, first = plan[fp]
                ref = self.files[fidx]
                rec0, off0 = (record, offset) if fp == file_pos else (0, 0)
                reader = {"parquet": self._read_parquet, "arrow": self._read_arrow}.get(ref.format, self._read_lines)
                for item in reader(ref, epoch, fp, stride, first, rec0, off0):
                    produced = produced or isinstance(item, Doc)
                    yield item
            if max_epochs is None and not produced and (start is None or epoch > start.epoch):
                src = f"source {self.name!r}: " if self.name else ""
                if self._bad_files and len(self._bad_files) >= len(plan):
                    raise DataError(
                        f"{src}every file is unreadable or damaged ({len(self._bad_files)} of {len(self.files)} read by "
                        f"shard {self.shard}/{self.num_shards}; first: {self._bad_files[0]}): no document to train on"
                    )
                raise DataError(
                    f"{src}shard {self.shard}/{self.num_shards} got no document in epoch {epoch} from "
                    f"{len(self.files)} file(s) (first: {self.files[0].url}"
                    + (f"; unreadable or damaged: {len(self._bad_files)}, first {self._bad_files[0]}" if self._bad_files else "")
                    + "); too few good records for this many logical shards?"
                )
            epoch, file_pos, record, offset = epoch + 1, 0, 0, 0

    # -- formats -----------------------------------------------------------------------------
    def _read_lines(self, ref: FileRef, epoch: int, fp: int, stride: int, first: int, rec: int, off: int):
        owner_of_file = first == 0  # the reader owning record 0 speaks for file-level problems
        remote = _is_remote(ref)
        retries = 0
        while True:
            try:
                f = _open_with_retries(ref, remote)
                if not f.seekable():  # zstd streams: no seek, no readline; buffer them (peek, readline)
                    f = io.BufferedReader(f, buffer_size=_SNIFF_BYTES)
            except Exception as e:
                self._bad_files.append(f"{ref.url} ({type(e).__name__}: {e})")
                if owner_of_file and rec == 0:
                    log.warning("cannot open %s: %s", ref.url, e)
                    yield Skip("unreadable_file", ref.url)
                return
            self._at, self._at_off = rec, off
            with f:
                try:
                    yield from self._lines_of(f, ref, epoch, fp, stride, first, rec, off)
                    return
                except _DAMAGE as e:
                    if remote and retries < _RETRIES and _transient(e):  # reopen where it broke
                        retries += 1
                        log.warning("reading %s failed at line %d (%s: %s); retry %d of %d", ref.url, self._at + 1,
                                    type(e).__name__, e, retries, _RETRIES)
                        time.sleep(_BACKOFF_S * 2 ** (retries - 1))
                        rec, off = self._at, self._at_off
                        continue
                    if owner_of_file:  # every reader of the file meets the damage; one counts it
                        yield self._damaged(ref, f"line {self._at + 1}", e)
                    return

    def _damaged(self, ref: FileRef, where: str, e: BaseException) -> Skip:
        self._bad_files.append(f"{ref.url} at {where} ({type(e).__name__}: {e})")
        log.warning("%s is damaged at %s (%s: %s): the documents before it are kept, the rest of the file is "
                    "skipped", ref.url, where, type(e).__name__, e)
        return Skip("damaged_file", f"{ref.url}:{where}")

    def _lines_of(self, f, ref: FileRef, epoch: int, fp: int, stride: int, first: int, rec: int, off: int):
        owner_of_file = first == 0
        if rec == 0:
            if b"\x00" in _head(f):
                self._bad_files.append(f"{ref.url} (binary)")
                if owner_of_file:
                    log.warning("skipping binary file %s", ref.url)
                    yield Skip("binary_file", ref.url)
                return
        elif off:
            _skip_to(f, off)
        cap = self.max_document_bytes
        if stride > 1 and _is_plain_local(ref):
            yield from self._read_indexed(f, ref, epoch, fp, stride, first, rec)
            return
        while True:
            line = f.readline(cap + 1)
            if not line:
                return
            start_off, n = off, len(line)
            too_long = n > cap and not line.endswith(b"\n")
            if too_long:  # drain the rest of an oversized line without holding it
                while True:
                    chunk = f.readline(_READ_CHUNK)
                    n += len(chunk)
                    if not chunk or chunk.endswith(b"\n"):
                        break
            this, rec, off = rec, rec + 1, off + n
            self._at, self._at_off = rec, off
            if (this - first) % stride:
                continue
            yield self._parse_line(None if too_long else line, ref, f"{ref.url}:{this + 1}",
                                   DocPosition(epoch, fp, this, start_off))

    def _read_indexed(self, f, ref: FileRef, epoch: int, fp: int, stride: int, first: int, rec: int):
        """The owned records of a plain local file from record ``rec`` on, found through its line
        index (:func:`line_starts`): a seek and one read per owned record. Yields exactly what the
        line-by-line path yields (the same items, positions and skip reasons)."""
        starts = line_starts(ref.url)
        size = os.path.getsize(ref.url)
        cap = self.max_document_bytes
        this = rec + (first - rec) % stride
        while this < len(starts):
            self._at = this
            start = int(starts[this])
            end = int(starts[this + 1]) if this + 1 < len(starts) else size
            f.seek(start)
            too_long = end - start > cap + 1 or (end - start == cap + 1 and this + 1 == len(starts)
                                                   and not f.read(cap + 1).endswith(b"\n"))
            line = None
            if not too_long:
                f.seek(start)
                line = f.read(end - start)
            yield self._parse_line(line, ref, f"{ref.url}:{this + 1}", DocPosition(epoch, fp, this, start))
            this += stride

    def _parse_line(self, line: bytes | None, ref: FileRef, where: str, pos: DocPosition) -> Doc | Skip:
        """One line of a txt/jsonl file as a document, or why it is skipped (``line`` None: too long)."""
        if line is None:
            return Skip("too_long", where)
        if b"\x00" in line:
            return Skip("binary", where)
        try:
            s = line.decode("utf-8")
        except UnicodeDecodeError:
            return Skip("invalid_utf8", where)
        if ref.format == "jsonl":
            if not s.strip():
                return Skip("empty", where)
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                return Skip("malformed_json", where)
            if not isinstance(obj, dict):
                return Skip("malformed_json", where)
            text = obj.get(self.text_field)
            if not isinstance(text, str):
                return Skip("missing_field", where)
        else:
            text = s[:-1] if s.endswith("\n") else s
        if not text.strip():
            return Skip("empty", where)
        return Doc(text, pos)

    def _read_parquet(self, ref: FileRef, epoch: int, fp: int, stride: int, first: int, rec: int, off: int):
        import pyarrow.parquet as pq

        owner_of_file = first == 0
        try:
            fobj = fsspec.open(ref.url, "rb", compression=ref.compression).open()
            pf = pq.ParquetFile(fobj)
        except Exception as e:
            self._bad_files.append(f"{ref.url} ({type(e).__name__}: {e})")
            if owner_of_file and rec == 0:
                log.warning("cannot read parquet %s: %s", ref.url, e)
                yield Skip("unreadable_file", ref.url)
            return
        with fobj:
            has_field = self.text_field in pf.schema_arrow.names
            row0 = 0
            for rg in range(pf.num_row_groups):
                nrows = pf.metadata.row_group(rg).num_rows
                if row0 + nrows <= rec:
                    row0 += nrows
                    continue
                try:
                    column = pf.read_row_group(rg, columns=[self.text_field]).column(0).to_pylist() if has_field else [None] * nrows
                except _DAMAGE as e:
                    if owner_of_file:
                        yield self._damaged(ref, f"row group {rg} (rows {row0}–{row0 + nrows - 1})", e)
                    return
                yield from self._rows(ref, column, has_field, row0, rec, stride, first, epoch, fp)
                row0 += nrows

    def _rows(self, ref: FileRef, column: list, has_field: bool, row0: int, rec: int, stride: int, first: int,
              epoch: int, fp: int):
        """The owned rows of one parquet row group / arrow record batch (rows ``row0`` on) from ``rec`` on."""
        for i in range(max(rec - row0, 0), len(column)):
            this = row0 + i
            if (this - first) % stride:
                continue
            where = f"{ref.url}:row {this}"
            text = column[i]
            if not has_field or not isinstance(text, str):
                yield Skip("missing_field" if not has_field or text is not None else "empty", where)
            elif not text.strip():
                yield Skip("empty", where)
            elif len(text.encode("utf-8")) > self.max_document_bytes:
                yield Skip("too_long", where)
            else:
                yield Doc(text, DocPosition(epoch, fp, this, 0))

    def _read_arrow(self, ref: FileRef, epoch: int, fp: int, stride: int, first: int, rec: int, off: int):
        """An Arrow IPC stream file (what ``datasets``' ``save_to_disk`` writes), batch by batch."""
        import pyarrow as pa

        owner_of_file = first == 0
        try:
            src = pa.memory_map(ref.url) if _is_plain_local(ref) else fsspec.open(ref.url, "rb").open()
            batches = pa.ipc.open_stream(src)
        except Exception as e:
            self._bad_files.append(f"{ref.url} ({type(e).__name__}: {e})")
            if owner_of_file and rec == 0:
                log.warning("cannot read arrow file %s: %s", ref.url, e)
                yield Skip("unreadable_file", ref.url)
            return
        with src:
            has_field = self.text_field in batches.schema.names
            row0 = 0
            try:
                for batch in batches:
                    n = batch.num_rows
                    if row0 + n > rec:
                        column = batch.column(self.text_field).to_pylist() if has_field else [None] * n
                        yield from self._rows(ref, column, has_field, row0, rec, stride, first, epoch, fp)
                    row0 += n
            except _DAMAGE as e:
                if owner_of_file:
                    yield self._damaged(ref, f"row {row0}", e)
