"""Experiment tracking on rank 0: Weights & Biases plus a local ``metrics.jsonl`` and loss curve.

W&B never waits on the network by default: ``tracking.wandb_mode=auto`` runs online only when
an API key or a login is present, else offline (``wandb sync RUN_DIR/wandb/offline-run-*``
uploads it later). A resumed run continues the same W&B run id.

The W&B run config holds the config sections the job uses (:data:`JOB_SECTIONS`: a pretraining
run logs ``data``, ``model``, ``train`` and ``tracking``, not the finetuning defaults), and
everything handed to W&B — config, run name, tags and the command line W&B records — goes
through the one secret redactor, :mod:`zerolm.redact`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Iterator

from zerolm import fsutil
from zerolm.config import TrackingConfig, ZeroLMConfig
from zerolm.redact import redact, redact_text

log = logging.getLogger(__name__)

#: The W&B metric that holds the optimizer step (the x-axis of every chart).
STEP_METRIC = "optimizer_step"

# Which config sections (and, where only a few fields matter, which fields) each job reads; its W&B
# run config holds exactly these. ``None`` = the whole section.
JOB_SECTIONS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "pretrain": {"data": None, "model": None, "train": None, "tracking": None},
    "classify": {"finetune": None, "data": ("micro_batch_size", "seed"), "train": None, "tracking": None},
    "sentiment_control": {"sentiment": None, "data": ("micro_batch_size", "seed"), "train": None, "tracking": None},
    "sentiment_ppo": {"sentiment": None, "train": ("run_dir",), "tracking": None},
    "sentiment_rloo": {"sentiment": None, "train": ("run_dir",), "tracking": None},
}


def run_config(cfg: ZeroLMConfig, job: str | None) -> dict[str, Any]:
    """The part of the resolved config that ``job`` uses, as JSON-like data (the W&B run config).

    Args:
        cfg: the resolved config.
        job: a key of :data:`JOB_SECTIONS`, or ``None`` for every section.

    Raises:
        ValueError: an unknown job name.
    """
    full = cfg.model_dump(mode="json")
    if job is None:
        return full
    if job not in JOB_SECTIONS:
        raise ValueError(f"unknown job {job!r} (known: {', '.join(JOB_SECTIONS)})")
    return {name: (full[name] if fields is None else {f: full[name][f] for f in fields})
            for name, fields in JOB_SECTIONS[job].items()}


@contextlib.contextmanager
def _redacted_argv() -> Iterator[None]:
    """W&B records ``sys.argv`` as run metadata when the run starts: show it the redacted command line
    (a secret in an override would otherwise be uploaded) and restore the real one afterwards."""
    saved = sys.argv
    sys.argv = [redact_text(a) for a in saved]
    try:
        yield
    finally:
        sys.argv = saved


def _wandb_mode(cfg: TrackingConfig) -> str:
    if cfg.wandb_mode != "auto":
        return cfg.wandb_mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        if "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"


class Tracker:
    """Logs metrics to W&B (if enabled), ``metrics.jsonl`` and ``loss.png`` in the run dir.

    Args:
        cfg: the tracking section.
        run_dir: the run directory.
        config: the W&B run config (normally :func:`run_config` of the job); redacted here.
        run_id: a W&B run id to continue (from the checkpoint), or None for a new run.
        resume_step: on resume, metrics.jsonl lines after this step (written by the interrupted
            run after its last checkpoint) are dropped so the file matches the resumed history.
    """

    def __init__(self, cfg: TrackingConfig, run_dir: Path, config: dict[str, Any], run_id: str | None,
                 resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            self.rewind(resume_step)
        elif resume_step is None and self.metrics_path.exists():
            self.metrics_path.unlink()
        self.mode = _wandb_mode(cfg)
        self.run = None
        self.run_id = run_id
        if self.mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_DIR", str(self.run_dir))
            os.environ.setdefault("WANDB_CACHE_DIR", str(self.run_dir / ".wandb_cache"))
            os.environ.setdefault("WANDB_SILENT", "true")
            with _redacted_argv():
                self.run = wandb.init(
                    project=cfg.project, entity=cfg.entity,
                    name=redact_text(cfg.run_name) if cfg.run_name else None,
                    tags=[redact_text(t) for t in cfg.tags] or None,
                    id=run_id or secrets.token_hex(4), resume="allow", mode=self.mode,
                    dir=str(self.run_dir), config=redact(config),
                )
            self.run_id = self.run.id
            # charts use the optimizer step as x-axis; W&B's own step only counts log calls, so a
            # loss-spike rollback (the optimizer step goes back) still logs
            self.run.define_metric(STEP_METRIC)
            self.run.define_metric("*", step_metric=STEP_METRIC)
            log.info("W&B run %s (%s)", self.run_id, self.mode)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record ``metrics`` (flat dict of numbers, namespaced keys) at optimizer ``step``."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log({**metrics, STEP_METRIC: step})

    def rewind(self, step: int) -> None:
        """A loss-spike recovery rolled the run back to optimizer ``step``: drop the ``metrics.jsonl``
        lines after it (as a resume from that checkpoint would), so the file holds the run's history."""
        if self.metrics_path.exists():
            kept = [l for l in self.metrics_path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= step]
            fsutil.write_text(self.metrics_path, "".join(l + "\n" for l in kept))

    def summary(self, values: dict[str, Any]) -> None:
        """Final values (W&B run summary)."""
        if self.run is not None:
            self.run.summary.update(values)

    def plot(self) -> Path | None:
        """Write ``loss.png`` (train loss, and eval loss where logged) from ``metrics.jsonl``."""
        if not self.metrics_path.exists():
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(l) for l in self.metrics_path.read_text().splitlines() if l]
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, style in (("train/loss", "-"), ("eval/loss", "o-")):
            pts = [(r["step"], r[key]) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), style, label=key, markersize=4)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(self.run_dir.name)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = fsutil.save_figure(fig, self.run_dir / "loss.png", dpi=110)
        plt.close(fig)
        return out

    def finish(self) -> None:
        """Plot and close the W&B run."""
        self.plot()
        if self.run is not None:
            self.run.finish()
