"""The streaming pipeline on the real bundled corpus: packing, sharding, mixtures, exact resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.loader import PackedDataLoader
from data_pipeline.tokenizer import load_pipeline_tokenizer
from zerolm.config import DataConfig, SourceConfig
from zerolm.errors import DataError


@pytest.fixture(scope="module")
def tok(trained_tokenizer):
    return load_pipeline_tokenizer(trained_tokenizer)


def _cfg(corpus: Path, tokdir: Path, pattern: str = "train/*.jsonl", **kw) -> DataConfig:
    src = [SourceConfig(name="corpus", paths=[str(corpus / pattern)])]
    base = dict(sources=src, validation_sources=src, tokenizer_dir=str(tokdir), seq_len=64, micro_batch_size=4, num_workers=2)
    base.update(kw)
    return DataConfig(**base)


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _corpus_docs(corpus: Path, pattern: str) -> list[str]:
    return [json.loads(line)["text"] for f in sorted(corpus.glob(pattern)) for line in f.open(encoding="utf-8")]


def _docs_from_blocks(batches, tok, sep_id) -> list[str]:
    """Split a shard's token stream at the separator and decode each document."""
    stream = np.concatenate([b["input_ids"][b["attention_mask"] == 1].numpy() for b in batches]) if batches else np.array([], dtype=np.int64)
    cuts = np.flatnonzero(stream == sep_id)
    docs, start = [], 0
    for c in cuts:
        docs.append(tok.decode(stream[start:c].tolist()))
        start = c + 1
    assert start == len(stream), "a finite pass must end on a document boundary"
    return docs


def test_clm_blocks_are_full_and_join_documents_with_eos(prepared_corpus, trained_tokenizer, tok):
    cfg = _cfg(prepared_corpus, trained_tokenizer, num_workers=0, shuffle_files=False)
    batches = _take(PackedDataLoader(cfg, tokenizer=tok), 30)
    ids = np.concatenate([b["input_ids"].numpy().ravel() for b in batches])
    assert all(b["input_ids"].shape == (4, 64) for b in batches)
    assert all(bool((b["attention_mask"] == 1).all()) for b in batches), "training blocks carry no padding"
    assert not (ids == tok.pad_id).any()
    assert (ids == tok.eos_id).sum() >= 2, "documents are separated by EOS"
    assert all(bool((b["labels"] == b["input_ids"]).all()) for b in batches), "causal-LM labels are the inputs (the model shifts)"
    # the token stream, cut at EOS, decodes back to the corpus documents in the file order
    first_file = sorted((prepared_corpus / "train").glob("*.jsonl"))[0]
    expected = [json.loads(line)["text"] for line in first_file.open(encoding="utf-8")]
    cuts = np.flatnonzero(ids == tok.eos_id)
    decoded = [tok.decode(ids[a + 1 : b].tolist()) for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]
    assert decoded == expected[: len(decoded)]


@pytest.mark.parametrize("pattern", ["train/bbc_xsum-*.jsonl", "train/wikipedia_boolq-*.jsonl"])
def test_one_pass_over_2_ranks_x_2_workers_reads_every_document_exactly_once(prepared_corpus, trained_tokenizer, tok, pattern):
    """bbc_xsum has fewer files than the 4 shards (split by record); boolq more (split by file)."""
    cfg = _cfg(prepared_corpus, trained_tokenizer, pattern=pattern, seq_len=128, micro_batch_size=8)
    seen: list[str] = []
    per_rank = []
    for rank in range(2):
        loader = PackedDataLoader(cfg, split="validation", rank=rank, world_size=2, tokenizer=tok)
        # decode per logical worker: each worker's stream is contiguous within its batches
        by_worker: dict[int, list] = {}
        for batch in loader:
            by_worker.setdefault(loader.last_worker, []).append(batch)
        docs = [d for w in sorted(by_worker) for d in _docs_from_blocks(by_worker[w], tok, tok.eos_id)]
        per_rank.append(len(docs))
        seen += docs
    expected = _corpus_docs(prepared_corpus, pattern)
    assert Counter(seen) == Counter(expected), "each document exactly once across ranks and workers"
    assert min(per_rank) > 0.3 * len(expected), f"both ranks get a fair share: {per_rank}"


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_exact_resume_at_several_points_2_ranks_x_2_workers(prepared_corpus, trained_tokenizer, tok, objective):
    cfg = _cfg(prepared_corpus, trained_tokenizer, objective=objective, seq_len=48, micro_batch_size=3)
    total = 10
    mid_document_stops = 0
    for rank in range(2):
        reference = _take(PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok), total)
        for stop in (1, 2, 5, 9):
            first = PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok)
            head = _take(first, stop)
            state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON round trip
            for w in state["workers"].values():
                for p in w["sources"].values():
                    mid_document_stops += p["offset"] > 0
            resumed = PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok)
            resumed.load_state_dict(state)
            tail = _take(resumed, total - stop)
            for i, (a, b) in enumerate(zip(reference, head + tail)):
                for k in ("input_ids", "labels", "attention_mask"):
                    assert bool((a[k] == b[k]).all()), f"rank {rank}, stop {stop}: batch {i} {k} differs"
    assert mid_document_stops > 0, "some stops must fall in the middle of a document"


