"""Sentiment-controlled continuation on tiny models and real Rotten Tomatoes text.

A tiny BERT reward classifier (our tokenizer) is trained on real Rotten Tomatoes rows with
finetune.classify's data and model pieces; the control-code method finetunes the tiny GPT on code-
prefixed RT reviews through the CLI (shared DeepSpeed trainer) and reports; PPO (the CLI, one process,
then two under torchrun) starts from that export — a random-init GPT samples uniformly over 2,000
tokens, so no reward signal is reachable in a few updates — and must raise the reward, track KL,
keep both ranks' weights identical and export a folder that AutoModelForCausalLM loads. Unit tests
check GAE, whitening, the adaptive KL rule, the clipped losses, label mapping, distinct-n and the
VADER thresholds against hand-computed values.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zerolm.finetune import sentiment as S
from zerolm.finetune import sentiment_control as C
from zerolm.finetune.rl_algo import AdaptiveKLController, gae, masked_whiten, ppo_losses
from zerolm.evals.judge import judge_hits, vader_compound
from zerolm.finetune.sentiment_report import METRICS, distinct_n
from zerolm.config import load_config
from zerolm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PPO_KEYS = ("ppo/mean_reward", "ppo/kl", "ppo/kl_coef", "ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac",
            "ppo/entropy", "ppo/tokens_per_second", "ppo/approx_kl", "train/loss")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1", "WANDB_API_KEY": "", "HF_TOKEN": ""}


def sentiment_cli(args: list[str], nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "zerolm.finetune"] if nproc == 1 else \
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "zerolm.finetune"]
    r = subprocess.run([*launcher, "sentiment", *map(str, args)], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"finetune sentiment failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


def _train_classifier(model_path: str, data: str, max_length: int, steps: int, lr: float, out: Path) -> float | None:
    """Finetune a sequence classifier with finetune.classify's data and model pieces (one thread,
    seed 0, batches of 32 random training rows, AdamW at ``lr``), save it to ``out``. Returns the
    accuracy on the first 400 test rows for the RT reward (None otherwise: that check is RT's)."""
    from zerolm.config import FinetuneConfig
    from zerolm.finetune import data as fdata
    from zerolm.finetune.classify import build_classifier, load_tokenizer, predict, prepare_data, tokenize

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fc = FinetuneConfig(model=model_path, data=data, max_length=max_length)
        prep = prepare_data(fc)
        tok = load_tokenizer(fc.model)
        train = tokenize(tok, *prep["splits"]["train"], max_length)
        torch.manual_seed(0)
        model = build_classifier(fc.model, prep["label_names"], tok.pad_token_id)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(steps):
            batch = fdata.collate([train[i] for i in torch.randint(len(train), (32,), generator=g).tolist()], tok.pad_token_id)
            loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = None
        if data == "rotten_tomatoes":
            texts, labels = prep["splits"]["test"]
            acc = float(np.mean([p == y for p, y in zip(predict(model, tok, texts[:400], 32), labels[:400])]))
        model.save_pretrained(str(out))
        tok.save_pretrained(str(out))
        return acc
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reward_dir(tiny_bert, tmp_path_factory):
    """A tiny BERT fresh/rotten classifier: 300 steps of 32 real RT training rows (classify's split,
    so the sentiment prompts are never its training rows), saved as a text-classification folder."""
    out = tmp_path_factory.mktemp("reward")
    acc = _train_classifier(str(tiny_bert), "rotten_tomatoes", 32, 300, 1e-3, out)
    (out / "accuracy.json").write_text(json.dumps({"test_accuracy_400": acc}))
    return out


@pytest.fixture(scope="module")
def control_run(tiny_gpt, reward_dir, tmp_path_factory):
    """`python -m zerolm.finetune sentiment --method control --report` on the tiny GPT: 120 steps of 32 RT rows."""
    run = tmp_path_factory.mktemp("control")
    sentiment_cli(["--method", "control", "--policy", tiny_gpt, "--reward", reward_dir, "--run-dir", run, "--report",
                   "sentiment.control_data=rows", "sentiment.report_prompts=24", "data.micro_batch_size=32", "train.max_steps=120", "train.lr=3e-3",
                   "train.warmup_steps=5", "train.log_every=40", "train.eval_every=120", "train.eval_batches=4",
                   "train.peak_flops=1e10", "tracking.wandb_mode=disabled", "tracking.emissions.enabled=false"])
    return run


@pytest.fixture(scope="module")
def ppo_run(control_run, polarity_reward, tmp_path_factory):
    """`python -m zerolm.finetune sentiment --method ppo --report`, one process, 18 PPO steps of 16 prompts,
    rewarded by the MiniLM polarity classifier on the continuation alone (with responses that cannot
    stop before 8 tokens, the tiny BERT's reward gives PPO no signal it can climb in 18 steps)."""
    run = tmp_path_factory.mktemp("ppo")
    sentiment_cli(["--method", "ppo", "--policy", control_run / "hf", "--reward", polarity_reward, "--run-dir", run, "--report",
                   "sentiment.steps=18", "sentiment.batch_size=16", "sentiment.mini_batch_size=8", "sentiment.lr=5e-4",
                   "sentiment.trainable_layers=null", "sentiment.max_minutes=null",
                   "sentiment.init_kl_coef=0.05", "sentiment.reward_type=logit_margin", "sentiment.prompt_max_tokens=2",
                   "sentiment.prompt_kinds={review: 1.0}", "sentiment.reward_text=continuation",
                   "sentiment.response_min_tokens=8", "sentiment.report_prompts=24", "tracking.wandb_mode=offline"])
    return run


def test_tiny_reward_model_learned_sentiment(reward_dir):
    acc = json.loads((reward_dir / "accuracy.json").read_text())["test_accuracy_400"]
    assert acc > 0.62, acc  # majority class (fresh) is 0.578
    r = S.RewardModel(str(reward_dir), "negative")
    assert r.label == "rotten"
    assert r.score(["A dull, lifeless, boring mess."]).item() > r.score(["A gorgeous, funny, moving film."]).item()


def test_ppo_raises_reward_and_tracks_kl(ppo_run):
    rows = [json.loads(line) for line in (ppo_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 19))
    assert all(k in r and math.isfinite(r[k]) for r in rows for k in PPO_KEYS)
    reward = [r["ppo/mean_reward"] for r in rows]
    assert np.mean(reward[-4:]) > np.mean(reward[:4]) + 0.3, reward
    kl = [r["ppo/kl"] for r in rows]
    assert abs(kl[0]) < 1e-4  # step 1 samples from the reference itself
    assert np.mean(kl[-4:]) > 0.1, kl
    # adaptive β (Ziegler et al.): β1 = β0 (1 + clip(KL/6 − 1, ±0.2) · 16/10000)
    beta1 = 0.05 * (1 + float(np.clip(kl[0] / 6 - 1, -0.2, 0.2)) * 16 / 10000)
    assert rows[1]["ppo/kl_coef"] == pytest.approx(beta1, rel=1e-9) and rows[0]["ppo/kl_coef"] == 0.05
    assert list((ppo_run / "wandb").glob("offline-run-*")), "no offline W&B run"
    result = json.loads((ppo_run / "result.json").read_text())
    assert result["status"] == "completed" and result["steps"] == 18 and len(result["rank_weight_sha256"]) == 1


def test_ppo_export_loads_and_generates(ppo_run, control_run):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = ppo_run / "hf"
    model = AutoModelForCausalLM.from_pretrained(str(hf))
    tok = AutoTokenizer.from_pretrained(str(hf))
    ids = tok("The film", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=6, min_new_tokens=6, do_sample=True, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 6
    saved = load_file(str(hf / "model.safetensors"))
    assert not any("v_head" in k for k in saved)  # the policy without the value head
    before = load_file(str(control_run / "hf" / "model.safetensors"))
    assert any(not torch.equal(saved[k], before[k]) for k in saved)  # PPO changed the weights
    meta = json.loads((hf / S.MARKER).read_text())
    assert meta["method"] == "ppo" and meta["target_label"] == "positive" and meta["steps"] == 18
    card = (hf / "README.md").read_text()
    assert "PPO" in card and "ppo/mean_reward" in card and "## Before vs after" in card


def _check_report(run: Path, variants: tuple[str, ...]) -> dict:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    rep = json.loads((run / "sentiment_report.json").read_text())
    items = [json.loads(line) for line in (run / "sentiment_report_items.jsonl").read_text().splitlines()]
    assert len(items) == rep["prompts"]["count"] and (run / "hf" / "sentiment_report_items.jsonl").is_file()
    assert (run / "sentiment_report.png").stat().st_size > 5000
    assert (run / "hf" / "sentiment_report.json").is_file()
    for v in variants:
        assert set(METRICS) <= set(rep[v]), (v, rep[v])
        # each rate recomputed from the per-prompt records: VADER run here on the texts, n-grams counted here
        texts = [it[v]["text"] for it in items]
        compound = [analyzer.polarity_scores(t)["compound"] for t in texts]
        assert [it[v]["vader"] for it in items] == pytest.approx(compound)
        hits = [c >= 0.05 if rep["target"] == "positive" else c <= -0.05 for c in compound]
        assert rep[v]["judge_target_rate"] == pytest.approx(sum(hits) / len(hits))
        bigrams = [tuple(w[i:i + 2]) for w in (it[v]["continuation"].lower().split() for it in items) for i in range(len(w) - 1)]
        assert rep[v]["distinct_2"] == pytest.approx(len(set(bigrams)) / len(bigrams))
        assert rep[v]["mean_reward"] == pytest.approx(sum(it[v]["reward"] for it in items) / len(items))
        assert rep[v]["reference_perplexity"] > 1
    assert rep["before"]["kl_to_reference"] == 0.0 and rep["after"]["kl_to_reference"] > 0
    assert rep["prompts"]["count"] == 24 and rep["prompts"]["split"] == "test"
    assert len(rep["samples"]) == 10 and all(set(variants) <= set(s) for s in rep["samples"])
    assert rep["delta"]["mean_reward"] == pytest.approx(rep["after"]["mean_reward"] - rep["before"]["mean_reward"])
    return rep


def test_reports_have_every_field(ppo_run, control_run):
    ppo = _check_report(ppo_run, ("before", "after"))
    assert ppo["method"] == "ppo" and "before_with_code" not in ppo
    assert ppo["after"]["mean_reward"] > ppo["before"]["mean_reward"]
    ctl = _check_report(control_run, ("before", "before_with_code", "after"))
    assert ctl["method"] == "control" and ctl["before_with_code"]["kl_to_reference"] != 0
    # what finetuning adds to prompting with the code: paired over the prompts, from the per-prompt records
    items = [json.loads(line) for line in (control_run / "sentiment_report_items.jsonl").read_text().splitlines()]
    diff = [(it["after"]["vader_continuation"] >= 0.05) - (it["before_with_code"]["vader_continuation"] >= 0.05) for it in items]
    vc = ctl["judge_delta_vs_code"]
    assert vc["delta"] == pytest.approx(np.mean(diff)) and vc["se"] == pytest.approx(np.std(diff, ddof=1) / math.sqrt(len(diff)))
    story = [d for d, it in zip(diff, items) if it["kind"] == "story"]
    assert vc["by_kind"]["review"]["count"] + sum(v["count"] for k, v in vc["by_kind"].items() if k != "review") == len(items)
    if story:
        assert vc["by_kind"]["story"]["delta"] == pytest.approx(np.mean(story))
    assert "judge_delta_vs_code" not in ppo


def test_report_only_reports_on_an_existing_export(control_run, reward_dir, tmp_path):
    """`--report-only` on a copy of the control run's export: no training (weights untouched, no
    metrics.jsonl), and the report equals the one written right after training (same prompts, seeds,
    models), printed as tables by the CLI."""
    import shutil

    run = tmp_path / "again"
    shutil.copytree(control_run / "hf", run / "hf")
    weights = (run / "hf" / "model.safetensors").read_bytes()
    r = sentiment_cli(["--method", "control", "--policy", "/nonexistent-policy-the-export-names-its-own",
                       "--reward", reward_dir, "--run-dir", run, "--report-only", "sentiment.report_prompts=24"])
    assert "after − before" in r.stdout and "sample continuations" in r.stdout
    assert (run / "hf" / "model.safetensors").read_bytes() == weights and not (run / "metrics.jsonl").exists()
    again = json.loads((run / "sentiment_report.json").read_text())
    first = json.loads((control_run / "sentiment_report.json").read_text())
    for v in ("before", "before_with_code", "after"):
        assert again[v] == pytest.approx(first[v], rel=1e-6, abs=1e-9), v
    assert again["samples"] == first["samples"]
    result = json.loads((run / "result.json").read_text())
    assert result["export_dir"] == str(run / "hf") and result["report"]["after"] == again["after"]
    assert "## Before vs after" in (run / "hf" / "README.md").read_text()


def test_control_export_generates_after_the_code(control_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = json.loads((control_run / "result.json").read_text())
    assert result["step"] == 120 and result["eval/loss"] < 6.5  # random init: ln(2000) = 7.6 nats/token
    hf = control_run / "hf"
    meta = json.loads((hf / S.MARKER).read_text())
    assert meta["method"] == "control" and meta["control_codes"]["positive"] == "Positive review:"
    model = AutoModelForCausalLM.from_pretrained(str(hf))
    tok = AutoTokenizer.from_pretrained(str(hf))
    prompt = C.code_ids(tok, meta["control_codes"]["positive"]) + tok("The film", add_special_tokens=False)["input_ids"]
    out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    # greedy decoding of the export equals the argmax of its own forward pass, token by token
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == model.generation_config.eos_token_id:
                break
    assert out[0].tolist() == ids and len(ids) > len(prompt)


def test_ppo_two_processes_keep_identical_weights(control_run, reward_dir, tmp_path):
    """DDP over gloo with the packaged default sentiment.trainable_layers=8 (all of the tiny GPT's blocks,
    embeddings frozen): frozen and trained parameters alike end identical on both ranks."""
    run = tmp_path / "ppo2"
    sentiment_cli(["--method", "ppo", "--policy", control_run / "hf", "--reward", reward_dir, "--run-dir", run,
                   "sentiment.steps=2", "sentiment.batch_size=8", "sentiment.mini_batch_size=4", "sentiment.lr=5e-4",
                   "tracking.wandb_mode=disabled"], nproc=2)
    result = json.loads((run / "result.json").read_text())
    digests = result["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert result["steps"] == 2 and result["final"]["ppo/kl"] != 0
    assert (run / "hf" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------
# Units (hand-computed)
# ---------------------------------------------------------------------------------------------------


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the second response has 2 tokens
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: δ2 = 1 − .5 = .5; A1 = 0 + .95·.5; A0 = .95·A1.  row 1: δ1 = 1 − .5 (V after the end = 0)
    assert torch.allclose(adv[0], torch.tensor([0.45125, 0.475, 0.5]))
    assert torch.allclose(adv[1], torch.tensor([0.475, 0.5, 0.0]))
    assert torch.allclose(ret, (adv + values) * mask)
    w = masked_whiten(adv, mask)
    sel = w[mask.bool()]
    assert abs(float(sel.mean())) < 1e-5 and abs(float((sel ** 2).mean()) - 1) < 1e-3 and float(w[1, 2]) == 0


def test_adaptive_kl_and_clipped_losses_hand_computed():
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    assert ctl.update(12.0, 16) == pytest.approx(0.2 * (1 + 0.2 * 16 / 10000))  # error clipped at +0.2
    assert ctl.update(5.4, 16) == pytest.approx(0.2 * 1.00032 * (1 - 0.1 * 16 / 10000))
    fixed = AdaptiveKLController(0.2, 6.0, 10000, adaptive=False)
    assert fixed.update(50.0, 16) == 0.2
    old = torch.zeros(1, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    adv = torch.ones(1, 2)
    mask = torch.ones(1, 2)
    values, old_v, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.1]])
    pl, vl, st = ppo_losses(logp, values, old, old_v, adv, returns, mask, 0.2, 0.2)
    # A = +1: ratio 1.5 → max(−1.5, −1.2) = −1.2 (clipped); ratio 0.5 → max(−0.5, −0.8) = −0.5
    assert float(pl) == pytest.approx((-1.2 - 0.5) / 2) and st["clipfrac"] == 0.5
    # value: V = 1 vs V_clip = 0.2 toward R = 2 → ½ max(1, 3.24); second: ½ max(.01, .01)
    assert float(vl) == pytest.approx(0.5 * (3.24 + 0.01) / 2)


def test_target_label_mapping():
    assert S.resolve_target_label({0: "fresh", 1: "rotten"}, "positive") == 0
    assert S.resolve_target_label({0: "fresh", 1: "rotten"}, "negative") == 1
    assert S.resolve_target_label({0: "NEG", 1: "POS"}, "positive") == 1
    assert S.resolve_target_label({0: "negative", 1: "neutral", 2: "positive"}, "negative") == 0
    with pytest.raises(ConfigError, match="target_label"):
        S.resolve_target_label({0: "LABEL_0", 1: "LABEL_1"}, "positive")
    assert S.resolve_target_label({0: "LABEL_0", 1: "LABEL_1"}, "positive", "LABEL_1") == 1
    with pytest.raises(ConfigError, match="not a label"):
        S.resolve_target_label({0: "fresh", 1: "rotten"}, "positive", "good")


def test_cli_errors_name_the_problem(tmp_path, capsys):
    from transformers import BertConfig, BertForSequenceClassification

    from zerolm.cli import main

    unlabelled = tmp_path / "clf"
    BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                             intermediate_size=8)).save_pretrained(str(unlabelled))
    assert main(["finetune", "sentiment", "--reward", str(unlabelled), "--run-dir", str(tmp_path / "r")]) == 2
    assert "sentiment.target_label" in capsys.readouterr().out
    assert main(["finetune", "sentiment", "--reward", str(tmp_path / "nope")]) == 2
    assert "zerolm finetune classify" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="prompt_min_tokens"):
        load_config(None, ["sentiment.prompt_min_tokens=9"])
    with pytest.raises(ConfigError, match="mini_batch_size"):
        load_config(None, ["sentiment.batch_size=10", "sentiment.mini_batch_size=4"])
    cfg = load_config(REPO / "configs" / "finetune" / "sentiment_ppo.yaml")
    assert (cfg.sentiment.init_kl_coef, cfg.sentiment.target_kl, cfg.sentiment.kl_horizon, cfg.sentiment.lam) == (0.2, 6.0, 10000, 0.95)
    assert load_config(REPO / "configs" / "finetune" / "sentiment_control.yaml").sentiment.method == "control"


