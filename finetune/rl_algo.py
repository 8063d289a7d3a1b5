"""The arithmetic of one RL step for language models: rollout, advantages, the clipped update.

The algorithm of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences") as the
classic TRL ``PPOTrainer`` ran it in the gpt2-sentiment example; written here from the papers. The loop
around it (prompts, checkpoints, signals, the judge, the export) is :mod:`zerolm.finetune.ppo`; RLOO's
formulas are :mod:`zerolm.finetune.rloo`. One step is three functions, so that another RL method can
reuse the loop around them:

1. **Rollout** (:func:`rollout`): each rank takes its share of ``batch_size`` prompts, samples a
   response per prompt (``response_min_tokens``–``response_max_tokens`` tokens, pure sampling), and
   the reward model scores the decoded ``query + response`` text: ``score`` ``(B,)``; the policy's
   and the reference's log-probabilities and the value head's values are kept.
2. **Advantages** (:func:`ppo_advantages`, or :func:`rloo_step_advantages` for RLOO): rewards per token
   (Ziegler et al. eq. 2) ``r_t = −β (log π(y_t) − log π_ref(y_t))`` for each response token, plus
   ``score`` on the last one. ``π_ref`` is the frozen initial policy; β is adapted
   (:class:`AdaptiveKLController`, Ziegler et al. §2.2) toward ``target_kl`` nats/sample. GAE (Schulman
   et al. 2016) with ``gamma``, ``lam`` over the response tokens from a value head
   (:class:`PolicyWithValueHead`: a linear layer on the policy's last hidden state, zero-initialised so
   that it starts at 0 and sends no gradient into the policy until it has learnt something); advantages
   are whitened over the whole batch (all ranks); returns = advantages + values (before whitening).
3. **Updates** (:func:`ppo_update`, Schulman et al. 2017): ``ppo_epochs`` passes over the batch in
   shuffled mini-batches; clipped policy loss (``cliprange``), clipped value loss
   (``cliprange_value``, weight ``vf_coef``), Adam, gradient clipping at ``grad_clip``. Rewards are
   not normalised.

Control codes learnt by RL (``sentiment.rl_codes``; :func:`code_prompts`): each prompt is prefixed
with the positive or the negative code (half each) and its samples are scored for that code's class,
so one policy learns both directions and the code selects one; the reference sees the same coded
prompt, so the KL penalty is taken under the code. Compare Keskar et al. 2019 (CTRL: codes learnt by
supervised training) and Lu et al. 2022 (Quark: reward tokens learnt from the model's own samples).

Collectives: only :func:`masked_whiten` (one all-reduce of three sums); gradients are averaged by the
DDP wrapper the caller passes to :func:`ppo_update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zerolm.finetune import rloo
from zerolm.finetune import sentiment as S
from zerolm.pretrain import distributed


class AdaptiveKLController:
    """β of the KL penalty, adapted toward a target KL (Ziegler et al. 2019 §2.2):
    ``e = clip(KL / target − 1, −0.2, 0.2)``, ``β ← β (1 + e · n / horizon)`` after ``n`` samples.
    With ``adaptive=False`` β stays fixed."""

    def __init__(self, init: float, target: float, horizon: int, adaptive: bool = True) -> None:
        self.value, self.target, self.horizon, self.adaptive = init, target, horizon, adaptive

    def update(self, kl: float, n_samples: int) -> float:
        """``kl``: mean KL of the batch, nats/sample. Returns the new β."""
        if self.adaptive:
            err = float(np.clip(kl / self.target - 1, -0.2, 0.2))
            self.value *= 1 + err * n_samples / self.horizon
        return self.value


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (0-dim)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x − mean) / sqrt(var + eps)`` with mean and (population) variance over the masked entries of
    all ranks; masked-out entries become 0."""
    stats = distributed.all_reduce_tensor(torch.stack([(x * mask).sum(), (x * x * mask).sum(), mask.sum()]).double())
    mean = stats[0] / stats[2].clamp(min=1)
    var = (stats[1] / stats[2].clamp(min=1) - mean ** 2).clamp(min=0)
    return ((x - mean.float()) * torch.rsqrt(var.float() + eps)) * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded response tokens.

    Args:
        rewards, values, mask: ``(B, R)``; ``mask`` is 1 on each response's tokens (a prefix of the row).

    Returns:
        ``(advantages, returns)`` ``(B, R)``: ``δ_t = r_t + γ V_{t+1} − V_t`` (``V`` = 0 after the last
        token), ``A_t = δ_t + γ λ A_{t+1}``, returns ``= A + V``; zero where ``mask`` is 0.
    """
    rewards, values = rewards * mask, values * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        nxt = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        last = rewards[:, t] + gamma * nxt - values[:, t] + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def ppo_losses(logp: torch.Tensor, values: torch.Tensor, old_logp: torch.Tensor, old_values: torch.Tensor,
               advantages: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange: float,
               cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Clipped PPO losses (Schulman et al. 2017), masked means over response tokens ``(B, R)``.

    Policy: ``max(−A ρ, −A clip(ρ, 1 ± ε))`` with ``ρ = exp(log π − log π_old)``. Value:
    ``½ max((V − R)², (V_clip − R)²)``, ``V_clip = V_old + clip(V − V_old, ± ε_v)``.

    Returns:
        ``(policy_loss, value_loss, stats)`` with ``clipfrac`` (tokens whose clipped term was taken) and
        ``approx_kl`` (``½ E[(log π − log π_old)²]``, nats/token).
    """
    ratio = torch.exp(logp - old_logp)
    pg1, pg2 = -advantages * ratio, -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    policy_loss = masked_mean(torch.maximum(pg1, pg2), mask)
    v_clip = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    value_loss = 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2), mask)
    with torch.no_grad():
        stats = {"clipfrac": float(masked_mean((pg2 > pg1).float(), mask)),
                 "approx_kl": float(0.5 * masked_mean((logp - old_logp) ** 2, mask))}
    return policy_loss, value_loss, stats


