"""The streaming pipeline with a Hugging Face model's own tokenizer (continued pretraining): packing,
masking and exact resume on the real bundled corpus, checked against ``transformers.AutoTokenizer``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from zerolm.config import DataConfig, SourceConfig
from zerolm.data_pipeline.loader import PackedDataLoader
from zerolm.data_pipeline.hf_tokenizer import HFPipelineTokenizer
from zerolm.data_pipeline.tokenizer import (
    PipelineTokenizer,
    load_pipeline_tokenizer,
    model_tokenizer,
)
from zerolm.errors import DataError
from zerolm.hf_models import resolve_model_path

MINILM_CLS, MINILM_SEP, MINILM_MASK, MINILM_UNK = 101, 102, 103, 100  # bert-base-uncased vocab.txt lines


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    return resolve_model_path("minilm")


def _cfg(corpus: Path, tokdir, **kw) -> DataConfig:
    src = [SourceConfig(name="corpus", paths=[str(corpus / "train/*.jsonl")])]
    base = dict(sources=src, validation_sources=src, tokenizer_dir=str(tokdir), seq_len=64, micro_batch_size=4,
                num_workers=0, shuffle_files=False, shuffle_window=0)
    base.update(kw)
    return DataConfig(**base)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _shard_docs(corpus: Path, shard: int, num_shards: int):
    """The documents of logical shard ``shard`` without file shuffling: files ``shard, shard + n, …``
    of the sorted train shards (16 files ≥ n shards: split by file), records in file order."""
    files = sorted((corpus / "train").glob("*.jsonl"))[shard::num_shards]
    for f in files:
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)["text"]


def _expected_blocks(corpus, tokdir, shard, num_shards, separator, block_len, n_blocks):
    """Independent packing: each document through AutoTokenizer (no special tokens) + separator,
    concatenated and cut into ``block_len`` pieces."""
    hf = AutoTokenizer.from_pretrained(str(tokdir))
    stream: list[int] = []
    for text in _shard_docs(corpus, shard, num_shards):
        stream += hf(text, add_special_tokens=False)["input_ids"] + [separator]
        if len(stream) >= block_len * n_blocks:
            break
    return np.array(stream[: block_len * n_blocks], dtype=np.int64).reshape(n_blocks, block_len)


def test_load_dispatches_on_the_folder_kind(trained_tokenizer, hf_clm_tokenizer, minilm_dir, tmp_path):
    assert type(load_pipeline_tokenizer(trained_tokenizer)) is PipelineTokenizer
    gpt = load_pipeline_tokenizer(hf_clm_tokenizer)
    hf = AutoTokenizer.from_pretrained(str(hf_clm_tokenizer))
    assert isinstance(gpt, HFPipelineTokenizer) and gpt.model_type == "hf BPE"
    assert gpt.vocab_size == len(gpt) == len(hf) == 1000
    eot = hf.convert_tokens_to_ids("<|endoftext|>")
    assert (gpt.bos_id, gpt.eos_id, gpt.unk_id) == (eot, eot, eot)
    assert gpt.pad_id == eot, "no pad token: pad falls back to eos"
    assert gpt.cls_id is None and gpt.sep_id is None and gpt.mask_id is None
    bert = load_pipeline_tokenizer(minilm_dir)
    assert bert.model_type == "hf WordPiece" and bert.vocab_size == 30522
    assert (bert.cls_id, bert.sep_id, bert.mask_id, bert.unk_id, bert.pad_id) == (MINILM_CLS, MINILM_SEP, MINILM_MASK, MINILM_UNK, 0)
    assert bert.bos_id is None and bert.eos_id is None
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_pipeline_tokenizer(tmp_path / "empty")


def test_clm_blocks_equal_autotokenizer_packing(prepared_corpus, hf_clm_tokenizer):
    """4 logical shards (no file shuffle, no shuffle window): row q of every batch continues shard q's
    stream = its files' documents through AutoTokenizer, each followed by <|endoftext|>."""
    cfg = _cfg(prepared_corpus, hf_clm_tokenizer, seq_len=128)
    batches = _take(PackedDataLoader(cfg), 12)
    eot = AutoTokenizer.from_pretrained(str(hf_clm_tokenizer)).eos_token_id
    seps = 0
    for q in range(4):
        got = np.stack([b["input_ids"][q].numpy() for b in batches])
        want = _expected_blocks(prepared_corpus, hf_clm_tokenizer, q, 4, eot, 128, len(batches))
        assert (got == want).all(), f"shard {q}: first differing block {int(np.flatnonzero((got != want).any(1))[0])}"
        seps += int((got == eot).sum())
    assert seps >= 4, "the blocks span several documents"
    assert all(bool((b["labels"] == b["input_ids"]).all()) and bool((b["attention_mask"] == 1).all()) for b in batches)


