"""Packing: one source shard's documents → tokens → fixed-length blocks with no padding.

Each document becomes ``[BOS]? ids… SEP`` (``SEP`` is EOS for causal-LM and ``[SEP]`` for
masked-LM) and the token stream is cut into blocks of ``block_len`` tokens; a document longer than
a block continues in the next one, and a block may hold the tail of one document and the head of
the next (GPT-2/3 and RoBERTa FULL-SENTENCES packing: Radford et al. 2019, Liu et al. 2019 §4.2).

The packer's state is the position of the last document it touched plus how many of that
document's tokens are already in blocks, and its counters. Restoring it re-reads that one
document, re-tokenizes it (tokenization is deterministic) and skips the consumed tokens, so the
next block is exactly the one an uninterrupted run would produce — also when the stop fell in the
middle of a document. Documents read ahead for batched tokenization are not part of the state.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Protocol

import numpy as np

from zerolm.data_pipeline.sources import Doc, DocPosition, ShardedReader


class BatchEncoder(Protocol):
    """What the packer needs of a tokenizer (:class:`data_pipeline.tokenizer.PipelineTokenizer`)."""

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...


class SourcePacker:
    """Packs one source shard into blocks of ``block_len`` token ids.

    Args:
        reader: the source shard's document reader.
        encoder: tokenizer with ``encode_batch``.
        separator_id: appended after every document (EOS or SEP).
        bos_id: prepended to every document when not None.
        block_len: tokens per block.
        tokenize_batch_size: documents tokenized per call.
        max_epochs: None = loop over the data forever; else stop after this many passes.
        state: a :meth:`state_dict` to resume from.
    """

    def __init__(
        self,
        reader: ShardedReader,
        encoder: BatchEncoder,
        *,
        separator_id: int,
        bos_id: int | None,
        block_len: int,
        tokenize_batch_size: int = 64,
        max_epochs: int | None = None,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.encoder = encoder
        self.separator_id = separator_id
        self.bos_id = bos_id
        self.block_len = block_len
        self.tokenize_batch_size = tokenize_batch_size
        state = state or {}
        pos = state.get("pos")
        self.pos: DocPosition | None = DocPosition(*pos) if pos is not None else None
        self.offset: int = int(state.get("offset", 0))
        self.documents: int = int(state.get("documents", 0))
        self.tokens: int = int(state.get("tokens", 0))
        self.skipped: Counter[str] = Counter(state.get("skipped", {}))
        self._resume_doc = self.pos is not None
        self._events = reader.read(start=self.pos, max_epochs=max_epochs)
        self._buffer: deque[tuple[Any, Any]] = deque()
        self._exhausted = False
        self._doc: np.ndarray | None = None
        if self._resume_doc:  # re-read the document in progress and skip what was consumed
            self._advance()

    def state_dict(self) -> dict[str, Any]:
        """A small JSON-able dict: ``pos`` (list or None), ``offset``, ``documents``, ``tokens``, ``skipped``."""
        return {
            "pos": list(self.pos) if self.pos is not None else None,
            "offset": self.offset,
            "documents": self.documents,
            "tokens": self.tokens,
            "skipped": dict(self.skipped),
        }

    @property
    def epoch(self) -> int:
        """The epoch of the document in progress (0 before the first)."""
        return self.pos.epoch if self.pos is not None else 0

    def _fill(self) -> None:
        items = []
        for item in self._events:
            items.append(item)
            if sum(isinstance(i, Doc) for i in items) >= self.tokenize_batch_size:
                break
        if not items:
            self._exhausted = True
            return
        docs = [i for i in items if isinstance(i, Doc)]
        encoded = iter(self.encoder.encode_batch([d.text for d in docs])) if docs else iter(())
        for item in items:
            if isinstance(item, Doc):
                self._buffer.append((item.pos, next(encoded)))
            else:
                self._buffer.append((None, item.reason))

    def _advance(self) -> bool:
        """Move to the next document (counting skips on the way); False at the end of the data."""
        while True:
            if not self._buffer:
                self._fill()
                if not self._buffer:
                    return False
            pos, payload = self._buffer.popleft()
            if pos is None:
                self.skipped[payload] += 1
                continue
            extra = [self.bos_id] if self.bos_id is not None else []
            self._doc = np.asarray(extra + payload + [self.separator_id], dtype=np.int64)
            if self._resume_doc:
                if pos != self.pos:
                    raise RuntimeError(f"resume mismatch: expected the document at {self.pos}, read {pos}")
                self._resume_doc = False
            else:
                self.pos, self.offset = pos, 0
                self.documents += 1
            return True

    def next_block(self) -> np.ndarray | None:
        """The next block, shape ``(block_len,)`` int64; at the end of a finite stream the last block
        may be shorter (the caller pads it), and after that None."""
        out = np.empty(self.block_len, dtype=np.int64)
        filled = 0
        while filled < self.block_len:
            if self._doc is None or self.offset >= len(self._doc):
                if not self._advance():
                    break
            take = min(self.block_len - filled, len(self._doc) - self.offset)
            out[filled : filled + take] = self._doc[self.offset : self.offset + take]
            filled += take
            self.offset += take
        self.tokens += filled
        if filled == 0:
            return None
        return out[:filled]
