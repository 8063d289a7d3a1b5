"""Benchmark: the streaming pipeline on gigabytes — throughput over time, memory, start-up, damage, resume.

1. Generates a corpus of ``--gb`` GB in ``--files`` jsonl files (documents re-mixed from the sentences
   of the bundled corpus, seeded; every 10th file gzip, every 25th zstd; ``--damaged`` of the gzip
   files cut in half, one zstd file corrupted mid-stream), and a second folder of ``--many-files``
   small files. Generated once per folder (``--out``), reused by later runs.
2. Streams it end to end (read → tokenize → pack → mask) on ``--ranks`` processes × ``--workers``
   DataLoader workers (global batch ``ranks × workers × 8``, seq_len 512, masked-LM) for
   ``--tokens`` tokens per rank, and prints per rank: tokens/s per core (the cores a rank can use:
   its processes, at most the machine's cores ÷ ranks) in each tenth of the run
   (first vs last tenth), the RSS of the rank and its workers over time (growth after the first
   tenth), the skipped files and documents by reason.
3. Start-up: seconds from building the loader to the first batch, with ``--files`` and with
   ``--many-files`` files (1 rank, the same workers).
4. Resume: the state after half the tokens, restored in a new loader: seconds to its first batch.

    .venv/bin/python bench/data_scale.py [--out /tmp/zerolm-scale] [--gb 2] [--files 2000]
        [--many-files 20000] [--tokens 20000000] [--ranks 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import random
import re
import statistics
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEQ_LEN, MICRO = 512, 8


def _sentences(corpus: Path) -> list[str]:
    out = []
    for p in sorted((corpus / "train").glob("*.jsonl")):
        for line in p.open(encoding="utf-8"):
            out += [s for s in re.split(r"(?<=[.!?])\s+", json.loads(line)["text"]) if 20 < len(s) < 600]
    return out


def generate(out: Path, corpus: Path, gb: float, files: int, many: int, damaged: int, seed: int = 0) -> None:
    """Write the big corpus (``out/big``) and the many-small-files corpus (``out/many``) once."""
    import zstandard

    sents = _sentences(corpus)
    rng = random.Random(seed)

    def document() -> str:
        return " ".join(rng.choice(sents) for _ in range(rng.randint(3, 40)))

    def body(target: int) -> bytes:
        parts, size = [], 0
        while size < target:
            line = json.dumps({"text": document()}).encode() + b"\n"
            parts.append(line)
            size += len(line)
        return b"".join(parts)

    big = out / "big"
    if not (big / "DONE").is_file():
        big.mkdir(parents=True, exist_ok=True)
        per_file = int(gb * 1e9 / files)
        gz_files = []
        for i in range(files):
            data = body(per_file)
            if i % 25 == 0:
                (big / f"part-{i:05d}.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=3).compress(data))
            elif i % 10 == 0:
                (big / f"part-{i:05d}.jsonl.gz").write_bytes(gzip.compress(data, compresslevel=1))
                gz_files.append(big / f"part-{i:05d}.jsonl.gz")
            else:
                (big / f"part-{i:05d}.jsonl").write_bytes(data)
        broken = []
        for p in gz_files[:damaged]:  # partial downloads
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
            broken.append(p.name)
        z = big / "part-00025.jsonl.zst"
        if z.is_file():
            raw = bytearray(z.read_bytes())
            raw[len(raw) // 2: len(raw) // 2 + 256] = bytes(256)
            z.write_bytes(bytes(raw))
            broken.append(z.name)
        (big / "DONE").write_text(json.dumps({"damaged": broken}))
    small = out / "many"
    if not (small / "DONE").is_file():
        small.mkdir(parents=True, exist_ok=True)
        for i in range(many):
            (small / f"s-{i:06d}.jsonl").write_bytes(body(8_000))
        (small / "DONE").write_text("ok")


def _cfg(folder: Path, tokenizer: str, workers: int):
    from zerolm.config import DataConfig, SourceConfig

    src = [SourceConfig(name="scale", paths=[str(folder / ("part-*" if folder.name == "big" else "*.jsonl"))])]
    return DataConfig(sources=src, validation_sources=src, tokenizer_dir=tokenizer, objective="mlm", seq_len=SEQ_LEN,
                      micro_batch_size=MICRO, num_workers=workers)


def _rss_mb(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    return sum(c.memory_info().rss for c in [p, *p.children(recursive=True)]) / 1e6


def _stream(rank: int, world: int, folder: str, tokenizer: str, workers: int, tokens: int, glob: int, out_q) -> None:
    import torch

    from zerolm.data_pipeline.loader import PackedDataLoader

    torch.set_num_threads(1)
    cfg = _cfg(Path(folder), tokenizer, workers)
    loader = PackedDataLoader(cfg, rank=rank, world_size=world, global_batch_size=glob)
    tenths, rss, seen, t0 = [], [], 0, time.perf_counter()
    mark, t_mark, state, t_first = tokens // 10, t0, None, None
    for batch in loader:
        if t_first is None:  # throughput is measured from the first batch on (start-up is reported apart)
            t_first = time.perf_counter() - t0
            t_mark = time.perf_counter()
        seen += int(batch["attention_mask"].sum())
        if state is None and seen >= tokens // 2 and loader._in_step == 0:
            state = loader.state_dict()
        if seen >= mark:
            now = time.perf_counter()
            tenths.append(tokens // 10 / (now - t_mark))
            rss.append(_rss_mb(os.getpid()))
            mark, t_mark = mark + tokens // 10, now
        if seen >= tokens:
            break
    stats = loader.stats()
    del loader
    t1 = time.perf_counter()
    again = PackedDataLoader(cfg, rank=rank, world_size=world, global_batch_size=glob)
    again.load_state_dict(state)
    next(iter(again))
    out_q.put({"rank": rank, "tenths": tenths, "rss": rss, "first_batch_s": t_first, "resume_s": time.perf_counter() - t1,
               "skipped_files": stats["skipped_files"], "skipped_documents": stats["skipped_documents"],
               "cores": max(1, min(1 + workers, (os.cpu_count() or 1) // world))})


def _startup(folder: Path, tokenizer: str, workers: int) -> float:
    from zerolm.data_pipeline.loader import PackedDataLoader

    t0 = time.perf_counter()
    next(iter(PackedDataLoader(_cfg(folder, tokenizer, workers), global_batch_size=max(workers, 1) * MICRO)))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/zerolm-scale")
    ap.add_argument("--corpus", default=str(REPO / "data/corpus"))
    ap.add_argument("--tokenizer", default=str(REPO / "data/tokenizer"))
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--many-files", type=int, default=20000)
    ap.add_argument("--damaged", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20_000_000)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    out = Path(a.out)
    t0 = time.perf_counter()
    generate(out, Path(a.corpus), a.gb, a.files, a.many_files, a.damaged)
    size = sum(p.stat().st_size for p in (out / "big").iterdir()) / 1e9
    print(f"corpus: {size:.2f} GB in {len(list((out / 'big').glob('part-*')))} files (+ {a.many_files} small files); "
          f"generated/checked in {time.perf_counter() - t0:.0f} s")
    glob = a.ranks * max(a.workers, 1) * MICRO
    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_stream, args=(r, a.ranks, str(out / "big"), a.tokenizer, a.workers,
                                                                  a.tokens, glob, q)) for r in range(a.ranks)]
    for p in procs:
        p.start()
    results = sorted((q.get() for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
    print(f"\n## {a.ranks} ranks × {a.workers} workers, masked-LM, seq_len {SEQ_LEN}, {a.tokens:,} tokens per rank\n")
    print("| rank | tokens/s per core, first tenth | last tenth | last/first | median | RSS MB after 1st tenth → end | "
          "first batch s | resume s | skipped files | skipped documents |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        per_core = [x / r["cores"] for x in r["tenths"]]
        print(f"| {r['rank']} | {per_core[0]:,.0f} | {per_core[-1]:,.0f} | {per_core[-1] / per_core[0]:.2f} | "
              f"{statistics.median(per_core):,.0f} | {r['rss'][0]:.0f} → {r['rss'][-1]:.0f} | {r['first_batch_s']:.1f} | "
              f"{r['resume_s']:.2f} | {dict(r['skipped_files']) or '-'} | {dict(r['skipped_documents']) or '-'} |")
    total = Counter()
    for r in results:
        total.update(r["skipped_files"])
    broken = json.loads((out / "big" / "DONE").read_text())["damaged"]
    print(f"\nskipped files over all ranks: {dict(total)} (damaged when generated: {', '.join(broken)}; a rank counts "
          "only the files its logical shards reached)")
    print("\n## start-up to the first batch (1 rank)\n")
    print("| files | seconds |")
    print("|---|---|")
    print(f"| {len(list((out / 'big').glob('part-*')))} (big) | {_startup(out / 'big', a.tokenizer, a.workers):.1f} |")
    print(f"| {a.many_files} (small) | {_startup(out / 'many', a.tokenizer, a.workers):.1f} |")


if __name__ == "__main__":
    main()
