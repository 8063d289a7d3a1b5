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


@torch.no_grad()
def shared_context_loglikelihood(lm, requests: list[tuple[str, str]],
                                  batch_size: int | None = None) -> list[tuple[float, bool]]:
    """``(context, continuation)`` → ``(log p(continuation | context) in nats, is_greedy)``, like
    :meth:`evals.lm.LanguageModel.loglikelihood`, with each distinct context run through the model once.

    Requests are grouped by their context tokens. Contexts run in batches (longest first,
    right-padded); each keeps its key/value cache and the logits of its last token only. Once a
    window of contexts is cached (8 batches or 512 MiB of cache), all their continuations run,
    sorted by length, with the caches of their contexts gathered per row (position ids continue
    each context; context padding is masked); logits are computed only at real continuation
    positions. Token ``j`` of a continuation is scored
    by the logits before it: the context's last position for ``j = 0``, continuation position
    ``j − 1`` otherwise.

    Inputs longer than ``lm.max_length`` are truncated from the left as lm-eval does (the model sees
    ``(context + continuation)[-(L+1):][:-1]``); the truncated context is what requests share then
    (all of a document's single-token choices, for instance). Masked LMs, models with
    sliding-window or non-attention layers, and continuations longer than the model's positions
    use ``lm.loglikelihood`` itself.

    Args:
        lm: an :class:`evals.lm.LanguageModel`.
        requests: (context, continuation) strings.
        batch_size: contexts per forward pass (default ``lm.batch_size``); continuation rows are
            run in chunks of the same size.

    Returns:
        One (log-likelihood, is_greedy) per request, in request order.
    """
    if not requests:
        return []
    if lm.kind != "clm" or not _plain_full_attention(lm.model):
        return lm.loglikelihood(requests)
    from transformers import DynamicCache

    model, bs = lm.model, max(1, batch_size or lm.batch_size)
    pad = lm.tokenizer.pad_token_id
    device = lm.device
    keep_ok = _accepts_logits_to_keep(model)
    results: list[tuple[float, bool] | None] = [None] * len(requests)

    groups: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    fallback: list[int] = []
    for i, (ctx, cont) in enumerate(requests):
        ctx_ids, cont_ids = lm.encode_pair(ctx, cont)
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
    ordered = [(list(c), members) for c, members in groups.items()]
    ordered.sort(key=lambda g: -len(g[0]))
    if fallback:
        for i, r in zip(fallback, lm.loglikelihood([requests[i] for i in fallback])):
            results[i] = r

    window: list[tuple[int, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, list]] = []
    window_bytes = 0
    for b in range(0, len(ordered), bs):
        batch = ordered[b:b + bs]
        lens = [len(c) for c, _ in batch]
        ids = torch.full((len(batch), max(lens)), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (ctx_ids, _) in enumerate(batch):
            ids[r, : len(ctx_ids)] = torch.tensor(ctx_ids)
            mask[r, : len(ctx_ids)] = 1
        kwargs: dict[str, Any] = {}
        if keep_ok:
            kwargs["logits_to_keep"] = torch.tensor([[n - 1] for n in lens], device=device)
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                    past_key_values=DynamicCache(config=model.config), use_cache=True, **kwargs)
        last = out.logits[:, 0, :] if keep_ok else out.logits[torch.arange(len(batch)), torch.tensor(lens) - 1]
        last_lp = torch.log_softmax(last.float(), dim=-1)  # (G, V)
        layers = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        for g, (n, (_, members)) in enumerate(zip(lens, batch)):
            kv = [(k[g, :, :n].clone(), v[g, :, :n].clone()) for k, v in layers]  # (heads, n, head_dim)
            window.append((n, kv, last_lp[g], members))
            window_bytes += sum(k.numel() * k.element_size() * 2 for k, _ in kv)
        # continuations are scored once a window of contexts is cached, sorted by their own length so
        # that the continuation batches carry little padding
        if len(window) >= _WINDOW_GROUPS * bs or window_bytes >= _WINDOW_BYTES or b + bs >= len(ordered):
            _score_continuations(model, window, results, bs, pad, device, lm.max_length, keep_ok)
            window, window_bytes = [], 0
    return results  # type: ignore[return-value]


_WINDOW_GROUPS = 8  # contexts cached at once, in units of batch_size …
_WINDOW_BYTES = 512 * 2**20  # … and at most this much key/value cache


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
