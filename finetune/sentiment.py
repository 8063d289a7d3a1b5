"""Primitives of sentiment-controlled continuation (``zerolm finetune sentiment``): the bottom layer
the methods, the report and the job build on; it imports none of them.

* labels and the reward: mapping ``positive``/``negative`` to a classifier's label names
  (:func:`polarity_of`, :func:`resolve_target_label`) and the reward classifier (:class:`RewardModel`);
* the policy: :func:`load_policy`, :func:`stop_ids`;
* control-code tokens (:func:`code_ids`) — the prompts themselves are :mod:`finetune.sentiment_prompts`;
* sampling with a KV cache (:func:`sample_responses`) and response log-probabilities (:func:`pack`,
  :func:`response_logits`, :func:`token_logprobs`, :func:`sequence_logprobs`).

Above them: the two methods — ``control`` (control codes, Keskar et al. 2019, CTRL;
:mod:`finetune.sentiment_control`) and ``ppo`` (RL from the reward with a per-token KL penalty against
the frozen reference, Ziegler et al. 2019; :mod:`finetune.ppo`) — the export
(:mod:`finetune.sentiment_export`), the before/after report (:mod:`finetune.sentiment_report`), and at
the top the job, :func:`finetune.sentiment_job.finetune_sentiment`.

Control codes are *plain text* (``sentiment.control_codes``, default ``"Positive review:"`` /
``"Negative review:"``) tokenized as ``code + "\\n"`` and concatenated with the text's tokens: no
vocabulary change, any tokenizer works, and a pretrained LM starts from words it knows (CTRL's own
codes were text too, e.g. ``Reviews Rating: 5.0``). Generation = code tokens + prompt tokens.
"""

from __future__ import annotations

import logging

import torch

from zerolm.hf_models import resolve_model_path
from zerolm.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MARKER = "zerolm_sentiment.json"
SYNONYMS = {
    "positive": ("positive", "pos", "fresh", "good", "favorable", "favourable", "like", "happy"),
    "negative": ("negative", "neg", "rotten", "bad", "unfavorable", "unfavourable", "dislike", "sad"),
}


# --------------------------------------------------------------------------------------------------
# Labels and the reward
# --------------------------------------------------------------------------------------------------


def polarity_of(label: str) -> str | None:
    """``"positive"``/``"negative"`` for a label name in :data:`SYNONYMS` (case-insensitive), else None."""
    key = str(label).strip().lower()
    return next((p for p, names in SYNONYMS.items() if key in names), None)


def resolve_target_label(id2label: dict[int, str], target: str, target_label: str | None = None,
                         where: str = "the reward model") -> int:
    """The class index of ``target`` (positive/negative) among a classifier's labels.

    ``target_label`` (``sentiment.target_label``) names the class explicitly; otherwise exactly one
    label must be a synonym of ``target`` (fresh/rotten, pos/neg, positive/negative, good/bad …).

    Raises:
        ConfigError: ``target_label`` is not a label, or no label (or more than one) maps to ``target``;
            the message lists the labels and says to set ``sentiment.target_label``.
    """
    names = {int(i): str(n) for i, n in id2label.items()}
    if target_label is not None:
        hits = [i for i, n in names.items() if n == target_label]
        if not hits:
            raise ConfigError(f"sentiment.target_label={target_label!r} is not a label of {where} "
                              f"(labels: {sorted(names.values())})")
        return hits[0]
    hits = [i for i, n in names.items() if polarity_of(n) == target]
    if len(hits) != 1:
        raise ConfigError(f"cannot map target {target!r} to one label of {where} (labels: {sorted(names.values())}; "
                          f"known {target} names: {', '.join(SYNONYMS[target])}): set sentiment.target_label")
    return hits[0]