@pytest.mark.parametrize("objective,workers", [("clm", 2), ("mlm", 0)])
def test_exact_resume(prepared_corpus, hf_clm_tokenizer, minilm_dir, objective, workers):
    """Global batch 8 = micro 2 × accumulation 4 (clm: 2 loader workers); stopped after 1 and 3 optimizer
    steps, resumed from the JSON round-tripped state: the later batches are bitwise the uninterrupted ones."""
    tokdir = hf_clm_tokenizer if objective == "clm" else minilm_dir
    cfg = _cfg(prepared_corpus, tokdir, objective=objective, seq_len=48, micro_batch_size=2, num_workers=workers)
    tok = load_pipeline_tokenizer(tokdir)
    total, accumulation = 16, 4
    reference = _take(PackedDataLoader(cfg, tokenizer=tok, global_batch_size=8), total)
    mid_document = 0
    for stop in (1, 3):
        first = PackedDataLoader(cfg, tokenizer=tok, global_batch_size=8)
        head = _take(first, stop * accumulation)
        state = json.loads(json.dumps(first.state_dict()))
        mid_document += sum(p["offset"] > 0 for w in state["shards"].values() for p in w["sources"].values())
        resumed = PackedDataLoader(cfg, tokenizer=tok, global_batch_size=8)
        resumed.load_state_dict(state)
        tail = _take(resumed, total - stop * accumulation)
        for i, (a, b) in enumerate(zip(reference, head + tail)):
            for k in ("input_ids", "labels", "attention_mask"):
                assert bool((a[k] == b[k]).all()), f"stop {stop}: batch {i} {k} differs"
    assert mid_document > 0, "some stops fall in the middle of a document"


def test_mlm_with_minilm_wordpiece(prepared_corpus, minilm_dir):
    """BERT recipe on MiniLM's own ids: [CLS] block [SEP], documents separated by [SEP], chosen positions
    carry [MASK] (or a random / the same token) with the original id as label, -100 elsewhere."""
    cfg = _cfg(prepared_corpus, minilm_dir, objective="mlm", seq_len=128)
    batches = _take(PackedDataLoader(cfg), 24)
    n = len(batches)
    ids = np.concatenate([np.stack([b["input_ids"][q].numpy() for b in batches]) for q in range(4)])
    labels = np.concatenate([np.stack([b["labels"][q].numpy() for b in batches]) for q in range(4)])
    inner = np.concatenate([_expected_blocks(prepared_corpus, minilm_dir, q, 4, MINILM_SEP, 126, n) for q in range(4)])
    want = np.concatenate([np.full((4 * n, 1), MINILM_CLS), inner, np.full((4 * n, 1), MINILM_SEP)], axis=1)
    assert (ids[:, 0] == MINILM_CLS).all() and (ids[:, -1] == MINILM_SEP).all()
    chosen = labels != -100
    assert (np.where(chosen, labels, ids) == want).all(), "unmasked ids + labels give back the AutoTokenizer packing"
    assert (inner == MINILM_SEP).sum() >= 8, "documents are separated by [SEP]"
    assert not chosen[:, [0, -1]].any() and not np.isin(labels[chosen], [MINILM_CLS, MINILM_SEP, MINILM_UNK]).any()
    assert (ids[~chosen] == want[~chosen]).all()
    assert not (ids[~chosen] == MINILM_MASK).any(), "[MASK] only at chosen positions"
    maskable = ~np.isin(want, [MINILM_CLS, MINILM_SEP, MINILM_UNK])
    rate = chosen.sum() / maskable.sum()
    as_mask = (ids[chosen] == MINILM_MASK).mean()
    assert 0.13 < rate < 0.17 and 0.76 < as_mask < 0.84, (rate, as_mask)
    randomised = chosen & (ids != MINILM_MASK) & (ids != labels)
    assert randomised.any() and (ids[randomised] > MINILM_MASK).all(), "random replacements skip [PAD], [unused*], specials"


def test_missing_special_token_fails_at_construction(prepared_corpus, hf_clm_tokenizer, minilm_dir):
    folder = str(hf_clm_tokenizer)
    with pytest.raises(DataError) as e:
        PackedDataLoader(_cfg(prepared_corpus, hf_clm_tokenizer, objective="mlm"))
    msg = str(e.value)
    assert folder in msg and "'mlm'" in msg
    assert "cls token" in msg and "sep token" in msg and "mask token" in msg
    with pytest.raises(DataError, match=r"has no eos token.*'clm'"):
        PackedDataLoader(_cfg(prepared_corpus, minilm_dir, objective="clm"))
    with pytest.raises(DataError, match=r"has no bos token.*add_bos"):
        PackedDataLoader(_cfg(prepared_corpus, minilm_dir, objective="mlm", add_bos=True))


