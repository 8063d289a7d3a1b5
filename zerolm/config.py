"""Typed configuration: YAML files + ``key.sub=value`` overrides, validated before any work.

The sections are pydantic models with ``extra="forbid"``, so an unknown key or a wrong type is a
:class:`~zerolm.errors.ConfigError` that names the key (``data.seq_len: Input should be a valid
integer``). Overrides are parsed with OmegaConf's dotlist syntax and merged over the YAML file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zerolm.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Section):
    """One corpus source of the streaming pipeline.

    ``paths`` are local paths, globs or fsspec URLs (``s3://…``, ``gs://…``, ``https://…``) of
    ``.txt`` (one document per line), ``.jsonl`` or ``.parquet`` files, optionally ``.gz``.
    ``weight`` is the source's relative sampling probability in a mixture.
    """

    name: str
    paths: list[str] = Field(min_length=1)
    format: Literal["auto", "txt", "jsonl", "parquet"] = "auto"
    text_field: str = "text"
    weight: float = Field(default=1.0, gt=0)


class CorpusConfig(_Section):
    """``zerolm data prepare``: extract the bundled real corpus into jsonl shards."""

    out_dir: str = "data/corpus"
    validation_percent: float = Field(default=1.0, gt=0, lt=50)
    shard_bytes: int = Field(default=1_000_000, gt=0)
    sources: list[str] = ["wikipedia_boolq", "wikipedia_quac", "bbc_xsum", "legal_multilexsum"]


class TokenizerConfig(_Section):
    """``zerolm tokenizer train``: a sentencepiece model wrapped as a Hugging Face tokenizer."""

    corpus_dir: str = "data/corpus"
    out_dir: str = "data/tokenizer"
    vocab_size: int = Field(default=8000, ge=300)
    model_type: Literal["bpe", "unigram"] = "bpe"
    sample_bytes: int = Field(default=64_000_000, gt=0)
    seed: int = 1234


class DataConfig(_Section):
    """The streaming pipeline: read → tokenize → pack → shard → (mask) → batches."""

    sources: list[SourceConfig] = [
        SourceConfig(name="bundled", paths=["data/corpus/train/*.jsonl"])
    ]
    validation_sources: list[SourceConfig] = [
        SourceConfig(name="bundled", paths=["data/corpus/validation/*.jsonl"])
    ]
    tokenizer_dir: str = "data/tokenizer"
    objective: Literal["clm", "mlm"] = "clm"
    seq_len: int = Field(default=256, ge=8)
    micro_batch_size: int = Field(default=8, ge=1)
    num_workers: int = Field(default=1, ge=0)
    seed: int = 1234
    shuffle_files: bool = True
    mlm_probability: float = Field(default=0.15, gt=0, lt=1)
    add_bos: bool = False
    max_document_bytes: int = Field(default=1_000_000, gt=0)
    tokenize_batch_size: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _unique_source_names(self) -> "DataConfig":
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        return self


class ZeroLMConfig(_Section):
    """The root config: one section per component."""

    corpus: CorpusConfig = CorpusConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    data: DataConfig = DataConfig()


def _format_validation_error(err: ValidationError, origin: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"{key}: {e['msg']}" + (f" (got {e['input']!r})" if "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict) else ""))
    return f"invalid config ({origin}):\n  " + "\n  ".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> ZeroLMConfig:
    """Load and validate the config.

    Args:
        path: a YAML file whose top-level keys are sections (``data:``, ``tokenizer:`` …), or None
            for the built-in defaults.
        overrides: ``key.sub=value`` strings (OmegaConf dotlist syntax), applied after the file.

    Returns:
        The validated :class:`ZeroLMConfig`.

    Raises:
        ConfigError: the file is missing or not YAML, an override is malformed, a key is unknown or a
            value has the wrong type; the message names the file or key.
    """
    raw: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: top level must be a mapping of sections, got {type(raw).__name__}")
        origin = str(p)
    for ov in overrides:
        if "=" not in ov or ov.startswith("="):
            raise ConfigError(f"override {ov!r} is not of the form key.sub=value")
    try:
        merged = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(list(overrides)))
        data = OmegaConf.to_container(merged, resolve=True)
    except Exception as e:  # omegaconf raises several types for bad syntax/interpolation
        raise ConfigError(f"cannot apply overrides {list(overrides)}: {e}") from e
    if overrides:
        origin += " + overrides"
    try:
        return ZeroLMConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, origin)) from None


def save_config(cfg: BaseModel, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically: temp file then rename)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    tmp.replace(p)
