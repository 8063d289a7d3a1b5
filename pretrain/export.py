"""``zerolm export RUN_DIR OUT_DIR``: a DeepSpeed checkpoint → a Hugging Face model folder.

The run directory is the one the trainer writes::

    RUN_DIR/config.yaml                               the resolved ZeroLMConfig
    RUN_DIR/checkpoints/latest                        the newest complete tag ("step_00000040")
    RUN_DIR/checkpoints/<tag>/                        engine.save_checkpoint(..., tag=<tag>)
    RUN_DIR/checkpoints/<tag>/zerolm_complete.json    written last: tag, step, tokens_seen, metrics, files

The export consolidates the fp32 weights with DeepSpeed's own utility
(``deepspeed.utils.zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``, ZeRO 1–3 including
sharded ZeRO-3; a ZeRO-0 checkpoint's weights are the ``module`` of ``mp_rank_00_model_states.pt``),
rebuilds the model from ``config.yaml`` (:func:`pretrain.models.build_model`), loads the weights
strictly (tied weights are one tensor: ``lm_head.weight`` / ``wte.weight``), and writes::

    OUT_DIR/config.json, model.safetensors             (save_pretrained; safetensors)
    OUT_DIR/generation_config.json                     (causal LMs: bos/eos/pad, sampling defaults)
    OUT_DIR/tokenizer.json, tokenizer_config.json …    (the run's tokenizer + the objective's template)
    OUT_DIR/README.md                                  (model card with Hugging Face metadata)
    OUT_DIR/zerolm_export.json                         (provenance: run, tag, step, tokens, metrics)

``AutoModelForCausalLM`` / ``AutoModelForMaskedLM`` / ``AutoTokenizer`` / ``pipeline`` load the folder.
It is written to a temporary folder next to ``OUT_DIR`` and renamed into place. Run it in its own
process (the CLI does): a live ZeRO-3 ``HfDeepSpeedConfig`` changes how transformers builds models.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from zerolm.fsutil import check_replaceable, replace_dir
from zerolm.errors import DataError

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "zerolm-export/1"
EXPORT_META = "zerolm_export.json"
COMPLETE_MARKER = "zerolm_complete.json"

# Corpus license strings (data_pipeline.corpus) → Hugging Face license identifiers.
_HF_LICENSES = {
    "cc-by-sa-3.0": "cc-by-sa-3.0",
    "cc-by-sa-4.0": "cc-by-sa-4.0",
    "cc-by-4.0": "cc-by-4.0",
    "cc-by-3.0": "cc-by-3.0",
    "cc0-1.0": "cc0-1.0",
    "odc-by-1.0": "odc-by",
    "odc-by": "odc-by",
    "apache-2.0": "apache-2.0",
    "mit": "mit",
}

_SECRET_WORDS = {"token", "key", "secret", "password", "passwd", "apikey", "credential", "credentials", "auth", "pat"}


def _looks_secret(key: str) -> bool:
    """True for keys like ``hf_token``, ``WANDB_API_KEY``, ``password``, ``client_secret``.

    The key is split into words at ``_ - .``; it is secret when its last word is a secret word or it
    contains ``secret``/``password``/``api_key`` anywhere. ``bos_token_id``, ``tokenizer_dir`` and
    ``tokens_seen`` are not.
    """
    k = key.lower()
    if any(s in k for s in ("secret", "password", "passwd", "api_key", "apikey")):
        return True
    words = [w for w in re.split(r"[_\-.\s]+", k) if w]
    return bool(words) and words[-1] in _SECRET_WORDS


def scrub_secrets(obj: Any) -> Any:
    """A copy of a JSON-like value with every value under a secret-looking key replaced by ``"***"``."""
    if isinstance(obj, dict):
        return {k: ("***" if _looks_secret(str(k)) and v not in (None, "") else scrub_secrets(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub_secrets(v) for v in obj]
    return obj


def _secret_env_values() -> list[str]:
    """Values of environment variables with secret-looking names (at least 8 characters)."""
    return sorted({v for k, v in os.environ.items() if _looks_secret(k) and len(v) >= 8}, key=len, reverse=True)


def _redact_text(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


# --------------------------------------------------------------------------------------------------
# Reading the run directory
# --------------------------------------------------------------------------------------------------


def resolve_checkpoint(run_dir: str | Path, tag: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Find a complete checkpoint of a run directory.

    Args:
        run_dir: the run directory (holds ``checkpoints/``).
        tag: a checkpoint tag (``step_00000040``); ``None`` = the one named by ``checkpoints/latest``.

    Returns:
        ``(tag_dir, complete)``: the checkpoint folder and its parsed ``zerolm_complete.json``.

    Raises:
        DataError: no ``latest`` pointer (or an empty one), no such tag folder, no completion marker
            (an interrupted save), an unreadable marker, or a file the marker lists that is missing or
            has another size; the message names the path.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    if tag is None:
        latest = ckpt_dir / "latest"
        if not latest.is_file():
            raise DataError(f"no checkpoint pointer {latest}: the run has no complete checkpoint (or pass a tag)")
        tag = latest.read_text().strip()
        if not tag:
            raise DataError(f"checkpoint pointer {latest} is empty")
    tag_dir = ckpt_dir / tag
    if not tag_dir.is_dir():
        have = sorted(p.name for p in ckpt_dir.iterdir() if p.is_dir()) if ckpt_dir.is_dir() else []
        raise DataError(f"checkpoint {tag_dir} not found (tags in {ckpt_dir}: {have or 'none'})")
    marker = tag_dir / COMPLETE_MARKER
    if not marker.is_file():
        raise DataError(f"checkpoint {tag_dir} is incomplete: no {COMPLETE_MARKER} (an interrupted save?)")
    try:
        complete = json.loads(marker.read_text())
        if not isinstance(complete, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{marker}: unreadable completion marker: {e}") from e
    for rel, size in (complete.get("files") or {}).items():
        p = tag_dir / rel
        if not p.is_file():
            raise DataError(f"checkpoint {tag_dir} is incomplete: {p} is missing")
        if size is not None and p.stat().st_size != int(size):
            raise DataError(f"checkpoint {tag_dir} is incomplete: {p} has {p.stat().st_size} bytes, expected {size}")
    if complete.get("tag") not in (None, tag):
        logger.warning("%s names tag %r, but it is in folder %r", marker, complete.get("tag"), tag)
    return tag_dir, complete


def consolidated_state_dict(tag_dir: str | Path) -> tuple[dict[str, Any], str]:
    """The full fp32 state dict of a DeepSpeed checkpoint folder.

    ZeRO 1–3 (any ``*_optim_states.pt``, e.g. ``zero_pp_rank_0_mp_rank_00_optim_states.pt``): DeepSpeed's
    ``get_fp32_state_dict_from_zero_checkpoint`` merges the fp32 master partitions of all ranks (shared
    parameters come back as one tensor under both names). ZeRO 0 (no optimizer shards): the
    ``module`` entry of ``mp_rank_00_model_states.pt``, cast to fp32.

    Args:
        tag_dir: ``RUN_DIR/checkpoints/<tag>``.

    Returns:
        ``(state_dict, source)`` with ``source`` = ``"zero_to_fp32"`` or ``"module"``.

    Raises:
        DataError: the folder holds neither layout, or DeepSpeed cannot read it.
    """
    import torch

    tag_dir = Path(tag_dir)
    if any(tag_dir.glob("*_optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):  # zero_to_fp32 prints its progress
                sd = get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            raise DataError(f"cannot consolidate DeepSpeed checkpoint {tag_dir}: {e}") from e
        finally:
            for line in out.getvalue().splitlines():
                logger.debug("zero_to_fp32: %s", line)
        return sd, "zero_to_fp32"
    model_file = tag_dir / "mp_rank_00_model_states.pt"
    if not model_file.is_file():
        raise DataError(
            f"{tag_dir} holds no DeepSpeed checkpoint (neither *_optim_states.pt nor mp_rank_00_model_states.pt)"
        )
    try:
        states = torch.load(model_file, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle/zip errors of a damaged file
        raise DataError(f"cannot read {model_file}: {e}") from e
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict):
        raise DataError(f"{model_file} has no 'module' state dict")
    sd = {}
    for k, v in module.items():
        if torch.is_tensor(v) and v.is_floating_point() and v.dtype != torch.float32:
            logger.warning("%s: %s is %s (no fp32 master copy in a ZeRO-0 checkpoint); exporting it as fp32", model_file, k, v.dtype)
            v = v.float()
        sd[k] = v
    return sd, "module"


def load_weights(model, state_dict: dict[str, Any]) -> None:
    """Load a consolidated state dict into a freshly built model, strictly, keeping tied weights tied.

    A key may be absent only when it names the same tensor as a present key (a tied alias such as
    ``lm_head.weight`` of ``transformer.wte.weight``); when both are present they must be equal.

    Raises:
        DataError: missing or unexpected keys, a shape mismatch (e.g. the tokenizer's vocabulary differs
            from the one the run trained with), or tied aliases with different values.
    """
    import torch

    expected = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for name, t in expected.items():
        groups.setdefault(id(t), []).append(name)
    aliases = {name: groups[id(t)] for name, t in expected.items()}
    missing = [k for k in expected if k not in state_dict and not any(a in state_dict for a in aliases[k])]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        raise DataError(
            f"checkpoint does not match the model built from config.yaml: missing keys {missing[:10]}, "
            f"unexpected keys {unexpected[:10]}"
        )
    for k, v in state_dict.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise DataError(
                f"checkpoint tensor {k} has shape {tuple(v.shape)}, the model built from config.yaml expects "
                f"{tuple(expected[k].shape)} (another tokenizer/vocabulary or model shape than the run used?)"
            )
    for names in groups.values():
        present = [n for n in names if n in state_dict]
        for n in present[1:]:
            if not torch.equal(state_dict[n], state_dict[present[0]]):
                raise DataError(f"tied weights {present[0]} and {n} differ in the checkpoint")
    result = model.load_state_dict(state_dict, strict=False)
    left = [k for k in result.missing_keys if not any(a in state_dict for a in aliases[k])]
    if left or result.unexpected_keys:  # pragma: no cover - checked above
        raise DataError(f"load_state_dict: missing {left}, unexpected {result.unexpected_keys}")
    after = model.state_dict(keep_vars=True)  # load_state_dict copies in place: ties survive
    for names in groups.values():
        if any(after[n] is not after[names[0]] for n in names):  # pragma: no cover - defensive
            raise DataError(f"tied weights {names} came apart while loading")


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------


def _corpus_manifest(cfg) -> dict[str, Any] | None:
    path = Path(cfg.tokenizer.corpus_dir) / "manifest.json"
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        return m if isinstance(m, dict) else None
    except (ValueError, UnicodeDecodeError):
        logger.warning("%s is not valid JSON; the model card lists no corpus details", path)
        return None


def _hf_license(manifest: dict[str, Any] | None) -> str:
    if not manifest:
        return "other"
    ids = {_HF_LICENSES.get(str(s.get("license", "")).strip().lower()) for s in manifest.get("sources", [])}
    return ids.pop() if len(ids) == 1 and None not in ids else "other"


def _fmt(n: float | int | None, digits: int = 4) -> str:
    if n is None:
        return "n/a"
    if isinstance(n, int):
        return f"{n:,}"
    return f"{n:.{digits}f}"


def render_model_card(
    *,
    name: str,
    cfg,
    model_cfg,
    hf_cfg,
    counts: dict[str, int],
    complete: dict[str, Any],
    tag: str,
    vocab_size: int,
    tokenizer_type: str,
) -> str:
    """The ``README.md`` of an export: Hugging Face metadata (YAML front matter) + a human description.

    Metadata (validated by ``huggingface_hub.ModelCardData``): ``license`` (the corpus sources' license
    when they share one, else ``other``), ``language: en``, ``library_name: transformers``,
    ``pipeline_tag`` (text-generation or fill-mask), ``tags`` (zerolm, causal-lm|masked-lm, family).
    Body: architecture and parameter counts, training (steps, tokens, final validation metrics), data
    (from the corpus ``manifest.json``), usage, and the resolved config with secret-looking values
    replaced by ``***``.
    """
    from huggingface_hub import ModelCardData

    from pretrain.models import objective_of

    objective = objective_of(model_cfg.family)
    causal = objective == "clm"
    manifest = _corpus_manifest(cfg)
    data = ModelCardData(
        language="en",
        license=_hf_license(manifest),
        library_name="transformers",
        pipeline_tag="text-generation" if causal else "fill-mask",
        tags=["zerolm", "causal-lm" if causal else "masked-lm", model_cfg.family],
    )
    arch = (hf_cfg.architectures or [type(hf_cfg).__name__])[0]
    metrics = complete.get("metrics") or {}
    positions = getattr(hf_cfg, "max_position_embeddings", None)
    lines: list[str] = ["---", data.to_yaml().strip(), "---", ""]
    lines += [
        f"# {name}",
        "",
        f"A {model_cfg.family} {'causal' if causal else 'masked'} language model ({arch}) pretrained from "
        "scratch with zerolm (DeepSpeed ZeRO), exported from checkpoint "
        f"`{tag}`. It is a small research model: expect fluent-looking but unreliable text.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| architecture | `{arch}` (family `{model_cfg.family}`, preset `{model_cfg.preset or 'custom'}`) |",
        f"| layers | {model_cfg.n_layer} |",
        f"| d_model | {model_cfg.d_model} |",
        f"| attention heads | {model_cfg.n_head}"
        + (f" ({model_cfg.n_kv_head} key/value heads)" if model_cfg.family == "llama" else "")
        + " |",
        f"| feed-forward width | {model_cfg.d_ff} |",
        f"| positions (context) | {positions} |",
        f"| vocabulary | {vocab_size} ({tokenizer_type}) |",
        f"| tied input/output embeddings | {'yes' if model_cfg.tie_word_embeddings else 'no'} |",
        f"| parameters | {_fmt(counts['total'])} ({_fmt(counts['non_embedding'])} non-embedding) |",
        "",
        "## Training",
        "",
        f"- objective: {'causal language modelling (next-token prediction)' if causal else 'masked language modelling (BERT-style, ' + format(cfg.data.mlm_probability, '.0%') + ' of tokens)'}",
        f"- steps: {_fmt(complete.get('step'))}",
        f"- tokens seen: {_fmt(complete.get('tokens_seen'))}",
        f"- sequence length: {cfg.data.seq_len}; micro batch {cfg.data.micro_batch_size}; "
        f"ZeRO stage {cfg.train.zero_stage}; precision {cfg.train.precision}",
        f"- optimizer: AdamW, peak lr {cfg.train.lr}, warmup {cfg.train.warmup_steps} steps, weight decay {cfg.train.weight_decay}",
        f"- final validation loss: {_fmt(metrics.get('eval/loss'))}",
        f"- final validation perplexity: {_fmt(metrics.get('eval/perplexity'), 2)}",
    ]
    if "eval/accuracy" in metrics:
        lines.append(f"- final validation masked-token accuracy: {_fmt(metrics.get('eval/accuracy'))}")
    lines += ["", "## Data", ""]
    if manifest:
        lines += [
            "Trained on the zerolm corpus prepared by `zerolm data prepare` (deduplicated; "
            "train/validation split by a hash of each document).",
            "",
            "| source | license | train documents | validation documents | description |",
            "|---|---|---|---|---|",
        ]
        for s in manifest.get("sources", []):
            docs = s.get("documents", {})
            lines.append(
                f"| {s.get('name')} | {s.get('license', 'unknown')} | {_fmt(docs.get('train'))} | "
                f"{_fmt(docs.get('validation'))} | {s.get('description', '')} |"
            )
        tot = (manifest.get("totals") or {}).get("documents", {})
        licenses = sorted({str(s.get("license", "unknown")) for s in manifest.get("sources", [])})
        lines += [
            "",
            f"Total: {_fmt(tot.get('train'))} training and {_fmt(tot.get('validation'))} validation documents.",
            "",
            f"Licenses of the training text: {', '.join(licenses)} (model card license: `{data.license}`; "
            "check each source's terms before reuse).",
        ]
    else:
        lines += ["Training sources (paths as configured):", ""]
        for s in cfg.data.sources:
            lines.append(f"- {s.name} (weight {s.weight}): {', '.join(s.paths)}")
    lines += ["", "## How to use", "", "```python"]
    if causal:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{name}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            f'generator = pipeline("text-generation", model="{name}")',
            'print(generator("The history of", max_new_tokens=30)[0]["generated_text"])',
        ]
    else:
        lines += [
            "from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline",
            "",
            f'model = AutoModelForMaskedLM.from_pretrained("{name}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
            f'fill = pipeline("fill-mask", model="{name}")',
            'print(fill("The capital of France is [MASK]."))',
        ]
    lines += ["```", ""]
    if not causal:
        lines += ["The tokenizer adds `[CLS] … [SEP]` around each text, as BERT's does.", ""]
    lines += [
        "## Resolved zerolm config",
        "",
        "```yaml",
        yaml.safe_dump(scrub_secrets(cfg.model_dump(mode="json")), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _no_live_hf_deepspeed_config() -> None:
    try:
        from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled, unset_hf_deepspeed_config
    except ImportError:  # pragma: no cover
        return
    if is_deepspeed_zero3_enabled():
        logger.warning("a ZeRO-3 HfDeepSpeedConfig is alive in this process; unsetting it for the export")
        unset_hf_deepspeed_config()


def export_checkpoint(run_dir: str | Path, out_dir: str | Path, tag: str | None = None) -> dict[str, Any]:
    """Export a run's checkpoint as a Hugging Face model folder (``zerolm export RUN_DIR OUT_DIR``).

    Args:
        run_dir: the trainer's run directory (``config.yaml``, ``checkpoints/``).
        out_dir: the folder to write; replaced if it holds a previous export, refused if it holds
            anything else.
        tag: the checkpoint tag; ``None`` = ``checkpoints/latest``.

    Returns:
        A JSON-serialisable summary: ``out_dir``, ``run_dir``, ``tag``, ``step``, ``tokens_seen``,
        ``metrics`` (from ``zerolm_complete.json``), ``params`` (``total``/``non_embedding``),
        ``weights_from`` (``zero_to_fp32`` or ``module``), ``files`` (name → bytes), ``seconds``.

    Raises:
        DataError: no complete checkpoint (see :func:`resolve_checkpoint`); no ``config.yaml`` (the
            checkpoint's own copy ``<tag>/config.yaml`` is preferred, else ``RUN_DIR/config.yaml``); the
            tokenizer folder is missing; the weights do not fit the model the config describes; the
            output folder is not replaceable. Each message names the path.
        ConfigError: ``config.yaml`` is invalid.
    """
    import torch
    from transformers import GenerationConfig

    from data_pipeline.tokenizer import (
        load_hf_tokenizer,
        load_pipeline_tokenizer,
        save_hf_tokenizer,
        set_special_tokens_template,
    )
    from pretrain.models import build_model, count_parameters, objective_of, resolve_model_config, special_ids_of
    from zerolm.config import load_config

    t0 = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out_dir).resolve()
    tag_dir, complete = resolve_checkpoint(run_dir, tag)
    tag = tag_dir.name
    # the config the checkpoint was saved with (the trainer keeps a copy per tag), else the run's
    config_path = next((p for p in (tag_dir / "config.yaml", run_dir / "config.yaml") if p.is_file()), None)
    if config_path is None:
        raise DataError(f"no run config {run_dir / 'config.yaml'} (nor {tag_dir / 'config.yaml'}): is {run_dir} a zerolm run directory?")
    cfg = load_config(config_path)
    check_replaceable(out, lambda d: (d / EXPORT_META).is_file(), "export directory")
    _no_live_hf_deepspeed_config()

    model_cfg = resolve_model_config(cfg.model)
    objective = objective_of(model_cfg.family)
    if cfg.data.objective != objective:
        logger.warning("config data.objective=%s but model.family=%s trains %s; exporting as %s",
                       cfg.data.objective, model_cfg.family, objective, objective)
    ptok = load_pipeline_tokenizer(cfg.data.tokenizer_dir)
    state_dict, weights_from = consolidated_state_dict(tag_dir)
    torch.manual_seed(0)  # the random init is overwritten; seeded only to be reproducible
    model = build_model(model_cfg, vocab_size=ptok.vocab_size, seq_len=cfg.data.seq_len, special_ids=special_ids_of(ptok))
    load_weights(model, state_dict)
    del state_dict
    model.eval()
    counts = count_parameters(model)
    positions = int(model.config.max_position_embeddings)
    if objective == "clm":
        model.generation_config = GenerationConfig(
            bos_token_id=ptok.bos_id,
            eos_token_id=ptok.eos_id,
            pad_token_id=ptok.pad_id,
            max_new_tokens=max(1, min(128, positions // 2)),
            do_sample=True,
            top_k=50,
            top_p=0.95,
            temperature=1.0,
        )

    hf_tok = load_hf_tokenizer(cfg.data.tokenizer_dir)
    set_special_tokens_template(hf_tok, objective)
    hf_tok.model_max_length = positions

    secrets = _secret_env_values()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        save_hf_tokenizer(hf_tok, tmp)
        card = render_model_card(
            name=out.name, cfg=cfg, model_cfg=model_cfg, hf_cfg=model.config, counts=counts, complete=complete,
            tag=tag, vocab_size=ptok.vocab_size, tokenizer_type=f"sentencepiece {ptok.model_type}",
        )
        (tmp / "README.md").write_text(_redact_text(card, secrets), encoding="utf-8")
        meta = {
            "format": EXPORT_FORMAT,
            "run_dir": str(run_dir.resolve()),
            "tag": tag,
            "step": complete.get("step"),
            "tokens_seen": complete.get("tokens_seen"),
            "metrics": complete.get("metrics") or {},
            "family": model_cfg.family,
            "objective": objective,
            "params": counts,
            "weights_from": weights_from,
            "config": scrub_secrets(cfg.model_dump(mode="json")),
        }
        (tmp / EXPORT_META).write_text(_redact_text(json.dumps(meta, indent=2), secrets) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        for p in tmp.iterdir():
            if p.is_file():
                os.chmod(p, 0o644)  # safetensors writes its file 0600
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    summary = {
        "out_dir": str(out),
        "run_dir": str(run_dir),
        "tag": tag,
        "step": complete.get("step"),
        "tokens_seen": complete.get("tokens_seen"),
        "metrics": complete.get("metrics") or {},
        "params": counts,
        "weights_from": weights_from,
        "files": files,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    logger.info(
        "exported %s (%s, step %s) to %s: %s params, %d files",
        tag_dir, weights_from, summary["step"], out, f"{counts['total']:,}", len(files),
    )
    return summary


__all__ = [
    "consolidated_state_dict",
    "export_checkpoint",
    "load_weights",
    "render_model_card",
    "resolve_checkpoint",
    "scrub_secrets",
]
