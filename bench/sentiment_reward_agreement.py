"""Does a reward model measure sentiment, or the register of its training data? Checked before any RL.

    .venv/bin/python bench/sentiment_reward_agreement.py \\
        --reward runs/finetune/classify/hf runs/finetune/classify_polarity/hf --prompts 256 --seed 1234

A policy optimised against a reward model finds what the model rewards. A Rotten Tomatoes classifier
rewards critics' register ("an immersive and nuanced exploration" reads fresh) as much as sentiment, so
PPO against it moved the independent judge (VADER) far less than the reward (issue 17). This bench
samples continuations from the *untuned* policy (SmolLM2 by default) of held-out prompts — the openings
of test-split reviews and tweets, cut to ``--prompt-tokens`` — and asks each reward model and VADER
about the continuation alone. Per reward model it prints:

* ``agree``: share of continuations VADER calls positive or negative (|compound| ≥ 0.05) on which the
  reward model's argmax says the same (chance: 0.5);
* ``spearman``: rank correlation of the reward margin (target logit − other) with VADER's compound over
  all continuations;
* ``pos_rate``: share the reward model calls positive, beside VADER's.

A reward model with higher agreement and correlation on the policy's own samples is the harder one to
satisfy without positive sentiment. Writes ``bench/results/sentiment_reward_agreement.json``.

``--kinds all`` samples the RL loop's own prompt mixture instead (``sentiment.prompt_kinds`` of
``configs/finetune/sentiment_rloo.yaml``: reviews, tweets, BBC News and Wikipedia paragraphs, stories;
the report's test split) and prints, per reward model and target (positive, negative), what an RL run
toward that target is paid for on the untuned policy's text:

* ``rate``: share of continuations whose argmax is the target class, beside VADER's target rate;
* ``precision``: of those, the share VADER also calls the target;
* ``neutral_paid``: of the continuations VADER calls neutral (|compound| < 0.05), the share the reward
  model puts in the target class — what a policy can earn without any sentiment. A two-class model
  must call every neutral text positive or negative; a model with a neutral class need not
  (``zerolm finetune classify --data polarity3``).

    .venv/bin/python bench/sentiment_reward_agreement.py --kinds all --prompts 512 \\
        --reward runs/finetune/classify_polarity/hf runs/finetune/classify_polarity3/hf
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from zerolm.config import SentimentConfig
from zerolm.evals.judge import VADER_THRESHOLD, judge_hits, vader_compound
from zerolm.finetune import sentiment as S
from zerolm.finetune import sentiment_prompts as P

REPO = Path(__file__).resolve().parents[1]


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties) of two equal-length lists."""
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reward", nargs="+", required=True, help="reward model folders (zerolm finetune classify exports)")
    ap.add_argument("--policy", default="smollm2")
    ap.add_argument("--prompts", type=int, default=256, help="prompts per source (reviews, tweets)")
    ap.add_argument("--prompt-tokens", type=int, nargs=2, default=[4, 12])
    ap.add_argument("--response-tokens", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--kinds", choices=["review-tweet", "all"], default="review-tweet",
                    help="all: the RL loop's five prompt kinds and both targets (see the module docstring)")
    ap.add_argument("--out", default=None, help="default bench/results/sentiment_reward_agreement[-all].json")
    args = ap.parse_args()
    args.out = args.out or str(REPO / "bench" / "results" / (
        "sentiment_reward_agreement" + ("-all" if args.kinds == "all" else "") + ".json"))
    if args.kinds == "all":
        return both_targets(args)

    torch.manual_seed(args.seed)
    lm, tok = S.load_policy(args.policy)
    rng = np.random.default_rng(args.seed)
    queries, kinds = [], []
    for kind, data in (("review", "rotten_tomatoes"), ("tweet", "tweets")):
        texts = P.split_texts(SentimentConfig(data=data))["test"][0]
        order = rng.permutation(len(texts))[: 4 * args.prompts]
        qs = P.make_queries(tok, [texts[i] for i in order], *args.prompt_tokens, rng)[: args.prompts]
        queries += qs
        kinds += [kind] * len(qs)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    resp = S.sample_responses(lm, queries, [args.response_tokens] * len(queries), pad_id=tok.pad_token_id,
                              stops=S.stop_ids(lm, tok), generator=gen)
    cont = [tok.decode(r, skip_special_tokens=True) for r in resp]
    vader = np.array(vader_compound(cont))
    print(f"{len(cont)} continuations sampled in {time.perf_counter() - t0:.0f} s; VADER positive {np.mean(vader >= VADER_THRESHOLD):.3f}, "
          f"negative {np.mean(vader <= -VADER_THRESHOLD):.3f}")
    rows = []
    for path in args.reward:
        rm = S.RewardModel(path, "positive", reward_type="logit_margin")
        margin = rm.score(cont).numpy()
        row = {"reward": path}
        for kind in ("all", "review", "tweet"):
            sel = np.array([kind in ("all", k) for k in kinds])
            polar = sel & (np.abs(vader) >= VADER_THRESHOLD)
            row[kind] = {"n": int(sel.sum()), "n_polar": int(polar.sum()),
                         "agree": float(np.mean((margin[polar] > 0) == (vader[polar] > 0))),
                         "spearman": spearman(margin[sel].tolist(), vader[sel].tolist()),
                         "pos_rate": float(np.mean(margin[sel] > 0)),
                         "vader_pos_rate": float(np.mean(vader[sel] >= VADER_THRESHOLD))}
        rows.append(row)
        print(f"{path}: " + " | ".join(f"{k}: agree {row[k]['agree']:.3f} (n={row[k]['n_polar']}), spearman "
                                        f"{row[k]['spearman']:.3f}, pos {row[k]['pos_rate']:.3f}" for k in ("all", "review", "tweet")))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


