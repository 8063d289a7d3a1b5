"""Classification finetuning: a tiny BERT (our tokenizer, random init) finetuned on real BBC News
topics through the CLI beats chance on the held-out test split and exports a folder that
``pipeline("text-classification")`` loads; 2-process ZeRO-3 under torchrun; split determinism and
stratification; resumable sharded batches; metrics; bad-input errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from zerolm.data_pipeline.labelled import load_labelled
from zerolm.finetune import data as fdata
from zerolm.finetune.classify import ClassificationObjective, metrics_from_confusion, prepare_data
from zerolm.config import FinetuneConfig, load_config
from zerolm.errors import DataError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1", "WANDB_API_KEY": "", "HF_TOKEN": ""}


def finetune(args: list[str], nproc: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "zerolm.finetune"] if nproc == 1 else \
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc), "-m", "zerolm.finetune"]
    r = subprocess.run([*launcher, "classify", *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"finetune failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
    return r


@pytest.fixture(scope="module")
def bbc_run(tiny_bert, tmp_path_factory):
    """`python -m zerolm.finetune classify` (the CLI) on all of BBC News: 200 steps of 16 (~15 s)."""
    run_dir = tmp_path_factory.mktemp("bbc_run")
    finetune(["--model", str(tiny_bert), "--data", "bbc_news", "--run-dir", str(run_dir),
              "finetune.max_length=64", "data.micro_batch_size=16", "train.max_steps=200", "train.lr=3e-3",
              "train.warmup_steps=5", "train.min_lr_ratio=0.3", "train.eval_every=100", "train.log_every=50",
              "tracking.wandb_mode=offline"])
    return run_dir


def test_finetuned_tiny_bert_beats_chance_on_held_out_bbc(bbc_run):
    m = json.loads((bbc_run / "hf" / "classification_metrics.json").read_text())
    assert m["labels"] == ["business", "entertainment", "politics", "sports", "tech"]
    assert m["examples"] == 223  # 10% of 2,225, stratified
    majority = max(m["class_balance"]["test"]["counts"].values()) / m["examples"]
    assert m["accuracy"] > max(0.4, majority + 0.1), m["accuracy"]  # chance 0.2, majority 0.23
    assert 0 < m["macro_f1"] <= 1
    assert sum(map(sum, m["confusion_matrix"])) == 223
    assert set(m["per_class"]["sports"]) == {"precision", "recall", "f1", "support"}
    assert (bbc_run / "hf" / "confusion_matrix.png").stat().st_size > 1000
    result = json.loads((bbc_run / "result.json").read_text())
    assert result["test"]["accuracy"] == m["accuracy"] and "eval/accuracy" in result
    rows = [json.loads(line) for line in (bbc_run / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/macro_f1" in r for r in rows)


def test_export_loads_in_text_classification_pipeline(bbc_run):
    """On the whole test split: a direct forward pass over the exported folder, one text at a time (no
    padding), reproduces the metrics file's confusion matrix and accuracy, and
    ``pipeline("text-classification")`` gives the same label and probability for every item."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    hf = bbc_run / "hf"
    model = AutoModelForSequenceClassification.from_pretrained(str(hf)).eval()
    tok = AutoTokenizer.from_pretrained(str(hf))
    names = ["business", "entertainment", "politics", "sports", "tech"]
    assert model.config.id2label == dict(enumerate(names)) and model.config.label2id == {y: i for i, y in enumerate(names)}
    m = json.loads((hf / "classification_metrics.json").read_text())
    cfg = load_config(bbc_run / "config.yaml")
    texts, labels = prepare_data(cfg.finetune)["splits"]["test"]
    assert len(texts) == m["examples"] == 223 and m["max_length"] == 64
    direct, prob = [], []
    with torch.no_grad():
        for text in texts:
            logits = model(**tok(text, truncation=True, max_length=64, return_tensors="pt")).logits[0]
            direct.append(int(logits.argmax()))
            prob.append(float(logits.softmax(-1).max()))
    confusion = [[0] * len(names) for _ in names]
    for y, p in zip(labels, direct):
        confusion[y][p] += 1  # rows: true class, columns: predicted
    assert m["confusion_matrix"] == confusion, "the metrics file does not describe the exported model's predictions"
    assert m["accuracy"] == pytest.approx(sum(p == y for p, y in zip(direct, labels)) / len(labels), abs=1e-12)
    assert len(set(direct)) >= 3, "a trained classifier predicts more than one or two classes"
    clf = pipeline("text-classification", model=str(hf))
    out = clf(texts, truncation=True, max_length=64)
    mismatches = [i for i, (o, p) in enumerate(zip(out, direct)) if o["label"] != names[p]]
    assert not mismatches, f"pipeline and forward pass disagree on {len(mismatches)} of {len(texts)} items: {mismatches[:10]}"
    assert [o["score"] for o in out] == pytest.approx(prob, abs=1e-5)


