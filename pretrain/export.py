"""``zerolm export RUN_DIR OUT_DIR``: a DeepSpeed checkpoint → a Hugging Face model folder.

The run directory is the one the trainer writes; :mod:`zerolm.pretrain.checkpoint` owns its layout
and picks the checkpoint (``checkpoint.resolve``: the ``latest`` one, or a tag; complete and intact).

The export consolidates the fp32 weights through the engine wrapper
(:func:`zerolm.pretrain.ds_checkpoint.consolidated_state_dict`, DeepSpeed's own ``zero_to_fp32`` route),
rebuilds the model from the checkpoint's ``config.yaml`` (:func:`pretrain.models.build_model`), loads
the weights strictly (tied weights are one tensor: ``lm_head.weight`` / ``wte.weight``), and writes::

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

import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from zerolm import card as modelcard
from zerolm import fsutil
from zerolm.fsutil import check_replaceable
from zerolm.redact import redact
from zerolm.errors import DataError
from zerolm.pretrain.emissions import card_co2, summary_line
from zerolm.pretrain.progress import progress_bar

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "zerolm-export/1"
EXPORT_META = "zerolm_export.json"

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

# --------------------------------------------------------------------------------------------------
# Reading the run directory
# --------------------------------------------------------------------------------------------------


# The checkpoint layout (completion record, discovery) is zerolm.pretrain.checkpoint's, reading a
# DeepSpeed checkpoint back as fp32 weights is the engine wrapper's (zerolm.pretrain.engine): export
# asks them (checkpoint.resolve, ds_checkpoint.consolidated_state_dict / load_weights).


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
    lineage: list[dict[str, Any]] | None = None,
) -> str:
    """The ``README.md`` of an export, composed by :func:`zerolm.card.compose`: Hugging Face metadata
    (YAML front matter) + the pretraining sections.

    Metadata (validated by ``huggingface_hub.ModelCardData``): ``license`` (the corpus sources' license
    when they share one, else ``other``), ``language: en``, ``library_name: transformers``,
    ``pipeline_tag`` (text-generation or fill-mask), ``tags`` (zerolm, causal-lm|masked-lm, family).
    Body: architecture and parameter counts, training (steps, tokens, final validation metrics), data
    (from the corpus ``manifest.json``), usage, and the resolved config (redacted by
    :func:`zerolm.redact.redact`). ``lineage`` (:func:`zerolm.pretrain.init_from.this_stage`): the
    training stages, oldest first; a model continued from another gets a lineage table and says which
    model it started from.
    """
    from zerolm.pretrain.models import objective_of

    objective = objective_of(model_cfg.family)
    causal = objective == "clm"
    manifest = _corpus_manifest(cfg)
    license_id = _hf_license(manifest)
    metadata = {
        "language": "en",
        "license": license_id,
        "library_name": "transformers",
        "pipeline_tag": "text-generation" if causal else "fill-mask",
        "tags": ["zerolm", "causal-lm" if causal else "masked-lm", model_cfg.family],
    }
    co2 = card_co2(complete.get("emissions"))
    if co2:  # the Hub's carbon metadata: grams CO2e, how measured, where, on what
        metadata["co2_eq_emissions"] = co2
    arch = (hf_cfg.architectures or [type(hf_cfg).__name__])[0]
    metrics = complete.get("metrics") or {}
    positions = getattr(hf_cfg, "max_position_embeddings", None)
    stages = lineage or []
    continued = len(stages) > 1 or (stages and stages[0].get("start") != "random init")
    origin = (f"continued pretraining of `{stages[-1].get('start')}`" if continued else "pretrained from scratch")
    intro = (f"A {model_cfg.family} {'causal' if causal else 'masked'} language model ({arch}): {origin} with zerolm "
             f"(DeepSpeed ZeRO), exported from checkpoint `{tag}`. It is a research model: check its outputs "
             "before relying on them.")
    model = [
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
    ]
    training = [
        "## Training",
        "",
        f"- objective: {'causal language modelling (next-token prediction)' if causal else 'masked language modelling (BERT-style: ' + format(cfg.data.mlm_probability, '.0%') + ' of tokens masked in training, ' + format(cfg.data.eval_mlm_probability, '.0%') + ' in validation)'}",
        f"- steps: {_fmt(complete.get('step'))}",
        f"- tokens seen: {_fmt(complete.get('tokens_seen'))}",
        f"- sequence length: {cfg.data.seq_len}; micro batch {cfg.data.micro_batch_size}; "
        f"ZeRO stage {cfg.train.zero_stage}; precision {cfg.train.precision}",
        f"- optimizer: AdamW, peak lr {cfg.train.lr}, warmup {cfg.train.warmup_steps} steps, weight decay {cfg.train.weight_decay}"
        + (" (optimizer state and LR schedule fresh at the start of this stage)" if continued else ""),
        f"- final validation loss: {_fmt(metrics.get('eval/loss'))}",
        f"- final validation perplexity: {_fmt(metrics.get('eval/perplexity'), 2)}",
    ]
    if "eval/accuracy" in metrics:
        training.append(f"- final validation masked-token accuracy: {_fmt(metrics.get('eval/accuracy'))}")
    if co2:
        training.append(f"- energy and emissions (this stage, to checkpoint `{tag}`): {summary_line(complete['emissions'])}")
    data = ["## Data", ""]
    if manifest:
        data += [
            "Trained on the zerolm corpus prepared by `zerolm data prepare` (deduplicated; "
            "train/validation split by a hash of each document).",
            "",
            "| source | license | train documents | validation documents | description |",
            "|---|---|---|---|---|",
        ]
        for s in manifest.get("sources", []):
            docs = s.get("documents", {})
            data.append(
                f"| {s.get('name')} | {s.get('license', 'unknown')} | {_fmt(docs.get('train'))} | "
                f"{_fmt(docs.get('validation'))} | {s.get('description', '')} |"
            )
        tot = (manifest.get("totals") or {}).get("documents", {})
        licenses = sorted({str(s.get("license", "unknown")) for s in manifest.get("sources", [])})
        data += [
            "",
            f"Total: {_fmt(tot.get('train'))} training and {_fmt(tot.get('validation'))} validation documents.",
            "",
            f"Licenses of the training text: {', '.join(licenses)} (model card license: `{license_id}`; "
            "check each source's terms before reuse).",
        ]
    else:
        data += ["Training sources (paths as configured):", ""]
        for s in cfg.data.sources:
            data.append(f"- {s.name} (weight {s.weight}): {', '.join(s.paths) or f'Hugging Face dataset {s.hf_dataset} ({s.split})'}")
    auto, task, example = (("AutoModelForCausalLM", "text-generation", 'generator = pipeline("text-generation", model="{}")\n'
                            'print(generator("The history of", max_new_tokens=30)[0]["generated_text"])') if causal else
                           ("AutoModelForMaskedLM", "fill-mask", 'fill = pipeline("fill-mask", model="{}")\n'
                            'print(fill("The capital of France is [MASK]."))'))
    usage = [
        "## How to use",
        "",
        "```python",
        f"from transformers import {auto}, AutoTokenizer, pipeline",
        "",
        f'model = {auto}.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        example.format(name),
        "```",
    ]
    if not causal:
        usage += ["", "The tokenizer adds `[CLS] … [SEP]` around each text, as BERT's does."]
    config = [
        "## Resolved zerolm config",
        "",
        "```yaml",
        yaml.safe_dump(redact(cfg.model_dump(mode="json")), sort_keys=False).rstrip(),
        "```",
    ]
    history = []
    if continued:
        history = ["## Lineage", "", "| stage | started from | data | steps | tokens |", "|---|---|---|---|---|"]
        for i, st in enumerate(stages, 1):
            history.append(f"| {i} | {st.get('start')} | {', '.join(st.get('data') or []) or st.get('note') or '-'} | "
                           f"{_fmt(st.get('steps'))} | {_fmt(st.get('tokens'))} |")
    blocks = [intro, model, training, *([history] if history else []), data, usage, config]
    return modelcard.compose(metadata, name, [b if isinstance(b, str) else "\n".join(b) for b in blocks])


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


_EXPORT_STAGES = ("consolidate weights", "load weights", "save model", "save tokenizer and card")


def export_checkpoint(run_dir: str | Path, out_dir: str | Path, tag: str | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """Export a run's checkpoint as a Hugging Face model folder (``zerolm export RUN_DIR OUT_DIR``).

    Args:
        run_dir: the trainer's run directory (``config.yaml``, ``checkpoints/``).
        out_dir: the folder to write; replaced if it holds a previous export, refused if it holds
            anything else.
        tag: the checkpoint tag; ``None`` = ``checkpoints/latest``.
        progress: draw a bar of the export's stages (consolidate weights, load them into the model,
            save the model, save tokenizer and card) with the current one named
            (:func:`zerolm.pretrain.progress.progress_bar`: main process, stderr a terminal).

    Returns:
        A JSON-serialisable summary: ``out_dir``, ``run_dir``, ``tag``, ``step``, ``tokens_seen``,
        ``metrics`` (from ``zerolm_complete.json``), ``params`` (``total``/``non_embedding``),
        ``weights_from`` (``zero_to_fp32`` or ``module``), ``files`` (name → bytes), ``seconds``.

    Raises:
        DataError: no complete checkpoint (see :func:`zerolm.pretrain.checkpoint.resolve`); no ``config.yaml`` (the
            checkpoint's own copy ``<tag>/config.yaml`` is preferred, else ``RUN_DIR/config.yaml``); the
            tokenizer folder is missing; the weights do not fit the model the config describes; the
            output folder is not replaceable. Each message names the path.
        ConfigError: ``config.yaml`` is invalid.
    """
    import torch
    from transformers import GenerationConfig

    from zerolm.data_pipeline.tokenizer import (
        load_pipeline_tokenizer,
        model_tokenizer,
        save_hf_tokenizer,
    )
    from zerolm.pretrain.models import (build_model, count_parameters, model_from_hf_config, objective_of,
                                        resolve_model_config, special_ids_of)
    from zerolm.config import load_config
    from zerolm.pretrain.checkpoint import read_hf_config, resolve
    from zerolm.pretrain.lineage import this_stage
    from zerolm.pretrain.ds_checkpoint import consolidated_state_dict, load_weights, no_live_hf_deepspeed_config

    t0 = time.perf_counter()
    run_dir, out = Path(run_dir), Path(out_dir).resolve()
    tag_dir, complete = resolve(run_dir, tag)
    tag = tag_dir.name
    # the config the checkpoint was saved with (the trainer keeps a copy per tag), else the run's
    config_path = next((p for p in (tag_dir / "config.yaml", run_dir / "config.yaml") if p.is_file()), None)
    if config_path is None:
        raise DataError(f"no run config {run_dir / 'config.yaml'} (nor {tag_dir / 'config.yaml'}): is {run_dir} a zerolm run directory?")
    cfg = load_config(config_path)
    check_replaceable(out, lambda d: (d / EXPORT_META).is_file(), "export directory")
    no_live_hf_deepspeed_config()

    model_cfg = resolve_model_config(cfg.model)
    objective = objective_of(model_cfg.family)
    if cfg.data.objective != objective:
        logger.warning("config data.objective=%s but model.family=%s trains %s; exporting as %s",
                       cfg.data.objective, model_cfg.family, objective, objective)
    ptok = load_pipeline_tokenizer(cfg.data.tokenizer_dir)
    bar = progress_bar(len(_EXPORT_STAGES), "export", "steps", progress)

    def stage(done: int) -> None:  # `done` stages finished: advance the bar and name the next one
        bar.update(done - bar.n)
        if done < len(_EXPORT_STAGES):
            bar.set_postfix_str(_EXPORT_STAGES[done])
        else:
            bar.close()

    stage(0)
    state_dict, weights_from = consolidated_state_dict(tag_dir)
    stage(1)
    torch.manual_seed(0)  # the random init is overwritten; seeded only to be reproducible
    recorded = read_hf_config(tag_dir)
    if recorded is not None:  # a continued model (model.init_from): its own architecture, as trained
        model = model_from_hf_config(recorded, objective)
    else:
        model = build_model(model_cfg, vocab_size=ptok.vocab_size, seq_len=cfg.data.seq_len, special_ids=special_ids_of(ptok))
    load_weights(model, state_dict)
    del state_dict
    stage(2)
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

    hf_tok = model_tokenizer(cfg.data.tokenizer_dir, objective, positions)

    lineage = this_stage(run_dir, cfg, complete.get("tokens_seen"), complete.get("step"))
    with fsutil.staged_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        stage(3)
        save_hf_tokenizer(hf_tok, tmp)
        card = render_model_card(
            name=out.name, cfg=cfg, model_cfg=model_cfg, hf_cfg=model.config, counts=counts, complete=complete,
            tag=tag, vocab_size=ptok.vocab_size, lineage=lineage,
            tokenizer_type=(f"sentencepiece {ptok.model_type}" if type(ptok).__name__ == "PipelineTokenizer"
                            else f"{ptok.model_type}, the base model's own"),
        )
        modelcard.write_card(tmp, card)
        meta = {
            "format": EXPORT_FORMAT,
            "run_dir": str(run_dir.resolve()),
            "tag": tag,
            "step": complete.get("step"),
            "tokens_seen": complete.get("tokens_seen"),
            "metrics": complete.get("metrics") or {},
            "emissions": complete.get("emissions"),
            "family": model_cfg.family,
            "objective": objective,
            "params": counts,
            "weights_from": weights_from,
            "lineage": lineage,
            "config": cfg.model_dump(mode="json"),
        }
        fsutil.write_json(tmp / EXPORT_META, redact(meta), indent=2)
    stage(4)
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
    "export_checkpoint",
    "render_model_card",
]
