"""k-shot prompting evaluation: multiple-choice by log-likelihood, generation until a stop string.

``run_fewshot(model, tasks, shots, limit, out_dir)`` scores each task (:mod:`evals.tasks`) at each
k and writes ``out_dir/fewshot.json`` (metrics, standard errors, the exact prompt of the first item,
items per rank, items/s), ``out_dir/fewshot_items.jsonl`` (one line per scored item) and
``out_dir/fewshot_accuracy_vs_k.png``, and returns the result; ``zerolm eval fewshot``
(:mod:`zerolm.cli`) parses the command line and prints it. Its scoring loop is
:func:`evaluate_tasks` (tasks from :func:`load_tasks`, any built :class:`evals.lm.LanguageModel`, the
caller's rank/world/gather), which :mod:`evals.inloop` also runs on the live model inside the
pretraining loop (``train.eval_tasks``).

Request types, as lm-evaluation-harness defines them (Gao et al., "A framework for few-shot
language model evaluation", v0.4):

* ``multiple_choice``: for each choice c, log p(target_delimiter + c | prompt) in nats. ``acc`` =
  argmax of the log-likelihoods is the gold choice; ``acc_norm`` = argmax of log-likelihood divided
  by the choice's length in characters (lm-eval 0.4's ``acc_norm``: ``len(choice)``, which equals
  the UTF-8 byte count on ASCII text); ``acc_bytes`` divides by the UTF-8 byte count.
* ``generate_until``: greedy decoding until a stop string (``generation_kwargs.until``, default the
  few-shot delimiter) or ``max_gen_toks`` tokens; ``exact_match`` compares the generation with the
  reference (options as lm-eval's ``exact_match``: ``ignore_case``, ``ignore_punctuation``,
  ``ignore_numbers``, ``regexes_to_ignore``; plus ``strip``: drop surrounding whitespace first),
  ``token_f1`` is the SQuAD bag-of-words F1 (Rajpurkar et al. 2016).

Standard errors are those of a mean: sample standard deviation (n − 1) / √n (lm-eval's
``mean_stderr``).

Multiple-choice scoring (:func:`evals.scoring.shared_context_loglikelihood`) batches several
documents per forward pass: inputs are packed first-fit-decreasing into rows, each alone behind a
block-diagonal causal mask with its own position ids, so long-tailed prompt lengths waste no padding;
single-token choices (BoolQ, CommonsenseQA) all come from one row of logits at the prompt's last
position; a prompt shared by multi-token choices runs once and its key/value cache is reused for every
choice; the vocabulary projection is applied only where a log-probability is needed. Tokenisation is
lm-eval's (``evals.lm``): the
continuation is the tail of ``encode(prompt + continuation)`` beyond ``encode(prompt)``, so the
scores equal one full forward pass per (prompt, choice) up to float rounding, including lm-eval's
left truncation of inputs longer than the model's positions.

Data parallel: under ``torchrun`` or ``accelerate launch`` each process scores every
``world_size``-th document (``accelerate.PartialState``), per-item results are gathered, and
metrics are computed from all items in document order, so 1 and N processes give the same numbers.
Few-shot examples are drawn per document (:meth:`evals.tasks.Task.fewshot_examples`), independently
of the split across processes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import string
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from zerolm.evals.scoring import shared_context_loglikelihood
from zerolm.evals.tasks import MetricSpec, Task, load_task
from zerolm.errors import ConfigError, DataError
from zerolm.fsutil import save_figure, write_json, write_jsonl
from zerolm.pretrain.progress import progress_bar

log = logging.getLogger(__name__)

RESULT_FILE = "fewshot.json"
ITEMS_FILE = "fewshot_items.jsonl"
PLOT_FILE = "fewshot_accuracy_vs_k.png"
_CHUNK_BATCHES = 8  # multiple-choice documents scored per call (× batch_size): one key/value-cache window


# ------------------------------------------------------------------ metrics

def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean: sample std (ddof 1) / √n; None for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(n))


def _normalise(text: str, options: dict[str, Any]) -> str:
    if options.get("strip", False):
        text = text.strip()
    for pattern in options.get("regexes_to_ignore") or []:
        text = re.sub(pattern, "", text)
    if options.get("ignore_case"):
        text = text.lower()
    if options.get("ignore_punctuation"):
        text = text.translate(str.maketrans("", "", string.punctuation))
    if options.get("ignore_numbers"):
        text = text.translate(str.maketrans("", "", string.digits))
    return text


def exact_match(prediction: str, reference: str, **options) -> float:
    """1.0 if the normalised prediction equals the normalised reference, else 0.0 (see module doc)."""
    return float(_normalise(prediction, options) == _normalise(reference, options))


def token_f1(prediction: str, reference: str, **options) -> float:
    """Bag-of-words F1 between whitespace tokens of prediction and reference (SQuAD's F1,
    Rajpurkar et al. 2016); 1.0 when both are empty."""
    p, r = _normalise(prediction, options).split(), _normalise(reference, options).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def multiple_choice_metrics(lls: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """``acc``, ``acc_norm`` (÷ characters) and ``acc_bytes`` (÷ UTF-8 bytes) of one item.

    Args:
        lls: log-likelihood (nats) of each choice's continuation.
        choices: the choice strings (without the target delimiter), for the lengths.
        gold: index of the right choice.

    Ties go to the first choice (``numpy.argmax``), as in lm-eval.
    """
    lls_a = np.asarray(lls, dtype=np.float64)
    chars = np.asarray([float(len(c)) for c in choices])
    nbytes = np.asarray([float(len(c.encode("utf-8"))) for c in choices])
    return {"acc": float(int(np.argmax(lls_a)) == gold),
            "acc_norm": float(int(np.argmax(lls_a / chars)) == gold),
            "acc_bytes": float(int(np.argmax(lls_a / nbytes)) == gold)}


# ------------------------------------------------------------------ scoring

def _item_record(task: Task, doc_id: int, k: int, seed: int) -> dict[str, Any]:
    doc = task.test_docs[doc_id]
    rec: dict[str, Any] = {"doc_id": doc_id, "context": task.build_context(doc_id, k, seed)}
    if task.config.output_type == "multiple_choice":
        rec["choices"] = task.doc_to_choice(doc)
        rec["gold"] = task.gold_index(doc)
    else:
        rec["reference"] = task.target_text(doc)
    return rec


def score_items(lm, task: Task, doc_ids: Sequence[int], k: int, seed: int,
                shared_context: bool = True) -> list[dict[str, Any]]:
    """Score documents ``doc_ids`` of ``task`` at ``k`` shots on this process.

    Returns:
        One record per document: ``doc_id``, ``context`` (the prompt), and for multiple-choice
        ``choices``, ``gold``, ``lls`` (nats per choice), ``greedy``, and the per-item metrics; for
        generation ``reference``, ``generation`` and the per-item metrics.
    """
    cfg = task.config
    records = [_item_record(task, i, k, seed) for i in doc_ids]
    if cfg.output_type == "multiple_choice":
        reqs, owner = [], []
        for r, rec in enumerate(records):
            for c in rec["choices"]:
                reqs.append((rec["context"], cfg.target_delimiter + c))
                owner.append(r)
        scorer = shared_context_loglikelihood if shared_context else (lambda m, q: m.loglikelihood(q))
        out = scorer(lm, reqs)
        for rec in records:
            rec["lls"], rec["greedy"] = [], []
        for r, (ll, greedy) in zip(owner, out):
            records[r]["lls"].append(ll)
            records[r]["greedy"].append(greedy)
        for rec in records:
            m = multiple_choice_metrics(rec["lls"], rec["choices"], rec["gold"])
            rec["metrics"] = {spec.name: m[spec.name] for spec in cfg.metric_list}
    else:
        gen = cfg.generation_kwargs
        until = list(gen.get("until") or [cfg.fewshot_delimiter])
        max_toks = int(gen.get("max_gen_toks", 256))
        outs = lm.generate_until([(rec["context"], until, max_toks) for rec in records])
        for rec, text in zip(records, outs):
            rec["generation"] = text
            rec["metrics"] = {spec.name: _GEN_METRICS[spec.name](text, rec["reference"], **spec.options)
                              for spec in cfg.metric_list}
    return records


_GEN_METRICS = {"exact_match": exact_match, "token_f1": token_f1}


def aggregate(records: list[dict[str, Any]],
              metrics: list[MetricSpec]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Mean and standard error of each metric over the records."""
    means, errs = {}, {}
    for spec in metrics:
        vals = [r["metrics"][spec.name] for r in records]
        means[spec.name] = float(np.mean(vals)) if vals else float("nan")
        errs[spec.name] = mean_stderr(vals)
    return means, errs


