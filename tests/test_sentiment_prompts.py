"""Prompt kinds of `zerolm finetune sentiment` and the per-kind report.

The pools are built from the real sources (Rotten Tomatoes, tweets, BBC News, the bundled corpus's
Wikipedia passages, the shipped story file) with the tiny test tokenizer; the report runs on a tiny
random GPT (the "reference") against a perturbed copy (the "steered" export) and a tiny random BERT
reward head, and every standard error is recomputed here with numpy from the items file.
"""

from __future__ import annotations

import collections
import json
import math
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch

from zerolm.config import SentimentConfig, load_config
from zerolm.errors import ConfigError
from zerolm.finetune import sentiment as S
from zerolm.finetune import sentiment_prompts as P

REPO = Path(__file__).resolve().parents[1]
LONG = ("tweet", "news", "wiki", "story")
WEIGHTS = {"review": 0.3, "tweet": 0.15, "news": 0.15, "wiki": 0.15, "story": 0.25}
FINAL = re.compile(r"[.!?…][\"'”’)\]]*\s*$")  # sentence-final punctuation at the end


@pytest.fixture(scope="module")
def tok(tiny_gpt):
    return S.load_policy(str(tiny_gpt))[1]


@pytest.fixture(scope="module")
def pools(tok):
    sc = SentimentConfig(prompt_kinds=WEIGHTS)
    train = P.prompt_pool(sc, tok, "validation", 600, np.random.default_rng(0))
    report = P.prompt_pool(sc, tok, "test", 256, np.random.default_rng(7))
    return sc, train, report


def test_pool_has_every_kind_in_proportion(pools, tok):
    sc, train, report = pools
    counts = collections.Counter(p.kind for p in train)
    total = sum(WEIGHTS.values())
    for kind, w in WEIGHTS.items():  # PPO's pool reuses texts when short: every share is met
        assert abs(counts[kind] - 600 * w / total) <= 1, (kind, counts)
    # the report repeats no text: stories (half of the file) leave the rest of their share to the others
    rc = collections.Counter(p.kind for p in report)
    assert len(report) == 256 and set(rc) == set(WEIGHTS)
    assert rc["story"] == len({p.source for p in report if p.kind == "story"}) <= 64
    for kind in ("review", "tweet", "news", "wiki"):
        assert rc[kind] >= 256 * WEIGHTS[kind] - 1, rc
    assert len({p.source for p in report}) == len(report)
    # deterministic: the same call gives the same prompts
    again = P.prompt_pool(sc, tok, "test", 256, np.random.default_rng(7))
    assert [(p.kind, p.ids) for p in again] == [(p.kind, p.ids) for p in report]


def test_training_and_report_prompts_are_disjoint(pools, tok):
    _, train, report = pools
    seen = {tok.decode(p.ids) for p in train}
    assert not [tok.decode(p.ids) for p in report if tok.decode(p.ids) in seen]
    assert not {p.source for p in train} & {p.source for p in report}


def test_long_kinds_are_cut_inside_a_sentence_within_their_limits(pools, tok):
    sc, train, report = pools
    for p in train + report:
        n, text = len(p.ids), tok.decode(p.ids)
        if p.kind == "review":
            assert sc.prompt_min_tokens <= n <= sc.prompt_max_tokens
            continue
        lo, hi = (sc.tweet_min_tokens, sc.tweet_max_tokens) if p.kind == "tweet" else (sc.context_min_tokens, sc.context_max_tokens)
        assert lo <= n <= hi, (p.kind, n, text)
        assert not FINAL.search(text), (p.kind, text)
        if p.kind in ("news", "wiki", "story"):  # at least one whole sentence before the cut
            assert re.search(r"[.!?][\"'”’)]*\s+\S", text), (p.kind, text)
    kinds = collections.Counter(p.kind for p in train)
    assert all(kinds[k] > 0 for k in LONG)


def test_cut_context_hand_made_paragraph(tok):
    para = ("Mr. Smith opened the shop at nine. Nobody came in all morning, so he swept the floor twice. "
            "At noon a small girl walked in and asked for the thing nobody else had ever asked for.")
    for seed in range(8):
        cut = P.cut_context(tok, para, 12, 40, np.random.default_rng(seed))
        assert cut is not None and cut.startswith("Mr. Smith opened the shop at nine. ")  # "Mr." is no sentence end
        assert 12 <= len(tok(cut, add_special_tokens=False)["input_ids"]) <= 40
        assert not FINAL.search(cut) and para.startswith(cut)
    assert P.cut_context(tok, "One sentence only, with no second one", 2, 40, np.random.default_rng(0)) is None
    assert P.split_sentences(para)[0] == "Mr. Smith opened the shop at nine."


def test_story_file_ships_and_every_story_has_two_sentences():
    stories = P.load_stories()
    assert len(stories) >= 55
    assert len({s["id"] for s in stories}) == len(stories) == len({s["text"] for s in stories})
    for s in stories:
        text = s["text"]
        # complete sentences: '.', '!' or '?' then a space and a capital; the story stops mid-sentence
        complete = len(re.findall(r"(?<!\bMr)(?<!\bMrs)[.!?][\"'”’]?\s+[\"'“]?[A-Z]", text))
        assert complete + 1 >= 2 and complete + 1 <= 5, text
        assert not FINAL.search(text), text
    # the file is package data of zerolm.finetune (installed with the wheel)
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["zerolm.finetune"]
    rel = P.STORIES_FILE.relative_to(REPO / "finetune").as_posix()
    assert any(fnmatch(rel, g) for g in globs), (rel, globs)


