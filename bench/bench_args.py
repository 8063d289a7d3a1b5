"""Command-line options shared by ``bench/pretrain_throughput.py`` and its per-rank worker: the
model shape and batch arithmetic both sides must agree on."""

from __future__ import annotations

import argparse


def add_run_args(ap: argparse.ArgumentParser, precision_default: str = "fp32") -> None:
    """Corpus, tokenizer, GPT shape (layers, d_model, heads), seq_len, micro-batch, gradient
    accumulation steps, ZeRO stage and precision, with the benchmark's defaults. ``--precision default``
    (offered when ``precision_default`` is ``"default"``) runs each trainer with its own default: zerolm's
    ``train.precision=auto``, HF Trainer's fp32 (``bf16=False``)."""
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--tokenizer", default="data/tokenizer")
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    ap.add_argument("--precision", default=precision_default,
                    choices=["default", "fp32", "bf16"] if precision_default == "default" else ["fp32", "bf16"])