def both_targets(args) -> None:
    """``--kinds all``: the RL prompt mixture (test split), both targets, argmax rates against VADER."""
    from zerolm.config import load_config

    sc = load_config(str(REPO / "configs" / "finetune" / "sentiment_rloo.yaml")).sentiment
    sc.seed = args.seed
    torch.manual_seed(args.seed)
    lm, tok = S.load_policy(args.policy)
    pool = P.prompt_pool(sc, tok, "test", n=args.prompts)
    kinds = [p.kind for p in pool]
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    resp = S.sample_responses(lm, [p.ids for p in pool], [args.response_tokens] * len(pool), pad_id=tok.pad_token_id,
                              stops=S.stop_ids(lm, tok), generator=gen, min_tokens=sc.response_min_tokens)
    cont = [tok.decode(r, skip_special_tokens=True) for r in resp]
    vader = np.array(vader_compound(cont))
    vpol = {t: np.array(judge_hits(vader, t)) for t in ("positive", "negative")}  # the report's own verdicts
    neutral = ~(vpol["positive"] | vpol["negative"])
    print(f"{len(cont)} continuations ({', '.join(f'{k} {kinds.count(k)}' for k in dict.fromkeys(kinds))}) sampled in "
          f"{time.perf_counter() - t0:.0f} s; VADER positive {vpol['positive'].mean():.3f}, negative "
          f"{vpol['negative'].mean():.3f}, neutral {neutral.mean():.3f}")
    rows, samples = [], [{"kind": k, "continuation": c, "vader": float(v)} for k, c, v in zip(kinds, cont, vader)]
    for path in args.reward:
        rm = S.RewardModel(path, "positive")
        pred = rm.logits(cont).argmax(-1).numpy()
        for smp, y in zip(samples, pred):
            smp[path] = rm.labels[int(y)]
        row = {"reward": path, "labels": rm.labels}
        for target in ("positive", "negative"):
            hit = pred == rm.polarity_index(target)
            row[target] = {"rate": float(hit.mean()), "vader_rate": float(vpol[target].mean()),
                           "precision": float(vpol[target][hit].mean()) if hit.any() else float("nan"),
                           "neutral_paid": float(hit[neutral].mean()), "n_neutral": int(neutral.sum()),
                           "by_kind": {k: {"rate": float(hit[sel].mean()), "vader_rate": float(vpol[target][sel].mean())}
                                       for k in dict.fromkeys(kinds) for sel in [np.array(kinds) == k]}}
        rows.append(row)
        print(f"{path} ({len(rm.labels)} classes): " + " | ".join(
            f"{t}: rate {row[t]['rate']:.3f} (VADER {row[t]['vader_rate']:.3f}), precision {row[t]['precision']:.3f}, "
            f"neutral paid {row[t]['neutral_paid']:.3f}" for t in ("positive", "negative")))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
