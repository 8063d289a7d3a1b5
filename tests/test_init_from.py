"""Continued pretraining (``model.init_from``): from a Hugging Face folder with its own tokenizer, from a
zerolm export and from a zerolm run directory, under 1 and 2 ranks; a two-stage run's lineage; the
config checks that stop a run before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from zerolm.config import ModelConfig, load_config
from zerolm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from test_pretrain import _cmd, _env  # noqa: E402


def _config(path: Path, corpus: Path, init_from: str, objective: str = "clm", zero: int = 2,
            sources: list[dict] | None = None, steps: int = 3, tokenizer_dir: str | None = None,
            eval_at_start: bool = False) -> Path:
    """A run config that gives no model shape: the architecture comes from ``init_from``."""
    cfg = {
        "data": {"objective": objective, "seq_len": 64, "micro_batch_size": 2, "num_workers": 0,
                 "sources": sources or [{"name": "corpus", "paths": [f"{corpus}/train/*.jsonl"]}],
                 "validation_sources": [{"name": "corpus", "paths": [f"{corpus}/validation/*.jsonl"]}]},
        "model": {"init_from": init_from},
        "train": {"max_steps": steps, "global_batch_size": 8, "warmup_steps": 1, "lr": 1.0e-4, "zero_stage": zero,
                  "precision": "fp32",  # the tests compare losses with fp32 recomputations
                  "log_every": 1, "eval_every": steps, "eval_batches": 2, "save_every": steps,
                  "eval_at_start": eval_at_start},
        "tracking": {"wandb_mode": "offline"},
    }
    if tokenizer_dir:
        cfg["data"]["tokenizer_dir"] = tokenizer_dir
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(config: Path, run_dir: Path, nproc: int, *overrides: str) -> None:
    launcher = "python" if nproc == 1 else "torchrun"
    r = subprocess.run([*_cmd(nproc, launcher), "--config", str(config), f"train.run_dir={run_dir}", *overrides],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"training failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"


def _logged_loss(run_dir: Path, step: int = 1) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["train/loss"] for r in rows if r["step"] == step and "train/loss" in r)


def _first_step_loss(model_dir: Path, run_dir: Path, world_size: int) -> float:
    """The loss of the model in ``model_dir`` (loaded with transformers alone) on the run's first global
    batch: each rank's first micro-batches as the run's config and world size make them, averaged
    over micro-batches and ranks as one optimizer step averages them."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    from zerolm.data_pipeline.loader import PackedDataLoader

    cfg = load_config(run_dir / "config.yaml")
    auto = AutoModelForCausalLM if cfg.data.objective == "clm" else AutoModelForMaskedLM
    model = auto.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    accum = cfg.train.global_batch_size // (cfg.data.micro_batch_size * world_size)
    losses = []
    for rank in range(world_size):
        loader = PackedDataLoader(cfg.data, rank=rank, world_size=world_size,
                                  global_batch_size=cfg.train.global_batch_size)
        for _, batch in zip(range(accum), loader):
            with torch.no_grad():
                losses.append(float(model(**batch).loss))
    assert len(losses) == accum * world_size
    return sum(losses) / len(losses)


