"""The streaming pipeline's front: packed, sharded, mixed, masked batches with exact, elastic resume.

:class:`PackedDataLoader` is what the trainer iterates.

Logical shards. The training data is split into ``L`` *logical shards*, one per sequence of the
global batch (``L = global_batch_size``, fixed for the life of a run). Logical shard ``q`` reads
its own documents (shard ``q`` of ``L`` of every source: whole files when a source has at least
``L`` files, else every ``L``-th record), packs them with its own packers, picks the source of
each block by a seeded hash of (seed, q, sample index) and masks (masked-LM) with a seed of the
same three — so its ``k``-th sample depends only on the data, the seed, ``q`` and ``k``.

Global batch ``k`` is the ``k``-th sample of every logical shard, in shard order; micro-batch
``i`` of the step on rank ``r`` holds shards ``r·n + i·m … r·n + (i+1)·m − 1`` (``n = L / W``
sequences per rank, ``m`` the micro-batch size). So the samples of every global batch — and how
they are grouped into micro-batches — are the same whatever the number of ranks ``W`` and loader
workers: the strong form of elastic determinism. A DataLoader worker ``j`` of ``w`` owns ``n / w``
consecutive shards of its rank and produces one chunk (one sample of each) per optimizer step;
the DataLoader hands the chunks out round-robin, so a step is one chunk from each worker.

Mixtures: each logical shard has one packer per source; every block is drawn from one source
chosen with the configured weights — deterministic, and free of RNG state to checkpoint.

Exact resume. The state (:meth:`PackedDataLoader.state_dict`) is, at an optimizer-step boundary,
the steps served and every owned logical shard's packer positions. The states of all ranks merged
(:func:`merge_states`) resume on any number of ranks ``W'`` dividing ``L / m`` and any worker
count dividing ``L / W'``: each rank takes its shards' states and continues — nothing is lost or
repeated, and the next global batch is exactly the one an uninterrupted run would have produced.
Validation (one finite pass) is sharded by (rank, worker) and has no state.
"""

from __future__ import annotations

import logging
import signal
from collections import Counter
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from zerolm.data_pipeline.masking import IGNORE_INDEX, mask_tokens
from zerolm.data_pipeline.packing import SourcePacker
from zerolm.data_pipeline.sources import (FILE_REASONS, FileRef, ShardedReader, mix64, resolve_files,
                                          unequal_shards_warning)
from zerolm.config import DataConfig, SourceConfig
from zerolm.errors import DataError

log = logging.getLogger(__name__)

STATE_FORMAT = "zerolm-data-state/2"
_KEYS = ("input_ids", "labels", "attention_mask")
_MIN_TOKENIZE_BATCH = 16  # documents per tokenizer call and stream, at the least


def _load_tokenizer(cfg: DataConfig):
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer

    return load_pipeline_tokenizer(cfg.tokenizer_dir)


def required_roles(cfg: DataConfig) -> list[str]:
    """The special-token roles the stream of ``cfg`` uses: clm ``eos`` (document separator); mlm
    ``cls``, ``sep`` (block wrapper and document separator) and ``mask``; ``bos`` with ``add_bos``."""
    roles = ["cls", "sep", "mask"] if cfg.objective == "mlm" else ["eos"]
    return roles + ["bos"] if cfg.add_bos else roles


def check_tokenizer_roles(tokenizer: Any, cfg: DataConfig) -> None:
    """Fail before any work when the tokenizer lacks a special token the objective needs.

    A Hugging Face model's own tokenizer (:class:`~data_pipeline.hf_tokenizer.HFPipelineTokenizer`) may have
    no such token (GPT-2: no ``[MASK]``/``[CLS]``; BERT: no eos); zerolm's own tokenizers have all.

    Raises:
        DataError: naming the tokenizer folder, the objective and the missing roles.
    """
    missing = [r for r in required_roles(cfg) if getattr(tokenizer, f"{r}_id", None) is None]
    if missing:
        folder = getattr(tokenizer, "tokenizer_dir", None) or cfg.tokenizer_dir
        why = " and data.add_bos" if cfg.add_bos and "bos" in missing else ""
        raise DataError(
            f"tokenizer {folder} has no {', '.join(f'{r} token' for r in missing)}, which objective "
            f"{cfg.objective!r}{why} needs (clm: eos; mlm: cls, sep, mask; add_bos: bos)")


