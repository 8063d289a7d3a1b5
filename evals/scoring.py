"""Multiple-choice log-likelihoods that run each shared context once.

A k-shot multiple-choice item asks for log p(choice | context) for 2–5 choices behind one long context.
:func:`shared_context_loglikelihood` runs the context through the model once, keeps its key/value cache,
and scores every choice from it; vocabulary logits are computed only at the positions that are scored.
Results equal :meth:`evals.lm.LanguageModel.loglikelihood` (lm-evaluation-harness tokenisation and left
truncation) to ~1e-4 nats.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch

log = logging.getLogger(__name__)


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _plain_full_attention(model) -> bool:
    """True when every layer attends to all earlier positions (no sliding window, no recurrent or
    linear-attention layers), the case where a context's key/value cache can simply be reused."""
    cfg = model.config
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "attention_chunk_size", None):
        return False
    types = getattr(cfg, "layer_types", None)
    return not types or all(t == "full_attention" for t in types)


_SHARE_MIN = 0.1  # share a context's cache when that saves ≥ this fraction of the tokens of one-pass scoring


@torch.no_grad()
def shared_context_loglikelihood(lm, requests: list[tuple[str, str]],
                                  batch_size: int | None = None) -> list[tuple[float, bool]]:
    """``(context, continuation)`` → ``(log p(continuation | context) in nats, is_greedy)``, like
    :meth:`evals.lm.LanguageModel.loglikelihood`, with each distinct context run through the model once
    and several documents packed into each row of a forward pass.

    Requests are grouped by their context tokens (after lm-eval's left truncation). Each group is
    scored one of two ways:

    * **one pass** — when every continuation is a single token (all of a BoolQ or CommonsenseQA
      document's choices come from one row of logits at the context's last position), when the group
      has one request, or when sharing would save under 30 % of the tokens (short prompts with long
      choices, PIQA at k = 0): ``context + continuation[:-1]`` runs once per distinct input, as in
      lm-eval, with logits only at the continuation's positions;
    * **shared context** — the context runs once and keeps its key/value cache; once a window of
      contexts is cached (8 batches or 512 MiB of cache) all their continuations run, sorted by length,
      with their contexts' caches gathered per row (position ids continue each context; context
      padding is masked), logits only at real continuation positions.

    Packing (:func:`pack_rows`): the inputs of a forward pass (at most ``batch_size`` rows, each as long
    as the longest input of that pass) are filled first-fit-decreasing with as many whole inputs as
    fit; each input gets its own position ids from 0 and a block-diagonal causal mask (a 4-D additive
    mask, so it attends only to itself), so it sees exactly what it would see alone. Short and
    long-tailed inputs thus waste no padding.

    Token ``j`` of a continuation is scored by the logits before it: the context's last position for
    ``j = 0``, continuation position ``j − 1`` otherwise. Inputs longer than ``lm.max_length`` are
    truncated from the left as lm-eval does (the model sees ``(context + continuation)[-(L+1):][:-1]``).
    Masked LMs, models with sliding-window or non-attention layers or an attention implementation other
    than ``sdpa``/``eager``, and continuations longer than the model's positions use
    ``lm.loglikelihood`` itself.

    Args:
        lm: an :class:`evals.lm.LanguageModel`.
        requests: (context, continuation) strings.
        batch_size: rows per forward pass (default ``lm.batch_size``); continuation rows are run in
            chunks of the same size.

    Returns:
        One (log-likelihood, is_greedy) per request, in request order.
    """
    if not requests:
        return []
    if lm.kind != "clm" or not _plain_full_attention(lm.model) or not _packable(lm.model):
        return lm.loglikelihood(requests)

    model, bs = lm.model, max(1, batch_size or lm.batch_size)
    pad = lm.tokenizer.pad_token_id
    device = lm.device
    results: list[tuple[float, bool] | None] = [None] * len(requests)

    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    fallback: list[int] = []
    ctx_cache: dict[str, list[int]] = {}
    for i, (ctx, cont) in enumerate(requests):
        ctx_ids, cont_ids = lm.encode_pair(ctx, cont, ctx_cache)
        if not cont_ids:
            results[i] = (0.0, True)
            continue
        if len(ctx_ids) + len(cont_ids) - 1 > lm.max_length:
            # lm-eval's left truncation: the model sees (ctx + cont)[-(L+1):][:-1], i.e. the last
            # L + 1 − len(cont) context tokens, then cont[:-1]; requests whose continuations have the
            # same length still share that truncated context
            keep = lm.max_length + 1 - len(cont_ids)
            if keep < 1:
                fallback.append(i)
                continue
            ctx_ids = ctx_ids[-keep:]
        groups.setdefault(tuple(ctx_ids), []).append((i, cont_ids))
    if fallback:
        for i, r in zip(fallback, lm.loglikelihood([requests[i] for i in fallback])):
            results[i] = r

    # one pass per distinct input (ctx + cont[:-1]) or a shared context per group
    single: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    shared: list[tuple[list[int], list]] = []
    for ctx_t, members in groups.items():
        n_ctx = len(ctx_t)
        multi = [c for _, c in members if len(c) > 1]
        full_tokens = sum(n_ctx + len(c) - 1 for _, c in members)
        if multi and len(members) > 1 and n_ctx * (len(members) - 1) >= _SHARE_MIN * full_tokens:
            shared.append((list(ctx_t), members))
        else:
            for i, cont in members:
                single.setdefault(ctx_t + tuple(cont[:-1]), []).append((i, cont))

    if single:
        inputs = list(single)
        keep_from = [len(x) - max(len(c) for _, c in single[x]) for x in inputs]
        for lp_rows, j in _packed_passes(model, [list(x) for x in inputs], keep_from, bs, pad, device,
                                         with_cache=False):
            for i, cont in single[inputs[j]]:
                lp = lp_rows[lp_rows.shape[0] - len(cont):]
                target = torch.tensor(cont, device=lp.device)
                results[i] = (float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))

    window: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, list]] = []
    window_bytes = 0
    seqs = [c for c, _ in shared]
    done = 0
    for item in _packed_passes(model, seqs, [len(c) - 1 for c in seqs], bs, pad, device, with_cache=True):
        lp_rows, j, kv = item
        window.append((len(seqs[j]), kv, lp_rows[0], shared[j][1]))
        window_bytes += sum(k.numel() * k.element_size() * 2 for k, _ in kv)
        done += 1
        # continuations are scored once a window of contexts is cached, sorted by their own length so
        # that the continuation batches carry little padding
        if len(window) >= _WINDOW_GROUPS * bs or window_bytes >= _WINDOW_BYTES or done == len(seqs):
            _score_continuations(model, window, results, bs, pad, device, lm.max_length, _accepts_logits_to_keep(model))
            window, window_bytes = [], 0
    return results  # type: ignore[return-value]


