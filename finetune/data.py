"""Labelled text for classification: stratified splits, class statistics, batches.

Reading the labelled datasets (the built-in real ones and user files) is
:mod:`zerolm.data_pipeline.labelled`'s.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator

import numpy as np
import torch

from zerolm.errors import DataError

log = logging.getLogger(__name__)


def _stratified_take(idx_by_class: dict[str, list[int]], fraction: float, rng: np.random.Generator,
                     keep_one: bool = True) -> tuple[list[int], dict[str, list[int]]]:
    taken, rest = [], {}
    for label in sorted(idx_by_class):
        idx = idx_by_class[label]
        k = int(round(len(idx) * fraction))
        if keep_one:
            k = min(k, max(len(idx) - 1, 0))  # every class keeps at least one example for training
        taken += idx[:k]
        rest[label] = idx[k:]
    return sorted(taken), rest


def stratified_split(labels: list[str], validation_fraction: float, test_fraction: float, seed: int,
                     max_examples: int | None = None) -> dict[str, list[int]]:
    """Deterministic stratified ``train``/``validation``/``test`` index lists.

    Each class's indices are shuffled with one ``numpy`` generator seeded by ``seed`` (classes in
    sorted order), then ``round(n_c × fraction)`` go to test and validation, the rest to train (a
    class keeps at least one training example). With ``max_examples`` a stratified subsample of that
    size is taken first. Same labels and seed → same splits, on every rank and every run.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    by_class = {y: [int(i) for i in rng.permutation(v)] for y, v in sorted(by_class.items())}
    if max_examples is not None and max_examples < len(labels):
        keep, _ = _stratified_take(by_class, max_examples / len(labels), rng, keep_one=False)
        kept = set(keep)
        by_class = {y: [i for i in v if i in kept] for y, v in by_class.items()}
        by_class = {y: v for y, v in by_class.items() if v}
    test, rest = _stratified_take(by_class, test_fraction, rng)
    total = {y: len(v) for y, v in by_class.items()}
    # validation fraction of the whole, taken from what test left
    val_frac = {y: validation_fraction * total[y] / max(len(rest[y]), 1) for y in rest}
    val, train = [], []
    for y in sorted(rest):
        k = min(int(round(len(rest[y]) * val_frac[y])), max(len(rest[y]) - 1, 0))
        val += rest[y][:k]
        train += rest[y][k:]
    return {"train": sorted(train), "validation": sorted(val), "test": sorted(test)}


def class_counts(labels: list[str], label_names: list[str]) -> dict[str, int]:
    """Examples per class, in ``label_names`` order."""
    counts = {y: 0 for y in label_names}
    for y in labels:
        counts[y] = counts.get(y, 0) + 1
    return counts


def imbalance_report(splits: dict[str, list[str]], label_names: list[str]) -> dict[str, Any]:
    """Per split: counts per class, fractions, and the imbalance ratio (largest ÷ smallest class)."""
    out = {}
    for name, labels in splits.items():
        counts = class_counts(labels, label_names)
        n = max(sum(counts.values()), 1)
        nonzero = [c for c in counts.values() if c]
        out[name] = {"examples": sum(counts.values()), "counts": counts,
                     "fractions": {y: round(c / n, 4) for y, c in counts.items()},
                     "imbalance_ratio": round(max(nonzero) / min(nonzero), 3) if nonzero else None}
    return out


def class_weights(train_labels: list[int], num_labels: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (C · n_c)`` (1 for a balanced set; scikit-learn's "balanced")."""
    counts = torch.bincount(torch.tensor(train_labels, dtype=torch.long), minlength=num_labels).double()
    return (counts.sum() / (num_labels * counts.clamp(min=1))).float()


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of ``(input_ids, label)`` to the longest in the batch (dynamic padding)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, (x, _) in enumerate(examples):
        ids[r, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[r, : len(x)] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.tensor([y for _, y in examples], dtype=torch.long)}


class ClassificationLoader:
    """Batches of tokenized examples for one data-parallel rank, resumable exactly.

    Training (``infinite=True``): each epoch is a permutation seeded by ``seed + epoch``; rank ``r``
    of ``w`` takes every ``w``-th position of it (each rank the same count: the tail is dropped),
    in micro-batches; a partial last batch is dropped and the next epoch begins. State =
    ``{"epoch", "position"}`` (examples of this rank's epoch shard already yielded).

    Evaluation (``infinite=False``): the examples in order, ``rank::world_size``, one pass, the last
    batch may be short.
    """

    def __init__(self, examples: list[tuple[list[int], int]], micro_batch_size: int, pad_id: int, *,
                 rank: int = 0, world_size: int = 1, seed: int = 1234, infinite: bool = True,
                 skipped: dict[str, int] | None = None) -> None:
        if infinite and len(examples) // world_size < micro_batch_size:
            raise DataError(f"{len(examples)} training examples cannot fill a micro batch of {micro_batch_size} "
                            f"on each of {world_size} ranks")
        self.examples, self.micro, self.pad_id = examples, micro_batch_size, pad_id
        self.rank, self.world, self.seed, self.infinite = rank, world_size, seed, infinite
        self.epoch = self.position = 0
        self.skipped = dict(skipped or {})

    def _shard(self, epoch: int) -> list[int]:
        n = len(self.examples)
        if not self.infinite:
            return list(range(self.rank, n, self.world))
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        per_rank = n // self.world
        return perm[self.rank :: self.world][:per_rank]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if not self.infinite:
            order = self._shard(0)
            for i in range(0, len(order), self.micro):
                yield collate([self.examples[j] for j in order[i : i + self.micro]], self.pad_id)
            return
        while True:
            order = self._shard(self.epoch)
            while self.position + self.micro <= len(order):
                chunk = order[self.position : self.position + self.micro]
                self.position += self.micro
                yield collate([self.examples[j] for j in chunk], self.pad_id)
            self.epoch += 1
            self.position = 0

    def __len__(self) -> int:
        return math.ceil(len(self._shard(0)) / self.micro)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def stats(self) -> dict[str, Any]:
        return {"skipped_documents": dict(self.skipped), "epoch": self.epoch}
