"""The token cache: a corpus tokenized once per (tokenizer, max_seq_length), on disk, memory-mapped.

Two layouts, one per kind of model input:
- `columns` (bi-encoder): `ids_<column>` for each text column, each text on its own;
- `pairs` (cross-encoder): `pair_ids` (and `pair_types` where the model takes token type ids),
  one token list for each (first text, second text) pair a row holds, as the model's own
  `preprocess` would tokenize it ([CLS] a [SEP] b [SEP], longest-first truncation).
Beside them, `length.bin` holds each row's longest sequence (for the length-bucketed sampler).

Tokenization runs over the corpus's shards in `num_proc` processes (each writes its own shard
file); with one process, or one shard, in this process, where the fast tokenizer's own threads
use the cores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from train.data import cache
from train.data.corpus import CHUNK_ROWS, Corpus, Every

log = logging.getLogger("train")


def row_pairs(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The (first text, second text) pairs one canonical row holds, whatever its shape."""
    if "query" in row:
        return [(row["query"], c) for c in row["candidates"]]
    if "anchor" in row:
        from train.data.batching import ordered_text_columns

        return [(row["anchor"], row[c]) for c in ordered_text_columns(row) if c not in ("anchor", "sentence1", "sentence2") and row.get(c) is not None]
    return [(row["sentence1"], row["sentence2"])]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What makes two tokenizers give the same ids: the backend's definition (vocabulary,
    normalizer, special tokens, post-processor) without its truncation and padding state, which
    each call sets anew."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        definition.pop("truncation", None)
        definition.pop("padding", None)
        text = json.dumps(definition, sort_keys=True)
    else:
        from datasets.fingerprint import Hasher

        text = Hasher.hash(tokenizer)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{text}".encode()).hexdigest()[:24]


def id_type(tokenizer: Any) -> pa.DataType:
    # Half the disk and page cache of int32 for vocabularies up to 65,536 (BERT, RoBERTa, MiniLM).
    return pa.uint16() if len(tokenizer) <= 1 << 16 else pa.int32()


@dataclass
class Tokens:
    dataset: datasets.Dataset  # the token columns, memory-mapped, one row a corpus row
    lengths: np.ndarray  # each row's longest sequence (memory-mapped)
    entry: cache.Entry


def token_table(corpus: Corpus, tokenizer: Any, max_length: int, layout: str, prompts: dict[str, str] | None = None) -> Tokens:
    """The corpus's tokens (built if missing). `layout`: "columns" or "pairs". `prompts`: column ->
    text put before each of its texts (the `columns` layout)."""
    prompts = dict(prompts or {})
    types = layout == "pairs" and "token_type_ids" in tokenizer.model_input_names
    key = {
        "what": "tokens",
        "rows": corpus.key,
        "n": len(corpus),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "layout": layout,
        "token_types": types,
        **({"prompts": prompts} if prompts else {}),
    }
    tasks = pieces(corpus.shards, len(corpus), corpus.settings.num_proc)
    workers = min(corpus.settings.num_proc, len(tasks))

    def build(out: Path) -> dict[str, Any]:
        progress = Every(f"Tokenizing {len(corpus):,} rows")
        args = [(path, start, stop, i, tokenizer, max_length, layout, types, str(out), prompts) for i, (path, start, stop) in enumerate(tasks)]
        if workers > 1:
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
                results = []
                for result in pool.map(_tokenize_shard, *zip(*args)):
                    results.append(result)
                    progress(sum(len(r[1]) for r in results), len(corpus))
        else:
            results = [_tokenize_shard(*a) for a in args]
        lengths = np.concatenate([r[1] for r in results]) if results else np.zeros(0, np.int32)
        dtype = np.uint16 if max_length < 1 << 16 else np.int32
        lengths.astype(dtype).tofile(out / "length.bin")
        return {"shards": [r[0] for r in results], "rows": len(lengths), "length_dtype": np.dtype(dtype).name,
                "real_tokens": int(lengths.sum()), "workers": workers}

    entry = cache.cached(corpus.settings.root, "tokens", key, build, what="token")
    m = entry.manifest
    parts = [datasets.Dataset.from_file(str(entry.file(name))) for name in m["shards"]]
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    lengths = np.memmap(entry.file("length.bin"), dtype=m["length_dtype"], mode="r") if m["rows"] else np.zeros(0, np.uint16)
    log.info(
        "Tokens (%s, max_seq_length %d): %s, cached in %s",
        layout, max_length, f"tokenized in {m['build_seconds']:.1f} s by {m['workers']} process(es)" if entry.built else "reused", entry.path,
    )
    return Tokens(dataset, lengths, entry)


MIN_PIECE_ROWS = 50_000  # below this a process costs more to start than it saves


