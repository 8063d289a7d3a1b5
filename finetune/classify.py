"""Finetune a sequence classifier with the shared DeepSpeed loop, then export it for Hugging Face.

:func:`finetune_classify` is the whole job (``zerolm finetune classify`` / ``python -m zerolm.finetune``):

1. every rank reads the labelled data, splits it (stratified, deterministic) and tokenizes it with
   the base model's tokenizer (truncation to ``finetune.max_length``; dynamic padding per batch);
2. :func:`pretrain.trainer.train` runs the loop with :func:`classification_components`: the model is
   ``AutoModelForSequenceClassification.from_pretrained(base)`` (an encoder gets a head on its
   first token, a causal LM one on its last non-pad token) inside :class:`Classifier`, which adds
   optional class weights to the loss; the objective is :class:`ClassificationObjective`;
3. rank 0 consolidates the final checkpoint (:func:`pretrain.ds_checkpoint.load_checkpoint_weights`, any
   ZeRO stage), writes a Hugging Face folder with ``id2label``/``label2id`` and the tokenizer, and
   evaluates it on the test split: ``classification_metrics.json`` (accuracy, macro-F1, per-class
   precision/recall/F1, confusion matrix, class balance) and ``confusion_matrix.png``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zerolm.data_pipeline.labelled import load_labelled
from zerolm.hf_models import resolve_model_path
from zerolm import card as modelcard
from zerolm import fsutil
from zerolm.finetune import data as fdata
from zerolm.pretrain.objectives import Objective
from zerolm.config import ZeroLMConfig
from zerolm.errors import DataError
from zerolm.pretrain.progress import progress_bar

log = logging.getLogger(__name__)

METRICS_FILE = "classification_metrics.json"
CONFUSION_PNG = "confusion_matrix.png"


# --------------------------------------------------------------------------------------------------
# Objective and metrics
# --------------------------------------------------------------------------------------------------


def metrics_from_confusion(confusion: torch.Tensor, label_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support from a ``(C, C)`` confusion
    matrix (rows = true class, columns = predicted). A class never predicted has precision 0."""
    cm = confusion.double()
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp))
    present = support > 0
    total = float(cm.sum())
    return {
        "accuracy": float(tp.sum()) / total if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(label_names)},
        "confusion_matrix": cm.long().tolist(),
        "labels": list(label_names),
        "examples": int(total),
    }


