"""The training loop: one loop for pretraining (and, with another objective, finetuning).

Reads top to bottom: set up (batch arithmetic, model, engine, data, resume, tracking), then per
optimizer step: ``gradient_accumulation_steps`` micro-batches of forward/backward, the optimizer
step (skipped if any rank saw a non-finite loss), logging, evaluation, checkpointing, and a stop
check (max steps, ``stop_at_step``, SIGTERM/SIGUSR1, Ctrl-C).

Resume safety (rules in :mod:`zerolm.pretrain.checkpoint`): before the engine is built, rank 0
decides from the checkpoints' completion records which one to resume; an intact checkpoint this run
cannot continue (another global batch, ZeRO stage, objective, model shape) stops the run with a
:class:`TrainingError` before anything in the run directory is written.

Elastic resume: a checkpoint written on another number of ranks (or loader workers) is continued —
the global batch is kept (gradient accumulation re-derived, :func:`batch_arithmetic`), the engine
loads DeepSpeed's universal copy of it, and the data loader takes its logical shards from the
merged states of all the ranks that saved it, so the next global batch is the one the
uninterrupted run would have trained on.

Loss spikes (:mod:`zerolm.pretrain.spikes` tests, :mod:`zerolm.pretrain.recovery` decides,
``train.spike_recovery``): every applied step's loss is
tested against a robust running statistic of the recent ones; a spike (or a streak of non-finite
losses) rolls the model and optimizer back to the newest checkpoint before it, keeps the data
stream where it is (the batches trained since are skipped, recorded in the run so that a restart
skips them too), optionally lowers the LR for a while, and continues.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from zerolm.pretrain import checkpoint as ckpt
from zerolm.pretrain import distributed
from zerolm.pretrain.engine import Engine, check_precision, resolve_precision
from zerolm.pretrain.emissions import EnergyMeter, summary_line
from zerolm.pretrain.metrics import bf16_matmul_speedup, compute_dtype, measure_matmul_peak, median, memory_stats, mfu, peak_rss_bytes, rss_bytes
from zerolm.pretrain.components import Components, pretraining_components
from zerolm.pretrain.recovery import SpikeRecovery
from zerolm.pretrain.tracking import Tracker, run_config
from zerolm.config import ZeroLMConfig, save_config
from zerolm.errors import ConfigError, TrainingError
from zerolm.fsutil import write_json

log = logging.getLogger(__name__)


def batch_arithmetic(cfg: ZeroLMConfig, world_size: int, keep_global: int | None = None) -> tuple[int, int, int]:
    """``(micro_batch_size, gradient_accumulation_steps, global_batch_size)`` with
    global = micro × accumulation × data-parallel size; any two given, the third derived.

    Args:
        cfg: the config (``data.micro_batch_size``, ``train.gradient_accumulation_steps``,
            ``train.global_batch_size``).
        world_size: the data-parallel size.
        keep_global: the global batch of the checkpoint a run resumes (None: a fresh run). Unless
            ``train.global_batch_size`` is set it is kept: the accumulation is derived from it and the
            configured micro-batch size for this world size (a configured accumulation is overridden).

    Raises:
        ConfigError: the three disagree, the global batch is not divisible, or ``keep_global`` cannot
            be kept on this world size (the message names the world sizes and micro-batch sizes that can).
    """
    if keep_global is not None and cfg.train.global_batch_size is None:
        micro = cfg.data.micro_batch_size
        if keep_global % (micro * world_size) == 0:
            return micro, keep_global // (micro * world_size), keep_global
        worlds = [w for w in range(1, keep_global // micro + 1) if keep_global % (micro * w) == 0]
        micros = [m for m in range(1, keep_global // world_size + 1) if keep_global % (m * world_size) == 0]
        raise ConfigError(
            f"cannot keep the checkpoint's global batch {keep_global} on {world_size} data-parallel ranks with "
            f"data.micro_batch_size={micro}: {keep_global} = {micro} × accumulation × {world_size} has no whole-number "
            f"accumulation. World sizes that keep it at micro-batch {micro}: {worlds}; "
            + (f"micro-batch sizes that keep it on {world_size} ranks: {micros}" if micros
               else f"no micro-batch size does on {world_size} ranks ({world_size} does not divide {keep_global})"))
    micro = cfg.data.micro_batch_size if "micro_batch_size" in cfg.data.model_fields_set else None
    gas, glob = cfg.train.gradient_accumulation_steps, cfg.train.global_batch_size
    if micro is None and gas is not None and glob is not None:
        if glob % (gas * world_size):
            raise ConfigError(f"train.global_batch_size={glob} is not divisible by train.gradient_accumulation_steps={gas} × {world_size} ranks")
        return glob // (gas * world_size), gas, glob
    micro = cfg.data.micro_batch_size
    if gas is None and glob is None:
        gas = 1
    if glob is None:
        return micro, gas, micro * gas * world_size
    if gas is None:
        if glob % (micro * world_size):
            raise ConfigError(f"train.global_batch_size={glob} is not divisible by data.micro_batch_size={micro} × {world_size} ranks")
        return micro, glob // (micro * world_size), glob
    if micro * gas * world_size != glob:
        raise ConfigError(
            f"train.global_batch_size={glob} != data.micro_batch_size={micro} × train.gradient_accumulation_steps={gas}"
            f" × {world_size} ranks = {micro * gas * world_size}"
        )
    return micro, gas, glob


def _real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens a micro-batch really holds: the attention mask's ones when there is padding (dynamic
    padding in finetuning), else every position of ``input_ids`` (packed pretraining batches)."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


class Trainer:
    """The shared training loop with DeepSpeed: pretraining by default, any objective through
    ``build``.

    Args:
        cfg: the validated config.
        env: this process's place in the job (:func:`pretrain.distributed.detect`); the process
            group must already be initialised.
        build: ``(cfg with the derived micro-batch size, env) -> (cfg, Components)``; called after
            seeding so that every rank initialises the same weights.
        downstream: ``(cfg, model, rank, world_size) -> evaluator``, the evaluator a callable
            ``(engine, step) -> metrics`` run at every evaluation when ``train.eval_tasks`` is set
            (``zerolm.evals.inloop.DownstreamEvals``, which the pretraining entry point passes: evals sit
            above this module in the layers, so it is handed in, not imported).

    Raises:
        ConfigError: ``train.eval_tasks`` is set but no ``downstream`` evaluator was given, or the
            evaluator rejects a task (an unknown name): before any training step.
    """

    def __init__(self, cfg: ZeroLMConfig, env: distributed.DistEnv,
                 build: Callable[[ZeroLMConfig, distributed.DistEnv], tuple[ZeroLMConfig, Components]] = pretraining_components,
                 downstream: Callable[..., Callable[[Engine, int], dict[str, float]]] | None = None) -> None:
        self.env = env
        self.baseline_rss = rss_bytes()  # the runtime (imports, process group) before data and model
        saved = self._newest_signature(Path(cfg.train.run_dir) / "checkpoints")
        precision, precision_reason = resolve_precision(
            cfg.train.precision, resumed=saved.get("precision") if saved else None,
            cpu_bf16_speedup=lambda: distributed.all_reduce_values([bf16_matmul_speedup()])[0] / env.world_size)
        check_precision(precision)
        micro, self.grad_accum, self.global_batch = batch_arithmetic(
            cfg, env.world_size, keep_global=saved.get("global_batch_size") if saved else None)
        self._lock = distributed.lock_run_dir(Path(cfg.train.run_dir), env)
        cfg = cfg.model_copy(update={
            "data": cfg.data.model_copy(update={"micro_batch_size": micro}),
            # the global batch is what a run keeps; the accumulation is derived from it on any world size
            # (also when this run's saved config.yaml is used as the config of a restart elsewhere)
            "train": cfg.train.model_copy(update={"global_batch_size": self.global_batch, "precision": precision,
                                                  "gradient_accumulation_steps": None})})
        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        cfg, self.parts = build(cfg, env)
        self.cfg = cfg
        self.run_dir = Path(cfg.train.run_dir)
        self.root = self.run_dir / "checkpoints"
        self.objective = self.parts.objective
        self.loader = self.parts.train_loader
        self.downstream = None  # in-loop few-shot evals (train.eval_tasks): tasks checked and loaded before any work
        if cfg.train.eval_tasks:
            if downstream is None:
                raise ConfigError("train.eval_tasks is set, but this trainer was started without a downstream evaluator: "
                                  "in-loop evals run under `zerolm pretrain` / `python -m zerolm.pretrain` (or "
                                  "train(cfg, downstream=zerolm.evals.inloop.DownstreamEvals))")
            self.downstream = downstream(cfg, self.parts.model, env.rank, env.world_size)
        loader_state = self.loader.state_dict() if hasattr(self.loader, "state_dict") else {}
        self.signature = ckpt.run_signature(
            world_size=env.world_size, micro_batch_size=micro, gradient_accumulation_steps=self.grad_accum,
            global_batch_size=self.global_batch, zero_stage=cfg.train.zero_stage, objective=self.objective.name,
            precision=cfg.train.precision, model_config=cfg.model.model_dump(mode="json"),
            shapes=ckpt.model_shapes(self.parts.model), data_layout=loader_state,
            elastic_resume=cfg.train.elastic_resume)
        # decided from the checkpoints' records before anything is built or written: an intact
        # checkpoint this run cannot continue stops it here (metrics, checkpoints, config untouched)
        plan = self._plan_resume()
        torch.manual_seed(cfg.train.seed + env.rank)  # per-rank dropout stream
        self.engine = Engine(self.parts.model, cfg.train, micro, self.grad_accum, env.world_size)
        self.step = self.tokens_seen = self.nonfinite_total = 0
        self.loss_scale_skipped = 0  # fp16 overflow skips (dynamic loss scaling), not counted as non-finite
        self.data_step = 0  # global batches drawn from the data stream (a recovery skips, never rewinds it)
        self.spikes = SpikeRecovery(cfg.train.spike_recovery, self.root, env)  # detector, records, LR-scale window
        self.metrics: dict[str, float] = {}
        self.stop_requests = distributed.StopRequests(log)  # SIGTERM/SIGUSR1/SIGINT → checkpoint and stop
        self.seconds_before = 0.0  # training-loop seconds of the run before this process (train.max_minutes)
        self._t_start: float | None = None
        self.written: set[str] = set()  # tags this process saved
        run_id, resumed = self._resume(plan)
        if resumed is None and self.parts.init_state:  # model.init_optimizer=checkpoint, first start
            st = self.parts.init_state
            self.engine.continue_optimizer(Path(st["root"]), st["tag"], st["world_size"])
            self.step, self.tokens_seen = st["step"], st["tokens_seen"]
            log.info("continuing the optimizer state and step count of %s/%s: step %d, lr %.3g",
                     st["root"], st["tag"], self.step, self.engine.lr)
        self.energy = EnergyMeter(cfg.tracking.emissions, env, self.engine.device.type,
                                  ckpt.read_record(self.root, resumed).get("emissions") if resumed else None)
        self.windows: list[tuple[float, float, float]] = []  # (s/step, tokens/s, MFU) of each log window
        self.line = ckpt.lineage(self.root, resumed)  # this run line's tags (retention counts only these)
        if env.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.yaml")
            write_json(self.run_dir / "ds_config.json", self.engine.ds_config)
        # MFU's denominator: the matmul peak in the dtype the model computes in (bf16 runs ~2.5x fp32 here)
        self.peak = cfg.train.peak_flops or distributed.all_reduce_values(
            [measure_matmul_peak(self.engine.device, compute_dtype(precision))])[0] / env.world_size
        # the links' speed, for zerolm plan's communication term (None on one rank)
        self.collectives = distributed.collective_rates()
        self.tracker = None
        if env.is_main:
            self.tracker = Tracker(cfg.tracking, self.run_dir, run_config(cfg, self.parts.job), run_id,
                                   resume_step=self.step if self.step else None)
            on = [k.replace("_", " ") for k, v in self.engine.features().items() if v]
            log.info("%s | global batch %d = micro %d × accumulation %d × %d ranks | seq_len %d | ZeRO-%d | %s%s",
                     self.parts.description, self.global_batch, micro, self.grad_accum, env.world_size,
                     self.parts.tokens_per_sample, cfg.train.zero_stage, cfg.train.precision,
                     f" | {', '.join(on)}" if on else "")
            log.info("%s", self.engine.compile_reason)
            if precision_reason:
                log.info("%s", precision_reason)
            if self.collectives:
                c = self.collectives
                log.info("links (%s, %d ranks, %d MiB messages): bus bandwidth all-reduce %.3g GB/s, all-gather %.3g GB/s, "
                         "reduce-scatter %.3g GB/s", c["backend"], c["world_size"], c["bytes"] >> 20,
                         *(c[k]["bus_bytes_per_s"] / 1e9 for k in ("all_reduce", "all_gather", "reduce_scatter")))

    def release(self) -> None:
        """Stop the energy tracker and give up the run-directory lock (training is over; export may
        follow in this process)."""
        if getattr(self, "energy", None) is not None:
            self.energy.stop()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- resume ----------------------------------------------------------------------------
    def _newest_signature(self, root: Path) -> dict[str, Any] | None:
        """Rank 0 reads the run signature of the newest intact checkpoint (its global batch is kept
        on a resume); every rank gets it."""
        return distributed.broadcast_from_main(ckpt.newest_intact_signature(root) if self.env.is_main else None)

    def _plan_resume(self) -> ckpt.ResumePlan:
        """Rank 0 reads the checkpoints' records (:func:`checkpoint.plan_resume`) and every rank gets
        its decision.

        Raises:
            TrainingError: the newest intact checkpoint is incompatible with this run (the message
                names what differs and what to set), or checkpoints exist and all are damaged.
        """
        if self.env.is_main:
            for tag in ckpt.apply_recoveries(self.root):  # a run killed during a loss-spike recovery
                log.warning("finished the interrupted loss-spike recovery: %s set aside as rolled back", self.root / tag)
        plan = distributed.broadcast_from_main(ckpt.plan_resume(self.root, self.signature) if self.env.is_main else None)
        if not plan.candidates and plan.error(self.root):
            raise TrainingError(plan.error(self.root))
        return plan

    def _resume(self, plan: ckpt.ResumePlan) -> tuple[str | None, str | None]:
        """Load the newest candidate that every rank can read (an unreadable one falls back to the
        next older candidate). Returns ``(W&B run id, resumed tag)``, both None for a fresh start.

        Raises:
            TrainingError: checkpoints exist but none could be loaded (each named with why).
        """
        failed: dict[str, str] = {}
        for tag in plan.candidates:
            why = ""
            try:
                rec = ckpt.read_record(self.root, tag)
                saved_world = (rec.get("run") or {}).get("world_size") or rec.get("world_size")
                how = self.engine.load(self.root, tag, saved_world_size=saved_world)
                same_world = saved_world in (None, self.env.world_size)
                client = ckpt.load_client_state(self.root, tag, self.env.rank) if same_world else {}
                recovery = ckpt.recovery_for(self.root, tag)
                data = self._merged(recovery["data_states"]) if recovery else self._data_state(tag, client)
                ok = 1.0
            except Exception as e:  # noqa: BLE001 - an unreadable file (damage the sizes did not show)
                why = f"{type(e).__name__}: {e}"
                log.warning("cannot load checkpoint %s: %s", self.root / tag, why)
                ok = 0.0
            if distributed.all_reduce_values([ok], "min")[0] < 1:
                failed[tag] = why or "another rank could not read it"
                log.warning("falling back from checkpoint %s to an older one", self.root / tag)
                continue
            self.loader.load_state_dict(data)
            self.step, self.tokens_seen = rec["step"], rec["tokens_seen"]
            if same_world:
                ckpt.set_rng_state(client["rng"])
            else:  # the ranks' random streams (dropout) cannot be carried over to another world size
                torch.manual_seed(self.cfg.train.seed + self.env.rank + 7919 * self.step)
            self.nonfinite_total = rec.get("nonfinite_skipped", 0)
            self.metrics = rec.get("metrics", {})
            self.seconds_before = float(rec.get("train_seconds", 0.0))
            self.data_step = self.spikes.restore(rec, recovery)
            if recovery:
                log.warning("continuing the loss-spike recovery of step %d: the data resumes after global batch %d "
                            "(batches %d–%d skipped)", recovery["detected_at_step"], recovery["data_step"],
                            *recovery["skipped_batches"])
            notes = ckpt.notes_on_resume(rec.get("run") or {}, self.signature)
            done = {"universal": "; model and optimizer loaded from DeepSpeed's universal checkpoint "
                                 f"{self.root / tag / 'universal'}",
                    "stage0": "; ZeRO-0 model and optimizer state read whole on every rank"}.get(how, "")
            log.info("resumed from %s (step %d, %d tokens seen)%s%s", self.root / tag, self.step, self.tokens_seen,
                     f"; global batch {self.global_batch} unchanged, {', '.join(notes)}" if notes else "",
                     done + ("; data continues from the same logical shards, dropout RNG reseeded" if not same_world else ""))
            return rec.get("wandb_run_id"), tag
        err = plan.error(self.root, failed)
        if err:
            raise TrainingError(err)
        return None, None

    def _data_state(self, tag: str, client: dict[str, Any]) -> dict[str, Any]:
        """The data-loader state this rank resumes from: the merge of every saved rank's state when
        the loader can reshard (:func:`data_pipeline.loader.merge_states`), else its own rank's."""
        states = ckpt.load_data_state(self.root, tag)
        if states is None:  # written before zerolm gathered the data states (same world size only)
            return client["data"]
        return self._merged(states)

    def _merged(self, states: list[dict[str, Any]]) -> dict[str, Any]:
        merge = getattr(self.loader, "merge_states", None)
        return merge(states) if merge is not None else states[self.env.rank]

    def save(self) -> None:
        """Checkpoint at the current step on every rank; rank 0 marks it complete last, then applies
        retention (:func:`checkpoint.prune`). A folder already at this step that this run did not
        write (a checkpoint it could not load, or debris) is first moved aside, never overwritten."""
        tag = ckpt.tag_for(self.step)
        if tag in self.written:
            return
        if self.env.is_main and (self.root / tag).exists():
            moved = ckpt.set_aside(self.root, tag)
            log.warning("%s was not written by this run (it could not be loaded); moved to %s, not overwritten",
                        self.root / tag, moved)
        data_states = distributed.gather_to_main(self.loader.state_dict())
        energy = self.energy.state() if self.energy.enabled else None  # a collective: every rank
        # room for the whole checkpoint, checked before any rank writes (rank 0 decides for all)
        problem = distributed.broadcast_from_main(
            ckpt.space_problem(self.root, tag, self.parts.parameters) if self.env.is_main else None)
        if problem:
            raise TrainingError(problem)
        try:
            self.engine.save(self.root, tag)
            ckpt.save_client_state(self.root, tag, self.env.rank, {"rng": ckpt.rng_state()})
            if self.env.is_main:
                ckpt.save_data_state(self.root, tag, data_states)
                save_config(self.cfg, self.root / tag / "config.yaml")
                if self.cfg.model.init_from:  # the architecture is the loaded model's, not the shape keys'
                    ckpt.save_hf_config(self.root, tag, self.engine.module.config.to_dict())
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as "iostream error"
            log.error("writing checkpoint %s failed (%s: %s); %s free under %s. It has no completion record, so a "
                      "resume skips it; the newest complete checkpoint is %s", self.root / tag, type(e).__name__, e,
                      f"{ckpt.free_bytes(self.root) / 2**20:,.1f} MiB", self.root, ckpt.latest_tag(self.root) or "none")
            raise
        dist.barrier()
        self.written.add(tag)
        if self.env.is_main:
            ckpt.mark_complete(self.root, tag, {
                "step": self.step, "tokens_seen": self.tokens_seen, "nonfinite_skipped": self.nonfinite_total,
                "metrics": self.metrics, "wandb_run_id": self.tracker.run_id if self.tracker else None,
                "world_size": self.env.world_size, "run": self.signature, "data_step": self.data_step,
                "train_seconds": round(self.train_seconds(), 3),
                **self.spikes.checkpoint_fields(),
                **({"emissions": energy} if energy else {}),
            })
            removed = ckpt.prune(self.root, self.cfg.train.keep_last, self.line | self.written, tag,
                                 self.spikes.keep_before(self.step))
            log.info("saved checkpoint %s%s", self.root / tag, f" (removed {', '.join(removed)})" if removed else "")
        dist.barrier()

    def train_seconds(self) -> float:
        """Seconds the run has spent in its training loop, across resumes (``train.max_minutes``
        counts these; evaluation and checkpointing inside the loop included, set-up not)."""
        return self.seconds_before + (time.perf_counter() - self._t_start if self._t_start is not None else 0.0)

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The objective's validation metrics (e.g. loss, perplexity, masked-token accuracy) on up
        to ``train.eval_batches`` batches per rank; all ranks run the same number of batches."""
        self.engine.eval()
        it, n, sums = iter(self.parts.make_eval_loader()), 0, {}
        limit = self.cfg.train.eval_batches
        while limit is None or n < limit:
            batch = next(it, None)
            if distributed.all_reduce_values([batch is not None], "min")[0] < 1:
                break
            out = self.engine.forward(batch)
            for k, v in self.objective.eval_sums(out.logits, batch["labels"].to(out.logits.device), out.loss).items():
                sums[k] = sums.get(k, 0.0) + v.detach().double().cpu()
            n += 1
        self.engine.train()
        keys = sorted(sums)
        if not keys:
            return {}
        flat = distributed.all_reduce_tensor(torch.cat([sums[k].reshape(-1) for k in keys]))
        total, i = {}, 0
        for k in keys:
            size = sums[k].numel()
            total[k] = flat[i : i + size].reshape(sums[k].shape)
            i += size
        return self.objective.summarize(total)

    def _evaluate_and_log(self) -> None:
        """Validation metrics and the in-loop downstream evals at this step, into ``self.metrics``, the
        tracker (metrics.jsonl, W&B) and the console."""
        self.metrics = self.evaluate()
        if self.downstream is not None:  # eval/<task>/<metric>[_<k>shot], eval/downstream_seconds
            self.metrics.update(self.downstream(self.engine, self.step))
        if self.tracker and self.metrics:
            self.tracker.log(self.metrics, self.step)
            if "eval/perplexity" in self.metrics:
                log.info("step %d | eval loss %.4f | perplexity %.2f", self.step, self.metrics["eval/loss"], self.metrics["eval/perplexity"])
            else:  # other objectives (classification): whatever metrics they report
                log.info("step %d | %s", self.step, " | ".join(f"{k.split('/', 1)[-1]} {v:.4f}" for k, v in self.metrics.items()))

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to ``train.max_steps`` (or ``stop_at_step``, ``max_minutes``, or a stop signal) and return a
        summary (``status``: ``completed``, ``preempted`` (SIGTERM/SIGUSR1), ``interrupted`` (Ctrl-C),
        ``stopped`` or ``time_limit``). The stop signals are handled while the loop runs
        (:class:`zerolm.pretrain.distributed.StopRequests`)."""
        tc = self.cfg.train
        self.stop_requests.install()
        try:
            status = self._train_loop()
        finally:
            self.stop_requests.restore()  # past the loop (or on an error), Ctrl-C stops at once again
        result = {"status": status, "step": self.step, "tokens_seen": self.tokens_seen,
                  "train_seconds": round(self.train_seconds(), 3),
                  "nonfinite_skipped": self.nonfinite_total, "parameters": self.parts.parameters,
                  **({"loss_scale_skipped": self.loss_scale_skipped} if tc.precision == "fp16" else {}),
                  "spike_recoveries": self.spikes.summary(),
                  **self.metrics, **self._measured()}
        if self.tracker:
            if "emissions" in result:
                log.info("%s", summary_line(result["emissions"]))
            self.tracker.summary(result)
            self.tracker.finish()
        return result

    def _train_loop(self) -> str:
        """The training loop of :meth:`run` (stop signals installed by the caller); returns the run's status."""
        tc = self.cfg.train
        consecutive_bad, status = 0, "completed"
        window = {"loss": 0.0, "steps": 0, "tokens": 0, "data_s": 0.0, "t0": time.perf_counter()}
        it = iter(self.loader)
        if tc.eval_at_start and self.step == 0:  # the starting point (e.g. the model init_from loaded)
            self._evaluate_and_log()
            window["t0"] = time.perf_counter()  # evaluation is not training throughput
        self.engine.train()
        self_signal = distributed.scheduled_test_signal(self.env.rank)
        limit = 60.0 * tc.max_minutes if tc.max_minutes is not None else None
        self._t_start = time.perf_counter()
        over_at_start = limit is not None and self.step < tc.max_steps and self.seconds_before >= limit  # same on every rank
        if over_at_start:
            status = "time_limit"
            log.warning("not training: the run already trained %.0f s, train.max_minutes=%s (raise it to continue)",
                        self.seconds_before, tc.max_minutes)
        while self.step < tc.max_steps and not over_at_start:
            if self_signal and self.step + 1 == self_signal[0]:
                os.kill(os.getpid(), self_signal[1])  # test hook: a signal arriving during this step
            poisoned = False
            local_tokens = 0
            # the step's loss and non-finite count stay on the device: no host synchronisation and no
            # collective between micro-batches, one of each per optimizer step (below, at the last)
            sums = torch.zeros(2, dtype=torch.float64, device=self.engine.device)
            self.data_step += 1
            self.engine.set_lr_scale(tc.inject_spike_lr_factor if self.data_step in tc.inject_spike_at_batches
                                     else self.spikes.lr_factor(self.step))
            for micro in range(self.grad_accum):
                t = time.perf_counter()
                batch = next(it)
                window["data_s"] += time.perf_counter() - t
                local_tokens += _real_tokens(batch)
                loss = self.engine.forward(batch).loss
                if self.step + 1 in tc.inject_nonfinite_at_steps:
                    loss = loss * float("nan")
                d = loss.detach().double()
                sums += torch.stack([d, (~torch.isfinite(d)).double()])
                if micro == self.grad_accum - 1:
                    # [Σ loss over micro-batches and ranks, non-finite count, tokens, ranks preempted, ranks
                    # interrupted, ranks past train.max_minutes]: the step's one collective (a stop signal
                    # received later is seen at the next step)
                    late = limit is not None and self.train_seconds() >= limit
                    host = torch.tensor([float(local_tokens), *self.stop_requests.flags(), float(late)], dtype=torch.float64)
                    total = distributed.all_reduce_tensor(torch.cat([sums, host.to(sums.device)]))
                    loss_total, bad, step_tokens, preempt_any, interrupt_any, late_any = total.tolist()
                    if bad > 0:  # a non-finite loss on some rank: make this last micro-batch's gradients
                        poisoned = True  # non-finite on every rank, so every rank discards the whole step
                        loss = loss * float("nan")
                self.engine.backward(loss)
                self.engine.step(skip=poisoned and micro == self.grad_accum - 1)
            self.step += 1
            step_loss = loss_total / self.grad_accum
            self.tokens_seen += int(step_tokens)
            window["tokens"] += int(step_tokens)
            spiking = False
            applied = self.engine.step_applied()
            if not poisoned and not applied and tc.precision == "fp16":
                # dynamic loss scaling: the scaled gradients overflowed and DeepSpeed lowered the scale; the
                # loss itself was finite, so this is not divergence (common in the first steps of fp16)
                self.loss_scale_skipped += 1
                log.info("step %d: fp16 gradient overflow; update skipped and loss scale lowered", self.step)
            elif poisoned or not applied:
                self.nonfinite_total += 1
                consecutive_bad += 1
                log.warning("step %d: non-finite loss; update skipped (%d in a row)", self.step, consecutive_bad)
                if consecutive_bad >= tc.max_consecutive_nonfinite:
                    if not self._recover(it, self.step - consecutive_bad + 1, float("nan"),
                                         f"{consecutive_bad} non-finite losses in a row"):
                        raise TrainingError(f"{consecutive_bad} non-finite losses in a row at step {self.step}; stopping "
                                            f"(last good checkpoint left intact under {self.root})")
                    consecutive_bad = 0
                    window.update(loss=0.0, steps=0, tokens=0, data_s=0.0, t0=time.perf_counter())
                    continue
            else:
                consecutive_bad = 0
                loss = step_loss / self.env.world_size
                window["loss"] += loss
                window["steps"] += 1
                if self.spikes.cfg.enabled:
                    v = self.spikes.observe(self.step, loss)
                    spiking = v.spike
                    if v.recover:
                        if self._recover(it, v.first_step, loss, f"loss {loss:.4f} > threshold {v.threshold:.4f} "
                                                                 f"(median {v.median:.4f})"):
                            window.update(loss=0.0, steps=0, tokens=0, data_s=0.0, t0=time.perf_counter())
                            continue
                        self.spikes.detector.reset_streak()
            if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                self._log_window(window)
            t_aside = time.perf_counter()  # evaluation and checkpointing are not training throughput
            if self.step % tc.eval_every == 0 or self.step == tc.max_steps:
                self._evaluate_and_log()
            signalled = distributed.StopRequests.status(preempt_any, interrupt_any)  # some rank got a stop signal
            stop = signalled is not None
            if stop and self.step < tc.max_steps:  # a signal during the last step: the run is complete all the same
                status = signalled
            elif late_any > 0 and self.step < tc.max_steps:
                stop, status = True, "time_limit"
            elif tc.stop_at_step is not None and self.step >= tc.stop_at_step and self.step < tc.max_steps:
                stop, status = True, "stopped"
            if (self.step % tc.save_every == 0 or self.step == tc.max_steps or stop) and not (consecutive_bad or spiking):
                self.save()  # never during non-finite losses or a spike: the last good checkpoint stays latest
            window["t0"] += time.perf_counter() - t_aside
            if stop:
                log.warning("stopping at step %d (%s); %s", self.step, status,
                            f"raise train.max_minutes ({tc.max_minutes}) and run the same command to continue"
                            if status == "time_limit" else "resume by running the same command")
                break
        return status

    def _measured(self) -> dict[str, Any]:
        """What this run measured of itself, for ``result.json`` (a collective: every rank calls it).

        ``memory``: per rank, the RSS when the trainer started (the runtime: imports, the process
        group), the peak RSS, and on CUDA the peak allocated (GiB); ``throughput``: medians over the
        log windows after the first (s/step, tokens/s, MFU) and the peak the MFU is against;
        ``train/energy_kwh``, ``train/co2_kg`` (and ``train/cost``) with ``emissions`` (how).
        """
        mine = [self.baseline_rss / 2**30, peak_rss_bytes() / 2**30]
        if self.engine.device.type == "cuda":
            mine.append(torch.cuda.max_memory_allocated(self.engine.device) / 2**30)
        per_rank = distributed.gather_to_main(mine)
        energy = self.energy.state() if self.energy.enabled else None
        out: dict[str, Any] = {}
        if energy:
            out.update({"train/energy_kwh": energy["energy_kwh"], "train/co2_kg": energy["co2_kg"],
                        **({"train/cost": energy["cost"]} if "cost" in energy else {}), "emissions": energy})
        if per_rank is not None:
            out["memory"] = {
                "baseline_rss_gib": [r[0] for r in per_rank], "peak_rss_gib": [r[1] for r in per_rank],
                **({"cuda_max_allocated_gib": [r[2] for r in per_rank]} if len(per_rank[0]) > 2 else {}),
                "baseline": "RSS when the trainer started: after imports and process-group init, before the data "
                            "loader and model were built"}
        if self.collectives:
            out["collectives"] = self.collectives
        steady = self.windows[1:] or self.windows
        if steady:
            out["throughput"] = {"step_time_s": median([w[0] for w in steady]),
                                 "tokens_per_second": median([w[1] for w in steady]),
                                 "mfu": median([w[2] for w in steady]), "windows": len(steady),
                                 "peak_tflops_per_rank": self.peak / 1e12}
        return out

    # -- loss-spike recovery ---------------------------------------------------------------
    def _recover(self, it, first_step: int, loss: float, why: str) -> bool:
        """Roll back after a loss spike (or a streak of non-finite losses) first seen at ``first_step``.

        :class:`zerolm.pretrain.recovery.SpikeRecovery` chooses the checkpoint (the newest intact one
        at a step ≤ :func:`spikes.rollback_limit`) and records the recovery before anything changes;
        here the data stream is left where it is (plus ``skip_extra_batches``: the batches trained
        since that checkpoint are skipped) and the model, optimizer, LR schedule and counters go back
        to the checkpoint. Every rank calls it at the same step.

        Args:
            it: the training data iterator (drawn from for ``skip_extra_batches``).
            first_step: the first spiking step (or the first of the non-finite streak).
            loss: the step's loss (mean over ranks; ``nan`` for a non-finite streak).
            why: the reason, for the log and the record.

        Returns:
            True when the run rolled back; False when recovery is off or no checkpoint is old enough
            (nothing changed).

        Raises:
            TrainingError: ``max_recoveries`` recoveries already happened within the last
                ``recovery_window_steps`` global batches (the checkpoints are left intact).
        """
        spikes = self.spikes
        if not spikes.cfg.enabled:
            return False
        target = spikes.target(self.step, first_step, self.data_step, why)
        if target is None:
            return False
        for _ in range(spikes.cfg.skip_extra_batches * self.grad_accum):
            next(it)
        self.data_step += spikes.cfg.skip_extra_batches
        states = distributed.gather_to_main(self.loader.state_dict())
        record, moved = spikes.commit(step=self.step, first_step=first_step, why=why, loss=loss, target=target,
                                      data_step=self.data_step, global_batch=self.global_batch, data_states=states)
        self.written -= set(moved)
        rec = ckpt.read_record(self.root, target)
        saved_world = (rec.get("run") or {}).get("world_size") or rec.get("world_size")
        self.engine.load(self.root, target, saved_world_size=saved_world)
        self.step, self.tokens_seen = rec["step"], rec["tokens_seen"]
        self.nonfinite_total = rec.get("nonfinite_skipped", 0)
        self.metrics = rec.get("metrics", {})
        self.data_step = spikes.rolled_back(rec, record)
        if self.tracker:
            self.tracker.rewind(self.step)
            self.tracker.log({"spike/recoveries": len(spikes.records), "spike/detected_at_step": record["detected_at_step"],
                              "spike/skipped_samples": record["skipped_samples"],
                              **({"spike/loss": loss} if math.isfinite(loss) else {})}, self.step)
        return True

    def _log_window(self, w: dict[str, Any]) -> None:
        dt = time.perf_counter() - w["t0"]
        tps = w["tokens"] / dt
        m = {
            "train/lr": self.engine.lr,
            "train/tokens_per_second": tps,
            "train/mfu": mfu(self.parts.flops_per_token, tps / self.env.world_size, self.peak),
            "train/step_time_s": dt / max(w["steps"], 1),
            "train/data_wait_fraction": w["data_s"] / dt,
            "train/tokens_seen": self.tokens_seen,
            "train/nonfinite_skipped": self.nonfinite_total,
            **memory_stats(self.engine.device),
            **self.energy.totals(),
        }
        self.windows.append((m["train/step_time_s"], tps, m["train/mfu"]))
        if w["steps"]:  # mean over the window's applied steps (a skipped step has no loss to show)
            m["train/loss"] = w["loss"] / w["steps"]
        gn = self.engine.grad_norm()
        if gn is not None and math.isfinite(gn):
            m["train/grad_norm"] = gn
        stats = self.loader.stats()
        for kind in ("skipped_documents", "skipped_files"):
            for reason, n in stats.get(kind, {}).items():
                m[f"data/{kind}/{reason}"] = n
        if self.tracker:
            self.tracker.log(m, self.step)
            log.info("step %d/%d | loss %.4f | lr %.2e | grad_norm %s | %.0f tok/s | MFU %.1f%% | %.3f s/step | data wait %.0f%%",
                     self.step, self.cfg.train.max_steps, m.get("train/loss", float("nan")), m["train/lr"], f"{gn:.3f}" if gn is not None else "-",
                     tps, 100 * m["train/mfu"], m["train/step_time_s"], 100 * m["train/data_wait_fraction"])
        w.update(loss=0.0, steps=0, tokens=0, data_s=0.0, t0=time.perf_counter())


def train(cfg: ZeroLMConfig, build=pretraining_components, downstream=None) -> dict[str, Any]:
    """Run pretraining as this process's part of the job (any launcher, or none) and shut the
    process group down cleanly at the end. Returns the summary (rank 0 also writes
    ``RUN_DIR/result.json``). ``downstream``: the in-loop evaluator of ``train.eval_tasks`` (see
    :class:`Trainer`)."""
    env = distributed.detect()
    distributed.init(env)
    try:
        trainer = Trainer(cfg, env, build, downstream)
        try:
            result = trainer.run()
        finally:
            trainer.release()
        if env.is_main:
            write_json(Path(cfg.train.run_dir) / "result.json", result)
        return result
    finally:
        distributed.shutdown()