def pieces(shards: list[tuple[Path, int]], rows: int, num_proc: int) -> list[tuple[Path, int, int]]:
    """(shard file, first row, end row) pieces that cover the first `rows` rows: about two a
    process (so that none waits long for the last), none across shards, none much shorter than
    MIN_PIECE_ROWS unless its shard is; cut at whole record batches."""
    size = max(MIN_PIECE_ROWS, -(-rows // (2 * num_proc)))
    out, left = [], rows
    for path, count in shards:
        take = min(count, left)
        n = max(1, take // size)
        cuts = [round(k * take / n / CHUNK_ROWS) * CHUNK_ROWS for k in range(n)] + [take]
        out += [(path, a, b) for a, b in zip(cuts, cuts[1:]) if b > a]
        left -= take
        if left <= 0:
            break
    return out


def _worker_init() -> None:
    # One process a core: the tokenizer's own thread pool would only oversubscribe them.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _tokenize_shard(
    path: Path, start: int, stop: int, index: int, tokenizer: Any, max_length: int, layout: str, types: bool, out: str,
    prompts: dict[str, str] | None = None,
) -> tuple[str, np.ndarray]:
    """Tokenizes rows start..stop of one corpus shard into tokens-<index>.arrow; returns its name
    and the rows' lengths. Reads the shard as a stream (not mapped): memory stays flat."""
    from datasets.arrow_writer import ArrowWriter

    name = f"tokens-{index:05d}.arrow"
    writer: Any = None
    lengths = []
    seen = 0  # rows of the shard passed so far
    backend: Any = None
    with pa.OSFile(str(path)) as f:
        reader = pa.ipc.open_stream(f)
        for batch in reader:
            seen += batch.num_rows
            if seen <= start:
                continue
            if seen - batch.num_rows >= stop:
                break
            first = max(start - (seen - batch.num_rows), 0)
            batch = batch.slice(first, min(stop, seen) - (seen - batch.num_rows) - first)
            if backend is None:
                backend = fast_backend(tokenizer, max_length, batch.slice(0, 64).to_pydict(), layout, types, prompts) or False
            columns, length = encode(batch.to_pydict(), tokenizer, max_length, layout, types, backend or None, prompts)
            table = pa.table(columns)
            if writer is None:
                writer = ArrowWriter(path=str(Path(out) / name), schema=table.schema, writer_batch_size=CHUNK_ROWS)
            writer.write_table(table)
            lengths.append(length)
    writer.finalize()
    return name, np.concatenate(lengths)


def fast_backend(tokenizer: Any, max_length: int, sample: dict[str, list], layout: str, types: bool, prompts: dict[str, str] | None = None) -> Any:
    """The fast tokenizer's Rust backend, truncating at max_length: 30% faster than the Python call
    it sits under. Used only where it gives the call's own ids on `sample`; else None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    copy = Tokenizer.from_str(backend.to_str())
    copy.enable_truncation(max_length)
    copy.no_padding()
    ours, _ = encode(sample, tokenizer, max_length, layout, types, copy, prompts)
    theirs, _ = encode(sample, tokenizer, max_length, layout, types, None, prompts)
    return copy if all(ours[k].equals(theirs[k]) for k in theirs) else None


def _call(tokenizer: Any, backend: Any, first: list[str], second: list[str] | None, types: bool, max_length: int) -> tuple[list, list | None]:
    """(input_ids, token_type_ids or None) of texts or text pairs."""
    if backend is not None:
        encoded = backend.encode_batch_fast(first if second is None else list(zip(first, second)))
        return [e.ids for e in encoded], [e.type_ids for e in encoded] if types else None
    out = tokenizer(first, second, truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=types)
    return out["input_ids"], out["token_type_ids"] if types else None


def encode(
    rows: dict[str, list], tokenizer: Any, max_length: int, layout: str, types: bool, backend: Any = None,
    prompts: dict[str, str] | None = None,
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """Token columns of a batch of canonical rows (column -> values), and each row's longest
    sequence. `backend`: fast_backend's, or None for the tokenizer's own call."""
    ids = pa.list_(id_type(tokenizer))
    if layout == "columns":
        from train.data.batching import ordered_text_columns

        out, length = {}, None
        for c in ordered_text_columns(rows):
            texts = rows[c]
            if prompts and prompts.get(c):
                texts = [prompts[c] + t for t in texts]
            encoded, _ = _call(tokenizer, backend, texts, None, False, max_length)
            out[f"ids_{c}"] = pa.array(encoded, ids)
            n = np.fromiter(map(len, encoded), np.int32, len(encoded))
            length = n if length is None else np.maximum(length, n)
        return out, length
    names = list(rows)
    count = len(rows[names[0]])
    per_row = [row_pairs({k: rows[k][i] for k in names}) for i in range(count)]
    flat = [p for pairs in per_row for p in pairs]
    encoded, token_types = _call(tokenizer, backend, [a for a, _ in flat], [b for _, b in flat], types, max_length)
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in per_row])]).astype(np.int32)
    out = {"pair_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(encoded, ids))}
    if types:
        out["pair_types"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(token_types, pa.list_(pa.uint8())))
    n = np.fromiter(map(len, encoded), np.int32, len(flat))
    length = np.maximum.reduceat(n, offsets[:-1]) if len(n) else np.zeros(count, np.int32)
    return out, length