class ClassificationObjective(Objective):
    """Sequence classification: eval sums ``loss_sum`` (unweighted cross-entropy, summed),
    ``count`` and ``confusion`` ``(C, C)``; metrics ``eval/loss``, ``eval/accuracy``, ``eval/macro_f1``."""

    name = "classify"

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels

    def predicted_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.tensor(labels.shape[0])

    def eval_sums(self, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        pred = logits.argmax(-1)
        cm = torch.bincount(labels * self.num_labels + pred, minlength=self.num_labels ** 2).reshape(self.num_labels, self.num_labels)
        return {"loss_sum": F.cross_entropy(logits, labels, reduction="sum").detach(),
                "count": torch.tensor(float(labels.shape[0])), "confusion": cm.float()}

    def summarize(self, total: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(total["count"])
        if not n:
            return {}
        m = metrics_from_confusion(total["confusion"], [str(i) for i in range(self.num_labels)])
        return {"eval/loss": float(total["loss_sum"]) / n, "eval/accuracy": m["accuracy"],
                "eval/macro_f1": m["macro_f1"], "eval/examples": n}


class Classifier(torch.nn.Module):
    """A ``*ForSequenceClassification`` model whose loss may weight classes (``weights`` is a
    non-persistent buffer: checkpoints hold exactly the wrapped model's weights under ``model.``)."""

    def __init__(self, model: torch.nn.Module, weights: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("weights", weights, persistent=False)

    def forward(self, labels: torch.Tensor | None = None, **batch):
        out = self.model(**batch)
        if labels is not None:
            logits = out.logits.float()
            out.loss = F.cross_entropy(logits, labels, weight=None if self.weights is None else self.weights.to(logits.device))
        return out

    # transformers' activation checkpointing goes to the wrapped model
    def activation_checkpointing_enable(self, **kwargs):
        """Recompute the wrapped model's activations in backward (``transformers``' switch)."""
        self.model.activation_checkpointing_enable(**kwargs)

    @property
    def is_activation_checkpointing(self) -> bool:
        """Whether the wrapped model recomputes activations in backward."""
        return bool(self.model.is_activation_checkpointing)


# --------------------------------------------------------------------------------------------------
# Data preparation (identical on every rank)
# --------------------------------------------------------------------------------------------------


def load_tokenizer(model_dir: str):
    """The base model's tokenizer with a pad token (a causal LM without one pads with EOS)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise DataError(f"{model_dir}: the tokenizer has neither a pad nor an EOS token to pad with")
        tok.pad_token = tok.eos_token
    return tok


def prepare_data(fc) -> dict[str, Any]:
    """Read, split and report the data of ``cfg.finetune``.

    Returns:
        ``{"label_names", "splits": {split: (texts, label_ids)}, "skipped", "balance"}``.

    Raises:
        DataError: unreadable data or a missing column; a validation/test label the training split
            lacks; fewer than two classes.
    """
    main = load_labelled(fc.data, fc.text_column, fc.label_column)
    skipped = dict(main.skipped)
    if fc.validation_data or fc.test_data:
        idx = fdata.stratified_split(main.labels, fc.validation_fraction if not fc.validation_data else 1e-9,
                                     fc.test_fraction if not fc.test_data else 1e-9, fc.split_seed, fc.max_examples)
        parts = {s: ([main.texts[i] for i in idx[s]], [main.labels[i] for i in idx[s]]) for s in idx}
        for split, path in (("validation", fc.validation_data), ("test", fc.test_data)):
            if path:
                extra = load_labelled(path, fc.text_column, fc.label_column)
                for k, v in extra.skipped.items():
                    skipped[k] = skipped.get(k, 0) + v
                parts[split] = (extra.texts, extra.labels)
    else:
        idx = fdata.stratified_split(main.labels, fc.validation_fraction, fc.test_fraction, fc.split_seed, fc.max_examples)
        parts = {s: ([main.texts[i] for i in idx[s]], [main.labels[i] for i in idx[s]]) for s in idx}
    label_names = sorted(set(parts["train"][1]))
    if len(label_names) < 2:
        raise DataError(f"{fc.data}: the training split has {len(label_names)} class(es); need at least 2")
    for split in ("validation", "test"):
        unseen = sorted(set(parts[split][1]) - set(label_names))
        if unseen:
            raise DataError(f"label(s) {unseen} appear only in the {split} split, never in training "
                            f"(training labels: {label_names})")
    to_id = {y: i for i, y in enumerate(label_names)}
    splits = {s: (t, [to_id[y] for y in ys]) for s, (t, ys) in parts.items()}
    balance = fdata.imbalance_report({s: ys for s, (_, ys) in parts.items()}, label_names)
    return {"label_names": label_names, "splits": splits, "skipped": skipped, "balance": balance}


def tokenize(tok, texts: list[str], labels: list[int], max_length: int) -> list[tuple[list[int], int]]:
    """``(input_ids, label)`` pairs, truncated to ``max_length`` (special tokens included)."""
    enc = tok(texts, truncation=True, max_length=max_length)["input_ids"] if texts else []
    return list(zip(enc, labels))


def build_classifier(model_dir: str, label_names: list[str], pad_id: int):
    """``AutoModelForSequenceClassification`` from a Hugging Face folder with our labels (new head)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier.*" is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
            label2id={y: i for i, y in enumerate(label_names)}, pad_token_id=pad_id)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load a sequence classifier from {model_dir}: {e}") from e
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.pad_token_id = pad_id
    model.config.problem_type = "single_label_classification"
    return model


def classification_components(cfg: ZeroLMConfig, env, prepared: dict[str, Any] | None = None) -> tuple[ZeroLMConfig, Any]:
    """The ``build`` of :class:`pretrain.trainer.Trainer` for classification finetuning
    (``prepared``: the output of :func:`prepare_data`, computed here when not given)."""
    from zerolm.pretrain.models import flops_per_token
    from zerolm.pretrain.components import Components

    fc = cfg.finetune
    model_dir = resolve_model_path(fc.model)
    prepared = prepared or prepare_data(fc)
    names = prepared["label_names"]
    tok = load_tokenizer(model_dir)
    (tr_t, tr_y), (va_t, va_y) = prepared["splits"]["train"], prepared["splits"]["validation"]
    train_ex, val_ex = tokenize(tok, tr_t, tr_y, fc.max_length), tokenize(tok, va_t, va_y, fc.max_length)
    micro = cfg.data.micro_batch_size
    weights = fdata.class_weights(tr_y, len(names)) if fc.class_weights else None
    model = Classifier(build_classifier(model_dir, names, tok.pad_token_id), weights)
    if env.is_main:
        log.info("classes %s | %s", names, json.dumps({s: b["counts"] for s, b in prepared["balance"].items()}))
        ratio = prepared["balance"]["train"]["imbalance_ratio"]
        if ratio and ratio > 1.5:
            log.warning("training classes are imbalanced (largest/smallest = %.2f)%s", ratio,
                        "; class weights on" if weights is not None else "; consider finetune.class_weights=true")
    hc = model.model.config
    n_params = sum(p.numel() for p in model.parameters())
    n_layer = getattr(hc, "num_hidden_layers", None) or getattr(hc, "n_layer", 1)
    d_model = getattr(hc, "hidden_size", None) or getattr(hc, "n_embd", 1)
    skipped = {f"{k}": v for k, v in prepared["skipped"].items()}
    return cfg, Components(
        model=model,
        train_loader=fdata.ClassificationLoader(train_ex, micro, tok.pad_token_id, rank=env.rank, world_size=env.world_size,
                                                seed=cfg.data.seed, infinite=True, skipped=skipped),
        make_eval_loader=lambda: fdata.ClassificationLoader(val_ex, micro, tok.pad_token_id, rank=env.rank,
                                                            world_size=env.world_size, infinite=False),
        objective=ClassificationObjective(len(names)),
        description=f"{type(model.model).__name__} from {model_dir} ({n_params / 1e6:.1f}M parameters), {len(names)} classes",
        flops_per_token=flops_per_token(n_params, n_layer, d_model, fc.max_length),
        tokens_per_sample=fc.max_length,
        parameters=n_params,
        job="classify",
    )


# --------------------------------------------------------------------------------------------------
# Export and test evaluation (rank 0, after training)
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def predict(model, tok, texts: list[str], max_length: int, batch_size: int = 32, progress: bool = False) -> list[int]:
    """Argmax class ids of a ``*ForSequenceClassification`` model over texts (sorted by length for speed);
    ``progress`` draws a bar of the texts classified (:func:`zerolm.pretrain.progress.progress_bar`)."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = [0] * len(texts)
    with progress_bar(len(texts), "classify test", "items", progress) as bar:
        for s in range(0, len(order), batch_size):
            chunk = order[s : s + batch_size]
            enc = tok([texts[i] for i in chunk], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1).tolist()
            for i, p in zip(chunk, pred):
                out[i] = p
            bar.update(len(chunk))
    return out


def confusion_matrix(true: list[int], pred: list[int], num_labels: int) -> torch.Tensor:
    t, p = torch.tensor(true, dtype=torch.long), torch.tensor(pred, dtype=torch.long)
    return torch.bincount(t * num_labels + p, minlength=num_labels ** 2).reshape(num_labels, num_labels)


def plot_confusion(cm: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    """A confusion-matrix heat map (counts, row-normalised colours) as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    a = np.array(cm, dtype=float)
    norm = a / np.maximum(a.sum(1, keepdims=True), 1)
    size = max(4.0, 0.7 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(a[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export_classifier(cfg: ZeroLMConfig, out_dir: str | Path, prepared: dict[str, Any] | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """Consolidate the run's newest checkpoint into a Hugging Face folder and evaluate it on the test split
    (``progress``: a bar of the test texts classified, :func:`predict`).

    Writes ``out_dir`` (``config.json`` with ``id2label``/``label2id``, ``model.safetensors``, the
    tokenizer, ``classification_metrics.json``, ``confusion_matrix.png``, ``README.md``) and returns the
    metrics. The folder is built in a temporary sibling and renamed into place (:func:`zerolm.fsutil.staged_dir`).

    Raises:
        DataError: ``out_dir`` is not empty and holds no previous classifier export.
    """
    from transformers import AutoModelForSequenceClassification

    from zerolm.pretrain.ds_checkpoint import load_checkpoint_weights, no_live_hf_deepspeed_config

    t0 = time.perf_counter()
    fc = cfg.finetune
    out = Path(out_dir)
    is_ours = lambda d: (d / METRICS_FILE).is_file()  # noqa: E731 - a previous classifier export
    fsutil.check_replaceable(out, is_ours, "export directory")  # before any work
    model_dir = resolve_model_path(fc.model)
    prepared = prepared or prepare_data(fc)
    names = prepared["label_names"]
    no_live_hf_deepspeed_config()
    tok = load_tokenizer(model_dir)
    torch.manual_seed(0)
    model = build_classifier(model_dir, names, tok.pad_token_id)
    tag_dir, complete, source = load_checkpoint_weights(model, cfg.train.run_dir, prefix="model.")
    with fsutil.staged_dir(out, is_ours=is_ours, what="export directory") as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        # reload what we wrote: the metrics are those of the exported folder
        model = AutoModelForSequenceClassification.from_pretrained(str(tmp))
        texts, true = prepared["splits"]["test"]
        pred = predict(model, tok, texts, fc.max_length, progress=progress)
        cm = confusion_matrix(true, pred, len(names))
        m = metrics_from_confusion(cm, names)
        result = {
            "split": "test", "model": str(model_dir), "data": fc.data, "checkpoint": str(tag_dir), "weights_from": source,
            "step": complete.get("step"), "validation": complete.get("metrics") or {},
            **{k: m[k] for k in ("accuracy", "macro_f1", "examples", "labels", "per_class", "confusion_matrix")},
            "class_balance": prepared["balance"], "skipped": prepared["skipped"],
            "class_weights": bool(fc.class_weights), "max_length": fc.max_length,
        }
        fsutil.write_json(tmp / METRICS_FILE, result, indent=1)
        modelcard.write_card(tmp, _model_card(out, result))
        plot_confusion(m["confusion_matrix"], names, tmp / CONFUSION_PNG,
                       f"{Path(str(model_dir)).name} on {Path(fc.data).name}: test accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    log.info("exported %s to %s | test accuracy %.4f | macro-F1 %.4f (%d examples) | %.1f s",
             tag_dir, out, m["accuracy"], m["macro_f1"], m["examples"], time.perf_counter() - t0)
    return result


def _model_card(out: Path, r: dict[str, Any]) -> str:
    """The classifier's model card (composed by :func:`zerolm.card.compose`): metadata, test metrics per
    class, usage."""
    rows = "\n".join(f"| {y} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
                     for y, c in r["per_class"].items())
    metadata = {"library_name": "transformers", "pipeline_tag": "text-classification",
                "tags": ["zerolm", "text-classification"]}
    return modelcard.compose(metadata, out.name, [
        f"`{Path(r['model']).name}` finetuned with zerolm (DeepSpeed) to classify `{r['data']}` into\n"
        f"{', '.join(r['labels'])} ({r['step']} optimizer steps, max {r['max_length']} tokens).",
        f"Held-out test split ({r['examples']} examples, stratified): accuracy **{r['accuracy']:.4f}**, macro-F1\n"
        f"**{r['macro_f1']:.4f}**. Confusion matrix: `{CONFUSION_PNG}`; all numbers: `{METRICS_FILE}`.",
        "| class | precision | recall | F1 | support |\n|---|---|---|---|---|\n" + rows,
        "```python\nfrom transformers import pipeline\n"
        f'clf = pipeline("text-classification", model="{out.name}")\n'
        'print(clf("An absorbing, beautifully acted film."))\n```',
    ])


def _log_test_to_tracker(cfg: ZeroLMConfig, result: dict[str, Any]) -> None:
    """Add the test metrics to the W&B run of the training (resumed by id), best effort."""
    try:
        from zerolm.pretrain.checkpoint import resolve
        from zerolm.pretrain.tracking import Tracker, run_config

        run_id = resolve(cfg.train.run_dir)[1].get("wandb_run_id")
        tr = Tracker(cfg.tracking, Path(cfg.train.run_dir), run_config(cfg, "classify"), run_id, resume_step=result.get("step"))
        flat = {"test/accuracy": result["accuracy"], "test/macro_f1": result["macro_f1"]}
        for name, pc in result["per_class"].items():
            flat[f"test/precision/{name}"] = pc["precision"]
            flat[f"test/recall/{name}"] = pc["recall"]
        tr.summary(flat)
        tr.finish()
    except Exception as e:  # noqa: BLE001 - tracking never fails the job
        log.warning("could not log test metrics to the tracker: %s", e)


def finetune_classify(cfg: ZeroLMConfig, progress: bool = False) -> dict[str, Any]:
    """Train (this process's part of the job), then on rank 0 export and evaluate on the test split
    (``progress``: a bar of the test evaluation; the trainer logs every ``log_every`` steps instead).

    Returns:
        The trainer's summary; on rank 0 also ``export_dir`` and ``test`` (accuracy, macro-F1, …).
    """
    import functools

    from zerolm.pretrain.distributed import is_main_process
    from zerolm.pretrain.trainer import train

    prepared = prepare_data(cfg.finetune)  # bad data fails here, before any process group or model
    result = train(cfg, build=functools.partial(classification_components, prepared=prepared))
    if is_main_process():
        out = cfg.finetune.export_dir or str(Path(cfg.train.run_dir) / "hf")
        test = export_classifier(cfg, out, prepared, progress=progress)
        _log_test_to_tracker(cfg, test)
        result = {**result, "export_dir": out,
                  "test": {k: test[k] for k in ("accuracy", "macro_f1", "examples")}}
        fsutil.write_json(Path(cfg.train.run_dir) / "result.json", result)
    return result
