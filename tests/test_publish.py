"""`zerolm publish`: the Hub model card and the planned commit, checked offline with huggingface_hub
(ModelCard/ModelCardData/EvalResult, CommitOperationAdd); the upload itself against a fake HfApi.
The export is real: a 2-step training run of the tiny GPT, then `zerolm export`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zerolm.launch.publish import plan_publish, publish, validate_card
from zerolm.errors import ConfigError, DataError, ZeroLMError

REPO = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_FAKEpublishToken0123456789abcdef"
REPO_ID = "alice/zerolm-tiny-gpt"


@pytest.fixture(scope="module")
def export_dir(prepared_corpus, trained_tokenizer, tmp_path_factory):
    """A real export: the tiny GPT trained 2 steps in one process (ZeRO-0), then exported."""
    from zerolm.pretrain.export import export_checkpoint

    root = tmp_path_factory.mktemp("publish")
    run = root / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline",            "HF_TOKEN": "", "WANDB_API_KEY": ""}
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK"))}
    r = subprocess.run([sys.executable, "-m", "zerolm.pretrain", "--config", str(REPO / "configs/pretrain/tiny_gpt.yaml"),
                        f"data.tokenizer_dir={trained_tokenizer}",
                        f"data.sources=[{{name: corpus, paths: ['{prepared_corpus}/train/*.jsonl']}}]",
                        f"data.validation_sources=[{{name: corpus, paths: ['{prepared_corpus}/validation/*.jsonl']}}]",
                        f"tokenizer.corpus_dir={prepared_corpus}", f"train.run_dir={run}", "train.max_steps=2",
                        "train.zero_stage=0", "train.eval_every=2", "train.save_every=2", "tracking.wandb_mode=disabled"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    out = root / "tiny-export"
    export_checkpoint(run, out)
    return out


def _folder_files(d: Path) -> dict[str, int]:
    return {p.relative_to(d).as_posix(): p.stat().st_size for p in d.rglob("*") if p.is_file()}


def test_card_metadata_validates_with_huggingface_hub(export_dir):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    from huggingface_hub.repocard_data import model_index_to_eval_results

    plan = plan_publish(export_dir, REPO_ID)
    assert validate_card(plan.card) == []
    card = ModelCard(plan.card, ignore_metadata_errors=False)
    data = card.data
    meta = json.loads((export_dir / "zerolm_export.json").read_text())
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation" and data.language == "en"
    assert {"zerolm", "causal-lm", "gpt2"} <= set(data.tags)
    # the bundled corpus: Wikipedia (BoolQ, QuAC passages), BBC (XSum), legal summaries (Multi-LexSum)
    assert data.datasets == ["EdinburghNLP/xsum", "allenai/multi_lexsum", "allenai/quac", "google/boolq"]
    assert data.license == "other" and data.license_name == "mixed-training-data-licenses", "the sources' licenses differ"
    assert data.model_name == "zerolm-tiny-gpt"
    by_type = {r.metric_type: r for r in data.eval_results}
    assert set(by_type) == {"loss", "perplexity"}
    assert by_type["loss"].metric_value == pytest.approx(meta["metrics"]["eval/loss"], abs=1e-4)
    assert by_type["perplexity"].metric_value == pytest.approx(meta["metrics"]["eval/perplexity"], rel=1e-6, abs=1e-4)
    assert all(isinstance(r, EvalResult) and r.task_type == "text-generation" and r.dataset_split == "validation"
               for r in data.eval_results)
    # the YAML itself: ModelCardData parses it strictly, model-index round-trips
    front = yaml.safe_load(plan.card.split("---")[1])
    ModelCardData(**front, ignore_metadata_errors=False)
    name, results = model_index_to_eval_results(front["model-index"])
    assert name == "zerolm-tiny-gpt" and len(results) == 2
    # the body is the export's, renamed to the repository
    assert "# zerolm-tiny-gpt\n" in plan.card and f'from_pretrained("{REPO_ID}")' in plan.card
    assert '"tiny-export"' not in plan.card and "## Training" in plan.card and "## Data" in plan.card


def test_license_override_and_invalid_cards_are_refused(export_dir, tmp_path):
    from huggingface_hub import ModelCard

    plan = plan_publish(export_dir, REPO_ID, license="apache-2.0", datasets=["me/my-corpus"], extra_tags=["tiny"])
    data = ModelCard(plan.card).data
    assert data.license == "apache-2.0" and data.license_name is None and data.datasets == ["me/my-corpus"]
    assert "tiny" in data.tags and not any("license" in w for w in plan.warnings)
    with pytest.raises(ConfigError, match="not a Hub license id"):
        plan_publish(export_dir, REPO_ID, license="gplv9")
    for bad in ("no-owner", "a/b/c", "alice/bad name"):
        with pytest.raises(ConfigError, match="repo-id"):
            plan_publish(export_dir, bad)
    broken = plan.card.replace("license: apache-2.0", "license: not-a-license")
    assert any("license" in p for p in validate_card(broken))
    no_value = re.sub(r"value: [0-9.]+", "value: .nan", plan.card, count=1)
    assert any("value" in p for p in validate_card(no_value))
    assert validate_card("# no metadata\n") == ["no YAML front matter (--- … ---) with metadata"]
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(DataError, match="not a `zerolm export` folder"):
        plan_publish(tmp_path, REPO_ID)


def test_planned_commit_operations_match_the_folder(export_dir):
    plan = plan_publish(export_dir, REPO_ID)
    on_disk = _folder_files(export_dir)
    assert [op.path_in_repo for op in plan.operations] == sorted(on_disk) == [f["path"] for f in plan.files]
    for op, f in zip(plan.operations, plan.files):
        if op.path_in_repo == "README.md":
            assert op.path_or_fileobj == plan.card.encode() and f["size"] == len(plan.card.encode())
            assert op.upload_info.sha256 == hashlib.sha256(plan.card.encode()).digest()
        else:
            p = export_dir / op.path_in_repo
            assert Path(op.path_or_fileobj) == p and op.upload_info.size == f["size"] == on_disk[op.path_in_repo]
            assert op.upload_info.sha256 == hashlib.sha256(p.read_bytes()).digest()
    assert {"model.safetensors", "config.json", "tokenizer.json", "zerolm_export.json"} <= set(on_disk)
    assert plan.total_bytes == sum(on_disk.values()) - on_disk["README.md"] + len(plan.card.encode())


def _cli(args, **env):
    e = {**os.environ, "COLUMNS": "120", **env}
    return subprocess.run([sys.executable, "-m", "zerolm", "publish", *args], cwd=REPO, env=e, capture_output=True,
                          text=True, timeout=120)


def test_dry_run_prints_card_and_exact_files_never_the_token(export_dir):
    r = _cli([str(export_dir), "--repo-id", REPO_ID, "--private", "--revision", "v0.1", "--dry-run"], HF_TOKEN=FAKE_TOKEN)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert FAKE_TOKEN not in out
    plan = plan_publish(export_dir, REPO_ID)
    assert plan.card.strip() in r.stdout, "the card is printed verbatim"
    listed = dict((m.group(2), int(m.group(1).replace(",", ""))) for m in re.finditer(r"^\s*([\d,]+)\s+\S+ \S+\s+(\S+)$", r.stdout, re.M))
    assert listed == {f["path"]: f["size"] for f in plan.files}
    assert f"total ({len(plan.files)} files)" in r.stdout and f"{plan.total_bytes:,}" in r.stdout
    assert "would create private model repo" in r.stdout and "v0.1" in r.stdout and "nothing was uploaded" in r.stdout


def test_upload_uses_the_env_token_and_reports_errors_without_it(export_dir, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(self, repo_id, **kw):
            calls.append(("create_branch", repo_id, kw))

        def create_commit(self, repo_id, operations, **kw):
            calls.append(("create_commit", repo_id, list(operations), kw))

            class Info:
                commit_url = f"https://huggingface.co/{repo_id}/commit/abc123"
                oid = "abc123"

            return Info()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    plan = plan_publish(export_dir, REPO_ID, private=True, revision="v0.1")
    res = publish(plan)
    assert res["commit_url"].endswith("/commit/abc123") and res["revision"] == "v0.1"
    assert calls[0] == ("init", FAKE_TOKEN), "the token from HF_TOKEN goes to the API client"
    assert calls[1] == ("create_repo", REPO_ID, {"repo_type": "model", "private": True, "exist_ok": True})
    assert calls[2] == ("create_branch", REPO_ID, {"branch": "v0.1", "repo_type": "model", "exist_ok": True})
    _, repo, ops, kw = calls[3]
    assert repo == REPO_ID and ops == plan.operations and kw["revision"] == "v0.1" and kw["repo_type"] == "model"

    class FailingApi(FakeApi):
        def create_commit(self, repo_id, operations, **kw):
            raise RuntimeError(f"401 Unauthorized for token {FAKE_TOKEN}")

    with pytest.raises(ZeroLMError) as e:
        publish(plan, api=FailingApi())
    assert FAKE_TOKEN not in str(e.value) and "***" in str(e.value) and "401" in str(e.value)


def test_cli_upload_refuses_offline_and_without_token(export_dir, tmp_path):
    r = _cli([str(export_dir), "--repo-id", REPO_ID], HF_TOKEN=FAKE_TOKEN, HF_HUB_OFFLINE="1")
    assert r.returncode == 2 and "HF_HUB_OFFLINE" in r.stdout and FAKE_TOKEN not in r.stdout + r.stderr
    r = _cli([str(export_dir), "--repo-id", REPO_ID], HF_TOKEN="", HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
    assert r.returncode == 2 and "no Hugging Face token" in r.stdout


def test_eval_results_go_into_the_card_and_the_commit(export_dir, tmp_path):
    from zerolm.evals.bias import run_bias
    from zerolm.evals.fewshot import run_fewshot

    bias_dir, fewshot_dir = tmp_path / "bias", tmp_path / "fewshot"
    bias = run_bias(str(export_dir), ["crows_pairs"], bias_dir, limit=6)
    fewshot = run_fewshot(str(export_dir), ["piqa"], [0], limit=4, out_dir=fewshot_dir)
    plan = plan_publish(export_dir, REPO_ID, eval_dirs=[fewshot_dir, bias_dir])
    assert validate_card(plan.card) == []
    assert "## Few-shot evaluation" in plan.card and "## Bias evaluation" in plan.card
    acc = fewshot["results"]["piqa"]["0"]["metrics"]["acc"]
    assert f"| piqa | 0 | acc | {acc:.4f} |" in plan.card
    assert bias["suites"]["crows_pairs"]["n"] == 6
    paths = {f["path"] for f in plan.files}
    assert {"evals/fewshot/fewshot.json", "evals/bias/bias.json"} <= paths
    assert any(p.startswith("evals/bias/") and p.endswith(".png") for p in paths)
    assert [op.path_in_repo for op in plan.operations] == [f["path"] for f in plan.files]
    with pytest.raises(DataError, match="holds no fewshot.json or bias.json"):
        plan_publish(export_dir, REPO_ID, eval_dirs=[tmp_path])


# -- the card module (zerolm.card): composition, sections, redaction -------------------------------
def test_card_composition_and_sections(tmp_path, monkeypatch):
    from zerolm import card as C

    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    meta = {"library_name": "transformers", "pipeline_tag": "text-classification", "tags": ["zerolm", "x"]}
    text = C.compose(meta, "my-model", ["Intro line.\n", "\n## Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n", "",
                                        f"## Usage\n\nuse it (token {FAKE_TOKEN})"])
    front, body = text[4:].split("\n---\n", 1)
    assert yaml.safe_load(front) == meta
    assert body == ("\n# my-model\n\nIntro line.\n\n## Results\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                    "## Usage\n\nuse it (token ***)\n")
    assert C.split_front_matter(text) == (meta, body[1:]) and C.title_of(body) == "my-model"
    assert C.title_of(C.retitle(body, "alice/other")) == "alice/other" and C.retitle("no title\n", "t") == "no title\n"
    with pytest.raises(ValueError, match="model_index"):
        C.compose({"model-index": [{"name": "x", "results": [{"task": {}}]}]}, "t", ["x"])

    # a section replaces its namesake in place (what follows stays), else goes before the evaluation mark
    new = C.set_section(text, "## Results\n\nnew table\n")
    assert new.count("## Results") == 1 and "| 1 | 2 |" not in new
    assert new.index("new table") < new.index("## Usage") and new.endswith("use it (token ***)\n")
    with_evals = C.set_evals(new, "## Few-shot evaluation\n\nrow\n")
    assert with_evals.endswith(f"use it (token ***)\n\n{C.SECTION_MARK}\n## Few-shot evaluation\n\nrow\n")
    assert C.set_evals(with_evals, "## Bias evaluation\n\nb\n") == with_evals.split(C.SECTION_MARK)[0] + \
        f"{C.SECTION_MARK}\n## Bias evaluation\n\nb\n", "the evaluation tail is regenerated, not appended"
    added = C.set_section(with_evals, "\n## Before vs after\n\n| m | 1 |\n")
    head, tail = added.split(C.SECTION_MARK)
    assert head.endswith("use it (token ***)\n\n## Before vs after\n\n| m | 1 |\n\n") and tail == with_evals.split(C.SECTION_MARK)[1]
    assert C.set_section(added, "## Before vs after\n\n| m | 1 |") == added, "idempotent"
    with pytest.raises(ValueError):
        C.set_section(text, "no heading")

    path = C.write_card(tmp_path / "m", f"# t\n\n{FAKE_TOKEN} and tok_0123456789\n", extra_secrets=["tok_0123456789"])
    assert path.read_text() == "# t\n\n*** and ***\n" and C.read_card(tmp_path / "m") == path.read_text()
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["README.md"], "no temporary file left behind"
    with pytest.raises(DataError, match="unreadable model card"):
        C.read_card(tmp_path)


def test_card_module_sits_below_the_jobs():
    code = ("import sys, zerolm.card, zerolm.redact; "
            "bad = sorted(m for m in sys.modules if m.startswith(('zerolm.pretrain', 'zerolm.finetune', 'zerolm.evals', "
            "'zerolm.launch', 'zerolm.data_pipeline', 'torch', 'transformers'))); print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_published_card_never_carries_the_token(export_dir, tmp_path, monkeypatch):
    """A token in the export's card (say, pasted into a note) is redacted from the card to upload, whether
    it comes from HF_TOKEN or only from the cached `hf auth login` file."""
    import shutil

    from huggingface_hub import constants

    cached = "hf_CACHEDloginToken0123456789ab"
    d = tmp_path / "tiny-export"
    shutil.copytree(export_dir, d)
    readme = d / "README.md"
    readme.write_text(readme.read_text() + f"\nnote: {FAKE_TOKEN} / {cached}\n")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    card = plan_publish(d, REPO_ID).card
    assert FAKE_TOKEN not in card and f"note: *** / {cached}" in card
    monkeypatch.delenv("HF_TOKEN")
    (tmp_path / "token").write_text(cached)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    card = plan_publish(d, REPO_ID).card
    assert cached not in card and f"note: {FAKE_TOKEN} / ***" in card and validate_card(card) == []
