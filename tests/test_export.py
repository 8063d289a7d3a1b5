"""Export: the trainer's own DeepSpeed checkpoints (ZeRO 0–3, 2 gloo ranks) → Hugging Face folders whose
validation loss is the one the trainer logged."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zerolm.pretrain.export import export_checkpoint
from zerolm.redact import redact
from zerolm.errors import DataError

REPO = Path(__file__).resolve().parents[1]
FAKE_SECRETS = {"WANDB_API_KEY": "fake-wandb-key-0123456789abcdef", "HF_TOKEN": "hf_FAKEtoken0123456789abcdef"}
SEQ_LEN = 32
RUNS = {
    "gpt2_z0": {"family": "gpt2", "zero_stage": 0},
    "gpt2_z2": {"family": "gpt2", "zero_stage": 2},
    "gpt2_z3": {"family": "gpt2", "zero_stage": 3},
    "llama_z1_untied": {"family": "llama", "zero_stage": 1, "tie_word_embeddings": False},
    "bert_z3": {"family": "bert", "zero_stage": 3},
}
WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared_corpus, trained_tokenizer):
    """Run dirs written by zerolm's trainer: every run trained for 2 steps on 2 ranks (2 gloo processes,
    one process group for all runs, each rank on its own data shard), so ZeRO 1–3 checkpoints are
    really sharded; evaluation on 2 validation batches per rank at step 2."""
    root = tmp_path_factory.mktemp("ds_runs")
    spec = {
        "corpus_dir": str(prepared_corpus),
        "tokenizer_dir": str(trained_tokenizer),
        "seq_len": SEQ_LEN,
        "runs": [{"run_dir": str(root / name), "steps": 2, **r} for name, r in RUNS.items()],
    }
    (root / "spec.json").write_text(json.dumps(spec))
    port, procs = _free_port(), []
    for rank in range(WORLD_SIZE):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD_SIZE),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(WORLD_SIZE),
            "DS_ACCELERATOR": "cpu",
            "OMP_NUM_THREADS": "1",
                        **FAKE_SECRETS,
        }
        log = open(root / f"rank{rank}.log", "w")
        cmd = [sys.executable, str(REPO / "tests" / "make_ds_checkpoint.py"), str(root / "spec.json")]
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    failed = []
    for proc, log in procs:
        try:
            rc = proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        log.close()
        if rc != 0:
            failed.append(f"{log.name} ({rc}):\n" + Path(log.name).read_text()[-4000:])
    assert not failed, "\n".join(failed)
    return {name: root / name for name in RUNS}


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """Each run exported once (with fake secrets in the environment)."""
    out_root = tmp_path_factory.mktemp("exports")
    mp = pytest.MonkeyPatch()
    for k, v in FAKE_SECRETS.items():
        mp.setenv(k, v)
    try:
        return {name: (out_root / name, export_checkpoint(run, out_root / name)) for name, run in runs.items()}
    finally:
        mp.undo()


def _validation_metrics(model, run_dir: Path) -> dict[str, float]:
    """Token-weighted validation loss (and masked-token accuracy) of ``model`` computed directly from
    its logits, on the batches the trainer evaluated: the first ``EVAL_BATCHES`` validation batches of
    each rank's shard (``train.eval_batches``), rebuilt from the run's config."""
    import torch.nn.functional as F

    from zerolm.config import load_config
    from zerolm.data_pipeline.loader import PackedDataLoader
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer

    cfg = load_config(run_dir / "config.yaml")
    tok = load_pipeline_tokenizer(cfg.data.tokenizer_dir)
    nll = count = correct = 0.0
    model.eval()
    for rank in range(WORLD_SIZE):
        loader = PackedDataLoader(cfg.data, split="validation", rank=rank, world_size=WORLD_SIZE, tokenizer=tok)
        for _, batch in zip(range(cfg.train.eval_batches), loader):
            labels = batch.pop("labels")
            with torch.no_grad():
                logits = model(**batch).logits
            if cfg.data.objective == "clm":  # position t predicts token t+1
                logits, labels = logits[:, :-1], labels[:, 1:]
            keep = labels != -100
            nll += float(F.cross_entropy(logits[keep].double(), labels[keep], reduction="sum"))
            count += int(keep.sum())
            correct += int((logits[keep].argmax(-1) == labels[keep]).sum())
    return {"eval/loss": nll / count, "eval/accuracy": correct / count, "eval/tokens": count}


def _logged(run_dir: Path, key: str, step: int = 2) -> float:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r[key] for r in rows if r["step"] == step and key in r)


@pytest.mark.parametrize("name", list(RUNS))
def test_export_reproduces_the_loss_the_trainer_logged(name, runs, exports):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    out, summary = exports[name]
    stage = RUNS[name]["zero_stage"]
    assert summary["tag"] == "step_00000002" and summary["step"] == 2
    assert summary["weights_from"] == ("module" if stage == 0 else "zero_to_fp32")
    logged = _logged(runs[name], "eval/loss")
    assert summary["metrics"]["eval/loss"] == logged
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert summary["files"][f] == (out / f).stat().st_size > 0
    causal = RUNS[name]["family"] != "bert"
    assert (out / "generation_config.json").is_file() == causal
    model = (AutoModelForCausalLM if causal else AutoModelForMaskedLM).from_pretrained(out)
    direct = _validation_metrics(model, runs[name])
    assert direct["eval/tokens"] == summary["metrics"]["eval/tokens"]
    assert direct["eval/loss"] == pytest.approx(logged, rel=1e-5, abs=1e-6)
    if not causal:
        assert direct["eval/accuracy"] == pytest.approx(_logged(runs[name], "eval/accuracy"), abs=1e-9)
    tied = RUNS[name].get("tie_word_embeddings", True)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert summary["params"]["total"] == sum(p.numel() for p in model.parameters())
    gen = json.loads((out / "generation_config.json").read_text()) if causal else {}
    if causal:
        assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, 2, 3)
        assert gen["do_sample"] is True and 0 < gen["max_new_tokens"] <= SEQ_LEN


def greedy_by_argmax(model, ids: list[int], n: int, eos: int | None) -> list[int]:
    """``n`` tokens appended one at a time, each the argmax of a full forward pass (stops at ``eos``)."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == eos:
                break
    return ids


