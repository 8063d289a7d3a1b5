"""Before vs after: how far a steered policy moved toward the target sentiment, and at what cost.

:func:`sentiment_report` samples continuations of the same held-out prompts (``sentiment.report_prompts``,
256 by default, a mixture of kinds — review openings, tweets, BBC News and Wikipedia paragraphs cut
mid-sentence, hand-written story openings — from the test sources of
:func:`finetune.sentiment_prompts.prompt_pool`: never the reward model's training rows nor PPO's prompts) from the
reference policy ("before") and the steered one ("after"; for control codes also "before_with_code": the
reference prompted with the code, i.e. what prompting alone does) with the same seeds and lengths, and
measures, over all prompts and per prompt kind:

* ``reward_target_rate``: share classified as the target class by the reward model (argmax, on the
  text ``sentiment.reward_text`` names: prompt + continuation or the continuation alone);
* ``judge_target_rate``: share judged target by an independent judge that was never optimised, the
  VADER lexicon (Hutto & Gilbert 2014; ``vaderSentiment``): positive = compound ≥ 0.05, negative =
  compound ≤ −0.05 (the thresholds VADER's authors recommend), on ``prompt + continuation`` — the text
  the reward model scores by default — and ``judge_target_rate_continuation`` on the continuation alone;
* ``mean_reward`` (the training reward, ``sentiment.reward_type``, on the text ``sentiment.reward_text`` names);
* ``kl_to_reference``: nats/sample, ``mean_i Σ_t log π(y_t) − log π_ref(y_t)`` over the sampled
  response tokens (an unbiased estimate of KL(π‖π_ref) when sampling is pure: temperature 1, no
  top-k/top-p); for control codes π conditions on code + prompt, π_ref on the prompt;
* ``reference_perplexity``: exp of the reference model's mean NLL per continuation token;
* ``distinct_1``/``distinct_2`` (Li et al. 2016): unique word n-grams ÷ all word n-grams over all
  continuations (lower-cased, whitespace words);
* ten sample continuations side by side (round robin over the kinds, stories first).

Standard errors: ``<metric>_se`` beside each rate (``sqrt(p(1 − p)/n)``) and mean (sample std /
``sqrt(n)``); ``delta_se`` for after − before is the *paired* one (std of the per-prompt differences /
``sqrt(n)``, the variants share prompts), also given alone for the judge on the continuation
(``judge_delta_continuation``). ``by_kind`` repeats everything per prompt kind.

Writes ``sentiment_report.json``, ``sentiment_report.png`` and ``sentiment_report_items.jsonl`` (every
held-out prompt with its kind and each variant's continuation, full text, reward, reward-model hit,
VADER scores, KL and length, so each number can be recomputed) into the run directory and the export
folder, and adds a "Before vs after" table to the export's model card.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zerolm import card as modelcard
from zerolm.config import PROMPT_KINDS, ZeroLMConfig
from zerolm.errors import DataError
from zerolm.evals.judge import VADER_THRESHOLD, judge_hits, vader_compound  # the one judge, shared with the bias probe
from zerolm.finetune import sentiment as S
from zerolm.finetune.sentiment_prompts import prompt_pool
from zerolm.fsutil import save_figure, write_json, write_jsonl
from zerolm.pretrain.progress import progress_bar
from zerolm.pretrain import distributed

log = logging.getLogger(__name__)

REPORT_JSON, REPORT_PNG = "sentiment_report.json", "sentiment_report.png"
REPORT_ITEMS = "sentiment_report_items.jsonl"  # one line per held-out prompt: every variant's text, reward, VADER
METRICS = ("reward_target_rate", "judge_target_rate", "judge_target_rate_continuation", "mean_reward",
           "kl_to_reference", "reference_perplexity", "distinct_1", "distinct_2", "mean_response_tokens")


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams ÷ word n-grams, pooled over ``texts`` (0 when there are none)."""
    grams = [tuple(w[i : i + n]) for w in (t.lower().split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


_GEN_BATCH = 32  # prompts per sampling batch (sample_responses' batch size); the bar moves per batch


RATES = ("reward_target_rate", "judge_target_rate", "judge_target_rate_continuation")  # ± sqrt(p(1 − p)/n)
MEANS = ("mean_reward", "kl_to_reference", "mean_response_tokens")  # ± sample std / sqrt(n)
_PER_ITEM = {"reward_target_rate": "reward_hit", "judge_target_rate": "judge_hit",
             "judge_target_rate_continuation": "judge_hit_continuation", "mean_reward": "rewards",
             "kl_to_reference": "kl", "mean_response_tokens": "tokens"}


def rate_se(hits) -> float:
    """Standard error of a rate: ``sqrt(p (1 − p) / n)`` (binomial), 0 for no items."""
    n = len(hits)
    p = float(np.mean(hits)) if n else 0.0
    return math.sqrt(p * (1 - p) / n) if n else 0.0


def mean_se(values) -> float | None:
    """Standard error of a mean: sample standard deviation (``ddof=1``) / ``sqrt(n)``; None below 2 items."""
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None


def summarize(items: dict[str, list], idx: list[int], target: str) -> dict[str, float | None]:
    """The metrics of :data:`METRICS` on the items ``idx`` of one variant's per-prompt arrays, each
    rate/mean with its standard error (``<metric>_se``; :func:`rate_se`, :func:`mean_se`) and ``count``."""
    pick = lambda k: [items[k][i] for i in idx]  # noqa: E731
    n_tok = sum(pick("tokens"))
    out: dict[str, float | None] = {
        "reward_target_rate": float(np.mean(pick("reward_hit"))),
        "judge_target_rate": float(np.mean(judge_hits(pick("vader"), target))),
        "judge_target_rate_continuation": float(np.mean(judge_hits(pick("vader_continuation"), target))),
        "mean_reward": float(np.mean(pick("rewards"))),
        "kl_to_reference": float(np.mean(pick("kl"))),
        "reference_perplexity": math.exp(sum(pick("ref_nll")) / max(n_tok, 1)),
        "distinct_1": distinct_n(pick("continuations"), 1), "distinct_2": distinct_n(pick("continuations"), 2),
        "mean_response_tokens": n_tok / len(idx),
    }
    for k in RATES:
        out[f"{k}_se"] = rate_se([bool(x) for x in pick(_PER_ITEM[k])])
    for k in MEANS:
        out[f"{k}_se"] = mean_se(pick(_PER_ITEM[k]))
    out["count"] = len(idx)
    return out


def paired_delta(after: dict[str, list], before: dict[str, list], idx: list[int]) -> tuple[dict[str, float], dict[str, float | None]]:
    """``(delta, delta_se)`` of every rate/mean metric between two variants on the same prompts: the
    mean of the per-prompt differences ``d_i = after_i − before_i`` and its paired standard error
    ``std(d, ddof=1) / sqrt(n)`` (a hit counts 1, a miss 0)."""
    delta, se = {}, {}
    for k, item in _PER_ITEM.items():
        d = [float(after[item][i]) - float(before[item][i]) for i in idx]
        delta[k], se[k] = float(np.mean(d)), mean_se(d)
    return delta, se


def _variant(model, ref, tok, reward, sc, queries, prefix, lengths, stops, bar) -> dict[str, Any]:
    """Sample one variant's continuations of every query and score them: per-prompt arrays
    (``continuations``, ``texts``, ``rewards``, hits, VADER scores, KL, tokens, reference NLL)."""
    gen = torch.Generator().manual_seed(sc.seed)
    prompts = [prefix + q for q in queries]
    resp: list[list[int]] = []
    for s in range(0, len(prompts), _GEN_BATCH):  # one generator across batches: as one call would sample
        resp += S.sample_responses(model, prompts[s:s + _GEN_BATCH], lengths[s:s + _GEN_BATCH], pad_id=tok.pad_token_id,
                                   stops=stops, temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p,
                                   generator=gen, batch_size=_GEN_BATCH, min_tokens=sc.response_min_tokens)
        bar.update(len(prompts[s:s + _GEN_BATCH]))
    full = [tok.decode(q + r, skip_special_tokens=True) for q, r in zip(queries, resp)]
    cont = [tok.decode(r, skip_special_tokens=True) for r in resp]
    logits = reward.logits(cont if sc.reward_text == "continuation" else full)
    rewards = reward.rewards_from_logits(logits)
    lp_ref = S.sequence_logprobs(ref, queries, resp, tok.pad_token_id, sc.temperature)
    lp = lp_ref if model is ref and not prefix else S.sequence_logprobs(model, prompts, resp, tok.pad_token_id, sc.temperature)
    vf, vc = vader_compound(full), vader_compound(cont)
    return {"continuations": cont, "texts": full, "rewards": rewards.tolist(),
            "reward_hit": (logits.argmax(-1) == reward.index).tolist(), "vader": vf, "vader_continuation": vc,
            "judge_hit": [bool(h) for h in judge_hits(vf, sc.target)],
            "judge_hit_continuation": [bool(h) for h in judge_hits(vc, sc.target)],
            "kl": [float((a - b).sum()) for a, b in zip(lp, lp_ref)], "tokens": [len(r) for r in resp],
            "ref_nll": [-float(x.sum()) for x in lp_ref]}


def _delta_vs_code(runs: dict[str, Any], everything: list[int], by_kind_idx: dict[str, list[int]]) -> dict[str, Any]:
    """Control codes: the judge's continuation target rate, after (finetuned, with the code) − the
    untuned model prompted with the same code, paired over the same prompts, overall and per kind —
    the baseline a control-code model has to beat (prompting alone)."""
    key = "judge_target_rate_continuation"

    def one(idx: list[int]) -> dict[str, Any]:
        d, se = paired_delta(runs["after"], runs["before_with_code"], idx)
        return {"delta": d[key], "se": se[key], "count": len(idx)}

    return {**one(everything), "by_kind": {k: one(idx) for k, idx in by_kind_idx.items()}}


def _sample_indices(kinds: list[str], k: int) -> list[int]:
    """``k`` prompt indices for the side-by-side samples: round robin over the kinds, stories first
    (the case steering exists for), then in :data:`PROMPT_KINDS` order; each kind's first prompts."""
    order = sorted(set(kinds), key=lambda x: (x != "story", PROMPT_KINDS.index(x) if x in PROMPT_KINDS else 99))
    queues = {x: [i for i, y in enumerate(kinds) if y == x] for x in order}
    out: list[int] = []
    while len(out) < min(k, len(kinds)):
        for x in order:
            if queues[x] and len(out) < k:
                out.append(queues[x].pop(0))
    return sorted(out)


def sentiment_report(cfg: ZeroLMConfig, steered_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Compare the reference policy and the steered export on ``sentiment.report_prompts`` held-out
    prompts; write the JSON + PNG (run dir and export folder) and update the model card. ``progress``
    draws a bar of the prompts generated, over all variants (:func:`zerolm.pretrain.progress.progress_bar`).

    Returns:
        The report: ``before``/``after`` (and for control ``before_with_code``) metric dicts (see the
        module docstring), ``delta`` (after − before), ``samples``, settings, ``json``/``png`` paths.

    Raises:
        DataError: ``steered_dir`` is not an export of ``zerolm finetune sentiment``.
    """
    t0 = time.perf_counter()
    sc = cfg.sentiment
    steered_dir = Path(steered_dir)
    if not (steered_dir / S.MARKER).is_file():
        raise DataError(f"{steered_dir} holds no {S.MARKER}: not a `zerolm finetune sentiment` export (train first)")
    meta = json.loads((steered_dir / S.MARKER).read_text())
    dev = distributed.compute_device()  # this rank's GPU, or the CPU; the draws stay the CPU generator's
    ref, tok = S.load_policy(meta.get("policy") or sc.policy, dev)
    steered, _ = S.load_policy(str(steered_dir), dev)
    reward = S.RewardModel(sc.reward or meta["reward"], sc.target, sc.target_label, sc.reward_type, device=dev)
    stops = S.stop_ids(ref, tok)
    rng = np.random.default_rng(sc.seed + 7)
    prompts = prompt_pool(sc, tok, "test", sc.report_prompts, rng)
    queries, kinds = [p.ids for p in prompts], [p.kind for p in prompts]
    lengths = rng.integers(sc.response_min_tokens, sc.response_max_tokens + 1, size=len(queries)).tolist()
    coded = meta["method"] == "control" or bool(meta.get("rl_codes"))  # the export expects a control code
    code = S.code_ids(tok, meta.get("control_codes", sc.control_codes)[sc.target]) if coded else []
    with progress_bar(len(queries) * (3 if code else 2), "sentiment report", "prompts", progress) as bar:
        runs = {"before": _variant(ref, ref, tok, reward, sc, queries, [], lengths, stops, bar),
                "after": _variant(steered, ref, tok, reward, sc, queries, code, lengths, stops, bar)}
        if code:
            runs["before_with_code"] = _variant(ref, ref, tok, reward, sc, queries, code, lengths, stops, bar)
    everything = list(range(len(queries)))
    by_kind_idx = {k: [i for i, x in enumerate(kinds) if x == k] for k in PROMPT_KINDS if k in kinds}
    delta_all, delta_se_all = paired_delta(runs["after"], runs["before"], everything)
    by_kind: dict[str, Any] = {}
    for k, idx in by_kind_idx.items():
        d, dse = paired_delta(runs["after"], runs["before"], idx)
        by_kind[k] = {"count": len(idx), **{name: summarize(r, idx, sc.target) for name, r in runs.items()},
                      "delta": d, "delta_se": dse}
    overall = {name: summarize(r, everything, sc.target) for name, r in runs.items()}
    for m in overall.values():
        m.pop("count")
    samples = _sample_indices(kinds, sc.report_samples)
    rep: dict[str, Any] = {
        "method": meta["method"], "policy": meta.get("policy"), "steered": str(steered_dir.resolve()),
        "reward": str(sc.reward or meta.get("reward")), "reward_type": sc.reward_type, "target": sc.target, "target_label": reward.label,
        "judge": f"VADER compound {'>=' if sc.target == 'positive' else '<='} "
                 f"{VADER_THRESHOLD if sc.target == 'positive' else -VADER_THRESHOLD}",
        "prompts": {"data": sc.data, "split": "test", "count": len(queries), "tokens": [sc.prompt_min_tokens, sc.prompt_max_tokens],
                    "tweet_tokens": [sc.tweet_min_tokens, sc.tweet_max_tokens],
                    "context_tokens": [sc.context_min_tokens, sc.context_max_tokens],
                    "weights": dict(sc.prompt_kinds), "kinds": {k: len(v) for k, v in by_kind_idx.items()},
                    "split_seed": sc.split_seed},
        "response_tokens": [sc.response_min_tokens, sc.response_max_tokens],
        "generation": {"temperature": sc.temperature, "top_k": sc.top_k, "top_p": sc.top_p, "seed": sc.seed},
        **overall,
        "delta": {k: overall["after"][k] - overall["before"][k] for k in METRICS},
        "delta_se": delta_se_all,
        "judge_delta_continuation": {"delta": delta_all["judge_target_rate_continuation"],
                                     "se": delta_se_all["judge_target_rate_continuation"], "count": len(queries),
                                     "by_kind": {k: {"delta": v["delta"]["judge_target_rate_continuation"],
                                                     "se": v["delta_se"]["judge_target_rate_continuation"],
                                                     "count": v["count"]} for k, v in by_kind.items()}},
        "by_kind": by_kind,
        **({"judge_delta_vs_code": _delta_vs_code(runs, everything, by_kind_idx)} if code else {}),
        "training": {k: meta.get(k) for k in ("steps", "seconds", "status", "final_metrics", "control_codes", "judge") if k in meta},
        "samples": [{"kind": kinds[i], "prompt": tok.decode(queries[i], skip_special_tokens=True),
                     **{name: r["continuations"][i] for name, r in runs.items()},
                     **{f"reward_{name}": round(r["rewards"][i], 3) for name, r in runs.items()},
                     **{f"vader_{name}": r["vader"][i] for name, r in runs.items()}}
                    for i in samples],
    }
    rep["seconds"] = round(time.perf_counter() - t0, 1)
    run_dir = Path(cfg.train.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rewards = {name: r["rewards"] for name, r in runs.items()}
    items = [{"kind": kinds[i], "source": prompts[i].source, "prompt": tok.decode(queries[i], skip_special_tokens=True),
              **{name: {"continuation": r["continuations"][i], "text": r["texts"][i], "reward": r["rewards"][i],
                        "reward_hit": r["reward_hit"][i], "vader": r["vader"][i],
                        "vader_continuation": r["vader_continuation"][i], "kl": r["kl"][i], "tokens": r["tokens"][i]}
                 for name, r in runs.items()}}
             for i in range(len(queries))]
    for folder in (run_dir, steered_dir):
        write_json(folder / REPORT_JSON, rep)
        write_jsonl(folder / REPORT_ITEMS, items, ensure_ascii=False)
        plot_report(rep, rewards, folder / REPORT_PNG, run_dir / "metrics.jsonl")
    if (steered_dir / modelcard.CARD_FILE).is_file():
        modelcard.write_card(steered_dir, modelcard.set_section(modelcard.read_card(steered_dir), report_markdown(rep)))
    rep["json"], rep["png"] = str(run_dir / REPORT_JSON), str(run_dir / REPORT_PNG)
    log.info("report: %s rate %.3f → %.3f (VADER), %.3f → %.3f (reward model) | mean reward %.3f → %.3f | KL %.2f nats | %.1f s",
             sc.target, rep["before"]["judge_target_rate"], rep["after"]["judge_target_rate"],
             rep["before"]["reward_target_rate"], rep["after"]["reward_target_rate"], rep["before"]["mean_reward"],
             rep["after"]["mean_reward"], rep["after"]["kl_to_reference"], rep["seconds"])
    return rep


def plot_report(rep: dict[str, Any], rewards: dict[str, list[float]], path: Path, metrics_jsonl: Path | None = None) -> None:
    """Target-sentiment rates (reward model, VADER) before/after, reward histograms and, when the run
    logged PPO metrics, mean reward and KL per step; with a per-kind breakdown, the VADER rate per
    prompt kind (± standard error). Written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    if metrics_jsonl is not None and metrics_jsonl.is_file():
        rows = [r for r in (json.loads(l) for l in metrics_jsonl.read_text().splitlines() if l) if "ppo/mean_reward" in r]
    names = [n for n in ("before", "before_with_code", "after") if n in rep]
    kinds = list(rep.get("by_kind", {}))
    n_ax = 2 + bool(kinds) + bool(rows)
    fig, axes = plt.subplots(1, n_ax, figsize=(5 * n_ax, 4))
    keys = ("reward_target_rate", "judge_target_rate", "judge_target_rate_continuation")
    w = 0.8 / len(names)
    for j, n in enumerate(names):
        axes[0].bar(np.arange(len(keys)) + j * w, [rep[n][k] for k in keys], w, label=n)
    axes[0].set_xticks(np.arange(len(keys)) + w * (len(names) - 1) / 2, ["reward model", "VADER", "VADER (cont.)"])
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel(f"{rep['target']} rate")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"{rep['method']}: KL {rep['after']['kl_to_reference']:.2f} nats/sample", fontsize=10)
    for n in names:
        axes[1].hist(rewards[n], bins=20, alpha=0.5, label=f"{n} (mean {rep[n]['mean_reward']:.2f})")
    axes[1].set_xlabel(f"reward ({rep['reward_type']} of {rep['target_label']})")
    axes[1].legend(fontsize=8)
    if kinds:
        ax = axes[2]
        for j, n in enumerate(names):
            m = [rep["by_kind"][k][n] for k in kinds]
            ax.bar(np.arange(len(kinds)) + j * w, [x["judge_target_rate"] for x in m], w, label=n,
                   yerr=[x["judge_target_rate_se"] for x in m], capsize=2)
        ax.set_xticks(np.arange(len(kinds)) + w * (len(names) - 1) / 2,
                      [f"{k}\n(n={rep['by_kind'][k]['count']})" for k in kinds], fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{rep['target']} rate, VADER (± se)")
        ax.set_title("by prompt kind", fontsize=10)
    if rows:
        ax = axes[-1]
        ax.plot([r["step"] for r in rows], [r["ppo/mean_reward"] for r in rows], label="mean reward")
        ax.set_xlabel("PPO step")
        ax.set_ylabel("mean reward")
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in rows], [r["ppo/kl"] for r in rows], color="tab:red", label="KL (nats/sample)")
        ax2.set_ylabel("KL (nats/sample)", color="tab:red")
        ax.set_title("training", fontsize=10)
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def _pm(m: dict[str, Any], k: str) -> str:
    """``value ± se`` (3 decimals) of metric ``k`` in a metrics dict; the value alone without an se."""
    se = m.get(f"{k}_se")
    return f"{m[k]:.3f} ± {se:.3f}" if se is not None else f"{m[k]:.3f}"


def report_markdown(rep: dict[str, Any]) -> str:
    """The "Before vs after" section of the model card (put in place by :func:`zerolm.card.set_section`):
    every metric with its standard error, then the main ones per prompt kind."""
    names = [n for n in ("before", "before_with_code", "after") if n in rep]
    pr = rep["prompts"]
    kinds = ", ".join(f"{k} {n}" for k, n in pr.get("kinds", {}).items())
    jd = rep.get("judge_delta_continuation")
    lines = ["", "## Before vs after", "",
             f"{pr['count']} held-out prompts ({kinds or pr['data']}; {pr['split']} split: never training prompts), "
             f"continuations of {rep['response_tokens'][0]}–{rep['response_tokens'][1]} tokens; judge: {rep['judge']}. "
             "± = standard error (rates: sqrt(p(1 − p)/n); means: s/sqrt(n); after − before: paired).", "",
             "| metric | " + " | ".join(names) + " | after − before |", "|---|" + "---|" * (len(names) + 1)]
    for k in METRICS:
        se = rep.get("delta_se", {}).get(k)
        d = f"{rep['delta'][k]:+.3f}" + (f" ± {se:.3f}" if se is not None else "")
        lines.append(f"| {k} | " + " | ".join(_pm(rep[n], k) for n in names) + f" | {d} |")
    if jd:
        lines += ["", f"VADER on the continuation alone, after − before: {jd['delta']:+.3f} ± {jd['se'] or 0:.3f} (paired)."]
    sel = rep.get("training", {}).get("judge")
    if sel:  # sentiment.judge_every: the export is the best policy on the held-out judge, not the last one
        lines += ["", f"The policy after is step {sel['best_step']}'s of {rep['training'].get('steps')}: the best of "
                  f"{len(sel['history'])} evaluations on {sel['prompts']} prompts held out of training (VADER target rate "
                  f"{sel['best_rate']:.3f}; " + ", ".join(f"step {h['step']} {h['rate']:.3f}" for h in sel["history"]) + ")."]
    vc = rep.get("judge_delta_vs_code")
    if vc:
        lines += ["", f"VADER on the continuation alone, after − before_with_code (what finetuning adds to prompting "
                  f"with the code): {vc['delta']:+.3f} ± {vc['se'] or 0:.3f} (paired); by kind: "
                  + ", ".join(f"{k} {v['delta']:+.3f}" for k, v in vc["by_kind"].items()) + "."]
    if rep.get("by_kind"):
        lines += ["", "| prompt kind | n | VADER rate before → after | VADER (continuation) after − before | "
                  "reward-model rate before → after | mean reward before → after | KL (nats) |", "|---|---|---|---|---|---|---|"]
        for k, v in rep["by_kind"].items():
            b, a = v["before"], v["after"]
            se = v["delta_se"]["judge_target_rate_continuation"]
            lines.append(f"| {k} | {v['count']} | {_pm(b, 'judge_target_rate')} → {_pm(a, 'judge_target_rate')} | "
                         f"{v['delta']['judge_target_rate_continuation']:+.3f}" + (f" ± {se:.3f}" if se is not None else "") +
                         f" | {_pm(b, 'reward_target_rate')} → {_pm(a, 'reward_target_rate')} | "
                         f"{_pm(b, 'mean_reward')} → {_pm(a, 'mean_reward')} | {_pm(a, 'kl_to_reference')} |")
    return "\n".join(lines) + "\n"


def model_card(name: str, meta: dict[str, Any]) -> str:
    """A Hugging Face model card for a steered policy (composed by :func:`zerolm.card.compose`): method,
    target, reward model, final metrics, usage."""
    codes = ", ".join(f"`{c}` ({p})" for p, c in meta.get("control_codes", {}).items())
    if meta["method"] == "control":
        how = f"control codes (Keskar et al. 2019): prefix a prompt with the code {codes} and a newline"
    elif meta.get("rl_codes"):
        how = (f"control codes learnt by {meta['method'].upper()} (each code rewarded for its own sentiment, a KL "
               f"penalty against the initial policy): prefix a prompt with the code {codes} and a newline")
    else:
        how = f"{meta['method'].upper()} with a KL penalty against the initial policy (Ziegler et al. 2019): prompt as is"
    final = "\n".join(f"| {k} | {v:.4g} |" for k, v in (meta.get("final_metrics") or {}).items()
                      if isinstance(v, (int, float)))
    toward = "positive or negative (the code chooses)" if meta.get("rl_codes") else meta["target"]
    prefix = meta.get("control_codes", {}).get(meta["target"], "")
    prompt = (prefix + "\\n" if prefix else "") + "The film"
    metadata = {"library_name": "transformers", "pipeline_tag": "text-generation",
                "tags": ["zerolm", "sentiment", *(["control-codes"] if meta.get("control_codes") else []),
                         *([] if meta["method"] == "control" else [meta["method"]])]}
    return modelcard.compose(metadata, name, [
        f"`{Path(str(meta['policy'])).name}` steered toward **{toward}** continuations with {how}. Reward\n"
        f"model: `{meta['reward']}` (class `{meta['target_label']}`, reward = {meta['reward_type']}); text: `{meta['data']}`.\n"
        f"{meta.get('steps')} steps in {meta.get('seconds')} s. Settings and numbers: `zerolm_sentiment.json`.",
        "| final training metric | value |\n|---|---|\n" + final,
        "```python\nfrom transformers import pipeline\n"
        f'gen = pipeline("text-generation", model="{name}")\n'
        f'print(gen("{prompt}", max_new_tokens=16, do_sample=True)[0]["generated_text"])\n```',
    ])

