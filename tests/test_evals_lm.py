"""evals.lm: log-likelihoods, pseudo-log-likelihoods and generation checked against direct forward
passes of transformers on tiny models (our tokenizer, real corpus sentences)."""

from __future__ import annotations

import pytest
import torch

from zerolm.evals.lm import load_lm, model_kind
from zerolm.errors import DataError

SENTENCES = [
    "The court granted the motion to dismiss.",
    "The BBC reported that the match was postponed because of heavy rain in Manchester.",
    "Paris is the capital of France.",
]


def _manual_causal(model, ids: list[int]) -> list[float]:
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return [float(lp[t - 1, ids[t]]) for t in range(1, len(ids))]


def test_model_kind_and_errors(tiny_gpt, tiny_bert, tmp_path):
    """One vocabulary, the config's (clm/mlm), from a folder, a config or a model alike."""
    from transformers import AutoConfig, AutoModelForMaskedLM, BertConfig, BertForSequenceClassification, GPT2Config, LlamaConfig

    assert model_kind(tiny_gpt) == "clm" and load_lm(tiny_gpt).kind == "clm"
    assert model_kind(tiny_bert) == "mlm" and load_lm(tiny_bert).kind == "mlm"
    assert model_kind(AutoConfig.from_pretrained(tiny_gpt)) == "clm"
    assert model_kind(AutoModelForMaskedLM.from_pretrained(tiny_bert)) == "mlm"
    # configs never saved (no architectures): told by model type; a BERT decoder is causal
    assert [model_kind(c) for c in (GPT2Config(), LlamaConfig(), BertConfig(), BertConfig(is_decoder=True))] == \
        ["clm", "clm", "mlm", "clm"]
    with pytest.raises(DataError, match="neither a causal LM"):  # the class decides, not the config it came from
        model_kind(BertForSequenceClassification(AutoConfig.from_pretrained(tiny_bert)))
    with pytest.raises(DataError, match="config.json"):
        model_kind(tmp_path)
    (tmp_path / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    with pytest.raises(DataError, match="neither a causal LM"):
        load_lm(tmp_path)


def test_causal_loglikelihood_matches_forward_pass(tiny_gpt):
    lm = load_lm(tiny_gpt, batch_size=2)
    tok = lm.tokenizer
    requests = [("The court granted the", " motion to dismiss."), ("Paris is the capital of ", "France."),
                ("", "Paris is the capital of France."), (SENTENCES[1][:40], SENTENCES[1][40:])]
    got = lm.loglikelihood(requests)
    for (ctx, cont), (score, greedy) in zip(requests, got):
        if ctx:
            # trailing whitespace of the context belongs to the continuation (lm-eval convention)
            stripped = ctx.rstrip()
            cont = ctx[len(stripped):] + cont
            whole, n_ctx = tok(stripped + cont)["input_ids"], len(tok(stripped)["input_ids"])
        else:
            whole, n_ctx = [lm.prefix_token_id] + tok(cont, add_special_tokens=False)["input_ids"], 1
        per_token = _manual_causal(lm.model, whole)
        assert score == pytest.approx(sum(per_token[n_ctx - 1:]), abs=1e-4)
        assert isinstance(greedy, bool)
    # order of results follows the requests although they are batched longest-first
    assert [s for s, _ in lm.loglikelihood(requests[::-1])] == pytest.approx([s for s, _ in got[::-1]], abs=1e-4)


def test_rolling_windows_cover_long_texts_exactly(tiny_gpt):
    lm = load_lm(tiny_gpt, batch_size=4)
    lm.max_length = 16  # force several windows
    text = " ".join(SENTENCES)
    ids = [lm.prefix_token_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 40
    # windows of 16 tokens, each predicting 15 new tokens conditioned on the token before them
    expected = 0.0
    for start in range(0, len(ids) - 1, 15):
        expected += sum(_manual_causal(lm.model, ids[start:start + 16]))
    assert lm.loglikelihood_rolling([text])[0] == pytest.approx(expected, abs=1e-3)


def test_masked_pll_matches_masking_by_hand(tiny_bert):
    lm = load_lm(tiny_bert, batch_size=3)
    tok = lm.tokenizer
    text = SENTENCES[0]
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    expected = []
    for p in range(1, len(ids) - 1):
        masked = list(ids)
        masked[p] = tok.mask_token_id
        with torch.no_grad():
            lp = torch.log_softmax(lm.model(torch.tensor([masked])).logits[0, p], -1)
        expected.append(float(lp[ids[p]]))
    assert lm.loglikelihood_rolling([text])[0] == pytest.approx(sum(expected), abs=1e-4)
    got = lm.pseudo_log_likelihoods([ids], [[3, 1]])[0]
    assert got.tolist() == pytest.approx([expected[2], expected[0]], abs=1e-4)
    # loglikelihood of a continuation = PLL of the continuation's tokens only
    ctx, cont = "The court granted the", " motion to dismiss."
    n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
    score, _ = lm.loglikelihood([(ctx, cont)])[0]
    assert score == pytest.approx(sum(expected[n_ctx:]), abs=1e-4)
    with pytest.raises(DataError, match="causal LM"):
        lm.generate_until([("x", ["."], 3)])


def test_generate_until_cuts_at_stop_strings(tiny_gpt):
    lm = load_lm(tiny_gpt, batch_size=2)
    reqs = [("The court", ["\n"], 12), ("Paris is the capital of France. The", [" the", "."], 12)]
    full = lm.generate_until([(c, [], n) for c, _, n in reqs])
    cut = lm.generate_until(reqs)
    for (ctx, stops, _), f, c in zip(reqs, full, cut):
        assert f.startswith(c)
        hits = [f.index(s) for s in stops if s in f]
        assert len(c) == (min(hits) if hits else len(f))
    # greedy generation equals argmax decoding step by step
    ids = lm.tokenizer("The court")["input_ids"]
    for _ in range(5):
        with torch.no_grad():
            ids.append(int(lm.model(torch.tensor([ids])).logits[0, -1].argmax()))
    five = lm.generate_until([("The court", [], 5)])[0]
    assert five == lm.tokenizer.decode(ids[len(lm.tokenizer("The court")["input_ids"]):], skip_special_tokens=True)
