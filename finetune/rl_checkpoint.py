"""Checkpoints of the RL loop (:mod:`zerolm.finetune.ppo`, PPO and RLOO): what a run carries from step
to step (:class:`PPOState`), what a resume must agree with (:func:`ppo_signature`), and saving and
resuming it (:func:`save_checkpoint`, :func:`resume_checkpoint`).

Checkpoints and resume (the layout and rules of :mod:`zerolm.pretrain.checkpoint`, without the
DeepSpeed engine files): every ``sentiment.save_every`` steps, at the last step and when the run
stops early. Rank 0 writes what the ranks share (``zerolm_shared_state.pt``: the policy's trainable
parameters and the value head, the Adam state, β, the metric history, the run's seconds so far);
each rank writes its own streams (``zerolm_client_rank{r}.pt``: the torch/numpy/Python RNG states,
the sampling and shuffling generators, the prompt stream's generator and pending order); after a
barrier rank 0 writes the completion record, then applies retention (``sentiment.keep_last``). The
same command on the same run directory resumes from the newest intact checkpoint (damaged ones are
skipped with a warning) and continues exactly: N steps, a stop, a resume and N more steps give the
weights and metrics of 2N uninterrupted steps. A checkpoint this run cannot continue (another
world size, batch or mini-batch size, policy, trainable layers, method, target, prompt settings,
model shapes) stops it before any work with an error naming what differs; a run directory with
checkpoints never starts again from step 0. SIGTERM/SIGUSR1 finish the current step, checkpoint and
end with status ``preempted`` (the ranks agree through the step's one all-reduce); ``zerolm launch
slurm --entry finetune-sentiment`` then requeues the job. ``sentiment.max_minutes`` counts the run's
time across resumes (status ``time_limit``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from zerolm.config import ZeroLMConfig, save_config
from zerolm.pretrain import checkpoint as ckpt
from zerolm.pretrain import distributed

log = logging.getLogger(__name__)


def _barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# the sentiment keys a resume must keep (besides the world size and the model's tensor shapes): the
# batch arithmetic, what is trained toward what, and everything the prompt pool is built from
RESUME_KEYS = ("method", "policy", "target", "batch_size", "mini_batch_size", "rloo_k", "rl_codes", "control_codes",
               "trainable_layers", "seed", "data",
               "text_column", "label_column", "validation_fraction", "test_fraction", "split_seed",
               "prompt_min_tokens", "prompt_max_tokens", "prompt_kinds", "context_min_tokens", "context_max_tokens",
               "tweet_min_tokens", "tweet_max_tokens", "train_prompts", "judge_every", "judge_prompts")


def ppo_signature(sc: Any, world_size: int, model: torch.nn.Module) -> dict[str, Any]:
    """What a PPO checkpoint must agree with to be resumed (:func:`checkpoint.run_signature`): the
    world size, the tensor shapes of the policy + value head, and :data:`RESUME_KEYS` as
    ``sentiment.<key>`` settings; ``sentiment.precision`` is recorded, not compared. Other keys (``lr``,
    the KL and clipping settings, ``steps``, ``max_minutes`` …) may change on a resume."""
    return ckpt.run_signature(world_size=world_size, micro_batch_size=None, gradient_accumulation_steps=None,
                              global_batch_size=None, zero_stage=None, objective=None, precision=sc.precision,
                              model_config=None, shapes=ckpt.model_shapes(model), data_layout=None,
                              settings={f"sentiment.{k}": getattr(sc, k) for k in RESUME_KEYS})


@dataclass
class PPOState:
    """Everything a PPO run carries from step to step, i.e. what a checkpoint holds.

    Attributes:
        model: the policy + value head (its trainable parameters are saved). opt: Adam over them.
        kl_ctl: β. gen, shuffle: this rank's sampling and mini-batch order generators.
        stream: the prompt stream. step: PPO steps done. history: every step's metrics (for the
        first/final windows). seconds_before: run seconds of the processes before this one (from
        the checkpoint resumed). wandb_run_id: the tracker's run to continue. judge: the held-out
        judge's evaluations and best policy (:class:`zerolm.finetune.rl_judge.JudgeState`), or None.
    """

    # the loop's own types (zerolm.finetune.rl_algo, zerolm.finetune.ppo; ppo imports this module): PolicyWithValueHead,
    # AdaptiveKLController, PromptStream
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    kl_ctl: Any
    gen: torch.Generator
    shuffle: torch.Generator
    stream: Any
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    seconds_before: float = 0.0
    wandb_run_id: str | None = None
    judge: Any = None  # zerolm.finetune.rl_judge.JudgeState when sentiment.judge_every is set

    def shared_state(self, seconds: float) -> dict[str, Any]:
        """What the ranks hold alike (rank 0 saves it); ``seconds``: the run's seconds so far."""
        return {"model": {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad},
                "optimizer": self.opt.state_dict(), "kl_coef": self.kl_ctl.value, "step": self.step,
                "history": self.history, "seconds": seconds,
                "judge": self.judge.state_dict() if self.judge is not None else None}

    def client_state(self) -> dict[str, Any]:
        """What is this rank's own: the RNG states, both generators, the prompt stream's position."""
        return {"rng": ckpt.rng_state(), "gen": self.gen.get_state(), "shuffle": self.shuffle.get_state(),
                "stream": self.stream.state_dict()}

    def load(self, shared: dict[str, Any], client: dict[str, Any], lr: float) -> None:
        """Restore a checkpoint's :meth:`shared_state` and this rank's :meth:`client_state`; the
        optimizer continues at ``lr`` (``sentiment.lr`` of this run).

        Raises:
            TrainingError: the saved parameters are not this run's trainable ones, or the prompt
                pool differs (:meth:`PromptStream.load_state_dict`).
        """
        from zerolm.errors import TrainingError

        self.stream.load_state_dict(client["stream"])
        params = dict(self.model.named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        if set(shared["model"]) != trainable:
            odd = sorted(set(shared["model"]) ^ trainable)
            raise TrainingError(f"the checkpoint's trained parameters are not this run's (e.g. {odd[0]}): "
                                "keep sentiment.trainable_layers and the policy of the checkpoint's config.yaml")
        with torch.no_grad():
            for n, t in shared["model"].items():
                params[n].copy_(t)
        self.opt.load_state_dict(shared["optimizer"])
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.kl_ctl.value = shared["kl_coef"]
        self.step, self.history, self.seconds_before = shared["step"], list(shared["history"]), shared["seconds"]
        if self.judge is not None and shared.get("judge"):
            self.judge.load_state_dict(shared["judge"])
        ckpt.set_rng_state(client["rng"])
        self.gen.set_state(client["gen"])
        self.shuffle.set_state(client["shuffle"])


def save_checkpoint(st: PPOState, root: Path, cfg: ZeroLMConfig, env: distributed.DistEnv, seconds: float,
                    signature: dict[str, Any], line: set[str]) -> str:
    """Checkpoint step ``st.step`` (every rank calls it): each rank its client state, rank 0 the
    shared state and the run's ``config.yaml``; after a barrier rank 0 writes the completion record
    (:func:`checkpoint.mark_complete`, which points ``latest`` at it) and applies retention
    (:func:`checkpoint.prune` with ``sentiment.keep_last`` over ``line``, this run line's tags). A
    folder already at this step (damaged, or one this run could not load) is moved aside first,
    never overwritten. Returns the tag.

    Raises:
        TrainingError: not enough disk space for the checkpoint (:func:`checkpoint.space_problem`), found
            before anything of it is written."""
    from zerolm.errors import TrainingError

    tag = ckpt.tag_for(st.step)
    if env.is_main and (root / tag).exists():
        moved = ckpt.set_aside(root, tag)
        log.warning("%s was not written by this run (it could not be loaded); moved to %s, not overwritten", root / tag, moved)
    trained = sum(p.numel() for p in st.model.parameters() if p.requires_grad)
    problem = distributed.broadcast_from_main(ckpt.space_problem(root, tag, trained) if env.is_main else None)
    if problem:  # decided by rank 0 for all, before any rank writes (this collective is the barrier)
        raise TrainingError(problem)
    ckpt.save_client_state(root, tag, env.rank, st.client_state())
    if env.is_main:
        ckpt.save_shared_state(root, tag, st.shared_state(seconds))
        save_config(cfg, root / tag / "config.yaml")
    _barrier()  # every rank's files are written before the record that makes the checkpoint complete
    if env.is_main:
        ckpt.mark_complete(root, tag, {"step": st.step, "seconds": seconds, "kl_coef": st.kl_ctl.value,
                                       "world_size": env.world_size, "run": signature, "wandb_run_id": st.wandb_run_id,
                                       "metrics": st.history[-1] if st.history else {}})
        removed = ckpt.prune(root, cfg.sentiment.keep_last, line | {tag}, tag)
        log.info("saved checkpoint %s%s", root / tag, f" (removed {', '.join(removed)})" if removed else "")
    _barrier()
    return tag


def resume_checkpoint(st: PPOState, root: Path, signature: dict[str, Any], env: distributed.DistEnv, lr: float) -> str | None:
    """Decide (rank 0, from the completion records: :func:`checkpoint.plan_resume`) and load the
    newest checkpoint of ``root`` that this run can continue and every rank can read (an unreadable
    one falls back to the next older). Restores ``st`` in place. Returns the tag, or None for a
    fresh start (no checkpoints).

    Raises:
        TrainingError: the newest intact checkpoint is incompatible (the message names what differs
            and what to set), or checkpoints exist and none can be loaded.
    """
    from zerolm.errors import TrainingError

    plan: ckpt.ResumePlan = distributed.broadcast_from_main(ckpt.plan_resume(root, signature) if env.is_main else None)
    if not plan.candidates and plan.error(root):
        raise TrainingError(plan.error(root))
    failed: dict[str, str] = {}
    for tag in plan.candidates:
        why = ""
        try:
            rec = ckpt.read_record(root, tag)
            shared = ckpt.load_shared_state(root, tag)
            client = ckpt.load_client_state(root, tag, env.rank)
            ok = 1.0
        except Exception as e:  # noqa: BLE001 - an unreadable file (damage the sizes did not show)
            why = f"{type(e).__name__}: {e}"
            log.warning("cannot load checkpoint %s: %s", root / tag, why)
            ok = 0.0
        if distributed.all_reduce_values([ok], "min")[0] < 1:
            failed[tag] = why or "another rank could not read it"
            log.warning("falling back from checkpoint %s to an older one", root / tag)
            continue
        st.load(shared, client, lr)
        st.wandb_run_id = rec.get("wandb_run_id")
        log.info("resumed from %s (step %d, β %.4g, %.0f s trained before)", root / tag, st.step, st.kl_ctl.value,
                 st.seconds_before)
        return tag
    err = plan.error(root, failed)
    if err:
        raise TrainingError(err)
    return None
