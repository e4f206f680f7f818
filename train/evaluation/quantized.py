"""Quantized corpus vectors and their search (search.precision=int8|ubinary).

The codes are sentence-transformers' `quantize_embeddings` of the float32 corpus vectors: int8
with per-dimension ranges (the corpus's own minimum and maximum, found in one pass over the vector
file) or ubinary (the sign of each dimension, packed 8 to a byte). They are written chunk by chunk
into the data cache next to the float32 file they come from, so a later run loads them instead of
quantizing again, and they are what the index holds in memory: a passage costs `dim` bytes (int8)
or `dim / 8` bytes (ubinary) instead of `4 × dim`.

A search returns `rescore_multiplier × k` candidates by the quantized scores, then rescores them
with the float32 query against the float32 corpus vectors (read from the memory-mapped file, only
the candidates' rows), as `semantic_search_faiss` does: the order within the top k is exact and
only a passage the quantized search missed is lost.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PRECISIONS = ("float32", "int8", "ubinary")
QUANTIZE_CHUNK = 65_536  # corpus rows quantized (and scored by torch) at a time
RESCORE_QUERIES = 256  # queries whose candidates are rescored at a time
FEW_QUERIES = 8  # torch backend: up to this many queries a call are searched by XOR and popcount, more by a ±1 matmul
HAMMING_CHUNK = 1 << 20  # rows XORed at a time
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class Codes:
    """A corpus's quantized vectors: `path` holds them row after row (`row_bytes` a row)."""

    path: Path
    precision: str
    rows: int
    dim: int
    ranges: np.ndarray | None  # int8: (2, dim) minimum and maximum; ubinary: None

    @property
    def row_bytes(self) -> int:
        return self.dim if self.precision == "int8" else (self.dim + 7) // 8

    def load(self) -> np.ndarray:
        dtype = np.int8 if self.precision == "int8" else np.uint8
        return np.fromfile(self.path, dtype=dtype).reshape(self.rows, self.row_bytes)


def corpus_ranges(vectors: Any) -> np.ndarray:
    """Each dimension's minimum and maximum over every corpus vector: int8's calibration, from the
    corpus itself (quantize_embeddings' default when no calibration set is given)."""
    low = np.full(vectors.dim, np.inf, dtype=np.float32)
    high = np.full(vectors.dim, -np.inf, dtype=np.float32)
    for start in range(0, vectors.rows, QUANTIZE_CHUNK):
        chunk = vectors.read(start, start + QUANTIZE_CHUNK)
        low, high = np.minimum(low, chunk.min(axis=0)), np.maximum(high, chunk.max(axis=0))
    return np.stack([low, high])


def write_codes(vectors: Any, precision: str, path: Path) -> np.ndarray | None:
    """Quantizes the vector file into `path`, chunk by chunk; returns int8's ranges."""
    from sentence_transformers.util.quantization import quantize_embeddings

    ranges = corpus_ranges(vectors) if precision == "int8" and vectors.rows else None
    with open(path, "wb") as f:
        for start in range(0, vectors.rows, QUANTIZE_CHUNK):
            chunk = vectors.read(start, start + QUANTIZE_CHUNK)
            f.write(quantize_embeddings(chunk, precision=precision, ranges=ranges).tobytes())
    return ranges


def cached_codes(vectors: Any, precision: str, cache_root: Path) -> Codes:
    """The vector file's codes from the data cache under `cache_root` (quantized now if missing)."""
    from train.data import cache

    # The float32 entry's folder is named by its own key (model, texts, prompt): the codes follow it.
    key = {"what": "quantized", "vectors": vectors.path.parent.name, "rows": vectors.rows, "dim": vectors.dim, "precision": precision}

    def build(out: Path) -> dict[str, Any]:
        ranges = write_codes(vectors, precision, out / "codes.bin")
        return {"ranges": ranges.tolist() if ranges is not None else None}

    entry = cache.cached(cache_root, "quantized", key, build, what=f"{precision} corpus codes")
    ranges = entry.manifest.get("ranges")
    return Codes(entry.file("codes.bin"), precision, vectors.rows, vectors.dim, np.asarray(ranges, dtype=np.float32) if ranges else None)


