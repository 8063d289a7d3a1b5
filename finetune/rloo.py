"""RLOO: REINFORCE with a leave-one-out baseline over several samples of each prompt.

``zerolm finetune sentiment --method rloo`` (the loop is :func:`finetune.ppo.train_ppo`, the step
:mod:`finetune.rl_algo`; this module holds the method's formulas). Each prompt is answered ``rloo_k`` times; a sample's advantage is its
sequence reward minus the mean reward of the *other* samples of the same prompt (Kool et al. 2019,
"Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al. 2024, "Back to Basics:
Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs"). No value head
is trained: for short continuations scored once at the end, a per-prompt baseline from the group is
both cheaper and less noisy than a learnt value of each token.

The sequence reward is the classifier's score minus the KL penalty of the whole sample,
``R_i = score_i − β Σ_t (log π(y_t) − log π_ref(y_t))`` (Ahmadian et al. §3: the KL enters the reward
at sequence level), and the policy loss is the clipped surrogate of PPO (Schulman et al. 2017) with
that one advantage on every token of the sample, so that several update epochs over the same batch
stay close to the sampling policy — with one epoch the ratio is 1 and it is plain REINFORCE.
"""

from __future__ import annotations

import torch


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Advantages of ``k`` samples per prompt against the mean of the prompt's other samples.

    Args:
        rewards: ``(P, k)`` sequence rewards, row ``p`` = the ``k ≥ 2`` samples of prompt ``p``.

    Returns:
        ``(P, k)``: ``A_pi = R_pi − (Σ_j R_pj − R_pi) / (k − 1)``, which equals
        ``k / (k − 1) · (R_pi − mean_j R_pj)``; each row sums to 0.

    Raises:
        ValueError: fewer than 2 samples per prompt (no baseline can be left out).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"leave-one-out needs (prompts, k >= 2) rewards, got shape {tuple(rewards.shape)}")
    k = rewards.shape[1]
    others = (rewards.sum(1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def sequence_rewards(scores: torch.Tensor, kl_tokens: torch.Tensor, beta: float) -> torch.Tensor:
    """``R = score − β · Σ_t kl_t``.

    Args:
        scores: ``(N,)`` reward-model scores. kl_tokens: ``(N, R)`` ``log π − log π_ref`` per response
            token, 0 on padding (nats). beta: the KL coefficient.

    Returns:
        ``(N,)`` sequence rewards.
    """
    return scores - beta * kl_tokens.sum(1)


def token_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast one advantage per sample ``(N,)`` onto its response tokens: ``(N, R)``, 0 on padding
    (``mask`` ``(N, R)``)."""
    return advantages[:, None] * mask
