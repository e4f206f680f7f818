"""Embedding a corpus into a file and searching it: one copy of the vectors, however large.

Corpus vectors (unit length, float32: cosine = inner product) are written chunk by chunk into the
data cache, keyed by the model's weights and the texts, so a later `train.mine` or
`train.retrieve` with the same model and corpus reads them instead of embedding again. Nothing
holds them twice: the search index is either faiss's exact inner-product index (`faiss-cpu`,
when installed), filled chunk by chunk from the file, or the file itself, memory-mapped, which
torch searches in chunks with a running top k. Both are exact; faiss is faster on a CPU.
`search.precision=int8|ubinary` searches quantized codes instead, rescored against the float32
file (train.evaluation.quantized).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("train")

EMBED_CHUNK = 50_000  # texts tokenized and embedded at a time
QUERY_BATCH = 4096  # queries searched at a time
DOC_CHUNK = 65_536  # corpus rows a torch search step scores


def model_fingerprint(model: torch.nn.Module) -> str:
    """What makes two models embed alike: every weight and buffer, and the modules' settings
    (pooling, normalization, max_seq_length)."""
    import xxhash

    h = xxhash.xxh3_128()
    h.update(str(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    import xxhash

    h = xxhash.xxh3_128()
    for start in range(0, len(texts), EMBED_CHUNK):
        for t in texts[start : start + EMBED_CHUNK]:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
    return f"{h.hexdigest()}-{len(texts)}"


@dataclass(frozen=True)
class Vectors:
    """Unit-length float32 vectors in a file, row after row."""

    path: Path
    rows: int
    dim: int

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop, read (not mapped): a chunk in memory, freed when dropped."""
        stop = min(stop, self.rows)
        with open(self.path, "rb") as f:
            f.seek(start * self.dim * 4)
            return np.fromfile(f, dtype=np.float32, count=(stop - start) * self.dim).reshape(-1, self.dim)

    def mapped(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.rows, self.dim))


def embed(model: Any, texts: Sequence[str], batch_size: int, prompt: str | None = None) -> np.ndarray:
    """Unit-length float32 embeddings of a few texts (queries), in memory."""
    from train.evaluation.encode import encode

    return _unit(encode(model, list(texts), batch_size, prompt=prompt))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_to_file(model: Any, texts: Sequence[str], path: Path, batch_size: int, what: str = "corpus", prompt: str | None = None) -> None:
    """Embeds `texts` (any sequence that slices into lists of str) chunk by chunk into `path`."""
    from train.evaluation.encode import encode
    from train.evaluation.bars import ProgressLog

    progress = ProgressLog(f"Embedding the {what}", len(texts), "texts")
    with open(path, "wb") as f:
        for start in range(0, len(texts), EMBED_CHUNK):
            f.write(_unit(encode(model, list(texts[start : start + EMBED_CHUNK]), batch_size, prompt=prompt)).astype(np.float32).tobytes())
            progress(min(start + EMBED_CHUNK, len(texts)))


def cached_vectors(
    model: Any, texts: Sequence[str], cache_root: Path, batch_size: int, what: str = "corpus", prompt: str | None = None
) -> tuple[Vectors, float, bool]:
    """The texts' vectors from the cache (embedded now if missing), the seconds embedding them
    took (now, or when the entry was built) and whether they were found in the cache."""
    from train.data import cache

    dim = model.get_embedding_dimension()
    key = {"what": "vectors", "model": model_fingerprint(model), "texts": texts_fingerprint(texts), "dim": dim, **({"prompt": prompt} if prompt else {})}

    def build(out: Path) -> dict[str, Any]:
        started = time.perf_counter()
        embed_to_file(model, texts, out / "vectors.f32", batch_size, what, prompt)
        return {"rows": len(texts), "dim": dim, "embed_seconds": time.perf_counter() - started}

    entry = cache.cached(cache_root, "vectors", key, build, what=f"{what} embeddings")
    seconds = entry.manifest["embed_seconds"]
    log.info("%s embeddings (%s texts): %s, cached in %s", what.capitalize(), f"{len(texts):,}",
             f"embedded in {seconds:.1f} s" if entry.built else f"reused (embedded in {seconds:.1f} s)", entry.path)
    return Vectors(entry.file("vectors.f32"), len(texts), dim), seconds, not entry.built


