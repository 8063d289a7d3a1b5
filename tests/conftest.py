"""Shared fixtures: the real bundled corpus and a small tokenizer trained on it, built once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The longest test modules, longest first (seconds: the sum of their tests' durations in one `make test` on
# 2 CPU cores, 2026-12-01). `make test` runs `--dist loadfile --no-loadscope-reorder`: xdist hands whole
# modules to the workers in collection order as they free up, so starting with the long ones lets the short
# ones fill the tail (longest-processing-time-first scheduling). xdist's default order (most tests first) can
# start a long module late and leave one worker alone at the end; with this order the measured wall time
# was the sum of all durations / 2 + 13 s. Modules not listed keep their order, after these. Re-measure
# with `--durations=0` when a module grows.
SLOW_MODULES_FIRST = (
    "test_finetune_sentiment.py",  # 454
    "test_pretrain.py",  # 374
    "test_launch.py",  # 195
    "test_elastic_resume.py",  # 157
    "test_ppo_resume.py",  # 122
    "test_init_from.py",  # 121
    "test_trainer_features.py",  # 113
    "test_inloop_evals.py",  # 89
    "test_spike_recovery.py",  # 82
    "test_finetune_classify.py",  # 64
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """Put the modules of :data:`SLOW_MODULES_FIRST` first, in that order (a stable sort: the order of
    the tests within a module, and of the other modules, is what pytest collected)."""
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def prepared_corpus(tmp_path_factory):
    """The bundled real corpus prepared by `zerolm data prepare` (directory path)."""
    from zerolm.data_pipeline.corpus import prepare_corpus
    from zerolm.config import CorpusConfig

    out = tmp_path_factory.mktemp("corpus")
    prepare_corpus(CorpusConfig(out_dir=str(out)), progress=False)
    return out


@pytest.fixture(scope="session")
def trained_tokenizer(prepared_corpus, tmp_path_factory):
    """A small (vocab 2000) BPE tokenizer trained on a 3 MB sample of the prepared corpus (directory path)."""
    from zerolm.data_pipeline.tokenizer import train_tokenizer
    from zerolm.config import TokenizerConfig

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(
        TokenizerConfig(corpus_dir=str(prepared_corpus), out_dir=str(out), vocab_size=2000, sample_bytes=3_000_000),
        progress=False,
    )
    return out


def _tiny_hf_model(trained_tokenizer, out, family: str):
    """A randomly initialised tiny model of ``family`` (as pretraining builds it) + our tokenizer, saved
    as a Hugging Face folder: the shape of a `zerolm export` of a run."""
    import torch

    from zerolm.data_pipeline.tokenizer import load_hf_tokenizer, load_pipeline_tokenizer, save_hf_tokenizer, set_special_tokens_template
    from zerolm.pretrain.models import build_model, resolve_model_config, special_ids_of
    from zerolm.config import ModelConfig

    ptok = load_pipeline_tokenizer(trained_tokenizer)
    torch.manual_seed(0)
    model = build_model(resolve_model_config(ModelConfig(family=family, preset="tiny")), vocab_size=ptok.vocab_size,
                        seq_len=128, special_ids=special_ids_of(ptok))
    model.save_pretrained(str(out))
    tok = load_hf_tokenizer(trained_tokenizer)
    if family == "bert":
        set_special_tokens_template(tok, "mlm")
    tok.model_max_length = 128
    save_hf_tokenizer(tok, out)
    return out


@pytest.fixture(scope="session")
def tiny_bert(trained_tokenizer, tmp_path_factory):
    """A randomly initialised tiny BERT masked-LM (our tokenizer) as a Hugging Face folder."""
    return _tiny_hf_model(trained_tokenizer, tmp_path_factory.mktemp("tiny_bert"), "bert")


@pytest.fixture(scope="session")
def tiny_gpt(trained_tokenizer, tmp_path_factory):
    """A randomly initialised tiny GPT-2 causal-LM (our tokenizer) as a Hugging Face folder."""
    return _tiny_hf_model(trained_tokenizer, tmp_path_factory.mktemp("tiny_gpt"), "gpt2")


@pytest.fixture(scope="session")
def hf_clm_tokenizer(prepared_corpus, tmp_path_factory):
    """A Hugging Face byte-level BPE tokenizer folder (GPT-2 / SmolLM2 style, vocab 1000) trained with
    the ``tokenizers`` library on ~1 MB of the prepared corpus (the first documents of every train
    shard) and saved with ``PreTrainedTokenizerFast.save_pretrained``: ``<|endoftext|>`` (id 0) is bos,
    eos and unk; no pad, cls, sep or mask token. The shape of a foreign model's tokenizer (directory path)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    files = sorted((prepared_corpus / "train").glob("*.jsonl"))
    per_file = 1_000_000 // len(files)
    texts = []
    for f in files:
        size = 0
        with f.open(encoding="utf-8") as fh:
            for line in fh:
                texts.append(json.loads(line)["text"])
                size += len(texts[-1].encode("utf-8"))
                if size >= per_file:
                    break
    eot = "<|endoftext|>"
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    tk.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=1000, special_tokens=[eot], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    out = tmp_path_factory.mktemp("hf_clm_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=eot, eos_token=eot, unk_token=eot).save_pretrained(str(out))
    return out