def test_two_process_zero3_torchrun(tiny_bert, tmp_path):
    run_dir = tmp_path / "run2"
    finetune(["--model", str(tiny_bert), "--data", "bbc_news", "--run-dir", str(run_dir),
              "finetune.max_examples=300", "finetune.max_length=32", "finetune.class_weights=true",
              "data.micro_batch_size=8", "train.max_steps=6", "train.zero_stage=3", "train.eval_every=3",
              "tracking.wandb_mode=disabled"], nproc=2)
    result = json.loads((run_dir / "result.json").read_text())
    assert result["step"] == 6 and result["status"] == "completed"
    assert result["test"]["examples"] == 30
    assert (run_dir / "hf" / "model.safetensors").is_file()
    assert json.loads((run_dir / "hf" / "classification_metrics.json").read_text())["weights_from"] == "zero_to_fp32"


def test_splits_are_deterministic_stratified_and_disjoint():
    labels = load_labelled("bbc_news").labels
    a = fdata.stratified_split(labels, 0.1, 0.1, seed=7)
    b = fdata.stratified_split(labels, 0.1, 0.1, seed=7)
    c = fdata.stratified_split(labels, 0.1, 0.1, seed=8)
    assert a == b and a != c
    sets = [set(a[s]) for s in ("train", "validation", "test")]
    assert sum(map(len, sets)) == len(labels) == 2225 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    total = Counter(labels)
    for split, frac in (("test", 0.1), ("validation", 0.1)):
        got = Counter(labels[i] for i in a[split])
        assert all(abs(got[y] - frac * n) <= 1 for y, n in total.items()), (split, got)
    sub = fdata.stratified_split(labels, 0.1, 0.1, seed=7, max_examples=500)
    assert abs(sum(len(v) for v in sub.values()) - 500) <= 5


def test_builtin_datasets_sizes():
    rt = load_labelled("rotten_tomatoes")
    assert len(rt.texts) == 12808 and Counter(rt.labels) == {"fresh": 7403, "rotten": 5405}
    tw = load_labelled("tweets")
    assert Counter(tw.labels) == {"negative": 16186, "neutral": 15018, "positive": 6954}
    pol = load_labelled("polarity")  # RT (fresh/rotten renamed) then tweets without neutral, in source order
    assert Counter(pol.labels) == {"positive": 7403 + 6954, "negative": 5405 + 16186}
    assert pol.texts[:len(rt.texts)] == rt.texts and pol.texts[len(rt.texts):] == [
        t for t, y in zip(tw.texts, tw.labels) if y != "neutral"]
    three = load_labelled("polarity3")  # the same plus the tweets' neutral rows, still in source order
    assert Counter(three.labels) == {**Counter(pol.labels), "neutral": 15018}
    assert list(zip(three.texts, three.labels))[len(rt.texts):] == list(zip(tw.texts, tw.labels))


