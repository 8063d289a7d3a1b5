"""The streaming pipeline on the real bundled corpus: packing, sharding, mixtures, exact resume."""

from __future__ import annotations

import hashlib
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
    ids = np.concatenate([b["input_ids"][0].numpy() for b in batches])  # row 0: logical shard 0's stream
    assert all(b["input_ids"].shape == (4, 64) for b in batches)
    assert all(bool((b["attention_mask"] == 1).all()) for b in batches), "training blocks carry no padding"
    assert not (ids == tok.pad_id).any()
    assert (ids == tok.eos_id).sum() >= 2, "documents are separated by EOS"
    assert all(bool((b["labels"] == b["input_ids"]).all()) for b in batches), "causal-LM labels are the inputs (the model shifts)"
    # logical shard 0's token stream, cut at EOS, decodes back to the corpus documents in the order of
    # its first file (4 shards, 16 files: shard 0 owns files 0, 4, 8, 12)
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
    """Global batch 12 = micro 3 × accumulation 2 × 2 ranks; stopped after 1, 2, 4 and 5 optimizer steps
    and resumed from the JSON round-tripped state: every later micro-batch is bitwise the uninterrupted one."""
    cfg = _cfg(prepared_corpus, trained_tokenizer, objective=objective, seq_len=48, micro_batch_size=3)
    total, accumulation = 12, 2
    mid_document_stops = 0
    for rank in range(2):
        reference = _take(PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok, global_batch_size=12), total)
        for stop in (1, 2, 4, 5):
            first = PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok, global_batch_size=12)
            head = _take(first, stop * accumulation)
            state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON round trip
            assert state["steps"] == stop and len(state["shards"]) == 6
            for w in state["shards"].values():
                for p in w["sources"].values():
                    mid_document_stops += p["offset"] > 0
            resumed = PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok, global_batch_size=12)
            resumed.load_state_dict(state)
            tail = _take(resumed, total - stop * accumulation)
            for i, (a, b) in enumerate(zip(reference, head + tail)):
                for k in ("input_ids", "labels", "attention_mask"):
                    assert bool((a[k] == b[k]).all()), f"rank {rank}, stop {stop}: batch {i} {k} differs"
        mid = PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok, global_batch_size=12)
        _take(mid, 3)
        with pytest.raises(DataError, match="optimizer-step boundaries"):
            mid.state_dict()
    assert mid_document_stops > 0, "some stops must fall in the middle of a document"


def _row_hash(batch, i) -> str:
    h = hashlib.sha1()
    for k in ("input_ids", "labels", "attention_mask"):
        h.update(batch[k][i].numpy().tobytes())
    return h.hexdigest()


def _global_batches(pieces, cfg, tok, glob: int) -> list[frozenset]:
    """Run the data side of a training run in pieces ``[(world_size, num_workers, steps), …]``, each
    resumed from the merged states of all ranks of the piece before (as the trainer does), and return
    each global batch as the set of its micro-batches, each micro-batch the set of its samples' hashes."""
    from zerolm.data_pipeline.loader import merge_states

    out: list[frozenset] = []
    state = None
    for world, workers, steps in pieces:
        c = cfg.model_copy(update={"num_workers": workers})
        per_rank, states = [], []
        for rank in range(world):
            loader = PackedDataLoader(c, rank=rank, world_size=world, tokenizer=tok, global_batch_size=glob)
            if state is not None:
                loader.load_state_dict(json.loads(json.dumps(state)))
            micro = _take(loader, steps * loader.accumulation)
            per_rank.append([micro[s * loader.accumulation:(s + 1) * loader.accumulation] for s in range(steps)])
            states.append(loader.state_dict())
        for s in range(steps):
            out.append(frozenset(frozenset(_row_hash(b, i) for i in range(len(b["input_ids"])))
                                 for r in range(world) for b in per_rank[r][s]))
        state = merge_states(states)
    return out


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_elastic_resume_gives_the_same_global_batches(prepared_corpus, trained_tokenizer, tok, objective):
    """The strong form of elastic resume: a run of 9 steps (global batch 16, micro-batch 2) continued
    on 2 → 1 → 4 ranks, and one with loader workers 2 → 0 → 1 at 2 ranks, see exactly the global
    batches of the uninterrupted 2-rank run, each split into the same micro-batches (masked-LM: with
    the same masks), so nothing is lost, nothing repeated and per-micro-batch means are unchanged."""
    cfg = _cfg(prepared_corpus, trained_tokenizer, objective=objective, seq_len=48, micro_batch_size=2)
    reference = _global_batches([(2, 0, 9)], cfg, tok, 16)
    assert len(set(reference)) == 9 and all(len(g) == 8 for g in reference)
    samples = [h for g in reference for mb in g for h in mb]
    assert len(samples) == len(set(samples)) == 9 * 16, "no sample repeats within the run"
    assert _global_batches([(2, 2, 3), (1, 0, 3), (4, 1, 3)], cfg, tok, 16) == reference, "ranks 2 → 1 → 4"
    assert _global_batches([(2, 2, 3), (2, 0, 3), (2, 1, 3)], cfg, tok, 16) == reference, "workers 2 → 0 → 1"