def test_distinct_n_and_vader_judge():
    texts = ["the cat the cat", "A dog"]
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)  # the, cat, a, dog of 6 words
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (the cat) twice, (cat the), (a dog)
    assert distinct_n(["one"], 2) == 0.0
    assert judge_hits([0.05, 0.049, -0.05, 0.0], "positive") == [True, False, False, False]
    assert judge_hits([0.05, -0.049, -0.05, 0.0], "negative") == [False, False, True, False]
    pos, neg, neutral = vader_compound(["A gorgeous, witty, seductive movie.", "A dull, boring mess.", "The film is about a man."])
    assert pos >= 0.05 and neg <= -0.05 and neutral == 0.0


def test_sampling_and_logprobs_agree_with_an_unpadded_forward(tiny_gpt):
    model, tok = S.load_policy(str(tiny_gpt))
    queries = [tok("A gorgeous", add_special_tokens=False)["input_ids"], tok("The plot of this film", add_special_tokens=False)["input_ids"]]
    assert len(queries[0]) < len(queries[1])  # left padding is exercised
    g = torch.Generator().manual_seed(0)
    resp = S.sample_responses(model, queries, [5, 3], pad_id=tok.pad_token_id, stops=set(), generator=g)
    assert [len(r) for r in resp] == [5, 3]
    lps = S.sequence_logprobs(model, queries, resp, tok.pad_token_id)
    for q, r, lp in zip(queries, resp, lps):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([q + r])).logits[0, len(q) - 1 : -1]
        assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(1, torch.tensor(r)[:, None])[:, 0], atol=1e-5)


