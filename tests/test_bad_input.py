"""Bad input is skipped and counted by reason; the stream goes on and no good document is lost."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from zerolm.data_pipeline.loader import PackedDataLoader
from zerolm.data_pipeline.tokenizer import load_pipeline_tokenizer
from zerolm.config import DataConfig, SourceConfig
from zerolm.errors import DataError


@pytest.fixture(scope="module")
def tok(trained_tokenizer):
    return load_pipeline_tokenizer(trained_tokenizer)


@pytest.fixture(scope="module")
def real_docs(prepared_corpus):
    paths = sorted((prepared_corpus / "validation").glob("*.jsonl"))
    return [json.loads(line)["text"] for p in paths for line in p.open(encoding="utf-8")][:12]


def _one_pass(cfg, tok, workers_world=(0, 1)):
    """All documents of a finite pass, decoded, plus the skip counters, summed over ranks."""
    docs, skipped = [], Counter()
    world = workers_world[1]
    for rank in range(world):
        loader = PackedDataLoader(cfg, split="validation", rank=rank, world_size=world, tokenizer=tok)
        streams: dict[int, list] = {}
        for b in loader:
            streams.setdefault(loader.last_worker, []).append(b["input_ids"][b["attention_mask"] == 1].numpy())
        for parts in streams.values():
            ids = np.concatenate(parts)
            cuts = np.flatnonzero(ids == tok.eos_id)
            docs += [tok.decode(ids[a + 1 : b].tolist()) for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]
        stats = loader.stats()
        skipped.update(stats["skipped_documents"])
        skipped.update(stats["skipped_files"])  # the reasons differ (sources.FILE_REASONS)
    return docs, dict(skipped)


def test_each_kind_of_bad_input_is_skipped_and_counted(tmp_path, trained_tokenizer, tok, real_docs):
    good = real_docs
    d = tmp_path / "mixed"
    d.mkdir()
    with open(d / "a.jsonl", "wb") as f:
        f.write(json.dumps({"text": good[0]}).encode() + b"\n")
        f.write(b'{"text": "caf\xe9 au lait, latin-1 not utf-8"}\n')  # invalid UTF-8
        f.write(json.dumps({"text": "   "}).encode() + b"\n")  # empty document
        f.write(b'{"text": "unterminated\n')  # malformed JSON
        f.write(json.dumps({"body": good[1]}).encode() + b"\n")  # missing text field
        f.write(json.dumps({"text": 42}).encode() + b"\n")  # text not a string
        f.write(b"\n")  # blank line
        f.write(json.dumps({"text": good[1]}).encode() + b"\n")
        f.write(b"[1, 2, 3]\n")  # JSON, not an object
        f.write(json.dumps({"text": good[2]}).encode())  # last line without newline
    with open(d / "b.txt", "wb") as f:
        f.write(good[3].replace("\n", " ").encode() + b"\n")
        f.write(b"x" * (10 * 1024 * 1024) + b"\n")  # a 10 MB single-line document
        f.write(good[4].replace("\n", " ").encode() + b"\n")
        f.write(b"bin\x00ary\n")  # a NUL byte inside a text line
    (d / "c.txt").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8)))  # a binary file
    with gzip.open(d / "d.jsonl.gz", "wt", encoding="utf-8") as f:
        for t in good[5:8]:
            f.write(json.dumps({"text": t}) + "\n")
    pq.write_table(pa.table({"text": [good[8], None, "", good[9]]}), d / "e.parquet", row_group_size=2)
    pq.write_table(pa.table({"content": [good[10]]}), d / "f.parquet")

    cfg = DataConfig(
        validation_sources=[SourceConfig(name="mixed", paths=[str(d / "*")])],
        tokenizer_dir=str(trained_tokenizer), seq_len=64, micro_batch_size=2, num_workers=2,
        max_document_bytes=1_000_000,
    )
    expected_good = [good[0], good[1], good[2], good[3].replace("\n", " "), good[4].replace("\n", " "), *good[5:10]]
    for world in (1, 2):  # counted once, whichever rank/worker owns the record
        docs, skipped = _one_pass(cfg, tok, (0, world))
        assert Counter(docs) == Counter(expected_good), f"world {world}: every good document exactly once"
        assert skipped == {
            "invalid_utf8": 1, "empty": 4, "malformed_json": 2, "missing_field": 3, "too_long": 1,
            "binary": 1, "binary_file": 1,
        }, f"world {world}: {skipped}"


def test_indexed_records_read_like_the_line_by_line_path(tmp_path, real_docs):
    """Readers that own every N-th record of a plain local file seek through its line index; the same
    file as a ``file://`` URL is read line by line. Both yield the same documents, skips (each kind of
    bad line; a NUL byte near the start makes the whole file binary, tested above), including a last
    line of exactly the size cap without newline, and positions, from the start and from
    a resume position, for every shard."""
    from zerolm.data_pipeline.sources import Doc, FileRef, ShardedReader

    cap = 200
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": real_docs[0][:100]}).encode(), b'{"text": "caf\xe9"}', b"", json.dumps({"text": "  "}).encode(),
             b'{"text": "unterminated', json.dumps({"body": "x"}).encode(), json.dumps({"text": "y" * 300}).encode(),
             b"[1]", json.dumps({"text": real_docs[1][:150]}).encode(),
             json.dumps({"text": "z" * (cap - 12)}).encode(), json.dumps({"text": "w" * (cap - 11)}).encode()]
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n" + lines[-1])  # the last line has no newline
    assert len(lines[-1]) == cap + 1 and len(lines[-2]) + 1 == cap + 1

    def items(url: str, shard: int, start=None) -> list[tuple]:
        reader = ShardedReader([FileRef(url, "jsonl", None)], "text", shard, 3, shuffle_files=False, max_document_bytes=cap)
        return [(type(i).__name__, i.text, i.pos) if isinstance(i, Doc) else ("Skip", i.reason, i.where.rsplit(":", 1)[1])
                for i in reader.read(start=start, max_epochs=1)]

    seen = []
    for shard in range(3):
        indexed, by_line = items(str(path), shard), items(f"file://{path}", shard)
        assert indexed == by_line, shard
        seen += indexed
        docs = [i for i in indexed if i[0] == "Doc"]
        if len(docs) > 1:  # resume at the shard's second document
            assert items(str(path), shard, docs[1][2]) == items(f"file://{path}", shard, docs[1][2]) == indexed[indexed.index(docs[1]):]
    reasons = Counter(i[1] for i in seen if i[0] == "Skip")
    assert reasons == {"invalid_utf8": 1, "empty": 2, "malformed_json": 2, "missing_field": 1, "too_long": 2}, reasons
    assert sum(i[0] == "Doc" for i in seen) == 3 and len(seen) == len(lines)


def _lines_before_damage(blob: bytes, codec: str) -> tuple[list[bytes], bool]:
    """The complete lines a reader of the standard codec gets from a damaged compressed stream before it
    fails, and whether it failed (independent of zerolm's reader: the codec modules directly)."""
    import bz2
    import io
    import lzma

    import zstandard

    raw = io.BytesIO(blob)
    f = {"gz": lambda: gzip.GzipFile(fileobj=raw), "bz2": lambda: bz2.BZ2File(raw), "xz": lambda: lzma.LZMAFile(raw),
         "zst": lambda: io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))}[codec]()
    out, failed = [], False
    try:
        for line in f:
            out.append(line)
    except Exception:  # noqa: BLE001 - the damage
        failed = True
    return [line for line in out if line.endswith(b"\n")], failed


