"""What a training job plugs into the shared loop: :class:`Components` (model, data loaders, objective,
FLOPs per token …) and the pretraining job's builder :func:`pretraining_components` — a random-init model
of ``model.family`` / preset with the pipeline tokenizer's vocabulary, or, with ``model.init_from``, an
existing model and its own tokenizer (:mod:`zerolm.pretrain.init_from`); the packed streaming pipeline
for training and validation. Finetuning jobs build their own :class:`Components`
(:mod:`zerolm.finetune.classify`, :mod:`zerolm.finetune.sentiment_control`); the loop that trains them is
:mod:`zerolm.pretrain.trainer`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from zerolm.config import ZeroLMConfig
from zerolm.data_pipeline.loader import PackedDataLoader
from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
from zerolm.errors import ConfigError
from zerolm.pretrain import distributed, init_from
from zerolm.pretrain.models import (build_model, count_parameters, describe_model, flops_per_token, objective_of,
                                    resolve_model_config, special_ids_of)
from zerolm.pretrain.objectives import Objective, get_objective

log = logging.getLogger(__name__)


@dataclass
class Components:
    """What a training job plugs into the shared loop (pretraining builds these from the config;
    finetuning builds its own).

    Attributes:
        model: the ``transformers`` model, initialised identically on every rank.
        train_loader: iterable of batch dicts of ``(micro_batch_size, seq_len)`` tensors with
            ``state_dict()``, ``load_state_dict()`` and ``stats()`` (see ``PackedDataLoader``).
        make_eval_loader: returns a fresh finite iterable of validation batches for this rank.
        objective: turns model outputs into evaluation sums and metrics.
        description: one line for the log (architecture, parameter count).
        flops_per_token: training FLOPs per token (for MFU).
        tokens_per_sample: tokens in one full sequence (shown in the run summary; tokens/s and
            tokens seen count the real tokens of each batch: its attention mask's ones).
        parameters: parameter count.
        job: the job's name in :data:`pretrain.tracking.JOB_SECTIONS` (which config sections its W&B
            run config holds); ``None`` = the whole config.
        init_state: a checkpoint whose optimizer state and step count a fresh run continues
            (``model.init_optimizer=checkpoint``; :attr:`pretrain.init_from.InitSource.checkpoint`).
    """

    model: torch.nn.Module
    train_loader: Any
    make_eval_loader: Callable[[], Iterable[dict[str, torch.Tensor]]]
    objective: Objective
    description: str
    flops_per_token: float
    tokens_per_sample: int
    parameters: int
    job: str | None = None
    init_state: dict[str, Any] | None = None


def _continued_model(cfg: ZeroLMConfig, env: distributed.DistEnv):
    """``model.init_from``: the config with the model's architecture (and its tokenizer as
    ``data.tokenizer_dir`` when it brings one), the pipeline tokenizer, and the loaded model
    (:mod:`zerolm.pretrain.init_from`). Rank 0 exports a zerolm run to start from; the others wait."""
    run_dir = Path(cfg.train.run_dir)
    source = None
    if env.is_main:
        source = init_from.locate_and_check(cfg, run_dir, True)
    if dist.is_initialized() and env.world_size > 1:
        dist.barrier()
    if source is None:
        source = init_from.locate_and_check(cfg, run_dir, False)
    data = cfg.data
    if source.tokenizer_dir is not None:
        if "tokenizer_dir" in cfg.data.model_fields_set and Path(cfg.data.tokenizer_dir).resolve() != source.tokenizer_dir.resolve():
            log.warning("data.tokenizer_dir=%s is replaced by the tokenizer of model.init_from=%s (%s)",
                        cfg.data.tokenizer_dir, source.spec, source.tokenizer_dir)
        data = cfg.data.model_copy(update={"tokenizer_dir": str(source.tokenizer_dir)})
    cfg = cfg.model_copy(update={"model": source.model_cfg, "data": data})
    tok = load_pipeline_tokenizer(cfg.data.tokenizer_dir)
    model = source.load_model()
    init_from.check_vocabulary(tok, model, cfg.data.tokenizer_dir, source.spec)
    if env.is_main:
        init_from.write_record(run_dir, source)
        log.info("model.init_from=%s: %s weights from %s; tokenizer: %s; optimizer %s",
                 source.spec, source.hf_config.model_type, source.path,
                 "the model's own" if source.tokenizer_dir else cfg.data.tokenizer_dir, source.record()["optimizer"])
    return cfg, tok, model, source.checkpoint


def pretraining_components(cfg: ZeroLMConfig, env: distributed.DistEnv) -> tuple[ZeroLMConfig, Components]:
    """Model from ``cfg.model`` (preset resolved) with our tokenizer's vocabulary, random init — or,
    with ``model.init_from``, an existing model with its own tokenizer (:mod:`pretrain.init_from`);
    the packed streaming pipeline for training and validation.

    Returns:
        The config with the model section resolved, and the components.

    Raises:
        ConfigError: ``data.objective`` does not match the model family; ``model.init_from``
            disagrees with the config (:func:`pretrain.init_from.locate_and_check`).
    """
    init_state = None
    if cfg.model.init_from:
        cfg, tok, model, init_state = _continued_model(cfg, env)
        model_cfg = cfg.model
    else:
        model_cfg = resolve_model_config(cfg.model)
        if objective_of(model_cfg.family) != cfg.data.objective:
            raise ConfigError(f"data.objective={cfg.data.objective} does not fit model.family={model_cfg.family} "
                              f"(a {objective_of(model_cfg.family)} model)")
        cfg = cfg.model_copy(update={"model": model_cfg})
        tok = load_pipeline_tokenizer(cfg.data.tokenizer_dir)
        model = build_model(model_cfg, vocab_size=tok.vocab_size, seq_len=cfg.data.seq_len, special_ids=special_ids_of(tok))
    counts = count_parameters(model)
    return cfg, Components(
        model=model,
        train_loader=PackedDataLoader(cfg.data, rank=env.rank, world_size=env.world_size, tokenizer=tok,
                                      global_batch_size=cfg.train.global_batch_size),
        make_eval_loader=lambda: PackedDataLoader(cfg.data, split="validation", rank=env.rank,
                                                  world_size=env.world_size, tokenizer=tok),
        objective=get_objective(cfg.data.objective),
        description=describe_model(model_cfg, counts),
        flops_per_token=flops_per_token(counts["total"], model_cfg.n_layer, model_cfg.d_model, cfg.data.seq_len),
        tokens_per_sample=cfg.data.seq_len,
        parameters=counts["total"],
        job="pretrain",
        init_state=init_state,
    )
