"""A training split in the cache: read and checked once, in the loss's shape, memory-mapped.

The first run reads the files (bad rows are reported as always), converts them to the loss's
shape and writes the rows as Arrow shards, with a 32-bit hash of every text (the duplicate-free
sampler and the leak check use those, not the texts). Every later run, resume and process maps
the same files: nothing of the corpus is held as Python objects, so memory does not grow with
it. A split whose files are large is built in a subprocess, so the training process never holds
what reading and converting it took (a conversion such as NLI -> triplets gathers rows across
the whole split).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from train.data import cache
from train.data.presets import DataSpec, split_sources
from train.data.rows import RowSource, Tally, features_of
from train.data.shapes import is_identity, shape_plan
from train.data.text_hash import combine, hash64

log = logging.getLogger("train")

SHARD_ROWS = 250_000  # rows a file; the unit that tokenization is parallel over
CHUNK_ROWS = 10_000  # rows a record batch, and what one step of the build holds
# Sources at least this large (bytes) are read in a subprocess; EMBED_CACHE_SUBPROCESS_BYTES overrides.
SUBPROCESS_BYTES = 64 << 20
LIST_COLUMNS = ("candidates", "labels")


@dataclass(frozen=True)
class CacheSettings:
    root: Path
    num_proc: int  # processes that tokenize; 1 = in this process (the tokenizer's own threads)

    @staticmethod
    def make(cache_dir: str | Path | None, num_proc: int | None) -> CacheSettings:
        return CacheSettings(cache.resolve_cache_dir(cache_dir), num_proc or os.cpu_count() or 1)


class Corpus:
    """The split's rows (first `limit`, if > 0) and a (rows, texts) matrix of 32-bit text hashes."""

    def __init__(self, entry: cache.Entry, settings: CacheSettings, limit: int = 0) -> None:
        m = entry.manifest
        total = m["rows"]
        self.entry = entry
        self.settings = settings
        self.shards = [(entry.file(name), rows) for name, rows in m["shards"]]
        self.text_columns: tuple[str, ...] = tuple(m["text_columns"])
        self.rows = min(limit, total) if limit > 0 else total
        parts = [datasets.Dataset.from_file(str(path)) for path, _ in self.shards]
        full = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        self.dataset = full.select(range(self.rows)) if self.rows < total else full
        shape = (total, len(self.text_columns))
        hashes = np.memmap(entry.file("hashes.u32"), dtype=np.uint32, mode="r", shape=shape) if total else np.zeros(shape, np.uint32)
        self.hashes = hashes[: self.rows]
        self.duplicates = m["duplicates"] if self.rows == total else None

    def __len__(self) -> int:
        return self.rows

    @property
    def column_names(self) -> list[str]:
        return self.dataset.column_names

    @property
    def key(self) -> str:
        return self.entry.path.name

    def column(self, name: str) -> pa.ChunkedArray:
        """One column of the (first len()) rows, as the memory-mapped Arrow column."""
        return self.dataset.data.table.column(name)

    def text_hashes(self, columns: tuple[str, ...]) -> np.ndarray:
        """The hashes of these text columns: the mapped matrix itself when they are all of it."""
        if tuple(columns) == self.text_columns:
            return self.hashes
        return np.asarray(self.hashes[:, [self.text_columns.index(c) for c in columns]])


def load_corpus(
    spec: DataSpec, split: str, shape: str, hard_negatives: bool, settings: CacheSettings, limit: int = 0
) -> Corpus | None:
    """The split through the cache (built if missing), or None when the source has no such split."""
    sources = split_sources(spec, split)
    if sources is None:
        return None
    key = {
        "what": "rows",
        "kind": spec.kind,
        "shape": shape,
        # Only NLI -> triplets reads it: other shapes share one entry whatever it says.
        "hard_negatives": hard_negatives if (spec.kind, str(shape)) == ("nli", "triplets") else None,
        "sources": [
            {"settings": s.settings, "on_bad_row": s.on_bad_row, "file": cache.file_digest(s.file) if s.file else None}
            for s in sources
        ],
    }
    size = sum(s.file.stat().st_size for s in sources if s.file is not None)
    threshold = int(os.environ.get("EMBED_CACHE_SUBPROCESS_BYTES", SUBPROCESS_BYTES))
    apart = size >= threshold

    def build(out: Path) -> dict[str, Any]:
        if not apart:
            return build_rows(spec, split, shape, hard_negatives, out)
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=_child_logging) as pool:
            return pool.submit(build_rows, spec, split, shape, hard_negatives, out).result()

    where = f"data={spec.name} ({split})"
    entry = cache.cached(settings.root, "rows", key, build, what=where)
    for level, note in entry.manifest["notes"]:
        log.log(logging.WARNING if level == "warning" else logging.INFO, "%s%s", note, "" if entry.built else " (when the cache was built)")
    corpus = Corpus(entry, settings, limit)
    log.info(
        "%s: %d rows%s, cached in %s (%s)", where, len(corpus), f" of {entry.manifest['rows']}" if limit and len(corpus) < entry.manifest["rows"] else "",
        entry.path, f"built in {entry.manifest['build_seconds']:.1f} s" if entry.built else "reused",
    )
    return corpus


def _child_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger("train").setLevel(logging.INFO)


# --- Building ---------------------------------------------------------------------------------