def test_loader_shards_by_rank_and_resumes_exactly():
    ex = [([i + 10, i + 11][: 1 + i % 2], i % 3) for i in range(50)]
    r0 = fdata.ClassificationLoader(ex, 4, 0, rank=0, world_size=2, seed=3)
    r1 = fdata.ClassificationLoader(ex, 4, 0, rank=1, world_size=2, seed=3)
    first = lambda it, n: [next(it) for _ in range(n)]  # noqa: E731
    b0, b1 = first(iter(r0), 6), first(iter(r1), 6)  # 25 per rank: 6 batches = one epoch each
    seen0 = {int(x) for b in b0 for x in b["input_ids"][:, 0]}
    seen1 = {int(x) for b in b1 for x in b["input_ids"][:, 0]}
    assert not seen0 & seen1 and len(seen0) == len(seen1) == 24
    assert b0[0]["attention_mask"].shape == b0[0]["input_ids"].shape and set(b0[0]) == {"input_ids", "attention_mask", "labels"}
    fresh = fdata.ClassificationLoader(ex, 4, 0, rank=0, world_size=2, seed=3)
    it = iter(fresh)
    first(it, 9)  # into the second epoch
    state = fresh.state_dict()
    assert state == {"epoch": 1, "position": 12}
    want = first(it, 5)
    again = fdata.ClassificationLoader(ex, 4, 0, rank=0, world_size=2, seed=3)
    again.load_state_dict(state)
    got = first(iter(again), 5)
    assert all(torch.equal(w["input_ids"], g["input_ids"]) and torch.equal(w["labels"], g["labels"]) for w, g in zip(want, got))
    ev = list(fdata.ClassificationLoader(ex, 4, 0, rank=1, world_size=2, infinite=False))
    assert sum(len(b["labels"]) for b in ev) == 25


def test_metrics_and_objective_sums():
    cm = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(8 / 11)
    pa, ra = 5 / 7, 5 / 6
    pb, rb = 3 / 4, 3 / 5
    f1 = lambda p, r: 2 * p * r / (p + r)  # noqa: E731
    assert m["per_class"]["a"]["precision"] == pytest.approx(pa) and m["per_class"]["b"]["recall"] == pytest.approx(rb)
    assert m["macro_f1"] == pytest.approx((f1(pa, ra) + f1(pb, rb)) / 2)  # class c has no support
    obj = ClassificationObjective(3)
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 0, 2.0], [2.0, 0, 0]])
    labels = torch.tensor([0, 1, 1, 2])
    s = obj.eval_sums(logits, labels, torch.tensor(0.0))
    assert s["confusion"].tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    out = obj.summarize({k: v.double() for k, v in s.items()})
    assert out["eval/accuracy"] == 0.5 and set(out) >= {"eval/loss", "eval/accuracy", "eval/macro_f1"}
    w = fdata.class_weights([0, 0, 0, 1], 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])


def test_bad_input(tmp_path):
    import pandas as pd

    f = tmp_path / "d.csv"
    pd.DataFrame({"sentence": ["good film", "", "bad film", "  ", "fine", "awful"], "y": ["p", "p", "n", "n", "p", "n"]}).to_csv(f, index=False)
    with pytest.raises(DataError, match="no label column 'label'.*sentence, y"):
        load_labelled(str(f), "sentence", "label")
    with pytest.raises(DataError, match="no text column 'text'"):
        load_labelled(str(f), "text", "y")
    d = load_labelled(str(f), "sentence", "y")
    assert d.skipped == {"empty_text": 2} and len(d.texts) == 4
    with pytest.raises(DataError, match="neither a built-in"):
        load_labelled(str(tmp_path / "missing.jsonl"))
    # a label seen only in the test file
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    pd.DataFrame({"text": [f"text {i}" for i in range(20)], "label": ["a", "b"] * 10}).to_json(train, orient="records", lines=True)
    pd.DataFrame({"text": ["x", "y"], "label": ["a", "zebra"]}).to_json(test, orient="records", lines=True)
    with pytest.raises(DataError, match=r"\['zebra'\] appear only in the test split"):
        prepare_data(FinetuneConfig(data=str(train), test_data=str(test)))
    ok = prepare_data(FinetuneConfig(data=str(train), test_data=str(train)))
    assert ok["label_names"] == ["a", "b"] and ok["balance"]["train"]["imbalance_ratio"] == 1.0
    # the CLI turns it into one clear message and exit status 2
    r = subprocess.run([sys.executable, "-m", "zerolm", "finetune", "classify", "--data", str(f), "--label-column", "stars",
                        "--text-column", "sentence", "--run-dir", str(tmp_path / "r"), "tracking.wandb_mode=disabled"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no label column 'stars'" in " ".join(r.stdout.split()), r.stdout + r.stderr[-2000:]
