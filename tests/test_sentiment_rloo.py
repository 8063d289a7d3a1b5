"""RLOO's arithmetic (finetune/rloo.py) against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from zerolm.finetune.rloo import leave_one_out_advantages, sequence_rewards, token_advantages


def test_leave_one_out_hand_computed():
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    # prompt 0: 1 − (2+6)/2 = −3, 2 − (1+6)/2 = −1.5, 6 − (1+2)/2 = 4.5; prompt 1: −1.5, −1.5, 3
    want = torch.tensor([[-3.0, -1.5, 4.5], [-1.5, -1.5, 3.0]])
    got = leave_one_out_advantages(r)
    assert torch.allclose(got, want)
    assert torch.allclose(got.sum(1), torch.zeros(2))
    with pytest.raises(ValueError, match="k >= 2"):
        leave_one_out_advantages(torch.ones(4, 1))


def test_sequence_rewards_and_token_broadcast():
    scores = torch.tensor([1.0, -2.0])
    kl = torch.tensor([[0.5, 0.25, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(sequence_rewards(scores, kl, 0.2), torch.tensor([1.0 - 0.15, -2.0 - 0.2]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.equal(token_advantages(torch.tensor([2.0, -1.0]), mask), torch.tensor([[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]))