_WINDOW_GROUPS = 8  # contexts cached at once, in units of batch_size …
_WINDOW_BYTES = 512 * 2**20  # … and at most this much key/value cache


def _packable(model) -> bool:
    """A custom 4-D additive attention mask reaches the attention unchanged (sdpa and eager)."""
    return getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager")


def pack_rows(lengths: list[int], max_rows: int) -> list[list[list[int]]]:
    """Pack sequences into forward passes of at most ``max_rows`` rows.

    Each pass takes the longest remaining sequence as its row width, then places the remaining
    sequences, longest first, each into the first row with room (first-fit decreasing); a sequence
    that fits no row and finds no free row waits for a later pass.

    Args:
        lengths: token count of each sequence (≥ 1).
        max_rows: rows per forward pass.

    Returns:
        ``passes[p][r]`` = the indices of the sequences in row ``r`` of pass ``p``, in row order; every
        index appears exactly once.
    """
    remaining = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    passes = []
    while remaining:
        width = lengths[remaining[0]]
        rows: list[list[int]] = []
        used: list[int] = []
        left = []
        for i in remaining:
            n = lengths[i]
            for r in range(len(rows)):
                if used[r] + n <= width:
                    rows[r].append(i)
                    used[r] += n
                    break
            else:
                if len(rows) < max_rows:
                    rows.append([i])
                    used.append(n)
                else:
                    left.append(i)
        passes.append(rows)
        remaining = left
    return passes


