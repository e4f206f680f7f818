"""Checks across the splits of a run: evaluation sets that cannot be scored, training rows that
also occur in dev/test (a leak that inflates the figures), duplicate training rows."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import datasets

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


def _pair_keys(ds: datasets.Dataset) -> list[tuple[str, str]] | None:
    """Each row's two texts, order-free (a pair and its swap are the same pair)."""
    for a, b in (("sentence1", "sentence2"), ("anchor", "positive")):
        if a in ds.column_names and b in ds.column_names:
            return [tuple(sorted(pair)) for pair in zip(ds[a], ds[b])]
    return None


def report_overlap(train: datasets.Dataset, evaluation: Iterable[tuple[str, datasets.Dataset]]) -> None:
    """Logs how many training pairs also occur in each evaluation split, and how many training
    rows repeat an earlier row exactly."""
    # Query-with-candidates rows hold lists (candidates, labels): compared as tuples.
    rows = list(zip(*([tuple(v) if isinstance(v, list) else v for v in train[c]] for c in train.column_names)))
    duplicates = len(rows) - len(set(rows))
    if duplicates:
        log.info("train: %d of %d rows repeat an earlier row exactly", duplicates, len(rows))
    train_keys = _pair_keys(train)
    for name, ds in evaluation:
        keys = _pair_keys(ds)
        if train_keys is None or keys is None:
            continue
        shared = set(train_keys) & set(keys)
        leaked = sum(k in shared for k in train_keys)
        if leaked:
            example = " / ".join(next(iter(shared)))
            log.warning(
                "%d train rows (%d distinct pairs) also occur in %s, e.g. %r: the %s figures overstate how well "
                "the model does on unseen pairs.", leaked, len(shared), name, example, name,
            )


def check_batch_fits(rows: int, batch_size: int, num_processes: int, batches: int) -> None:
    """Refuses a (global) batch larger than the training set: a step would be short or never happen."""
    step = batch_size * num_processes
    if step > rows or batches == 0:
        per = f"trainer.batch_size={batch_size}" + (f" × {num_processes} processes = {step} rows a step" if num_processes > 1 else "")
        raise DataError(
            f"{per}, but the training set has {rows} rows{' usable for a full step' if step <= rows else ''}. "
            "Lower trainer.batch_size or train on more data."
        )
