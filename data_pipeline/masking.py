"""Dynamic masking for masked-LM (BERT-style) pretraining.

Devlin et al. 2019 §3.1 / Appendix A.1: choose ``probability`` (15%) of the non-special positions;
of those, 80% become ``[MASK]``, 10% a random token and 10% stay unchanged; the loss is computed
on the chosen positions only (labels elsewhere are ``-100``). Masking is dynamic (Liu et al. 2019,
RoBERTa §4.1): a block gets a fresh mask every time it is drawn. Here the mask of a block is a
function of a 64-bit seed the loader derives from (seed, shard, sample index), so a resumed run
draws exactly the masks an uninterrupted run would.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


def mask_tokens(
    input_ids: np.ndarray,
    *,
    seed: int,
    mask_id: int,
    special_ids: np.ndarray,
    random_low: int,
    vocab_size: int,
    probability: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """Mask one block for masked-LM.

    Args:
        input_ids: int64 array, shape ``(seq_len,)``.
        seed: 64-bit seed of this block's mask.
        mask_id: id of ``[MASK]``.
        special_ids: ids never masked (CLS, SEP, PAD, BOS, EOS, …).
        random_low: random replacements are drawn from ``[random_low, vocab_size)`` (skips the
            special and control pieces at the start of the vocabulary).
        vocab_size: vocabulary size.
        probability: fraction of maskable positions chosen (0.15 in BERT).

    Returns:
        ``(masked_ids, labels)``, both int64 of shape ``(seq_len,)``; ``labels`` holds the original
        id at chosen positions and ``-100`` elsewhere.
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    ids = input_ids.copy()
    maskable = ~np.isin(ids, special_ids)
    chosen = (rng.random(ids.shape[0]) < probability) & maskable
    labels = np.where(chosen, ids, IGNORE_INDEX)
    action = rng.random(ids.shape[0])
    to_mask = chosen & (action < 0.8)
    to_random = chosen & (action >= 0.8) & (action < 0.9)
    ids[to_mask] = mask_id
    ids[to_random] = rng.integers(random_low, vocab_size, size=int(to_random.sum()))
    return ids, labels
