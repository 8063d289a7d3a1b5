"""Hugging Face datasets as sources (``hf_dataset:``): ``save_to_disk`` folders (Dataset and DatasetDict)
and local dataset repositories, built here from the bundled real text, read by the streaming pipeline
like any other source — every document once over ranks × workers, bad rows counted, splits by name,
mixtures and exact resume."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from zerolm.config import DataConfig, SourceConfig, load_config
from zerolm.data_pipeline.loader import PackedDataLoader
from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
from zerolm.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def tok(trained_tokenizer):
    return load_pipeline_tokenizer(trained_tokenizer)


@pytest.fixture(scope="module")
def texts(prepared_corpus):
    paths = sorted((prepared_corpus / "train").glob("bbc_xsum-*.jsonl"))
    return [json.loads(line)["text"] for p in paths for line in p.open(encoding="utf-8")][:300]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, texts):
    """A DatasetDict (train: 240 documents in 3 Arrow shards + 1 empty and 1 null text; validation: 60)
    written by save_to_disk, and a Dataset folder of its train split."""
    import datasets

    root = tmp_path_factory.mktemp("hf")
    train = datasets.Dataset.from_dict({"text": texts[:240] + ["   ", None], "id": list(range(242))})
    valid = datasets.Dataset.from_dict({"text": texts[240:], "id": list(range(60))})
    datasets.DatasetDict({"train": train, "validation": valid}).save_to_disk(root / "dict", num_shards={"train": 3, "validation": 1})
    train.save_to_disk(root / "single", num_shards=2)
    return root


def _one_pass(cfg, tok, world: int) -> tuple[list[str], dict]:
    docs, skipped = [], Counter()
    for rank in range(world):
        loader = PackedDataLoader(cfg, split="validation", rank=rank, world_size=world, tokenizer=tok)
        streams: dict[int, list] = {}
        for b in loader:
            streams.setdefault(loader.last_worker, []).append(b["input_ids"][b["attention_mask"] == 1].numpy())
        for parts in streams.values():
            ids = np.concatenate(parts)
            cuts = np.flatnonzero(ids == tok.eos_id)
            docs += [tok.decode(ids[a + 1: b].tolist()) for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]
        skipped.update(loader.stats()["skipped_documents"])
    return docs, dict(skipped)


@pytest.mark.parametrize("where", ["dict", "single"])
def test_save_to_disk_dataset_read_once_over_ranks_and_workers(saved, trained_tokenizer, tok, texts, where):
    """2 ranks × 2 workers read every document of the split exactly once; the empty and the null row
    are skipped and counted."""
    src = [SourceConfig(name="hf", hf_dataset=str(saved / where), split="train")]
    cfg = DataConfig(sources=src, validation_sources=src, tokenizer_dir=str(trained_tokenizer), seq_len=128,
                     micro_batch_size=4, num_workers=2)
    docs, skipped = _one_pass(cfg, tok, 2)
    assert Counter(docs) == Counter(texts[:240])
    assert skipped == {"empty": 2}, skipped


def test_splits_and_local_repository(saved, tmp_path, trained_tokenizer, tok, texts):
    """A split is chosen by name (a missing one names the splits there are); a local dataset repository
    (parquet files and a card whose configs name the files of each split) is read through the data files
    ``datasets`` resolves for the split."""
    import datasets

    valid = [SourceConfig(name="hf", hf_dataset=str(saved / "dict"), split="validation")]
    cfg = DataConfig(sources=valid, validation_sources=valid, tokenizer_dir=str(trained_tokenizer), seq_len=128,
                     micro_batch_size=4, num_workers=0)
    assert Counter(_one_pass(cfg, tok, 1)[0]) == Counter(texts[240:])
    with pytest.raises(DataError, match=r"no split 'test'; its splits: \['train', 'validation'\]"):
        PackedDataLoader(cfg.model_copy(update={"sources": [SourceConfig(name="hf", hf_dataset=str(saved / "dict"),
                                                                               split="test")]}), tokenizer=tok)
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"text": texts[:100]}).to_parquet(repo / "data" / "part-a.parquet")
    datasets.Dataset.from_dict({"text": texts[100:150]}).to_parquet(repo / "data" / "part-b.parquet")
    datasets.Dataset.from_dict({"text": texts[150:170]}).to_parquet(repo / "data" / "held-out.parquet")
    (repo / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/part-*.parquet\n  - split: validation\n    path: data/held-out.parquet\n"
                                    "---\n# A local dataset\n")
    for split, want in (("train", texts[:150]), ("validation", texts[150:170])):
        src = [SourceConfig(name="repo", hf_dataset=str(repo), split=split)]
        c = cfg.model_copy(update={"validation_sources": src, "sources": src})
        assert Counter(_one_pass(c, tok, 2)[0]) == Counter(want), split


def test_mixture_with_a_file_source_resumes_exactly(saved, prepared_corpus, trained_tokenizer, tok):
    """An hf_dataset source mixed 1:1 with jsonl files, 2 ranks, 4 logical shards: stopped after 3 and 7
    steps and resumed from the JSON state, every later batch is the uninterrupted run's; both sources
    contribute blocks."""
    srcs = [SourceConfig(name="hf", hf_dataset=str(saved / "single")),
            SourceConfig(name="files", paths=[str(prepared_corpus / "train" / "legal_multilexsum-*.jsonl")])]
    cfg = DataConfig(sources=srcs, validation_sources=srcs, tokenizer_dir=str(trained_tokenizer), seq_len=64,
                     micro_batch_size=2, num_workers=0)
    for rank in range(2):
        it = iter(PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok))
        reference = [next(it)["input_ids"] for _ in range(12)]
        for stop in (3, 7):
            first = PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok)
            head = iter(first)
            for _ in range(stop):
                next(head)
            state = json.loads(json.dumps(first.state_dict()))
            used = {n for s in state["shards"].values() for n, p in s["sources"].items() if p["tokens"]}
            assert stop < 7 or used == {"hf", "files"}, used
            again = PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok)
            again.load_state_dict(state)
            tail = iter(again)
            assert all(bool((next(tail)["input_ids"] == want).all()) for want in reference[stop:]), (rank, stop)


def test_a_source_names_paths_or_a_dataset():
    with pytest.raises(ConfigError, match="give either paths or hf_dataset"):
        load_config(None, ["data.sources=[{name: x, paths: [a.jsonl], hf_dataset: d}]"])
    with pytest.raises(ConfigError, match="give either paths or hf_dataset"):
        load_config(None, ["data.sources=[{name: x}]"])
    cfg = load_config(None, ["data.sources=[{name: web, hf_dataset: some/dataset, split: train, weight: 2}]"])
    assert cfg.data.sources[0].hf_dataset == "some/dataset" and cfg.data.sources[0].weight == 2


def test_the_bundled_corpus_as_a_saved_dataset(prepared_corpus, tmp_path, trained_tokenizer, tok):
    """`zerolm data prepare --hf-dataset DIR` writes the prepared corpus as a DatasetDict that loads with
    ``datasets.load_from_disk`` (the same documents as the jsonl shards) and streams as an hf_dataset
    source (validation: every document once)."""
    import datasets

    from zerolm.data_pipeline.corpus import save_corpus_as_dataset

    counts = save_corpus_as_dataset(prepared_corpus, tmp_path / "corpus_ds")
    files = {s: [json.loads(line) for p in sorted((prepared_corpus / s).glob("*.jsonl")) for line in p.open()]
             for s in ("train", "validation")}
    assert counts == {s: len(v) for s, v in files.items()}
    loaded = datasets.load_from_disk(str(tmp_path / "corpus_ds"))
    assert Counter(loaded["validation"]["text"]) == Counter(r["text"] for r in files["validation"])
    src = [SourceConfig(name="corpus", hf_dataset=str(tmp_path / "corpus_ds"), split="validation")]
    cfg = DataConfig(sources=src, validation_sources=src, tokenizer_dir=str(trained_tokenizer), seq_len=256,
                     micro_batch_size=8, num_workers=0)
    docs, skipped = _one_pass(cfg, tok, 1)
    assert Counter(docs) == Counter(r["text"] for r in files["validation"]) and skipped == {}