# ------------------------------------------------------------------ distribution

def _dist_state():
    """(rank, world_size, gather) from accelerate's PartialState (torchrun / accelerate launch /
    a single process)."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    # without cpu=True, accelerate treats a CPU-only torchrun process as a lone process (each rank would
    # score everything): ask for the CPU backend (gloo) whenever there is no GPU
    state = PartialState(cpu=not torch.cuda.is_available())
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if state.num_processes != launched:
        raise ConfigError(f"fewshot: launched with WORLD_SIZE={launched} but accelerate sees {state.num_processes} "
                          "process(es); on CPU use torchrun or `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu "
                          "--num_processes N --num_machines 1 --mixed_precision no --dynamo_backend no`")
    if state.num_processes == 1:
        return state, 0, 1, lambda objs: list(objs)
    return state, state.process_index, state.num_processes, gather_object


# ------------------------------------------------------------------ outputs

def plot_accuracy_vs_k(result: dict[str, Any], path: Path) -> None:
    """One line per task: its first metric against k, with ±1 standard error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    all_k: set[int] = set()
    for name, by_k in result["results"].items():
        ks = sorted(int(k) for k in by_k)
        metric = result["tasks"][name]["metrics"][0]
        ys = [by_k[str(k)]["metrics"][metric] for k in ks]
        es = [by_k[str(k)]["stderr"][metric] or 0.0 for k in ks]
        all_k.update(ks)
        ax.errorbar(ks, ys, yerr=es, marker="o", capsize=3, label=f"{name} ({metric})")
    ax.set_xticks(sorted(all_k))
    ax.set_xlabel("k (examples in the prompt)")
    ax.set_ylabel("accuracy / exact match")
    ax.set_ylim(0, 1)
    ax.set_title(f"few-shot: {result['model']}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=110)
    finally:
        plt.close(fig)


# ------------------------------------------------------------------ the evaluation

def load_tasks(tasks: Sequence[str], shots: Sequence[int], limit: int | None = None) -> list[Task]:
    """Validate the arguments and load every task (before any model is loaded).

    Args:
        tasks: built-in task names (:func:`evals.tasks.list_tasks`) or task YAML paths.
        shots: the k values (examples in each prompt).
        limit: the documents to score per task (None: all).

    Returns:
        The loaded tasks, in the given order.

    Raises:
        ConfigError: no task, an unknown task or bad task YAML, a task given twice, negative k or limit.
        DataError: a task's data cannot be read, or its few-shot pool is too small for the largest k.
    """
    if not tasks:
        raise ConfigError("fewshot: no tasks given")
    if not shots or any((not isinstance(k, int)) or k < 0 for k in shots):
        raise ConfigError(f"fewshot: shots must be non-negative ints, got {list(shots)!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"fewshot: limit must be positive, got {limit}")
    loaded = [load_task(t) for t in tasks]
    names = [t.name for t in loaded]
    if len(set(names)) != len(names):
        raise ConfigError(f"fewshot: a task is given twice ({', '.join(names)})")
    for t in loaded:
        pool = len(t.fewshot_docs) - (1 if t.fewshot_mode == "same_split" else 0)
        if max(shots) > pool:
            raise DataError(f"task {t.name}: {max(shots)}-shot needs {max(shots)} examples, its pool has {pool}")
    return loaded


def n_docs_of(task: Task, limit: int | None) -> int:
    """The test documents scored: the first ``limit`` (all when None)."""
    return len(task.test_docs) if limit is None else min(limit, len(task.test_docs))


def evaluate_tasks(lm, tasks: Sequence[Task], shots: Sequence[int], limit: int | None, seed: int,
                   rank: int = 0, world: int = 1, gather: Callable[[list], list] = list,
                   shared_context: bool = True, bar=None) -> dict[str, Any]:
    """Score already-loaded ``tasks`` at every k in ``shots`` with an already-built language model;
    the scoring loop of :func:`run_fewshot`, also used on the live model inside the training loop.

    Each process scores documents ``rank, rank + world, …`` of the first ``limit``; per-item records
    are gathered and metrics computed from all of them in document order, so any ``world`` gives the
    same numbers. Every process must call it with the same arguments (``gather`` is a collective).

    Args:
        lm: an :class:`evals.lm.LanguageModel` (causal or masked; in eval mode).
        tasks: tasks from :func:`load_tasks`.
        shots: the k values; scored in increasing order, each once.
        limit: score only the first ``limit`` test documents of each task (None: all).
        seed: seed of the few-shot draws.
        rank, world: this process's index and the number of processes.
        gather: ``list → list``: every process's list concatenated in rank order, on every process
            (``accelerate.utils.gather_object``; ``list`` itself for one process).
        shared_context: multiple-choice by :func:`shared_context_loglikelihood` or one full pass per choice.
        bar: a progress bar (``update``/``set_postfix_str``) advanced per scored item, or None.

    Returns:
        ``tasks`` (per task: source, output type, few-shot mode, sizes, metric names),
        ``results[task][str(k)]`` (``n``, ``metrics``, ``stderr``, ``first_prompt``,
        ``first_continuations``, ``items_per_rank``, ``seconds`` (the slowest process), ``items_per_second``),
        ``table`` (flat rows task/k/metric/value/stderr/n) and ``items`` (every scored record, with
        ``task`` and ``k``). A generation task on a masked LM is skipped: ``tasks[name]["not_applicable"]``
        says why and it has no ``results`` entry.

    Raises:
        DataError: the gathered items do not cover the documents once each (an inconsistent ``gather``).
    """
    out: dict[str, Any] = {"tasks": {}, "results": {}, "table": [], "items": []}
    ks = sorted(set(shots))
    for task in tasks:
        cfg = task.config
        n_docs = n_docs_of(task, limit)
        out["tasks"][task.name] = {
            "source": cfg.source, "yaml": str(cfg.path) if cfg.path else None, "output_type": cfg.output_type,
            "fewshot_mode": task.fewshot_mode, "n_test_docs": len(task.test_docs),
            "n_fewshot_pool": len(task.fewshot_docs), "metrics": [m.name for m in cfg.metric_list]}
        if cfg.output_type == "generate_until" and lm.kind != "clm":
            # a masked LM scores choices (pseudo-log-likelihood) but does not generate
            out["tasks"][task.name]["not_applicable"] = f"{cfg.output_type} needs a causal LM; {lm.name} is a masked LM"
            log.warning("%s: skipped (%s)", task.name, out["tasks"][task.name]["not_applicable"])
            continue
        out["results"][task.name] = {}
        mine = list(range(rank, n_docs, world))
        chunk = lm.batch_size * (_CHUNK_BATCHES if cfg.output_type == "multiple_choice" else 1)
        for k in ks:
            if bar is not None:
                bar.set_postfix_str(f"{task.name} k={k}")
            t0 = time.perf_counter()
            records = []
            for c0 in range(0, len(mine), chunk):
                records += score_items(lm, task, mine[c0:c0 + chunk], k, seed, shared_context=shared_context)
                if bar is not None:
                    bar.update(len(mine[c0:c0 + chunk]))
            seconds = time.perf_counter() - t0
            counts = gather([len(records)])
            times = gather([seconds])
            records = sorted(gather(records), key=lambda r: r["doc_id"])
            if [r["doc_id"] for r in records] != list(range(n_docs)):
                raise DataError(f"task {task.name}: gathered items do not cover documents 0..{n_docs - 1} once each")
            means, errs = aggregate(records, cfg.metric_list)
            wall = max(times)
            entry = {"k": k, "n": n_docs, "metrics": means, "stderr": errs,
                     "first_prompt": records[0]["context"] if records else None,
                     "items_per_rank": counts, "seconds": round(wall, 4),
                     "items_per_second": round(n_docs / wall, 3) if wall > 0 else None}
            if cfg.output_type == "multiple_choice" and records:
                entry["first_continuations"] = [cfg.target_delimiter + c for c in records[0]["choices"]]
            out["results"][task.name][str(k)] = entry
            for name, v in means.items():
                out["table"].append({"task": task.name, "k": k, "metric": name, "value": v,
                                     "stderr": errs[name], "n": n_docs})
            for r in records:
                out["items"].append({"task": task.name, "k": k, **r})
            log.info("%s k=%d: %s (n=%d, %.1f items/s)", task.name, k,
                     ", ".join(f"{m}={v:.4f}" for m, v in means.items()), n_docs, entry["items_per_second"] or 0)
    return out


def run_fewshot(model: str, tasks: list[str], shots: list[int], limit: int | None, out_dir: str | Path,
                batch_size: int = 16, seed: int = 1234, shared_context: bool = True,
                progress: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` at every k in ``shots``; write the result files.

    Args:
        model: a Hugging Face folder or a built-in name (``smollm2``); see :func:`evals.lm.load_lm`.
        tasks: built-in task names (:func:`evals.tasks.list_tasks`) or task YAML paths.
        shots: the k values (examples in each prompt).
        limit: score only the first ``limit`` test documents of each task (None: all).
        out_dir: folder for ``fewshot.json``, ``fewshot_items.jsonl`` and ``fewshot_accuracy_vs_k.png``
            (created; the three files are replaced atomically; written by the main process only).
        batch_size: sequences per forward pass.
        seed: seed of the few-shot draws (the ``fewshot_holdout`` split is fixed, seed 1234).
        shared_context: score multiple-choice with :func:`shared_context_loglikelihood` (default)
            or with one full forward pass per choice (``LanguageModel.loglikelihood``).
        progress: draw a bar of the items scored (:func:`zerolm.pretrain.progress.progress_bar`: main process,
            stderr a terminal). Documents are scored in chunks (8 batches for multiple-choice, one
            batch for generation) so that the bar moves; the chunking does not depend on this flag.

    Returns:
        The result dict written to ``fewshot.json``: ``model``, ``seed``, ``limit``,
        ``world_size``, ``tasks`` (per task: source, output type, few-shot mode, sizes, metrics),
        ``results[task][str(k)]`` with ``n``, ``metrics``, ``stderr``, ``first_prompt``,
        ``first_continuations`` (multiple-choice), ``items_per_rank``, ``seconds``,
        ``items_per_second``; and ``table`` (flat rows task/k/metric/value/stderr/n).
        The scoring itself is :func:`evaluate_tasks`.

    Raises:
        ConfigError: unknown task, bad task YAML, negative k or limit.
        DataError: the model or the data cannot be loaded, or a pool too small for k.
    """
    from zerolm.evals.lm import load_lm

    loaded = load_tasks(tasks, shots, limit)  # validate every task before loading the model
    state, rank, world, gather = _dist_state()
    device = str(state.device) if world > 1 and torch.cuda.is_available() else None
    lm = load_lm(model, batch_size=batch_size, device=device)
    out = Path(out_dir)
    result: dict[str, Any] = {"model": model, "seed": seed, "limit": limit, "batch_size": batch_size,
                              "world_size": world, "shared_context": shared_context, "max_length": lm.max_length}
    ks = sorted(set(shots))
    n_mine = sum(len(range(rank, n_docs_of(t, limit), world))
                 for t in loaded if t.config.output_type == "multiple_choice" or lm.kind == "clm")
    bar = progress_bar(n_mine * len(ks), "fewshot", "items", progress)
    scored = evaluate_tasks(lm, loaded, ks, limit, seed, rank=rank, world=world, gather=gather,
                            shared_context=shared_context, bar=bar)
    bar.close()
    all_items = scored.pop("items")
    result.update(scored)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RESULT_FILE, result, indent=2, ensure_ascii=False)
        write_jsonl(out / ITEMS_FILE, all_items, ensure_ascii=False)
        plot_accuracy_vs_k(result, out / PLOT_FILE)
    if world > 1:
        state.wait_for_everyone()
    return result