class PolicyWithValueHead(torch.nn.Module):
    """A causal LM plus a scalar value head on its last hidden state (the module DDP wraps).

    ``forward(batch)`` on a :func:`finetune.sentiment.pack` batch (any device: it is moved to the
    model's) returns ``(logits (B, R, V), values (B, R))`` at the positions that predict the response
    tokens, on the model's device.
    """

    def __init__(self, lm: torch.nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        self.lm, self.temperature = lm, temperature
        hidden = lm.config.get_text_config().hidden_size
        self.v_head = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.v_head.weight)
        torch.nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids, attention_mask, position_ids, response, response_mask):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "response": response}
        logits, h = S.response_logits(self.lm, batch, self.temperature, hidden=True)
        return logits, self.v_head(h.float()).squeeze(-1).float()  # fp32 also under bf16 autocast


def freeze_lower_layers(lm: torch.nn.Module, trainable_layers: int | None) -> int:
    """Leave only the top ``trainable_layers`` transformer blocks and the normalisation layers after
    them trainable (embeddings, LM head and lower blocks frozen; TRL's ``num_shared_layers`` idea):
    backward stops at the lowest trainable block, and the optimizer state and gradient all-reduce
    shrink to the trained part. ``None`` trains everything. Returns the number of trainable parameters.

    Raises:
        ConfigError: no ``ModuleList`` of ``num_hidden_layers`` blocks is found in the model.
    """
    from zerolm.errors import ConfigError

    if trainable_layers is None:
        return sum(p.numel() for p in lm.parameters() if p.requires_grad)
    n = lm.config.get_text_config().num_hidden_layers
    blocks = next((m for m in lm.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n), None)
    if blocks is None:
        raise ConfigError(f"sentiment.trainable_layers: no list of {n} transformer blocks in {type(lm).__name__}")
    lm.requires_grad_(False)
    for block in list(blocks)[max(0, n - trainable_layers):]:
        block.requires_grad_(True)
    inside = {id(m) for m in blocks.modules()}
    for m in lm.modules():
        if id(m) not in inside and "norm" in type(m).__name__.lower():
            m.requires_grad_(True)  # the final norm (LlamaRMSNorm, GPT-2's ln_f LayerNorm)
    return sum(p.numel() for p in lm.parameters() if p.requires_grad)