class RewardModel:
    """A sequence classifier folder (``zerolm finetune classify`` export) used as the reward.

    ``score(texts)`` gives one reward per text, shape ``(N,)``: with ``reward_type`` ``logit`` the
    target class's logit (TRL gpt2-sentiment: the pipeline's raw ``POSITIVE`` score), ``logit_margin``
    ``log p_t − log(1 − p_t)`` (two classes: target logit minus the other), ``log_prob`` ``log p_t``.
    ``score(texts, index)`` takes the class per text instead (``index`` ``(N,)`` class indices, e.g.
    :meth:`polarity_index` of each sample's control code, ``sentiment.rl_codes``).
    Texts are tokenized with the classifier's own tokenizer (truncated to ``max_length`` tokens). The
    classifier runs on ``device`` (default the CPU); logits and rewards come back on the CPU.

    Raises:
        DataError: the folder is not a sequence classifier. ConfigError: see :func:`resolve_target_label`.
    """

    def __init__(self, path: str, target: str, target_label: str | None = None, reward_type: str = "logit",
                 max_length: int = 128, batch_size: int = 64, device: torch.device | str | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
        except (OSError, ValueError) as e:
            raise DataError(f"cannot load a sequence classifier from sentiment.reward={path}: {e}") from e
        self.labels = {int(i): n for i, n in self.model.config.id2label.items()}
        self.path, self.target, self.target_label = path, target, target_label
        self.index = resolve_target_label(self.labels, target, target_label, f"the reward model {path}")
        self.label = self.labels[self.index]
        self.reward_type, self.max_length, self.batch_size = reward_type, max_length, batch_size
        for p in self.model.parameters():
            p.requires_grad_(False)
        if device is not None:
            self.model.to(device)

    @torch.no_grad()
    def logits(self, texts: list[str]) -> torch.Tensor:
        """Class logits ``(N, C)`` (float32, on the CPU)."""
        out = []
        dev = next(self.model.parameters()).device
        for s in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[s : s + self.batch_size], truncation=True, max_length=self.max_length,
                           padding=True, return_tensors="pt")
            out.append(self.model(**{k: v.to(dev) for k, v in enc.items()}).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.labels))

    def polarity_index(self, polarity: str) -> int:
        """The class index of ``polarity`` (positive/negative): the target's class as resolved at
        construction (``target_label`` honoured), the other one by its label's synonyms.

        Raises:
            ConfigError: no single label maps to ``polarity`` (see :func:`resolve_target_label`).
        """
        if polarity == self.target:
            return self.index
        return resolve_target_label(self.labels, polarity, None, f"the reward model {self.path}")

    def rewards_from_logits(self, logits: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, C)`` logits → ``(N,)`` rewards of ``reward_type`` for the target class, or for
        ``index[i]`` (``(N,)`` long) on row ``i``."""
        t = torch.full((len(logits),), self.index, dtype=torch.long) if index is None else index.long()
        own = logits.gather(1, t[:, None])[:, 0]
        if self.reward_type == "logit":
            return own
        if self.reward_type == "log_prob":
            return torch.log_softmax(logits, -1).gather(1, t[:, None])[:, 0]
        others = logits.masked_fill(torch.nn.functional.one_hot(t, logits.shape[1]).bool(), float("-inf"))
        return own - torch.logsumexp(others, -1)

    def score(self, texts: list[str], index: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards ``(N,)`` for texts (the class of ``index[i]`` for text ``i`` when given)."""
        return self.rewards_from_logits(self.logits(texts), index)


# --------------------------------------------------------------------------------------------------
# Models, prompts, sampling, log-probabilities
# --------------------------------------------------------------------------------------------------


def load_policy(path: str, device: torch.device | str | None = None):
    """``(AutoModelForCausalLM in fp32, eval mode, on ``device`` (default the CPU); tokenizer with a pad
    token)`` from a folder or a built-in name (``smollm2``). Raises DataError when it is not a causal LM."""
    from transformers import AutoModelForCausalLM

    from zerolm.finetune.classify import load_tokenizer

    folder = resolve_model_path(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load a causal LM from sentiment.policy={path}: {e}") from e
    if device is not None:
        model.to(device)
    return model.eval(), load_tokenizer(folder)


def autocast(model: torch.nn.Module, precision: str):
    """The context the RL loop runs ``model``'s forward passes in: bf16 autocast on the model's device
    type when ``precision`` is ``bf16`` (matmuls in bf16, weights stay fp32), else a context that
    changes nothing (``sentiment.precision``)."""
    dev = next(model.parameters()).device
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def stop_ids(model, tok) -> set[int]:
    """Token ids that end a response: the tokenizer's EOS and the generation config's EOS id(s)."""
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen if isinstance(gen, (list, tuple)) else [gen] if gen is not None else [])
    return ids


def code_ids(tok, code: str) -> list[int]:
    """The tokens of a control code as prefixed to a text or a prompt: ``code + "\\n"``, no special
    tokens (``sentiment.control_codes``; see :mod:`finetune.sentiment_control`)."""
    return tok(code + "\n", add_special_tokens=False)["input_ids"]


def _draw(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    """One token per row ``(B,)`` on the logits' device from ``(B, V)`` logits (temperature, then top-k,
    then nucleus top-p). The draw is made where ``generator`` lives: with a CPU generator and logits on a
    GPU the probabilities move to the CPU, so the draws of a seed are the CPU's on any accelerator and the
    generator's state stays one checkpointable CPU state."""
    logits = logits.float() / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        srt, order = torch.sort(logits, -1, descending=True)
        cum = torch.softmax(srt, -1).cumsum(-1)
        drop = cum - torch.softmax(srt, -1) > top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
    probs = torch.softmax(logits, -1)
    if generator is not None and probs.device != generator.device:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0].to(logits.device)