class Every:
    """Logs a long build's progress at most every `seconds`."""

    def __init__(self, what: str, seconds: float = 30.0) -> None:
        self.what, self.seconds = what, seconds
        self.started = self.last = time.perf_counter()

    def __call__(self, done: int, total: int | None = None) -> None:
        now = time.perf_counter()
        if now - self.last >= self.seconds:
            self.last = now
            of = f" of {total:,}" if total else ""
            log.info("%s: %s rows%s, %.0f s", self.what, f"{done:,}", of, now - self.started)


class RowWriter:
    """Tables of canonical rows -> rows-00000.arrow, ... (SHARD_ROWS each), the 32-bit hashes of
    their text columns (hashes.u32, row-major) and a 64-bit hash of each whole row (kept in
    memory, 8 bytes a row, for the count of repeated rows)."""

    def __init__(self, out: Path, names: tuple[str, ...]) -> None:
        self.out, self.names = out, names
        self.features = features_of(names)
        self.schema = self.features.arrow_schema
        self.text_columns = tuple(n for n in names if n not in LIST_COLUMNS and self.features[n] == datasets.Value("string"))
        self.shards: list[list] = []
        self.writer: Any = None
        self.hashes = open(out / "hashes.u32", "wb")
        self.row_hashes: list[np.ndarray] = []
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        table = table.select(list(self.names)).cast(self.schema)
        start = 0
        while start < table.num_rows:
            if self.writer is None or self.shards[-1][1] == SHARD_ROWS:
                self._next_shard()
            part = table.slice(start, SHARD_ROWS - self.shards[-1][1])
            self.writer.write_table(part)
            self.shards[-1][1] += part.num_rows
            start += part.num_rows
        texts = {c: hash64(table.column(c).to_pylist()) for c in self.text_columns}
        if self.text_columns:
            self.hashes.write(np.stack([texts[c].astype(np.uint32) for c in self.text_columns], axis=1).tobytes())
        self.row_hashes.append(row_hashes(table, texts))
        self.rows += table.num_rows

    def _next_shard(self) -> None:
        from datasets.arrow_writer import ArrowWriter

        if self.writer is not None:
            self.writer.finalize()
        name = f"rows-{len(self.shards):05d}.arrow"
        self.shards.append([name, 0])
        self.writer = ArrowWriter(path=str(self.out / name), features=self.features, writer_batch_size=CHUNK_ROWS)

    def close(self) -> dict[str, Any]:
        if self.writer is None:
            self._next_shard()
        self.writer.finalize()
        self.hashes.close()
        row_hashes = np.concatenate(self.row_hashes) if self.row_hashes else np.zeros(0, np.uint64)
        return {
            "rows": self.rows,
            "columns": list(self.names),
            "text_columns": list(self.text_columns),
            "shards": self.shards,
            "duplicates": int(self.rows - len(np.unique(row_hashes))),
        }


def row_hashes(table: pa.Table, known: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """A 64-bit hash of each whole row (equal rows, equal hashes); `known`: columns' hashes already computed."""
    known = known or {}
    return combine([known[c] if c in known else _value_hash(table.column(c)) for c in table.column_names])


def _value_hash(column: pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash of each value of a column (a text, a score, a label, a list)."""
    if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
        return column.to_numpy().astype(np.float64).view(np.uint64)
    if pa.types.is_string(column.type):
        return hash64(column.to_pylist())
    return hash64(repr(v) for v in column.to_pylist())


def _tables(sources: list[RowSource], notes: list, names: tuple[str, ...]) -> Any:
    """The sources' checked rows as tables of CHUNK_ROWS; each file's skipped rows become a note."""
    schema = features_of(names).arrow_schema
    for source in sources:
        tally = Tally()
        progress = Every(f"Reading {source.source}")
        buffer: list[tuple] = []
        rows = source.rows(tally, log_skipped=False)
        for row in rows:
            buffer.append(row)
            if len(buffer) == CHUNK_ROWS:
                yield _to_table(buffer, names, schema)
                buffer = []
                progress(tally.total)
        if buffer:
            yield _to_table(buffer, names, schema)
        if tally.bad:
            notes.append(["warning", f"{source.source}: {tally.describe_bad()}"])


def _to_table(rows: list[tuple], names: tuple[str, ...], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows))
    return pa.table({n: pa.array(col, schema.field(n).type) for n, col in zip(names, columns)})


def build_rows(spec: DataSpec, split: str, shape: str, hard_negatives: bool, out: Path) -> dict[str, Any]:
    """Reads the split's files into `out` in the loss's shape; returns the manifest's content."""
    sources = split_sources(spec, split)
    names = sources[0].names
    notes: list = []
    where = f"data={spec.name} ({split})"
    if is_identity(spec.kind, shape):
        writer = RowWriter(out, names)
        for table in _tables(sources, notes, names):
            writer.write(table)
        return {**writer.close(), "kind": spec.kind, "shape": shape, "notes": notes}
    # A conversion (NLI -> triplets, ...) needs the whole split: the rows go to a raw table first.
    from datasets.arrow_writer import ArrowWriter

    raw_path = out / "raw.arrow.tmp"
    raw = ArrowWriter(path=str(raw_path), features=features_of(names), writer_batch_size=CHUNK_ROWS)
    for table in _tables(sources, notes, names):
        raw.write_table(table)
    raw.finalize()
    source = datasets.Dataset.from_file(str(raw_path))
    plan = shape_plan(source, spec.kind, shape, hard_negatives, where)
    notes += [["info", n] for n in plan.notes]
    writer = RowWriter(out, tuple(plan.columns))
    for table in plan.chunks(CHUNK_ROWS):
        writer.write(table)
    del source, plan
    raw_path.unlink()
    return {**writer.close(), "kind": spec.kind, "shape": shape, "notes": notes}