def test_ranks_and_workers_read_disjoint_documents(prepared_corpus, trained_tokenizer, tok):
    cfg = _cfg(prepared_corpus, trained_tokenizer, seq_len=256, micro_batch_size=8)
    loaders = [PackedDataLoader(cfg, rank=r, world_size=2, tokenizer=tok) for r in range(2)]
    firsts = [_take(L, 6) for L in loaders]
    positions = set()
    for L in loaders:
        for w, st in L.state_dict()["workers"].items():
            p = st["sources"]["corpus"]
            assert p["documents"] > 0
            positions.add((L.rank, w, tuple(p["pos"])))
    assert len(positions) == 4, "2 ranks × 2 workers each hold their own position"
    rows = {tuple(row.tolist()) for b in sum(firsts, []) for row in b["input_ids"]}
    assert len(rows) == sum(b["input_ids"].shape[0] for b in sum(firsts, [])), "no block repeated across ranks/workers"


def test_mixture_follows_weights(prepared_corpus, trained_tokenizer, tok):
    srcs = [
        SourceConfig(name="news", paths=[str(prepared_corpus / "train/bbc_xsum-*.jsonl")], weight=3.0),
        SourceConfig(name="legal", paths=[str(prepared_corpus / "train/legal_multilexsum-*.jsonl")], weight=1.0),
    ]
    cfg = _cfg(prepared_corpus, trained_tokenizer, sources=srcs, num_workers=0, micro_batch_size=20)
    loader = PackedDataLoader(cfg, tokenizer=tok)
    _take(loader, 30)  # 600 blocks
    w = loader.state_dict()["workers"]["0"]["sources"]
    share = w["news"]["tokens"] / (w["news"]["tokens"] + w["legal"]["tokens"])
    assert 0.69 < share < 0.81, f"news share of blocks {share:.3f}, weight 0.75"


def test_mlm_masking_follows_bert_recipe(prepared_corpus, trained_tokenizer, tok):
    cfg = _cfg(prepared_corpus, trained_tokenizer, objective="mlm", seq_len=128, micro_batch_size=16, num_workers=0)
    loader = PackedDataLoader(cfg, tokenizer=tok)
    batches = _take(loader, 20)
    ids = np.concatenate([b["input_ids"].numpy() for b in batches])
    labels = np.concatenate([b["labels"].numpy() for b in batches])
    assert (ids[:, 0] == tok.cls_id).all() and (ids[:, -1] == tok.sep_id).all()
    chosen = labels != -100
    special = np.isin(labels, [tok.cls_id, tok.sep_id, tok.pad_id, tok.bos_id, tok.eos_id])
    assert not (chosen & special).any(), "special tokens are never chosen"
    maskable = ~np.isin(np.where(chosen, labels, ids), [tok.cls_id, tok.sep_id, tok.pad_id])
    rate = chosen.sum() / maskable.sum()
    assert 0.13 < rate < 0.17, rate
    as_mask = (ids[chosen] == tok.mask_id).mean()
    unchanged = (ids[chosen] == labels[chosen]).mean()
    assert 0.76 < as_mask < 0.84 and 0.07 < unchanged < 0.13, (as_mask, unchanged)
    again = _take(PackedDataLoader(cfg, tokenizer=tok), 1)[0]
    assert bool((again["labels"] == batches[0]["labels"]).all()), "the same sample index masks identically"
    # dynamic masking: the same block drawn under another sample seed gets another mask
    from data_pipeline.masking import mask_tokens

    block = ids[0].copy()
    kw = dict(mask_id=tok.mask_id, special_ids=np.array([tok.cls_id, tok.sep_id]), random_low=7, vocab_size=tok.vocab_size)
    m1, _ = mask_tokens(block, seed=1, **kw)
    m2, _ = mask_tokens(block, seed=2, **kw)
    assert not (m1 == m2).all()


def test_state_from_another_layout_is_refused(prepared_corpus, trained_tokenizer, tok):
    cfg = _cfg(prepared_corpus, trained_tokenizer)
    a = PackedDataLoader(cfg, rank=0, world_size=2, tokenizer=tok)
    _take(a, 2)
    b = PackedDataLoader(cfg, rank=0, world_size=4, tokenizer=tok)
    with pytest.raises(DataError, match="world_size"):
        b.load_state_dict(a.state_dict())


def test_missing_path_and_unknown_format_fail_before_work(tmp_path, trained_tokenizer, tok):
    cfg = DataConfig(sources=[SourceConfig(name="x", paths=[str(tmp_path / "nope/*.jsonl")])], tokenizer_dir=str(trained_tokenizer))
    with pytest.raises(DataError, match="nope"):
        PackedDataLoader(cfg, tokenizer=tok)
    (tmp_path / "data.csv").write_text("text\nhello\n")
    cfg = DataConfig(sources=[SourceConfig(name="x", paths=[str(tmp_path / "data.csv")])], tokenizer_dir=str(trained_tokenizer))
    with pytest.raises(DataError, match=r"data\.csv.*unknown format|unknown format.*data\.csv"):
        PackedDataLoader(cfg, tokenizer=tok)
    cfg = DataConfig(sources=[SourceConfig(name="x", paths=[str(tmp_path / "data.csv")], format="txt")],
                     tokenizer_dir=str(tmp_path / "no_tokenizer"))
    with pytest.raises(DataError, match="no_tokenizer"):
        PackedDataLoader(cfg)