def test_no_stop_token_before_the_minimum_length(tiny_gpt):
    """``min_tokens``: stop tokens are not drawn before it (continuation-only rewards cannot be earned
    by an empty text); with half the vocabulary as stop tokens, unconstrained responses end at once."""
    model, tok = S.load_policy(str(tiny_gpt))
    vocab = model.config.vocab_size
    stops = set(range(0, vocab, 2))  # every even id ends a response
    queries = [tok("The plot", add_special_tokens=False)["input_ids"]] * 16
    free = S.sample_responses(model, queries, [12] * 16, pad_id=tok.pad_token_id, stops=stops,
                              generator=torch.Generator().manual_seed(0))
    held = S.sample_responses(model, queries, [12] * 16, pad_id=tok.pad_token_id, stops=stops,
                              generator=torch.Generator().manual_seed(0), min_tokens=5)
    assert min(len(r) for r in free) < 5  # half the draws stop: some response ends early
    assert all(len(r) >= 5 and not any(t in stops for t in r[:5]) for r in held), held
    assert all(len(r) == 12 or r[-1] in stops for r in held)  # after the minimum, stops end responses again


def test_control_rows_mask_the_code(tiny_gpt):
    _, tok = S.load_policy(str(tiny_gpt))
    sc = load_config(None, ["sentiment.control_max_length=16"]).sentiment
    ex = C.control_examples(tok, sc, ["A gorgeous film.", "A dull mess.", "Meh."], ["fresh", "rotten", "neutral"], tok.eos_token_id)
    assert len(ex) == 2  # the neutral row has no polarity
    pos_code, neg_code = C.code_ids(tok, "Positive review:"), C.code_ids(tok, "Negative review:")
    assert ex[0][0][: len(pos_code)] == pos_code and ex[1][0][: len(neg_code)] == neg_code
    assert ex[0][1] == len(pos_code) and ex[0][0][-1] == tok.eos_token_id and len(ex[0][0]) <= 16
    batch = next(iter(C.ControlCodeLoader(ex, 2, tok.pad_token_id, infinite=False)))  # rows in order
    for row, (ids_list, n) in enumerate(ex):
        labels, mask = batch["labels"][row], batch["attention_mask"][row]
        assert int(mask.sum()) == len(ids_list)
        assert (labels[:n] == -100).all() and (labels[mask == 0] == -100).all()  # no loss on the code or padding
        assert labels[n : len(ids_list)].tolist() == ids_list[n:]