@pytest.fixture(scope="module")
def damaged_folder(tmp_path_factory, prepared_corpus):
    """A source folder with good and damaged files: a plain jsonl; .gz, .bz2 and .xz files cut in half
    (a partial download); a .zst and a .gz with 64 bytes overwritten mid-stream; a parquet file whose
    second row group is overwritten (footer intact); a parquet file cut before its footer. Returns the
    folder, the documents a reader can get (those before each damage) and the garbage lines a corrupt
    stream decoded before its check failed, by skip reason."""
    import bz2
    import lzma

    import zstandard

    d = tmp_path_factory.mktemp("damaged")
    paths = sorted((prepared_corpus / "train").glob("wikipedia_quac-*.jsonl"))
    docs = [json.loads(line)["text"] for p in paths for line in p.open(encoding="utf-8")]
    chunks = [docs[i * 60:(i + 1) * 60] for i in range(8)]
    lines = [b"".join(json.dumps({"text": t}).encode() + b"\n" for t in c) for c in chunks]
    good: list[str] = list(chunks[0])
    garbage: Counter[str] = Counter()
    (d / "a-good.jsonl").write_bytes(lines[0])
    makers = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress,
              "zst": lambda b: zstandard.ZstdCompressor().compress(b)}
    for i, (name, codec, how) in enumerate([("b-cut", "gz", "cut"), ("c-cut", "bz2", "cut"), ("d-cut", "xz", "cut"),
                                            ("e-corrupt", "zst", "corrupt"), ("f-corrupt", "gz", "corrupt")], start=1):
        blob = makers[codec](lines[i])
        if how == "cut":
            blob = blob[: len(blob) // 2]
        else:
            mid = len(blob) // 2
            blob = blob[:mid] + bytes(64) + blob[mid + 64:]
        (d / f"{name}.jsonl.{codec}").write_bytes(blob)
        kept, failed = _lines_before_damage(blob, codec)
        for line in kept:  # a corrupt stream may decode to garbage before its check fails
            try:
                good.append(json.loads(line)["text"])
            except (ValueError, KeyError, TypeError):
                garbage[_line_reason(line)] += 1
        assert failed, f"{name}.{codec} is damaged"
    table = pa.table({"text": chunks[6]})
    pq.write_table(table, d / "g-rowgroup.parquet", row_group_size=20, compression="none")
    pf = pq.ParquetFile(d / "g-rowgroup.parquet")
    rg = pf.metadata.row_group(1).column(0)
    start = rg.dictionary_page_offset or rg.data_page_offset
    raw = bytearray((d / "g-rowgroup.parquet").read_bytes())
    raw[start:start + rg.total_compressed_size] = bytes(rg.total_compressed_size)
    (d / "g-rowgroup.parquet").write_bytes(bytes(raw))
    good += chunks[6][:20]
    pq.write_table(pa.table({"text": chunks[7]}), d / "h-cut.parquet")
    (d / "h-cut.parquet").write_bytes((d / "h-cut.parquet").read_bytes()[:-100])
    return d, good, dict(garbage)


def _line_reason(line: bytes) -> str:
    """Why a garbage line is skipped (the document-level reasons of sources.py, decided here)."""
    if b"\x00" in line:
        return "binary"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    return "malformed_json"


@pytest.mark.parametrize("workers_world", [(0, 1), (2, 2)])
def test_damaged_files_keep_what_was_read_and_count_the_rest(damaged_folder, trained_tokenizer, tok, workers_world):
    """One pass over the damaged folder with 1 rank, and with 2 ranks x 2 workers: every document before
    each damage is read exactly once (as the codec modules read them), the rest of each damaged file is
    skipped and counted once as a file (5 compressed streams + 1 parquet row group: damaged_file; the
    parquet without footer: unreadable_file), no document is counted, and the stream goes on."""
    d, good, garbage = damaged_folder
    cfg = DataConfig(validation_sources=[SourceConfig(name="damaged", paths=[str(d / "*")])],
                     tokenizer_dir=str(trained_tokenizer), seq_len=128, micro_batch_size=4, num_workers=workers_world[0])
    docs, skipped = _one_pass(cfg, tok, workers_world)
    assert Counter(docs) == Counter(good), f"{len(docs)} documents read, {len(good)} expected"
    assert skipped == {"damaged_file": 6, "unreadable_file": 1, **garbage}, skipped


def test_resume_across_a_damaged_file_and_a_source_with_nothing_readable(damaged_folder, trained_tokenizer, tok):
    """Training on the damaged folder (2 ranks, 4 logical shards, micro-batch 2) stopped after each of
    several steps resumes to the same batches as the uninterrupted run, across the damaged files (their
    damage is met again at the same record). A source whose every file is unreadable or damaged before its
    first document stops with one error naming the source, at the first batch."""
    d = damaged_folder[0]
    cfg = DataConfig(sources=[SourceConfig(name="damaged", paths=[str(d / "*")])], tokenizer_dir=str(trained_tokenizer),
                     seq_len=128, micro_batch_size=2, num_workers=0, shuffle_files=False)
    steps, crossed = 40, 0
    for rank in range(2):
        it = iter(PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok, global_batch_size=4))
        reference = [next(it)["input_ids"] for _ in range(steps)]
        for stop in (5, 17, 29):
            first = PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok, global_batch_size=4)
            head = iter(first)
            for _ in range(stop):
                next(head)
            state = json.loads(json.dumps(first.state_dict()))
            loader = PackedDataLoader(cfg, rank=rank, world_size=2, tokenizer=tok, global_batch_size=4)
            loader.load_state_dict(state)
            resumed = iter(loader)
            assert all(bool((next(resumed)["input_ids"] == want).all()) for want in reference[stop:]), (rank, stop)
        crossed += sum(loader.stats()["skipped_files"].values())
    assert crossed > 0, "the runs crossed damaged files"
    bad = DataConfig(sources=[SourceConfig(name="all-bad", paths=[str(d / "h-cut.parquet"), str(d / "c-cut.jsonl.bz2")])],
                     tokenizer_dir=str(trained_tokenizer), seq_len=128, micro_batch_size=2, num_workers=0)
    with pytest.raises(DataError, match=r"source 'all-bad': every file is unreadable or damaged .*h-cut.parquet|"
                                        r"source 'all-bad': every file is unreadable or damaged .*c-cut.jsonl.bz2"):
        next(iter(PackedDataLoader(bad, tokenizer=tok)))


