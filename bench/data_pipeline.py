"""Benchmark: zerolm's streaming pipeline vs the usual Hugging Face path, on the same text, one core.

zerolm:   read jsonl → sentencepiece encode → pack into seq_len blocks (no padding) → (mask)
baseline: datasets streaming load_dataset("json") → .map(fast HF tokenizer, truncation) →
          DataLoader + DataCollatorForLanguageModeling (pads each batch to its longest row)

Both run in this process, one thread each (``torch.set_num_threads(1)``, ``RAYON_NUM_THREADS=1``),
alternating for ``--rounds`` rounds; the table shows medians and the ratio against the baseline
measured in the same run. "useful tokens" are non-padding tokens that reach the model; the
baseline also truncates documents longer than seq_len, which drops text (reported).

    .venv/bin/python bench/data_pipeline.py [--corpus data/corpus] [--tokenizer data/tokenizer]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def run_zerolm(files, tokdir, objective, seq_len, batch):
    from zerolm.data_pipeline.loader import PackedDataLoader
    from zerolm.config import DataConfig, SourceConfig

    src = [SourceConfig(name="bench", paths=files)]
    cfg = DataConfig(validation_sources=src, sources=src, tokenizer_dir=tokdir, objective=objective,
                     seq_len=seq_len, micro_batch_size=batch, num_workers=0, tokenize_batch_size=256)
    t0 = time.perf_counter()
    total = useful = 0
    for b in PackedDataLoader(cfg, split="validation"):
        total += b["input_ids"].numel()
        useful += int(b["attention_mask"].sum())
    return time.perf_counter() - t0, total, useful


def run_baseline(files, tokdir, objective, seq_len, batch):
    import datasets
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(tokdir)
    t0 = time.perf_counter()
    ds = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    ds = ds.map(lambda ex: tok(ex["text"], truncation=True, max_length=seq_len), batched=True,
                remove_columns=["text", "source", "id"])
    coll = DataCollatorForLanguageModeling(tok, mlm=objective == "mlm", mlm_probability=0.15)
    total = useful = 0
    for b in DataLoader(ds, batch_size=batch, collate_fn=coll):
        total += b["input_ids"].numel()
        useful += int(b["attention_mask"].sum())
    return time.perf_counter() - t0, total, useful


def corpus_tokens(files, tokdir):
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
    import json

    tok = load_pipeline_tokenizer(tokdir)
    texts = [json.loads(l)["text"] for f in files for l in open(f, encoding="utf-8")]
    return sum(len(x) for x in tok.encode_batch(texts)), len(texts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--tokenizer", default="data/tokenizer")
    ap.add_argument("--max-mb", type=float, default=4.0, help="use train shards up to this many MB")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    files, size = [], 0
    for f in sorted(glob.glob(os.path.join(args.corpus, "train", "*.jsonl"))):
        if size >= args.max_mb * 1e6:
            break
        files.append(f)
        size += os.path.getsize(f)
    if not files:
        print(f"no train shards under {args.corpus}: run `zerolm data prepare` first", file=sys.stderr)
        return 2
    n_tok, n_docs = corpus_tokens(files, args.tokenizer)
    print(f"text: {len(files)} shards, {size / 1e6:.1f} MB, {n_docs} documents, {n_tok:,} tokens; "
          f"seq_len {args.seq_len}, batch {args.batch}, 1 thread, {args.rounds} rounds (medians)\n")
    rows = []
    for objective in ("clm", "mlm"):
        res = {"zerolm": [], "baseline": []}
        for _ in range(args.rounds):
            res["zerolm"].append(run_zerolm(files, args.tokenizer, objective, args.seq_len, args.batch))
            res["baseline"].append(run_baseline(files, args.tokenizer, objective, args.seq_len, args.batch))
        med = {}
        for name, runs in res.items():
            secs = statistics.median(r[0] for r in runs)
            total, useful = runs[0][1], runs[0][2]
            med[name] = (secs, total, useful)
        for name in ("zerolm", "baseline"):
            secs, total, useful = med[name]
            rows.append((objective, name, total / secs, useful / secs, 1 - useful / total, useful / n_tok,
                         (useful / secs) / (med["baseline"][2] / med["baseline"][0])))
    hdr = f"{'objective':<9} {'pipeline':<9} {'tokens/s':>10} {'useful tok/s':>13} {'padding':>8} {'text kept':>10} {'vs baseline':>12}"
    print(hdr)
    print("-" * len(hdr))
    for obj, name, tps, utps, padf, kept, ratio in rows:
        print(f"{obj:<9} {name:<9} {tps:>10,.0f} {utps:>13,.0f} {padf:>8.1%} {kept:>10.1%} {ratio:>11.2f}x")
    print("\nuseful tok/s: non-padding tokens per second per core; text kept: useful tokens ÷ corpus tokens "
          "(zerolm adds separators/CLS; the baseline truncates long documents).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
