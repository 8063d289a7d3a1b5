"""Experiment tracking on rank 0: Weights & Biases plus a local ``metrics.jsonl`` and loss curve.

W&B never waits on the network by default: ``tracking.wandb_mode=auto`` runs online only when
an API key or a login is present, else offline (``wandb sync RUN_DIR/wandb/offline-run-*``
uploads it later). A resumed run continues the same W&B run id. Secrets are scrubbed from
everything written.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

from zerolm.config import TrackingConfig

log = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"(token|secret|password|api_?key|credential)", re.I)


def scrub(obj: Any) -> Any:
    """A copy of a nested dict/list with the values of secret-looking keys replaced by ``***``
    and any literal value of ``WANDB_API_KEY``/``HF_TOKEN`` in strings removed."""
    secrets = [v for k, v in os.environ.items() if _SECRET_KEY.search(k) and v and len(v) >= 8]
    if isinstance(obj, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        for s in secrets:
            obj = obj.replace(s, "***")
    return obj


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
        config: the resolved config (logged as the W&B run config, scrubbed).
        run_id: a W&B run id to continue (from the checkpoint), or None for a new run.
        resume_step: on resume, metrics.jsonl lines after this step (written by the interrupted
            run after its last checkpoint) are dropped so the file matches the resumed history.
    """

    def __init__(self, cfg: TrackingConfig, run_dir: Path, config: dict[str, Any], run_id: str | None,
                 resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step is not None and self.metrics_path.exists():
            kept = [l for l in self.metrics_path.read_text().splitlines() if l and json.loads(l).get("step", 0) <= resume_step]
            self.metrics_path.write_text("".join(l + "\n" for l in kept))
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
            self.run = wandb.init(
                project=cfg.project, entity=cfg.entity, name=cfg.run_name, tags=cfg.tags or None,
                id=run_id or secrets.token_hex(4), resume="allow", mode=self.mode,
                dir=str(self.run_dir), config=scrub(config),
            )
            self.run_id = self.run.id
            log.info("W&B run %s (%s)", self.run_id, self.mode)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record ``metrics`` (flat dict of numbers, namespaced keys) at optimizer ``step``."""
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

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
        out = self.run_dir / "loss.png"
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out

    def finish(self) -> None:
        """Plot and close the W&B run."""
        self.plot()
        if self.run is not None:
            self.run.finish()