def test_pickle_round_trip_and_threads(prepared_corpus, hf_clm_tokenizer, minilm_dir):
    texts = list(_shard_docs(prepared_corpus, 1, 8))[:40] + ["", "  spaces\n\ttabs  ", "émoji 🤖 ünïcode"]
    for d in (hf_clm_tokenizer, minilm_dir):
        tok = load_pipeline_tokenizer(d)
        back = pickle.loads(pickle.dumps(tok))
        hf = AutoTokenizer.from_pretrained(str(d))
        want = [hf(t, add_special_tokens=False)["input_ids"] for t in texts]
        assert tok.encode_batch(texts) == want and back.encode_batch(texts) == want
        assert tok.encode_batch(texts, num_threads=2) == want and [back.encode(t) for t in texts] == want
        for r in ("unk", "bos", "eos", "pad", "cls", "sep", "mask"):
            assert getattr(back, f"{r}_id") == getattr(tok, f"{r}_id")
        assert (back.vocab_size, back.model_type, back.tokenizer_dir) == (tok.vocab_size, tok.model_type, str(d))
        assert back.decode(want[0]) == hf.decode(want[0], skip_special_tokens=True)


def test_special_token_strings_in_text_are_plain_text(hf_clm_tokenizer, minilm_dir, tmp_path):
    """A literal "<|endoftext|>" / "[MASK]" in a document must not become a separator or a mask."""
    for d, text, special in ((hf_clm_tokenizer, "one <|endoftext|> two", "<|endoftext|>"), (minilm_dir, "the [MASK] sat", "[MASK]")):
        hf = AutoTokenizer.from_pretrained(str(d))
        sid = hf.convert_tokens_to_ids(special)
        ids = load_pipeline_tokenizer(d).encode(text)
        assert sid not in ids and ids == hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        matched = HFPipelineTokenizer.from_dir(d, split_special_tokens=False).encode(text)
        assert sid in matched and matched == hf(text, add_special_tokens=False)["input_ids"]
    # a saved tokenizer.json that truncates (sentence-transformers folders do) is not cut by the pipeline
    from tokenizers import Tokenizer

    folder = tmp_path / "truncating"
    folder.mkdir()
    tk = Tokenizer.from_file(str(Path(hf_clm_tokenizer) / "tokenizer.json"))
    tk.enable_truncation(8)
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text((Path(hf_clm_tokenizer) / "tokenizer_config.json").read_text())
    long_text = "word " * 50
    assert len(load_pipeline_tokenizer(folder).encode(long_text)) == len(load_pipeline_tokenizer(hf_clm_tokenizer).encode(long_text)) > 8


def test_model_tokenizer_keeps_a_foreign_tokenizer(hf_clm_tokenizer, minilm_dir, trained_tokenizer):
    for d, objective in ((minilm_dir, "mlm"), (hf_clm_tokenizer, "clm")):
        tok = model_tokenizer(d, objective, 96)
        hf = AutoTokenizer.from_pretrained(str(d))
        text = "The cat sat on the mat."
        assert tok(text)["input_ids"] == hf(text)["input_ids"] and tok.model_max_length == 96
        assert tok.all_special_tokens == hf.all_special_tokens
    assert model_tokenizer(minilm_dir, "mlm")("a")["input_ids"][0] == MINILM_CLS  # its own [CLS] … [SEP] template
    ours = model_tokenizer(trained_tokenizer, "mlm")
    assert ours("a")["input_ids"][0] == ours.cls_token_id, "zerolm's own folder still gets the objective's template"


def test_mlm_with_special_tokens_added_at_the_end_of_the_vocabulary(prepared_corpus, hf_clm_tokenizer, tmp_path):
    """A byte-level BPE given [CLS]/[SEP]/[MASK] as added tokens (ids 1000-1002, after the vocabulary, as
    GPT-2-derived tokenizers get them): vocab_size counts them, and random replacements come from the
    whole vocabulary (the ids after the largest special id would be none)."""
    hf = AutoTokenizer.from_pretrained(str(hf_clm_tokenizer))
    hf.add_special_tokens({"cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]"})
    hf.save_pretrained(str(tmp_path))
    tok = load_pipeline_tokenizer(tmp_path)
    assert tok.vocab_size == len(hf) == 1003 and (tok.cls_id, tok.sep_id, tok.mask_id) == (1000, 1001, 1002)
    batches = _take(PackedDataLoader(_cfg(prepared_corpus, tmp_path, objective="mlm", seq_len=128, micro_batch_size=8)), 6)
    ids = np.concatenate([b["input_ids"].numpy() for b in batches])
    labels = np.concatenate([b["labels"].numpy() for b in batches])
    randomised = (labels != -100) & (ids != tok.mask_id) & (ids != labels)
    assert randomised.sum() > 5 and (ids[randomised] < 1003).all() and (ids[randomised] < 1000).mean() > 0.9
