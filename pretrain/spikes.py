"""Loss-spike detection: the online test that decides when a run rolls back.

Large runs diverge in spikes: the loss jumps far above its recent level and either returns slowly or
never. PaLM (Chowdhery et al. 2022, §5.1) and OPT (Zhang et al. 2022, logbook) handled them by hand:
restart from a checkpoint before the spike and skip the batches around it. zerolm does it for you:
this module owns the *test* (is this step's loss a spike?), :mod:`zerolm.pretrain.recovery` owns the
*recovery* (which checkpoint, whether the run may recover again, the record), the trainer moves its
own state back (engine, counters; the data is skipped, not rewound) and
:mod:`zerolm.pretrain.checkpoint` owns the recovery records' files in the run directory.

The test is robust to the loss' own noise and to earlier spikes in the window: a loss ``x`` is a
spike when, with ``n ≥ min_history`` earlier applied losses in the last ``window`` steps,

    x > median + k · 1.4826 · MAD    and    x > median · (1 + r)

(MAD = median absolute deviation, ×1.4826 makes it the standard deviation of normal noise;
Rousseeuw & Croux 1993; the Hampel filter). ``k`` = ``threshold_mads``, ``r`` =
``min_relative_increase`` (a floor for flat stretches, where MAD is ~0). A spike is not added to the
history, so a run of spikes cannot raise the bar for itself. A falling loss is never a spike.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any

from zerolm.config import SpikeRecoveryConfig

#: MAD → standard deviation of normally distributed values.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Verdict:
    """What :meth:`SpikeDetector.observe` decided about one step's loss.

    Attributes:
        spike: the loss is above the threshold (not added to the history).
        threshold: the bar it was compared with (``inf`` while the history is shorter than
            ``min_history``).
        median: the history's median (``nan`` with no history).
        streak: spiking steps in a row, this one included (0 when ``spike`` is false).
        first_step: the step at which the current streak began (None when ``spike`` is false).
        recover: the streak reached ``patience``: the caller rolls back now.
    """

    spike: bool
    threshold: float
    median: float
    streak: int = 0
    first_step: int | None = None
    recover: bool = False


class SpikeDetector:
    """Online robust spike test over the last ``cfg.window`` applied losses (see module docstring).

    Args:
        cfg: the ``train.spike_recovery`` section.

    The state (history and streak) is a plain dict (:meth:`state_dict`) that the trainer keeps in
    every checkpoint's completion record, so that a resumed or rolled-back run tests the same way as
    the uninterrupted one.
    """

    def __init__(self, cfg: SpikeRecoveryConfig) -> None:
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.window)
        self.streak = 0
        self.first_step: int | None = None

    def threshold(self) -> tuple[float, float]:
        """``(threshold, median)`` of the current history; ``(inf, median)`` while it is shorter
        than ``min_history``."""
        if not self.history:
            return float("inf"), float("nan")
        values = list(self.history)
        med = statistics.median(values)
        if len(values) < self.cfg.min_history:
            return float("inf"), med
        mad = statistics.median(abs(v - med) for v in values)
        return max(med + self.cfg.threshold_mads * MAD_TO_SIGMA * mad, med * (1.0 + self.cfg.min_relative_increase)), med

    def observe(self, step: int, loss: float) -> Verdict:
        """Test the loss of optimizer ``step`` (a finite number, the same on every rank) and record it.

        A loss below the threshold joins the history and ends any streak; a spike does not join it.

        Returns:
            The :class:`Verdict`; ``recover`` is true when ``patience`` spiking steps ran in a row.
        """
        thr, med = self.threshold()
        if loss > thr:
            if self.streak == 0:
                self.first_step = step
            self.streak += 1
            return Verdict(True, thr, med, self.streak, self.first_step, self.streak >= self.cfg.patience)
        self.history.append(float(loss))
        self.streak, self.first_step = 0, None
        return Verdict(False, thr, med)

    def reset_streak(self) -> None:
        """Forget the current streak (after a recovery)."""
        self.streak, self.first_step = 0, None

    def state_dict(self) -> dict[str, Any]:
        """``{"history": [...], "streak": n, "first_step": s}`` (JSON-serialisable)."""
        return {"history": list(self.history), "streak": self.streak, "first_step": self.first_step}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict` output (None or {} = empty history)."""
        state = state or {}
        self.history = deque((float(v) for v in state.get("history", [])), maxlen=self.cfg.window)
        self.streak = int(state.get("streak", 0))
        self.first_step = state.get("first_step")


def rollback_limit(first_spike_step: int, margin: int) -> int:
    """The newest checkpoint step a recovery may roll back to: ``first_spike_step − 1 − margin``.

    The loss of step ``s`` is computed before step ``s``'s update, on the weights that step ``s − 1``
    produced; so the update that caused a spike first seen at step ``s`` is step ``s − 1`` or earlier
    and a checkpoint of step ``s − 1`` may already hold the damage. ``margin`` (≥ 0) steps further
    back allow for a divergence that builds up before it shows.
    """
    return first_spike_step - 1 - margin


def recoveries_in_window(records: list[dict[str, Any]], data_step: int, window: int) -> int:
    """How many ``records`` (recovery records, each with ``data_step``: the global batches drawn when
    it happened) lie within the last ``window`` global batches before ``data_step`` (inclusive)."""
    return sum(1 for r in records if data_step - int(r.get("data_step", 0)) < window)


__all__ = ["MAD_TO_SIGMA", "SpikeDetector", "Verdict", "recoveries_in_window", "rollback_limit"]
