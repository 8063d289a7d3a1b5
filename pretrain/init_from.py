"""Continued pretraining: the weights, architecture and tokenizer a run starts from (``model.init_from``).

Domain-adaptive and multi-stage pretraining start from an existing model rather than random weights
(Gururangan et al. 2020, "Don't Stop Pretraining"; the "annealing" second stage of recent recipes).
``model.init_from`` names that model:

* a built-in name (``smollm2``, ``minilm``: :func:`zerolm.hf_models.resolve_model_path`);
* a Hugging Face causal-LM or masked-LM folder (``config.json`` + weights), e.g. a ``zerolm export``;
* a zerolm run directory (``checkpoints/``, ``config.yaml``): its newest complete checkpoint is
  exported once into ``RUN_DIR/init_model/`` of the new run (rank 0; :func:`export_checkpoint`) and
  read from there.

The architecture is the model's own (``transformers``' ``from_pretrained``): ``model:`` shape keys left
out are filled from it, keys set (directly or through a preset) must agree, and a mismatch is a
:class:`~zerolm.errors.ConfigError` naming each key. Every dropout probability is set to
``model.dropout`` (0 by default, as in modern pretraining recipes), so the first training loss is the
loaded model's loss on the first batch. When the folder brings a Hugging Face tokenizer
(``tokenizer.json``), the data pipeline tokenizes with it (``data.tokenizer_dir`` becomes the folder);
otherwise ``data.tokenizer_dir`` must fit the model's vocabulary.

The optimizer and the LR schedule start fresh (warm-up from the loaded weights), unless
``model.init_optimizer=checkpoint`` with a zerolm run directory: then the run also continues that
checkpoint's AdamW state and step count (this config's LR schedule, from that step). The run directory gets
``init_from.json``: what the run started from and the lineage of stages before it, which the export's
model card carries on (:func:`lineage_of_export`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from zerolm.config import ModelConfig
from zerolm.errors import ConfigError, DataError
from zerolm.fsutil import write_json
from zerolm.pretrain.lineage import INIT_FILE, read_record  # noqa: F401  (read_record re-exported)

log = logging.getLogger(__name__)

INIT_MODEL_DIR = "init_model"  # in the run directory: a zerolm run's checkpoint exported to start from

#: ``model`` config keys that describe the architecture (compared with the loaded model's).
SHAPE_KEYS: tuple[str, ...] = ("family", "n_layer", "n_head", "d_model", "d_ff", "n_kv_head",
                               "max_position_embeddings", "tie_word_embeddings")


@dataclass
class InitSource:
    """A model to continue pretraining from, located and checked against the run's config.

    Attributes:
        spec: ``model.init_from`` as the user wrote it.
        path: the Hugging Face folder the weights are read from.
        kind: ``"clm"`` or ``"mlm"``.
        hf_config: the folder's ``config.json`` as a ``transformers.PretrainedConfig``.
        model_cfg: the run's ``model`` section filled from the model (shape keys, family).
        tokenizer_dir: the folder when it brings a Hugging Face tokenizer, else ``None``.
        lineage: the training stages behind the model, oldest first (see :func:`lineage_of_export`).
        checkpoint: for ``model.init_optimizer=checkpoint``, the run checkpoint whose optimizer state
            and step count the run continues: ``root``, ``tag``, ``world_size``, ``step``,
            ``tokens_seen``, ``zero_stage``; else None.
    """

    spec: str
    path: Path
    kind: Literal["clm", "mlm"]
    hf_config: Any
    model_cfg: ModelConfig
    tokenizer_dir: Path | None
    lineage: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None

    def load_model(self) -> torch.nn.Module:
        """The model with its weights, fp32, SDPA attention, every dropout = ``model.dropout``.

        Returns:
            A ``transformers`` ``*ForCausalLM`` / ``*ForMaskedLM`` in train mode.

        Raises:
            DataError: the weights cannot be read (names the folder).
        """
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        from zerolm.pretrain.models import dropout_settings

        auto = AutoModelForCausalLM if self.kind == "clm" else AutoModelForMaskedLM
        try:
            model = auto.from_pretrained(str(self.path), dtype=torch.float32, attn_implementation="sdpa",
                                         **dropout_settings(self.model_cfg.family, self.model_cfg.dropout))
        except (OSError, ValueError, RuntimeError) as e:
            raise DataError(f"model.init_from={self.spec}: cannot load the weights of {self.path}: {e}") from e
        model.train()
        return model

    def record(self) -> dict[str, Any]:
        """What ``init_from.json`` stores: the source and the stages before this run."""
        return {"init_from": self.spec, "path": str(self.path), "model_type": self.hf_config.model_type,
                "kind": self.kind, "tokenizer": "the model's own" if self.tokenizer_dir else "data.tokenizer_dir",
                "optimizer": (f"continued from {self.checkpoint['root']}/{self.checkpoint['tag']} (step "
                              f"{self.checkpoint['step']})" if self.checkpoint else "fresh (warm-up from the loaded weights)"),
                "lineage": self.lineage}


def _is_run_dir(p: Path) -> bool:
    return (p / "checkpoints").is_dir() and (p / "config.yaml").is_file()


def _export_meta(folder: Path) -> dict[str, Any] | None:
    from zerolm.pretrain.export import EXPORT_META

    path = folder / EXPORT_META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable export record: {e}") from e
    return meta if isinstance(meta, dict) else None


def lineage_of_export(folder: str | Path, name: str) -> list[dict[str, Any]]:
    """The training stages behind a model folder, oldest first.

    A ``zerolm export`` records its stages (``lineage`` in ``zerolm_export.json``: each stage's start,
    run directory, data sources and tokens); any other folder is one stage of unknown history, named
    ``name``.
    """
    meta = _export_meta(Path(folder))
    if meta is None:
        return [{"start": name, "tokens": None, "note": "pretrained elsewhere (history unknown)"}]
    stages = meta.get("lineage")
    if isinstance(stages, list) and stages:
        return stages
    return [{"start": "random init", "run_dir": meta.get("run_dir"), "tokens": meta.get("tokens_seen")}]


def _locate(spec: str, run_dir: Path, is_main: bool) -> tuple[Path, dict[str, Any] | None]:
    """The Hugging Face folder behind ``model.init_from`` and, for a zerolm run directory, its newest
    complete checkpoint (:attr:`InitSource.checkpoint`); the run is exported first (rank 0 only; the
    caller synchronises the ranks)."""
    from zerolm.hf_models import resolve_model_path

    resolved = Path(resolve_model_path(spec)).expanduser()
    if _is_run_dir(resolved):
        from zerolm.pretrain.checkpoint import resolve

        out = run_dir / INIT_MODEL_DIR
        tag_dir, record = resolve(resolved)
        if is_main:
            from zerolm.pretrain.export import export_checkpoint

            meta = _export_meta(out) if out.is_dir() else None
            if meta and Path(meta.get("run_dir", "")) == resolved.resolve() and meta.get("tag") == tag_dir.name:
                log.info("model.init_from: reusing %s (export of %s)", out, tag_dir)
            else:
                log.info("model.init_from: exporting %s to %s", tag_dir, out)
                export_checkpoint(resolved, out, tag=tag_dir.name)
        run = record.get("run") or {}
        checkpoint = {"root": str(tag_dir.parent), "tag": tag_dir.name, "step": int(record.get("step", 0)),
                      "tokens_seen": int(record.get("tokens_seen", 0)),
                      "world_size": run.get("world_size") or record.get("world_size"), "zero_stage": run.get("zero_stage")}
        return out, checkpoint
    if (resolved / "config.json").is_file():
        return resolved, None
    if not resolved.exists():
        raise ConfigError(f"model.init_from={spec}: no such model folder, run directory or built-in name "
                          f"(built-in: smollm2, minilm)")
    raise ConfigError(f"model.init_from={spec}: {resolved} is neither a Hugging Face model folder (config.json) "
                      "nor a zerolm run directory (checkpoints/, config.yaml)")


def shape_of(hf_config: Any) -> dict[str, Any]:
    """A ``transformers`` config's architecture in the ``model`` section's vocabulary (:data:`SHAPE_KEYS`).

    Raises:
        ConfigError: a model type zerolm does not pretrain (not gpt2, llama, bert, modernbert).
    """
    from zerolm.pretrain.models import FAMILY_OBJECTIVES

    family = hf_config.model_type
    if family not in FAMILY_OBJECTIVES:
        raise ConfigError(f"model.init_from: model type {family!r} is not one zerolm pretrains "
                          f"(supported: {', '.join(FAMILY_OBJECTIVES)})")
    if family == "gpt2":
        shape = {"n_layer": hf_config.n_layer, "n_head": hf_config.n_head, "d_model": hf_config.n_embd,
                 "d_ff": hf_config.n_inner or 4 * hf_config.n_embd, "max_position_embeddings": hf_config.n_positions}
    else:
        shape = {"n_layer": hf_config.num_hidden_layers, "n_head": hf_config.num_attention_heads,
                 "d_model": hf_config.hidden_size, "d_ff": hf_config.intermediate_size,
                 "max_position_embeddings": hf_config.max_position_embeddings}
    shape["n_kv_head"] = getattr(hf_config, "num_key_value_heads", None) if family == "llama" else None
    shape["family"] = family
    shape["tie_word_embeddings"] = bool(getattr(hf_config, "tie_word_embeddings", True))
    return shape


def merged_model_config(user: ModelConfig, hf_config: Any, spec: str) -> ModelConfig:
    """The run's ``model`` section with the architecture of the loaded model.

    Keys the user set (explicitly or through ``model.preset``) must equal the model's; the others are
    filled from it. Non-shape keys (``dropout``, ``init_from`` …) stay the user's.

    Raises:
        ConfigError: a shape key disagrees (every such key is named with both values), or the model
            type is not supported (:func:`shape_of`).
    """
    from zerolm.pretrain.models import _load_preset

    theirs = shape_of(hf_config)
    given: dict[str, Any] = {}
    if user.preset is not None:
        given.update(_load_preset(user.preset))
    given.update({k: getattr(user, k) for k in user.model_fields_set if k in SHAPE_KEYS})
    differ = [f"model.{k}={given[k]} (the model has {theirs[k]})" for k in SHAPE_KEYS
              if given.get(k) is not None and given[k] != theirs[k]]
    if differ:
        raise ConfigError(f"model.init_from={spec}: the model section disagrees with the model: {'; '.join(differ)}. "
                          "Leave the shape keys and model.preset out to take the model's architecture")
    values = {k: v for k, v in user.model_dump().items() if k not in SHAPE_KEYS}
    values.update(theirs)
    return ModelConfig.model_validate(values)


def locate_and_check(cfg, run_dir: Path, is_main: bool) -> InitSource:
    """Find ``cfg.model.init_from``, read its config and check it against the run's config (no weights read).

    Args:
        cfg: the run's :class:`~zerolm.config.ZeroLMConfig`.
        run_dir: the run directory (a zerolm run to start from is exported under it).
        is_main: whether this is rank 0 (only rank 0 exports; every rank must reach a barrier after
            this call before another rank reads the export).

    Raises:
        ConfigError: the source is not found or not a causal/masked LM; its kind is not
            ``data.objective``; shape keys disagree; ``data.seq_len`` exceeds its positions;
            ``model.init_optimizer=checkpoint`` without a run directory, at another ZeRO stage, or
            with ``train.max_steps`` not beyond the checkpoint's step.
        DataError: a zerolm run without a complete checkpoint; an unreadable config.
    """
    from transformers import AutoConfig

    from zerolm.hf_models import KIND_NAMES, model_kind

    spec = cfg.model.init_from
    path, checkpoint = _locate(spec, run_dir, is_main)
    if cfg.model.init_optimizer == "checkpoint":
        if checkpoint is None:
            raise ConfigError(f"model.init_optimizer=checkpoint needs model.init_from to be a zerolm run directory "
                              f"(its optimizer state); {spec} is a model folder")
        if checkpoint["zero_stage"] is not None and checkpoint["zero_stage"] != cfg.train.zero_stage:
            raise ConfigError(f"model.init_optimizer=checkpoint: {checkpoint['root']}/{checkpoint['tag']} was trained at "
                              f"ZeRO-{checkpoint['zero_stage']}, this run has train.zero_stage={cfg.train.zero_stage}: "
                              f"set train.zero_stage={checkpoint['zero_stage']} (or model.init_optimizer=fresh)")
        if cfg.train.max_steps <= checkpoint["step"]:
            raise ConfigError(f"model.init_optimizer=checkpoint continues the step count at {checkpoint['step']}: "
                              f"train.max_steps={cfg.train.max_steps} must be larger")
    else:
        checkpoint = None
    if not (path / "config.json").is_file():  # another rank is exporting it: the caller waits first
        raise DataError(f"model.init_from={spec}: {path / 'config.json'} not written yet")
    kind = model_kind(path)
    if kind != cfg.data.objective:
        raise ConfigError(f"model.init_from={spec} is a {KIND_NAMES[kind]} ({path}); data.objective={cfg.data.objective} "
                          f"trains a {KIND_NAMES[cfg.data.objective]}: set data.objective={kind}")
    try:
        hf_config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise DataError(f"model.init_from={spec}: unreadable {path / 'config.json'}: {e}") from e
    model_cfg = merged_model_config(cfg.model, hf_config, spec)
    if cfg.data.seq_len > model_cfg.max_position_embeddings:
        raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds the {model_cfg.max_position_embeddings} positions of "
                          f"model.init_from={spec}")
    tokenizer_dir = path if (path / "tokenizer.json").is_file() else None
    return InitSource(spec=spec, path=path, kind=kind, hf_config=hf_config, model_cfg=model_cfg,
                      tokenizer_dir=tokenizer_dir, lineage=lineage_of_export(path, spec), checkpoint=checkpoint)


def check_vocabulary(tokenizer: Any, model: torch.nn.Module, tokenizer_dir: str | Path, spec: str) -> None:
    """Every id the pipeline can produce has an embedding row.

    Raises:
        ConfigError: the tokenizer's vocabulary is larger than the model's embedding matrix.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if tokenizer.vocab_size > rows:
        raise ConfigError(f"data.tokenizer_dir={tokenizer_dir} has {tokenizer.vocab_size} tokens but model.init_from={spec} "
                          f"embeds {rows}: use the model's own tokenizer")


def write_record(run_dir: Path, source: InitSource) -> None:
    """Rank 0: ``RUN_DIR/init_from.json`` (:meth:`InitSource.record`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / INIT_FILE, source.record(), indent=2)


__all__ = [
    "INIT_FILE",
    "INIT_MODEL_DIR",
    "InitSource",
    "SHAPE_KEYS",
    "check_vocabulary",
    "lineage_of_export",
    "locate_and_check",
    "merged_model_config",
    "read_record",
    "shape_of",
    "write_record",
]