def _flaky_filesystem():
    """An in-memory fsspec file system (``flaky://``) whose next open fails ``fail_opens`` times and
    whose reads fail from byte ``fail_at`` on, ``fail_reads`` times (-1: always) — a remote store with
    transient (or lasting) errors."""
    from fsspec.implementations.memory import MemoryFileSystem

    class FlakyFS(MemoryFileSystem):
        protocol = ("flaky",)
        store: dict = {}
        pseudo_dirs = [""]
        fail_opens = 0
        fail_at = 0
        fail_reads = 0

        def _open(self, path, mode="rb", **kw):
            if FlakyFS.fail_opens:
                FlakyFS.fail_opens -= 1
                raise ConnectionError("connection refused (test)")
            f = super()._open(path, mode, **kw)
            if "r" in mode:
                readline = f.readline

                def flaky_readline(*a):
                    if FlakyFS.fail_reads and f.tell() >= FlakyFS.fail_at:
                        FlakyFS.fail_reads -= FlakyFS.fail_reads > 0
                        raise ConnectionResetError("connection reset by peer (test)")
                    return readline(*a)

                f.readline = flaky_readline
            return f

    fsspec.register_implementation("flaky", FlakyFS, clobber=True)
    return FlakyFS


def test_transient_remote_errors_are_retried_and_lasting_ones_counted(monkeypatch):
    """A remote file whose open fails twice and whose read breaks twice mid-file is read completely,
    each document once, at the positions of an undisturbed read; one whose reads keep failing is counted
    as a damaged file after the retries, keeping the documents read before."""
    from zerolm.data_pipeline import sources
    from zerolm.data_pipeline.sources import Doc, ShardedReader, resolve_files

    monkeypatch.setattr(sources, "_BACKOFF_S", 0.001)
    flaky = _flaky_filesystem()
    body = b"".join(json.dumps({"text": f"document {i} " * 5}).encode() + b"\n" for i in range(100))
    with fsspec.filesystem("flaky").open("flaky://zerolm-test/a.jsonl", "wb") as f:
        f.write(body)
    files = resolve_files(SourceConfig(name="remote", paths=["flaky://zerolm-test/*.jsonl"]))

    def read() -> list:
        return list(ShardedReader(files, "text", 0, 1, shuffle_files=False).read(max_epochs=1))

    undisturbed = read()
    assert len(undisturbed) == 100 and all(isinstance(i, Doc) for i in undisturbed)
    flaky.fail_opens, flaky.fail_at, flaky.fail_reads = 2, len(body) // 3, 2
    assert read() == undisturbed, "retried, nothing lost or repeated"
    assert flaky.fail_opens == 0 and flaky.fail_reads == 0, "the errors happened"
    flaky.fail_at, flaky.fail_reads = len(body) // 3, -1
    items = read()
    docs = [i for i in items if isinstance(i, Doc)]
    assert docs == undisturbed[: len(docs)] and 0 < len(docs) < 100
    assert [i.reason for i in items if not isinstance(i, Doc)] == ["damaged_file"]


