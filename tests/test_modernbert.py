"""The modernbert family (ModernBertForMaskedLM): built from a zerolm config with the expected shape and
parameter count, pretrained for 2 steps and exported so that ``AutoModelForMaskedLM`` gives the trained
weights' logits; validation masks at the fixed evaluation rate whatever the training rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zerolm.config import DataConfig, ModelConfig, SourceConfig, load_config

REPO = Path(__file__).resolve().parents[1]
SPECIAL = {"bos": 1, "eos": 2, "pad": 3, "unk": 0, "cls": 4, "sep": 5, "mask": 6}


def _expected_modernbert_params(vocab: int, d: int, n_layer: int, d_ff: int) -> int:
    """ModernBERT's parameters counted by hand from Warner et al. 2024 §2.1 (no biases in linear layers
    or LayerNorms; GeGLU; RoPE has no weights; the decoder is tied to the token embedding but keeps a
    bias): token embedding + its LayerNorm; per layer a fused QKV (d × 3d), an output projection (d × d),
    the GLU input (d × 2·d_ff) and output (d_ff × d) and two LayerNorms (the first layer has no attention
    norm: the embedding norm precedes it); a final LayerNorm; the prediction head (dense d × d + LayerNorm);
    the decoder bias (vocab)."""
    embedding = vocab * d + d
    layer = 3 * d * d + d * d + d * 2 * d_ff + d_ff * d + 2 * d
    layers = n_layer * layer - d  # layer 0 has no attention LayerNorm
    final_norm, head, decoder_bias = d, d * d + d, vocab
    return embedding + layers + final_norm + head + decoder_bias


def test_tiny_modernbert_shapes_and_parameter_count():
    from zerolm.pretrain.models import build_model, count_parameters, objective_of, resolve_model_config

    cfg = resolve_model_config(ModelConfig(family="modernbert", preset="tiny"))
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.d_ff) == (2, 64, 2, 96)  # d_ff = 1.5 · d_model
    assert objective_of("modernbert") == "mlm"
    vocab, seq = 500, 48
    torch.manual_seed(0)
    model = build_model(cfg, vocab_size=vocab, seq_len=seq, special_ids=SPECIAL)
    assert type(model).__name__ == "ModernBertForMaskedLM"
    hf = model.config
    assert hf.layer_types == ["full_attention"] * 2  # short sequences: every layer attends globally
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id, hf.cls_token_id, hf.sep_token_id) == (3, 1, 2, 4, 5)
    assert hf._attn_implementation == "sdpa" and hf.max_position_embeddings == seq
    assert model.model.layers[0].mlp.Wi.weight.shape == (2 * 96, 64)  # value and gate of the GLU
    assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight
    expected = _expected_modernbert_params(vocab, 64, 2, 96)
    assert count_parameters(model)["total"] == expected
    assert count_parameters(model)["non_embedding"] == expected - vocab * 64
    ids = torch.randint(10, vocab, (3, seq))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert out.logits.shape == (3, seq, vocab)
    # beyond 512 tokens the default is ModernBERT's own pattern: global every third layer, the rest local
    long = build_model(ModelConfig(family="modernbert", n_layer=4, d_model=64, n_head=2), vocab_size=vocab,
                       seq_len=1024, special_ids=SPECIAL)
    assert long.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert long.config.local_attention == 128


def test_modernbert_presets_are_the_published_shapes():
    from zerolm.pretrain.models import resolve_model_config

    base = resolve_model_config(ModelConfig(family="modernbert", preset="modernbert-base"))
    large = resolve_model_config(ModelConfig(family="modernbert", preset="modernbert-large"))
    assert (base.n_layer, base.d_model, base.n_head, base.d_ff) == (22, 768, 12, 1152)
    assert (large.n_layer, large.d_model, large.n_head, large.d_ff) == (28, 1024, 16, 2624)
    # ModernBERT-base has 149M parameters with its 50368-token vocabulary (Warner et al. 2024, Table 3)
    assert _expected_modernbert_params(50368, 768, 22, 1152) == pytest.approx(149e6, rel=0.01)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "disabled"}


def test_two_step_pretrain_exports_a_model_with_the_trained_logits(tmp_path, prepared_corpus, trained_tokenizer):
    """2 steps of modernbert pretraining (one process, ZeRO-0 so the checkpoint holds the module's weights),
    exported with ``zerolm export``: ``AutoModelForMaskedLM`` gives the logits of the checkpoint's own
    weights loaded into a freshly built model, and the trainer's logged validation loss and accuracy."""
    import torch.nn.functional as F
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from zerolm.data_pipeline.loader import PackedDataLoader
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
    from zerolm.pretrain.models import build_model, special_ids_of

    run_dir, out = tmp_path / "run", tmp_path / "hf"
    args = [
        "--config", str(REPO / "configs/pretrain/tiny_bert.yaml"),
        f"data.tokenizer_dir={trained_tokenizer}",
        f"data.sources=[{{name: corpus, paths: ['{prepared_corpus}/train/*.jsonl']}}]",
        f"data.validation_sources=[{{name: corpus, paths: ['{prepared_corpus}/validation/*.jsonl']}}]",
        "model.family=modernbert", "data.mlm_probability=0.4", f"train.run_dir={run_dir}", "train.zero_stage=0",
        "train.max_steps=2", "train.eval_every=2", "train.save_every=2", "train.eval_batches=2", "train.lr=1e-2",
        "train.peak_flops=1e12", "tracking.wandb_mode=disabled",
    ]
    r = subprocess.run([sys.executable, "-m", "zerolm.pretrain", *args], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    r = subprocess.run([sys.executable, "-m", "zerolm", "export", str(run_dir), str(out)], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ModernBertForMaskedLM"]
    card = (out / "README.md").read_text()
    assert "40% of tokens masked in training, 15% in validation" in card

    exported = AutoModelForMaskedLM.from_pretrained(out).eval()
    cfg = load_config(run_dir / "config.yaml")
    ptok = load_pipeline_tokenizer(trained_tokenizer)
    states = torch.load(run_dir / "checkpoints/step_00000002/mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)["module"]
    reference = build_model(cfg.model, vocab_size=ptok.vocab_size, seq_len=cfg.data.seq_len, special_ids=special_ids_of(ptok))
    missing, unexpected = reference.load_state_dict(states, strict=False)
    assert not unexpected and all("decoder.weight" in k for k in missing), (missing, unexpected)
    reference.eval()
    assert not torch.equal(reference.decoder.bias, torch.zeros_like(reference.decoder.bias))  # it trained

    nll = count = correct = 0.0
    loader = PackedDataLoader(cfg.data, split="validation", rank=0, world_size=1, tokenizer=ptok)
    for _, batch in zip(range(cfg.train.eval_batches), loader):
        labels = batch.pop("labels")
        with torch.no_grad():
            logits, ref = exported(**batch).logits, reference(**batch).logits
        torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
        keep = labels != -100
        nll += float(F.cross_entropy(logits[keep].double(), labels[keep], reduction="sum"))
        count += int(keep.sum())
        correct += int((logits[keep].argmax(-1) == labels[keep]).sum())
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = next(m for m in logged if m["step"] == 2 and "eval/loss" in m)
    assert nll / count == pytest.approx(final["eval/loss"], rel=1e-5)
    assert correct / count == pytest.approx(final["eval/accuracy"], abs=1e-9)

    tok = AutoTokenizer.from_pretrained(out)  # the fill-mask pipeline answers with the model's own top-5
    from transformers import pipeline

    text = f"Paris is the capital of {tok.mask_token}."
    # [MASK] takes the place of a whole word piece with its leading space, as pretraining masked it
    expected = [ptok.cls_id, *ptok.encode("Paris is the capital of"), ptok.mask_id, *ptok.encode("."), ptok.sep_id]
    assert tok(text)["input_ids"] == expected
    preds = pipeline("fill-mask", model=exported, tokenizer=tok)(text)
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        row = exported(**enc).logits[0, int((enc["input_ids"][0] == tok.mask_token_id).nonzero())]
    assert [p["token"] for p in preds] == row.topk(5).indices.tolist()


def test_validation_masks_at_the_evaluation_rate_whatever_the_training_rate(prepared_corpus, trained_tokenizer):
    from zerolm.data_pipeline.loader import PackedDataLoader
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer

    tok = load_pipeline_tokenizer(trained_tokenizer)
    cfg = DataConfig(
        sources=[SourceConfig(name="c", paths=[f"{prepared_corpus}/train/*.jsonl"])],
        validation_sources=[SourceConfig(name="c", paths=[f"{prepared_corpus}/validation/*.jsonl"])],
        tokenizer_dir=str(trained_tokenizer), objective="mlm", seq_len=64, micro_batch_size=8, num_workers=0,
        mlm_probability=0.4,
    )
    assert cfg.eval_mlm_probability == 0.15
    never = np.array([tok.cls_id, tok.sep_id, tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id])

    def rate(split: str, batches: int) -> float:
        masked = maskable = 0
        loader = PackedDataLoader(cfg, split=split, rank=0, world_size=1, tokenizer=tok)
        for _, b in zip(range(batches), loader):
            ids, labels, attn = b["input_ids"].numpy(), b["labels"].numpy(), b["attention_mask"].numpy()
            # a masked position's input is [MASK], a random ordinary token or the original: never special
            maskable += int(((attn == 1) & ~np.isin(ids, never)).sum())
            masked += int((labels != -100).sum())
        assert maskable > 3000
        return masked / maskable

    assert rate("validation", 12) == pytest.approx(0.15, abs=0.02)
    assert rate("train", 12) == pytest.approx(0.40, abs=0.03)
