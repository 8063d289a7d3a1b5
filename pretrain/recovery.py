"""Loss-spike recovery: a run's spike state and the decisions of a rollback (``train.spike_recovery``).

Three owners, one concern each: :mod:`zerolm.pretrain.spikes` owns the *test* (is this step's loss a
spike?), this module owns the *recovery* — the detector's history, the recoveries already made, the
LR-scale window, which checkpoint to roll back to, whether the run may recover again, and the record
written before anything changes — and :mod:`zerolm.pretrain.checkpoint` owns the files (the
recovery records, the rolled-back checkpoints set aside). The trainer only moves its own state: it
skips the data, loads the engine from the chosen checkpoint and resets its counters
(:meth:`zerolm.pretrain.trainer.Trainer._recover`).

The recipe is PaLM's manual one (Chowdhery et al. 2022, §5.1: restart ~100 steps before the spike
and skip 200–500 batches), made automatic.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from zerolm.config import SpikeRecoveryConfig
from zerolm.errors import TrainingError
from zerolm.pretrain import checkpoint as ckpt
from zerolm.pretrain.distributed import DistEnv, broadcast_from_main
from zerolm.pretrain.spikes import SpikeDetector, Verdict, recoveries_in_window, rollback_limit

log = logging.getLogger(__name__)


class SpikeRecovery:
    """The loss-spike state of one run, kept identical on every rank, and the steps of a rollback.

    Args:
        cfg: ``train.spike_recovery``.
        root: the run's ``checkpoints`` folder (recovery records are read from and written there).
        env: this process's place in the job.

    Attributes:
        detector: the online spike test (:class:`zerolm.pretrain.spikes.SpikeDetector`).
        records: the recoveries of this run so far (``checkpoints/zerolm_recoveries.json``), oldest first.
        lr_scale_until: optimizer steps before this one train at ``lr_scale`` × the schedule.
    """

    def __init__(self, cfg: SpikeRecoveryConfig, root: Path, env: DistEnv) -> None:
        self.cfg, self.root, self.env = cfg, root, env
        self.detector = SpikeDetector(cfg)
        self.records: list[dict[str, Any]] = ckpt.read_recoveries(root)
        self.lr_scale_until = 0

    # -- per step ------------------------------------------------------------------------
    def lr_factor(self, step: int) -> float:
        """The factor on the scheduled LR for the optimizer step after ``step`` (1.0 outside the window)."""
        return self.cfg.lr_scale if step < self.lr_scale_until else 1.0

    def observe(self, step: int, loss: float) -> Verdict:
        """Test an applied step's loss (the mean over ranks) and log a spike; see :meth:`SpikeDetector.observe`."""
        v = self.detector.observe(step, loss)
        if v.spike:
            log.warning("step %d: loss %.4f above the spike threshold %.4f (median %.4f of the last %d steps); "
                        "%d of %d before a rollback", step, loss, v.threshold, v.median,
                        len(self.detector.history), v.streak, self.cfg.patience)
        return v

    # -- checkpoints -----------------------------------------------------------------------
    def checkpoint_fields(self) -> dict[str, Any]:
        """What a checkpoint's completion record carries for the spike state (restored by :meth:`restore`)."""
        return {"spike_detector": self.detector.state_dict(), "lr_scale_until": self.lr_scale_until}

    def keep_before(self, step: int) -> int | None:
        """The newest step a checkpoint must be at or before to stay a rollback target when saving at
        ``step`` (:func:`checkpoint.prune` keeps one); None when recovery is off."""
        return step - self.cfg.rollback_margin_steps if self.cfg.enabled else None

    def restore(self, rec: dict[str, Any], recovery: dict[str, Any] | None) -> int:
        """Set the detector's history and the LR-scale window as of checkpoint record ``rec`` — or,
        when a recovery rolled back to it, as that recovery left them.

        Returns:
            The data position to continue from: global batches already drawn from the data stream.
        """
        self.detector.load_state_dict(rec.get("spike_detector"))
        self.lr_scale_until = int(rec.get("lr_scale_until", 0))
        data_step = int(rec.get("data_step", rec["step"]))
        if recovery:
            data_step = int(recovery["data_step"])
            self.lr_scale_until = int(recovery["lr_scale_until"])
        return data_step

    # -- a rollback ------------------------------------------------------------------------
    def target(self, step: int, first_step: int, data_step: int, why: str) -> str | None:
        """The checkpoint to roll back to for a spike first seen at ``first_step``: the newest intact
        one at a step ≤ :func:`spikes.rollback_limit` (rank 0 decides, every rank gets it).

        Returns:
            Its tag, or None when none is old enough (logged; the run trains on).

        Raises:
            TrainingError: ``max_recoveries`` recoveries already happened within the last
                ``recovery_window_steps`` global batches (nothing is changed; the checkpoints stay).
        """
        limit = rollback_limit(first_step, self.cfg.rollback_margin_steps)
        good = None
        if self.env.is_main:
            tags = [t for t in ckpt.list_tags(self.root) if ckpt.step_of(t) <= limit and ckpt.check(self.root, t) is None]
            good = tags[-1] if tags else None
        tag = broadcast_from_main(good)
        if tag is None:
            log.warning("step %d: %s, but no checkpoint at step ≤ %d to roll back to; training on", step, why, limit)
            return None
        recent = recoveries_in_window(self.records, data_step, self.cfg.recovery_window_steps)
        if recent >= self.cfg.max_recoveries:
            raise TrainingError(
                f"step {step}: {why}; {recent} loss-spike recoveries within the last {self.cfg.recovery_window_steps} "
                f"global batches already (train.spike_recovery.max_recoveries={self.cfg.max_recoveries}): stopping. The "
                f"checkpoints are intact (newest before the spike: {self.root / tag}); look at the data around "
                f"global batch {data_step} and the LR, then run the same command to continue from the newest one")
        return tag

    def commit(self, *, step: int, first_step: int, why: str, loss: float, target: str, data_step: int,
               global_batch: int, data_states: list[dict[str, Any]] | None) -> tuple[dict[str, Any], list[str]]:
        """Record the recovery in the run (before anything changes, so that a restart skips the same
        batches), then set aside the checkpoints newer than ``target``. Every rank calls it.

        Args:
            step: the step the spike was detected at; first_step: its first spiking step.
            why: the reason (log, record); loss: the step's loss (``nan`` for a non-finite streak).
            target: the checkpoint rolled back to (:meth:`target`).
            data_step: global batches drawn from the data stream so far (the skipped window ends here).
            global_batch: samples per global batch (for ``skipped_samples``).
            data_states: every rank's data-loader state at ``data_step`` (rank 0; None elsewhere).

        Returns:
            ``(record, moved)``: the recovery record (``detected_at_step``, ``rolled_back_to``,
            ``rollback_step``, ``skipped_batches`` [first, last], ``skipped_samples``, ``data_step``,
            ``lr_scale``, ``lr_scale_until``, …) and the tags set aside as rolled back.
        """
        rec = ckpt.read_record(self.root, target)
        back_to = int(rec.get("data_step", rec["step"]))
        record = {"detected_at_step": step, "first_spike_step": first_step, "reason": why,
                  "loss": loss if math.isfinite(loss) else None, "rolled_back_to": target, "rollback_step": rec["step"],
                  "skipped_batches": [back_to + 1, data_step], "skipped_samples": (data_step - back_to) * global_batch,
                  "data_step": data_step, "lr_scale": self.cfg.lr_scale,
                  "lr_scale_until": rec["step"] + self.cfg.lr_scale_steps, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        if self.env.is_main:
            ckpt.add_recovery(self.root, {**record, "data_states": data_states})
        dist.barrier()
        if os.environ.get("ZEROLM_TEST_EXIT_IN_RECOVERY"):  # test hook: killed after recording, before rolling back
            os._exit(17)
        moved = broadcast_from_main(ckpt.discard_rolled_back(self.root, target, data_step) if self.env.is_main else None)
        return record, list(moved)

    def rolled_back(self, rec: dict[str, Any], record: dict[str, Any]) -> int:
        """After the engine loaded the target checkpoint (record ``rec``): restore the spike state as
        the recovery leaves it, count the recovery and log it. Returns the data position (:meth:`restore`)."""
        data_step = self.restore(rec, record)
        self.records.append(record)
        lr_note = (f"; LR × {self.cfg.lr_scale} until step {record['lr_scale_until']}"
                   if self.cfg.lr_scale_steps and self.cfg.lr_scale < 1 else "")
        log.warning("step %d: %s — loss spike recovery %d: rolled back to %s (step %d), skipped global batches %d–%d "
                    "(%d samples)%s", record["detected_at_step"], record["reason"], len(self.records),
                    self.root / record["rolled_back_to"], rec["step"], *record["skipped_batches"],
                    record["skipped_samples"], lr_note)
        return data_step

    def summary(self) -> list[dict[str, Any]]:
        """The recoveries for ``result.json`` (without the saved data-loader states)."""
        return [{k: v for k, v in r.items() if k != "data_states"} for r in self.records]
