"""Experiment tracking of a real pretraining run: the offline W&B run keeps the settings a user needs to
reproduce it (tokenizer_dir, tokenize_batch_size …), carries only the sections pretraining uses, and
holds no secret — neither a planted HF_TOKEN in a config value, the run name, a tag, nor the command line.

W&B 0.31 writes no ``files/config.yaml`` offline: the config, run name, tags and the recorded command
line live in the run's ``.wandb`` file, a LevelDB-style log of ``wandb_internal_pb2.Record`` protobufs
(W&B's transaction log, which ``wandb sync`` uploads); :func:`wandb_records` reads it."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_FAKEtoken1234567890abcd"


def wandb_records(path: Path):
    """The records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then 32 KiB blocks of
    chunks (crc32 uint32, length uint16, type uint8: 1 full, 2 first, 3 middle, 4 last) whose payloads
    concatenate into serialized ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, payload = 7, 32 * 1024, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(payload)
            payload = b""
            yield rec


@pytest.fixture(scope="module")
def tracked_run(prepared_corpus, trained_tokenizer, tmp_path_factory):
    """The tiny GPT trained 2 steps in one process with W&B offline; HF_TOKEN is set in the environment and
    its value planted in the run name, a tag (both on the command line) and a data source's folder name
    (a copy of one training shard, as a signed URL would carry it)."""
    root = tmp_path_factory.mktemp("tracking")
    run, signed = root / "run", root / f"signed-{FAKE_TOKEN}"
    signed.mkdir()
    shard = sorted(Path(prepared_corpus).glob("train/*.jsonl"))[0]
    (signed / shard.name).write_bytes(shard.read_bytes())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline",            "HF_TOKEN": FAKE_TOKEN, "WANDB_API_KEY": ""}
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "WANDB_DIR"))}
    r = subprocess.run([sys.executable, "-m", "zerolm.pretrain", "--config", str(REPO / "configs/pretrain/tiny_gpt.yaml"),
                        f"data.tokenizer_dir={trained_tokenizer}", "data.tokenize_batch_size=32",
                        f"data.sources=[{{name: corpus, paths: ['{prepared_corpus}/train/*.jsonl', '{signed}/*.jsonl']}}]",
                        f"data.validation_sources=[{{name: corpus, paths: ['{prepared_corpus}/validation/*.jsonl']}}]",
                        f"tokenizer.corpus_dir={prepared_corpus}", f"train.run_dir={run}", "train.max_steps=2",
                        "train.zero_stage=0", "train.eval_every=2", "train.save_every=2", "tracking.wandb_mode=offline",
                        f"tracking.run_name=tiny-{FAKE_TOKEN}", f"tracking.tags=[tiny, {FAKE_TOKEN}]"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return run


def _records(run: Path) -> dict[str, list]:
    (path,) = run.glob("wandb/offline-run-*/run-*.wandb")
    out: dict[str, list] = {}
    for rec in wandb_records(path):
        out.setdefault(rec.WhichOneof("record_type"), []).append(rec)
    return out


def test_wandb_config_keeps_tokenizer_settings_and_only_pretraining_sections(tracked_run, trained_tokenizer):
    recs = _records(tracked_run)
    (run_rec,) = recs["run"]
    config = {u.key: json.loads(u.value_json) for u in run_rec.run.config.update}
    for c in recs.get("config", []):  # later config updates, if any
        config.update({u.key: json.loads(u.value_json) for u in c.config.update})
    assert set(config) - {"_wandb"} == {"data", "model", "train", "tracking"}, "no finetune/sentiment/corpus defaults"
    assert config["data"]["tokenizer_dir"] == str(trained_tokenizer)
    assert config["data"]["tokenize_batch_size"] == 32 and config["data"]["seq_len"] == 64
    assert config["model"]["family"] == "gpt2" and config["train"]["max_steps"] == 2
    # the planted secret: masked where it was, the rest of the value kept
    assert config["tracking"]["run_name"] == "tiny-***" and config["tracking"]["tags"] == ["tiny", "***"]
    assert config["data"]["sources"][0]["paths"][1].endswith("/signed-***/*.jsonl")
    assert run_rec.run.display_name == "tiny-***" and list(run_rec.run.tags) == ["tiny", "***"]
    args = [a for env in recs["environment"] for a in env.environment.args]
    assert "tracking.run_name=tiny-***" in args and "train.max_steps=2" in args, "W&B records the redacted command line"


def test_planted_token_is_nowhere_but_the_local_resolved_config(tracked_run, tmp_path, monkeypatch):
    """The run directory's files hold the token only in the resolved config the run needs to resume and
    export (``config.yaml`` and its copy per checkpoint, never uploaded); W&B files, metrics and logs do
    not. The export built from that config (card, zerolm_export.json) does not either."""
    from zerolm.pretrain.export import export_checkpoint

    token = FAKE_TOKEN.encode()
    holders = sorted(p.relative_to(tracked_run).as_posix() for p in tracked_run.rglob("*")
                     if p.is_file() and token in p.read_bytes())
    assert holders == ["checkpoints/step_00000002/config.yaml", "config.yaml"], holders
    assert any(tracked_run.glob("wandb/offline-run-*/run-*.wandb")) and (tracked_run / "metrics.jsonl").is_file()
    steps = [json.loads(l)["step"] for l in (tracked_run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == [1, 2]

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    out = tmp_path / "export"
    export_checkpoint(tracked_run, out)
    card = (out / "README.md").read_text()
    assert "run_name: tiny-***" in card and "tokenizer_dir:" in card and "tokenize_batch_size: 32" in card
    leaks = [p.name for p in out.iterdir() if p.is_file() and token in p.read_bytes()]
    assert leaks == []
    meta = json.loads((out / "zerolm_export.json").read_text())
    assert meta["config"]["tracking"]["run_name"] == "tiny-***" and meta["config"]["data"]["tokenize_batch_size"] == 32


@pytest.mark.parametrize("ending", ["exit_process", "os._exit"])
def test_exit_process_removes_wandb_temp_dirs(tmp_path, ending):
    """wandb makes ``*wandb-media`` and ``*wandb-artifacts`` temporary folders at import, removed by a
    finalizer at a normal exit. zerolm's processes end with ``exit_process`` (``os._exit`` after the work),
    which must still remove them; a bare ``os._exit`` (the control) leaves them behind."""
    end = "from zerolm.pretrain.distributed import exit_process; exit_process(0)" if ending == "exit_process" \
        else "import os; os._exit(0)"
    code = "import wandb; " + end
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the child's temp folder: only its own folders land here
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    left = sorted(p.name for p in tmp_path.iterdir() if "wandb" in p.name)
    if ending == "os._exit":
        assert any(n.endswith("wandb-media") for n in left), left  # the leak exists without the cleanup
    else:
        assert left == []
