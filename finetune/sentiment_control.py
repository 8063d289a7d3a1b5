"""Method ``control`` of ``zerolm finetune sentiment``: control codes (Keskar et al. 2019, CTRL).

The policy is finetuned with the shared DeepSpeed loop (:class:`pretrain.trainer.Trainer` with
:func:`control_components`, causal-LM :class:`pretrain.objectives.Objective`) on labelled real rows
written ``<code tokens> <text tokens> EOS``, the loss on the text only (the code and padding are
−100). Codes are plain text (``sentiment.control_codes``) tokenized as ``code + "\\n"`` and
concatenated with the text's tokens, so generation = code tokens + prompt tokens sees exactly the
token boundary it was trained on. Rank 0 then consolidates the final checkpoint and exports it with
:func:`finetune.sentiment_export.export_policy`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from zerolm.config import ZeroLMConfig
from zerolm.errors import DataError
from zerolm.finetune import data as fdata
from zerolm.finetune.sentiment import code_ids, load_policy, polarity_of, split_texts
from zerolm.finetune.sentiment_export import export_meta, export_policy
from zerolm.pretrain.distributed import is_main_process


class ControlCodeLoader(fdata.ClassificationLoader):
    """:class:`finetune.data.ClassificationLoader` over ``(ids, prefix_length)`` pairs that yields
    causal-LM batches: ``labels`` ``(B, T)`` = ``input_ids`` with −100 on the code prefix and padding."""

    def __iter__(self):
        for batch in super().__iter__():
            prefix = batch.pop("labels")
            labels = batch["input_ids"].clone()
            before = torch.arange(labels.shape[1])[None] < prefix[:, None]
            labels[before | (batch["attention_mask"] == 0)] = -100
            batch["labels"] = labels
            yield batch


def control_examples(tok, sc, texts: list[str], labels: list[str], eos: int | None) -> list[tuple[list[int], int]]:
    """``(code + text tokens [+ EOS], code length)`` per row whose label maps to positive/negative
    (:func:`polarity_of`; e.g. ``neutral`` rows are left out), truncated to ``control_max_length``."""
    codes = {p: code_ids(tok, c) for p, c in sc.control_codes.items()}
    keep = [(t, polarity_of(y)) for t, y in zip(texts, labels) if polarity_of(y)]
    if not keep:
        raise DataError(f"{sc.data}: no label maps to positive/negative (labels: {sorted(set(labels))[:10]})")
    enc = tok([t for t, _ in keep], add_special_tokens=False)["input_ids"]
    out = []
    for ids, (_, p) in zip(enc, keep):
        c = codes[p]
        body = ids[: max(1, sc.control_max_length - len(c) - 1)] + ([eos] if eos is not None else [])
        out.append((c + body, len(c)))
    return out


def control_components(cfg: ZeroLMConfig, env, prepared: dict[str, Any]):
    """The ``build`` of :class:`pretrain.trainer.Trainer` for the control-code method: the policy as
    ``AutoModelForCausalLM``, code-prefixed training rows (validation rows for ``eval/loss``), the
    causal-LM :class:`pretrain.objectives.Objective`."""
    from zerolm.pretrain.models import flops_per_token
    from zerolm.pretrain.objectives import Objective
    from zerolm.pretrain.trainer import Components

    sc = cfg.sentiment
    model, tok = load_policy(sc.policy)
    model.train()
    train_ex = control_examples(tok, sc, *prepared["train"], tok.eos_token_id)
    val_ex = control_examples(tok, sc, *prepared["validation"], tok.eos_token_id)
    micro = cfg.data.micro_batch_size
    hc = model.config.get_text_config()
    n_params = sum(p.numel() for p in model.parameters())
    n_layer = getattr(hc, "num_hidden_layers", None) or getattr(hc, "n_layer", 1)
    d_model = getattr(hc, "hidden_size", None) or getattr(hc, "n_embd", 1)
    return cfg, Components(
        model=model,
        train_loader=ControlCodeLoader(train_ex, micro, tok.pad_token_id, rank=env.rank, world_size=env.world_size,
                                       seed=cfg.data.seed, infinite=True),
        make_eval_loader=lambda: ControlCodeLoader(val_ex, micro, tok.pad_token_id, rank=env.rank,
                                                   world_size=env.world_size, infinite=False),
        objective=Objective(),
        description=f"{type(model).__name__} from {sc.policy} ({n_params / 1e6:.1f}M parameters), control codes "
                    f"{sc.control_codes}, {len(train_ex)} training rows",
        flops_per_token=flops_per_token(n_params, n_layer, d_model, sc.control_max_length),
        tokens_per_sample=sc.control_max_length,
        parameters=n_params,
        job="sentiment_control",
    )


def train_control(cfg: ZeroLMConfig, reward_label: str) -> dict[str, Any]:
    """Finetune with control codes (this process's part), then on rank 0 consolidate the final
    DeepSpeed checkpoint and export it (:func:`export_policy`). Returns the trainer's summary."""
    import functools

    from zerolm.pretrain.engine import load_checkpoint_weights, no_live_hf_deepspeed_config
    from zerolm.pretrain.trainer import train

    sc = cfg.sentiment
    t0 = time.perf_counter()
    splits = split_texts(sc)
    texts, labels = splits["train"]
    if sc.max_examples is not None and sc.max_examples < len(texts):
        keep = fdata.stratified_split(labels, 1e-9, 1e-9, sc.seed, sc.max_examples)["train"]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    result = train(cfg, build=functools.partial(control_components, prepared={**splits, "train": (texts, labels)}))
    if is_main_process():
        no_live_hf_deepspeed_config()
        model, tok = load_policy(sc.policy)
        load_checkpoint_weights(model, cfg.train.run_dir)
        final = {k: v for k, v in result.items() if k.startswith("eval/")}
        out = export_policy(model, tok, sc.export_dir or Path(cfg.train.run_dir) / "hf", export_meta(
            cfg, "control", reward_label, control_codes=dict(sc.control_codes), steps=result["step"],
            training_rows=len(texts), seconds=round(time.perf_counter() - t0, 1), final_metrics=final,
            train={"lr": cfg.train.lr, "micro_batch_size": cfg.data.micro_batch_size, "max_steps": cfg.train.max_steps}))
        result = {**result, "export_dir": str(out)}
    return result
