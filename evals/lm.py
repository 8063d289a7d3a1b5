"""Scoring and generation with any Hugging Face causal-LM or masked-LM folder.

Everything in ``evals/`` asks a model the same few questions through :class:`LanguageModel`:

* ``loglikelihood`` — log p(continuation | context) in nats, plus whether greedy decoding would have
  produced the continuation (multiple-choice few-shot tasks, BBQ, StereoSet intersentence);
* ``loglikelihood_rolling`` — log p of a whole text (CrowS-Pairs for causal LMs);
* ``token_logprobs`` / ``pseudo_log_likelihoods`` — per-token scores for callers that choose the
  tokens themselves (CrowS-Pairs shared tokens for masked LMs);
* ``generate_until`` / ``sample`` — greedy continuations cut at stop strings, and sampled ones.

Causal LMs follow lm-evaluation-harness' ``HFLM`` conventions so that scores agree with it: the
context's trailing whitespace moves to the continuation, ``context + continuation`` is encoded whole and
the continuation is the tail beyond the context's tokens, special tokens are whatever the tokenizer
adds by default, an empty context is replaced by the BOS (else EOS) token, and inputs longer than the
model's positions are truncated from the left.

Masked LMs are scored by pseudo-log-likelihood (Salazar et al. 2020, "Masked Language Model
Scoring"; Wang & Cho 2019): each scored token is masked in turn, alone, and the model's log-probability
of the original token at that position is summed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import torch

from zerolm.errors import DataError
from zerolm.hf_models import KIND_NAMES, ModelKind, model_kind, resolve_model_path  # noqa: F401  (model_kind re-exported)

log = logging.getLogger(__name__)


def load_lm(path_or_name: str | Path, batch_size: int = 16, max_length: int | None = None,
            device: str | None = None, dtype: str = "float32") -> "LanguageModel":
    """Load a model folder (or a built-in name such as ``smollm2``) for scoring.

    Args:
        path_or_name: a Hugging Face folder (ours from ``zerolm export`` or any other) or a name
            :func:`zerolm.hf_models.resolve_model_path` knows.
        batch_size: sequences per forward pass.
        max_length: positions to use (default: the model's ``max_position_embeddings`` / ``n_positions``).
        device: ``cpu``/``cuda``/…; default CUDA when available.
        dtype: ``float32``, ``bfloat16`` or ``float16``.

    Raises:
        DataError: not a causal or masked LM folder, or it cannot be loaded.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    path = resolve_model_path(str(path_or_name))
    kind = model_kind(path)
    cls = AutoModelForCausalLM if kind == "clm" else AutoModelForMaskedLM
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = cls.from_pretrained(path, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load {path} as a {KIND_NAMES[kind]}: {e}") from e
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    fast_gelu(model)
    return LanguageModel(model, tok, kind, name=str(path_or_name), batch_size=batch_size,
                         max_length=max_length, device=dev)


def fast_gelu(model) -> int:
    """Swap ``transformers``' Python-written tanh-approximate GELU (``NewGELUActivation``, the GPT-2
    family's ``gelu_new``: five tensor ops) for ``torch.nn.functional.gelu(approximate="tanh")``, the
    same formula in one fused kernel (``GELUTanh``; outputs equal up to float rounding, ~1e-7
    relative). Only for models loaded for scoring (:func:`load_lm`), never a model being trained.

    Returns:
        The number of activation modules replaced.
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
                n += 1
    return n


def _positions(model) -> int:
    cfg = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


class LanguageModel:
    """A loaded causal or masked LM with batched scoring and generation (see the module docstring).

    Attributes:
        kind: ``"clm"`` (causal LM) or ``"mlm"`` (masked LM), as :func:`zerolm.hf_models.model_kind` tells.
        model, tokenizer: the ``transformers`` objects.
        name: what the user passed.
        device: where the model runs.
        max_length: the most token positions one forward pass uses.
        batch_size: sequences per forward pass.
    """

    def __init__(self, model, tokenizer, kind: ModelKind, name: str, batch_size: int = 16,
                 max_length: int | None = None, device: torch.device | None = None) -> None:
        self.model, self.tokenizer, self.kind, self.name = model, tokenizer, kind, name
        self.batch_size = max(1, int(batch_size))
        self.device = device or next(model.parameters()).device
        self.max_length = min(max_length or _positions(model), _positions(model))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if kind == "mlm" and tokenizer.mask_token_id is None:
            raise DataError(f"{name}: a masked LM whose tokenizer has no mask token")

    # ------------------------------------------------------------------ tokenisation

    @property
    def prefix_token_id(self) -> int:
        """The token an empty context is replaced by (causal): BOS, else EOS."""
        tok = self.tokenizer
        return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id

    def encode(self, text: str) -> list[int]:
        """Token ids with the tokenizer's default special tokens (causal LMs: as lm-eval encodes)."""
        return self.tokenizer(text)["input_ids"]

    def encode_pair(self, context: str, continuation: str,
                    cache: dict[str, list[int]] | None = None) -> tuple[list[int], list[int]]:
        """Causal LMs: ``(context ids, continuation ids)`` as lm-evaluation-harness splits them (the
        context's trailing whitespace moves to the continuation; ``context + continuation`` is encoded
        whole and the continuation is the tail beyond the context's tokens; an empty context becomes
        the BOS/EOS token). ``cache`` (context text → ids), if given, saves re-encoding a context
        shared by several choices; the ids are the same either way."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        if not context:
            return [self.prefix_token_id], self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        whole = self.encode(context + continuation)
        if cache is None:
            ctx = self.encode(context)
        else:
            ctx = cache.get(context)
            if ctx is None:
                ctx = cache[context] = self.encode(context)
        return ctx, whole[len(ctx):]

    def _strip_specials(self, text: str) -> tuple[list[int], list[int], list[int]]:
        """(prefix specials, text ids, suffix specials) of a masked-LM encoding."""
        with_sp = self.tokenizer(text)["input_ids"]
        plain = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(len(with_sp) - len(plain) + 1):
            if with_sp[start:start + len(plain)] == plain:
                return with_sp[:start], plain, with_sp[start + len(plain):]
        return [], plain, []

    # ------------------------------------------------------------------ causal scoring

    @torch.no_grad()
    def token_logprobs(self, input_ids: list[list[int]]) -> list[torch.Tensor]:
        """Causal LMs: ``log p(ids[t] | ids[:t])`` for t = 1 … len−1 of each id list.

        Args:
            input_ids: token id lists (each with whatever BOS the caller wants), ≤ ``max_length`` long.

        Returns:
            One float32 CPU tensor of shape ``(len(ids) − 1,)`` per list, in nats.

        Raises:
            DataError: called on a masked LM, or a list longer than ``max_length``.
        """
        if self.kind != "clm":
            raise DataError("token_logprobs needs a causal LM; use pseudo_log_likelihoods for a masked LM")
        out: list[torch.Tensor | None] = [None] * len(input_ids)
        order = sorted(range(len(input_ids)), key=lambda i: -len(input_ids[i]))
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            seqs = [input_ids[i] for i in idx]
            if len(seqs[0]) > self.max_length:
                raise DataError(f"a sequence of {len(seqs[0])} tokens exceeds the model's {self.max_length} positions")
            logits = self._forward(seqs)
            for row, (i, ids) in enumerate(zip(idx, seqs)):
                n = len(ids)
                lp = torch.log_softmax(logits[row, : n - 1].float(), dim=-1)
                target = torch.tensor(ids[1:], device=lp.device)
                out[i] = lp.gather(1, target[:, None])[:, 0].cpu()
        return out  # type: ignore[return-value]

    def _forward(self, seqs: list[list[int]]) -> torch.Tensor:
        """Logits ``(B, T, V)`` of right-padded sequences (pad positions masked out)."""
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        return self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits

    @torch.no_grad()
    def _causal_loglikelihood(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        # lm-eval's order: longest first (fewer surprises in memory, padding grouped)
        order = sorted(range(len(pairs)), key=lambda i: (-(len(pairs[i][0]) + len(pairs[i][1])), i))
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            seqs, spans = [], []
            for i in idx:
                ctx, cont = pairs[i]
                whole = (ctx + cont)[-(self.max_length + 1):][:-1]
                n_cont = min(len(cont), len(whole))
                seqs.append(whole)
                spans.append((len(whole) - n_cont, len(whole), cont[len(cont) - n_cont:]))
            logits = self._forward(seqs)
            for row, (i, (start, end, cont)) in enumerate(zip(idx, spans)):
                lp = torch.log_softmax(logits[row, start:end].float(), dim=-1)
                target = torch.tensor(cont, device=lp.device)
                total = float(lp.gather(1, target[:, None]).sum())
                greedy = bool((lp.argmax(-1) == target).all())
                results[i] = (total, greedy)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ masked scoring

    def pseudo_log_likelihoods(self, input_ids: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
        """Masked LMs: ``log p(ids[p] | ids with only position p masked)`` for each requested p.

        Args:
            input_ids: full id lists (special tokens included), ≤ ``max_length`` long.
            positions: for each list, the positions to score (any order).

        Returns:
            One float32 CPU tensor of shape ``(len(positions[i]),)`` per list, in nats, in the given
            order.

        Raises:
            DataError: called on a causal LM, or a list longer than ``max_length``.

        Source: Salazar et al. 2020, "Masked Language Model Scoring" (PLL = Σ_t log P(w_t | W_\\t)).
        """
        return self._pll(input_ids, positions)[0]

    @torch.no_grad()
    def _pll(self, input_ids: list[list[int]], positions: list[list[int]]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """PLL scores and, per position, whether the masked argmax is the original token."""
        if self.kind != "mlm":
            raise DataError("pseudo_log_likelihoods needs a masked LM; use token_logprobs for a causal LM")
        for ids in input_ids:
            if len(ids) > self.max_length:
                raise DataError(f"a sequence of {len(ids)} tokens exceeds the model's {self.max_length} positions")
        mask_id = self.tokenizer.mask_token_id
        scores = [torch.zeros(len(p)) for p in positions]
        correct = [torch.zeros(len(p), dtype=torch.bool) for p in positions]
        jobs = sorted(((i, j) for i, pos in enumerate(positions) for j in range(len(pos))),
                      key=lambda ij: -len(input_ids[ij[0]]))
        for b in range(0, len(jobs), self.batch_size):
            chunk = jobs[b:b + self.batch_size]
            seqs = []
            for i, j in chunk:
                s = list(input_ids[i])
                s[positions[i][j]] = mask_id
                seqs.append(s)
            logits = self._forward(seqs)
            for row, (i, j) in enumerate(chunk):
                p, original = positions[i][j], input_ids[i][positions[i][j]]
                lp = torch.log_softmax(logits[row, p].float(), dim=-1)
                scores[i][j] = float(lp[original])
                correct[i][j] = int(lp.argmax()) == original
        return scores, correct

    def _masked_loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        seqs, spans = [], []
        for context, continuation in requests:
            prefix, plain, suffix = self._strip_specials(context + continuation)
            n_ctx = len(self.tokenizer(context.rstrip(), add_special_tokens=False)["input_ids"]) if context.strip() else 0
            cut = max(0, len(plain) - (self.max_length - len(prefix) - len(suffix)))  # drop context from the left
            seqs.append(prefix + plain[cut:] + suffix)
            spans.append(list(range(len(prefix) + max(0, n_ctx - cut), len(prefix) + len(plain) - cut)))
        scores, correct = self._pll(seqs, spans)
        return [(float(s.sum()), bool(c.all())) for s, c in zip(scores, correct)]

    # ------------------------------------------------------------------ public scoring

    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``(context, continuation)`` → ``(log p(continuation | context) in nats, is_greedy)``.

        Causal LMs: exact conditional log-likelihood, batched longest-first (results in request
        order), tokenised as lm-evaluation-harness does (see the module docstring). Masked LMs: the
        pseudo-log-likelihood of the continuation's tokens given the context; ``is_greedy`` = every
        masked position's argmax is the original token.
        """
        if not requests:
            return []
        if self.kind == "clm":
            return self._causal_loglikelihood([self.encode_pair(c, x) for c, x in requests])
        return self._masked_loglikelihood(requests)

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        """Total log-probability of each text in nats.

        Causal: every token of ``text`` (encoded without special tokens) conditioned on its prefix,
        the first on BOS/EOS; texts longer than ``max_length`` are scored in consecutive windows,
        each conditioned on the token before it. Masked: the PLL of every non-special token.
        """
        if self.kind == "mlm":
            seqs, spans = [], []
            for t in texts:
                prefix, plain, suffix = self._strip_specials(t)
                plain = plain[: self.max_length - len(prefix) - len(suffix)]
                seqs.append(prefix + plain + suffix)
                spans.append(list(range(len(prefix), len(prefix) + len(plain))))
            return [float(x.sum()) for x in self.pseudo_log_likelihoods(seqs, spans)]
        windows, owner = [], []
        for k, t in enumerate(texts):
            ids = [self.prefix_token_id] + self.tokenizer(t, add_special_tokens=False)["input_ids"]
            step = self.max_length - 1
            for start in range(0, len(ids) - 1, step):
                windows.append(ids[start:start + self.max_length])
                owner.append(k)
        totals = [0.0] * len(texts)
        for k, lp in zip(owner, self.token_logprobs(windows)):
            totals[k] += float(lp.sum())
        return totals

    # ------------------------------------------------------------------ generation

    def _left_padded(self, prompts: list[str], keep: int | None = None) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        keep = keep or self.max_length
        return {k: v[:, -keep:].to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def generate_until(self, requests: list[tuple[str, list[str], int]]) -> list[str]:
        """Greedy continuations: ``(context, stop strings, max_new_tokens)`` → text after the context,
        cut before the first stop string (or at EOS).

        Raises:
            DataError: on a masked LM.
        """
        if self.kind != "clm":
            raise DataError("generate_until needs a causal LM")
        out: list[str | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: (-len(requests[i][0]), i))
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            max_new = max(1, min(max(requests[i][2] for i in idx), self.max_length - 1))
            # like lm-eval: the prompt keeps its last (max_length - max_new) tokens, room for the answer
            enc = self._left_padded([requests[i][0] for i in idx], keep=self.max_length - max_new)
            gen = self.model.generate(**enc, max_new_tokens=max_new, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row, i in enumerate(idx):
                text = self.tokenizer.decode(new[row][: requests[i][2]], skip_special_tokens=True)
                for stop in requests[i][1]:
                    if stop and stop in text:
                        text = text[: text.index(stop)]
                out[i] = text
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def sample(self, prompts: list[str], max_new_tokens: int, num_samples: int = 1, temperature: float = 1.0,
               top_p: float = 0.95, seed: int = 0, on_batch: Callable[[int], None] | None = None) -> list[list[str]]:
        """Sampled continuations (text after each prompt): ``num_samples`` per prompt, nucleus
        sampling (Holtzman et al. 2020) at ``temperature``; reproducible for a given ``seed`` and batch
        size. ``on_batch(n)``, if given, is called after each batch with its number of prompts
        (a progress bar's ``update``).

        Raises:
            DataError: on a masked LM.
        """
        if self.kind != "clm":
            raise DataError("sample needs a causal LM")
        torch.manual_seed(seed)
        out = []
        per_batch = max(1, self.batch_size // max(1, num_samples))
        for b in range(0, len(prompts), per_batch):
            chunk = prompts[b:b + per_batch]
            enc = self._left_padded(chunk, keep=max(1, self.max_length - max_new_tokens))
            gen = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                      top_p=top_p, top_k=0, num_return_sequences=num_samples,
                                      pad_token_id=self.tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            out.extend(texts[i * num_samples:(i + 1) * num_samples] for i in range(len(chunk)))
            if on_batch is not None:
                on_batch(len(chunk))
        return out


def perplexity(total_logprob: float, n_tokens: int) -> float:
    """exp(−log-likelihood / tokens); ``inf`` for zero tokens."""
    return math.exp(-total_logprob / n_tokens) if n_tokens else math.inf