def test_a_global_batch_that_does_not_split_fails_before_reading(prepared_corpus, trained_tokenizer, tok):
    from zerolm.data_pipeline.loader import step_layout

    assert step_layout(16, 2, 2, 4) == (8, 4, 2)
    with pytest.raises(DataError, match=r"does not split over 3 ranks; world sizes that do: \[1, 2, 4, 8\]"):
        step_layout(16, 3, 2, 1)
    with pytest.raises(DataError, match=r"micro-batch sizes that fit: \[1, 2, 4, 8\]"):
        step_layout(16, 2, 3, 1)
    with pytest.raises(DataError, match=r"data.num_workers=3 does not divide the 8 .* worker counts that do: \[0, 1, 2, 4, 8\]"):
        step_layout(16, 2, 2, 3)
    cfg = _cfg(prepared_corpus, trained_tokenizer, micro_batch_size=2, num_workers=3)
    with pytest.raises(DataError, match="num_workers=3"):
        PackedDataLoader(cfg, rank=0, world_size=2, tokenizer=tok, global_batch_size=16)


def _shard_epochs(cfg, tok, world_size: int = 2) -> dict[int, list[str]]:
    """Read the training stream of every logical shard (one row of each global batch) until it comes
    back to its first document (``shuffle_files=False``: each epoch replays the same plan) and return
    the documents of its first epoch, decoded from the emitted token ids (cut at EOS; a block may end
    mid-document)."""
    shards: dict[int, list[str]] = {}
    for rank in range(world_size):
        loader = PackedDataLoader(cfg, rank=rank, world_size=world_size, tokenizer=tok)
        tail: dict[int, np.ndarray] = {}
        docs: dict[int, list[str]] = {q: [] for q in loader.logical_shards}
        wrapped: set[int] = set()
        for batch in loader:
            for row, q in enumerate(loader.last_shards):
                if q in wrapped:
                    continue
                ids = np.concatenate([tail.get(q, np.array([], dtype=np.int64)), batch["input_ids"][row].numpy()])
                start = 0
                for cut in np.flatnonzero(ids == tok.eos_id):
                    text = tok.decode(ids[start:cut].tolist())
                    start = cut + 1
                    if docs[q] and text == docs[q][0]:
                        wrapped.add(q)
                        break
                    docs[q].append(text)
                tail[q] = ids[start:]
            if len(wrapped) == len(docs):
                break
        shards.update(docs)
    return shards


@pytest.mark.parametrize("pattern", ["train/bbc_xsum-*.jsonl", "train/legal_multilexsum-*.jsonl"])
def test_logical_shards_read_disjoint_documents(prepared_corpus, trained_tokenizer, tok, pattern):
    """The training stream of 2 ranks x 2 workers over 4 logical shards (global batch 4), decoded per
    shard: bbc_xsum has 3 files for 4 shards (split by record), legal_multilexsum 4 (split by file). Each
    shard's epoch holds distinct documents, the shards' document sets are disjoint and together are
    exactly the source's documents."""
    cfg = _cfg(prepared_corpus, trained_tokenizer, pattern=pattern, seq_len=256, micro_batch_size=2, shuffle_files=False)
    shards = _shard_epochs(cfg, tok)
    assert sorted(shards) == [0, 1, 2, 3]
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
            assert shared == 0, f"logical shards {a} and {b} share {shared} documents"
    union = set().union(*sets.values())
    unread, foreign = len(set(expected) - union), len(union - set(expected))
    assert unread == foreign == 0, f"{unread} documents unread, {foreign} not in the corpus"
    # with the default per-epoch file shuffle (all shards must agree on the order), the first
    # documents of each shard are still disjoint
    shuffled = _cfg(prepared_corpus, trained_tokenizer, pattern=pattern, seq_len=256, micro_batch_size=2)
    firsts: dict[int, set[str]] = {}
    for rank in range(2):
        loader = PackedDataLoader(shuffled, rank=rank, world_size=2, tokenizer=tok)
        rows: dict[int, list] = {}
        for batch in _take(loader, 24):
            for row, q in enumerate(loader.last_shards):
                rows.setdefault(q, []).append(batch["input_ids"][row].numpy())
        for q, parts in rows.items():
            ids = np.concatenate(parts)
            cuts = np.flatnonzero(ids == tok.eos_id)
            firsts[q] = {tok.decode(ids[a + 1 : b].tolist()) for a, b in zip(np.r_[-1, cuts[:-1]], cuts)}
    assert sorted(firsts) == [0, 1, 2, 3] and all(len(v) >= 3 for v in firsts.values()), {k: len(v) for k, v in firsts.items()}
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