def test_freeze_lower_layers(tiny_gpt):
    from zerolm.finetune.rl_algo import freeze_lower_layers

    model, _ = S.load_policy(str(tiny_gpt))
    total = sum(p.numel() for p in model.parameters())
    assert freeze_lower_layers(model, None) == total
    n = freeze_lower_layers(model, 1)
    expected = {name for name, _ in model.named_parameters() if name.startswith(("transformer.h.1.", "transformer.ln_f."))}
    assert {name for name, p in model.named_parameters() if p.requires_grad} == expected
    assert n == sum(p.numel() for name, p in model.named_parameters() if name in expected) < total


# ---------------------------------------------------------------------------------------------------
# RLOO, both targets: the reward and the independent judge move toward the target
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def polarity_reward(tmp_path_factory):
    """A reward that knows sentiment words: MiniLM-L6 (the packaged weights) finetuned 150 steps on
    32 rows of the built-in ``polarity`` pool (reviews + tweets). The tiny BERT of ``reward_dir`` is
    too weak here: RLOO against it finds its spurious features ('vvv' scored negative) and the
    independent judge does not move — reward hacking in miniature; so does a MiniLM trained for 100
    steps (accuracy ~0.7: ' you may you' scored positive). 150 steps (~0.77) carry sentiment words."""
    from zerolm.hf_models import resolve_model_path

    out = tmp_path_factory.mktemp("polarity_reward")
    _train_classifier(str(resolve_model_path("minilm")), "polarity", 24, 150, 1e-4, out)
    return out