@dataclass
class Rollout:
    """One step's samples on this rank: ``B`` prompts, responses right-padded to ``R`` tokens.

    Attributes:
        queries: the prompts (token ids). batch: :func:`finetune.sentiment.pack` of prompts and
            responses (its ``response_mask`` ``(B, R)`` is 1 on response tokens). scores: ``(B,)``
            reward-model scores. logp, ref_logp: ``(B, R)`` log-probabilities of the response tokens
            under the sampling policy and the frozen reference (nats). values: ``(B, R)`` the value
            head's estimates at sampling time. All on the CPU, whatever device the models run on: the
            advantages are a few ``(B, R)`` operations, and the checkpoint and the collectives take
            CPU tensors.
    """

    queries: list[list[int]]
    batch: dict[str, torch.Tensor]
    scores: torch.Tensor
    logp: torch.Tensor
    ref_logp: torch.Tensor
    values: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        return self.batch["response_mask"]


@torch.no_grad()
def rollout(model: PolicyWithValueHead, ref: torch.nn.Module, reward: Any, tok: Any, stops: set[int],
            queries: list[list[int]], lengths: list[int], sc: Any, generator: torch.Generator,
            targets: torch.Tensor | None = None) -> Rollout:
    """Sample a response to each prompt (at most ``lengths[i]`` tokens, stopping at ``stops``; sampling
    settings of ``sc``, draws from ``generator``), score ``prompt + response`` (or the response alone,
    ``sc.reward_text=continuation``) with ``reward`` (for the class ``targets[i]`` of each sample when
    given, ``(B,)``: :func:`code_prompts`) and keep the policy's, the reference's and the value head's
    view of the responses. RLOO passes each prompt ``rloo_k`` times, adjacent. Sampling and the
    log-prob passes run under ``sc.precision`` (:func:`finetune.sentiment.autocast`), the reward in fp32."""
    with S.autocast(model, sc.precision):
        responses = S.sample_responses(model.lm, queries, lengths, pad_id=tok.pad_token_id, stops=stops,
                                       temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p, generator=generator,
                                       min_tokens=sc.response_min_tokens)
    if sc.reward_text == "continuation":
        texts = [tok.decode(r, skip_special_tokens=True) for r in responses]
    else:
        texts = [tok.decode(q + r, skip_special_tokens=True) for q, r in zip(queries, responses)]
    scores = reward.score(texts, targets)
    batch = S.pack(queries, responses, tok.pad_token_id)
    with S.autocast(model, sc.precision):
        logits, values = model(**batch)
        logp = S.token_logprobs(logits, batch["response"]).cpu()
        del logits
        ref_logp = S.token_logprobs(S.response_logits(ref, batch, sc.temperature)[0], batch["response"]).cpu()
    return Rollout(queries, batch, scores, logp, ref_logp, values.cpu())


def code_prompts(queries: list[list[int]], step: int, codes: dict[str, list[int]]
                 ) -> tuple[list[list[int]], list[str]]:
    """Control codes learnt by RL (``sentiment.rl_codes``): prefix this rank's prompts of step ``step``
    with the positive and the negative code in turn (prompt ``j`` gets positive when ``j + step`` is
    even), so each rank sees both codes every step (or every other step with one prompt per rank).

    Args:
        queries: this rank's prompts (token ids). step: the PPO steps done before this one.
        codes: ``{"positive": ids, "negative": ids}`` (:func:`finetune.sentiment.code_ids`).

    Returns:
        ``(code + prompt per prompt, the polarity of each prompt's code)``.
    """
    pols = [("positive", "negative")[(j + step) % 2] for j in range(len(queries))]
    return [codes[p] + list(q) for p, q in zip(pols, queries)], pols