@torch.no_grad()
def sample_responses(model, queries: list[list[int]], max_lengths: list[int], *, pad_id: int, stops: set[int],
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator=None,
                     batch_size: int = 32, min_tokens: int = 0) -> list[list[int]]:
    """Sample a continuation of each query with the model's KV cache (queries left-padded, positions
    from the attention mask). Response ``i`` has at most ``max_lengths[i]`` tokens and ends early at a
    stop token (kept) — but not before ``min_tokens`` tokens: until then stop tokens are not drawn
    (their logits are −inf, as ``transformers``' ``min_new_tokens``), so that a policy rewarded on its
    continuation alone cannot earn the classifier's verdict on an empty text. Defaults (temperature
    1, no top-k/top-p) sample from the model itself, which the KL estimates of PPO and the report
    assume (the stop-token mask shifts them by ``−log(1 − p_stop)`` per masked step, negligible
    unless the model wants to stop)."""
    out: list[list[int]] = []
    dev = next(model.parameters()).device  # the batch is built where the model is (a GPU's or the CPU)
    for s in range(0, len(queries), batch_size):
        qs, lim = queries[s : s + batch_size], max_lengths[s : s + batch_size]
        width = max(map(len, qs))
        ids = torch.full((len(qs), width), pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros_like(ids)
        for i, q in enumerate(qs):
            ids[i, width - len(q):], mask[i, width - len(q):] = torch.tensor(q), 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        o = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        resp: list[list[int]] = [[] for _ in qs]
        done = [False] * len(qs)
        stop_list = sorted(t for t in stops if t is not None and 0 <= t < o.logits.shape[-1])
        for n in range(max(lim)):
            logits = o.logits[:, -1]
            if n < min_tokens and stop_list:
                logits = logits.clone()
                logits[:, stop_list] = float("-inf")
            nxt = _draw(logits, temperature, top_k, top_p, generator)
            for i, t in enumerate(nxt.tolist()):
                if not done[i]:
                    resp[i].append(t)
                    done[i] = t in stops or len(resp[i]) >= lim[i]
            if all(done):
                break
            mask = torch.cat([mask, torch.ones(len(qs), 1, dtype=torch.long, device=dev)], 1)
            pos = pos[:, -1:] + 1
            o = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                      past_key_values=o.past_key_values, use_cache=True)
        out += resp
    return out


def pack(queries: list[list[int]], responses: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch ``[left pad | query | response | right pad]``: ``input_ids``/``attention_mask``/
    ``position_ids`` ``(B, Q + R)``, ``response`` and ``response_mask`` ``(B, R)`` (Q, R = longest)."""
    q_w, r_w = max(map(len, queries)), max(1, max(map(len, responses)))
    ids = torch.full((len(queries), q_w + r_w), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, (q, r) in enumerate(zip(queries, responses)):
        ids[i, q_w - len(q): q_w + len(r)] = torch.tensor(q + r)
        mask[i, q_w - len(q): q_w + len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0),
            "response": ids[:, q_w:], "response_mask": mask[:, q_w:].float()}


def response_logits(model, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                    hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``(B, R, V)`` that predict each response token (positions Q−1 … Q+R−2, divided by
    ``temperature``) and, with ``hidden``, the last hidden states at those positions ``(B, R, H)``; on
    the model's device (the batch, e.g. :func:`pack`'s CPU tensors, is moved there)."""
    r_w = batch["response"].shape[1]
    dev = next(model.parameters()).device
    batch = {k: batch[k].to(dev) for k in ("input_ids", "attention_mask", "position_ids")}
    o = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
              logits_to_keep=r_w + 1, output_hidden_states=hidden, use_cache=False)
    h = o.hidden_states[-1][:, -(r_w + 1): -1] if hidden else None
    return o.logits[:, :-1].float() / temperature, h


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log π(token)`` ``(B, R)`` from logits ``(B, R, V)`` (nats), on the logits' device."""
    return torch.log_softmax(logits, -1).gather(-1, tokens.to(logits.device)[..., None]).squeeze(-1)


@torch.no_grad()
def sequence_logprobs(model, queries, responses, pad_id: int, temperature: float = 1.0,
                      batch_size: int = 32) -> list[torch.Tensor]:
    """Per-token log-probabilities of each response given its query (a list of ``(len_i,)`` CPU tensors)."""
    out = []
    for s in range(0, len(queries), batch_size):
        b = pack(queries[s : s + batch_size], responses[s : s + batch_size], pad_id)
        lp = token_logprobs(response_logits(model, b, temperature)[0], b["response"]).cpu()
        out += [lp[i, : len(r)] for i, r in enumerate(responses[s : s + batch_size])]
    return out