@pytest.fixture(scope="module", params=["positive", "negative"])
def rloo_run(request, control_run, polarity_reward, tmp_path_factory):
    """`--method rloo --report`, one process: 100 steps of 4 prompts × k=4 samples, reward on the
    continuation alone (logit margin of the target), review prompts only (the tiny GPT knows reviews)."""
    run = tmp_path_factory.mktemp(f"rloo_{request.param}")
    sentiment_cli(["--method", "rloo", "--target", request.param, "--policy", control_run / "hf", "--reward", polarity_reward,
                   "--run-dir", run, "--report", "sentiment.steps=100", "sentiment.batch_size=4", "sentiment.rloo_k=4",
                   "sentiment.mini_batch_size=4", "sentiment.ppo_epochs=2", "sentiment.lr=1e-3",
                   "sentiment.trainable_layers=null", "sentiment.max_minutes=null", "sentiment.init_kl_coef=0.05",
                   "sentiment.reward_type=logit_margin", "sentiment.reward_text=continuation",
                   "sentiment.prompt_kinds={review: 1.0}", "sentiment.prompt_max_tokens=4", "sentiment.log_every=10",
                   "sentiment.response_min_tokens=8", "sentiment.report_prompts=64", "tracking.wandb_mode=disabled"])
    return request.param, run


def test_rloo_moves_reward_and_judge_toward_the_target(rloo_run):
    target, run = rloo_run
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10, 101, 10))
    result = json.loads((run / "result.json").read_text())
    assert result["method"] == "rloo" and result["status"] == "completed" and result["steps"] == 100
    assert result["final"]["ppo/mean_reward"] > result["first"]["ppo/mean_reward"] + 0.3, result
    assert abs(result["first"]["ppo/kl"]) < 5 and result["final"]["ppo/kl"] > 0.5
    assert all(r["ppo/value_loss"] == 0 for r in rows)  # no value head is trained
    meta = json.loads((run / "hf" / S.MARKER).read_text())
    assert meta["method"] == "rloo" and meta["ppo"]["rloo_k"] == 4 and meta["ppo"]["reward_text"] == "continuation"
    rep = json.loads((run / "sentiment_report.json").read_text())
    items = [json.loads(line) for line in (run / "sentiment_report_items.jsonl").read_text().splitlines()]
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    sign = 1 if target == "positive" else -1

    def judge(variant):  # VADER recomputed here on the continuations alone
        return np.mean([sign * analyzer.polarity_scores(it[variant]["continuation"])["compound"] >= 0.05 for it in items])

    assert rep["after"]["mean_reward"] > rep["before"]["mean_reward"] + 0.3
    assert judge("after") > judge("before"), (target, judge("before"), judge("after"))
    if target == "positive":  # the untuned tiny GPT's gibberish already reads negative to the reward: less room
        assert judge("after") > judge("before") + 0.1