def test_fsspec_url_with_gzip(trained_tokenizer, tok, real_docs):
    fs = fsspec.filesystem("memory")
    with fs.open("memory://zerolm-test/part-0.jsonl.gz", "wb") as raw, gzip.open(raw, "wt", encoding="utf-8") as f:
        for t in real_docs[:5]:
            f.write(json.dumps({"body": t}) + "\n")
    cfg = DataConfig(
        validation_sources=[SourceConfig(name="mem", paths=["memory://zerolm-test/*.jsonl.gz"], text_field="body")],
        tokenizer_dir=str(trained_tokenizer), seq_len=64, micro_batch_size=2, num_workers=0,
    )
    docs, skipped = _one_pass(cfg, tok)
    assert docs == real_docs[:5] and skipped == {}


def _compress(data: bytes, codec: str) -> bytes:
    """``data`` compressed with the codec's own library (not through fsspec, which the reader uses)."""
    import bz2
    import lzma

    if codec == "gz":
        return gzip.compress(data)
    if codec == "bz2":
        return bz2.compress(data)
    if codec == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ)
    try:
        import zstandard
    except ImportError:  # a zerolm dependency: the README promises .zst inputs
        pytest.fail("the zstandard package is not installed, so .zst inputs (a README claim) cannot be read")
    return zstandard.ZstdCompressor(level=3).compress(data)


