"""Records -> checked rows: what a record must hold to become a row, and what a bad one costs.

A row is a tuple of canonical column values (`sentence1`, `sentence2`, `score` in [0, 1], ...).
The field checks here (`sentence`, `score`, `lookup`, ...) raise `BadRow`; `checked_rows` turns
that into an error naming the file, the place and the problem, or skips and counts the row
(data.on_bad_row=skip). A `RowSource` is one file's (or Hub split's) checked rows, read lazily.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from train.data.formats import BadRecord
from train.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Columns:
    sentence1: str = "sentence1"
    sentence2: str = "sentence2"
    score: str = "score"


@dataclass(frozen=True)
class ScoreRange:
    low: float = 0.0
    high: float = 5.0

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise DataError(f"data.score_max ({self.high}) must be greater than data.score_min ({self.low}).")


class BadRow(Exception):
    """One record that cannot be a row; the message says why."""


def lookup(record: Any, dotted: str) -> Any:
    value = record
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise BadRow(f"missing field {dotted!r}")
    return value


def sentence(record: Any, column: str) -> str:
    value = lookup(record, column)
    if value is None:
        raise BadRow(f"missing field {column!r}")
    if not isinstance(value, str):
        raise BadRow(f"field {column!r} is not text ({value!r})")
    if not value.strip():
        raise BadRow(f"empty sentence in {column!r}")
    return value


def nonempty(text: str, column: str) -> str:
    if not text.strip():
        raise BadRow(f"empty sentence in {column!r}")
    return text


def score(value: Any, column: str, scores: ScoreRange) -> float:
    """A gold score on the data's scale, rescaled to [0, 1]."""
    if value is None or isinstance(value, bool):
        raise BadRow(f"score {column!r} is not a number ({value!r})")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRow(f"score {column!r} is not a number ({value!r})") from None
    if number != number:  # NaN
        raise BadRow(f"score {column!r} is not a number ({value!r})")
    if not scores.low <= number <= scores.high:
        raise BadRow(
            f"score {number:g} is outside [{scores.low:g}, {scores.high:g}] "
            "(set data.score_min/data.score_max to your scale)"
        )
    return (number - scores.low) / (scores.high - scores.low)


def plain_number(value: Any, column: str) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise BadRow(f"score in {column!r} is not a number ({value!r})")
    return float(value)


def text_list(record: Any, column: str, allow_single: bool) -> list[str]:
    value = lookup(record, column)
    if allow_single and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise BadRow(f"field {column!r} is not a list of texts ({value!r})")
    for text in value:
        if not isinstance(text, str) or not text.strip():
            raise BadRow(f"field {column!r} holds {text!r}, not a non-empty text")
    return value


# The Arrow type of each canonical column: what the in-memory Dataset and the cache both hold.
_STRING = datasets.Value("string")
FEATURES: dict[str, Any] = {
    **{name: _STRING for name in ("sentence1", "sentence2", "anchor", "positive", "negative", "query", "text")},
    "score": datasets.Value("float32"),
    "label": datasets.Value("int64"),
    "candidates": datasets.List(_STRING),
    "labels": datasets.List(datasets.Value("float64")),
    # n-tuples from scored candidates: the teacher's score of the positive, then of each negative.
    "scores": datasets.List(datasets.Value("float32")),
}


def feature_of(name: str) -> Any:
    """A canonical column's Arrow type; negative_1, negative_2, ... (n-tuples) are texts."""
    if name not in FEATURES and name.startswith("negative_") and name[len("negative_"):].isdigit():
        return _STRING
    return FEATURES[name]


def features_of(names: Iterable[str]) -> datasets.Features:
    return datasets.Features({name: feature_of(name) for name in names})