def test_reward_per_sample_class_hand_computed():
    """``RewardModel.rewards_from_logits`` with a class per row (``sentiment.rl_codes``) against each
    reward type written out by hand on three-class logits."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.3, -2.0], [-0.7, 1.5, 1.0]])
    index = torch.tensor([0, 2, 1])
    rm = S.RewardModel.__new__(S.RewardModel)
    rm.index = 2
    for kind in ("logit", "log_prob", "logit_margin"):
        rm.reward_type = kind
        got = rm.rewards_from_logits(logits, index)
        for i, t in enumerate(index.tolist()):
            row = logits[i].tolist()
            others = [v for j, v in enumerate(row) if j != t]
            want = {"logit": row[t], "log_prob": row[t] - math.log(sum(math.exp(v) for v in row)),
                    "logit_margin": row[t] - math.log(sum(math.exp(v) for v in others))}[kind]
            assert got[i].item() == pytest.approx(want, abs=1e-6), (kind, i)
        # without an index every row is scored for the target class (index 2)
        assert rm.rewards_from_logits(logits).tolist() == pytest.approx(rm.rewards_from_logits(logits, torch.full((3,), 2)).tolist())


def test_code_prompts_alternate_the_two_codes_per_rank_and_step():
    from zerolm.finetune.rl_algo import code_prompts

    codes = {"positive": [7, 8], "negative": [9]}
    qs = [[1], [2, 3], [4], [5]]
    coded, pols = code_prompts(qs, 0, codes)
    assert pols == ["positive", "negative", "positive", "negative"]
    assert coded == [[7, 8, 1], [9, 2, 3], [7, 8, 4], [9, 5]]
    assert code_prompts(qs, 1, codes)[1] == ["negative", "positive", "negative", "positive"]
    assert [code_prompts([[1]], s, codes)[1][0] for s in range(4)] == ["positive", "negative"] * 2  # one prompt per rank
    with pytest.raises(Exception, match="method ppo or rloo"):
        load_config(None, ["sentiment.method=control", "sentiment.rl_codes=true"])


def test_coded_rollout_scores_each_sample_for_its_own_code(control_run, polarity_reward):
    """``rollout`` with ``targets``: each continuation is scored for its code's class — checked against the
    reward classifier's logits turned into margins here by hand."""
    from zerolm.finetune.rl_algo import PolicyWithValueHead, code_prompts, rollout

    sc = load_config(None, ["sentiment.reward_type=logit_margin", "sentiment.reward_text=continuation",
                            "sentiment.response_min_tokens=4", "sentiment.response_max_tokens=6"]).sentiment
    lm, tok = S.load_policy(str(control_run / "hf"))
    reward = S.RewardModel(str(polarity_reward), "positive", None, "logit_margin")
    codes = {p: S.code_ids(tok, c) for p, c in sc.control_codes.items()}
    queries, pols = code_prompts([tok("The film is", add_special_tokens=False)["input_ids"]] * 4, 0, codes)
    cls = {p: reward.polarity_index(p) for p in ("positive", "negative")}
    assert cls["positive"] != cls["negative"]
    targets = torch.tensor([cls[p] for p in pols])
    ro = rollout(PolicyWithValueHead(lm).eval(), lm, reward, tok, S.stop_ids(lm, tok), queries, [6] * 4, sc,
                 torch.Generator().manual_seed(0), targets)
    resp = [[t for t, m in zip(row, mask) if m] for row, mask in zip(ro.batch["response"].tolist(), ro.mask.tolist())]
    logits = reward.logits([tok.decode(r, skip_special_tokens=True) for r in resp])
    for i, p in enumerate(pols):
        own, other = cls[p], cls["negative" if p == "positive" else "positive"]
        assert ro.scores[i].item() == pytest.approx((logits[i, own] - logits[i, other]).item(), abs=1e-5), i
    assert [q[: len(codes[p])] for q, p in zip(ro.queries, pols)] == [codes[p] for p in pols]


@pytest.fixture(scope="module")
def rloo_codes_run(control_run, polarity_reward, tmp_path_factory):
    """`--method rloo sentiment.rl_codes=true`, one process, 4 steps of 4 coded prompts × k=2, then
    `--report-only` for the negative code on that export."""
    run = tmp_path_factory.mktemp("rloo_codes")
    common = ["--method", "rloo", "--policy", control_run / "hf", "--reward", polarity_reward, "--run-dir", run,
              "sentiment.rl_codes=true", "sentiment.reward_type=logit_margin", "sentiment.reward_text=continuation",
              "sentiment.prompt_kinds={review: 1.0}", "sentiment.prompt_max_tokens=4", "sentiment.report_prompts=12",
              "tracking.wandb_mode=disabled"]
    sentiment_cli([*common, "--target", "positive", "sentiment.steps=4", "sentiment.batch_size=4", "sentiment.rloo_k=2",
                   "sentiment.mini_batch_size=4", "sentiment.ppo_epochs=1", "sentiment.trainable_layers=null",
                   "sentiment.max_minutes=null"])
    sentiment_cli([*common, "--target", "negative", "--report-only"])
    return run, json.loads((run / "sentiment_report.json").read_text())


