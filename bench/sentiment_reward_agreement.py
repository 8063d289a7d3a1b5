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
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from zerolm.config import SentimentConfig
from zerolm.evals.judge import VADER_THRESHOLD, vader_compound
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
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "sentiment_reward_agreement.json"))
    args = ap.parse_args()

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


if __name__ == "__main__":
    main()