@pytest.mark.parametrize("codec", ["gz", "bz2", "xz", "zst"])
def test_compressed_inputs_read_exactly_like_the_plain_file(tmp_path, prepared_corpus, trained_tokenizer, tok, codec):
    """The bundled validation documents as .jsonl and as .jsonl.<codec> (also a .txt.<codec>): the same
    documents in the same order and bitwise the same token blocks, on 2 ranks x 2 workers."""
    docs = [json.loads(line)["text"] for p in sorted((prepared_corpus / "validation").glob("*.jsonl"))
            for line in p.open(encoding="utf-8")]
    jsonl = "".join(json.dumps({"text": t}) + "\n" for t in docs).encode("utf-8")
    txt = "".join(t.replace("\n", " ") + "\n" for t in docs).encode("utf-8")
    (tmp_path / "plain").mkdir()
    (tmp_path / "packed").mkdir()
    (tmp_path / "plain" / "docs.jsonl").write_bytes(jsonl)
    (tmp_path / "packed" / f"docs.jsonl.{codec}").write_bytes(_compress(jsonl, codec))
    (tmp_path / "plain" / "lines.txt").write_bytes(txt)
    (tmp_path / "packed" / f"lines.txt.{codec}").write_bytes(_compress(txt, codec))

    def blocks(folder: str) -> list[np.ndarray]:
        cfg = DataConfig(validation_sources=[SourceConfig(name="s", paths=[str(tmp_path / folder / "*")])],
                         tokenizer_dir=str(trained_tokenizer), seq_len=128, micro_batch_size=4, num_workers=0)
        loader = PackedDataLoader(cfg, split="validation", tokenizer=tok)
        out = [b["input_ids"].numpy() for b in loader]
        assert loader.stats()["skipped_documents"] == {}, f"{folder}: {loader.stats()['skipped_documents']}"
        return out

    plain, packed = blocks("plain"), blocks("packed")
    assert len(plain) == len(packed) > 10
    assert all(a.tobytes() == b.tobytes() for a, b in zip(plain, packed)), f".{codec}: other token blocks"
    ids = np.concatenate([b[b != tok.pad_id] for b in packed])
    cuts = np.flatnonzero(ids == tok.eos_id)
    decoded = [tok.decode(ids[a + 1 : b].tolist()) for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]
    assert decoded == docs + [t.replace("\n", " ") for t in docs], f".{codec}: not the documents written"
    cfg = DataConfig(validation_sources=[SourceConfig(name="s", paths=[str(tmp_path / "packed" / "*")])],
                     tokenizer_dir=str(trained_tokenizer), seq_len=128, micro_batch_size=4, num_workers=2)
    sharded, skipped = _one_pass(cfg, tok, (0, 2))  # 4 readers, each walking the compressed streams
    assert Counter(sharded) == Counter(decoded) and skipped == {}
    # exact resume in the middle of a compressed file (a forward seek in the uncompressed stream)
    train = DataConfig(sources=[SourceConfig(name="s", paths=[str(tmp_path / "packed" / "docs.jsonl.*")])],
                       tokenizer_dir=str(trained_tokenizer), seq_len=128, micro_batch_size=4, num_workers=0)
    it = iter(PackedDataLoader(train, tokenizer=tok))
    reference = [next(it)["input_ids"] for _ in range(7)]
    first = PackedDataLoader(train, tokenizer=tok)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    positions = [shard["sources"]["s"] for shard in state["shards"].values()]  # 4 logical shards, one per row
    assert any(p["offset"] > 0 and p["pos"][3] > 0 for p in positions), \
        "some shard stops inside a document that starts past the file's start"
    resumed = PackedDataLoader(train, tokenizer=tok)
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert all(bool((next(it)["input_ids"] == want).all()) for want in reference[3:]), f".{codec}: resume differs"