def test_rl_codes_export_and_report_use_the_code(rloo_codes_run):
    from zerolm.finetune.rl_checkpoint import RESUME_KEYS
    from zerolm.pretrain import checkpoint as ckpt

    run, rep = rloo_codes_run
    meta = json.loads((run / "hf" / S.MARKER).read_text())
    assert meta["method"] == "rloo" and meta["rl_codes"] is True and meta["steps"] == 4
    assert meta["control_codes"] == {"positive": "Positive review:", "negative": "Negative review:"}
    card = (run / "hf" / "README.md").read_text()
    assert "control codes learnt by RLOO" in card and "control-codes" in card
    assert rep["target"] == "negative" and "before_with_code" in rep and "judge_delta_vs_code" in rep
    assert json.loads((run / "result.json").read_text())["report"]["judge_delta_vs_code"] == rep["judge_delta_vs_code"]
    items = [json.loads(line) for line in (run / "sentiment_report_items.jsonl").read_text().splitlines()]
    # the untuned model sampled with the same seeds with and without the negative code: the code changed the samples
    changed = sum(it["before"]["continuation"] != it["before_with_code"]["continuation"] for it in items)
    assert changed > len(items) // 2, (changed, len(items))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for r in rows:  # the step's reward is the mean of its two codes' halves (2 prompts × k of each per step)
        assert r["ppo/mean_reward"] == pytest.approx((r["ppo/reward_positive_code"] + r["ppo/reward_negative_code"]) / 2, abs=1e-5)
    # a resume must keep the codes: a checkpoint of this run refuses a run without them, naming the key
    def sig(codes: bool) -> dict:
        settings = {f"sentiment.{k}": (codes if k == "rl_codes" else None) for k in RESUME_KEYS}
        return ckpt.run_signature(world_size=1, micro_batch_size=None, gradient_accumulation_steps=None,
                                  global_batch_size=None, zero_stage=None, objective=None, precision="fp32",
                                  model_config=None, shapes=None, data_layout=None, settings=settings)

    # written as the override that fixes it (YAML booleans, not Python's True/False)
    assert ckpt.incompatibilities(sig(True), sig(False)) == [("sentiment.rl_codes true → false",
                                                              "set sentiment.rl_codes=true")]


def _judge_run(policy, reward, run: Path, steps: int, *extra: str) -> dict:
    """`--method rloo` on the tiny GPT with the held-out judge every 2 steps (32 prompts), checkpoints every
    2 steps kept; returns the run's judge.json."""
    sentiment_cli(["--method", "rloo", "--policy", policy, "--reward", reward, "--run-dir", run,
                   f"sentiment.steps={steps}", "sentiment.batch_size=4", "sentiment.rloo_k=2", "sentiment.mini_batch_size=4",
                   "sentiment.ppo_epochs=1", "sentiment.lr=3e-3", "sentiment.trainable_layers=null", "sentiment.max_minutes=null",
                   "sentiment.prompt_kinds={review: 1.0}", "sentiment.prompt_max_tokens=4", "sentiment.response_min_tokens=8",
                   "sentiment.response_max_tokens=16", "sentiment.judge_every=2", "sentiment.judge_prompts=32",
                   "sentiment.save_every=2", "sentiment.keep_last=10", "tracking.wandb_mode=disabled", *extra])
    return json.loads((run / "judge.json").read_text())


def _trained_in_export(hf: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(hf / "model.safetensors"))


def _trained_at(run: Path, step: int) -> dict[str, torch.Tensor]:
    """The policy's trainable parameters in the checkpoint of ``step`` (export names: no ``lm.``, no value head)."""
    from zerolm.pretrain import checkpoint as ckpt

    shared = ckpt.load_shared_state(run / "checkpoints", ckpt.tag_for(step))
    return {n.removeprefix("lm."): t for n, t in shared["model"].items() if n.startswith("lm.")}


