"""Benchmark: zerolm's streaming pipeline vs the usual Hugging Face path, on the same text, one core.

zerolm:   read jsonl → sentencepiece encode → pack into seq_len blocks (no padding) → (mask)
baseline: datasets streaming load_dataset("json") → .map(fast HF tokenizer, truncation) →
          DataLoader + DataCollatorForLanguageModeling (pads each batch to its longest row)

Both again with a Hugging Face model's own tokenizer (``--hf-tokenizer``, default MiniLM's BERT
WordPiece; continued pretraining, ``model.init_from``): zerolm encodes through
``HFPipelineTokenizer`` (the ``tokenizers`` backend), the baseline maps the same tokenizer. Only the
objectives that tokenizer has the special tokens for are run (BERT: mlm; GPT-2 style: clm). Token
counts differ between tokenizers: ``text MB/s`` compares across them.

Both run in this process, one thread each (``torch.set_num_threads(1)``, ``RAYON_NUM_THREADS=1``),
alternating for ``--rounds`` rounds; the table shows medians and the ratio against the baseline
measured in the same run. "useful tokens" are non-padding tokens that reach the model; the
baseline also truncates documents longer than seq_len, which drops text (reported).

    .venv/bin/python bench/data_pipeline.py [--corpus data/corpus] [--tokenizer data/tokenizer]
        [--hf-tokenizer minilm|smollm2|DIR|none] [--rounds 3]
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
    if tok.pad_token is None:  # GPT-2 style: the collator pads with eos, as the usual recipe does
        tok.pad_token = tok.eos_token
    coll = DataCollatorForLanguageModeling(tok, mlm=objective == "mlm", mlm_probability=0.15)
    total = useful = 0
    for b in DataLoader(ds, batch_size=batch, collate_fn=coll):
        total += b["input_ids"].numel()
        useful += int(b["attention_mask"].sum())
    return time.perf_counter() - t0, total, useful


def corpus_tokens(files, tokdir):
    """(tokens, documents, UTF-8 text bytes) of the files under the pipeline tokenizer of ``tokdir``."""
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
    import json

    tok = load_pipeline_tokenizer(tokdir)
    texts = [json.loads(line)["text"] for f in files for line in open(f, encoding="utf-8")]
    return sum(len(x) for x in tok.encode_batch(texts)), len(texts), sum(len(t.encode("utf-8")) for t in texts)


def objectives_of(tokdir):
    """The objectives the pipeline can run with this tokenizer (it has their special tokens)."""
    from zerolm.config import DataConfig
    from zerolm.data_pipeline.loader import required_roles
    from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer

    tok = load_pipeline_tokenizer(tokdir)
    return [o for o in ("clm", "mlm")
            if all(getattr(tok, f"{r}_id") is not None for r in required_roles(DataConfig(objective=o)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--tokenizer", default="data/tokenizer", help="zerolm's own (sentencepiece) tokenizer folder")
    ap.add_argument("--hf-tokenizer", default="minilm",
                    help="a Hugging Face model's tokenizer: minilm, smollm2 (converted once, ~40 s), a folder, or none")
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
    tokenizers = [("spm", args.tokenizer, ["clm", "mlm"])]
    if args.hf_tokenizer.lower() != "none":
        from zerolm.hf_models import resolve_model_path

        hf_dir = resolve_model_path(args.hf_tokenizer)
        tokenizers.append(("hf", hf_dir, objectives_of(hf_dir)))
    counts = {}
    for label, tokdir, _ in tokenizers:
        counts[label] = corpus_tokens(files, tokdir)
        n_tok, n_docs, n_bytes = counts[label]
        print(f"{label}: {tokdir}: {n_tok:,} tokens")
    print(f"text: {len(files)} shards, {size / 1e6:.1f} MB of jsonl, {n_bytes / 1e6:.1f} MB of text, {n_docs} documents; "
          f"seq_len {args.seq_len}, batch {args.batch}, 1 thread, {args.rounds} rounds (medians)\n")
    rows = []
    for label, tokdir, objectives in tokenizers:
        n_tok, _, n_bytes = counts[label]
        for objective in objectives:
            res = {"zerolm": [], "datasets.map": []}
            for _ in range(args.rounds):
                res["zerolm"].append(run_zerolm(files, tokdir, objective, args.seq_len, args.batch))
                res["datasets.map"].append(run_baseline(files, tokdir, objective, args.seq_len, args.batch))
            med = {name: (statistics.median(r[0] for r in runs), runs[0][1], runs[0][2]) for name, runs in res.items()}
            base_secs, _, base_useful = med["datasets.map"]
            for name in ("zerolm", "datasets.map"):
                secs, total, useful = med[name]
                rows.append((objective, f"{name}+{label}", total / secs, useful / secs, n_bytes / secs / 1e6,
                             1 - useful / total, useful / n_tok, (useful / secs) / (base_useful / base_secs)))
    hdr = (f"{'objective':<9} {'pipeline':<17} {'tokens/s':>10} {'useful tok/s':>13} {'text MB/s':>10} {'padding':>8} "
           f"{'text kept':>10} {'vs map':>8}")
    print(hdr)
    print("-" * len(hdr))
    for obj, name, tps, utps, mbs, padf, kept, ratio in rows:
        print(f"{obj:<9} {name:<17} {tps:>10,.0f} {utps:>13,.0f} {mbs:>10.2f} {padf:>8.1%} {kept:>10.1%} {ratio:>7.2f}x")
    print("\nspm: zerolm's sentencepiece tokenizer (zerolm encodes with sentencepiece, datasets.map with its HF face); "
          "hf: the model's own tokenizer (both through the tokenizers backend).\n"
          "useful tok/s: non-padding tokens per second per core; text MB/s: corpus text per second (comparable "
          "across tokenizers); text kept: useful tokens ÷ corpus tokens (zerolm adds separators/CLS; datasets.map "
          "truncates long documents); vs map: useful tok/s ÷ datasets.map's with the same tokenizer.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
