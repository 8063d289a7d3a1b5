"""``zerolm finetune sentiment``: the job that steers a causal LM toward a sentiment, exports it and
reports before vs after.

:func:`finetune_sentiment` checks the reward model, runs one method — ``control`` (control codes,
:mod:`finetune.sentiment_control`), ``ppo`` or ``rloo`` (:mod:`finetune.ppo`, :mod:`finetune.rloo`) — and, on rank 0, the report
(:mod:`finetune.sentiment_report`). It is the top of the sentiment modules: the methods, the
report and the export build on the primitives of :mod:`finetune.sentiment` and never import this.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from zerolm.config import ZeroLMConfig
from zerolm.errors import ConfigError, DataError
from zerolm.finetune.sentiment import resolve_target_label
from zerolm.fsutil import write_json
from zerolm.pretrain.distributed import is_main_process

log = logging.getLogger(__name__)


def check_reward(sc) -> str:
    """Fail fast (before any model or process group) on a missing reward folder or a target that maps
    to none of its labels. Returns the reward label of the target."""
    from transformers import AutoConfig

    if not sc.reward:
        raise ConfigError("sentiment.reward is required: a classifier folder from `zerolm finetune classify` (--reward)")
    if not Path(sc.reward).is_dir():
        raise DataError(f"sentiment.reward={sc.reward}: no such folder; train one first, e.g. `zerolm finetune classify` "
                        "(MiniLM on Rotten Tomatoes; exports runs/finetune/classify/hf)")
    try:
        conf = AutoConfig.from_pretrained(sc.reward)
    except (OSError, ValueError) as e:
        raise DataError(f"sentiment.reward={sc.reward}: not a Hugging Face model folder: {e}") from e
    return conf.id2label[resolve_target_label(conf.id2label, sc.target, sc.target_label, f"the reward model {sc.reward}")]


def report_threads() -> int:
    """Give rank 0's report the CPU threads of the node's other ranks, which have finished (the report
    runs on rank 0 alone): ``torch`` threads × ``LOCAL_WORLD_SIZE``, at most the CPUs this process may
    use. Returns the thread count set."""
    import os

    import torch

    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = max(1, min(cpus, torch.get_num_threads() * local))
    torch.set_num_threads(n)
    return n


def finetune_sentiment(cfg: ZeroLMConfig, report: bool = False, report_only: bool = False,
                       progress: bool = False) -> dict[str, Any]:
    """Steer ``cfg.sentiment.policy`` toward ``cfg.sentiment.target`` with ``method`` control or ppo,
    export it (``export_dir``, default ``RUN_DIR/hf``) and, with ``report``, write the before/after
    report on rank 0 (:func:`finetune.sentiment_report.sentiment_report`) — not after a preempted run
    (status ``preempted``: the grace period is for the checkpoint; the requeued run reports when it
    ends) nor after Ctrl-C (``interrupted``: the user asked to stop). ``report_only`` skips training and reports on an existing export. ``progress`` draws bars of the PPO steps and of the
    report's prompts (:func:`zerolm.pretrain.progress.progress_bar`: rank 0, stderr a terminal); the control
    method's trainer logs every ``log_every`` steps instead.

    Returns:
        The training summary (rank 0: also ``export_dir`` and, when reported, ``report``).

    Raises:
        ConfigError: no reward model or an unmappable target. DataError: unreadable models or data.
    """
    sc = cfg.sentiment
    reward_label = check_reward(sc)
    out = Path(sc.export_dir or Path(cfg.train.run_dir) / "hf")
    run_dir = Path(cfg.train.run_dir)
    if report_only:  # keep the training summary of the run, if any, and add the report to it
        previous = run_dir / "result.json"
        result: dict[str, Any] = json.loads(previous.read_text()) if previous.is_file() else {}
        result["export_dir"] = str(out)
    elif sc.method in ("ppo", "rloo"):
        from zerolm.finetune.ppo import train_ppo

        result = train_ppo(cfg, reward_label, progress=progress)
    else:
        from zerolm.finetune.sentiment_control import train_control

        result = train_control(cfg, reward_label)
    if not is_main_process():
        return result
    if report and not report_only and result.get("status") in ("preempted", "interrupted"):
        # a preempted job has the scheduler's grace period left, not the minutes a report takes, and Ctrl-C
        # asked to stop; the same command resumes, finishes and reports then
        log.warning("%s at step %s: no report now; the same command resumes the run and reports when it ends",
                    result["status"], result.get("steps", result.get("step")))
        report = False
    if report or report_only:
        from zerolm.finetune.sentiment_report import sentiment_report

        report_threads()
        rep = sentiment_report(cfg, out, progress=progress)
        result["report"] = {k: rep[k] for k in ("before", "before_with_code", "after", "delta", "judge_delta_vs_code", "json", "png") if k in rep}
    write_json(run_dir / "result.json", result, default=str)
    return result
