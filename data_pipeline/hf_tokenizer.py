"""A Hugging Face model's own fast tokenizer, as zerolm's streaming data pipeline uses it.

:class:`HFPipelineTokenizer` has the interface of zerolm's sentencepiece
:class:`~zerolm.data_pipeline.tokenizer.PipelineTokenizer` (``encode``, ``encode_batch``, the role ids,
``vocab_size``, picklable for DataLoader workers), for continued pretraining of an existing model
(``model.init_from``) on its own vocabulary. :func:`zerolm.data_pipeline.tokenizer.load_pipeline_tokenizer`
chooses between the two from what the folder holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from zerolm.errors import DataError

HF_ROLES = ("unk", "bos", "eos", "pad", "cls", "sep", "mask")


def _rust_parallelism_on() -> bool:
    """Whether ``tokenizers`` may use its Rust thread pool: the ``TOKENIZERS_PARALLELISM`` variable,
    parsed as the library does (unset = on; ``""``, ``0``, ``f``, ``false``, ``n``, ``no``, ``off`` = off).
    A forked child whose parent already used the pool is also held to one thread by the library itself."""
    import os

    v = os.environ.get("TOKENIZERS_PARALLELISM")
    return v is None or v.strip().lower() not in ("", "0", "f", "false", "n", "no", "off")


class HFPipelineTokenizer:
    """A Hugging Face model's own fast tokenizer, as the streaming data pipeline uses it.

    Same interface as :class:`PipelineTokenizer`, for continued pretraining of an existing model whose
    folder (``tokenizer.json`` + ``tokenizer_config.json``: GPT-2/SmolLM2 byte-level BPE, BERT
    WordPiece, Unigram …) is the run's ``data.tokenizer_dir``. The ids are those of
    ``AutoTokenizer.from_pretrained(dir)(text, add_special_tokens=False, split_special_tokens=True)``:
    the ``tokenizers`` pipeline transformers builds for the folder (normaliser, pre-tokenizer, model),
    without its post-processor template (the packer adds separators itself) and with truncation and
    padding switched off (some saved ``tokenizer.json`` files enable them).

    Special-token strings in the text are plain text (``split_special_tokens``, default True): a
    literal ``"[MASK]"`` or ``"<|endoftext|>"`` in a document is encoded as its characters, not as the
    special id — as :class:`PipelineTokenizer` does, so that text can neither fake a document boundary
    (clm) nor an unlabelled mask (mlm). ``split_special_tokens=False`` gives transformers' default
    (those strings become the special ids). Added *non-special* tokens are matched either way.

    Roles (``*_id``: int, or None when the tokenizer has no such token): the tokens transformers
    reports as ``unk_token``, ``bos_token``, ``eos_token``, ``pad_token``, ``cls_token``,
    ``sep_token``, ``mask_token``. ``pad_id`` falls back to the eos token, then the unk token (GPT-2
    and SmolLM2 have no pad token; padded positions of the last validation block carry attention 0
    and label -100, so the id is never trained on). The loader checks that the roles its objective
    needs exist (:func:`data_pipeline.loader.check_tokenizer_roles`).

    Threads: ``num_threads=1`` (the default, one core per DataLoader worker) encodes in the calling
    thread; with ``num_threads > 1`` a batch goes to the ``tokenizers`` Rust pool, whose size is set
    per process by ``RAYON_NUM_THREADS`` (default: all cores) at its first use — the number is a switch
    (1 = sequential, more = the pool), not a per-call thread count. ``TOKENIZERS_PARALLELISM=false``
    (set by the zerolm CLI) keeps every call sequential.

    Pickling stores the ``tokenizer.json`` string of that pipeline and the role token strings; the
    ``tokenizers.Tokenizer`` is rebuilt on unpickling (DataLoader workers need no ``transformers``
    import).

    Attributes:
        vocab_size: ``len(AutoTokenizer)``, added tokens included.
        unk_id, bos_id, eos_id, pad_id, cls_id, sep_id, mask_id: ints or None.
        model_type: ``"hf "`` + the backend model class (``"hf BPE"``, ``"hf WordPiece"``, ``"hf Unigram"``).
        num_threads: default of :meth:`encode_batch` (see above).
        split_special_tokens: special-token strings in text are plain text.
        tokenizer_dir: the folder it was loaded from (str; None when built from a tokenizer object).
    """

    def __init__(self, tokenizer_json: str, special_tokens: dict[str, str | None], *, vocab_size: int,
                 num_threads: int = 1, split_special_tokens: bool = True, tokenizer_dir: str | None = None):
        """Build from a serialized ``tokenizers`` pipeline (use :meth:`from_dir` for a folder).

        Args:
            tokenizer_json: a ``tokenizers.Tokenizer.to_str()`` string.
            special_tokens: ``{role: token string or None}`` for the roles of :data:`HF_ROLES` (pad
                already resolved to its fallback).
            vocab_size: ids in use, added tokens included (``len(AutoTokenizer)``).
            num_threads: default of :meth:`encode_batch`.
            split_special_tokens: encode special-token strings in text as plain text.
            tokenizer_dir: the source folder, for messages.

        Raises:
            DataError: the string is not a tokenizers pipeline, or a role token is not in its vocabulary.
        """
        self._json = tokenizer_json
        self._specials = {role: special_tokens.get(role) for role in HF_ROLES}
        self.vocab_size = int(vocab_size)
        self.num_threads = int(num_threads)
        self.split_special_tokens = bool(split_special_tokens)
        self.tokenizer_dir = tokenizer_dir
        self._load()

    def _load(self) -> None:
        from tokenizers import Tokenizer

        where = f" ({self.tokenizer_dir})" if self.tokenizer_dir else ""
        try:
            tk = Tokenizer.from_str(self._json)
        except Exception as e:  # tokenizers raises a plain Exception on a bad pipeline
            raise DataError(f"not a Hugging Face tokenizers pipeline{where}: {e}") from e
        tk.no_truncation()
        tk.no_padding()
        tk.encode_special_tokens = self.split_special_tokens
        self._tk = tk
        self.model_type: str = "hf " + type(tk.model).__name__
        for role in HF_ROLES:
            token = self._specials[role]
            tid = tk.token_to_id(token) if token is not None else None
            if token is not None and tid is None:
                raise DataError(f"tokenizer{where}: its {role} token {token!r} is not in the vocabulary")
            setattr(self, f"{role}_id", None if tid is None else int(tid))
        self._encode_batch = getattr(tk, "encode_batch_fast", tk.encode_batch)  # no offsets: ~10% faster

    @classmethod
    def from_pretrained_tokenizer(cls, hf_tokenizer, num_threads: int = 1, split_special_tokens: bool = True,
                                  tokenizer_dir: str | None = None) -> "HFPipelineTokenizer":
        """Wrap a loaded fast ``transformers`` tokenizer (its backend pipeline and special tokens).

        Raises:
            DataError: the tokenizer is a slow (Python) one, without a ``tokenizers`` backend.
        """
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise DataError(f"tokenizer {tokenizer_dir or type(hf_tokenizer).__name__}: not a fast tokenizer "
                            "(no tokenizers backend); the pipeline needs a folder with tokenizer.json")
        specials: dict[str, str | None] = {}
        for role in HF_ROLES:
            tok = getattr(hf_tokenizer, f"{role}_token", None)
            specials[role] = None if tok is None else str(tok)
        specials["pad"] = specials["pad"] or specials["eos"] or specials["unk"]
        return cls(backend.to_str(), specials, vocab_size=len(hf_tokenizer), num_threads=num_threads,
                   split_special_tokens=split_special_tokens, tokenizer_dir=tokenizer_dir)

    @classmethod
    def from_dir(cls, tokenizer_dir: str | Path, num_threads: int = 1, split_special_tokens: bool = True) -> "HFPipelineTokenizer":
        """Load a Hugging Face tokenizer folder with ``transformers.AutoTokenizer``.

        Args:
            tokenizer_dir: a folder with ``tokenizer.json`` (and usually ``tokenizer_config.json``).
            num_threads: default of :meth:`encode_batch`.
            split_special_tokens: special-token strings in text are plain text (see the class docstring).

        Raises:
            DataError: no ``tokenizer.json`` in the folder, transformers cannot load it, or it is not fast;
                the message names the folder.
        """
        d = Path(tokenizer_dir)
        if not (d / "tokenizer.json").is_file():
            what = "tokenizer directory not found" if not d.is_dir() else "no tokenizer.json in tokenizer directory"
            raise DataError(f"{what}: {d}")
        from transformers import AutoTokenizer

        try:
            hf_tok = AutoTokenizer.from_pretrained(str(d))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"tokenizer directory {d}: transformers cannot load it: {e}") from e
        return cls.from_pretrained_tokenizer(hf_tok, num_threads=num_threads,
                                             split_special_tokens=split_special_tokens, tokenizer_dir=str(d))

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no special tokens added)."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], num_threads: int | None = None) -> list[list[int]]:
        """Token ids of each text (no special tokens added).

        Args:
            texts: the texts.
            num_threads: 1 = in this thread; more = the ``tokenizers`` Rust pool when
                ``TOKENIZERS_PARALLELISM`` allows it (pool size ``RAYON_NUM_THREADS``). Default
                ``self.num_threads``.

        Returns:
            One list of ids per text.
        """
        if not texts:
            return []
        threads = self.num_threads if num_threads is None else num_threads
        if threads <= 1 and _rust_parallelism_on():  # the batch call would spread over the pool
            return [self._tk.encode(t, add_special_tokens=False).ids for t in texts]
        return [e.ids for e in self._encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of ids, special tokens (bos/eos/cls …) skipped, by the folder's decoder."""
        return self._tk.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, i: int) -> str:
        """The token string of an id (``Ġthe``, ``##ing``, ``[CLS]`` …)."""
        return self._tk.id_to_token(int(i))

    def __len__(self) -> int:
        return self.vocab_size

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer_json": self._json, "special_tokens": dict(self._specials), "vocab_size": self.vocab_size,
                "num_threads": self.num_threads, "split_special_tokens": self.split_special_tokens,
                "tokenizer_dir": self.tokenizer_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._json = state["tokenizer_json"]
        self._specials = state["special_tokens"]
        self.vocab_size = state["vocab_size"]
        self.num_threads = state["num_threads"]
        self.split_special_tokens = state["split_special_tokens"]
        self.tokenizer_dir = state["tokenizer_dir"]
        self._load()

    def __repr__(self) -> str:
        return (f"HFPipelineTokenizer({self.tokenizer_dir!r}, {self.model_type}, vocab_size={self.vocab_size}, "
                f"num_threads={self.num_threads})")