class QuantizedSearch:
    """Search over a corpus's codes, held in memory. faiss: ubinary by Hamming distance (its binary
    flat index), int8 by the float query against the dequantized codes (its 8-bit scalar
    quantizer, given these codes and ranges: its decoding equals the library's dequantization).
    torch: the same scores; a few queries of ubinary by XOR and popcount, otherwise a chunk of codes
    turned into floats at a time, which pays off for batches (use faiss for int8 latency)."""

    def __init__(self, codes: Codes, backend: str) -> None:
        self.codes, self.backend = codes, backend
        data = codes.load()
        self.index = self.data = None
        steps = None
        if codes.ranges is not None:
            steps = (codes.ranges[1] - codes.ranges[0]) / 255
            steps = np.where(steps == 0, 1, steps).astype(np.float32)
        if backend == "faiss":
            import faiss

            if codes.precision == "ubinary":
                self.index = faiss.IndexBinaryFlat(codes.row_bytes * 8)
            else:
                # faiss decodes code c as vmin + (c + 0.5) / 255 × vdiff: these make it ranges[0] + c × step.
                self.index = faiss.IndexScalarQuantizer(codes.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
                if steps is not None:
                    trained = np.concatenate([codes.ranges[0] - 0.5 * steps, 255 * steps]).astype(np.float32)
                    faiss.copy_array_to_vector(trained, self.index.sq.trained)
                self.index.is_trained = True
            if codes.rows:
                if codes.precision == "ubinary":
                    self.index.add(data)
                else:
                    self.index.add_sa_codes((data.astype(np.int16) + 128).astype(np.uint8))
        else:
            self.data = data
            if steps is not None:
                self.starts, self.steps = torch.from_numpy(codes.ranges[0].astype(np.float32)), torch.from_numpy(steps)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's k best (approximate scores, row ids), best first. ubinary's score is the
        cosine of the sign vectors, 1 - 2 × Hamming distance / dim."""
        if self.index is not None:
            if self.codes.precision == "int8":
                return self.index.search(q, k)
            from sentence_transformers.util.quantization import quantize_embeddings

            distances, ids = self.index.search(quantize_embeddings(q, precision="ubinary"), k)
            return (1.0 - 2.0 * distances / self.codes.dim).astype(np.float32), ids
        if self.codes.precision == "ubinary" and len(q) <= FEW_QUERIES:
            return self._hamming(q, k)
        query = torch.from_numpy(q)
        if self.codes.precision == "ubinary":
            query = torch.where(query > 0, 1.0, -1.0)
        best_s, best_i = torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.long)
        with torch.inference_mode():
            for start in range(0, self.codes.rows, QUANTIZE_CHUNK):
                s = query @ self._floats(start, start + QUANTIZE_CHUNK).T
                top = torch.topk(s, min(k, s.shape[1]), dim=1)
                merged_s, merged_i = torch.cat([best_s, top.values], dim=1), torch.cat([best_i, top.indices + start], dim=1)
                keep = torch.topk(merged_s, min(k, merged_s.shape[1]), dim=1)
                best_s, best_i = keep.values, merged_i.gather(1, keep.indices)
        if self.codes.precision == "ubinary":
            best_s = best_s / self.codes.dim
        return best_s.numpy(), best_i.numpy()

    def _hamming(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """A few queries (one at a time, as a service meets them): Hamming distance by XOR and a
        popcount table over the packed codes, no unpacking; ties go to the lower row."""
        from sentence_transformers.util.quantization import quantize_embeddings

        packed = quantize_embeddings(q, precision="ubinary")
        scores, ids = np.empty((len(q), k), np.float32), np.empty((len(q), k), np.int64)
        for i, code in enumerate(packed):
            distance = np.concatenate([POPCOUNT[self.data[start : start + HAMMING_CHUNK] ^ code].sum(axis=1, dtype=np.int32)
                                       for start in range(0, self.codes.rows, HAMMING_CHUNK)])
            part = np.argpartition(distance, k - 1)[:k] if k < len(distance) else np.arange(len(distance))
            order = part[np.lexsort((part, distance[part]))]
            scores[i], ids[i] = 1.0 - 2.0 * distance[order] / self.codes.dim, order
        return scores, ids

    def _floats(self, start: int, stop: int) -> torch.Tensor:
        chunk = self.data[start:stop]
        if self.codes.precision == "ubinary":
            bits = np.unpackbits(chunk, axis=1)[:, : self.codes.dim]
            return torch.from_numpy(bits).float() * 2 - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return (torch.from_numpy(chunk).float() + 128) * self.steps + self.starts


def rescore(mapped: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The candidates `ids` (each query's, at most the corpus: never padded) rescored by the float32
    query against their float32 vectors; each query's k best (cosines, ids). A block of queries at
    a time: their candidates' vectors are the only float32 rows read from `mapped`, the
    memory-mapped float32 file."""
    scores = np.empty(ids.shape, dtype=np.float32)
    for start in range(0, len(ids), RESCORE_QUERIES):
        block = ids[start : start + RESCORE_QUERIES]
        flat, position = np.unique(block, return_inverse=True)
        docs = np.asarray(mapped[flat])[position.reshape(block.shape)]
        scores[start : start + len(block)] = np.einsum("qd,qkd->qk", q[start : start + len(block)], docs)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