@torch.no_grad()
def ppo_advantages(ro: Rollout, kl_coef: float, gamma: float, lam: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token rewards (score on the last token, ``−β·KL`` on each; Ziegler et al. eq. 2) and GAE.

    Returns:
        ``(kl_tokens, rewards, advantages, returns)``, each ``(B, R)``: ``log π − log π_ref`` per
        response token, the rewards, the advantages whitened over every rank's tokens
        (:func:`masked_whiten`, a collective) and the returns (before whitening).
    """
    mask = ro.mask
    kl_tok = (ro.logp - ro.ref_logp) * mask
    rewards = -kl_coef * kl_tok
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(ro.queries)), last] += ro.scores
    adv, returns = gae(rewards, ro.values, mask, gamma, lam)
    return kl_tok, rewards, masked_whiten(adv, mask), returns


@torch.no_grad()
def rloo_step_advantages(ro: Rollout, kl_coef: float, k: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """RLOO's advantages (:mod:`finetune.rloo`) for a rollout of ``k`` adjacent samples per prompt.

    Returns:
        ``(kl_tokens, rewards, advantages, returns)`` shaped like :func:`ppo_advantages`' ``(N, R)``:
        ``log π − log π_ref`` per response token; the sequence reward ``score − β Σ_t KL_t`` on each
        sample's last token (0 elsewhere, so that row sums are sequence rewards); the leave-one-out
        advantage on every response token; returns all 0 (no value head is trained).
    """
    mask = ro.mask
    kl_tok = (ro.logp - ro.ref_logp) * mask
    seq = rloo.sequence_rewards(ro.scores, kl_tok, kl_coef)
    adv = rloo.leave_one_out_advantages(seq.view(-1, k)).reshape(-1)
    rewards = torch.zeros_like(kl_tok)
    rewards[torch.arange(len(seq)), (mask.sum(1).long() - 1).clamp(min=0)] = seq
    return kl_tok, rewards, rloo.token_advantages(adv, mask), torch.zeros_like(kl_tok)


def ppo_update(ddp: torch.nn.Module, model: PolicyWithValueHead, opt: torch.optim.Optimizer, ro: Rollout,
               advantages: torch.Tensor, returns: torch.Tensor, sc: Any, mini: int,
               shuffle: torch.Generator) -> dict[str, float]:
    """``sc.ppo_epochs`` passes over the rollout in mini-batches of ``mini`` rows (this rank's share
    of ``mini_batch_size``; the order drawn from ``shuffle``), one Adam step each on the clipped
    losses (:func:`ppo_losses`; forward passes under ``sc.precision``). ``ddp`` is ``model`` or its DDP wrapper (gradients averaged over
    the ranks).

    Returns:
        Means over the mini-batches: ``policy_loss``, ``value_loss``, ``clipfrac``, ``approx_kl``,
        ``entropy`` (nats/token of the updated policy's distribution).
    """
    acc: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "clipfrac", "approx_kl", "entropy")}
    mask = ro.mask
    vf_coef = 0.0 if sc.method == "rloo" else sc.vf_coef  # RLOO trains no value head
    for _ in range(sc.ppo_epochs):
        perm = torch.randperm(len(ro.queries), generator=shuffle)
        for s in range(0, len(ro.queries), mini):
            i = perm[s : s + mini]
            sub = {k: v[i] for k, v in ro.batch.items()}
            with S.autocast(model, sc.precision):  # the forward pass; backward follows autocast's casts
                logits, values = ddp(**sub)
            dev = logits.device  # the model's: the rollout's CPU tensors join it there
            logp = S.token_logprobs(logits, sub["response"])
            m = mask[i].to(dev)
            pl, vl, st = ppo_losses(logp, values, ro.logp[i].to(dev), ro.values[i].to(dev), advantages[i].to(dev),
                                    returns[i].to(dev), m, sc.cliprange, sc.cliprange_value)
            opt.zero_grad(set_to_none=True)
            (pl + vf_coef * vl).backward()
            if sc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), sc.grad_clip)
            opt.step()
            with torch.no_grad():
                lp = torch.log_softmax(logits.detach(), -1)
                st["entropy"] = float(masked_mean(-(lp.exp() * lp).sum(-1), m))
            for k, v in (("policy_loss", pl.item()), ("value_loss", vl.item()), *st.items()):
                acc[k].append(v)
            del logits, values, lp
    return {k: float(np.mean(v)) for k, v in acc.items()}
