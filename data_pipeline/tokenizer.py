"""Tokenizer: train sentencepiece on a sample of the prepared corpus, save it as a Hugging Face folder.

One trained model, two faces that give the same ids:

* ``{out_dir}/tokenizer.model`` — the sentencepiece model. The streaming pipeline encodes with it
  directly (:class:`PipelineTokenizer`): one core, vocab 8000, the bundled corpus, same session:
  sentencepiece BPE ~1.5 M tokens/s vs the HF fast tokenizer ~1.0 M; unigram ~4.3 M vs ~0.8 M.
* ``tokenizer.json`` + ``tokenizer_config.json`` — a ``tokenizers.Tokenizer`` built from that model,
  wrapped in :class:`transformers.PreTrainedTokenizerFast`, so ``AutoTokenizer.from_pretrained(out_dir)``
  loads a *fast* tokenizer for export, finetuning and evals.
* ``zerolm_tokenizer.json`` — metadata (format ``zerolm-tokenizer/1``, model type, vocab size,
  special token ids, the sample it was trained on, seed, corpus manifest hash).

A Hugging Face model's own tokenizer folder (continued pretraining, ``model.init_from``) is the third
kind of ``data.tokenizer_dir``: :func:`load_pipeline_tokenizer` gives :class:`~zerolm.data_pipeline.hf_tokenizer.HFPipelineTokenizer` for
it (its ``tokenizers`` pipeline as ``AutoTokenizer`` builds it) and :func:`model_tokenizer` returns
the folder's tokenizer unchanged.

Settings chosen so that ``decode(encode(text)) == text`` for any text (lossless) and HF ≡ sentencepiece:
identity normalisation, no extra-whitespace removal, no dummy prefix, byte fallback (so no ``<unk>``
ever comes out of encode), digits split. The HF side mirrors it with a ``Replace(' ', '▁')``
normaliser, a non-prepending ``Metaspace`` pre-tokenizer and a ``Replace → ByteFallback → Fuse``
decoder. The ``transformers`` sentencepiece wrappers (``LlamaTokenizer``, ``T5Tokenizer``) are not
used: they silently disagree with sentencepiece on whitespace-heavy text or decode byte-fallback pieces
as literal ``<0x0A>`` (docs/stack-notes.md).

Known, shared limits (sentencepiece and HF behave identically, both documented here):

* the character ``▁`` (U+2581) in input text decodes as a space — sentencepiece's whitespace marker;
* control symbols (``[CLS]`` …) never come out of sentencepiece's encode: a literal ``"[MASK]"`` in the
  text is plain text. The HF tokenizer by default *matches* special-token strings in text; call it
  with ``split_special_tokens=True`` (or set ``tok.split_special_tokens = True``) to get
  sentencepiece's behaviour.

Model types: BPE (the default) gives identical ids (0 differences on the 13,059 documents of the bundled
corpus plus whitespace/unicode edge cases). Unigram gives identical ids except at near-ties between
two segmentations of a word: sentencepiece sums piece scores in float32, ``tokenizers`` in float64, so
paths whose scores differ by ~1e-5 can resolve differently (measured on the bundled corpus, vocab
8000: 2 of 13,059 documents, 8 of 3.7 M tokens; both segmentations decode to the same text). With
unigram and ``split_special_tokens=True``, a literal special-piece string (``"[MASK]"``, ``"<0x41>"``)
whose characters are not all in the vocabulary may also come out as that piece on the HF side.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from zerolm.config import TokenizerConfig
from zerolm.fsutil import check_replaceable, staged_dir, write_json
from zerolm.errors import DataError
from zerolm.data_pipeline.hf_tokenizer import HFPipelineTokenizer

logger = logging.getLogger(__name__)

FORMAT = "zerolm-tokenizer/1"
SPM_MODEL_FILE = "tokenizer.model"
META_FILE = "zerolm_tokenizer.json"

#: Special tokens by role. unk/bos/eos/pad are sentencepiece's reserved ids 0–3; cls/sep/mask are
#: sentencepiece *control symbols* (ids 4–6): they have ids but are never produced by encode.
SPECIAL_TOKENS: dict[str, str] = {
    "unk": "<unk>",
    "bos": "<s>",
    "eos": "</s>",
    "pad": "<pad>",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
}

# sentencepiece rejects longer sentences while training (skips them); we cut lines to fit instead.
_MAX_SENTENCE_BYTES = 16384
# Score given to control/unknown/byte pieces in the HF Unigram model so that Viterbi does not pick them
# for literal text such as "[CLS]" or "<0x41>" (sentencepiece excludes those piece types from encode).
# tokenizers scores an unknown character min(score) - 10, so a special piece still wins where one of
# its characters is not in the vocabulary (documented above); normal text never contains such pieces.
_UNUSABLE_PIECE_SCORE = -1e9


def _spm():
    import sentencepiece as spm

    return spm


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _train_files(corpus_dir: Path) -> list[Path]:
    train_dir = corpus_dir / "train"
    if not corpus_dir.is_dir():
        raise DataError(f"tokenizer corpus directory not found: {corpus_dir}")
    files = sorted(train_dir.glob("*.jsonl"))
    if not files:
        raise DataError(f"no training shards {train_dir / '*.jsonl'} in corpus directory {corpus_dir}")
    return files


def _iter_docs(files: list[Path], counts: dict[str, int], bar: Any) -> Iterator[str]:
    """Yield the ``text`` of every record of the jsonl files (bad records are skipped and counted)."""
    for path in files:
        with open(path, "rb") as f:
            for raw in f:
                bar.update(len(raw))
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    counts["bad_json"] = counts.get("bad_json", 0) + 1
                    continue
                text = rec.get("text") if isinstance(rec, dict) else None
                if not isinstance(text, str):
                    counts["no_text"] = counts.get("no_text", 0) + 1
                    continue
                yield text


def _split_long_line(line: str, max_bytes: int = _MAX_SENTENCE_BYTES) -> Iterator[str]:
    """Cut a line into pieces of at most ``max_bytes`` UTF-8 bytes, preferring to cut before a space."""
    if len(line.encode("utf-8")) <= max_bytes:
        yield line
        return
    max_chars = max_bytes // 4  # 4 bytes per character at most: every piece fits
    while line:
        if len(line) <= max_chars:
            yield line
            return
        cut = line.rfind(" ", max_chars // 2, max_chars)
        cut = cut if cut > 0 else max_chars
        yield line[:cut]
        line = line[cut:]


def _sample_lines(files: list[Path], sample_bytes: int, seed: int, progress: bool) -> tuple[list[str], dict[str, int]]:
    """A deterministic seeded sample of documents, split into non-empty lines.

    One streaming pass over the shards (in sorted order): each document is kept with probability
    ``sample_bytes / total_shard_bytes`` drawn from ``random.Random(seed)`` (Bernoulli sampling: every
    shard and source is represented in proportion), and never beyond ``sample_bytes`` of text. Shard
    bytes exceed text bytes (JSON quoting, other fields), so the sample is a little under the limit.
    Memory is bounded by the sample, and the same corpus + seed gives the same sample.
    """
    from tqdm.auto import tqdm

    total = sum(p.stat().st_size for p in files)
    keep_p = min(1.0, sample_bytes / max(total, 1))
    rng = random.Random(seed)
    counts: dict[str, int] = {"docs_read": 0, "docs": 0, "bytes": 0, "lines": 0}
    lines: list[str] = []
    with tqdm(total=total, unit="B", unit_scale=True, desc="tokenizer sample", disable=not progress) as bar:
        for text in _iter_docs(files, counts, bar):
            counts["docs_read"] += 1
            if keep_p < 1.0 and rng.random() >= keep_p:
                continue
            n = len(text.encode("utf-8"))
            if counts["bytes"] + n > sample_bytes and counts["docs"] > 0:
                continue  # full for this document; a smaller later one may still fit
            counts["docs"] += 1
            counts["bytes"] += n
            for line in text.split("\n"):
                if line:
                    lines.extend(_split_long_line(line))
    counts["lines"] = len(lines)
    return lines, counts


def _train_spm(lines: list[str], cfg: TokenizerConfig) -> bytes:
    """Train sentencepiece in memory and return the serialized model proto."""
    spm = _spm()
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(cfg.seed)
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=buf,
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            byte_fallback=True,
            split_digits=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            control_symbols=[SPECIAL_TOKENS["cls"], SPECIAL_TOKENS["sep"], SPECIAL_TOKENS["mask"]],
            max_sentence_length=_MAX_SENTENCE_BYTES,
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. "Vocabulary size is too high" on a tiny sample
        raise DataError(
            f"sentencepiece training failed on {len(lines)} lines from {cfg.corpus_dir} "
            f"(vocab_size={cfg.vocab_size}, model_type={cfg.model_type}): {e}"
        ) from e
    return buf.getvalue()


def _manifest_sha256(corpus_dir: Path) -> str | None:
    manifest = corpus_dir / "manifest.json"
    if not manifest.is_file():
        return None
    return hashlib.sha256(manifest.read_bytes()).hexdigest()


def train_tokenizer(cfg: TokenizerConfig, progress: bool = True) -> dict[str, Any]:
    """Train a sentencepiece tokenizer on a sample of a prepared corpus and save it as a HF folder.

    Reads ``{cfg.corpus_dir}/train/*.jsonl`` (records with a ``text`` field, as written by
    ``data_pipeline.corpus``), takes a deterministic sample of up to ``cfg.sample_bytes`` bytes of text
    (seeded by ``cfg.seed``), splits documents into non-empty lines and trains sentencepiece
    (``cfg.model_type`` BPE or unigram, ``cfg.vocab_size``) in memory, with settings that make
    encode → decode lossless (identity normalisation, byte fallback, no dummy prefix, whitespace kept).

    ``cfg.out_dir`` then holds (written to a temporary folder next to it and renamed into place):
    ``tokenizer.model`` (sentencepiece, for :class:`PipelineTokenizer`), ``tokenizer.json`` and
    ``tokenizer_config.json`` (a fast tokenizer ``transformers.AutoTokenizer`` loads, giving the same
    ids; no special tokens added by default — see :func:`set_special_tokens_template`) and
    ``zerolm_tokenizer.json`` (metadata).

    Approach: sentencepiece (Kudo & Richardson 2018) with byte fallback as in Llama/T5-style
    tokenizers; the HF tokenizer is built from the model's pieces with
    ``transformers.tokenization_utils_sentencepiece.SentencePieceExtractor`` and a ``tokenizers``
    pipeline that mirrors sentencepiece (see :func:`build_hf_tokenizer`).

    Args:
        cfg: the ``tokenizer`` config section (corpus_dir, out_dir, vocab_size, model_type,
            sample_bytes, seed).
        progress: show a tqdm progress bar over the sampling pass.

    Returns:
        A JSON-serialisable report: the metadata written to ``zerolm_tokenizer.json`` plus
        ``out_dir``, ``files``, ``seconds`` (total) and ``train_seconds`` (sentencepiece alone).

    Raises:
        DataError: the corpus directory or its ``train/*.jsonl`` shards are missing, the sample holds
            no text, sentencepiece cannot train on it (e.g. vocab_size too large for the sample), or
            ``out_dir`` is a non-empty folder that is not a previous tokenizer (never overwritten).
    """
    t0 = time.perf_counter()
    corpus_dir = Path(cfg.corpus_dir)
    out_dir = Path(cfg.out_dir).resolve()
    files = _train_files(corpus_dir)
    check_replaceable(out_dir, lambda d: (d / META_FILE).is_file(), "tokenizer output directory")
    lines, counts = _sample_lines(files, cfg.sample_bytes, cfg.seed, progress)
    skipped = {k: v for k, v in counts.items() if k in ("bad_json", "no_text")}
    if skipped:
        logger.warning("tokenizer sample: skipped records %s", skipped)
    if not lines:
        raise DataError(f"no text to train the tokenizer on in {corpus_dir / 'train'} ({counts['docs_read']} documents read)")
    logger.info(
        "training sentencepiece %s (vocab %d) on %d documents, %d lines, %.1f MB ...",
        cfg.model_type, cfg.vocab_size, counts["docs"], len(lines), counts["bytes"] / 1e6,
    )
    t1 = time.perf_counter()
    proto = _train_spm(lines, cfg)
    train_seconds = time.perf_counter() - t1
    del lines
    logger.info("sentencepiece trained in %.1f s", train_seconds)

    with staged_dir(out_dir) as tmp:
        model_path = tmp / SPM_MODEL_FILE
        model_path.write_bytes(proto)
        hf_tok = build_hf_tokenizer(model_path)
        save_hf_tokenizer(hf_tok, tmp)
        pipe = PipelineTokenizer(proto)
        meta: dict[str, Any] = {
            "format": FORMAT,
            "model_type": cfg.model_type,
            "vocab_size": pipe.vocab_size,
            "special_tokens": {role: {"token": tok, "id": getattr(pipe, f"{role}_id")} for role, tok in SPECIAL_TOKENS.items()},
            "sample_docs": counts["docs"],
            "sample_bytes": counts["bytes"],
            "sample_lines": counts["lines"],
            "sample_bytes_limit": cfg.sample_bytes,
            "seed": cfg.seed,
            "corpus_dir": str(corpus_dir),
            "corpus_manifest_sha256": _manifest_sha256(corpus_dir),
            "sentencepiece_version": _spm().__version__,
        }
        write_json(tmp / META_FILE, meta, indent=2)
        files_written = sorted(p.name for p in tmp.iterdir())
    seconds = time.perf_counter() - t0
    logger.info("tokenizer saved to %s (%.1f s)", out_dir, seconds)
    return {
        **meta,
        "out_dir": str(cfg.out_dir),
        "files": files_written,
        "train_seconds": round(train_seconds, 3),
        "seconds": round(seconds, 3),
    }


# --------------------------------------------------------------------------------------------------
# Hugging Face face
# --------------------------------------------------------------------------------------------------


def build_hf_tokenizer(model_path: str | Path):
    """Build a fast Hugging Face tokenizer that gives the same ids as a sentencepiece model.

    The sentencepiece model must have been trained with the settings of :func:`train_tokenizer`
    (identity normalisation, no dummy prefix, whitespace kept, byte fallback). Pieces and scores come
    from ``transformers.tokenization_utils_sentencepiece.SentencePieceExtractor``; the ``tokenizers``
    pipeline is: normaliser ``Replace(' ', '▁')``, pre-tokenizer ``Metaspace(prepend_scheme='never')``,
    model ``BPE`` (merges ranked by the id of the merged piece, byte fallback) or ``Unigram`` (piece
    scores, byte fallback), decoder ``Replace('▁', ' ') → ByteFallback → Fuse``. Control, unknown and
    byte pieces are kept out of BPE merges and get a prohibitive Unigram score, because sentencepiece
    never produces them from text. No post-processor: no special tokens are added.

    Args:
        model_path: path of a sentencepiece ``.model`` file.

    Returns:
        A ``transformers.PreTrainedTokenizerFast`` with bos/eos/unk/pad/cls/sep/mask set.

    Raises:
        DataError: the model is missing or is not BPE/unigram.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"sentencepiece model not found: {model_path}")
    extractor = SentencePieceExtractor(str(model_path))
    sp = extractor.sp
    vocab, vocab_scores, merges = extractor.extract()
    # Pieces sentencepiece never emits from text: <unk>, control symbols (<s>, [CLS] …), byte pieces.
    unusable = {
        sp.id_to_piece(i)
        for i in range(sp.get_piece_size())
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)
    }
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_path.read_bytes())
    model_type = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
    unk_token = SPECIAL_TOKENS["unk"]
    if model_type == "BPE":
        merges = [(a, b) for a, b in merges if a not in unusable and b not in unusable and a + b not in unusable]
        model = models.BPE(vocab=vocab, merges=merges, unk_token=unk_token, fuse_unk=True, byte_fallback=True)
    elif model_type == "UNIGRAM":
        scores = [(piece, _UNUSABLE_PIECE_SCORE if piece in unusable else score) for piece, score in vocab_scores]
        model = models.Unigram(scores, unk_id=sp.unk_id(), byte_fallback=True)
    else:
        raise DataError(f"{model_path}: unsupported sentencepiece model type {model_type} (expected BPE or UNIGRAM)")
    tk = Tokenizer(model)
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        pad_token=SPECIAL_TOKENS["pad"],
        cls_token=SPECIAL_TOKENS["cls"],
        sep_token=SPECIAL_TOKENS["sep"],
        mask_token=SPECIAL_TOKENS["mask"],
        clean_up_tokenization_spaces=False,
    )


def save_hf_tokenizer(hf_tokenizer, out_dir: str | Path) -> None:
    """``save_pretrained`` the fast tokenizer, recording ``tokenizer_class`` as ``PreTrainedTokenizerFast``.

    transformers 5 writes its own class name (``TokenizersBackend``), which transformers 4 cannot load;
    ``PreTrainedTokenizerFast`` loads as the same fast tokenizer in both. Use this (not a bare
    ``save_pretrained``) when exporting the tokenizer with a model.

    Args:
        hf_tokenizer: a fast tokenizer (e.g. from :func:`load_hf_tokenizer`).
        out_dir: destination folder (created if missing).
    """
    out = Path(out_dir)
    hf_tokenizer.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def set_special_tokens_template(hf_tokenizer, objective: Literal["clm", "mlm"]) -> None:
    """Install the post-processor that adds the objective's special tokens when a user calls the tokenizer.

    Pretraining packs its own sequences (documents + EOS) from :class:`PipelineTokenizer` ids, so the
    saved tokenizer adds nothing. The exported model's tokenizer should behave as its family expects:

    * ``"mlm"`` (BERT-style): ``[CLS] $A [SEP]``, pairs ``[CLS] $A [SEP] $B [SEP]`` (token type 1 for
      the second segment and its ``[SEP]``), as ``BertTokenizerFast`` does. ``[MASK]`` also absorbs
      the space before it (``lstrip``, as RoBERTa's and ModernBERT's ``<mask>``): ``"of [MASK]."``
      gives ``▁of [MASK] .``, as when pretraining masked the word piece ``▁France``, not ``▁of ▁ [MASK] .``
      (a lone ``▁`` is followed by digits in this corpus, so fill-mask answered with digits).
    * ``"clm"`` (GPT-style): nothing added (``$A`` / ``$A $B``), as GPT-2's tokenizer does; generation
      code adds BOS/EOS itself where it wants them.

    The tokenizer is modified in place; :func:`save_hf_tokenizer` (``save_pretrained``) then stores the
    template in ``tokenizer.json`` and ``AutoTokenizer`` reloads it. Token type ids are returned only
    when asked (``return_token_type_ids=True``) unless ``model_input_names`` lists them.

    Args:
        hf_tokenizer: a fast tokenizer from :func:`load_hf_tokenizer` / :func:`build_hf_tokenizer`.
        objective: ``"clm"`` or ``"mlm"``.

    Raises:
        ValueError: unknown objective.
        DataError: the tokenizer lacks ``[CLS]``/``[SEP]`` (mlm).
    """
    from tokenizers import processors

    if objective == "mlm":
        cls, sep = SPECIAL_TOKENS["cls"], SPECIAL_TOKENS["sep"]
        cls_id, sep_id = hf_tokenizer.convert_tokens_to_ids(cls), hf_tokenizer.convert_tokens_to_ids(sep)
        if cls_id is None or sep_id is None or cls_id == hf_tokenizer.unk_token_id or sep_id == hf_tokenizer.unk_token_id:
            raise DataError(f"tokenizer has no {cls}/{sep} tokens: cannot install the mlm template")
        post = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0",
            pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, cls_id), (sep, sep_id)],
        )
        from tokenizers import AddedToken

        hf_tokenizer.add_special_tokens({"mask_token": AddedToken(
            SPECIAL_TOKENS["mask"], lstrip=True, rstrip=False, normalized=False, special=True)})
    elif objective == "clm":
        post = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    else:
        raise ValueError(f"objective must be 'clm' or 'mlm', got {objective!r}")
    hf_tokenizer.backend_tokenizer.post_processor = post


def load_hf_tokenizer(tokenizer_dir: str | Path):
    """Load the saved tokenizer folder with ``transformers.AutoTokenizer`` (a fast tokenizer).

    Args:
        tokenizer_dir: a folder written by :func:`train_tokenizer`.

    Returns:
        The ``PreTrainedTokenizerFast`` (ids identical to :class:`PipelineTokenizer`).

    Raises:
        DataError: the folder or its ``tokenizer.json`` is missing.
    """
    from transformers import AutoTokenizer

    d = Path(tokenizer_dir)
    if not (d / "tokenizer.json").is_file():
        raise DataError(f"no Hugging Face tokenizer (tokenizer.json) in tokenizer directory {d}")
    return AutoTokenizer.from_pretrained(str(d))


def model_tokenizer(tokenizer_dir: str | Path, objective: Literal["clm", "mlm"], max_length: int | None = None):
    """The Hugging Face tokenizer that goes with a model trained on ``tokenizer_dir``'s ids: what
    ``zerolm export`` saves beside the weights and what in-loop evaluations score with.

    For a folder written by :func:`train_tokenizer` it is :func:`load_hf_tokenizer` with the
    objective's special-token template (:func:`set_special_tokens_template`). Any other folder (a
    Hugging Face model's own tokenizer, ``model.init_from``) is ``AutoTokenizer.from_pretrained(dir)``
    unchanged — its own template and special tokens — except ``model_max_length`` when given.

    Args:
        tokenizer_dir: the run's ``data.tokenizer_dir``.
        objective: ``"clm"`` or ``"mlm"``.
        max_length: the model's positions (``model_max_length``); None leaves the saved value.

    Raises:
        DataError: the folder holds no tokenizer (no ``tokenizer.json``).
    """
    hf_tok = load_hf_tokenizer(tokenizer_dir)
    if is_zerolm_tokenizer_dir(tokenizer_dir):
        set_special_tokens_template(hf_tok, objective)
    if max_length is not None:
        hf_tok.model_max_length = int(max_length)
    return hf_tok


# --------------------------------------------------------------------------------------------------
# Pipeline face
# --------------------------------------------------------------------------------------------------


class PipelineTokenizer:
    """The sentencepiece model, as the streaming data pipeline uses it: fast batch encode, picklable.

    Encoding never produces ``<unk>`` (byte fallback) nor control symbols (a literal ``"[MASK]"`` in the
    text is plain text), and ``decode(encode(text)) == text`` except for the character ``▁`` (U+2581),
    which decodes as a space. Special-token ids are looked up by piece in the model.

    Pickling stores the serialized model (a few hundred KB) and rebuilds the processor on unpickling,
    so the object can be sent to DataLoader worker processes.

    Attributes:
        vocab_size, unk_id, bos_id, eos_id, pad_id, cls_id, sep_id, mask_id: ints.
        model_type: ``"bpe"`` or ``"unigram"``.
        num_threads: default number of threads of :meth:`encode_batch` (1: one core per DataLoader
            worker).
    """

    def __init__(self, model_proto: bytes, num_threads: int = 1):
        """Build from a serialized sentencepiece model.

        Args:
            model_proto: the bytes of a ``.model`` file.
            num_threads: default thread count of :meth:`encode_batch`.

        Raises:
            DataError: the bytes are not a sentencepiece model or it lacks one of the special tokens.
        """
        self._model_proto = bytes(model_proto)
        self.num_threads = int(num_threads)
        self._load()

    def _load(self) -> None:
        spm = _spm()
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(self._model_proto)
        except (RuntimeError, OSError) as e:
            raise DataError(f"not a sentencepiece model: {e}") from e
        self._sp = sp
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self._model_proto)
        self.model_type: str = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()
        self.vocab_size: int = sp.get_piece_size()
        for role, piece in SPECIAL_TOKENS.items():
            pid = sp.piece_to_id(piece)
            if sp.id_to_piece(pid) != piece:
                raise DataError(f"sentencepiece model has no {role} token {piece!r}")
            setattr(self, f"{role}_id", int(pid))

    @classmethod
    def from_dir(cls, tokenizer_dir: str | Path, num_threads: int = 1) -> "PipelineTokenizer":
        """Load ``{tokenizer_dir}/tokenizer.model``; see :func:`load_pipeline_tokenizer`."""
        return load_pipeline_tokenizer(tokenizer_dir, num_threads=num_threads)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no special tokens added)."""
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Token ids of each text (no special tokens added).

        Args:
            texts: the texts.
            num_threads: sentencepiece threads for this call (default: ``self.num_threads``).

        Returns:
            One list of ids per text.
        """
        if not texts:
            return []
        threads = self.num_threads if num_threads is None else num_threads
        return self._sp.encode(list(texts), num_threads=threads)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids (control symbols such as bos/eos/cls decode to nothing)."""
        return self._sp.decode(list(ids))

    def id_to_piece(self, i: int) -> str:
        """The piece string of an id (``<s>``, ``▁the``, ``<0x0A>`` …)."""
        return self._sp.id_to_piece(int(i))

    def __len__(self) -> int:
        return self.vocab_size

    def __getstate__(self) -> dict[str, Any]:
        return {"model_proto": self._model_proto, "num_threads": self.num_threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._model_proto = state["model_proto"]
        self.num_threads = state["num_threads"]
        self._load()

    def __repr__(self) -> str:
        return f"PipelineTokenizer(vocab_size={self.vocab_size}, num_threads={self.num_threads})"


#: Roles of :class:`HFPipelineTokenizer` and the ``transformers`` attribute holding each role's token.
def is_zerolm_tokenizer_dir(tokenizer_dir: str | Path) -> bool:
    """True for a folder written by :func:`train_tokenizer` (it holds ``zerolm_tokenizer.json``)."""
    return (Path(tokenizer_dir) / META_FILE).is_file()


def load_pipeline_tokenizer(tokenizer_dir: str | Path, num_threads: int = 1) -> PipelineTokenizer | HFPipelineTokenizer:
    """Load a tokenizer folder for the streaming pipeline.

    * A folder written by :func:`train_tokenizer` (``zerolm_tokenizer.json``; also an older one with
      ``tokenizer.model`` and no ``tokenizer.json``) → :class:`PipelineTokenizer` on its sentencepiece
      model.
    * Any other folder with ``tokenizer.json`` (a Hugging Face model's own tokenizer; Llama/T5 folders
      that also ship a ``tokenizer.model`` included) → :class:`HFPipelineTokenizer`.

    Args:
        tokenizer_dir: the folder (``data.tokenizer_dir``).
        num_threads: default thread count of ``encode_batch``.

    Returns:
        A :class:`PipelineTokenizer` or :class:`HFPipelineTokenizer`.

    Raises:
        DataError: the folder is missing or holds neither, the metadata names another format, or the
            model is unreadable; the message names the folder.
    """
    d = Path(tokenizer_dir)
    model_path = d / SPM_MODEL_FILE
    meta_path = d / META_FILE
    if not meta_path.is_file() and (d / "tokenizer.json").is_file():
        return HFPipelineTokenizer.from_dir(d, num_threads=num_threads)
    if not model_path.is_file():
        what = "tokenizer directory not found" if not d.is_dir() else f"no {SPM_MODEL_FILE} or tokenizer.json in tokenizer directory"
        raise DataError(f"{what}: {d} (train one with `zerolm tokenizer train`, or point to a Hugging Face "
                        "tokenizer folder)")
    if meta_path.is_file():
        try:
            fmt = json.loads(meta_path.read_text()).get("format")
        except (json.JSONDecodeError, AttributeError) as e:
            raise DataError(f"{meta_path}: unreadable tokenizer metadata: {e}") from e
        if fmt != FORMAT:
            raise DataError(f"{meta_path}: tokenizer format {fmt!r}, expected {FORMAT!r}")
    try:
        return PipelineTokenizer(model_path.read_bytes(), num_threads=num_threads)
    except DataError as e:
        raise DataError(f"tokenizer directory {d}: {e}") from e
