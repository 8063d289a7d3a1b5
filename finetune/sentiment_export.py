"""The export of ``zerolm finetune sentiment`` (both methods, one format): a steered causal LM as a
Hugging Face folder with its model card and :data:`finetune.sentiment.MARKER` metadata.

Sits above :mod:`finetune.sentiment` (the primitives) and :mod:`finetune.sentiment_report` (whose
card it writes), below the methods that call it (:mod:`finetune.sentiment_control`,
:mod:`finetune.ppo`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from zerolm.hf_models import resolve_model_path
from zerolm import card as modelcard
from zerolm.config import ZeroLMConfig
from zerolm.finetune.sentiment import MARKER
from zerolm.finetune.sentiment_report import model_card
from zerolm.fsutil import staged_dir, write_json

log = logging.getLogger(__name__)


def export_policy(model, tok, out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """Write the steered causal LM as a Hugging Face folder: ``save_pretrained`` (safetensors), the
    tokenizer, ``README.md`` (model card: method, target, reward model, final metrics) and
    :data:`MARKER` (``meta``). Written to a temporary folder and renamed into place.

    Raises:
        DataError: ``out_dir`` holds something other than a previous export of this kind.
    """
    out = Path(out_dir).resolve()
    with staged_dir(out, is_ours=lambda d: (d / MARKER).is_file(), what="export directory") as tmp:
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        write_json(tmp / MARKER, meta, default=str)
        modelcard.write_card(tmp, model_card(out.name, meta))
    log.info("exported the steered policy to %s", out)
    return out


def export_meta(cfg: ZeroLMConfig, method: str, reward_label: str, **extra) -> dict[str, Any]:
    """The :data:`MARKER` record of an export: format version, method, the resolved policy folder,
    reward model and its target label, reward type, data, plus the method's ``extra`` fields
    (steps, seconds, final metrics, control codes …)."""
    sc = cfg.sentiment
    return {"format": "zerolm-sentiment/1", "method": method, "policy": str(resolve_model_path(sc.policy)),
            "reward": sc.reward, "target": sc.target, "target_label": reward_label, "reward_type": sc.reward_type,
            "data": sc.data, **extra}
