"""The streaming pipeline on the real bundled corpus: packing, sharding, mixtures, exact resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from zerolm.data_pipeline.loader import PackedDataLoader
from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
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


def _shard_epochs(cfg, tok, world_size: int = 2) -> dict[tuple[int, int], list[str]]:
    """Read the training stream of every (rank, worker) until it comes back to its first document
    (``shuffle_files=False``: each epoch replays the same plan) and return the documents of its first
    epoch, decoded from the emitted token ids (cut at EOS; a block may end mid-document)."""
    shards: dict[tuple[int, int], list[str]] = {}
    for rank in range(world_size):
        loader = PackedDataLoader(cfg, rank=rank, world_size=world_size, tokenizer=tok)
        tail: dict[int, np.ndarray] = {}
        docs: dict[int, list[str]] = {w: [] for w in range(cfg.num_workers)}
        wrapped: set[int] = set()
        for batch in loader:
            w = loader.last_worker
            if w in wrapped:
                continue
            ids = np.concatenate([tail.get(w, np.array([], dtype=np.int64)), batch["input_ids"].numpy().ravel()])
            start = 0
            for cut in np.flatnonzero(ids == tok.eos_id):
                text = tok.decode(ids[start:cut].tolist())
                start = cut + 1
                if docs[w] and text == docs[w][0]:
                    wrapped.add(w)
                    break
                docs[w].append(text)
            tail[w] = ids[start:]
            if len(wrapped) == cfg.num_workers:
                break
        shards.update({(rank, w): d for w, d in docs.items()})
    return shards


@pytest.mark.parametrize("pattern", ["train/bbc_xsum-*.jsonl", "train/legal_multilexsum-*.jsonl"])
def test_ranks_and_workers_read_disjoint_documents(prepared_corpus, trained_tokenizer, tok, pattern):
    """The training stream of 2 ranks x 2 workers, decoded: bbc_xsum has 3 files for 4 shards (split by
    record), legal_multilexsum 4 (split by file). Each shard's epoch holds distinct documents, the shards'
    document sets are disjoint and together are exactly the source's documents."""
    cfg = _cfg(prepared_corpus, trained_tokenizer, pattern=pattern, seq_len=256, micro_batch_size=16, shuffle_files=False)
    shards = _shard_epochs(cfg, tok)
    expected = _corpus_docs(prepared_corpus, pattern)
    assert len(set(expected)) == len(expected), "the prepared corpus is deduplicated"
    sets = {k: set(v) for k, v in shards.items()}
    for k, docs in shards.items():
        assert len(docs) == len(sets[k]), f"shard {k} repeats a document within one epoch"
        assert len(docs) > 0.15 * len(expected), f"shard {k} got {len(docs)} of {len(expected)} documents"
    keys = sorted(sets)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            shared = len(sets[a] & sets[b])
            assert shared == 0, f"(rank, worker) {a} and {b} share {shared} documents"
    union = set().union(*sets.values())
    unread, foreign = len(set(expected) - union), len(union - set(expected))
    assert unread == foreign == 0, f"{unread} documents unread, {foreign} not in the corpus"
    # with the default per-epoch file shuffle (all shards must agree on the order), the first
    # documents of each shard are still disjoint
    shuffled = _cfg(prepared_corpus, trained_tokenizer, pattern=pattern, seq_len=256, micro_batch_size=4)
    firsts: dict[tuple[int, int], set[str]] = {}
    for rank in range(2):
        loader = PackedDataLoader(shuffled, rank=rank, world_size=2, tokenizer=tok)
        by_worker: dict[int, list] = {}
        for batch in loader:
            by_worker.setdefault(loader.last_worker, []).append(batch["input_ids"].numpy().ravel())
            if min((len(v) for v in by_worker.values()), default=0) >= 6 and len(by_worker) == 2:
                break
        for w, parts in by_worker.items():
            ids = np.concatenate(parts)
            cuts = np.flatnonzero(ids == tok.eos_id)
            firsts[(rank, w)] = {tok.decode(ids[a + 1 : b].tolist()) for a, b in zip(np.r_[-1, cuts[:-1]], cuts)}
    assert all(len(v) >= 3 for v in firsts.values()), {k: len(v) for k, v in firsts.items()}
    read = set().union(*firsts.values())
    assert sum(map(len, firsts.values())) == len(read), "shuffled shards overlap"
    assert not read - set(expected), "documents that are not in the corpus"


def _source_of_block(row: np.ndarray, tok, texts: dict[str, str]) -> str:
    """The source whose text contains the block's longest EOS-free run of tokens, decoded (a block cut
    inside a byte-fallback character decodes it as U+FFFD: the longest clean part is used)."""
    pieces = [p[p != tok.eos_id] for p in np.split(row, np.flatnonzero(row == tok.eos_id))]
    longest = max(pieces, key=len)
    fragment = max(tok.decode(longest.tolist()).split("\ufffd"), key=len).strip()
    assert len(fragment) >= 40, f"fragment too short to attribute: {fragment!r}"
    hits = [name for name, text in texts.items() if fragment in text]
    assert len(hits) == 1, f"block attributed to {hits}: {fragment[:80]!r}"
    return hits[0]


def test_mixture_follows_weights(prepared_corpus, trained_tokenizer, tok):
    """Weights 3:1 over BBC news and legal case summaries. Each emitted block is attributed to its
    source by finding its decoded text in the sources' documents (independent of the loader's counters);
    the news share of 600 blocks is a Binomial(600, 0.75) draw: sd 0.0177, tolerance 4 sd (±0.071)."""
    pats = {"news": "train/bbc_xsum-*.jsonl", "legal": "train/legal_multilexsum-*.jsonl"}
    srcs = [SourceConfig(name="news", paths=[str(prepared_corpus / pats["news"])], weight=3.0),
            SourceConfig(name="legal", paths=[str(prepared_corpus / pats["legal"])], weight=1.0)]
    cfg = _cfg(prepared_corpus, trained_tokenizer, sources=srcs, num_workers=0, micro_batch_size=20)
    texts = {name: "\n".join(_corpus_docs(prepared_corpus, p)) for name, p in pats.items()}
    blocks = np.concatenate([b["input_ids"].numpy() for b in _take(PackedDataLoader(cfg, tokenizer=tok), 30)])
    counts = Counter(_source_of_block(row, tok, texts) for row in blocks)
    n = len(blocks)
    assert n == 600 and set(counts) == {"news", "legal"}
    share, sd = counts["news"] / n, (0.75 * 0.25 / n) ** 0.5
    assert abs(share - 0.75) < 4 * sd, f"news share of blocks {share:.3f}, weight 0.75 (sd {sd:.4f})"


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
    from zerolm.data_pipeline.masking import mask_tokens

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
