"""Model presets, construction, parameter counts and FLOPs (pretrain/models.py)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from zerolm.pretrain.models import (
    available_presets,
    build_model,
    count_parameters,
    describe_model,
    flops_per_token,
    hf_config,
    llama_ffn_dim,
    objective_of,
    presets_dir,
    resolve_model_config,
)
from zerolm.config import ModelConfig, load_config
from zerolm.errors import ConfigError

SPECIAL = {"unk": 0, "bos": 1, "eos": 2, "pad": 3, "cls": 4, "sep": 5, "mask": 6}
EXPECTED_PRESETS = {"tiny", "small", "gpt3-125m", "gpt3-350m", "gpt3-1.3b", "bert-base", "bert-large"}


def _meta_count(cfg: ModelConfig, vocab_size: int, seq_len: int) -> dict[str, int]:
    with torch.device("meta"):
        model = build_model(cfg, vocab_size=vocab_size, seq_len=seq_len, special_ids=SPECIAL)
    assert next(model.parameters()).device.type == "meta"
    return count_parameters(model)


def test_every_preset_resolves_to_its_file():
    assert EXPECTED_PRESETS <= set(available_presets())
    for name in available_presets():
        path = presets_dir() / f"{name}.yaml"
        assert "#" in path.read_text(), f"{path} should cite its source in a comment"
        shape = yaml.safe_load(path.read_text())
        family = "bert" if name.startswith("bert") else "gpt2"
        cfg = resolve_model_config(ModelConfig(family=family, preset=name))
        for key, value in shape.items():
            assert getattr(cfg, key) == value, (name, key)
        assert cfg.d_ff == shape.get("d_ff", 4 * cfg.d_model)
        assert cfg.d_model % cfg.n_head == 0
        assert resolve_model_config(cfg) == cfg  # idempotent


@pytest.mark.parametrize(
    "family,preset,vocab,seq_len,published",
    [
        # Brown et al. 2020 Table 2.1 (GPT-2 BPE vocab 50257, context 2048)
        ("gpt2", "gpt3-125m", 50257, 2048, 125e6),
        ("gpt2", "gpt3-350m", 50257, 2048, 350e6),
        ("gpt2", "gpt3-1.3b", 50257, 2048, 1.3e9),
        # Devlin et al. 2019 §3 (WordPiece vocab 30522, 512 positions)
        ("bert", "bert-base", 30522, 512, 110e6),
        ("bert", "bert-large", 30522, 512, 340e6),
    ],
)
def test_published_shapes_give_published_parameter_counts(family, preset, vocab, seq_len, published):
    counts = _meta_count(ModelConfig(family=family, preset=preset), vocab, seq_len)
    assert abs(counts["total"] - published) / published < 0.03, counts
    assert counts["non_embedding"] < counts["total"]


def test_count_parameters_counts_tied_weights_once():
    tied = _meta_count(ModelConfig(family="gpt2", preset="tiny"), 2000, 32)
    untied = _meta_count(ModelConfig(family="gpt2", preset="tiny", tie_word_embeddings=False), 2000, 32)
    assert untied["total"] - tied["total"] == 2000 * 64
    # gpt2 tiny: token (2000·64) + position (32·64) embeddings are the embedding parameters
    assert tied["total"] - tied["non_embedding"] == 2000 * 64 + 32 * 64
    # an untied lm_head is an output projection: non-embedding
    assert untied["non_embedding"] == tied["non_embedding"] + 2000 * 64
    llama = _meta_count(ModelConfig(family="llama", preset="tiny"), 2000, 32)
    assert llama["total"] - llama["non_embedding"] == 2000 * 64  # RoPE: no position table


def test_explicit_fields_override_the_preset():
    cfg = resolve_model_config(ModelConfig(family="gpt2", preset="small", n_layer=3, d_ff=300))
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_ff) == (3, 256, 4, 300)
    # the same through the YAML/CLI route
    cfg = resolve_model_config(load_config(None, ["model.preset=gpt3-125m", "model.n_head=6"]).model)
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_ff) == (12, 768, 6, 3072)
    # no preset: the explicit shape alone
    cfg = resolve_model_config(ModelConfig(n_layer=1, n_head=2, d_model=32))
    assert cfg.d_ff == 128 and cfg.preset is None


def test_llama_defaults():
    assert llama_ffn_dim(4096, multiple_of=256) == 11008  # Llama-7B
    assert llama_ffn_dim(4096) == 10944 and llama_ffn_dim(64) == 192  # 8/3·d rounded up to 64
    cfg = resolve_model_config(ModelConfig(family="llama", preset="tiny"))
    assert cfg.d_ff == 192 and cfg.n_kv_head == cfg.n_head
    gqa = resolve_model_config(ModelConfig(family="llama", preset="tiny", n_kv_head=1))
    assert gqa.n_kv_head == 1
    hf = hf_config(gqa, vocab_size=100, seq_len=16, special_ids=SPECIAL)
    assert hf.num_key_value_heads == 1 and hf.rope_parameters["rope_theta"] == 10000.0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError) as e:
        resolve_model_config(ModelConfig(preset="gpt5"))
    assert "model.preset" in str(e.value) and "tiny" in str(e.value) and "gpt3-125m" in str(e.value)
    with pytest.raises(ConfigError, match="model.n_layer"):
        resolve_model_config(ModelConfig(n_head=2, d_model=64))
    with pytest.raises(ConfigError, match="model.d_model"):
        resolve_model_config(ModelConfig(preset="tiny", n_head=3))
    with pytest.raises(ConfigError, match="model.n_kv_head"):
        resolve_model_config(ModelConfig(family="gpt2", preset="tiny", n_kv_head=1))
    with pytest.raises(ConfigError, match="model.n_kv_head"):
        resolve_model_config(ModelConfig(family="llama", n_layer=1, n_head=4, d_model=64, n_kv_head=3))
    with pytest.raises(ConfigError, match="model.max_position_embeddings"):
        hf_config(ModelConfig(preset="tiny", max_position_embeddings=16), vocab_size=100, seq_len=32, special_ids=SPECIAL)


def test_objective_of():
    assert objective_of("gpt2") == "clm" and objective_of("llama") == "clm" and objective_of("bert") == "mlm"
    with pytest.raises(ConfigError, match="model.family"):
        objective_of("t5")


def test_hf_config_carries_every_setting():
    cfg = ModelConfig(family="gpt2", preset="tiny", dropout=0.1, init_std=0.01, tie_word_embeddings=False)
    hf = hf_config(cfg, vocab_size=500, seq_len=48, special_ids=SPECIAL)
    assert (hf.vocab_size, hf.n_positions, hf.n_inner, hf.initializer_range) == (500, 48, 256, 0.01)
    assert hf.resid_pdrop == hf.embd_pdrop == hf.attn_pdrop == 0.1
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.tie_word_embeddings) == (1, 2, 3, False)
    bert = hf_config(ModelConfig(family="bert", preset="tiny", dropout=0.1, max_position_embeddings=64),
                     vocab_size=500, seq_len=48, special_ids=SPECIAL)
    assert bert.hidden_dropout_prob == bert.attention_probs_dropout_prob == 0.1
    assert (bert.max_position_embeddings, bert.type_vocab_size, bert.pad_token_id) == (64, 2, 3)


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert"])
def test_build_tiny_model_forward_and_determinism(family):
    vocab, seq_len = 2000, 32
    cfg = ModelConfig(family=family, preset="tiny")
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=vocab, seq_len=seq_len, special_ids=SPECIAL)
    torch.manual_seed(0)
    again = build_model(cfg, vocab_size=vocab, seq_len=seq_len, special_ids=SPECIAL)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    assert type(model).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "bert": "BertForMaskedLM"}[family]
    assert model.config._attn_implementation == "sdpa"
    out_emb = model.get_output_embeddings().weight
    assert out_emb is model.get_input_embeddings().weight  # tied by default
    ids = torch.randint(7, vocab, (2, seq_len), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    if family == "bert":
        labels[:, ::2] = -100
    model.eval()
    with torch.no_grad():
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
    assert torch.isfinite(loss)
    assert abs(loss.item() - math.log(vocab)) < 0.3, loss.item()  # near-uniform predictions at init


def test_flops_per_token_by_hand():
    # 6·N + 12·L·d_model·T = 6·1e6 + 12·2·64·32 = 6,000,000 + 49,152
    assert flops_per_token(1_000_000, 2, 64, 32) == 6_049_152.0
    # GPT-3 125M at T=2048 (N≈125.2M): 6N ≈ 751M, attention 12·12·768·2048 ≈ 226M
    assert flops_per_token(125_226_240, 12, 768, 2048) == pytest.approx(6 * 125_226_240 + 226_492_416)


def test_describe_model():
    cfg = resolve_model_config(ModelConfig(family="gpt2", preset="small"))
    line = describe_model(cfg, {"total": 5_273_088, "non_embedding": 3_159_552})
    assert line == "gpt2 small: 4 layers, d_model 256, 4 heads, 5.3M params (3.2M non-embedding)"
    gqa = resolve_model_config(ModelConfig(family="llama", n_layer=1, n_head=4, d_model=64, n_kv_head=2))
    assert "llama custom" in describe_model(gqa, {"total": 1_500, "non_embedding": 900}) and "(2 kv)" in describe_model(
        gqa, {"total": 1_500, "non_embedding": 900}
    )
