"""A/B benchmark of the training loop: this working tree against an older git revision, in one run.

    .venv/bin/python bench/trainer_ab.py --old-rev 615aeed            # 2 ranks, tiny GPT, accumulation 8
    .venv/bin/python bench/trainer_ab.py --old-rev HEAD~1 --rounds 3 -- model.preset=small

The old revision is unpacked with ``git archive`` into a temporary folder laid out as the ``zerolm``
package (its top-level folders as ``zerolm.pretrain`` …) and put first on ``PYTHONPATH``, so the same
venv runs either code. Each round runs A B B A (A = old, B = new: this machine's load drifts 15–25 %
minute to minute; the mirrored order cancels a linear drift), each a fresh ``torchrun --nproc_per_node
2 -m zerolm.pretrain`` of ``--steps`` steps on the bundled corpus, and reads the run's own median
tokens/s (``result.json`` ``throughput``; older revisions without it: the median of ``metrics.jsonl``'s
windows after the first). Prints each run, the B/A ratio per round and their mean ± spread; writes
``bench/results/trainer_ab.json``.

Used for issue 18's "no host synchronisation per micro-batch": the loop used to call
``torch.isfinite(loss).item()``, all-reduce that flag and ``float(loss)`` on every micro-batch, and
all-reduce the stop flag every step; now one all-reduce per optimizer step carries all of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_run import REPO, run_pretrain  # noqa: E402
PACKAGES = ("pretrain", "finetune", "evals", "launch", "data_pipeline", "configs")


def unpack(rev: str, into: Path) -> Path:
    """``git archive REV`` laid out as an importable ``zerolm`` package under ``into``; returns the
    folder to put on ``PYTHONPATH``."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = into / "path" / "zerolm"
    pkg.mkdir(parents=True)
    for f in (src / "zerolm").iterdir():
        (pkg / f.name).symlink_to(f)
    for d in PACKAGES:
        (pkg / d).symlink_to(src / d)
    return into / "path"


def tokens_per_second(run_dir: Path) -> float:
    res = json.loads((run_dir / "result.json").read_text())
    if "throughput" in res:
        return float(res["throughput"]["tokens_per_second"])
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tps = [r["train/tokens_per_second"] for r in rows if "train/tokens_per_second" in r][1:]
    return statistics.median(tps)


def run_once(pythonpath: str | None, run_dir: Path, steps: int, extra: list[str]) -> float:
    run_pretrain(run_dir, [f"train.max_steps={steps}", "data.micro_batch_size=1", "train.global_batch_size=16",
                           f"train.log_every={max(1, steps // 6)}", f"train.eval_every={steps}",
                           f"train.save_every={steps}", "train.eval_batches=1", *extra], pythonpath=pythonpath)
    return tokens_per_second(run_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old-rev", required=True, help="the git revision to compare against (A)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "bench/results/trainer_ab.json"))
    ap.add_argument("overrides", nargs="*", help="config overrides for both (after --)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old_path = str(unpack(args.old_rev, tmp / "old"))
        rows, ratios = [], []
        for rnd in range(args.rounds):
            got = {"A": [], "B": []}
            for i, which in enumerate("ABBA"):
                tps = run_once(old_path if which == "A" else None, tmp / f"r{rnd}_{i}_{which}", args.steps, args.overrides)
                got[which].append(tps)
                rows.append({"round": rnd, "order": i, "code": "old" if which == "A" else "new", "tokens_per_second": tps})
                print(f"round {rnd} {which} ({'old ' + args.old_rev if which == 'A' else 'new'}): {tps:,.0f} tokens/s", flush=True)
            ratio = statistics.mean(got["B"]) / statistics.mean(got["A"])
            ratios.append(ratio)
            print(f"round {rnd}: new/old = {ratio:.3f}", flush=True)
    summary = {"old_rev": args.old_rev, "steps": args.steps, "overrides": args.overrides, "runs": rows,
               "ratios": ratios, "mean_ratio": statistics.mean(ratios),
               "spread": (max(ratios) - min(ratios)) if len(ratios) > 1 else None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(f"new/old tokens/s: {summary['mean_ratio']:.3f} (rounds: {', '.join(f'{r:.3f}' for r in ratios)})")


if __name__ == "__main__":
    main()
