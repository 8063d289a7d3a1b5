"""The streaming pipeline's front: packed, sharded, mixed, masked batches with exact resume.

:class:`PackedDataLoader` is what the trainer iterates. Per data-parallel rank it runs a
``torch.utils.data.DataLoader`` over :class:`PackedIterableDataset`; every DataLoader worker is one
shard of every source (shard = ``rank × num_workers + worker``), so no document is read twice in
one pass across all ranks and workers.

Mixtures: each source has its own packer; every block is drawn from one source chosen with the
configured weights by a seeded hash of (seed, shard, sample index) — deterministic, and free of
RNG state to checkpoint.

Exact resume: each batch carries its worker's state after producing it; the loader keeps the
latest state of every worker and which worker's batch comes next (DataLoader hands out batches
from its workers round-robin). :meth:`PackedDataLoader.state_dict` is that; after
:meth:`PackedDataLoader.load_state_dict` the workers restart from their states and the worker
order is rotated so that the next batch is exactly the one an uninterrupted run would have
produced. The guarantee holds for the same ``world_size`` and ``num_workers`` (checked).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zerolm.data_pipeline.masking import IGNORE_INDEX, mask_tokens
from zerolm.data_pipeline.packing import SourcePacker
from zerolm.data_pipeline.sources import FileRef, ShardedReader, mix64, resolve_files
from zerolm.config import DataConfig, SourceConfig
from zerolm.errors import DataError

log = logging.getLogger(__name__)

STATE_FORMAT = "zerolm-data-state/1"


def _load_tokenizer(cfg: DataConfig):
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer

    return load_pipeline_tokenizer(cfg.tokenizer_dir)


class PackedStream:
    """The samples of one shard: blocks from the sources' packers, wrapped and masked per objective.

    Args:
        cfg: the data config.
        sources: the sources with their resolved files.
        tokenizer: a :class:`data_pipeline.tokenizer.PipelineTokenizer`.
        shard: this stream's shard index; ``num_shards`` = ranks × workers.
        infinite: loop over epochs forever (training) or read each source once (validation: sources
            one after the other, the last block padded).
        state: a ``state`` dict from a previous sample of this shard.

    Iterating yields dicts of int64 arrays of shape ``(seq_len,)``: ``input_ids``, ``labels``
    (``-100`` where no loss) and ``attention_mask``, plus ``_state`` (this shard's state after the
    sample).
    """

    def __init__(
        self,
        cfg: DataConfig,
        sources: list[tuple[SourceConfig, list[FileRef]]],
        tokenizer: Any,
        shard: int,
        num_shards: int,
        infinite: bool,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.tok = tokenizer
        self.shard = shard
        self.infinite = infinite
        state = state or {}
        self.samples = int(state.get("samples", 0))
        mlm = cfg.objective == "mlm"
        self.block_len = cfg.seq_len - 2 if mlm else cfg.seq_len
        src_states = state.get("sources", {})
        self.names = [s.name for s, _ in sources]
        self.weights = np.array([s.weight for s, _ in sources], dtype=np.float64)
        self.cum = np.cumsum(self.weights / self.weights.sum())
        self.packers: dict[str, SourcePacker] = {}
        for src, files in sources:
            reader = ShardedReader(
                files, src.text_field, shard, num_shards, seed=cfg.seed, shuffle_files=cfg.shuffle_files and infinite,
                max_document_bytes=cfg.max_document_bytes,
            )
            self.packers[src.name] = SourcePacker(
                reader, tokenizer, separator_id=tokenizer.sep_id if mlm else tokenizer.eos_id,
                bos_id=tokenizer.bos_id if cfg.add_bos else None, block_len=self.block_len,
                tokenize_batch_size=cfg.tokenize_batch_size, max_epochs=None if infinite else 1,
                state=src_states.get(src.name),
            )
        self.special_ids = np.array(
            sorted({tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id}),
            dtype=np.int64,
        )
        self._finished: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        """``{"samples": n, "sources": {name: packer state}}``."""
        return {"samples": self.samples, "sources": {n: p.state_dict() for n, p in self.packers.items()}}

    def _pick_source(self) -> str | None:
        if self.infinite:
            u = mix64(self.cfg.seed, self.shard, self.samples, 0x5EED) / 2.0**64
            return self.names[min(int(np.searchsorted(self.cum, u, side="right")), len(self.names) - 1)]
        for n in self.names:  # validation: sources in order, each once
            if n not in self._finished:
                return n
        return None

    def _make_sample(self, block: np.ndarray) -> dict[str, Any]:
        cfg, tok = self.cfg, self.tok
        if cfg.objective == "mlm":
            block = np.concatenate(([tok.cls_id], block, [tok.sep_id]))
        n = len(block)
        ids = np.full(cfg.seq_len, tok.pad_id, dtype=np.int64)
        ids[:n] = block
        attention = np.zeros(cfg.seq_len, dtype=np.int64)
        attention[:n] = 1
        if cfg.objective == "mlm":
            ids, labels = mask_tokens(
                ids, seed=mix64(cfg.seed, self.shard, self.samples, 0x4D41534B), mask_id=tok.mask_id,
                special_ids=self.special_ids, random_low=int(self.special_ids.max()) + 1,
                vocab_size=tok.vocab_size, probability=cfg.mlm_probability,
            )
        else:
            labels = ids.copy()
            labels[n:] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels, "attention_mask": attention}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            name = self._pick_source()
            if name is None:  # end of a finite pass: report the final counters (skips after the last block)
                yield {"_state": self.state_dict(), "_final": True}
                return
            block = self.packers[name].next_block()
            if block is None or len(block) < self.block_len:
                if self.infinite:
                    raise DataError(f"source {name!r} ended although reading forever")  # cannot happen
                self._finished.add(name)
                if block is None:
                    continue
            sample = self._make_sample(block)
            self.samples += 1
            sample["_state"] = self.state_dict()
            yield sample


class PackedIterableDataset(IterableDataset):
    """A rank's ``IterableDataset``: each DataLoader worker streams its own shard.

    Worker ``p`` of ``W`` plays logical worker ``(p + rotation) % W``, which is how a resumed loader
    makes its first batch come from the worker whose turn it was.
    """

    def __init__(self, cfg, sources, tokenizer, rank, world_size, infinite, worker_states, rotation) -> None:
        super().__init__()
        self.cfg, self.sources, self.tokenizer = cfg, sources, tokenizer
        self.rank, self.world_size, self.infinite = rank, world_size, infinite
        self.worker_states, self.rotation = worker_states, rotation

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = max(self.cfg.num_workers, 1)
        logical = ((info.id if info else 0) + self.rotation) % workers
        shard = self.rank * workers + logical
        stream = PackedStream(
            self.cfg, self.sources, self.tokenizer, shard, self.world_size * workers, self.infinite,
            self.worker_states.get(logical),
        )
        for sample in stream:
            sample["_worker"] = logical
            yield sample


def _collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    real = [s for s in samples if "_final" not in s]
    batch: dict[str, Any] = (
        {k: torch.from_numpy(np.stack([s[k] for s in real])) for k in ("input_ids", "labels", "attention_mask")}
        if real
        else {"_empty": True}
    )
    batch["_state"] = samples[-1]["_state"]
    batch["_worker"] = samples[-1]["_worker"]
    return batch


class PackedDataLoader:
    """Batches of packed blocks for one data-parallel rank, with exact ``state_dict`` resume.

    Args:
        cfg: the data config (sources, tokenizer, objective, seq_len, micro_batch_size, workers…).
        split: ``"train"`` (``cfg.sources``, a weighted mixture, endless) or ``"validation"``
            (``cfg.validation_sources``, one pass, last block padded).
        rank: this process's data-parallel rank; ``world_size``: the data-parallel size.
        tokenizer: a loaded :class:`~data_pipeline.tokenizer.PipelineTokenizer` (default: load
            ``cfg.tokenizer_dir``).

    Iterating yields dicts of int64 tensors of shape ``(micro_batch_size, seq_len)``:
    ``input_ids``, ``labels`` (``-100`` = no loss) and ``attention_mask``. Re-iterating continues
    from the current state.

    Raises:
        DataError: a path matches nothing, a format is unknown or the tokenizer is missing — at
            construction, before any reading.
    """

    def __init__(
        self, cfg: DataConfig, *, split: str = "train", rank: int = 0, world_size: int = 1, tokenizer: Any = None
    ) -> None:
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.cfg, self.split, self.rank, self.world_size = cfg, split, rank, world_size
        key = "data.sources" if split == "train" else "data.validation_sources"
        srcs = cfg.sources if split == "train" else cfg.validation_sources
        self.sources = [(s, resolve_files(s, f"{key}[{i}]")) for i, s in enumerate(srcs)]
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(cfg)
        self.infinite = split == "train"
        self._worker_states: dict[int, dict[str, Any]] = {}
        self._next_worker = 0
        self.batches = 0
        self.last_worker: int | None = None  # logical worker (shard) of the last batch

    @property
    def num_workers(self) -> int:
        """Logical workers (shards) per rank: ``max(cfg.num_workers, 1)``."""
        return max(self.cfg.num_workers, 1)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        ds = PackedIterableDataset(
            self.cfg, self.sources, self.tokenizer, self.rank, self.world_size, self.infinite,
            dict(self._worker_states), self._next_worker,
        )
        # a private generator: starting workers must not draw from the global torch RNG (dropout),
        # or a resumed run's random stream would differ from an uninterrupted one
        dl = DataLoader(ds, batch_size=self.cfg.micro_batch_size, num_workers=self.cfg.num_workers, collate_fn=_collate,
                        generator=torch.Generator().manual_seed(self.cfg.seed))
        for batch in dl:
            w = batch.pop("_worker")
            self._worker_states[w] = batch.pop("_state")
            self._next_worker = (w + 1) % self.num_workers
            self.last_worker = w
            if batch.pop("_empty", False):  # only the end-of-pass counters of a finite stream
                continue
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """The position of this rank's stream after the last batch handed out (small, JSON-able)."""
        return {
            "format": STATE_FORMAT,
            "split": self.split,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "objective": self.cfg.objective,
            "seq_len": self.cfg.seq_len,
            "sources": [s.name for s, _ in self.sources],
            "batches": self.batches,
            "next_worker": self._next_worker,
            "workers": {str(k): v for k, v in self._worker_states.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`.

        Raises:
            DataError: the state was written for another layout (format, world size, workers per
                rank, sources, objective or seq_len) — resuming would repeat or lose data.
        """
        expect = {
            "format": STATE_FORMAT, "split": self.split, "world_size": self.world_size,
            "num_workers": self.num_workers, "objective": self.cfg.objective, "seq_len": self.cfg.seq_len,
            "sources": [s.name for s, _ in self.sources],
        }
        for k, v in expect.items():
            if state.get(k) != v:
                raise DataError(
                    f"cannot resume the data pipeline: checkpoint has {k}={state.get(k)!r}, this run has {v!r}"
                )
        self._worker_states = {int(k): v for k, v in state["workers"].items()}
        self._next_worker = int(state["next_worker"])
        self.batches = int(state["batches"])

    def stats(self) -> dict[str, Any]:
        """Counters of this rank so far: ``documents``, ``tokens`` (packed, before CLS/SEP
        wrapping), ``samples``, ``epoch`` (lowest over shards and sources) and ``skipped_documents``
        by reason."""
        skipped: Counter[str] = Counter()
        docs = tokens = samples = 0
        epochs = []
        for w in self._worker_states.values():
            samples += w["samples"]
            for p in w["sources"].values():
                docs += p["documents"]
                tokens += p["tokens"]
                skipped.update(p["skipped"])
                epochs.append(p["pos"][0] if p["pos"] else 0)
        return {
            "documents": docs, "tokens": tokens, "samples": samples, "epoch": min(epochs) if epochs else 0,
            "skipped_documents": dict(skipped),
        }