def _same(export: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> bool:
    common = set(export) & set(params)
    assert len(common) >= len(params) - 1, (sorted(params)[:3], sorted(export)[:3])  # a tied head may be left out
    return all(torch.equal(export[n], params[n]) for n in common)


def test_held_out_judge_selects_the_export_and_survives_a_resume(control_run, reward_dir, tmp_path):
    """sentiment.judge_every: VADER on held-out prompts at steps 0, 2, 4, 6; the export is the policy of the best
    evaluation (checked against that step's checkpoint); a run stopped at step 4 and resumed to 6 judges and
    selects exactly as the uninterrupted one; judge_patience ends a run at the first evaluation without a new best."""
    policy = control_run / "hf"
    whole = _judge_run(policy, reward_dir, tmp_path / "whole", 6)
    hist = whole["history"]
    assert [h["step"] for h in hist] == [0, 2, 4, 6] and all(h["count"] == 32 for h in hist)
    for h in hist:  # VADER recomputed here on the continuations (one process: rank 0 sampled all 32)
        assert len(h["continuations_rank0"]) == 32
        assert h["hits"] == sum(judge_hits(vader_compound(h["continuations_rank0"]), "positive"))
        assert h["rate"] == h["hits"] / 32
    assert any(h["hits"] for h in hist)  # the tiny GPT's 8-16-token continuations do reach VADER's threshold
    best = max(range(len(hist)), key=lambda i: (hist[i]["rate"], -i))  # the highest rate, the earliest on ties
    assert whole["best_step"] == hist[best]["step"] and whole["best_rate"] == hist[best]["rate"]
    export = _trained_in_export(tmp_path / "whole" / "hf")
    chosen = (_trained_at(tmp_path / "whole", whole["best_step"]) if whole["best_step"] else
              {n: t for n, t in _trained_in_export(policy).items()})
    assert _same(export, chosen)
    if whole["best_step"] != 6:
        assert not _same(export, _trained_at(tmp_path / "whole", 6))
    meta = json.loads((tmp_path / "whole" / "hf" / S.MARKER).read_text())
    assert meta["judge"]["best_step"] == whole["best_step"] and len(meta["judge"]["history"]) == 4
    result = json.loads((tmp_path / "whole" / "result.json").read_text())
    assert result["judge"]["best_step"] == whole["best_step"]

    _judge_run(policy, reward_dir, tmp_path / "split", 4)
    split = _judge_run(policy, reward_dir, tmp_path / "split", 6)  # resumes from step 4's checkpoint
    assert [(h["step"], h["hits"]) for h in split["history"]] == [(h["step"], h["hits"]) for h in hist]
    assert split["best_step"] == whole["best_step"]
    assert _same(_trained_in_export(tmp_path / "split" / "hf"), {n: t for n, t in export.items()})

    early = _judge_run(policy, reward_dir, tmp_path / "early", 40, "sentiment.judge_patience=1")
    rates = [h["rate"] for h in early["history"]]
    stop = next((i for i in range(1, len(rates)) if rates[i] <= max(rates[:i])), None)
    result = json.loads((tmp_path / "early" / "result.json").read_text())
    if stop is None:  # every evaluation a new best: the run goes the distance
        assert result["status"] == "completed" and result["steps"] == 40
    else:
        assert result["status"] == "judge_stop" and result["steps"] == early["history"][stop]["step"] == 2 * stop
        assert len(rates) == stop + 1
        best = early["best_step"]  # the export is the best evaluation's policy, not the last step's
        chosen = _trained_at(tmp_path / "early", best) if best else _trained_in_export(policy)
        assert _same(_trained_in_export(tmp_path / "early" / "hf"), chosen)
        assert not _same(_trained_in_export(tmp_path / "early" / "hf"), _trained_at(tmp_path / "early", result["steps"]))


def test_judge_keeps_the_best_policy_until_a_better_one():
    """JudgeState: the live parameters at a new best are copied just before the next update changes them;
    a worse evaluation keeps that copy; a better one drops it (the live parameters are the best again)."""
    from zerolm.finetune.rl_judge import JudgeState

    w = torch.nn.Parameter(torch.zeros(3))
    params, js = {"w": w}, JudgeState()
    assert js.record(0, 2, 8) and js.best_params is None
    js.before_update(params, 0)
    with torch.no_grad():
        w.add_(1.0)  # the update of step 1
    js.before_update(params, 1)  # not the best step: nothing copied again
    assert not js.record(2, 2, 8) and js.best_step == 0 and js.since_best == 1  # a tie keeps the earlier
    assert torch.equal(js.best_params["w"], torch.zeros(3))
    assert js.record(4, 3, 8) and js.best_step == 4 and js.best_params is None and js.since_best == 0
    restored = JudgeState()
    restored.load_state_dict(js.state_dict())
    assert restored.best_step == 4 and restored.history == js.history
    assert not restored.record(6, 1, 8) and not restored.record(8, 3, 8) and restored.since_best == 2  # patience counts on


def test_held_out_judge_prompts_share_no_source_with_training():
    from zerolm.finetune.rl_judge import hold_out_judge_prompts
    from zerolm.finetune.sentiment_prompts import Prompt

    pool = [Prompt("review", [i], f"s{i % 5}") for i in range(20)]  # 5 source texts, each cut 4 times
    train, judge = hold_out_judge_prompts(pool, 2, max_share=1.0)
    assert [p.ids for p in judge] == [[18], [19]]  # the last two prompts, of sources s3 and s4
    assert {p.source for p in train} == {"s0", "s1", "s2"} and len(train) == 12
    with pytest.raises(Exception, match="holds out every source"):
        hold_out_judge_prompts(pool, 5, max_share=1.0)
    stories = [Prompt("story", [100 + i], f"t{i % 8}") for i in range(16)]  # 8 stories, then reviews last
    train, judge = hold_out_judge_prompts(stories + pool, 6)  # at most a quarter of each kind's sources
    assert sorted(p.kind for p in judge) == ["review", "story", "story"] and len(judge) == 3
    assert {p.source for p in judge} == {"s4", "t6", "t7"}
    assert len(train) == 36 - 2 * 2 - 4 and not {p.source for p in train} & {"s4", "t6", "t7"}


def test_judge_settings_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="judge_every"):
        load_config(REPO / "configs/finetune/sentiment_ppo.yaml", ["sentiment.judge_every=5", "sentiment.rl_codes=true"])
    with pytest.raises(ConfigError, match="judge_patience needs judge_every"):
        load_config(REPO / "configs/finetune/sentiment_ppo.yaml", ["sentiment.judge_patience=2"])
