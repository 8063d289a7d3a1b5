"""The RL loop for language models (``zerolm finetune sentiment --method ppo|rloo``): a run around the step.

One step's arithmetic — rollout, advantages (PPO's per-token KL reward and GAE, or RLOO's leave-one-out
baseline), the clipped update, control codes learnt by RL — is :mod:`zerolm.finetune.rl_algo` (Ziegler
et al. 2019; Schulman et al. 2017; Kool et al. 2019). This module runs it: :func:`build_job` loads the
policy, its frozen reference and the reward and builds the prompt pool (:class:`PromptStream`, the same
order on every rank); :func:`rl_step` is prompts → rollout → advantages → update; :func:`judge_now`
scores the held-out judge; :func:`finish_run` writes the digests, the result and the export;
:func:`train_ppo` holds resume, signals and the time box.

Distribution: the policy + value head run under ``torch.nn.parallel.DistributedDataParallel``
(gloo on CPU, NCCL on GPUs) so that every rank applies the same averaged gradients. Each rank's
policy, reference and reward model live on its device (:func:`zerolm.pretrain.distributed.compute_device`:
``cuda:LOCAL_RANK``, or the CPU); prompts, rollouts and the sampling generators stay on the CPU
(the draws of a seed are the same on any device, and a checkpoint resumes across them); rank 0 logs
``ppo/*`` metrics through :class:`pretrain.tracking.Tracker` (W&B + ``metrics.jsonl``) and exports the
policy (without the value head) at the end.

Checkpoints, resume and preemption: :mod:`zerolm.finetune.rl_checkpoint` (what a step carries,
:class:`~zerolm.finetune.rl_checkpoint.PPOState`, and how it is saved and resumed). SIGTERM/SIGUSR1
finish the current step, checkpoint and end with status ``preempted`` (the ranks agree through the
step's one all-reduce); ``zerolm launch slurm --entry finetune-sentiment`` then requeues the job. Ctrl-C
does the same with status ``interrupted``; a second Ctrl-C stops at once
(:class:`zerolm.pretrain.distributed.StopRequests`).
``sentiment.max_minutes`` counts the run's time across resumes (status ``time_limit``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from zerolm.finetune import sentiment as S
from zerolm.finetune.rl_algo import (AdaptiveKLController, PolicyWithValueHead, code_prompts, freeze_lower_layers,
                                     masked_mean, ppo_advantages, ppo_update, rloo_step_advantages, rollout)
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
            trainable_lm: parameters of ``lm`` that are trained.
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
    dev = distributed.compute_device()  # the rank's GPU, or the CPU
    lm, tok = S.load_policy(sc.policy, dev)
    ref, _ = S.load_policy(sc.policy, dev)
    for p in ref.parameters():
        p.requires_grad_(False)
    reward = S.RewardModel(sc.reward, sc.target, sc.target_label, sc.reward_type, device=dev)
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
    model = PolicyWithValueHead(lm, sc.temperature).to(dev).eval()  # eval: no dropout, so ratios start at exactly 1
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
                {n: p for n, p in model.named_parameters() if p.requires_grad}, judge_ids, judge_lengths, trainable)
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
    current step with a checkpoint (status ``preempted``), Ctrl-C too (status ``interrupted``);
    ``max_minutes`` (counted across resumes) with status ``time_limit``.

    Returns:
        ``status`` (``completed``, ``preempted``, ``interrupted``, ``time_limit``, ``judge_stop``), ``steps``,
        ``seconds`` (the run's, across resumes), ``resumed_from`` (a tag or None), ``first``/``final`` (mean metrics of the
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
    stops = distributed.StopRequests(log)  # SIGTERM/SIGUSR1 → preempted, Ctrl-C → interrupted (installed for the loop)
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
            dev = next(job.model.parameters()).device
            job.ddp = torch.nn.parallel.DistributedDataParallel(job.model, device_ids=[dev] if dev.type == "cuda" else None)
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
                     "each code's label" if sc.rl_codes else job.reward.label, sc.reward, len(st.stream.pool), sc.batch_size,
                     env.world_size, sc.batch_size // env.world_size, sc.ppo_epochs, sc.mini_batch_size, sc.lr,
                     sc.init_kl_coef, sc.target_kl, f" | resumed at step {st.step}" if resumed else "")

        stops.install()
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
            preempt, interrupt = stops.flags()
            local |= {"preempt": preempt, "interrupt": interrupt, "late": float(limit is not None and elapsed() > limit)}
            m = _mean_over_ranks(local)  # the step's one collective after the update: metrics and the flags
            signalled = distributed.StopRequests.status(m.pop("preempt"), m.pop("interrupt"))
            stop, late = signalled is not None, m.pop("late") > 0
            st.step += 1
            kl_coef = st.kl_ctl.value
            st.kl_ctl.update(m["kl"], sc.batch_size * job.group)
            dt = time.perf_counter() - t0
            m = {f"ppo/{k}": v for k, v in m.items() if k != "tokens"} | {
                "ppo/kl_coef": kl_coef, "ppo/tokens_per_second": m["tokens"] * env.world_size / dt, "ppo/step_time_s": dt, "ppo/rollout_time_s": t_roll,
                "ppo/lr": sc.lr, "train/loss": m["policy_loss"] + (sc.vf_coef * m["value_loss"] if job.group == 1 else 0.0)}
            if st.step < sc.steps and (stop or late):
                status = signalled if stop else "time_limit"
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
        stops.restore()
        if lock is not None:
            lock.close()
        distributed.shutdown()
