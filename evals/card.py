"""The evaluations' contribution to a model card (``zerolm publish --evals DIR``).

A results folder is what ``zerolm eval fewshot`` (``fewshot.json``) or ``zerolm eval bias``
(``bias.json``) wrote; each found file becomes one markdown section. Where the sections go in the card
(after :data:`zerolm.card.SECTION_MARK`) is the card module's business.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zerolm.errors import DataError

FEWSHOT_FILE = "fewshot.json"
BIAS_FILE = "bias.json"


def fewshot_card_section(result: dict[str, Any]) -> str:
    """A ``## Few-shot evaluation`` markdown section: one row per task, k and metric (value ± standard
    error, items scored)."""
    rows = ["| task | k | metric | value | ± s.e. | items |", "|---|---:|---|---:|---:|---:|"]
    for task, by_k in result.get("results", {}).items():
        for k in sorted(by_k, key=int):
            e = by_k[k]
            for metric, v in e["metrics"].items():
                se = e["stderr"].get(metric)
                rows.append(f"| {task} | {k} | {metric} | {v:.4f} | {'' if se is None else f'{se:.4f}'} | {e['n']} |")
    limit = result.get("limit")
    note = (f"Scored with `zerolm eval fewshot` (log-likelihood of each choice for multiple-choice tasks, greedy "
            f"generation for the others){'' if limit is None else f'; the first {limit} test items of each task'}.")
    return "## Few-shot evaluation\n\n" + note + "\n\n" + "\n".join(rows) + "\n"


def evals_card_sections(dirs: list[str | Path]) -> tuple[str, list[Path]]:
    """The markdown sections for every results file in ``dirs``, and the files to upload with them
    (the JSON results and their PNG charts).

    Raises:
        DataError: a folder does not exist, holds neither ``fewshot.json`` nor ``bias.json``, or a
            results file is unreadable.
    """
    from zerolm.evals.bias_report import model_card_section

    sections, files = [], []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise DataError(f"evaluation results folder {d} not found")
        found = False
        for name, render in ((FEWSHOT_FILE, fewshot_card_section), (BIAS_FILE, model_card_section)):
            path = d / name
            if not path.is_file():
                continue
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise DataError(f"{path}: unreadable evaluation results: {e}") from e
            sections.append(render(result).strip() + "\n")
            files += [path, *sorted(d.glob("*.png"))]
            found = True
        if not found:
            raise DataError(f"{d} holds no {FEWSHOT_FILE} or {BIAS_FILE} (write one with `zerolm eval fewshot|bias --out {d}`)")
    return "\n".join(sections), list(dict.fromkeys(files))
