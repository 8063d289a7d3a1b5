"""Model construction: a ``ModelConfig`` (+ preset) → a randomly initialised ``transformers`` model.

Models are plain Hugging Face classes (DESIGN: model code knows nothing of distribution):

* ``gpt2``  → :class:`transformers.GPT2LMHeadModel` (causal LM, learned positions, tanh-GELU MLP as
  ``gelu_pytorch_tanh``: GPT-2's ``gelu_new`` formula in one fused kernel),
* ``llama`` → :class:`transformers.LlamaForCausalLM` (causal LM, RoPE, SwiGLU MLP, RMSNorm, GQA),
* ``bert``  → :class:`transformers.BertForMaskedLM` (masked LM, post-LN, learned positions + token types),
* ``modernbert`` → :class:`transformers.ModernBertForMaskedLM` (masked LM; Warner et al. 2024: pre-LN,
  RoPE, GeGLU MLP, no biases, global or alternating local/global attention).

Shapes come from ``configs/models/<preset>.yaml`` (``tiny``, ``small``, ``gpt3-125m`` …) and any field
set explicitly in the ``model`` config section overrides the preset (:func:`resolve_model_config`).

Also here: unique parameter counts (:func:`count_parameters`) and the training FLOPs per token used
for MFU (:func:`flops_per_token`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from zerolm.config import ModelConfig, configs_dir, read_yaml_mapping
from zerolm.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

#: Fields a preset file may set (shape only: family, dropout, init … belong to the run's config).
PRESET_FIELDS: tuple[str, ...] = ("n_layer", "n_head", "d_model", "d_ff", "n_kv_head", "max_position_embeddings")

#: Special-token roles of ``special_ids`` (as in :data:`data_pipeline.tokenizer.SPECIAL_TOKENS`).
SPECIAL_ROLES: tuple[str, ...] = ("bos", "eos", "pad", "unk", "cls", "sep", "mask")


def presets_dir() -> Path:
    """The folder of model presets: ``configs/models`` (see :func:`zerolm.config.configs_dir`)."""
    return configs_dir() / "models"


def available_presets() -> list[str]:
    """Names of the presets in :func:`presets_dir` (file stems, sorted)."""
    d = presets_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def _load_preset(name: str) -> dict[str, Any]:
    path = presets_dir() / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"model.preset: unknown preset {name!r}; available: {', '.join(available_presets()) or '(none)'} "
            f"(files in {presets_dir()})"
        )
    data = read_yaml_mapping(path, f"model.preset {name!r}:")
    unknown = sorted(set(data) - set(PRESET_FIELDS))
    if unknown:
        raise ConfigError(
            f"model.preset {name!r}: {path} sets {unknown}; a preset may only set the shape fields {list(PRESET_FIELDS)}"
        )
    return data


def llama_ffn_dim(d_model: int, multiple_of: int = 64) -> int:
    """The Llama feed-forward width: ``8/3 · d_model`` rounded up to a multiple of ``multiple_of``.

    SwiGLU has three matrices instead of two, so Llama keeps the MLP's parameter count near a
    ``4·d_model`` GELU MLP with ``int(2 · 4·d_model / 3)`` rounded up (Touvron et al. 2023 §2.2;
    ``FeedForward`` in meta-llama/llama ``model.py``). Llama rounds to ``multiple_of=256``
    (d_model 4096 → 11008); zerolm's default 64 pads small models less (d_model 64 → 192, not 256;
    4096 → 10944).
    """
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


#: ModernBERT's GLU inner width relative to ``d_model`` (ModernBERT-base: 768 → ``intermediate_size``
#: 1152; Warner et al. 2024, Table 3 / ``ModernBertConfig`` defaults). The GLU's input projection has
#: ``2 × d_ff`` outputs (value and gate), so its MLP holds ``3 · d_model · d_ff`` weights.
MODERNBERT_FFN_RATIO = 1.5

#: ModernBERT's local-attention window in tokens (``local_attention``: ±64 around each token) and its
#: published layer pattern: a global-attention layer every 3 layers, the others local (Warner et al. 2024 §2.1.2).
MODERNBERT_LOCAL_WINDOW = 128
MODERNBERT_GLOBAL_EVERY = 3

#: Up to this sequence length a modernbert's layers all attend globally by default: with SDPA the local
#: window is a mask, so it saves no compute, and at short lengths global attention costs little.
MODERNBERT_ALL_GLOBAL_UP_TO = 512


def modernbert_layer_types(n_layer: int, seq_len: int, global_every: int | None = None) -> list[str]:
    """The attention kind of each layer of a modernbert: ``"full_attention"`` or ``"sliding_attention"``.

    Layer ``i`` is global when ``i % global_every == 0`` (ModernBERT: layers 0, 3, 6 …). ``global_every``
    ``None`` means 1 (every layer global) when ``seq_len`` ≤ :data:`MODERNBERT_ALL_GLOBAL_UP_TO`, else
    :data:`MODERNBERT_GLOBAL_EVERY` (ModernBERT's pattern, window :data:`MODERNBERT_LOCAL_WINDOW`).

    Args:
        n_layer: number of layers.
        seq_len: the sequence length the model is built for (tokens).
        global_every: ``model.global_attn_every_n_layers``.
    """
    if global_every is None:
        global_every = 1 if seq_len <= MODERNBERT_ALL_GLOBAL_UP_TO else MODERNBERT_GLOBAL_EVERY
    return ["full_attention" if i % global_every == 0 else "sliding_attention" for i in range(n_layer)]


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Fill a ``ModelConfig`` from its preset and the family's defaults, and check the shape.

    Fields the user set explicitly (``cfg.model_fields_set``) win over the preset's; the preset fills
    the rest. Then ``d_ff`` defaults to ``4·d_model`` (gpt2, bert), :func:`llama_ffn_dim` (llama) or
    ``int(1.5·d_model)`` (modernbert's GLU width, :data:`MODERNBERT_FFN_RATIO`) and
    ``n_kv_head`` to ``n_head`` (llama). ``max_position_embeddings`` stays ``None`` unless set: the model
    then gets ``seq_len`` positions (:func:`hf_config`). Resolving twice gives the same config.

    Args:
        cfg: the ``model`` config section.

    Returns:
        A new, validated ``ModelConfig`` with ``n_layer``, ``n_head``, ``d_model``, ``d_ff`` set (and
        ``n_kv_head`` for llama).

    Raises:
        ConfigError: unknown preset (the message lists the available ones); a preset file that is
            not YAML or sets non-shape keys; ``n_layer``/``n_head``/``d_model`` unset after resolution;
            ``d_model`` not divisible by ``n_head``; ``n_head`` not divisible by ``n_kv_head``;
            ``n_kv_head`` other than ``n_head`` for a family without grouped-query attention. Each
            message names the ``model.*`` key.
    """
    values: dict[str, Any] = {}
    if cfg.preset is not None:
        values.update(_load_preset(cfg.preset))
    values.update({k: getattr(cfg, k) for k in cfg.model_fields_set})
    values.setdefault("family", cfg.family)
    values.setdefault("preset", cfg.preset)
    try:
        out = ModelConfig.model_validate(values)
    except ValidationError as e:
        where = f" (preset {cfg.preset!r}: {presets_dir() / f'{cfg.preset}.yaml'})" if cfg.preset else ""
        msgs = "; ".join(f"model.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"invalid model config{where}: {msgs}") from None
    for key in ("n_layer", "n_head", "d_model"):
        if getattr(out, key) is None:
            hint = f" (preset {out.preset!r} does not set it)" if out.preset else " (or choose a model.preset)"
            raise ConfigError(
                f"model.{key} is not set{hint}; available presets: {', '.join(available_presets())}"
            )
    if out.d_model % out.n_head:
        raise ConfigError(f"model.d_model ({out.d_model}) must be divisible by model.n_head ({out.n_head})")
    if out.d_ff is None:
        if out.family == "llama":
            out.d_ff = llama_ffn_dim(out.d_model)
        elif out.family == "modernbert":
            out.d_ff = int(MODERNBERT_FFN_RATIO * out.d_model)
        else:
            out.d_ff = 4 * out.d_model
    if out.global_attn_every_n_layers is not None and out.family != "modernbert":
        raise ConfigError(f"model.global_attn_every_n_layers is a modernbert setting (model.family is {out.family})")
    if out.family == "llama":
        if out.n_kv_head is None:
            out.n_kv_head = out.n_head
        if out.n_head % out.n_kv_head:
            raise ConfigError(
                f"model.n_head ({out.n_head}) must be divisible by model.n_kv_head ({out.n_kv_head})"
            )
    elif out.n_kv_head is not None and out.n_kv_head != out.n_head:
        raise ConfigError(
            f"model.n_kv_head={out.n_kv_head}: grouped-query attention needs model.family=llama "
            f"({out.family} uses n_kv_head = n_head = {out.n_head})"
        )
    return out


#: The pretraining objective of each model family (the one place that says which families are masked LMs).
FAMILY_OBJECTIVES: dict[str, Literal["clm", "mlm"]] = {"gpt2": "clm", "llama": "clm", "bert": "mlm", "modernbert": "mlm"}


def objective_of(family: str) -> Literal["clm", "mlm"]:
    """The pretraining objective of a model family: ``"clm"`` (gpt2, llama) or ``"mlm"`` (bert, modernbert).

    Raises:
        ConfigError: unknown family (names ``model.family``).
    """
    try:
        return FAMILY_OBJECTIVES[family]
    except KeyError:
        raise ConfigError(f"model.family: unknown family {family!r} "
                          f"(expected {', '.join(FAMILY_OBJECTIVES)})") from None


def special_ids_of(tokenizer: Any) -> dict[str, int]:
    """``{role: id}`` of a pipeline tokenizer (roles: :data:`SPECIAL_ROLES`).

    zerolm's own tokenizer has every role; a Hugging Face one (``HFPipelineTokenizer``) may lack some
    (GPT-2 style: no cls/sep/mask): those are left out, and a missing bos or pad is the eos (GPT-2's
    convention), so that :func:`hf_config` gets the three it records.
    """
    out = {role: int(i) for role in SPECIAL_ROLES if (i := getattr(tokenizer, f"{role}_id", None)) is not None}
    if "eos" in out:
        out.setdefault("bos", out["eos"])
        out.setdefault("pad", out["eos"])
    return out


#: The dropout probabilities of each family's ``transformers`` config (all set to ``model.dropout``).
DROPOUT_KEYS: dict[str, tuple[str, ...]] = {
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"),
    "llama": ("attention_dropout",),  # Llama has no other dropout
    "bert": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
    "modernbert": ("attention_dropout", "embedding_dropout", "mlp_dropout"),
}


def dropout_settings(family: str, p: float) -> dict[str, float]:
    """``{config key: p}`` for every dropout probability of ``family``'s ``transformers`` config.

    Raises:
        ConfigError: unknown family.
    """
    if family not in DROPOUT_KEYS:
        raise ConfigError(f"model.family: unknown family {family!r} (expected {', '.join(DROPOUT_KEYS)})")
    return {k: float(p) for k in DROPOUT_KEYS[family]}


def hf_config(cfg: ModelConfig, *, vocab_size: int, seq_len: int, special_ids: dict[str, int]):
    """The ``transformers`` config (GPT2Config / LlamaConfig / BertConfig / ModernBertConfig) of a model config.

    Args:
        cfg: the ``model`` section (resolved here; an unresolved one is fine).
        vocab_size: the tokenizer's vocabulary size (rows of the embedding).
        seq_len: the training sequence length; positions = ``cfg.max_position_embeddings`` or this.
        special_ids: ``{"bos", "eos", "pad", "unk", "cls", "sep", "mask"} → id`` (see
            :func:`special_ids_of`); gpt2/llama record bos/eos/pad, bert records pad, modernbert
            pad/bos/eos/cls/sep (cls and sep default to bos and eos when absent).

    Returns:
        A ``transformers.PreTrainedConfig`` with ``attn_implementation="sdpa"``; every dropout
        probability = ``cfg.dropout``, ``initializer_range`` = ``cfg.init_std``, ``tie_word_embeddings``
        = ``cfg.tie_word_embeddings``. Llama keeps transformers' default RoPE (theta 10000) and RMSNorm
        eps; BERT has 2 token types and transformers' default LayerNorm eps (1e-12). ModernBERT keeps
        its defaults (GeGLU ``hidden_activation="gelu"``, no linear/norm biases, LayerNorm eps 1e-5,
        RoPE theta 160k global / 10k local, truncated-normal init at ±2σ) and gets the layer pattern
        of :func:`modernbert_layer_types`; ``intermediate_size`` = ``d_ff`` (the GLU inner width).

    Raises:
        ConfigError: as :func:`resolve_model_config`; ``model.max_position_embeddings`` < ``seq_len``;
            a special id outside the vocabulary.
    """
    from transformers import BertConfig, GPT2Config, LlamaConfig, ModernBertConfig

    cfg = resolve_model_config(cfg)
    positions = cfg.max_position_embeddings or seq_len
    if positions < seq_len:
        raise ConfigError(
            f"model.max_position_embeddings ({positions}) is smaller than data.seq_len ({seq_len})"
        )
    missing = [r for r in ("bos", "eos", "pad") if r not in special_ids]
    if missing:
        raise ConfigError(f"special_ids lacks {missing} (have {sorted(special_ids)})")
    bad = {r: i for r, i in special_ids.items() if not 0 <= int(i) < vocab_size}
    if bad:
        raise ConfigError(f"special token ids {bad} are outside the vocabulary (vocab_size {vocab_size})")
    p = cfg.dropout
    common = dict(
        vocab_size=vocab_size,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_word_embeddings,
        pad_token_id=int(special_ids["pad"]),
    )
    if cfg.family == "gpt2":
        hf = GPT2Config(
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.d_model, n_inner=cfg.d_ff, n_positions=positions,
            # GPT-2's tanh-approximate GELU as one fused kernel (transformers' default "gelu_new" is the same
            # formula in five Python-level tensor ops)
            activation_function="gelu_pytorch_tanh",
            **dropout_settings("gpt2", p), bos_token_id=int(special_ids["bos"]), eos_token_id=int(special_ids["eos"]), **common,
        )
    elif cfg.family == "llama":
        hf = LlamaConfig(
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
            hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, max_position_embeddings=positions,
            **dropout_settings("llama", p), bos_token_id=int(special_ids["bos"]), eos_token_id=int(special_ids["eos"]), **common,
        )
    elif cfg.family == "bert":
        hf = BertConfig(
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ff, max_position_embeddings=positions, type_vocab_size=2,
            **dropout_settings("bert", p), **common,
        )
    elif cfg.family == "modernbert":
        hf = ModernBertConfig(
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, hidden_size=cfg.d_model,
            intermediate_size=cfg.d_ff, max_position_embeddings=positions,
            layer_types=modernbert_layer_types(cfg.n_layer, seq_len, cfg.global_attn_every_n_layers),
            local_attention=MODERNBERT_LOCAL_WINDOW,
            **dropout_settings("modernbert", p), bos_token_id=int(special_ids["bos"]), eos_token_id=int(special_ids["eos"]),
            cls_token_id=int(special_ids.get("cls", special_ids["bos"])),
            sep_token_id=int(special_ids.get("sep", special_ids["eos"])), **common,
        )
    else:  # pragma: no cover - ModelConfig's Literal forbids it
        raise ConfigError(f"model.family: unknown family {cfg.family!r}")
    hf._attn_implementation = "sdpa"
    return hf


def build_model(cfg: ModelConfig, *, vocab_size: int, seq_len: int, special_ids: dict[str, int]):
    """Build a randomly initialised ``transformers`` model for pretraining.

    ``AutoModelForCausalLM.from_config`` (gpt2 → GPT2LMHeadModel, llama → LlamaForCausalLM) or
    ``AutoModelForMaskedLM.from_config`` (bert → BertForMaskedLM, modernbert → ModernBertForMaskedLM)
    with the config of :func:`hf_config`,
    SDPA attention (``torch.nn.functional.scaled_dot_product_attention``, which runs on CPU too) and
    transformers' own initialisation (normal(0, ``init_std``), zero biases, unit norms; GPT-2 also
    scales residual projections by 1/sqrt(2·n_layer)). Deterministic given ``torch.manual_seed``.
    Built under ``with torch.device("meta"):`` it allocates nothing (for parameter counting).

    Args:
        cfg: the ``model`` config section.
        vocab_size: tokenizer vocabulary size.
        seq_len: training sequence length (positions default to it).
        special_ids: role → id, see :func:`special_ids_of`.

    Returns:
        The model (fp32, train mode as transformers leaves it: call ``.train()``/``.eval()`` as needed).

    Raises:
        ConfigError: see :func:`hf_config`.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    hf = hf_config(cfg, vocab_size=vocab_size, seq_len=seq_len, special_ids=special_ids)
    auto = AutoModelForMaskedLM if objective_of(cfg.family) == "mlm" else AutoModelForCausalLM
    return auto.from_config(hf, attn_implementation="sdpa")


def model_from_hf_config(hf_config: dict[str, Any], kind: Literal["clm", "mlm"]):
    """An untrained model of the architecture a checkpoint recorded (``checkpoint.HF_CONFIG``), for
    loading the checkpoint's weights into (export).

    Raises:
        DataError: the config names a model type ``transformers`` does not know.
    """
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        config = CONFIG_MAPPING[hf_config["model_type"]].from_dict(hf_config)
    except KeyError as e:
        raise DataError(f"checkpoint model config: unknown model type {hf_config.get('model_type')!r}") from e
    auto = AutoModelForCausalLM if kind == "clm" else AutoModelForMaskedLM
    return auto.from_config(config, attn_implementation="sdpa")


def count_parameters(model) -> dict[str, int]:
    """Unique parameter counts of a model.

    Tied weights (GPT-2's ``lm_head``/``wte``, BERT's decoder/word embeddings) are one parameter and
    counted once (``model.parameters()`` de-duplicates shared ``Parameter`` objects). Works on meta
    tensors.

    Args:
        model: a ``torch.nn.Module``.

    Returns:
        ``{"total": N, "non_embedding": N - embedding weights}``, where the embedding weights are those
        of every ``nn.Embedding`` module: token embeddings, learned position embeddings (gpt2, bert)
        and BERT's 2-row token-type table — the embedding count of Kaplan et al. 2020 (§2.1). An
        untied output projection (``lm_head``) counts as non-embedding.
    """
    import torch

    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    emb_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    emb = sum(p.numel() for p in params if id(p) in emb_ids)
    return {"total": int(total), "non_embedding": int(total - emb)}


def flops_per_token(n_params: int, n_layer: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): ``6·N + 12·L·d_model·T``.

    ``6·N`` counts the matrix multiplies with the weights (2 FLOPs per multiply-add, ×3 for the
    backward pass); ``12·L·H·Q·T`` the attention score and value products, with ``H·Q = d_model``
    (heads × head size). Source: Chowdhery et al. 2022 (PaLM), Appendix B; nanoGPT ``estimate_mfu``
    (karpathy/nanoGPT model.py). MFU = tokens/s × this / peak FLOP/s.

    Args:
        n_params: N, the parameter count (nanoGPT uses the non-embedding-position count; PaLM all).
        n_layer: L, transformer layers.
        d_model: hidden size (= H·Q).
        seq_len: T, the sequence length.

    Returns:
        FLOPs per trained token (float).
    """
    return 6.0 * n_params + 12.0 * n_layer * d_model * seq_len


def _human(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def describe_model(cfg: ModelConfig, counts: dict[str, int]) -> str:
    """One log line, e.g. ``"gpt2 small: 4 layers, d_model 256, 4 heads, 3.2M params (1.1M non-embedding)"``.

    Args:
        cfg: the (resolved) ``model`` section; ``custom`` is shown when it has no preset.
        counts: from :func:`count_parameters`.
    """
    heads = f"{cfg.n_head} heads"
    if cfg.family == "llama" and cfg.n_kv_head and cfg.n_kv_head != cfg.n_head:
        heads += f" ({cfg.n_kv_head} kv)"
    return (
        f"{cfg.family} {cfg.preset or 'custom'}: {cfg.n_layer} layers, d_model {cfg.d_model}, {heads}, "
        f"{_human(counts['total'])} params ({_human(counts['non_embedding'])} non-embedding)"
    )


__all__ = [
    "FAMILY_OBJECTIVES",
    "MODERNBERT_ALL_GLOBAL_UP_TO",
    "MODERNBERT_FFN_RATIO",
    "MODERNBERT_GLOBAL_EVERY",
    "MODERNBERT_LOCAL_WINDOW",
    "PRESET_FIELDS",
    "SPECIAL_ROLES",
    "available_presets",
    "DROPOUT_KEYS",
    "build_model",
    "dropout_settings",
    "count_parameters",
    "describe_model",
    "flops_per_token",
    "hf_config",
    "llama_ffn_dim",
    "model_from_hf_config",
    "modernbert_layer_types",
    "objective_of",
    "presets_dir",
    "resolve_model_config",
    "special_ids_of",
]