@dataclass
class Tally:
    """What checking a file's records found: rows read, bad rows by reason, the first bad one."""

    total: int = 0
    kept: int = 0
    bad: Counter = field(default_factory=Counter)
    first_bad: str | None = None

    def finish(self, source: str, log_skipped: bool = True) -> None:
        if self.total == 0:
            raise DataError(f"{source}: the file holds no rows.")
        if not self.kept:
            raise DataError(f"{source}: all {self.total} rows are bad (first: {self.first_bad}).")
        if self.bad and log_skipped:
            log.warning("%s: %s", source, self.describe_bad())

    def describe_bad(self) -> str:
        reasons = "; ".join(f"{n} × {reason}" for reason, n in self.bad.most_common())
        return f"skipped {sum(self.bad.values())} bad rows of {self.total} ({reasons}; first: {self.first_bad})"

    def summary(self) -> dict[str, Any]:
        return {"rows_read": self.total, "bad_rows": sum(self.bad.values()), "skipped": self.describe_bad() if self.bad else None}


def checked_rows(
    records: Iterable[tuple[str, Any]], source: str, get_row: Callable[[Any], tuple], on_bad_row: str, tally: Tally,
    log_skipped: bool = True,
) -> Iterator[tuple]:
    """Each record checked by `get_row(record) -> tuple` (one value per column), streamed.

    A bad record raises `DataError` naming the source and place, or is skipped and counted in
    `tally` when `on_bad_row == "skip"`. At the end, `tally.finish` refuses a file without a good
    row and logs what was skipped (unless the caller reports it: `log_skipped=False`).
    """
    for where, record in records:
        tally.total += 1
        try:
            if isinstance(record, BadRecord):
                raise BadRow(record.reason)
            if not isinstance(record, (dict, list)):
                raise BadRow(f"expected an object, got {type(record).__name__}")
            row = get_row(record)
        except BadRow as e:
            if on_bad_row != "skip":
                raise DataError(
                    f"{source}, {where}: {e}. Fix the row, or set data.on_bad_row=skip to skip bad rows."
                ) from None
            tally.bad[str(e).split(" (")[0]] += 1
            tally.first_bad = tally.first_bad or f"{where}: {e}"
            continue
        tally.kept += 1
        yield row
    tally.finish(source, log_skipped)


@dataclass(frozen=True)
class RowSource:
    """The checked rows of one file (or a Hub split), read lazily: each `rows()` reads it anew,
    so a corpus larger than memory streams into the cache (train/data/corpus.py)."""

    source: str  # how messages name it
    names: tuple[str, ...]  # its canonical columns
    records: Callable[[], Iterable[tuple[str, Any]]]  # (place, record), e.g. ("line 3", {...})
    get_row: Callable[[Any], tuple]
    on_bad_row: str = "error"
    # What determines the rows besides the file's bytes (a cache key): columns, score range, ...
    settings: dict[str, Any] = field(default_factory=dict)
    file: Path | None = None  # None: not a file (a Hub split; `settings` identify it)

    def rows(self, tally: Tally | None = None, log_skipped: bool = True) -> Iterator[tuple]:
        return checked_rows(self.records(), self.source, self.get_row, self.on_bad_row, tally or Tally(), log_skipped)

    def to_dataset(self) -> datasets.Dataset:
        values: list[list[Any]] = [[] for _ in self.names]
        for row in self.rows():
            for column, value in zip(values, row):
                column.append(value)
        return datasets.Dataset.from_dict(dict(zip(self.names, values)), features=features_of(self.names))


def read_sources(sources: list[RowSource]) -> datasets.Dataset:
    """The rows of several sources (a split's files, a folder's shards), in memory, one after another."""
    parts = [s.to_dataset() for s in sources]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def canonical_rows(
    records: Iterable[tuple[str, Any]],
    source: str,
    get_row: Callable[[Any], tuple],
    names: tuple[str, ...],
    on_bad_row: str = "error",
) -> datasets.Dataset:
    """Checks each record with `get_row(record) -> tuple` (one value per name) and builds the Dataset."""
    return RowSource(source, names, lambda: records, get_row, on_bad_row).to_dataset()


def canonical_pairs(
    records: Iterable[tuple[str, Any]], source: str, get_row: Callable[[Any], tuple], on_bad_row: str = "error"
) -> datasets.Dataset:
    """Scored pairs: Dataset(sentence1, sentence2, score as float32 in [0, 1])."""
    return canonical_rows(records, source, get_row, ("sentence1", "sentence2", "score"), on_bad_row)
