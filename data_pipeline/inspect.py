"""``zerolm data inspect``: stream some batches, decode samples, count what the pipeline did."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from zerolm.data_pipeline.loader import PackedDataLoader
from zerolm.config import DataConfig


def render_ids(ids: np.ndarray, tok: Any) -> str:
    """Decode a block for people: special tokens shown as ``</s>``, ``[SEP]``, ``[MASK]``… ."""
    names = {tok.eos_id: "</s>", tok.bos_id: "<s>", tok.sep_id: "[SEP]", tok.cls_id: "[CLS]", tok.mask_id: "[MASK]", tok.pad_id: "<pad>"}
    out, run = [], []
    for i in ids.tolist():
        if i in names:
            if run:
                out.append(tok.decode(run))
                run = []
            out.append(names[i])
        else:
            run.append(i)
    if run:
        out.append(tok.decode(run))
    return "".join(out)


def inspect_pipeline(cfg: DataConfig, num_samples: int = 2, num_batches: int = 50) -> dict[str, Any]:
    """Stream ``num_batches`` training batches (rank 0 of 1) and report what came out.

    Returns:
        A JSON-able dict: ``config`` (objective, seq_len, micro_batch_size, workers, sources with file
        counts), ``batches``, ``tokens_per_second`` (tokens in batches ÷ wall seconds, loader start
        included), ``padding_fraction``, ``masked_fraction`` (masked-LM), the loader's counters
        (``documents``, ``skipped_documents`` …) and ``samples`` (decoded blocks).

    Raises:
        DataError: from the loader (missing paths, unknown formats, missing tokenizer).
    """
    loader = PackedDataLoader(cfg)
    tok = loader.tokenizer
    t0 = time.perf_counter()
    tokens = pad = masked = 0
    samples: list[str] = []
    it = iter(loader)
    for _ in range(num_batches):
        b = next(it)
        ids = b["input_ids"].numpy()
        tokens += ids.size
        pad += int((b["attention_mask"] == 0).sum())
        masked += int((b["labels"] != -100).sum()) if cfg.objective == "mlm" else 0
        for row in ids[: max(num_samples - len(samples), 0)]:
            samples.append(render_ids(row, tok))
    seconds = time.perf_counter() - t0
    return {
        "config": {
            "objective": cfg.objective, "seq_len": cfg.seq_len, "micro_batch_size": cfg.micro_batch_size,
            "num_workers": cfg.num_workers, "vocab_size": tok.vocab_size,
            "sources": [{"name": s.name, "weight": s.weight, "files": len(f)} for s, f in loader.sources],
        },
        "batches": num_batches,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1),
        "padding_fraction": pad / tokens,
        "masked_fraction": masked / tokens if cfg.objective == "mlm" else None,
        **loader.stats(),
        "samples": samples,
    }