class PackedStream:
    """The samples of one shard: blocks from the sources' packers, wrapped and masked per objective.

    Args:
        cfg: the data config.
        sources: the sources with their resolved files.
        tokenizer: a :class:`data_pipeline.tokenizer.PipelineTokenizer` or :class:`data_pipeline.hf_tokenizer.HFPipelineTokenizer`
            (the roles :func:`required_roles` names must be set; other roles may be None).
        shard: this stream's shard index in ``[0, num_shards)``: a logical shard (training) or a
            (rank, worker) reader (validation).
        infinite: loop over epochs forever (training) or read each source once (validation: sources
            one after the other, the last block padded). A masked-LM masks training samples at
            ``cfg.mlm_probability`` and validation samples at ``cfg.eval_mlm_probability``.
        state: a ``state`` dict from a previous sample of this shard.
        tokenize_batch_size: documents each source's packer reads ahead and tokenizes per call
            (default ``cfg.tokenize_batch_size``; a process running many streams gives each a share).

    Iterating yields dicts of int64 arrays of shape ``(seq_len,)``: ``input_ids``, ``labels``
    (``-100`` where no loss) and ``attention_mask``, plus ``_state`` (this shard's state after the
    sample).

    Shuffle window (training, ``cfg.shuffle_window`` = W > 0 blocks): the packers' blocks are drawn W
    at a time and emitted in a permutation seeded by (seed, shard, window number), so that
    consecutive samples of a shard do not continue the same document — what a map-style dataset's
    random sampler gives (``DistributedSampler(shuffle=True)``), within a window. The state stays
    small: the packers' states at the window's start and how many of its blocks were emitted; a
    restore re-packs the window (deterministic) and skips those. The same bounded-buffer idea as
    the shuffle buffers of WebDataset and torchdata, made exactly resumable.
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
        tokenize_batch_size: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.tok = tokenizer
        self.shard = shard
        self.infinite = infinite
        state = state or {}
        self.samples = int(state.get("samples", 0))
        self.window = cfg.shuffle_window if infinite else 0
        win = state.get("window") or {}
        self.drawn = int(win.get("drawn", 0))  # blocks drawn from the packers before the current window
        self.windows = int(win.get("number", 0))  # windows filled so far
        self.emitted = int(win.get("emitted", 0))  # samples of the current window already emitted
        self._window_start: dict[str, Any] | None = None  # packer states before the current window
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
                max_document_bytes=cfg.max_document_bytes, name=src.name,
            )
            self.packers[src.name] = SourcePacker(
                reader, tokenizer, separator_id=tokenizer.sep_id if mlm else tokenizer.eos_id,
                bos_id=tokenizer.bos_id if cfg.add_bos else None, block_len=self.block_len,
                tokenize_batch_size=tokenize_batch_size or cfg.tokenize_batch_size, max_epochs=None if infinite else 1,
                state=src_states.get(src.name),
            )
        roles = (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id)
        self.special_ids = np.array(sorted({i for i in roles if i is not None}), dtype=np.int64)
        # mlm random replacements come from [random_low, vocab): past the special ids where they open the
        # vocabulary (zerolm's 0-6, BERT's 0-103); a tokenizer with special ids at the end (GPT-2,
        # ModernBERT) draws from the whole vocabulary, as transformers' DataCollatorForLanguageModeling does
        top = int(self.special_ids.max()) + 1 if len(self.special_ids) else 0
        self.random_low = top if top < tokenizer.vocab_size // 2 else 0
        # padding (only the last validation block): attention 0 and label -100, so any id would do
        self.pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        self._finished: set[str] = set()

    def state_dict(self) -> dict[str, Any]:
        """``{"samples": n, "sources": {name: packer state}}``; with a shuffle window the packer states
        are those at the start of the window the next sample comes from, and ``window`` =
        ``{"number", "drawn", "emitted"}`` (its index, blocks drawn before it, samples of it emitted)."""
        packers = {n: p.state_dict() for n, p in self.packers.items()}
        if not self.window:
            return {"samples": self.samples, "sources": packers}
        if self._window_start is not None and self.emitted < self.window:
            return {"samples": self.samples, "sources": self._window_start,
                    "window": {"number": self.windows, "drawn": self.drawn, "emitted": self.emitted}}
        done = self._window_start is not None  # the current window is used up: the next one starts here
        return {"samples": self.samples, "sources": packers,
                "window": {"number": self.windows + done, "drawn": self.drawn + done * self.window, "emitted": 0}}

    def _pick_source(self, draw: int | None = None) -> str | None:
        if self.infinite:
            u = mix64(self.cfg.seed, self.shard, self.samples if draw is None else draw, 0x5EED) / 2.0**64
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
        ids = np.full(cfg.seq_len, self.pad_id, dtype=np.int64)
        ids[:n] = block
        attention = np.zeros(cfg.seq_len, dtype=np.int64)
        attention[:n] = 1
        if cfg.objective == "mlm":
            ids, labels = mask_tokens(
                ids, seed=mix64(cfg.seed, self.shard, self.samples, 0x4D41534B), mask_id=tok.mask_id,
                special_ids=self.special_ids, random_low=self.random_low,
                vocab_size=tok.vocab_size,
                # training masks at its own rate; validation always at the fixed evaluation rate
                probability=cfg.mlm_probability if self.infinite else cfg.eval_mlm_probability,
            )
        else:
            labels = ids.copy()
            labels[n:] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels, "attention_mask": attention}

    def _fill_window(self) -> list[np.ndarray]:
        """Draw window number ``self.windows``: ``window`` blocks (source picks seeded by the draw
        count), returned in the window's seeded permutation."""
        self._window_start = {n: p.state_dict() for n, p in self.packers.items()}
        blocks = [self.packers[self._pick_source(self.drawn + i)].next_block() for i in range(self.window)]
        order = np.random.default_rng(mix64(self.cfg.seed, self.shard, self.windows, 0x5348)).permutation(self.window)
        return [blocks[i] for i in order]

    def _shuffled(self) -> Iterator[dict[str, Any]]:
        """Training samples through the shuffle window (see the class docstring)."""
        skip = self.emitted  # restored mid-window: its first ``emitted`` samples were trained on
        while True:
            window = self._fill_window()
            for i in range(skip, self.window):
                sample = self._make_sample(window[i])
                self.samples += 1
                self.emitted = i + 1
                sample["_state"] = self.state_dict()
                yield sample
            self.drawn, self.windows, self.emitted, skip = self.drawn + self.window, self.windows + 1, 0, 0
            self._window_start = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.window:
            yield from self._shuffled()
            return
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


