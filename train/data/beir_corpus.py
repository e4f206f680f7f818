"""A BEIR `corpus.jsonl` in the data cache: read once into an Arrow file of ids and texts (a title
joined to its text), memory-mapped by every later run, with a sorted array of 64-bit id hashes for
lookups. It reads like the `dict[id, text]` it replaces (`CorpusTable` is a Mapping), so a corpus
of millions of passages costs a file in the cache and 16 bytes a passage of index in memory, not
millions of Python strings; search takes its texts as a column view (`texts`).

The cache entry is keyed by the file's path, size and modification time: an edited corpus is
read again. A bad line (not JSON, no `_id`, no string `text`) or an id given twice stops the
build with the file and line named.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from train.data import cache
from train.data.texts import Texts
from train.data.text_hash import hash64
from train.errors import DataError

log = logging.getLogger(__name__)

VERSION = 1
BATCH = 100_000  # lines a record batch


def passage(title: str | None, text: str) -> str:
    return f"{title} {text}" if title else text


class CorpusTable(Mapping[str, str]):
    """id -> passage text over the cached Arrow table."""

    def __init__(self, table: pa.Table, hashes: np.ndarray, rows: np.ndarray) -> None:
        self.ids = table.column("id")
        self.column = table.column("text")
        self.hashes, self.rows = hashes, rows  # sorted id hashes, and the row of each

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(Texts(self.ids))

    def row(self, cid: str) -> int | None:
        """The row of passage id `cid`, or None."""
        h = hash64([cid])[0]
        i = int(np.searchsorted(self.hashes, h))
        while i < len(self.hashes) and self.hashes[i] == h:  # equal hashes of other ids: compare the ids
            row = int(self.rows[i])
            if self.ids[row].as_py() == cid:
                return row
            i += 1
        return None

    def __getitem__(self, cid: str) -> str:
        row = self.row(cid)
        if row is None:
            raise KeyError(cid)
        return self.column[row].as_py()

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, str) and self.row(cid) is not None

    @property
    def texts(self) -> Texts:
        """Every passage, in file order, as a column view (search, BM25)."""
        return Texts(self.column)


def jsonl_records(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of a BEIR corpus.jsonl or queries.jsonl; a bad line is an error naming it."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line_no}: not JSON ({e.msg}).") from None
            if not isinstance(record, dict) or "_id" not in record or not isinstance(record.get("text"), str):
                raise DataError(f"{path}, line {line_no}: a record needs \"_id\" and a string \"text\".")
            yield line_no, record


def _records(path: Path) -> Iterator[tuple[int, str, str]]:
    for line_no, record in jsonl_records(path):
        yield line_no, str(record["_id"]), passage(record.get("title"), record["text"])


def _build(path: Path, out: Path) -> dict:
    schema = pa.schema([("id", pa.string()), ("text", pa.string())])
    hashes, lines = [], []
    with pa.OSFile(str(out / "corpus.arrow"), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        batch: list[tuple[int, str, str]] = []
        for record in _records(path):
            batch.append(record)
            if len(batch) == BATCH:
                _write(writer, schema, batch, hashes, lines)
                batch = []
        if batch:
            _write(writer, schema, batch, hashes, lines)
    all_hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    order = np.argsort(all_hashes, kind="stable")
    sorted_hashes = all_hashes[order]
    _refuse_repeated_ids(path, out, sorted_hashes, order, np.concatenate(lines) if lines else np.zeros(0, np.int64))
    np.save(out / "hashes.npy", sorted_hashes)
    np.save(out / "rows.npy", order.astype(np.int64))
    return {"rows": int(len(all_hashes))}


def _write(writer, schema: pa.Schema, batch: list[tuple[int, str, str]], hashes: list, lines: list) -> None:
    ids = [b[1] for b in batch]
    writer.write_batch(pa.record_batch([pa.array(ids, pa.string()), pa.array([b[2] for b in batch], pa.string())], schema=schema))
    hashes.append(hash64(ids))
    lines.append(np.asarray([b[0] for b in batch], dtype=np.int64))


def _refuse_repeated_ids(path: Path, out: Path, sorted_hashes: np.ndarray, order: np.ndarray, lines: np.ndarray) -> None:
    """An id given twice is an error naming both lines; equal hashes of different ids are fine."""
    same = np.nonzero(sorted_hashes[1:] == sorted_hashes[:-1])[0]
    if not len(same):
        return
    with pa.memory_map(str(out / "corpus.arrow")) as source:
        ids = pa.ipc.open_file(source).read_all().column("id")
        starts = same[np.r_[True, np.diff(same) > 1]]  # each run of equal hashes, from its first position
        for start in starts.tolist():
            end = start + 1
            while end < len(sorted_hashes) and sorted_hashes[end] == sorted_hashes[start]:
                end += 1
            seen: dict[str, int] = {}
            for row in sorted(int(r) for r in order[start:end]):
                cid = ids[row].as_py()
                if cid in seen:
                    raise DataError(f"{path}, line {lines[row]}: passage id {cid!r} appears twice (first on line {lines[seen[cid]]}); ids must be unique.")
                seen[cid] = row


def cached_corpus(path: str | Path, cache_dir: str | Path | None = None) -> CorpusTable:
    """The corpus.jsonl at `path` as a CorpusTable, from the cache (built on first use)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: not found (the passages of a BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")
    stat = path.stat()
    key = {"kind": "beir_corpus", "version": VERSION, "file": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    entry = cache.cached(cache.resolve_cache_dir(cache_dir), "corpus", key, lambda out: _build(path, out), what="BEIR corpus")
    table = pa.ipc.open_file(pa.memory_map(str(entry.path / "corpus.arrow"))).read_all()
    hashes = np.load(entry.path / "hashes.npy", mmap_mode="r")
    rows = np.load(entry.path / "rows.npy", mmap_mode="r")
    log.info("%s: %d passages, %s in %s", path, len(table), "read into the cache" if entry.built else "from the cache", entry.path)
    return CorpusTable(table, hashes, rows)