def test_text_generation_pipeline_is_greedy_argmax(exports):
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    out, _ = exports["gpt2_z3"]
    model, tok = AutoModelForCausalLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    prompt = "The history of the city"
    expected = greedy_by_argmax(model, tok(prompt)["input_ids"], 8, tok.eos_token_id)
    text = pipeline("text-generation", model=model, tokenizer=tok)(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text == tok.decode(expected, skip_special_tokens=True)


def test_fill_mask_pipeline_matches_a_forward_pass(exports):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    out, _ = exports["bert_z3"]
    model, tok = AutoModelForMaskedLM.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    text = f"The capital of France is {tok.mask_token}."
    preds = pipeline("fill-mask", model=model, tokenizer=tok)(text)
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, int((enc["input_ids"][0] == tok.mask_token_id).nonzero())]
    top = torch.softmax(logits, -1).topk(5)
    assert [p["token"] for p in preds] == top.indices.tolist()
    assert [p["score"] for p in preds] == pytest.approx(top.values.tolist(), abs=1e-6)


def test_exported_tokenizer_gives_pipeline_ids(exports, trained_tokenizer):
    from transformers import AutoTokenizer

    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer

    ptok = load_pipeline_tokenizer(trained_tokenizer)
    text = "The court ruled on 12 March 2019 that the  appeal\nwas dismissed."
    ids = ptok.encode(text)
    clm = AutoTokenizer.from_pretrained(exports["gpt2_z2"][0])
    assert clm(text)["input_ids"] == ids
    assert clm.decode(ids) == text and clm.model_max_length == SEQ_LEN
    mlm = AutoTokenizer.from_pretrained(exports["bert_z3"][0])
    assert mlm(text)["input_ids"] == [ptok.cls_id, *ids, ptok.sep_id]
    assert mlm.mask_token_id == ptok.mask_id
    assert json.loads((exports["bert_z3"][0] / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_model_card_metadata_and_contents(exports):
    from huggingface_hub import ModelCard

    for name, (out, summary) in exports.items():
        card = ModelCard((out / "README.md").read_text())
        data = card.data.to_dict()
        causal = RUNS[name]["family"] != "bert"
        assert data["language"] == "en" and data["library_name"] == "transformers"
        assert data["license"] == "other"  # the bundled corpus mixes CC-BY-SA, ODC-By and research-use text
        assert data["pipeline_tag"] == ("text-generation" if causal else "fill-mask")
        assert data["tags"] == ["zerolm", "causal-lm" if causal else "masked-lm", RUNS[name]["family"]]
        body = card.text
        assert f"{summary['params']['total']:,}" in body
        assert f"{summary['metrics']['eval/loss']:.4f}" in body
        assert f"tokens seen: {2 * 2 * WORLD_SIZE * SEQ_LEN}" in body and "steps: 2" in body
        assert "wikipedia_boolq" in body and "CC-BY-SA-3.0" in body
        assert ("AutoModelForCausalLM" if causal else "AutoModelForMaskedLM") in body
        assert f"zero_stage: {RUNS[name]['zero_stage']}" in body  # the resolved config
        meta = json.loads((out / "zerolm_export.json").read_text())
        assert meta["tag"] == summary["tag"] and meta["params"] == summary["params"]


def test_no_secret_in_any_exported_file(exports):
    for out, _ in exports.values():
        for f in out.iterdir():
            data = f.read_bytes()
            for secret in FAKE_SECRETS.values():
                assert secret.encode() not in data, (f, secret)


def test_redaction_of_a_config():
    cfg = {
        "tracking": {"hf_token": "abc", "wandb_api_key": "k", "project": "p", "client_secret": "s"},
        "db": [{"password": "pw", "user": "u"}],
        "data": {"tokenizer_dir": "d", "bos_token_id": 1, "tokens_seen": 5},
    }
    out = redact(cfg)
    assert out["tracking"] == {"hf_token": "***", "wandb_api_key": "***", "project": "p", "client_secret": "***"}
    assert out["db"] == [{"password": "***", "user": "u"}]
    assert out["data"] == cfg["data"]


def test_missing_or_incomplete_checkpoint_is_a_data_error(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["gpt2_z2"], run)
    ckpt = run / "checkpoints"
    with pytest.raises(DataError, match="step_00000099"):
        export_checkpoint(run, tmp_path / "o1", tag="step_00000099")
    # a save that was interrupted: no completion marker
    shutil.copytree(ckpt / "step_00000002", ckpt / "step_00000004")
    (ckpt / "step_00000004" / "zerolm_complete.json").unlink()
    with pytest.raises(DataError, match="incomplete") as e:
        export_checkpoint(run, tmp_path / "o2", tag="step_00000004")
    assert str(ckpt / "step_00000004") in str(e.value)
    # a listed file with the wrong size
    shard = ckpt / "step_00000002" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        export_checkpoint(run, tmp_path / "o3")
    (ckpt / "latest").unlink()
    with pytest.raises(DataError, match="latest"):
        export_checkpoint(run, tmp_path / "o4")
    assert not any(p.name.startswith(("o1", "o2", "o3", "o4", ".o")) for p in tmp_path.iterdir())


def test_output_folder_is_replaced_only_when_it_is_an_export(runs, exports, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing"):
        export_checkpoint(runs["gpt2_z2"], other)
    assert (other / "keep.txt").read_text() == "mine"
    out = tmp_path / "again"
    shutil.copytree(exports["gpt2_z3"][0], out)  # a previous export (of another run) is replaced
    summary = export_checkpoint(runs["gpt2_z2"], out)
    assert json.loads((out / "zerolm_export.json").read_text())["run_dir"] == str(runs["gpt2_z2"].resolve())
    assert sorted(summary["files"]) == sorted(p.name for p in out.iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_checkpoint_config_is_preferred_and_cli_exports(runs, tmp_path, capsys):
    from zerolm.cli import main
    from zerolm.config import load_config, save_config

    run = tmp_path / "run"
    shutil.copytree(runs["gpt2_z2"], run)
    cfg = load_config(run / "config.yaml")
    shutil.copy(run / "config.yaml", run / "checkpoints" / "step_00000002" / "config.yaml")
    save_config(cfg.model_copy(update={"model": cfg.model.model_copy(update={"n_layer": 5})}), run / "config.yaml")
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tag"] == "step_00000002" and json.loads((tmp_path / "out" / "config.json").read_text())["n_layer"] == 2
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "out2")]) == 2
    assert "latest" in capsys.readouterr().out


def test_checkpoints_are_sharded_over_both_ranks(runs):
    """The trainer's checkpoints: ZeRO 1–3 hold one optimizer shard per rank, every rank its client
    state, and the completion record lists them all with the run's shape."""
    for name, r in RUNS.items():
        tag_dir = runs[name] / "checkpoints" / "step_00000002"
        shards = sorted(p.name for p in tag_dir.glob("*_optim_states.pt"))
        if r["zero_stage"] == 0:
            assert shards == [] and (tag_dir / "mp_rank_00_model_states.pt").is_file()
        else:
            assert shards == [f"zero_pp_rank_{k}_mp_rank_00_optim_states.pt" for k in range(WORLD_SIZE)], name
        record = json.loads((tag_dir / "zerolm_complete.json").read_text())
        assert {f"zerolm_client_rank{k}.pt" for k in range(WORLD_SIZE)} | set(shards) <= set(record["files"])
        assert record["run"]["world_size"] == WORLD_SIZE and record["run"]["zero_stage"] == r["zero_stage"]