def test_a_compression_without_codec_fails_before_reading(tmp_path, trained_tokenizer, tok, monkeypatch):
    """An environment whose fsspec lacks a codec refuses the file up front, naming it and the package,
    instead of skipping every file as unreadable."""
    (tmp_path / "docs.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd")  # never read
    monkeypatch.setattr(fsspec, "available_compressions", lambda: [None, "gzip", "bz2", "xz"])
    cfg = DataConfig(sources=[SourceConfig(name="z", paths=[str(tmp_path / "*.zst")])], tokenizer_dir=str(trained_tokenizer))
    with pytest.raises(DataError, match=r"docs\.jsonl\.zst.*zstd.*install 'zstandard'"):
        PackedDataLoader(cfg, tokenizer=tok)


def test_a_file_that_vanishes_after_the_start_is_counted_and_skipped(tmp_path, trained_tokenizer, tok, real_docs):
    """Files are listed when the loader is built; one deleted before it is read (a shard moved away,
    a lost mount) is counted once as an unreadable file, and the others are read whole."""
    for i in range(3):
        (tmp_path / f"part-{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in real_docs[4 * i: 4 * i + 4]))
    cfg = DataConfig(validation_sources=[SourceConfig(name="s", paths=[str(tmp_path / "*.jsonl")])],
                     tokenizer_dir=str(trained_tokenizer), seq_len=64, micro_batch_size=2, num_workers=0)
    loader = PackedDataLoader(cfg, split="validation", tokenizer=tok)
    (tmp_path / "part-1.jsonl").unlink()
    ids = np.concatenate([b["input_ids"][b["attention_mask"] == 1].numpy() for b in loader])
    cuts = np.flatnonzero(ids == tok.eos_id)
    docs = [tok.decode(ids[a + 1: b].tolist()) for a, b in zip(np.r_[-1, cuts[:-1]], cuts)]
    assert Counter(docs) == Counter(real_docs[0:4] + real_docs[8:12])
    assert loader.stats()["skipped_files"] == {"unreadable_file": 1}