def _validation_loss(model_dir: Path, run_dir: Path) -> float:
    """Token-mean next-token cross-entropy (float64, from the logits) of ``model_dir`` on the run's first
    ``train.eval_batches`` validation batches (one rank)."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from zerolm.data_pipeline.loader import PackedDataLoader

    cfg = load_config(run_dir / "config.yaml")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    nll = count = 0.0
    for _, batch in zip(range(cfg.train.eval_batches), PackedDataLoader(cfg.data, split="validation")):
        labels = batch.pop("labels")[:, 1:]
        with torch.no_grad():
            logits = model(**batch).logits[:, :-1]
        keep = labels != -100
        nll += float(F.cross_entropy(logits[keep].double(), labels[keep], reduction="sum"))
        count += int(keep.sum())
    return nll / count


@pytest.fixture(scope="module")
def tiny_llama(hf_clm_tokenizer, tmp_path_factory):
    """A tiny Llama with a byte-level BPE tokenizer of its own (not zerolm's), non-default RoPE theta and
    RMSNorm eps: a stand-in for SmolLM2 that the shape keys of a zerolm preset could not rebuild."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    tok = AutoTokenizer.from_pretrained(str(hf_clm_tokenizer))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      rope_theta=5000.0, rms_norm_eps=1e-6, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(7)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def test_continue_a_hf_llama_with_its_own_tokenizer_then_export(tiny_llama, prepared_corpus, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from zerolm.pretrain.export import export_checkpoint

    run_dir = tmp_path / "run"
    _train(_config(tmp_path / "c.yaml", prepared_corpus, str(tiny_llama), zero=0, eval_at_start=True), run_dir, 1)
    saved = load_config(run_dir / "config.yaml")
    assert Path(saved.data.tokenizer_dir) == tiny_llama  # the model's own tokenizer, not data/tokenizer
    assert (saved.model.family, saved.model.n_layer, saved.model.d_model, saved.model.n_kv_head) == ("llama", 2, 64, 2)
    assert _logged_loss(run_dir) == pytest.approx(_first_step_loss(tiny_llama, run_dir, 1), abs=1e-5)
    # train.eval_at_start: step 0 is the loaded model's validation loss, computed here from its logits
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0
    assert rows[0]["eval/loss"] == pytest.approx(_validation_loss(tiny_llama, run_dir), abs=1e-5)

    out = tmp_path / "export"
    export_checkpoint(run_dir, out)
    base, exported = AutoConfig.from_pretrained(str(tiny_llama)).to_dict(), AutoConfig.from_pretrained(str(out)).to_dict()
    for key in ("rms_norm_eps", "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings"):
        assert exported[key] == base[key], key
    assert (exported.get("rope_parameters") or {}).get("rope_theta", exported.get("rope_theta")) == 5000.0
    text = "The court granted the motion in part.\nIt was 1984."
    assert AutoTokenizer.from_pretrained(str(out))(text)["input_ids"] == \
        AutoTokenizer.from_pretrained(str(tiny_llama))(text)["input_ids"]
    card = (out / "README.md").read_text()
    assert "continued pretraining of" in card and "## Lineage" in card
    lineage = json.loads((out / "zerolm_export.json").read_text())["lineage"]
    assert [s["start"] for s in lineage] == [str(tiny_llama), str(tiny_llama)]
    assert lineage[0]["tokens"] is None and lineage[1]["tokens"] == 3 * 8 * 64


@pytest.fixture(scope="module")
def stage1(prepared_corpus, trained_tokenizer, tmp_path_factory):
    """Stage 1: a tiny GPT pretrained from random weights on 2 ranks, and its export."""
    from zerolm.pretrain.export import export_checkpoint

    root = tmp_path_factory.mktemp("stage1")
    run_dir = root / "run"
    r = subprocess.run([*_cmd(2), "--config", str(REPO / "configs/pretrain/tiny_gpt.yaml"),
                        f"data.tokenizer_dir={trained_tokenizer}",
                        f"data.sources=[{{name: corpus, paths: ['{prepared_corpus}/train/*.jsonl']}}]",
                        f"data.validation_sources=[{{name: corpus, paths: ['{prepared_corpus}/validation/*.jsonl']}}]",
                        f"train.run_dir={run_dir}", "train.max_steps=4", "train.save_every=4", "train.eval_every=4"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-6000:]
    export_checkpoint(run_dir, root / "export")
    return run_dir, root / "export"


def test_two_stage_run_from_a_zerolm_export_on_2_ranks_zero3(stage1, prepared_corpus, tmp_path):
    from zerolm.pretrain.export import export_checkpoint

    run1, export1 = stage1
    files = sorted(str(p) for p in (prepared_corpus / "train").glob("*.jsonl"))
    mixture = [{"name": "first", "paths": files[: len(files) // 2], "weight": 3.0},
               {"name": "rest", "paths": files[len(files) // 2:], "weight": 1.0}]
    run2 = tmp_path / "stage2"
    _train(_config(tmp_path / "c.yaml", prepared_corpus, str(export1), zero=3, sources=mixture), run2, 2)
    assert _logged_loss(run2) == pytest.approx(_first_step_loss(export1, run2, 2), abs=1e-4)
    # a fresh optimizer (model.init_optimizer's default): AdamW has counted this run's 3 steps only
    assert _optimizer_steps(run2 / "checkpoints" / (run2 / "checkpoints/latest").read_text().strip()) == {3}

    out = tmp_path / "export2"
    export_checkpoint(run2, out)
    lineage = json.loads((out / "zerolm_export.json").read_text())["lineage"]
    tokens1 = json.loads((export1 / "zerolm_export.json").read_text())["tokens_seen"]
    assert [s["start"] for s in lineage] == ["random init", str(export1)]
    assert [s["tokens"] for s in lineage] == [tokens1, 3 * 8 * 64]
    assert lineage[0]["run_dir"] == str(run1.resolve()) and lineage[1]["data"] == ["first", "rest"]
    card = (out / "README.md").read_text()
    assert "## Lineage" in card and "| 2 |" in card


def test_continue_from_a_run_directory_uses_its_newest_checkpoint(stage1, prepared_corpus, tmp_path):
    run1, export1 = stage1
    run2 = tmp_path / "from_run"
    _train(_config(tmp_path / "c.yaml", prepared_corpus, str(run1), zero=1), run2, 1)
    meta = json.loads((run2 / "init_model" / "zerolm_export.json").read_text())
    assert meta["tag"] == (run1 / "checkpoints/latest").read_text().strip()
    # the same weights as the export of that checkpoint: the same first loss
    assert _logged_loss(run2) == pytest.approx(_first_step_loss(export1, run2, 1), abs=1e-5)
    assert json.loads((run2 / "init_from.json").read_text())["init_from"] == str(run1)


def test_continue_a_masked_lm(tiny_bert, prepared_corpus, tmp_path):
    run_dir = tmp_path / "mlm"
    _train(_config(tmp_path / "c.yaml", prepared_corpus, str(tiny_bert), objective="mlm", steps=2), run_dir, 1)
    assert _logged_loss(run_dir) == pytest.approx(_first_step_loss(tiny_bert, run_dir, 1), abs=1e-5)


def test_config_checks_name_what_disagrees(tiny_llama, tiny_bert, prepared_corpus, tmp_path):
    from transformers import AutoConfig

    from zerolm.pretrain.init_from import locate_and_check, merged_model_config

    hf = AutoConfig.from_pretrained(str(tiny_llama))
    with pytest.raises(ConfigError) as e:
        merged_model_config(ModelConfig(init_from="x", n_layer=3, d_model=64, family="gpt2"), hf, "x")
    msg = " ".join(str(e.value).split())
    assert "model.n_layer=3 (the model has 2)" in msg and "model.family=gpt2 (the model has llama)" in msg
    assert "d_model" not in msg  # it agrees
    with pytest.raises(ConfigError, match="preset"):
        merged_model_config(ModelConfig(init_from="x", preset="tiny"), hf, "x")
    ok = merged_model_config(ModelConfig(init_from="x", d_model=64, dropout=0.1), hf, "x")
    assert (ok.n_head, ok.d_ff, ok.max_position_embeddings, ok.dropout) == (4, 160, 128, 0.1)

    cfg = load_config(_config(tmp_path / "c.yaml", prepared_corpus, str(tiny_bert)))  # clm objective, mlm model
    with pytest.raises(ConfigError, match="data.objective=mlm"):
        locate_and_check(cfg, tmp_path / "r", True)
    cfg = load_config(_config(tmp_path / "c.yaml", prepared_corpus, str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="no such model folder"):
        locate_and_check(cfg, tmp_path / "r", True)
    long = load_config(_config(tmp_path / "c.yaml", prepared_corpus, str(tiny_llama)), ["data.seq_len=256"])
    with pytest.raises(ConfigError, match="exceeds the 128 positions"):
        locate_and_check(long, tmp_path / "r", True)


def test_a_random_init_model_on_a_hf_tokenizer_without_bos_pad_or_mask(hf_clm_tokenizer):
    from transformers import AutoTokenizer

    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
    from zerolm.pretrain.models import build_model, resolve_model_config, special_ids_of

    tok = load_pipeline_tokenizer(hf_clm_tokenizer)
    ref = AutoTokenizer.from_pretrained(str(hf_clm_tokenizer))
    ids = special_ids_of(tok)
    assert "mask" not in ids and "cls" not in ids
    assert ids["eos"] == ids["bos"] == ids["pad"] == ref.convert_tokens_to_ids("<|endoftext|>")
    model = build_model(resolve_model_config(ModelConfig(family="gpt2", preset="tiny")), vocab_size=tok.vocab_size,
                        seq_len=64, special_ids=ids)
    assert model.config.eos_token_id == ids["eos"] and model.get_input_embeddings().weight.shape[0] == len(ref)


def _optimizer_steps(tag_dir: Path) -> set[int]:
    """Every AdamW ``step`` count stored in a DeepSpeed checkpoint's optimizer files (all ranks)."""
    steps: set[int] = set()

    def walk(obj, key=None):
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, k)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        elif key == "step" and (torch.is_tensor(obj) or isinstance(obj, (int, float))):
            steps.add(int(obj))

    files = sorted(tag_dir.glob("*optim_states.pt"))
    assert files, f"no optimizer files in {tag_dir}"
    for f in files:
        walk(torch.load(f, map_location="cpu", weights_only=False))
    return steps


def test_init_optimizer_checkpoint_continues_moments_and_step_count(stage1, prepared_corpus, tmp_path):
    run1, _ = stage1
    tag1 = (run1 / "checkpoints/latest").read_text().strip()
    assert _optimizer_steps(run1 / "checkpoints" / tag1) == {4}
    run2 = tmp_path / "continued"
    _train(_config(tmp_path / "c.yaml", prepared_corpus, str(run1), steps=6), run2, 2,
           "model.init_optimizer=checkpoint", "train.save_every=6")
    rows = [json.loads(line) for line in (run2 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [5, 6]  # the step count continues
    tag2 = (run2 / "checkpoints/latest").read_text().strip()
    assert _optimizer_steps(run2 / "checkpoints" / tag2) == {6}  # AdamW moments continued: 4 + 2 steps
    states = torch.load(run2 / "checkpoints" / tag2 / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    assert states["lr_scheduler"]["base_lrs"] == [1.0e-4, 1.0e-4]  # this config's LR, not stage 1's 1e-3
    assert states["lr_scheduler"]["last_epoch"] == 6
    assert "continued from" in json.loads((run2 / "init_from.json").read_text())["optimizer"]


def test_init_optimizer_checkpoint_needs_a_run_at_the_same_zero_stage(stage1, tiny_llama, prepared_corpus, tmp_path):
    from zerolm.pretrain.init_from import locate_and_check

    run1, _ = stage1
    cfg = load_config(_config(tmp_path / "c.yaml", prepared_corpus, str(run1), zero=3, steps=9),
                      ["model.init_optimizer=checkpoint"])
    with pytest.raises(ConfigError, match="ZeRO-2"):
        locate_and_check(cfg, tmp_path / "r", False)
    cfg = load_config(_config(tmp_path / "c.yaml", prepared_corpus, str(run1), steps=4), ["model.init_optimizer=checkpoint"])
    with pytest.raises(ConfigError, match="max_steps=4 must be larger"):
        locate_and_check(cfg, tmp_path / "r", False)
    cfg = load_config(_config(tmp_path / "c.yaml", prepared_corpus, str(tiny_llama)), ["model.init_optimizer=checkpoint"])
    with pytest.raises(ConfigError, match="needs model.init_from to be a zerolm run directory"):
        locate_and_check(cfg, tmp_path / "r", False)
