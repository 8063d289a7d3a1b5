"""A compact PPO for language models: RL from a reward classifier with a per-token KL penalty.

The algorithm of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences") as the
classic TRL ``PPOTrainer`` ran it in the gpt2-sentiment example; written here from the papers. One
step is three functions, so that another RL method can reuse the loop around them:

1. **Rollout** (:func:`rollout`): each rank takes its share of ``batch_size`` prompts, samples a
   response per prompt (``response_min_tokens``–``response_max_tokens`` tokens, pure sampling), and
   the reward model scores the decoded ``query + response`` text: ``score`` ``(B,)``; the policy's
   and the reference's log-probabilities and the value head's values are kept.
2. **Advantages** (:func:`ppo_advantages`): rewards per token (Ziegler et al. eq. 2)
   ``r_t = −β (log π(y_t) − log π_ref(y_t))`` for each response token, plus ``score`` on the last
   one. ``π_ref`` is the frozen initial policy; β is adapted (:class:`AdaptiveKLController`,
   Ziegler et al. §2.2) toward ``target_kl`` nats/sample. GAE (Schulman et al. 2016) with ``gamma``,
   ``lam`` over the response tokens from a value head (a linear layer on the policy's last hidden
   state, zero-initialised so that it starts at 0 and sends no gradient into the policy until it has
   learnt something); advantages are whitened over the whole batch (all ranks); returns =
   advantages + values (before whitening).
3. **Updates** (:func:`ppo_update`, Schulman et al. 2017): ``ppo_epochs`` passes over the batch in
   shuffled mini-batches; clipped policy loss (``cliprange``), clipped value loss
   (``cliprange_value``, weight ``vf_coef``), Adam, gradient clipping at ``grad_clip``. Rewards are
   not normalised.

Control codes learnt by RL (``sentiment.rl_codes``; :func:`code_prompts`): each prompt is prefixed
with the positive or the negative code (half each) and its samples are scored for that code's class,
so one policy learns both directions and the code selects one; the reference sees the same coded
prompt, so the KL penalty is taken under the code. Compare Keskar et al. 2019 (CTRL: codes learnt by
supervised training) and Lu et al. 2022 (Quark: reward tokens learnt from the model's own samples).

Distribution: the policy + value head run under ``torch.nn.parallel.DistributedDataParallel``
(gloo on CPU, NCCL on GPUs) so that every rank applies the same averaged gradients; rank 0 logs
``ppo/*`` metrics through :class:`pretrain.tracking.Tracker` (W&B + ``metrics.jsonl``) and exports the
policy (without the value head) at the end.

Checkpoints, resume and preemption: :mod:`zerolm.finetune.rl_checkpoint` (what a step carries,
:class:`~zerolm.finetune.rl_checkpoint.PPOState`, and how it is saved and resumed). SIGTERM/SIGUSR1
finish the current step, checkpoint and end with status ``preempted`` (the ranks agree through the
step's one all-reduce); ``zerolm launch slurm --entry finetune-sentiment`` then requeues the job.
``sentiment.max_minutes`` counts the run's time across resumes (status ``time_limit``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from zerolm.finetune import rloo
from zerolm.finetune import sentiment as S
from zerolm.finetune.sentiment_prompts import prompt_pool
from zerolm.finetune.rl_checkpoint import PPOState, ppo_signature, resume_checkpoint, save_checkpoint
from zerolm.finetune.rl_judge import JUDGE_FILE, JudgeState, hold_out_judge_prompts, judge_rate
from zerolm.finetune.sentiment_export import export_meta, export_policy
from zerolm.config import ZeroLMConfig
from zerolm.fsutil import write_json
from zerolm.pretrain import checkpoint as ckpt
from zerolm.pretrain import distributed
from zerolm.pretrain.progress import progress_bar

log = logging.getLogger(__name__)


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

    ``forward(batch)`` on a :func:`finetune.sentiment.pack` batch returns ``(logits (B, R, V),
    values (B, R))`` at the positions that predict the response tokens.
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
        return logits, self.v_head(h.float()).squeeze(-1)


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


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 of all parameters' bytes in order (equal digests = identical weights)."""
    h = hashlib.sha256()
    for p in module.parameters():
        h.update(p.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """``values`` averaged over the ranks in one all-reduce: a step's metrics together with its
    ``stop`` (a stop signal arrived) and ``late`` (``max_minutes`` passed) flags, so that every rank
    takes the same decision (a flag's mean is > 0 when any rank raised it)."""
    keys = sorted(values)
    t = distributed.all_reduce_tensor(torch.tensor([values[k] for k in keys], dtype=torch.float64))
    if dist.is_initialized():
        t = t / dist.get_world_size()
    return dict(zip(keys, t.tolist()))


class PromptStream:
    """The global prompt order, identical on every rank: a seeded permutation of the pool per epoch;
    step ``s`` takes the next ``batch_size`` prompts and a response length for each; rank ``r`` of
    ``w`` keeps every ``w``-th. :meth:`state_dict`/:meth:`load_state_dict` carry its position
    across a resume."""

    def __init__(self, pool: list[list[int]], batch_size: int, lo: int, hi: int, seed: int, rank: int, world: int) -> None:
        self.pool, self.batch, self.lo, self.hi = pool, batch_size, lo, hi
        self.rng, self.rank, self.world = np.random.default_rng(seed), rank, world
        self.order: list[int] = []
        h = hashlib.sha256()
        for q in pool:
            h.update(np.asarray([len(q), *q], dtype=np.int64).tobytes())
        self.pool_sha256 = h.hexdigest()  # the pool a saved position indexes into

    def next(self) -> tuple[list[list[int]], list[int]]:
        while len(self.order) < self.batch:
            self.order += self.rng.permutation(len(self.pool)).tolist()
        idx, self.order = self.order[: self.batch], self.order[self.batch:]
        lengths = self.rng.integers(self.lo, self.hi + 1, size=self.batch).tolist()
        mine = range(self.rank, self.batch, self.world)
        return [self.pool[idx[i]] for i in mine], [lengths[i] for i in mine]

    def state_dict(self) -> dict[str, Any]:
        """The position: the generator's state, the drawn prompt indices not yet used, and the pool's
        size and SHA-256 (of every prompt's length and token ids)."""
        return {"rng": self.rng.bit_generator.state, "order": list(self.order), "pool_size": len(self.pool),
                "pool_sha256": self.pool_sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`.

        Raises:
            TrainingError: the pool is not the saved stream's (the prompts were built differently,
                e.g. by another zerolm version or changed data: the saved indices would name other
                prompts).
        """
        from zerolm.errors import TrainingError

        if (state["pool_size"], state["pool_sha256"]) != (len(self.pool), self.pool_sha256):
            raise TrainingError(f"this run's prompt pool ({len(self.pool)} prompts, sha256 {self.pool_sha256[:12]}) is not "
                                f"the checkpoint's ({state['pool_size']} prompts, {state['pool_sha256'][:12]}): the "
                                "prompts are built differently (another zerolm version or changed data); resume with "
                                "the version and data that wrote the checkpoint, or choose another train.run_dir")
        self.rng.bit_generator.state = state["rng"]
        self.order = list(state["order"])


# -- one step: rollout, advantages, update ---------------------------------------------------------
@dataclass
class Rollout:
    """One step's samples on this rank: ``B`` prompts, responses right-padded to ``R`` tokens.

    Attributes:
        queries: the prompts (token ids). batch: :func:`finetune.sentiment.pack` of prompts and
            responses (its ``response_mask`` ``(B, R)`` is 1 on response tokens). scores: ``(B,)``
            reward-model scores. logp, ref_logp: ``(B, R)`` log-probabilities of the response tokens
            under the sampling policy and the frozen reference (nats). values: ``(B, R)`` the value
            head's estimates at sampling time.
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
    view of the responses. RLOO passes each prompt ``rloo_k`` times, adjacent."""
    responses = S.sample_responses(model.lm, queries, lengths, pad_id=tok.pad_token_id, stops=stops,
                                   temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p, generator=generator,
                                   min_tokens=sc.response_min_tokens)
    if sc.reward_text == "continuation":
        texts = [tok.decode(r, skip_special_tokens=True) for r in responses]
    else:
        texts = [tok.decode(q + r, skip_special_tokens=True) for q, r in zip(queries, responses)]
    scores = reward.score(texts, targets)
    batch = S.pack(queries, responses, tok.pad_token_id)
    logits, values = model(**batch)
    logp = S.token_logprobs(logits, batch["response"])
    del logits
    ref_logp = S.token_logprobs(S.response_logits(ref, batch, sc.temperature)[0], batch["response"])
    return Rollout(queries, batch, scores, logp, ref_logp, values)


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
    losses (:func:`ppo_losses`). ``ddp`` is ``model`` or its DDP wrapper (gradients averaged over
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
            logits, values = ddp(**sub)
            logp = S.token_logprobs(logits, sub["response"])
            pl, vl, st = ppo_losses(logp, values, ro.logp[i], ro.values[i], advantages[i], returns[i],
                                    mask[i], sc.cliprange, sc.cliprange_value)
            opt.zero_grad(set_to_none=True)
            (pl + vf_coef * vl).backward()
            if sc.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), sc.grad_clip)
            opt.step()
            with torch.no_grad():
                lp = torch.log_softmax(logits.detach(), -1)
                st["entropy"] = float(masked_mean(-(lp.exp() * lp).sum(-1), mask[i]))
            for k, v in (("policy_loss", float(pl)), ("value_loss", float(vl)), *st.items()):
                acc[k].append(v)
            del logits, values, lp
    return {k: float(np.mean(v)) for k, v in acc.items()}


# -- the job ---------------------------------------------------------------------------------------
@dataclass
class RLJob:
    """What stays fixed through one PPO/RLOO run on this rank (built by :func:`build_job`).

    Attributes:
        sc: the ``sentiment`` config. env: the distributed environment. lm, tok: the policy's causal-LM
            and tokenizer. ref: the frozen reference. model: ``lm`` with its value head; ddp: ``model``
            or its DDP wrapper. reward: the :class:`finetune.sentiment.RewardModel`. stops: the ids
            that end a response. codes: ``{polarity: code ids}`` with ``rl_codes`` (else None);
            code_class: ``{polarity: the reward's class index}`` (else None). group: samples per
            prompt (``rloo_k`` for RLOO, 1 for PPO). mini: rows of this rank per update.
            trained: ``{name: parameter}`` the optimizer updates. judge_ids, judge_lengths: the
            held-out judge's prompts and response lengths (empty without ``judge_every``).
            pool_size: prompts in the RL pool. trainable_lm: parameters of ``lm`` that are trained.
    """

    sc: Any
    env: Any
    lm: torch.nn.Module
    tok: Any
    ref: torch.nn.Module
    model: PolicyWithValueHead
    ddp: torch.nn.Module
    reward: Any
    stops: set[int]
    codes: dict[str, list[int]] | None
    code_class: dict[str, int] | None
    group: int
    mini: int
    trained: dict[str, torch.nn.Parameter]
    judge_ids: list[list[int]]
    judge_lengths: list[int]
    pool_size: int
    trainable_lm: int


def build_job(cfg: ZeroLMConfig, env: Any) -> tuple[RLJob, PPOState]:
    """Load the policy, its reference and the reward, build the prompt pool (and the judge's held-out
    prompts), freeze the lower layers and make a fresh :class:`PPOState` (step 0).

    Raises:
        DataError: no prompt survives the length filter, or unreadable models/data.
    """
    from zerolm.errors import DataError

    sc = cfg.sentiment
    torch.manual_seed(sc.seed)  # the same value head on every rank (DDP also broadcasts rank 0's)
    lm, tok = S.load_policy(sc.policy)
    ref, _ = S.load_policy(sc.policy)
    for p in ref.parameters():
        p.requires_grad_(False)
    reward = S.RewardModel(sc.reward, sc.target, sc.target_label, sc.reward_type)
    codes = {p: S.code_ids(tok, c) for p, c in sc.control_codes.items()} if sc.rl_codes else None
    code_class = {p: reward.polarity_index(p) for p in ("positive", "negative")} if sc.rl_codes else None
    pool_prompts = prompt_pool(sc, tok, "validation", None, np.random.default_rng(sc.seed))
    if not pool_prompts:
        raise DataError(f"{sc.data}: no validation row has {sc.prompt_min_tokens}+ tokens to make a prompt")
    judge_ids: list[list[int]] = []
    if sc.judge_every is not None:  # held-out prompts for the judge: none of their source texts is trained on
        pool_prompts, held = hold_out_judge_prompts(pool_prompts, sc.judge_prompts)
        judge_ids = [p.ids for p in held]
    judge_lengths = np.random.default_rng(sc.seed + 17).integers(
        sc.response_min_tokens, sc.response_max_tokens + 1, size=len(judge_ids)).tolist()
    pool = [p.ids for p in pool_prompts]
    trainable = freeze_lower_layers(lm, sc.trainable_layers)
    model = PolicyWithValueHead(lm, sc.temperature).eval()  # eval: no dropout, so ratios start at exactly 1
    group = sc.rloo_k if sc.method == "rloo" else 1
    if group > 1:
        model.v_head.requires_grad_(False)  # RLOO's baseline is the group's: no value head to train
    st = PPOState(
        model, torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=sc.lr),
        AdaptiveKLController(sc.init_kl_coef, sc.target_kl, sc.kl_horizon, sc.adaptive_kl),
        torch.Generator().manual_seed(sc.seed * 1000 + env.rank),
        torch.Generator().manual_seed(sc.seed * 1000 + 500 + env.rank),
        PromptStream(pool, sc.batch_size, sc.response_min_tokens, sc.response_max_tokens, sc.seed + 1,
                     env.rank, env.world_size), judge=JudgeState() if judge_ids else None)
    job = RLJob(sc, env, lm, tok, ref, model, model, reward, S.stop_ids(lm, tok), codes, code_class, group,
                sc.mini_batch_size // env.world_size * group,
                {n: p for n, p in model.named_parameters() if p.requires_grad}, judge_ids, judge_lengths, len(pool), trainable)
    return job, st


def rl_step(job: RLJob, st: PPOState) -> tuple[dict[str, float], float]:
    """One step on this rank: the next prompts (with their codes under ``rl_codes``; each ``group``
    times for RLOO) → :func:`rollout` → advantages (:func:`rloo_step_advantages` or
    :func:`ppo_advantages`) → :func:`ppo_update`. Keeps the judge's best policy before the update
    changes it.

    Returns:
        ``(metrics, rollout_seconds)``: this rank's ``mean_reward``, ``reward_std``, ``kl`` (nats/sample),
        ``mean_non_score_reward``, ``response_tokens``, ``returns``, ``tokens`` (prompt + response),
        the update's means (:func:`ppo_update`) and, with ``rl_codes``, ``reward_{polarity}_code``.
    """
    sc, group = job.sc, job.group
    t0 = time.perf_counter()
    queries, lengths = st.stream.next()
    targets = pols = None
    if job.codes:  # control codes learnt by RL: each prompt rewarded for its own code's sentiment
        queries, pols = code_prompts(queries, st.step, job.codes)
        targets = torch.tensor([job.code_class[p] for p in pols for _ in range(group)])
    if group > 1:  # each prompt k times, adjacent, with the same length budget
        queries = [q for q in queries for _ in range(group)]
        lengths = [n for n in lengths for _ in range(group)]
    ro = rollout(job.model, job.ref, job.reward, job.tok, job.stops, queries, lengths, sc, st.gen, targets)
    if group > 1:
        kl_tok, rewards, adv, returns = rloo_step_advantages(ro, st.kl_ctl.value, group)
    else:
        kl_tok, rewards, adv, returns = ppo_advantages(ro, st.kl_ctl.value, sc.gamma, sc.lam)
    t_roll = time.perf_counter() - t0
    if st.judge is not None:
        st.judge.before_update(job.trained, st.step)  # the judge's best policy is about to change: keep it
    stats = ppo_update(job.ddp, job.model, st.opt, ro, adv, returns, sc, job.mini, st.shuffle)
    scores, mask = ro.scores, ro.mask
    local = {"mean_reward": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
             "kl": float(kl_tok.sum(1).mean()), "mean_non_score_reward": float(rewards.sum(1).mean() - scores.mean()),
             "response_tokens": float(mask.sum(1).mean()), "returns": float(masked_mean(returns, mask)),
             "tokens": float(ro.batch["attention_mask"].sum()), **stats}
    if pols is not None and len(pols) > 1:  # each rank holds both codes this step: the reward of each code's samples
        for p in ("positive", "negative"):
            local[f"reward_{p}_code"] = float(scores[targets == job.code_class[p]].mean())
    return local, t_roll


def judge_now(job: RLJob, st: PPOState, run_dir: Path) -> dict[str, float]:
    """The held-out judge on the policy as it is now (every rank; one all-reduce): records the
    evaluation in ``st.judge`` and, on rank 0, rewrites ``RUN_DIR/judge.json``.

    Returns:
        ``{"judge/target_rate": this evaluation's rate, "judge/best_rate": the best so far}``.
    """
    sc = job.sc
    hits, count, cont = judge_rate(job.model.lm, job.tok, job.judge_ids, job.judge_lengths, sc, job.stops, job.env)
    best = st.judge.record(st.step, hits, count)
    st.judge.history[-1]["continuations_rank0"] = cont if job.env.is_main else []
    if job.env.is_main:
        write_json(run_dir / JUDGE_FILE, {"target": sc.target, "judge": "VADER on the continuation alone",
                                          "prompts": count, "every": sc.judge_every,
                                          "best_step": st.judge.best_step, "best_rate": st.judge.best_rate,
                                          "history": st.judge.history})
        log.info("held-out judge at step %d: VADER %s rate %.3f (%d/%d)%s", st.step, sc.target, hits / max(count, 1),
                 hits, count, " (best so far)" if best else f" (best {st.judge.best_rate:.3f} at step {st.judge.best_step})")
    return {"judge/target_rate": hits / max(count, 1), "judge/best_rate": st.judge.best_rate}


def finish_run(job: RLJob, st: PPOState, cfg: ZeroLMConfig, status: str, resumed: str | None, seconds: float,
               tracker: Any) -> dict[str, Any]:
    """End the run: gather the ranks' weight digests, put the held-out judge's best policy back (when
    it is not the last), close the tracker and export on rank 0.

    Returns:
        :func:`train_ppo`'s result.
    """
    sc, env = job.sc, job.env
    digests: list[Any] = [None] * env.world_size
    mine = weights_digest(job.model)
    if dist.is_initialized() and env.world_size > 1:
        dist.all_gather_object(digests, mine)
    else:
        digests = [mine]

    def window(rows):
        return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}

    result: dict[str, Any] = {"method": sc.method, "status": status, "steps": st.step, "seconds": seconds,
                              "resumed_from": resumed, "first": window(st.history[:5]),
                              "final": window(st.history[-5:]), "rank_weight_sha256": digests}
    judge_meta = None
    if st.judge is not None and st.judge.best_step >= 0:
        judge_meta = {"every": sc.judge_every, "prompts": st.judge.history[-1]["count"], "patience": sc.judge_patience,
                      "best_step": st.judge.best_step, "best_rate": st.judge.best_rate,
                      "history": [{k: h[k] for k in ("step", "rate")} for h in st.judge.history]}
        result["judge"] = judge_meta
        if st.judge.best_params is not None:  # the export is the judge's best policy, not the last one
            with torch.no_grad():
                for n, t in st.judge.best_params.items():
                    job.trained[n].copy_(t)
            log.info("exporting the policy of step %d (held-out judge %.3f), not step %d's", st.judge.best_step,
                     st.judge.best_rate, st.step)
    if tracker:
        tracker.summary({k: v for k, v in result["final"].items()} | {"ppo/steps": st.step, "ppo/seconds": seconds})
        tracker.finish()
    if env.is_main:
        out = export_policy(job.lm, job.tok, sc.export_dir or Path(cfg.train.run_dir) / "hf", export_meta(
            cfg, sc.method, job.reward.label, steps=st.step, status=status, seconds=seconds, final_metrics=result["final"],
            first_metrics=result["first"], ppo={k: getattr(sc, k) for k in (
                "batch_size", "mini_batch_size", "ppo_epochs", "lr", "init_kl_coef", "adaptive_kl", "target_kl",
                "kl_horizon", "cliprange", "cliprange_value", "vf_coef", "gamma", "lam", "grad_clip", "temperature",
                "top_k", "top_p", "prompt_min_tokens", "prompt_max_tokens", "response_min_tokens",
                "response_max_tokens", "trainable_layers", "rloo_k", "reward_text", "reward_type")}, world_size=env.world_size,
            **({"rl_codes": True, "control_codes": dict(sc.control_codes)} if sc.rl_codes else {}),
            **({"judge": judge_meta} if judge_meta else {})))
        result["export_dir"] = str(out)
    return result


def train_ppo(cfg: ZeroLMConfig, reward_label: str, progress: bool = False) -> dict[str, Any]:
    """Run PPO as this process's part of the job (1 process, or each rank under torchrun/srun), then
    export the policy on rank 0 (:func:`finetune.sentiment_export.export_policy`). ``progress`` draws
    a bar of the PPO steps with the latest mean reward and KL (:func:`zerolm.pretrain.progress.progress_bar`:
    rank 0, stderr a terminal).

    A run directory with checkpoints is resumed (:func:`resume_checkpoint`); one whose run is complete
    (``sentiment.steps`` reached) is only exported again. SIGTERM/SIGUSR1 end the run after the
    current step with a checkpoint (status ``preempted``); ``max_minutes`` (counted across resumes)
    with status ``time_limit``.

    Returns:
        ``status`` (``completed``, ``preempted``, ``time_limit``), ``steps``, ``seconds`` (the run's,
        across resumes), ``resumed_from`` (a tag or None), ``first``/``final`` (mean metrics of the
        first/last five steps of the run), ``rank_weight_sha256`` (one digest per rank at the end:
        equal when the ranks stayed in sync); rank 0 also ``export_dir``.

    Raises:
        ConfigError: ``batch_size``/``mini_batch_size`` not divisible by the number of ranks.
        DataError: no prompt survives the length filter, or unreadable models/data.
        TrainingError: the run directory is in use, or its checkpoints cannot be continued by this
            run (before any training step; the message names what differs).
    """
    from zerolm.pretrain.tracking import Tracker, run_config
    from zerolm.errors import ConfigError

    sc = cfg.sentiment
    env = distributed.detect()
    if sc.batch_size % env.world_size or sc.mini_batch_size % env.world_size:
        raise ConfigError(f"sentiment.batch_size={sc.batch_size} and mini_batch_size={sc.mini_batch_size} must be "
                          f"divisible by the {env.world_size} ranks")
    distributed.init(env)
    handlers: dict[int, Any] = {}
    lock = None
    try:
        t_start = time.perf_counter()
        run_dir = Path(cfg.train.run_dir)
        root = run_dir / "checkpoints"
        lock = distributed.lock_run_dir(run_dir, env)
        job, st = build_job(cfg, env)
        signature = ppo_signature(sc, env.world_size, job.model)
        # an intact checkpoint this run cannot continue stops it here: nothing in the run directory changed
        resumed = resume_checkpoint(st, root, signature, env, sc.lr)
        line, written = ckpt.lineage(root, resumed), set()

        def elapsed() -> float:
            return st.seconds_before + time.perf_counter() - t_start

        if env.world_size > 1:
            job.ddp = torch.nn.parallel.DistributedDataParallel(job.model)
        tracker = None
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            tracker = Tracker(cfg.tracking, run_dir, run_config(cfg, f"sentiment_{sc.method}"), st.wandb_run_id,
                              resume_step=st.step if resumed else None)
            st.wandb_run_id = tracker.run_id
            log.info("PPO: %s (%.1fM parameters, %.1fM trained) → %s (%s) of %s | %d prompts | %d/step = %d ranks × %d | "
                     "%d epochs × mini-batch %d | lr %.2e | β0 %.2f → KL %.1f%s", sc.policy,
                     sum(p.numel() for p in job.lm.parameters()) / 1e6,
                     job.trainable_lm / 1e6,
                     f"both codes {sc.control_codes}" if sc.rl_codes else sc.target,
                     "each code's label" if sc.rl_codes else job.reward.label, sc.reward, job.pool_size, sc.batch_size,
                     env.world_size, sc.batch_size // env.world_size, sc.ppo_epochs, sc.mini_batch_size, sc.lr,
                     sc.init_kl_coef, sc.target_kl, f" | resumed at step {st.step}" if resumed else "")

        stop_signal = [0]

        def on_signal(signum, _frame) -> None:
            stop_signal[0] = signum
            log.warning("received %s: will checkpoint after this step and exit", signal.Signals(signum).name)

        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                handlers[sig] = signal.signal(sig, on_signal)
        limit = 60 * sc.max_minutes if sc.max_minutes is not None else None
        status = "completed"
        if limit is not None and st.step < sc.steps and st.seconds_before >= limit:  # the same on every rank
            status = "time_limit"
            log.warning("not training: the run already took %.0f s, sentiment.max_minutes=%s", st.seconds_before, sc.max_minutes)

        def judge_patience_spent() -> bool:
            return bool(st.judge and sc.judge_patience is not None and st.judge.since_best >= sc.judge_patience)

        if st.judge is not None and not st.judge.history:  # the untuned policy: the bar RL has to clear
            m0 = judge_now(job, st, run_dir)
            if tracker:
                tracker.log(m0, 0)
        if status == "completed" and st.step < sc.steps and judge_patience_spent():  # the same on every rank
            status = "judge_stop"
            log.warning("not training: the held-out judge has not improved for %d evaluations (sentiment.judge_patience=%s)",
                        st.judge.since_best, sc.judge_patience)
        self_signal = distributed.scheduled_test_signal(env.rank)
        bar = progress_bar(sc.steps, "PPO", "steps", progress, initial=st.step)
        while status == "completed" and st.step < sc.steps:
            if self_signal and st.step + 1 == self_signal[0]:
                os.kill(os.getpid(), self_signal[1])  # test hook: a signal arriving during this step
            t0 = time.perf_counter()
            local, t_roll = rl_step(job, st)
            local |= {"stop": float(stop_signal[0]), "late": float(limit is not None and elapsed() > limit)}
            m = _mean_over_ranks(local)  # the step's one collective after the update: metrics and both flags
            stop, late = m.pop("stop") > 0, m.pop("late") > 0
            st.step += 1
            kl_coef = st.kl_ctl.value
            st.kl_ctl.update(m["kl"], sc.batch_size * job.group)
            dt = time.perf_counter() - t0
            m = {f"ppo/{k}": v for k, v in m.items() if k != "tokens"} | {
                "ppo/kl_coef": kl_coef, "ppo/tokens_per_second": m["tokens"] * env.world_size / dt, "ppo/step_time_s": dt, "ppo/rollout_time_s": t_roll,
                "ppo/lr": sc.lr, "train/loss": m["policy_loss"] + (sc.vf_coef * m["value_loss"] if job.group == 1 else 0.0)}
            if st.step < sc.steps and (stop or late):
                status = "preempted" if stop else "time_limit"
            judged = st.judge is not None and (st.step % sc.judge_every == 0 or st.step == sc.steps or status == "time_limit")
            judge_m = judge_now(job, st, run_dir) if judged else {}  # logged, not in the history (whose windows average every key)
            if judged and st.step < sc.steps and status == "completed" and judge_patience_spent():
                status = "judge_stop"
            st.history.append(m)
            bar.update(1)
            bar.set_postfix_str(f"reward {m['ppo/mean_reward']:.3f} KL {m['ppo/kl']:.2f}", refresh=False)
            if tracker and (st.step % sc.log_every == 0 or st.step == sc.steps or judged):
                tracker.log(m | judge_m, st.step)
                log.info("step %d/%d | reward %.3f | KL %.2f nats | β %.3f | policy %.4f | value %.4f | clipfrac %.3f | "
                         "entropy %.2f | %.0f tok/s | %.1f s", st.step, sc.steps, m["ppo/mean_reward"], m["ppo/kl"], kl_coef,
                         m["ppo/policy_loss"], m["ppo/value_loss"], m["ppo/clipfrac"], m["ppo/entropy"],
                         m["ppo/tokens_per_second"], dt)
            if status == "judge_stop":
                log.warning("stopping after step %d: the held-out judge has not improved for %d evaluations "
                            "(sentiment.judge_patience=%s); the export is the policy of step %d", st.step,
                            st.judge.since_best, sc.judge_patience, st.judge.best_step)
            elif status != "completed":
                log.warning("stopping after step %d (%s); run the same command to resume", st.step,
                            "stop signal" if stop else f"sentiment.max_minutes={sc.max_minutes} reached")
            if st.step % sc.save_every == 0 or st.step == sc.steps or status != "completed":
                written.add(save_checkpoint(st, root, cfg, env, elapsed(), signature, line | written))
        bar.close()
        return finish_run(job, st, cfg, status, resumed, round(elapsed(), 1), tracker)
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)
        if lock is not None:
            lock.close()
        distributed.shutdown()
