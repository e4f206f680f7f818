"""Hashes of texts: equal texts get equal hashes, so duplicates are found without keeping the texts.

64 bits where a collision would be a wrong answer (grouping NLI premises, counting repeated
rows); the sampler and the leak check keep the low 32 bits (4 bytes a text): a collision there
only defers a row to the next batch, or is checked against the texts themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import xxhash


def hash64(texts: Iterable[str]) -> np.ndarray:
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter((digest(t.encode("utf-8", "surrogatepass")) for t in texts), dtype=np.uint64)


def hash32(texts: Iterable[str]) -> np.ndarray:
    return hash64(texts).astype(np.uint32)


def pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Order-free keys of text pairs from their 32-bit hashes: (x, y) and (y, x) get the same key."""
    a, b = a.astype(np.uint64), b.astype(np.uint64)
    return (np.minimum(a, b) << np.uint64(32)) | np.maximum(a, b)


def combine(columns: list[np.ndarray]) -> np.ndarray:
    """One 64-bit hash of several aligned 64-bit hash columns (a row's hash from its fields')."""
    out = np.zeros(len(columns[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for c in columns:
            out = (out ^ c) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
            out ^= out >> np.uint64(29)
    return out
