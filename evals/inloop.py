"""Downstream few-shot evals on the live model inside the pretraining loop (``train.eval_tasks``).

At every evaluation of the trainer (each ``train.eval_every`` steps and the last step),
:class:`DownstreamEvals` scores the configured tasks with the few-shot harness' own scoring loop
(:func:`evals.fewshot.evaluate_tasks`) on the model being trained — no export is written. The model is
wrapped as an :class:`evals.lm.LanguageModel` with the Hugging Face tokenizer ``zerolm export`` saves
beside the weights (:func:`zerolm.data_pipeline.tokenizer.model_tokenizer`), so the numbers equal
``zerolm eval fewshot`` on the export of that step's checkpoint (same tasks, ``limit``, shots and the
harness' default few-shot seed, 1234), up to float rounding — exactly for fp32 training; a bf16/fp16
run scores with its half-precision working weights, the export holds the fp32 master weights.

Data parallel: each rank scores documents ``rank, rank + world, …`` and the per-item records are
gathered with ``torch.distributed.all_gather_object`` on the trainer's process group, so 1 and N ranks
give the same numbers. At ZeRO-3 the parameters are gathered once per call
(:meth:`zerolm.pretrain.engine.Engine.full_parameters`), so that ranks scoring different numbers of
documents need no per-forward collective.

Metrics (flat, for ``metrics.jsonl``, W&B and the console): ``eval/<task>/<metric>`` for k = 0,
``eval/<task>/<metric>_<k>shot`` for k > 0, each with ``…_stderr`` (standard error of the mean) when
at least 2 documents are scored; ``eval/<task>/seconds`` and ``eval/downstream_seconds`` (the wall time
of the call, which the trainer keeps out of its throughput figures).

The trainer (``zerolm.pretrain``) does not import this module (evals sit above pretrain in the
layers): the pretraining entry point hands the class to it (``train(cfg, downstream=DownstreamEvals)``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.distributed as dist

from zerolm.config import ZeroLMConfig
from zerolm.errors import ConfigError
from zerolm.evals.fewshot import evaluate_tasks, load_tasks
from zerolm.evals.lm import LanguageModel
from zerolm.hf_models import model_kind

log = logging.getLogger(__name__)

FEWSHOT_SEED = 1234  # `zerolm eval fewshot --seed`'s default: the same few-shot draws as the CLI


def metric_key(task: str, metric: str, k: int) -> str:
    """``eval/<task>/<metric>`` for k = 0, ``eval/<task>/<metric>_<k>shot`` for k > 0."""
    return f"eval/{task}/{metric}" + (f"_{k}shot" if k else "")


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The flat metric dict of an :func:`evals.fewshot.evaluate_tasks` result (names: :func:`metric_key`;
    standard errors as ``<key>_stderr`` where defined)."""
    out: dict[str, float] = {}
    for task, by_k in result["results"].items():
        for k_str, entry in by_k.items():
            for metric, value in entry["metrics"].items():
                key = metric_key(task, metric, int(k_str))
                out[key] = float(value)
                if entry["stderr"].get(metric) is not None:
                    out[f"{key}_stderr"] = float(entry["stderr"][metric])
    return out


def _gather_lists(world: int):
    """``list → list``: every rank's list concatenated in rank order, on every rank (one
    ``all_gather_object`` on the default process group; the identity for one process)."""
    def gather(objs: list) -> list:
        if world == 1 or not dist.is_initialized():
            return list(objs)
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, list(objs))
        return [x for part in parts for x in part]
    return gather


class DownstreamEvals:
    """The configured downstream tasks, loaded once per run, scored on the live model on each call.

    Args:
        cfg: the run's resolved config (after the trainer's ``build``: ``train.eval_tasks``,
            ``train.eval_tasks_batch_size``, ``data.tokenizer_dir``, ``data.objective``).
        model: the model being trained (for its kind and positions; the weights are read at each call).
        rank, world_size: this process's data-parallel rank and the number of ranks.

    Raises:
        ConfigError: an unknown task (named), a bad task YAML, or a generation task for a masked LM.
        DataError: a task's data cannot be read or its few-shot pool is smaller than a requested k;
            the run's tokenizer cannot be loaded.
    """

    def __init__(self, cfg: ZeroLMConfig, model: torch.nn.Module, rank: int, world_size: int) -> None:
        from zerolm.data_pipeline.tokenizer import model_tokenizer

        self.items = list(cfg.train.eval_tasks)
        self.tasks = []
        for item in self.items:
            try:
                self.tasks.append(load_tasks([item.task], item.shots, item.limit)[0])
            except ConfigError as e:
                raise ConfigError(f"train.eval_tasks: {e}") from e
        self.kind = model_kind(model)
        if self.kind != "clm":
            gen = [t.name for t in self.tasks if t.config.output_type != "multiple_choice"]
            if gen:
                raise ConfigError(f"train.eval_tasks: {', '.join(gen)} generate text, which a masked LM does not do; "
                                  "use multiple-choice tasks (scored by pseudo-log-likelihood)")
        positions = getattr(model.config, "max_position_embeddings", None)
        self.tokenizer = model_tokenizer(cfg.data.tokenizer_dir, cfg.data.objective, positions)
        self.batch_size = cfg.train.eval_tasks_batch_size
        self.rank, self.world = rank, world_size
        self._gather = _gather_lists(world_size)

    def __call__(self, engine, step: int) -> dict[str, float]:
        """Score every task on ``engine``'s model; every rank calls it at the same step.

        Args:
            engine: the trainer's :class:`zerolm.pretrain.engine.Engine` (``eval``, ``train``,
                ``full_parameters``, ``device``). The model is put in eval mode, scored without
                gradients, and put back in train mode.
            step: the optimizer step (for the log lines).

        Returns:
            The flat metrics (see the module docstring), the same on every rank.
        """
        t0 = time.perf_counter()
        metrics: dict[str, float] = {}
        engine.eval()
        try:
            with engine.full_parameters() as module, torch.no_grad():
                lm = LanguageModel(module, self.tokenizer, self.kind, name=f"step {step}",
                                   batch_size=self.batch_size, device=engine.device)
                for item, task in zip(self.items, self.tasks):
                    t_task = time.perf_counter()
                    result = evaluate_tasks(lm, [task], item.shots, item.limit, FEWSHOT_SEED,
                                            rank=self.rank, world=self.world, gather=self._gather)
                    seconds = time.perf_counter() - t_task
                    task_metrics = flat_metrics(result)
                    metrics.update(task_metrics)
                    metrics[f"eval/{task.name}/seconds"] = seconds
                    if self.rank == 0:
                        log.info("step %d | %s", step, _task_line(task.name, result, seconds))
        finally:
            engine.train()
        metrics["eval/downstream_seconds"] = time.perf_counter() - t0
        return metrics


def _task_line(name: str, result: dict[str, Any], seconds: float) -> str:
    """``piqa (n=100): acc 0.6100 ± 0.0490, acc_norm … | 5-shot: acc … | 3.2 s``."""
    parts = []
    for k_str, entry in result["results"][name].items():
        vals = ", ".join(f"{m} {v:.4f}" + (f" ± {entry['stderr'][m]:.4f}" if entry["stderr"].get(m) is not None else "")
                         for m, v in entry["metrics"].items())
        parts.append(f"{k_str}-shot: {vals}" if k_str != "0" else vals)
    n = next(iter(result["results"][name].values()))["n"]
    return f"{name} (n={n}): " + " | ".join(parts) + f" | {seconds:.1f} s"
