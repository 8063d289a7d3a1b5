"""Tables of the command line: how ``zerolm`` shows a corpus manifest, a pipeline inspection, a
few-shot result and a sentiment report. Only the CLI layer (:mod:`zerolm.cli`) imports this; the
library functions behind the commands return plain dicts.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.panel import Panel
from rich.table import Table


def manifest_table(manifest: dict[str, Any]) -> Table:
    """A rich table of a corpus manifest: one row per source and a total row.

    Args:
        manifest: as returned by :func:`prepare_corpus` or :func:`load_manifest`.

    Returns:
        A :class:`rich.table.Table` with documents (train/validation), MB, duplicates removed,
        documents held out because they overlap an evaluation set, and license per source.
    """
    table = Table(title="zerolm bundled corpus")
    table.add_column("source", no_wrap=True)
    table.add_column("train docs", justify="right")
    table.add_column("val docs", justify="right")
    table.add_column("MB", justify="right")
    table.add_column("dups removed", justify="right")
    table.add_column("eval held out", justify="right")
    table.add_column("license")
    dup = excl = 0
    for s in manifest["sources"]:
        dup += s.get("duplicates_removed", 0)
        excl += s.get("excluded_eval_overlap", 0)
        table.add_row(
            s["name"],
            f"{s['documents']['train']:,}",
            f"{s['documents']['validation']:,}",
            f"{(s['bytes']['train'] + s['bytes']['validation']) / 1e6:.2f}",
            f"{s.get('duplicates_removed', 0):,}",
            f"{s.get('excluded_eval_overlap', 0):,}",
            s.get("license", ""),
        )
    t = manifest["totals"]
    table.add_section()
    table.add_row(
        "total",
        f"{t['documents']['train']:,}",
        f"{t['documents']['validation']:,}",
        f"{(t['bytes']['train'] + t['bytes']['validation']) / 1e6:.2f}",
        f"{dup:,}",
        f"{excl:,}",
        "",
        style="bold",
    )
    return table


def inspection_renderables(report: dict[str, Any]) -> list[Any]:
    """An :func:`zerolm.data_pipeline.inspect.inspect_pipeline` report as ``rich`` renderables: each
    decoded sample as a panel, then the statistics as a table."""
    c = report["config"]
    out: list[Any] = [Panel(s, title=f"packed sample {i} ({c['objective']}, seq_len {c['seq_len']})", expand=False)
                      for i, s in enumerate(report["samples"])]
    t = Table(title="streaming pipeline", show_header=False)
    srcs = ", ".join(f"{s['name']} ({s['files']} files, weight {s['weight']:g})" for s in c["sources"])
    rows = [
        ("sources", srcs),
        ("objective / seq_len / micro-batch", f"{c['objective']} / {c['seq_len']} / {c['micro_batch_size']}"),
        ("loader workers", str(c["num_workers"])),
        ("vocab size", str(c["vocab_size"])),
        ("batches / tokens", f"{report['batches']} / {report['tokens']:,}"),
        ("documents read", f"{report['documents']:,}"),
        ("tokens/s (incl. loader start)", f"{report['tokens_per_second']:,.0f}"),
        ("padding fraction", f"{report['padding_fraction']:.2%}"),
    ]
    if report["masked_fraction"] is not None:
        rows.append(("masked fraction (labels ≠ -100)", f"{report['masked_fraction']:.2%}"))
    skipped = report["skipped_documents"]
    rows.append(("skipped documents", ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none"))
    files = report.get("skipped_files") or {}
    rows.append(("skipped files", ", ".join(f"{k}: {v}" for k, v in sorted(files.items())) or "none"))
    for k, v in rows:
        t.add_row(k, v)
    return [*out, t]


def fewshot_table(result: dict[str, Any]) -> str:
    """A plain-text table of a :func:`zerolm.evals.fewshot.run_fewshot` result (task, k, n, metric ±
    standard error, items/s)."""
    lines = [f"{'task':<20} {'k':>2} {'n':>5}  {'metric':<12} {'value':>7} {'± se':>7} {'items/s':>8}"]
    for name, by_k in result["results"].items():
        for k in sorted(by_k, key=int):
            e = by_k[k]
            for metric, v in e["metrics"].items():
                se = e["stderr"][metric]
                lines.append(f"{name:<20} {k:>2} {e['n']:>5}  {metric:<12} {v:>7.4f} "
                             f"{(se if se is not None else float('nan')):>7.4f} {e['items_per_second']:>8.2f}")
    return "\n".join(lines)


def sentiment_report_tables(rep: dict[str, Any]) -> list[Any]:
    """``rich`` tables of a sentiment report: metrics before/after (± standard error; after − before
    with its paired standard error), the main metrics per prompt kind, sample continuations."""
    from zerolm.finetune.sentiment_report import METRICS

    def pm(value: float, se: float | None, sign: str = "") -> str:
        return f"{value:{sign}.3f}" + (f" ± {se:.3f}" if se is not None else "")

    names = [n for n in ("before", "before_with_code", "after") if n in rep]
    t = Table(title=f"{rep['method']} → {rep['target']} ({rep['prompts']['count']} held-out prompts; judge {rep['judge']}; ± se)")
    t.add_column("metric")
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("after − before", justify="right")
    for k in METRICS:
        t.add_row(k, *(pm(rep[n][k], rep[n].get(f"{k}_se")) for n in names),
                  pm(rep["delta"][k], rep.get("delta_se", {}).get(k), "+"))
    out: list[Any] = [t]
    if rep.get("by_kind"):
        vc = rep.get("judge_delta_vs_code")  # control codes: what finetuning adds to prompting with the code
        b = Table(title="by prompt kind (VADER = judge; Δ = after − before, paired se)")
        cols = ["kind", "n", "VADER before", "VADER after", "Δ VADER (cont.)"] + (["Δ vs code (cont.)"] if vc else [])
        for col in cols + ["reward-model after", "Δ mean reward", "KL"]:
            b.add_column(col, justify="left" if col == "kind" else "right")
        for k, v in [*rep["by_kind"].items(), *([("all", None)] if vc else [])]:
            if v is None:  # the overall row of the comparison with prompting
                b.add_row("all", str(vc["count"]), "", "", "", pm(vc["delta"], vc["se"], "+"), "", "", "")
                continue
            bf, af = v["before"], v["after"]
            code = [pm(vc["by_kind"][k]["delta"], vc["by_kind"][k]["se"], "+")] if vc and k in vc["by_kind"] else ([""] if vc else [])
            b.add_row(k, str(v["count"]), pm(bf["judge_target_rate"], bf["judge_target_rate_se"]),
                      pm(af["judge_target_rate"], af["judge_target_rate_se"]),
                      pm(v["delta"]["judge_target_rate_continuation"], v["delta_se"]["judge_target_rate_continuation"], "+"),
                      *code, pm(af["reward_target_rate"], af["reward_target_rate_se"]),
                      pm(v["delta"]["mean_reward"], v["delta_se"]["mean_reward"], "+"), f"{af['kl_to_reference']:.2f}")
        out.append(b)
    s = Table(title="sample continuations (reward)", show_lines=True)
    s.add_column("prompt")
    for n in names:
        s.add_column(n)
    for row in rep["samples"]:
        prompt = f"[{row['kind']}] {row['prompt']}" if "kind" in row else row["prompt"]
        s.add_row(escape(prompt), *(escape(f"{row[n]} ({row[f'reward_{n}']:+.2f})") for n in names))  # text, not markup
    out.append(s)
    return out
