"""Control codes trained on the policy's own continuations (``sentiment.control_data=samples``).

The selection of examples is checked against a brute-force recomputation on hand-made records; the
draw against itself split over two simulated ranks (the same records on any world size); the CLI run
on the tiny GPT with a tiny BERT reward classifier: the examples it trained on are recomputed from the
samples file it kept, a restart reuses that file, and a restart with other sampling settings over
existing checkpoints stops with an error naming the key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zerolm.config import load_config
from zerolm.finetune import sentiment as S
from zerolm.finetune import sentiment_prompts as P
from zerolm.finetune import sentiment_control as C

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def random_reward(tiny_bert, tmp_path_factory):
    """A tiny BERT sequence classifier with an untrained head (labels negative/positive): its margins
    are arbitrary but deterministic, which is all the draw and the selection need. The head is
    scaled up and its bias centred on a few real sentences, so both signs occur."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("random_reward")
    torch.manual_seed(3)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_bert), num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    texts = P.split_texts(load_config(None, []).sentiment)["validation"][0][:64]
    with torch.no_grad():
        model.classifier.weight.mul_(200.0)
        logits = model.eval()(**tok(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
        model.classifier.bias[1] -= float((logits[:, 1] - logits[:, 0]).median())
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_selection_takes_the_extremes_each_on_its_side_of_zero():
    rng = np.random.default_rng(0)
    records = [{"kind": "story", "prompt": [7, i], "responses": [[100 + i, j] for j in range(4)],
                "margins": rng.normal(size=4).round(3).tolist()} for i in range(41)]
    records[5]["margins"] = [0.5, 0.2, 0.1, 0.9]  # all positive: no negative example from this prompt
    records[6]["margins"] = [-0.5, -0.2, -0.1, -0.9]  # all negative: no positive example
    codes = {"positive": [1, 2], "negative": [3]}
    train, val, counts = C.select_examples(records, codes)
    want_train, want_val = [], []
    for i, r in enumerate(records):
        m = r["margins"]
        picks = []
        best = max(range(4), key=lambda j: m[j])
        worst = min(range(4), key=lambda j: m[j])
        if m[best] > 0:
            picks.append(([1, 2, 7, i, 100 + i, best], 4))
        if m[worst] < 0:
            picks.append(([3, 7, i, 100 + i, worst], 3))
        (want_val if (i + 1) % 20 == 0 else want_train).extend(picks)
    assert train == want_train and val == want_val
    assert counts["examples"]["positive"] == sum(max(r["margins"]) > 0 for r in records) < 41
    assert counts["examples"]["negative"] == sum(min(r["margins"]) < 0 for r in records) < 41
    assert counts["prompts"] == 41 and counts["samples"] == 164
    assert [x for x, _ in train if x[-3:-1] == [5, 105]] == [[1, 2, 7, 5, 105, 3]]  # record 5: its best, positive only
    assert [x for x, _ in train if x[-3:-1] == [6, 106]] == [[3, 7, 6, 106, 3]]  # record 6: its worst, negative only
    # a margin threshold keeps only the clearly polar picks
    _, _, strict = C.select_examples(records, codes, above=0.6, below=-0.6)
    assert strict["examples"] == {"positive": sum(max(r["margins"]) > 0.6 for r in records),
                                  "negative": sum(min(r["margins"]) < -0.6 for r in records)}
    assert strict["examples"]["positive"] < counts["examples"]["positive"]
    # picks = k: every sample that clears the threshold, each after its code (Quark's reward bins)
    all_train, all_val, binned = C.select_examples(records, codes, above=0.6, below=-0.6, picks=4)
    assert binned["examples"] == {"positive": sum(x > 0.6 for r in records for x in r["margins"]),
                                  "negative": sum(x < -0.6 for r in records for x in r["margins"])}
    assert sorted(x for x, _ in all_train + all_val) == sorted(
        ([1, 2] if m > 0.6 else [3]) + [7, i, 100 + i, j]
        for i, r in enumerate(records) for j, m in enumerate(r["margins"]) if abs(m) > 0.6)
    # control_fraction: quantile thresholds give each code the same share of all samples
    sc = load_config(None, ["sentiment.control_fraction=0.2", "sentiment.control_picks=4"]).sentiment
    above, below = C.margin_thresholds(records, sc)
    every = sorted(x for r in records for x in r["margins"])
    assert sum(x > above for x in every) == pytest.approx(0.2 * len(every), abs=2)
    assert sum(x < below for x in every) == pytest.approx(0.2 * len(every), abs=2)
    assert C.margin_thresholds(records, load_config(None, ["sentiment.control_min_margin=1.5"]).sentiment) == (1.5, -1.5)
    from zerolm.errors import ConfigError

    with pytest.raises(ConfigError, match="control_fraction"):
        load_config(None, ["sentiment.control_fraction=0.2", "sentiment.control_min_margin=1"])


def test_the_draw_is_the_same_on_any_number_of_ranks(tiny_gpt, random_reward):
    sc = load_config(None, [f"sentiment.reward={random_reward}", "sentiment.control_prompts=40", "sentiment.control_k=2",
                            "sentiment.response_max_tokens=6", "sentiment.prompt_kinds={review: 1.0}",
                            "sentiment.reward_text=continuation"]).sentiment
    model, tok = S.load_policy(str(tiny_gpt))
    one = C.draw_samples(model, tok, sc, rank=0, world=1)
    r0 = C.draw_samples(model, tok, sc, rank=0, world=2)  # without a process group each rank returns its own chunks
    r1 = C.draw_samples(model, tok, sc, rank=1, world=2)
    assert len(one) == 40 and len(r0) == 24 and len(r1) == 16  # chunks of 16 prompts: 0, 2 on rank 0; 1 on rank 1
    merged = r0[:16] + r1 + r0[16:]
    assert merged == one
    assert all(len(r["responses"]) == 2 and 4 <= len(r["responses"][0]) <= 6 for r in one)
    # margins are the reward's positive − negative logit of the continuation alone, recomputed here
    reward = S.RewardModel(str(random_reward), "positive")
    texts = [tok.decode(x, skip_special_tokens=True) for x in one[3]["responses"]]
    logits = reward.logits(texts)
    assert one[3]["margins"] == pytest.approx((logits[:, 1] - logits[:, 0]).tolist(), abs=1e-3)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "zerolm.finetune", "sentiment", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_samples_run_trains_on_what_it_kept_and_reuses_it(tiny_gpt, random_reward, tmp_path):
    run = tmp_path / "ctl"
    base = ["--method", "control", "--policy", tiny_gpt, "--reward", random_reward, "--run-dir", run,
            "sentiment.control_data=samples", "sentiment.control_prompts=48", "sentiment.control_k=2",
            "sentiment.control_min_margin=0", "sentiment.control_picks=1",
            "sentiment.response_max_tokens=6", "sentiment.reward_text=continuation", "data.micro_batch_size=4",
            "train.warmup_steps=1", "train.eval_every=1000", "train.save_every=2", "tracking.wandb_mode=disabled",
            "train.peak_flops=1e10", "tracking.emissions.enabled=false"]  # no matmul-peak reading, no codecarbon probe
    r = _run([*base, "train.max_steps=2"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    records = [json.loads(line) for line in (run / C.SAMPLES_FILE).read_text().splitlines()]
    assert len(records) == 48 and json.loads((run / C.SAMPLES_META).read_text())["signature"]["control_k"] == 2
    pos = sum(max(r["margins"]) > 0 for r in records)
    neg = sum(min(r["margins"]) < 0 for r in records)
    meta = json.loads((run / "hf" / S.MARKER).read_text())
    assert meta["control_data"] == "samples" and meta["training_rows"] == {"positive": pos, "negative": neg}
    kinds = {r["kind"] for r in records}
    assert kinds <= {"review", "tweet", "news", "wiki", "story"} and len(kinds) >= 3  # the PPO pool's kinds
    kept = (run / C.SAMPLES_FILE).read_bytes()

    r = _run([*base, "train.max_steps=4"])  # same settings, more steps: resumes on the kept samples
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "48 prompts reused" in r.stderr and (run / C.SAMPLES_FILE).read_bytes() == kept
    assert json.loads((run / "result.json").read_text())["step"] == 4

    r = _run([*[a if a != "sentiment.control_k=2" else "sentiment.control_k=3" for a in base], "train.max_steps=6"])
    said = " ".join((r.stdout + r.stderr).split())  # the CLI wraps its error message
    assert r.returncode != 0 and "'control_k': (2, 3)" in said, said[-2000:]
    assert (run / C.SAMPLES_FILE).read_bytes() == kept


def test_control_sources_give_each_code_its_own_policys_continuations(tiny_gpt, random_reward, tmp_path, monkeypatch):
    """``control_sources``: the positive code learns from one policy's continuations, the negative code
    from another's; the examples are recomputed here from each source's own draw, and the judge's
    "all" rate of a code is VADER (called here) on its source's samples only."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from zerolm.errors import ConfigError

    other = tmp_path / "other"  # a second policy with the same tokenizer: the tiny GPT, perturbed
    model = AutoModelForCausalLM.from_pretrained(str(tiny_gpt))
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(str(other))
    AutoTokenizer.from_pretrained(str(tiny_gpt)).save_pretrained(str(other))
    common = [f"sentiment.reward={random_reward}", "sentiment.method=control", "sentiment.control_data=samples",
              "sentiment.control_prompts=40", "sentiment.control_k=2", "sentiment.response_max_tokens=6",
              "sentiment.prompt_kinds={review: 1.0}", "sentiment.reward_text=continuation"]
    sc = load_config(None, [*common, f"sentiment.control_sources={{positive: {other}, negative: {tiny_gpt}}}"]).sentiment
    policy, tok = S.load_policy(str(tiny_gpt))
    env = SimpleNamespace(rank=0, world_size=1, is_main=True)
    train, val, info = C.sampled_examples(policy, tok, sc, env, tmp_path / "run")

    records = [json.loads(line) for line in (tmp_path / "run" / C.SAMPLES_FILE).read_text().splitlines()]
    theirs = C.draw_samples(S.load_policy(str(other))[0], tok, sc, 0, 1)
    own = C.draw_samples(policy, tok, sc, 0, 1)
    assert [r["responses"] for r in theirs] != [r["responses"] for r in own]  # the two sources do differ
    assert records == [{**r, "source": "positive"} for r in theirs] + [{**r, "source": "negative"} for r in own]
    codes = {p: S.code_ids(tok, c) for p, c in sc.control_codes.items()}
    want_train, want_val = [], []
    for pol, drawn in (("positive", theirs), ("negative", own)):
        for i, r in enumerate(drawn):
            m = r["margins"]
            j = max(range(2), key=lambda j: m[j]) if pol == "positive" else min(range(2), key=lambda j: m[j])
            if (m[j] > 0) if pol == "positive" else (m[j] < 0):
                head = codes[pol] + r["prompt"]
                (want_val if (i + 1) % 20 == 0 else want_train).append((head + r["responses"][j], len(head)))
    assert train == want_train and val == want_val and info["prompts"] == 40
    assert info["examples"]["positive"] == sum(max(r["margins"]) > 0 for r in theirs)
    analyzer = SentimentIntensityAnalyzer()
    texts = [tok.decode(x, skip_special_tokens=True) for r in theirs for x in r["responses"]]
    assert info["judge"]["vader_positive_all"] == pytest.approx(
        np.mean([analyzer.polarity_scores(t)["compound"] >= 0.05 for t in texts]))

    # samples kept before control_sources existed (no such key in their signature) are still reused
    plain = load_config(None, common).sentiment
    C.sampled_examples(policy, tok, plain, env, tmp_path / "old")
    meta = json.loads((tmp_path / "old" / C.SAMPLES_META).read_text())
    del meta["signature"]["control_sources"]
    (tmp_path / "old" / C.SAMPLES_META).write_text(json.dumps(meta))

    def no_draw(*a, **k):
        raise AssertionError("drew again instead of reusing the kept samples")

    monkeypatch.setattr(C, "draw_samples", no_draw)
    assert C.sampled_examples(policy, tok, plain, env, tmp_path / "old")[0]
    monkeypatch.undo()

    # a source with another vocabulary cannot write its samples after the policy's code and prompt
    tok2 = AutoTokenizer.from_pretrained(str(tiny_gpt))
    tok2.add_tokens(["zzqxword"])
    tok2.save_pretrained(str(other))
    with pytest.raises(ConfigError, match="another tokenizer"):
        C.sampled_examples(policy, tok, sc, env, tmp_path / "run2")
    # a missing source folder fails before any work; sources without a samples run are a config error
    missing = load_config(None, [*common, f"sentiment.control_sources={{positive: {tmp_path / 'nope'}, negative: {tiny_gpt}}}"])
    with pytest.raises(ConfigError, match="control_sources.positive"):
        C.train_control(missing, "positive")
    with pytest.raises(ConfigError, match="control_sources"):
        load_config(None, [*common, "sentiment.control_data=rows", f"sentiment.control_sources={{positive: {other}, negative: {other}}}"])