def test_state_from_another_stream_is_refused(prepared_corpus, trained_tokenizer, tok):
    """A state resumes on another world size only for the same global batch (= logical shards) and
    stream; one rank's state alone cannot feed a rank that owns other shards."""
    cfg = _cfg(prepared_corpus, trained_tokenizer)
    a = PackedDataLoader(cfg, rank=0, world_size=2, tokenizer=tok)
    _take(a, 2)
    b = PackedDataLoader(cfg, rank=0, world_size=4, tokenizer=tok)
    with pytest.raises(DataError, match=r"logical_shards=8, this run has 16 \(= the global batch size\)"):
        b.load_state_dict(a.state_dict())
    c = PackedDataLoader(cfg, rank=1, world_size=2, tokenizer=tok)
    with pytest.raises(DataError, match=r"lacks logical shards \[4, 5, 6, 7\]"):
        c.load_state_dict(a.state_dict())
    d = PackedDataLoader(_cfg(prepared_corpus, trained_tokenizer, seq_len=32), rank=0, world_size=2, tokenizer=tok)
    with pytest.raises(DataError, match="seq_len=64, this run has 32"):
        d.load_state_dict(a.state_dict())


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


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_shuffle_window_permutes_the_stream_and_resumes_exactly(prepared_corpus, trained_tokenizer, tok, objective):
    """``data.shuffle_window=4``: in every 4 steps each logical shard emits exactly the 4 blocks the
    unshuffled stream gives it in those steps, in another order (causal-LM: compared block by block;
    masked-LM masks depend on the emission order); a run split into pieces of 3 steps (so that every
    restore but one falls inside a window) on 2 → 1 → 4 ranks sees exactly the uninterrupted run's
    global batches."""
    cfg = _cfg(prepared_corpus, trained_tokenizer, objective=objective, seq_len=48, micro_batch_size=2,
               shuffle_window=4)
    reference = _global_batches([(2, 0, 9)], cfg, tok, 16)
    assert _global_batches([(2, 2, 3), (1, 0, 3), (4, 1, 3)], cfg, tok, 16) == reference, "ranks 2 → 1 → 4"
    if objective == "clm":
        plain = _global_batches([(2, 0, 8)], cfg.model_copy(update={"shuffle_window": 0}), tok, 16)
        flat = lambda gs: [h for g in gs for mb in g for h in mb]  # noqa: E731
        for w in (slice(0, 4), slice(4, 8)):
            assert sorted(flat(reference[w])) == sorted(flat(plain[w])), "a window holds the same blocks"
        assert flat(reference[:8]) != flat(plain), "in another order"
    shuffled = PackedDataLoader(cfg, rank=0, world_size=1, tokenizer=tok, global_batch_size=16)
    _take(shuffled, 8)
    plain_loader = PackedDataLoader(cfg.model_copy(update={"shuffle_window": 0}), rank=0, world_size=1, tokenizer=tok,
                                    global_batch_size=16)
    with pytest.raises(DataError, match="shuffle_window=4, this run has 0"):
        plain_loader.load_state_dict(shuffled.state_dict())


def test_whole_files_of_unequal_size_are_named_and_the_shards_drift_apart(prepared_corpus, trained_tokenizer, tok,
                                                                          tmp_path, caplog):
    """4 files dealt whole to 4 logical shards, one file a twelfth of the others: rank 0 warns with the
    shards' bytes per epoch (here: the smallest and largest file's sizes, read off the disk), and what it
    warns of happens — after 100 steps the shard on the small file is past its first epoch while the
    others are still in it. Equal files, or rank 1, say nothing."""
    import logging

    docs = [line for f in sorted(prepared_corpus.glob("train/bbc_xsum-*.jsonl")) for line in f.open(encoding="utf-8")]
    for name, counts in (("unequal", (60, 60, 60, 5)), ("equal", (40, 40, 40, 40))):
        (tmp_path / name).mkdir()
        start = 0
        for i, n in enumerate(counts):
            (tmp_path / name / f"part-{i}.jsonl").write_text("".join(docs[start:start + n]), encoding="utf-8")
            start += n
    cfg = _cfg(tmp_path, trained_tokenizer, "unequal/*.jsonl", num_workers=0, shuffle_window=0)
    sizes = sorted(p.stat().st_size for p in (tmp_path / "unequal").glob("*.jsonl"))
    with caplog.at_level(logging.WARNING, logger="zerolm.data_pipeline.loader"):
        loader = PackedDataLoader(cfg, tokenizer=tok)
        PackedDataLoader(_cfg(tmp_path, trained_tokenizer, "unequal/*.jsonl", num_workers=0, micro_batch_size=2),
                         tokenizer=tok, rank=1, world_size=2)
        PackedDataLoader(_cfg(tmp_path, trained_tokenizer, "equal/*.jsonl", num_workers=0), tokenizer=tok)
    said = [r.getMessage() for r in caplog.records if "dealt" in r.getMessage()]
    assert len(said) == 1 and f"read {sizes[0] / 1e6:.2f}–{sizes[-1] / 1e6:.2f} MB per epoch" in said[0], said
    _take(loader, 100)
    epochs = {q: st["sources"]["corpus"]["pos"][0] for q, st in loader.state_dict()["shards"].items()}
    assert sorted(epochs.values())[:3] == [0, 0, 0] and max(epochs.values()) >= 1, epochs