def _packed_passes(model, seqs: list[list[int]], keep_from: list[int], bs: int, pad: int, device,
                   with_cache: bool):
    """Run ``seqs`` packed (:func:`pack_rows`), each alone in its block of a block-diagonal causal mask.

    Yields, per sequence ``j``: ``(log-softmax rows (len(seq) − keep_from[j], V) float32 for positions
    keep_from[j] …, j)``, plus, with ``with_cache``, the sequence's key/value cache per layer
    (``[(keys, values)]``, each ``(kv_heads, len, head_dim)``) as a third element.
    """
    from transformers import DynamicCache

    keep_ok = _accepts_logits_to_keep(model)
    dtype = next(model.parameters()).dtype
    lengths = [len(s) for s in seqs]
    for rows in pack_rows(lengths, bs):
        width = max(sum(lengths[j] for j in row) for row in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        seg = torch.full((len(rows), width), -1, dtype=torch.long)
        keep = torch.zeros((len(rows), width), dtype=torch.bool)
        spans = []  # (row, start, j) in row-major order = the order of the kept logits
        for r, row in enumerate(rows):
            at = 0
            for s, j in enumerate(row):
                n = lengths[j]
                ids[r, at:at + n] = torch.tensor(seqs[j])
                pos[r, at:at + n] = torch.arange(n)
                seg[r, at:at + n] = s
                keep[r, at + keep_from[j]:at + n] = True
                spans.append((r, at, j))
                at += n
            # padding: its own segment (attends to itself only), positions from 0
            pos[r, at:] = torch.arange(width - at)
            seg[r, at:] = len(row)
        if any(len(row) > 1 for row in rows):
            causal = torch.ones((width, width), dtype=torch.bool).tril()
            allowed = (seg[:, :, None] == seg[:, None, :]) & causal  # (rows, q, k)
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
            inputs = {"attention_mask": mask.to(device), "position_ids": pos.to(device)}
        else:  # one sequence per row, right-padded: no mask at all. Under causal attention a position never
            # sees the padding after it, so every kept logit is exact, and without a mask SDPA takes its causal
            # kernel (skips the upper triangle) instead of the full scores a padding mask makes it compute
            inputs = {}
        kwargs: dict[str, Any] = {"logits_to_keep": keep.to(device)} if keep_ok else {}
        if with_cache:
            kwargs.update(past_key_values=DynamicCache(config=model.config), use_cache=True)
        else:
            kwargs["use_cache"] = False
        out = model(input_ids=ids.to(device), **inputs, **kwargs)
        logits = out.logits if keep_ok else out.logits[keep.to(device)]
        lp = torch.log_softmax(logits.float(), dim=-1)  # (Σ kept, V)
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers] if with_cache else []
        at = 0
        for r, start, j in spans:
            n_keep = lengths[j] - keep_from[j]
            rows_lp = lp[at:at + n_keep]
            at += n_keep
            if with_cache:
                n = lengths[j]
                kv = [(k[r, :, start:start + n].clone(), v[r, :, start:start + n].clone()) for k, v in layers]
                yield rows_lp, j, kv
            else:
                yield rows_lp, j


def _score_continuations(model, window, results, bs: int, pad: int, device, max_length: int, keep_ok: bool) -> None:
    """Score every continuation of the cached contexts in ``window`` (see
    :func:`shared_context_loglikelihood`); fills ``results[request index]``."""
    from transformers import DynamicCache

    rows = [(g, i, cont) for g, (_, _, _, members) in enumerate(window) for i, cont in members]
    rows.sort(key=lambda x: -len(x[2]))
    n_layers = len(window[0][1])
    for c0 in range(0, len(rows), bs):
        chunk = rows[c0:c0 + bs]
        first = torch.stack([window[g][2] for g, _, _ in chunk])  # (R, V)
        first_tok = torch.tensor([cont[0] for _, _, cont in chunk], device=first.device)
        first_lp = first.gather(1, first_tok[:, None])[:, 0]
        first_greedy = first.argmax(-1) == first_tok
        n_more = max(len(cont) - 1 for _, _, cont in chunk)
        more_lp: list[torch.Tensor] = [torch.zeros(0)] * len(chunk)
        more_greedy: list[bool] = [True] * len(chunk)
        if n_more > 0:
            lens = [window[g][0] for g, _, _ in chunk]
            width = max(lens)
            cache = DynamicCache(config=model.config)
            for layer_idx in range(n_layers):
                k0 = window[chunk[0][0]][1][layer_idx][0]
                keys = k0.new_zeros((len(chunk), k0.shape[0], width, k0.shape[2]))
                values = torch.zeros_like(keys)
                for r, (g, _, _) in enumerate(chunk):
                    k, v = window[g][1][layer_idx]
                    keys[r, :, : k.shape[1]] = k
                    values[r, :, : v.shape[1]] = v
                cache.update(keys, values, layer_idx)
            inp = torch.full((len(chunk), n_more), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width + n_more), dtype=torch.long)
            for r, (_, _, cont) in enumerate(chunk):
                inp[r, : len(cont) - 1] = torch.tensor(cont[:-1])
                mask[r, : lens[r]] = 1  # the context (its padding up to `width` stays masked)
                mask[r, width: width + len(cont) - 1] = 1
            real = mask[:, width:].bool()
            # positions continue each context; padding rows may run past the model's positions:
            # clamp them (they are masked out)
            pos = torch.tensor([[min(n + t, max_length - 1) for t in range(n_more)] for n in lens])
            kw: dict[str, Any] = {"logits_to_keep": real.to(device)} if keep_ok else {}
            o = model(input_ids=inp.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                      past_key_values=cache, use_cache=True, **kw)
            logits = o.logits if keep_ok else o.logits[real.to(device)]  # (Σ real positions, V)
            lp = torch.log_softmax(logits.float(), dim=-1)
            at = 0
            for r, (_, _, cont) in enumerate(chunk):
                n = len(cont) - 1
                if n:
                    target = torch.tensor(cont[1:], device=lp.device)
                    rows_lp = lp[at:at + n]
                    more_lp[r] = rows_lp.gather(1, target[:, None])[:, 0]
                    more_greedy[r] = bool((rows_lp.argmax(-1) == target).all())
                    at += n
        for r, (_, i, _) in enumerate(chunk):
            results[i] = (float(first_lp[r]) + float(more_lp[r].sum()), bool(first_greedy[r]) and more_greedy[r])
