"""Early stopping and checkpoint selection on a held-out judge for the RL loop (PPO and RLOO).

An RL policy optimises its reward model, and past some step it earns reward on what that classifier
scores and the goal does not (reward hacking: Gao et al. 2023, "Scaling Laws for Reward Model
Overoptimization", measure the gold score rising, peaking and falling as the proxy reward keeps
rising). The guard here is the one used against overfitting anywhere: score the policy every
``sentiment.judge_every`` steps on prompts it never trains on with a judge it never optimises, keep
the best policy, and export that one (``sentiment.judge_patience`` evaluations without improvement
end the run early).

* **Prompts** (:func:`hold_out_judge_prompts`): ``sentiment.judge_prompts`` prompts taken out of the
  RL pool, with every other prompt cut from the same source texts, so the policy is scored on texts
  it never saw; the report's prompts (the test split) stay untouched.
* **Judge**: VADER on the continuation alone (:mod:`zerolm.evals.judge`, the report's headline
  judge): the target rate, compound ≥ 0.05 for positive, ≤ −0.05 for negative.
* **Sampling**: the same seeded draws at every evaluation (a fresh generator seeded with
  ``sentiment.seed``), so two evaluations differ by the policy only; each rank samples its share
  of the prompts and the ranks sum their hits (one all-reduce).

:class:`JudgeState` keeps the history, the best rate and the best policy's trainable parameters; it is
part of the RL checkpoint (:mod:`zerolm.finetune.rl_checkpoint`), so a resumed run selects as an
uninterrupted one would.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from zerolm.evals.judge import judge_hits, vader_compound
from zerolm.finetune import sentiment as S
from zerolm.pretrain import distributed

log = logging.getLogger(__name__)

JUDGE_FILE = "judge.json"  # RUN_DIR/judge.json: every evaluation (rate, hits, rank 0's continuations), the best step


def hold_out_judge_prompts(pool: list[Any], n: int, max_share: float = 0.25) -> tuple[list[Any], list[Any]]:
    """Split the RL prompt pool into (training prompts, ``n`` judge prompts).

    The judge takes the last prompts of ``pool`` (a seeded random mixture of kinds,
    :func:`finetune.sentiment_prompts.prompt_pool`), one per source text, until it has ``n``, taking
    at most ``max_share`` of a kind's source texts (the hand-written stories are 32: the judge gets 8
    of them, training keeps 24); every prompt cut from one of those sources leaves the training pool
    (the pool reuses a short kind's texts with fresh cuts).

    Args:
        pool: :class:`~finetune.sentiment_prompts.Prompt` objects (``ids``, ``kind``, ``source``).
        n: judge prompts wanted.
        max_share: the largest fraction of one kind's sources the judge may take (at least one).

    Returns:
        ``(train, judge)``; ``judge`` has ``n`` prompts, or fewer when the kinds have too few sources.

    Raises:
        DataError: holding them out leaves no training prompt.
    """
    from zerolm.errors import DataError

    per_kind: dict[str, set] = {}
    for p in pool:
        per_kind.setdefault(p.kind, set()).add(p.source)
    cap = {k: max(1, int(len(v) * max_share)) for k, v in per_kind.items()}
    judge, sources, taken = [], set(), dict.fromkeys(per_kind, 0)
    for p in reversed(pool):
        if len(judge) >= n:
            break
        if p.source not in sources and taken[p.kind] < cap[p.kind]:
            sources.add(p.source)
            taken[p.kind] += 1
            judge.append(p)
    judge.reverse()
    train = [p for p in pool if p.source not in sources]
    if not train:
        raise DataError(f"sentiment.judge_prompts={n} holds out every source text of the {len(pool)}-prompt pool: "
                        "lower it or raise sentiment.train_prompts")
    return train, judge


@dataclass
class JudgeState:
    """What the held-out judge has seen so far (checkpointed with the RL state).

    Attributes:
        history: ``[{"step", "rate", "hits", "count"}]``, one per evaluation (step 0 = the untuned policy).
        best_step, best_rate: the evaluation with the highest rate (the earliest on ties); ``-1``/``-inf``
            before the first.
        best_params: the trainable parameters at ``best_step`` (name → tensor, detached copies), or
            None while the current parameters are the best ones (then they are taken at export).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_step: int = -1
    best_rate: float = float("-inf")
    best_params: dict[str, torch.Tensor] | None = None

    @property
    def since_best(self) -> int:
        """Evaluations after the best one (for ``sentiment.judge_patience``); 0 before the first."""
        return sum(h["step"] > self.best_step for h in self.history)

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "best_step": self.best_step, "best_rate": self.best_rate,
                "best_params": self.best_params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.best_step, self.best_rate = list(state["history"]), state["best_step"], state["best_rate"]
        self.best_params = state["best_params"]  # a checkpoint's "since_best" (before it was derived) is ignored

    def record(self, step: int, hits: int, count: int) -> bool:
        """Add an evaluation of the live policy at ``step`` (``hits`` of ``count`` prompts on target); a new
        best (a higher rate than every earlier one) is remembered by its step, its parameters copied only
        when the next update is about to change them (:meth:`before_update`). Returns whether it is the new
        best."""
        rate = hits / max(count, 1)
        self.history.append({"step": step, "rate": rate, "hits": hits, "count": count})
        if rate > self.best_rate:
            self.best_step, self.best_rate = step, rate
            self.best_params = None  # the live parameters are the best: copied when they move on
            return True
        return False

    def before_update(self, params: dict[str, torch.Tensor], step: int) -> None:
        """Call before the optimizer changes the parameters at ``step``: if the live parameters are the best
        (:meth:`record` left ``best_params`` None at this step), keep a copy."""
        if self.best_step == step and self.best_params is None:
            self.best_params = {n: p.detach().clone() for n, p in params.items()}


def judge_rate(lm: torch.nn.Module, tok: Any, prompts: list[list[int]], lengths: list[int], sc: Any,
               stops: set[int], env: distributed.DistEnv) -> tuple[int, int, list[str]]:
    """Sample this rank's share of the judge prompts (rank r takes prompts r, r + world, …) with the
    policy ``lm`` and count VADER's target verdicts on the continuations alone.

    Args:
        prompts: token ids of every judge prompt (the same list on every rank). lengths: each prompt's
            response budget (tokens). sc: ``SentimentConfig`` (sampling settings, ``target``, ``seed``).

    Returns:
        ``(hits, count, continuations)``: hits and prompts summed over the ranks (one all-reduce); this
        rank's continuations.
    """
    mine = list(range(env.rank, len(prompts), env.world_size))
    gen = torch.Generator().manual_seed(sc.seed * 1000 + 900 + env.rank)
    with torch.no_grad(), S.autocast(lm, sc.precision):
        resp = S.sample_responses(lm, [prompts[i] for i in mine], [lengths[i] for i in mine], pad_id=tok.pad_token_id,
                                  stops=stops, temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p,
                                  generator=gen, min_tokens=sc.response_min_tokens)
    cont = [tok.decode(r, skip_special_tokens=True) for r in resp]
    hits = sum(judge_hits(vader_compound(cont), sc.target))
    total_hits, total = distributed.all_reduce_values([float(hits), float(len(mine))], "sum")
    return int(total_hits), int(total), cont