def test_unknown_prompt_kind_is_a_config_error(tok):
    with pytest.raises(ConfigError, match="poems"):
        load_config(overrides=["sentiment.prompt_kinds.poems=1"])
    with pytest.raises(ConfigError, match="context_min_tokens"):
        load_config(overrides=["sentiment.context_min_tokens=80"])
    sc = SentimentConfig().model_copy(update={"prompt_kinds": {"review": 1.0, "limericks": 1.0}})  # not validated
    with pytest.raises(ConfigError, match="limericks"):
        P.prompt_pool(sc, tok, "test", 8)


@pytest.fixture(scope="module")
def report(tiny_gpt, tiny_bert, tmp_path_factory):
    """`sentiment_report` on 48 prompts: reference = the tiny GPT, steered = a perturbed copy of it,
    reward = a tiny BERT with a fresh/rotten head (random: the numbers only need to be recomputable)."""
    from transformers import AutoModelForCausalLM

    from zerolm.finetune.classify import build_classifier, load_tokenizer
    from zerolm.finetune.sentiment_report import sentiment_report

    root = tmp_path_factory.mktemp("prompts_report")
    reward = root / "reward"
    torch.manual_seed(0)
    btok = load_tokenizer(str(tiny_bert))
    build_classifier(str(tiny_bert), ["fresh", "rotten"], btok.pad_token_id).save_pretrained(str(reward))
    btok.save_pretrained(str(reward))
    steered = root / "hf"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(str(steered))
    S.load_policy(str(tiny_gpt))[1].save_pretrained(str(steered))
    (steered / S.MARKER).write_text(json.dumps({"method": "ppo", "policy": str(tiny_gpt), "reward": str(reward)}))
    cfg = load_config(overrides=[f"train.run_dir={root / 'run'}", f"sentiment.reward={reward}", "sentiment.report_prompts=48",
                                 "sentiment.response_min_tokens=3", "sentiment.response_max_tokens=6"])
    torch.set_num_threads(1)
    rep = sentiment_report(cfg, steered)
    items = [json.loads(line) for line in (root / "run" / "sentiment_report_items.jsonl").read_text().splitlines()]
    return rep, items


def test_report_breaks_down_by_kind_with_standard_errors(report):
    rep, items = report
    assert len(items) == rep["prompts"]["count"] == 48
    kinds = collections.Counter(it["kind"] for it in items)
    assert dict(kinds) == rep["prompts"]["kinds"] and set(kinds) == set(WEIGHTS)
    assert sum(s["kind"] == "story" for s in rep["samples"]) >= 2 and len(rep["samples"]) == 10
    for kind, n in kinds.items():
        mine = [it for it in items if it["kind"] == kind]
        k = rep["by_kind"][kind]
        assert k["count"] == n
        for v in ("before", "after"):
            hits = np.array([it[v]["vader"] >= 0.05 for it in mine], dtype=float)
            p = hits.mean()
            assert k[v]["judge_target_rate"] == pytest.approx(p)
            assert k[v]["judge_target_rate_se"] == pytest.approx(np.sqrt(p * (1 - p) / n))
            rewards = np.array([it[v]["reward"] for it in mine])
            assert k[v]["mean_reward"] == pytest.approx(rewards.mean())
            assert k[v]["mean_reward_se"] == pytest.approx(rewards.std(ddof=1) / np.sqrt(n))
            rhits = np.array([it[v]["reward_hit"] for it in mine], dtype=float)
            assert k[v]["reward_target_rate_se"] == pytest.approx(np.sqrt(rhits.mean() * (1 - rhits.mean()) / n))
        # the judge on the continuation alone: after − before on the same prompts, paired standard error
        d = np.array([float(it["after"]["vader_continuation"] >= 0.05) - float(it["before"]["vader_continuation"] >= 0.05)
                      for it in mine])
        assert k["delta"]["judge_target_rate_continuation"] == pytest.approx(d.mean())
        assert k["delta_se"]["judge_target_rate_continuation"] == pytest.approx(d.std(ddof=1) / np.sqrt(n))
        assert rep["judge_delta_continuation"]["by_kind"][kind]["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(n))
    d = np.array([float(it["after"]["vader_continuation"] >= 0.05) - float(it["before"]["vader_continuation"] >= 0.05)
                  for it in items])
    assert rep["judge_delta_continuation"]["delta"] == pytest.approx(d.mean())
    assert rep["judge_delta_continuation"]["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(len(items)))
    kl = np.array([it["after"]["kl"] for it in items])
    assert rep["after"]["kl_to_reference"] == pytest.approx(kl.mean()) and kl.std() > 0
    assert rep["after"]["kl_to_reference_se"] == pytest.approx(kl.std(ddof=1) / math.sqrt(len(items)))


def test_report_tables_and_card_show_each_kind(report):
    from rich.console import Console

    from zerolm.cli_tables import sentiment_report_tables
    from zerolm.finetune.sentiment_report import report_markdown

    rep, _ = report
    console = Console(record=True, width=200)
    for t in sentiment_report_tables(rep):
        console.print(t)
    text = console.export_text()
    assert "by prompt kind" in text and "after − before" in text and "[story]" in text
    card = report_markdown(rep)
    for kind in WEIGHTS:
        assert re.search(rf"{kind}\s*│\s*{rep['by_kind'][kind]['count']}\s*│", text), kind
        assert f"| {kind} | {rep['by_kind'][kind]['count']} |" in card
    assert f"{rep['before']['judge_target_rate']:.3f} ± {rep['before']['judge_target_rate_se']:.3f}" in card