class _ValidationShards(IterableDataset):
    """A rank's validation ``IterableDataset``: DataLoader worker ``j`` reads shard ``rank × workers + j``
    of every source once (no state: validation always starts from the beginning)."""

    def __init__(self, cfg, sources, tokenizer, rank, world_size) -> None:
        super().__init__()
        self.cfg, self.sources, self.tokenizer = cfg, sources, tokenizer
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = max(self.cfg.num_workers, 1)
        shard = self.rank * workers + (info.id if info else 0)
        for sample in PackedStream(self.cfg, self.sources, self.tokenizer, shard, self.world_size * workers, False):
            sample["_worker"] = info.id if info else 0
            yield sample


def _collate_validation(samples: list[dict[str, Any]]) -> dict[str, Any]:
    real = [s for s in samples if "_final" not in s]
    batch: dict[str, Any] = {k: torch.from_numpy(np.stack([s[k] for s in real])) for k in _KEYS} if real else {"_empty": True}
    batch["_worker"], batch["_state"] = samples[-1]["_worker"], samples[-1]["_state"]
    return batch


class _StepChunks(IterableDataset):
    """A rank's training ``IterableDataset``: DataLoader worker ``j`` owns logical shards
    ``first + j·c … first + (j+1)·c − 1`` and yields, per optimizer step, a chunk of one sample of
    each: int64 tensors of shape ``(c, seq_len)`` plus ``_states`` (``{shard: state}`` after it)."""

    def __init__(self, cfg, sources, tokenizer, first: int, per_worker: int, num_shards: int,
                 states: dict[int, dict[str, Any]]) -> None:
        super().__init__()
        self.cfg, self.sources, self.tokenizer = cfg, sources, tokenizer
        self.first, self.per_worker, self.num_shards, self.states = first, per_worker, num_shards, states

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        j = info.id if info else 0
        shards = range(self.first + j * self.per_worker, self.first + (j + 1) * self.per_worker)
        # the read-ahead for batched tokenization is shared out: c streams read ahead as much as one did
        share = max(_MIN_TOKENIZE_BATCH, self.cfg.tokenize_batch_size // self.per_worker)
        streams = [iter(PackedStream(self.cfg, self.sources, self.tokenizer, q, self.num_shards, True,
                                     self.states.get(q), tokenize_batch_size=share)) for q in shards]
        while True:
            samples = [next(s) for s in streams]
            chunk: dict[str, Any] = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in _KEYS}
            chunk["_states"] = {q: s["_state"] for q, s in zip(shards, samples)}
            chunk["_worker"] = j
            yield chunk


