"""Texts picked from Arrow columns by row number, read a slice at a time: a corpus of a million
passages is a column in the cache and an index array, not a million Python strings."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from train.data.shapes import gather


class Texts(Sequence[str]):
    """`column[index[i]]` for each i: slicing gathers just that slice."""

    def __init__(self, column: pa.ChunkedArray | pa.Array, index: np.ndarray | None = None) -> None:
        self.column = column
        self.index = np.arange(len(column), dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)

    @staticmethod
    def of(columns: list[pa.ChunkedArray], index: np.ndarray | None = None) -> Texts:
        """Texts of several columns one after the other (row numbers run on from one to the next)."""
        return Texts(pa.chunked_array([c for col in columns for c in col.chunks], pa.string()), index)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return gather(self.column, self.index[key]).to_pylist()
        return gather(self.column, self.index[[key]]).to_pylist()[0]

    def take(self, rows: Any) -> list[str]:
        """The texts of these row numbers, gathered at once."""
        return gather(self.column, self.index[np.asarray(rows, dtype=np.int64)]).to_pylist()

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), 50_000):
            yield from self[start : start + 50_000]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)


def unique_first(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values in order of first occurrence: (the position of each one's first
    occurrence, and for every position the number of its value in that order)."""
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(first), dtype=np.int64)
    rank[order] = np.arange(len(first))
    return first[order], rank[inverse.reshape(-1)]


def column_hashes(column: pa.ChunkedArray) -> np.ndarray:
    """64-bit hashes of a text column's values, a chunk at a time."""
    from train.data.text_hash import hash64

    parts = [hash64(chunk.to_pylist()) for chunk in column.chunks]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)
