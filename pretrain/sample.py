"""``zerolm sample MODEL_DIR``: what an exported model does, in a few lines.

A causal-LM continues prompts (``pipeline("text-generation")``); a masked-LM fills ``[MASK]``
(``pipeline("fill-mask")``). Both go through ``transformers`` only, so this also checks that the
export loads like any Hugging Face model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zerolm.hf_models import model_kind

DEFAULT_PROMPTS = ["The court ruled that", "The Prime Minister said", "The river flows through", "In 1998, the company"]
DEFAULT_MASKED = [
    "The court ruled that the [MASK] was unconstitutional.",
    "The Prime Minister said the [MASK] would be announced next week.",
    "Paris is the capital of [MASK].",
    "The plaintiffs asked the court for [MASK] relief.",
]


def sample(model_dir: str | Path, prompts: list[str] | None = None, max_new_tokens: int = 24, seed: int = 0) -> dict[str, Any]:
    """Generate from (causal-LM) or fill masks with (masked-LM) an exported model.

    Args:
        model_dir: a Hugging Face model folder (``zerolm export`` output or any other).
        prompts: prompts, or for a masked-LM sentences containing the tokenizer's mask token;
            defaults to a few news/legal/encyclopedic openings.
        max_new_tokens: continuation length (causal-LM).
        seed: sampling seed (generation uses top-k 40, temperature 0.8).

    Returns:
        ``{"kind": "clm"|"mlm", "validation": {...} or None, "emissions": {...} or None, "samples": [...]}``
        (the kind as :func:`zerolm.hf_models.model_kind` tells it: the config's vocabulary; validation
        metrics and the training's energy/CO2e as ``zerolm_export.json`` records them, for a zerolm export).

    Raises:
        DataError: the folder holds no causal or masked LM.
    """
    from transformers import pipeline, set_seed

    model_dir = Path(model_dir)
    kind = model_kind(model_dir)
    meta_path = model_dir / "zerolm_export.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    validation, emissions = meta.get("metrics"), meta.get("emissions")
    if kind == "clm":
        gen = pipeline("text-generation", model=str(model_dir))
        set_seed(seed)
        out = []
        for p in prompts or DEFAULT_PROMPTS:
            text = gen(p, max_new_tokens=max_new_tokens, do_sample=True, top_k=40, temperature=0.8)[0]["generated_text"]
            out.append({"prompt": p, "continuation": text[len(p):]})
        return {"kind": kind, "validation": validation, "emissions": emissions, "samples": out}
    fill = pipeline("fill-mask", model=str(model_dir), top_k=5)
    mask = fill.tokenizer.mask_token
    out = []
    for s in prompts or DEFAULT_MASKED:
        preds = fill(s.replace("[MASK]", mask))
        out.append({"text": s, "predictions": [(p["token_str"].strip(), round(float(p["score"]), 3)) for p in preds]})
    return {"kind": kind, "validation": validation, "emissions": emissions, "samples": out}