def _ignore_sigint(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a loader worker ignores SIGINT. Ctrl-C in a terminal reaches the whole
    foreground process group; the rank decides what it means (checkpoint at the next step boundary:
    :class:`zerolm.pretrain.distributed.StopRequests`), and its workers must still be serving batches
    until then (module level: workers may be spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _as_is(item: Any) -> Any:
    """DataLoader ``collate_fn`` for already-batched chunks (module level: workers may be spawned)."""
    return item


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def step_layout(global_batch_size: int, world_size: int, micro_batch_size: int, num_workers: int) -> tuple[int, int, int]:
    """How one optimizer step's global batch is split: ``(per_rank, accumulation, per_worker)``
    sequences per rank, micro-batches per rank, and logical shards per DataLoader worker.

    Raises:
        DataError: the global batch does not split evenly over the ranks, the micro-batch size or the
            loader workers; the message names the sizes that would.
    """
    g, w = global_batch_size, max(num_workers, 1)
    if g % world_size:
        raise DataError(f"global batch {g} does not split over {world_size} ranks; world sizes that do: "
                        f"{[d for d in _divisors(g) if g // d % micro_batch_size == 0]}")
    per_rank = g // world_size
    if per_rank % micro_batch_size:
        raise DataError(f"{per_rank} sequences per rank (global batch {g} / {world_size} ranks) are not a whole "
                        f"number of micro-batches of {micro_batch_size}; micro-batch sizes that fit: {_divisors(per_rank)}")
    if per_rank % w:
        raise DataError(f"data.num_workers={num_workers} does not divide the {per_rank} sequences each rank takes per "
                        f"step (global batch {g} / {world_size} ranks); worker counts that do: {[0, *_divisors(per_rank)]}")
    return per_rank, per_rank // micro_batch_size, per_rank // w


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One state holding every logical shard, from the :meth:`PackedDataLoader.state_dict` of every
    rank (any order). Resumes on any world size the global batch splits over.

    Raises:
        DataError: the states disagree on format, steps or logical shard count, or a shard is missing.
    """
    if not states:
        raise DataError("no data-pipeline states to merge")
    first = states[0]
    merged = {**first, "shards": {}}
    for s in states:
        for k in ("format", "steps", "logical_shards", "sources", "objective", "seq_len"):
            if s.get(k) != first.get(k):
                raise DataError(f"data-pipeline states of the ranks disagree on {k}: {first.get(k)!r} vs {s.get(k)!r}")
        merged["shards"].update(s["shards"])
    missing = [q for q in range(int(first["logical_shards"])) if str(q) not in merged["shards"]]
    if missing:
        raise DataError(f"data-pipeline state lacks logical shards {missing[:8]}{'…' if len(missing) > 8 else ''}")
    merged.pop("rank", None)
    return merged




class PackedDataLoader:
    """Batches of packed blocks for one data-parallel rank, with exact, elastic ``state_dict`` resume.

    Args:
        cfg: the data config (sources, tokenizer, objective, seq_len, micro_batch_size, workers…).
        split: ``"train"`` (``cfg.sources``, a weighted mixture, endless) or ``"validation"``
            (``cfg.validation_sources``, one pass, last block padded).
        rank: this process's data-parallel rank; ``world_size``: the data-parallel size.
        tokenizer: a loaded :class:`~data_pipeline.tokenizer.PipelineTokenizer` or
            :class:`~data_pipeline.hf_tokenizer.HFPipelineTokenizer` (default: load ``cfg.tokenizer_dir``:
            zerolm's own folder or a Hugging Face model's tokenizer folder).
        global_batch_size: sequences per optimizer step over all ranks (= the number of logical
            shards); default ``micro_batch_size × world_size`` (no gradient accumulation).

    Iterating yields dicts of int64 tensors of shape ``(micro_batch_size, seq_len)``:
    ``input_ids``, ``labels`` (``-100`` = no loss) and ``attention_mask``. Training: every
    ``accumulation`` micro-batches make one optimizer step's share of this rank. Re-iterating
    continues from the last completed step.

    Raises:
        DataError: a path matches nothing, a format is unknown, the tokenizer is missing or lacks a
            special token the objective needs (:func:`check_tokenizer_roles`), or the global batch does not split over ranks / micro-batches / workers — at construction,
            before any reading.
    """

    def __init__(
        self, cfg: DataConfig, *, split: str = "train", rank: int = 0, world_size: int = 1, tokenizer: Any = None,
        global_batch_size: int | None = None,
    ) -> None:
        if split not in ("train", "validation"):
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.cfg, self.split, self.rank, self.world_size = cfg, split, rank, world_size
        self.global_batch_size = global_batch_size or cfg.micro_batch_size * world_size
        self.per_rank, self.accumulation, self.per_worker = step_layout(
            self.global_batch_size, world_size, cfg.micro_batch_size, cfg.num_workers)
        key = "data.sources" if split == "train" else "data.validation_sources"
        srcs = cfg.sources if split == "train" else cfg.validation_sources
        self.sources = [(s, resolve_files(s, f"{key}[{i}]")) for i, s in enumerate(srcs)]
        if split == "train" and rank == 0:
            for s, files in self.sources:
                said = unequal_shards_warning(s.name, files, self.global_batch_size, cfg.seed, cfg.shuffle_files)
                if said:
                    log.warning(said)
        self.tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(cfg)
        check_tokenizer_roles(self.tokenizer, cfg)
        self.infinite = split == "train"
        self.first_shard = rank * self.per_rank
        self._states: dict[int, dict[str, Any]] = {}
        self.steps = 0
        self._in_step = 0  # micro-batches of the current step handed out
        self.batches = 0
        self.last_shards: list[int] = []  # logical shards of the rows of the last training micro-batch
        self.last_worker: int | None = None  # validation: the DataLoader worker of the last batch

    merge_states = staticmethod(merge_states)

    @property
    def num_workers(self) -> int:
        """DataLoader workers of this rank: ``max(cfg.num_workers, 1)``."""
        return max(self.cfg.num_workers, 1)

    @property
    def logical_shards(self) -> range:
        """The logical shards this rank owns."""
        return range(self.first_shard, self.first_shard + self.per_rank)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if not self.infinite:
            yield from self._validation()
            return
        ds = _StepChunks(self.cfg, self.sources, self.tokenizer, self.first_shard, self.per_worker,
                         self.global_batch_size, dict(self._states))
        # a private generator: starting workers must not draw from the global torch RNG (dropout),
        # or a resumed run's random stream would differ from an uninterrupted one
        dl = DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers, collate_fn=_as_is,
                        worker_init_fn=_ignore_sigint, generator=torch.Generator().manual_seed(self.cfg.seed))
        chunks = iter(dl)
        m = self.cfg.micro_batch_size
        while True:
            parts = [next(chunks) for _ in range(self.num_workers)]
            if [p["_worker"] for p in parts] != list(range(self.num_workers)):  # pragma: no cover - DataLoader order
                raise DataError(f"loader workers out of order: {[p['_worker'] for p in parts]}")
            step = {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in _KEYS}
            states = {q: st for p in parts for q, st in p["_states"].items()}
            self._in_step = 0
            for i in range(self.accumulation):
                batch = {k: v[i * m:(i + 1) * m] for k, v in step.items()}
                self.last_shards = list(range(self.first_shard + i * m, self.first_shard + (i + 1) * m))
                self.batches += 1
                self._in_step = i + 1
                if i == self.accumulation - 1:  # the step's last micro-batch: its state is complete
                    self._states, self.steps, self._in_step = states, self.steps + 1, 0
                yield batch

    def _validation(self) -> Iterator[dict[str, torch.Tensor]]:
        ds = _ValidationShards(self.cfg, self.sources, self.tokenizer, self.rank, self.world_size)
        dl = DataLoader(ds, batch_size=self.cfg.micro_batch_size, num_workers=self.cfg.num_workers,
                        collate_fn=_collate_validation, worker_init_fn=_ignore_sigint,
                        generator=torch.Generator().manual_seed(self.cfg.seed))
        for batch in dl:
            self.last_worker = batch.pop("_worker")
            self._states[self.last_worker] = batch.pop("_state")  # for stats(): skip counters per reader
            if batch.pop("_empty", False):  # only the end-of-pass counters of a finite stream
                continue
            self.batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """This rank's position after the last completed optimizer step: its logical shards' packer
        states (small, JSON-able). Merge all ranks' with :func:`merge_states` to resume elsewhere.

        Raises:
            DataError: called in the middle of a step (the state is defined at step boundaries), or on
                the validation split (one pass, no state).
        """
        if not self.infinite:
            raise DataError("the validation loader has no resumable state")
        if self._in_step:
            raise DataError(f"data-pipeline state asked for after {self._in_step} of {self.accumulation} micro-batches "
                            "of a step; it is defined at optimizer-step boundaries")
        return {
            "format": STATE_FORMAT,
            "elastic": True,
            "objective": self.cfg.objective,
            "seq_len": self.cfg.seq_len,
            "sources": [s.name for s, _ in self.sources],
            "logical_shards": self.global_batch_size,
            "shuffle_window": self.cfg.shuffle_window,
            "steps": self.steps,
            "world_size": self.world_size,
            "num_workers": self.cfg.num_workers,
            "rank": self.rank,
            "shards": {str(q): self._states[q] for q in self.logical_shards if q in self._states},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` of this rank or a :func:`merge_states` of all ranks,
        written on any number of ranks and workers.

        Raises:
            DataError: the state was written for another stream (format, objective, seq_len, sources,
                or number of logical shards = global batch) or lacks a logical shard this rank owns —
                resuming would repeat or lose data.
        """
        expect = {
            "format": STATE_FORMAT, "objective": self.cfg.objective, "seq_len": self.cfg.seq_len,
            "sources": [s.name for s, _ in self.sources], "logical_shards": self.global_batch_size,
            "shuffle_window": self.cfg.shuffle_window,
        }
        state = {"shuffle_window": 0, **state}  # states written before the shuffle window existed
        for k, v in expect.items():
            if state.get(k) != v:
                what = " (= the global batch size)" if k == "logical_shards" else ""
                raise DataError(
                    f"cannot resume the data pipeline: checkpoint has {k}={state.get(k)!r}, this run has {v!r}{what}"
                )
        steps = int(state["steps"])
        shards = state.get("shards") or {}
        if steps:
            missing = [q for q in self.logical_shards if str(q) not in shards]
            if missing:
                raise DataError(f"cannot resume the data pipeline: the state lacks logical shards {missing[:8]} of rank "
                                f"{self.rank} (a single rank's state from a run on {state.get('world_size')} ranks? merge "
                                "all ranks' states)")
        self._states = {q: shards[str(q)] for q in self.logical_shards if str(q) in shards}
        self.steps, self._in_step = steps, 0

    def stats(self) -> dict[str, Any]:
        """Counters of this rank's logical shards (validation: its readers) so far: ``documents``,
        ``tokens`` (packed, before CLS/SEP wrapping), ``samples``, ``epoch`` (lowest over shards and
        sources), ``skipped_documents`` and ``skipped_files`` (a file, or the rest of a damaged one:
        :data:`~data_pipeline.sources.FILE_REASONS`) by reason."""
        skipped: Counter[str] = Counter()
        docs = tokens = samples = 0
        epochs = []
        for w in self._states.values():
            samples += w["samples"]
            for p in w["sources"].values():
                docs += p["documents"]
                tokens += p["tokens"]
                skipped.update(p["skipped"])
                epochs.append(p["pos"][0] if p["pos"] else 0)
        return {
            "documents": docs, "tokens": tokens, "samples": samples, "epoch": min(epochs) if epochs else 0,
            "skipped_documents": {k: n for k, n in skipped.items() if k not in FILE_REASONS},
            "skipped_files": {k: n for k, n in skipped.items() if k in FILE_REASONS},
        }