def search_settings(search: Any) -> dict[str, Any]:
    """A composed `search` config section as Index's keyword arguments."""
    return {"backend": search.backend.value, "precision": search.precision.value, "rescore": bool(search.rescore),
            "rescore_multiplier": int(search.rescore_multiplier)}


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class Index:
    """Search over `vectors`. backend: "faiss", "torch" or "auto" (faiss when installed).
    precision float32: exact inner product. int8 or ubinary: the quantized codes (from the data
    cache under `cache_root`) held in memory, each query's rescore_multiplier × k best by them
    rescored against the float32 vectors when `rescore` (train.evaluation.quantized)."""

    def __init__(self, vectors: Vectors, backend: str = "auto", precision: str = "float32", rescore: bool = True,
                 rescore_multiplier: int = 4, cache_root: Path | None = None) -> None:
        if backend == "auto":
            backend = "faiss" if faiss_available() else "torch"
        if backend == "faiss" and not faiss_available():
            from train.errors import ConfigError

            raise ConfigError("search.backend=faiss needs faiss: pip install faiss-cpu (or -e '.[faiss]'), or search.backend=torch.")
        self.backend, self.vectors, self.precision = backend, vectors, precision
        self.rescore, self.rescore_multiplier = rescore, rescore_multiplier
        self.quantized = None
        if precision != "float32":
            from train.evaluation.quantized import QuantizedSearch, cached_codes

            if cache_root is None:
                raise ValueError("a quantized Index needs the cache_root its codes are kept in")
            self.quantized = QuantizedSearch(cached_codes(vectors, precision, cache_root), backend)
            self.mapped = vectors.mapped() if vectors.rows else None  # mapped once: rescoring reads from it every query
        elif backend == "faiss":
            import faiss

            self.index = faiss.IndexFlatIP(vectors.dim)
            for start in range(0, vectors.rows, DOC_CHUNK):
                self.index.add(vectors.read(start, start + DOC_CHUNK))
        elif vectors.rows:
            with warnings.catch_warnings():  # read-only memory: the search only reads it
                warnings.simplefilter("ignore", UserWarning)
                self.matrix = torch.from_numpy(vectors.mapped())
        else:
            self.matrix = torch.zeros(0, vectors.dim)

    @property
    def bytes_per_passage(self) -> int:
        """What a passage costs the index: its float32 vector (held by faiss, memory-mapped by
        torch), or its codes."""
        return self.quantized.codes.row_bytes if self.quantized is not None else 4 * self.vectors.dim

    def describe(self) -> dict[str, Any]:
        """The search as run, for a report."""
        out: dict[str, Any] = {"backend": self.backend, "precision": self.precision, "bytes_per_passage": self.bytes_per_passage,
                               "index_mb_per_million_passages": round(self.bytes_per_passage * 1e6 / 2**20, 1)}
        if self.quantized is not None:
            out |= {"rescore": self.rescore, "rescore_multiplier": self.rescore_multiplier if self.rescore else None}
        return out

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each query's k best (scores, row ids), best first; rows past the corpus are -inf / -1."""
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        depth = min(k, self.vectors.rows)
        if depth == 0:
            return scores, ids
        for start in range(0, len(queries), QUERY_BATCH):
            q = np.ascontiguousarray(queries[start : start + QUERY_BATCH], dtype=np.float32)
            s, i = self._search(q, depth)
            scores[start : start + len(q), :depth], ids[start : start + len(q), :depth] = s, i
        return scores, ids

    def _search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.quantized is not None:
            from train.evaluation.quantized import rescore

            if not self.rescore:
                return self.quantized.search(q, k)
            _, candidates = self.quantized.search(q, min(k * self.rescore_multiplier, self.vectors.rows))
            return rescore(self.mapped, q, candidates, k)
        if self.backend == "faiss":
            return self.index.search(q, k)
        query = torch.from_numpy(q)
        best_s = torch.empty(len(q), 0)
        best_i = torch.empty(len(q), 0, dtype=torch.long)
        with torch.inference_mode():
            for start in range(0, self.vectors.rows, DOC_CHUNK):
                s = query @ self.matrix[start : start + DOC_CHUNK].T
                top = torch.topk(s, min(k, s.shape[1]), dim=1)
                merged_s = torch.cat([best_s, top.values], dim=1)
                merged_i = torch.cat([best_i, top.indices + start], dim=1)
                keep = torch.topk(merged_s, min(k, merged_s.shape[1]), dim=1)
                best_s, best_i = keep.values, merged_i.gather(1, keep.indices)
        return best_s.numpy(), best_i.numpy()


def gather(vectors: Vectors, rows: np.ndarray) -> np.ndarray:
    """Some rows of a vector file (a query's positives), read where they are."""
    if len(rows) == 0:
        return np.zeros((0, vectors.dim), np.float32)
    mapped = vectors.mapped()
    return np.asarray(mapped[np.asarray(rows, dtype=np.int64)])

