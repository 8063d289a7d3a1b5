"""Objectives: small pieces that turn a batch and the model's output into a loss and metrics.

The trainer loop is shared; an objective only says how many tokens a batch predicts (for
token-weighted averages) and what extra evaluation metrics it has. The loss itself is the Hugging
Face model's own cross-entropy (``labels`` given; causal-LM models shift internally).
"""

from __future__ import annotations

import math

import torch

IGNORE_INDEX = -100


class Objective:
    """Base: causal-LM (GPT-style, next-token prediction; Radford et al. 2018)."""

    name = "clm"

    def predicted_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """Number of positions with a loss in a ``(batch, seq_len)`` label tensor (0-dim int64).
        Causal-LM predicts position t+1 from t, so the first label of each row has no loss."""
        return (labels[:, 1:] != IGNORE_INDEX).sum()

    def eval_sums(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """Sums to all-reduce over batches and ranks: ``loss_sum`` (mean loss × predicted
        tokens, nats), ``tokens``; subclasses add more. ``logits``: ``(batch, seq_len, vocab)``."""
        n = self.predicted_tokens(labels)
        return {"loss_sum": loss.detach().float() * n, "tokens": n.float()}

    def summarize(self, total: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics from the sums over all batches and ranks: ``eval/loss`` (token-weighted mean,
        nats/token), ``eval/perplexity`` (exp of it) and ``eval/tokens``."""
        tokens = float(total["tokens"])
        if not tokens:
            return {}
        loss = float(total["loss_sum"]) / tokens
        return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0)), "eval/tokens": tokens}


class MaskedLM(Objective):
    """Masked-LM (BERT-style; Devlin et al. 2019): loss on the masked positions only; evaluation
    also reports masked-token accuracy."""

    name = "mlm"

    def predicted_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels != IGNORE_INDEX).sum()

    def eval_sums(self, logits, labels, loss):
        sums = super().eval_sums(logits, labels, loss)
        chosen = labels != IGNORE_INDEX
        sums["correct"] = (logits.argmax(-1)[chosen] == labels[chosen]).sum().float()
        return sums

    def summarize(self, total):
        """Adds ``eval/accuracy``: masked tokens predicted exactly (argmax) ÷ masked tokens."""
        out = super().summarize(total)
        if out:
            out["eval/accuracy"] = float(total["correct"]) / float(total["tokens"])
        return out


def get_objective(name: str) -> Objective:
    """``"clm"`` → :class:`Objective`, ``"mlm"`` → :class:`MaskedLM`."""
    return {"clm": Objective, "mlm": MaskedLM}[name]()
