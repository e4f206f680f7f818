"""Checks across the splits of a run: evaluation sets that cannot be scored, training rows that
also occur in dev/test (a leak that inflates the figures), duplicate training rows."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from train.errors import DataError

log = logging.getLogger("train")


def check_scorable(ds: datasets.Dataset, where: str) -> None:
    """An STS evaluation set must have at least two pairs and two different gold scores:
    otherwise Spearman/Pearson are undefined (NaN), and a NaN never improves best/."""
    scores = ds["score"]
    if len(scores) < 2 or len(set(scores)) < 2:
        found = f"all {len(scores)} gold scores are {scores[0]:g}" if scores else "it holds no pairs"
        raise DataError(
            f"{where}: cannot be scored, {found} (after rescaling to [0, 1]). Spearman and Pearson "
            "correlations need at least two pairs with different scores. Use an evaluation set with varied scores."
        )


def _pair_keys(ds: Any) -> list[tuple[str, str]] | None:
    """Each row's two texts, order-free (a pair and its swap are the same pair)."""
    for a, b in (("sentence1", "sentence2"), ("anchor", "positive")):
        if a in ds.column_names and b in ds.column_names:
            return [tuple(sorted(pair)) for pair in zip(ds[a], ds[b])]
    if "query" in ds.column_names:  # one (query, candidate) pair a candidate
        return [tuple(sorted((q, c))) for q, cs in zip(ds["query"], ds["candidates"]) for c in cs]
    return None


class _Columns(dict):
    """A batch of rows (column -> values) where _pair_keys expects a Dataset."""

    @property
    def column_names(self) -> list[str]:
        return list(self)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def report_overlap(train: Any, evaluation: Iterable[tuple[str, datasets.Dataset]]) -> None:
    """Logs how many training rows repeat an earlier row exactly, and how many training pairs also
    occur in each evaluation split. `train`: a Dataset, or a cached Corpus (its text hashes are
    matched, and only the matches are read and compared as texts)."""
    from train.data.corpus import Corpus

    if isinstance(train, Corpus):
        duplicates = train.duplicates if train.duplicates is not None else repeated_rows(train.dataset)
    else:
        rows = [tuple(map(_hashable, row)) for row in zip(*(train[c] for c in train.column_names))]
        duplicates = len(rows) - len(set(rows))
    if duplicates:
        log.info("train: %d of %d rows repeat an earlier row exactly", duplicates, len(train))
    for name, ds in evaluation:
        keys = _pair_keys(ds)
        if keys is None:
            continue
        leaked, shared = _leaks(train, set(keys))
        if leaked:
            example = " / ".join(next(iter(shared)))
            log.warning(
                "%d train rows (%d distinct pairs) also occur in %s, e.g. %r: the %s figures overstate how well "
                "the model does on unseen pairs.", leaked, len(shared), name, example, name,
            )


def repeated_rows(ds: datasets.Dataset) -> int:
    from train.data.corpus import row_hashes

    hashes = [row_hashes(pa.Table.from_batches([b])) for b in ds.data.table.to_batches(100_000)]
    every = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
    return int(len(every) - len(np.unique(every)))


def _leaks(train: Any, keys: set[tuple[str, str]]) -> tuple[int, set[tuple[str, str]]]:
    """(train pairs whose texts are an evaluation pair, the distinct pairs they are)."""
    from train.data.corpus import Corpus
    from train.data.text_hash import hash32, pair_keys

    columns = next((p for p in (("sentence1", "sentence2"), ("anchor", "positive")) if set(p) <= set(train.column_names)), None)
    if not isinstance(train, Corpus):
        train_keys = _pair_keys(train) or []
        shared = set(train_keys) & keys
        return sum(k in shared for k in train_keys), shared
    if columns is None:  # query with candidates: one pair a candidate, checked a chunk of rows at a time
        leaked, shared = 0, set()
        for chunk in train.dataset.iter(batch_size=10_000):
            for key in _pair_keys(_Columns(chunk)) or []:
                if key in keys:
                    leaked += 1
                    shared.add(key)
        return leaked, shared
    # Hash keys first (8 bytes a row, a million rows at a time); texts only for the matches.
    wanted = np.unique(pair_keys(hash32(a for a, _ in keys), hash32(b for _, b in keys)))
    i, j = (train.text_columns.index(c) for c in columns)
    leaked, shared = 0, set()
    for start in range(0, len(train), 1 << 20):
        h = np.asarray(train.hashes[start : start + (1 << 20)])
        k = pair_keys(h[:, i], h[:, j])
        at = np.minimum(np.searchsorted(wanted, k), len(wanted) - 1)
        for row in (np.flatnonzero(wanted[at] == k) + start).tolist():
            found = train.dataset[row]
            pair = tuple(sorted(found[c] for c in columns))
            if pair in keys:
                leaked += 1
                shared.add(pair)
    return leaked, shared


def check_batch_fits(rows: int, batch_size: int, num_processes: int, batches: int) -> None:
    """Refuses a (global) batch larger than the training set: a step would be short or never happen."""
    step = batch_size * num_processes
    if step > rows or batches == 0:
        per = f"trainer.batch_size={batch_size}" + (f" × {num_processes} processes = {step} rows a step" if num_processes > 1 else "")
        raise DataError(
            f"{per}, but the training set has {rows} rows{' usable for a full step' if step <= rows else ''}. "
            "Lower trainer.batch_size or train on more data."
        )
