"""Tokenizer: sentencepiece trained on the real bundled corpus, its HF face, and the pipeline face.

Uses the session fixtures ``prepared_corpus`` (the real corpus) and ``trained_tokenizer`` (BPE, vocab
2000, 3 MB sample) from conftest.py.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from zerolm.data_pipeline.tokenizer import (
    FORMAT,
    META_FILE,
    SPECIAL_TOKENS,
    SPM_MODEL_FILE,
    PipelineTokenizer,
    load_hf_tokenizer,
    load_pipeline_tokenizer,
    save_hf_tokenizer,
    set_special_tokens_template,
    train_tokenizer,
)
from zerolm.config import TokenizerConfig
from zerolm.errors import DataError

# Lines that break naive tokenizer wrappers: whitespace runs, tabs, newlines, emoji, CJK, accents,
# control characters, leading/trailing spaces, non-breaking / zero-width spaces, digits, and text that
# spells special tokens (plain text for sentencepiece).
EDGE_CASES = [
    "a  b   c    d",
    "    four leading spaces",
    "trailing spaces    ",
    "tab\there\t\tand\t\t\tmore",
    "\ttab first",
    "line one\nline two\n\nafter a blank line\n",
    "\n\n\nleading newlines",
    "\r\nwindows\r\nline endings\r\n",
    " ",
    "\n",
    "\t \n \t",
    "emoji 😀🎉👍🏽 and a flag 🇩🇪 done",
    "中文字符测试, 日本語のテキスト, 한국어 문장",
    "café naïve résumé Ünïcödé Ångström façade",
    "Ελληνικά και русский текст",
    "control \x00\x01\x07\x1b\x7f chars",
    "non\u00a0breaking\u2003em\u200bzero\u200dwidth\ufeffbom",
    "digits 1234567890 3.14159 -42 1e-9 2024-01-31",
    "mixed   \t\n  whitespace \u3000 ideographic space",
    "code:\n    def f(x):\n\treturn x  # comment\n",
    "literal [MASK] and [CLS] [SEP] <s> </s> <unk> <pad> <0x41> in text",
    "x",
]


def _read_docs(corpus: Path, split: str) -> list[str]:
    docs = []
    for path in sorted((corpus / split).glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            docs.extend(json.loads(line)["text"] for line in f if line.strip())
    assert docs, f"no {split} documents in {corpus}"
    return docs


@pytest.fixture(scope="module")
def validation_docs(prepared_corpus) -> list[str]:
    return _read_docs(Path(prepared_corpus), "validation")


@pytest.fixture(scope="module")
def pipe(trained_tokenizer) -> PipelineTokenizer:
    return load_pipeline_tokenizer(trained_tokenizer)


@pytest.fixture(scope="module")
def hf(trained_tokenizer):
    return load_hf_tokenizer(trained_tokenizer)


def test_saved_folder_and_metadata(trained_tokenizer, prepared_corpus):
    d = Path(trained_tokenizer)
    for name in (SPM_MODEL_FILE, META_FILE, "tokenizer.json", "tokenizer_config.json"):
        assert (d / name).is_file(), name
    meta = json.loads((d / META_FILE).read_text())
    assert meta["format"] == FORMAT
    assert meta["model_type"] == "bpe" and meta["vocab_size"] == 2000
    assert 0 < meta["sample_bytes"] <= 3_000_000 and meta["sample_docs"] > 100
    assert meta["seed"] == 1234
    if (Path(prepared_corpus) / "manifest.json").is_file():
        assert len(meta["corpus_manifest_sha256"]) == 64
    # loadable by transformers 4 and 5 alike
    assert json.loads((d / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    # no temporary folders left next to it
    assert not [p for p in d.parent.iterdir() if p.name.startswith(f".{d.name}.")]


def test_pipeline_lossless_on_all_validation_docs(pipe, validation_docs):
    ids = pipe.encode_batch(validation_docs)
    assert len(ids) == len(validation_docs)
    for doc, seq in zip(validation_docs, ids):
        assert pipe.decode(seq) == doc
        assert pipe.unk_id not in seq  # byte fallback: never <unk>
    # real compression, not bytes
    n_bytes = sum(len(d.encode("utf-8")) for d in validation_docs)
    assert n_bytes / sum(map(len, ids)) > 2.5  # ~2.9 bytes/token at vocab 2000


def test_hf_tokenizer_is_fast_and_matches_pipeline(hf, pipe, validation_docs):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(hf, PreTrainedTokenizerFast) and hf.is_fast
    assert len(hf) == pipe.vocab_size
    texts = validation_docs + EDGE_CASES
    expected = pipe.encode_batch(texts)
    # split_special_tokens=True: literal "[MASK]" is plain text, as in sentencepiece
    got = hf(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    for text, e, g in zip(texts, expected, got):
        assert g == e, f"HF ids differ from sentencepiece on {text[:80]!r}"
        assert hf.decode(g) == text, f"HF decode not lossless on {text[:80]!r}"
        assert pipe.decode(e) == text
        assert pipe.unk_id not in e
    # default HF call adds no special tokens (pretraining packs its own)
    assert hf("hello world")["input_ids"] == pipe.encode("hello world")


def test_hf_default_matches_special_token_strings(hf, pipe):
    """Documented difference: without split_special_tokens, HF maps a literal "[MASK]" to the mask id."""
    ids = hf("a [MASK] b", add_special_tokens=False)["input_ids"]
    assert pipe.mask_id in ids
    assert pipe.mask_id not in pipe.encode("a [MASK] b")


def test_special_tokens_set_distinct_and_shared(hf, pipe):
    hf_ids = {
        "bos": hf.bos_token_id,
        "eos": hf.eos_token_id,
        "unk": hf.unk_token_id,
        "pad": hf.pad_token_id,
        "cls": hf.cls_token_id,
        "sep": hf.sep_token_id,
        "mask": hf.mask_token_id,
    }
    assert all(isinstance(i, int) for i in hf_ids.values()), hf_ids
    assert len(set(hf_ids.values())) == len(hf_ids)
    for role, token in SPECIAL_TOKENS.items():
        assert hf_ids[role] == getattr(pipe, f"{role}_id"), role
        assert hf.convert_ids_to_tokens(hf_ids[role]) == token
        assert pipe.id_to_piece(hf_ids[role]) == token


def test_pickle_round_trip(pipe, validation_docs):
    clone = pickle.loads(pickle.dumps(pipe))
    assert clone is not pipe and clone.vocab_size == pipe.vocab_size
    assert (clone.bos_id, clone.eos_id, clone.pad_id, clone.mask_id) == (pipe.bos_id, pipe.eos_id, pipe.pad_id, pipe.mask_id)
    texts = validation_docs[:20] + EDGE_CASES
    assert clone.encode_batch(texts) == pipe.encode_batch(texts)
    assert clone.encode_batch(texts, num_threads=2) == pipe.encode_batch(texts)


def test_mlm_and_clm_templates(trained_tokenizer, tmp_path):
    tok = load_hf_tokenizer(trained_tokenizer)
    set_special_tokens_template(tok, "mlm")
    ids = tok("x")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and len(ids) == 3
    pair = tok("x", "y")["input_ids"]
    assert pair[0] == tok.cls_token_id and pair.count(tok.sep_token_id) == 2 and pair[-1] == tok.sep_token_id
    assert tok.decode(tok("a b")["input_ids"], skip_special_tokens=True) == "a b"
    # survives save → AutoTokenizer reload
    save_hf_tokenizer(tok, tmp_path / "mlm")
    reloaded = load_hf_tokenizer(tmp_path / "mlm")
    assert reloaded("x")["input_ids"] == ids
    set_special_tokens_template(reloaded, "clm")
    assert reloaded("x")["input_ids"] == ids[1:-1]
    with pytest.raises(ValueError, match="objective"):
        set_special_tokens_template(reloaded, "seq2seq")


def test_unigram_matches_hf(prepared_corpus, validation_docs, tmp_path):
    """Unigram: ids equal, except possibly at float32-vs-float64 near-ties (documented in the module)."""
    import sentencepiece as spm

    out = tmp_path / "unigram"
    report = train_tokenizer(
        TokenizerConfig(corpus_dir=str(prepared_corpus), out_dir=str(out), vocab_size=1000,
                        model_type="unigram", sample_bytes=1_000_000),
        progress=False,
    )
    assert report["model_type"] == "unigram" and report["vocab_size"] == 1000
    pipe = load_pipeline_tokenizer(out)
    hf = load_hf_tokenizer(out)
    assert pipe.model_type == "unigram"
    sp = spm.SentencePieceProcessor(model_file=str(out / SPM_MODEL_FILE))
    special_strings = {p for p in SPECIAL_TOKENS.values()} | {"<0x41>"}
    texts = validation_docs + [t for t in EDGE_CASES if not any(s in t for s in special_strings)]
    expected = pipe.encode_batch(texts)
    got = hf(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    differing = 0
    for text, e, g in zip(texts, expected, got):
        assert pipe.decode(e) == text and hf.decode(g) == text, text[:80]
        assert pipe.unk_id not in e and pipe.unk_id not in g
        if e != g:  # only a near-tie between two equally good segmentations is acceptable
            differing += 1
            score_e, score_g = sum(map(sp.get_score, e)), sum(map(sp.get_score, g))
            assert abs(score_e - score_g) < 1e-3, f"unigram ids differ beyond a near-tie on {text[:80]!r}"
    assert differing <= max(1, len(texts) // 100)
    # literal special-piece strings whose characters are all in the vocabulary stay plain text on the HF
    # side too (control/byte pieces get a prohibitive score in the HF Unigram model)
    vocab = hf.get_vocab()
    literal = [f"see {s} here" for s in sorted(special_strings | {"<0x0A>", "<0x30>"}) if all(c in vocab for c in s)]
    assert literal, "expected some special strings spelled with in-vocabulary characters"
    got = hf(literal, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert got == pipe.encode_batch(literal)


def test_training_is_deterministic_and_replaces_atomically(prepared_corpus, tmp_path):
    cfg = TokenizerConfig(corpus_dir=str(prepared_corpus), out_dir=str(tmp_path / "a"), vocab_size=500, sample_bytes=400_000, seed=7)
    first = train_tokenizer(cfg, progress=False)
    json.dumps(first)  # the CLI prints it as JSON
    model_a = (tmp_path / "a" / SPM_MODEL_FILE).read_bytes()
    # retrain over the existing folder: replaced, same bytes, nothing left behind
    second = train_tokenizer(cfg, progress=False)
    assert (tmp_path / "a" / SPM_MODEL_FILE).read_bytes() == model_a
    assert second["sample_docs"] == first["sample_docs"] and second["sample_bytes"] == first["sample_bytes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    # another seed draws another sample
    other = train_tokenizer(cfg.model_copy(update={"out_dir": str(tmp_path / "b"), "seed": 8}), progress=False)
    assert other["sample_bytes"] != first["sample_bytes"]


def test_missing_inputs_raise_data_error(tmp_path):
    missing = tmp_path / "no_such_corpus"
    with pytest.raises(DataError, match="no_such_corpus"):
        train_tokenizer(TokenizerConfig(corpus_dir=str(missing), out_dir=str(tmp_path / "tok")), progress=False)
    empty = tmp_path / "empty_corpus"
    (empty / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="empty_corpus"):
        train_tokenizer(TokenizerConfig(corpus_dir=str(empty), out_dir=str(tmp_path / "tok")), progress=False)
    assert not (tmp_path / "tok").exists()
    with pytest.raises(DataError, match="no_such_tokenizer"):
        load_pipeline_tokenizer(tmp_path / "no_such_tokenizer")
    with pytest.raises(DataError, match="no_such_tokenizer"):
        load_hf_tokenizer(tmp_path / "no_such_tokenizer")


def test_refuses_to_overwrite_foreign_dir_and_reports_bad_vocab(prepared_corpus, tmp_path):
    foreign = tmp_path / "not_a_tokenizer"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="not_a_tokenizer"):
        train_tokenizer(TokenizerConfig(corpus_dir=str(prepared_corpus), out_dir=str(foreign), vocab_size=500,
                                        sample_bytes=200_000), progress=False)
    assert (foreign / "precious.txt").read_text() == "keep me"
    # a vocabulary the sample cannot fill is a DataError, not a sentencepiece crash
    with pytest.raises(DataError, match="vocab_size=60000"):
        train_tokenizer(TokenizerConfig(corpus_dir=str(prepared_corpus), out_dir=str(tmp_path / "big"), vocab_size=60000,
                                        sample_bytes=20_000), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_tokenizer"]


def test_cli_tokenizer_train(prepared_corpus, tmp_path, capsys):
    from zerolm.cli import main

    out = tmp_path / "cli_tok"
    rc = main(["tokenizer", "train", "--data", str(prepared_corpus), "--out", str(out), "--vocab-size", "500",
               "--quiet", "tokenizer.sample_bytes=300000"])
    assert rc == 0
    assert (out / SPM_MODEL_FILE).is_file()
    assert load_pipeline_tokenizer(out).vocab_size == 500
    assert '"zerolm-tokenizer/1"' in capsys.readouterr().out
