"""Shared fixtures: the real bundled corpus and a small tokenizer trained on it, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def prepared_corpus(tmp_path_factory):
    """The bundled real corpus prepared by `zerolm data prepare` (directory path)."""
    from data_pipeline.corpus import prepare_corpus
    from zerolm.config import CorpusConfig

    out = tmp_path_factory.mktemp("corpus")
    prepare_corpus(CorpusConfig(out_dir=str(out)), progress=False)
    return out


@pytest.fixture(scope="session")
def trained_tokenizer(prepared_corpus, tmp_path_factory):
    """A small (vocab 2000) BPE tokenizer trained on a 3 MB sample of the prepared corpus (directory path)."""
    from data_pipeline.tokenizer import train_tokenizer
    from zerolm.config import TokenizerConfig

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(
        TokenizerConfig(corpus_dir=str(prepared_corpus), out_dir=str(out), vocab_size=2000, sample_bytes=3_000_000),
        progress=False,
    )
    return out
