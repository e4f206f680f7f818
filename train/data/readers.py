"""Files -> `datasets.Dataset` with the canonical STS columns `sentence1`, `sentence2`, `score` in [0, 1].

Every row keeps the place it came from (line or item number) until it is checked, so a bad
row is reported as `file, line N: reason`. Readers know nothing of models or batching.
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from train.errors import DataError

log = logging.getLogger(__name__)

FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet"}


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


class _BadRow(Exception):
    pass


def infer_format(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise DataError(f"data.format={fmt!r} is not supported; use one of {', '.join(FORMATS)}.")
        return fmt
    try:
        return _EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"set data.format to one of {', '.join(FORMATS)}."
        ) from None


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line without its end-of-line) for each non-blank line; CRLF files included."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            for number, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}). "
            "Convert the file to UTF-8, e.g. `iconv -f cp949 -t utf-8 in.tsv > out.tsv`."
        ) from None


class _BadRecord:
    """A record the file format already shows to be broken (a field count that does not match
    the header): reported or skipped like any other bad row."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _field_count_problem(found: int, expected: int, sep: str) -> str:
    hint = (
        " (an unquoted comma inside a field, such as the decimal comma in 4,5? Quote the field or write 4.5)"
        if sep == "comma" and found > expected
        else " (a tab inside a sentence?)" if found > expected else ""
    )
    return f"{found} {sep}-separated fields, but the header has {expected}{hint}"


def _records_tsv(path: Path) -> Iterator[tuple[str, dict[str, Any] | _BadRecord]]:
    # Plain tab splitting, no CSV quoting: NLP TSVs carry quote characters inside sentences.
    lines = _read_lines(path)
    try:
        _, header_line = next(lines)
    except StopIteration:
        return
    header = header_line.split("\t")
    for number, line in lines:
        fields = line.split("\t")
        if len(fields) != len(header):
            yield f"line {number}", _BadRecord(_field_count_problem(len(fields), len(header), "tab"))
        else:
            yield f"line {number}", dict(zip(header, fields))


def _records_csv(path: Path) -> Iterator[tuple[str, dict[str, Any] | _BadRecord]]:
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue
                expected = len(reader.fieldnames or ())
                if None in row:  # csv puts fields beyond the header under the key None
                    found = expected + len(row[None])
                    yield f"line {reader.line_num}", _BadRecord(_field_count_problem(found, expected, "comma"))
                elif any(v is None for v in row.values()):  # fewer fields than the header
                    found = sum(v is not None for v in row.values())
                    yield f"line {reader.line_num}", _BadRecord(_field_count_problem(found, expected, "comma"))
                else:
                    yield f"line {reader.line_num}", row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}). Convert the file to UTF-8.") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e}).") from None


def _header(path: Path, sep: str) -> list[str]:
    for _, line in _read_lines(path):
        return next(csv.reader([line])) if sep == "," else line.split(sep)
    return []


def _records_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in _read_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {number}: not valid JSON ({e.msg}).") from None
        yield f"line {number}", record


def _records_json(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}). Convert the file to UTF-8.") from None
    if not text.strip():
        return
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            raise DataError(f"{path}: holds one JSON object per line; set data.format=jsonl.") from None
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}).") from None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DataError(f"{path}: expected a JSON array of objects (or {{\"data\": [...]}}), got {type(document).__name__}.")
    for number, record in enumerate(document, start=1):
        yield f"item {number}", record


def _records_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000)
        number = 0
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield f"row {number}", record
    except Exception as e:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"{path}: not a readable Parquet file ({e}).") from None


_READERS = {
    "tsv": _records_tsv,
    "csv": _records_csv,
    "json": _records_json,
    "jsonl": _records_jsonl,
    "parquet": _records_parquet,
}


def _has_path(record: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return False
        record = record[part]
    return True


def read_records(path: Path, fmt: str, wanted: dict[str, str]) -> Iterable[tuple[str, Any]]:
    """The records of a file, streamed, after checking that it has each column in `wanted`
    ({config key: column name or dot path}); a column the file lacks is one error that lists
    the columns it has, not a bad row per line. CSV/TSV are checked against their header;
    JSON/JSONL/parquet against their records (a column only needs to occur in one). A JSON
    array is one document and is read whole: write large corpora as JSONL, CSV/TSV or parquet."""
    if fmt in ("csv", "tsv"):
        columns = _header(path, "," if fmt == "csv" else "\t")
        if columns:
            _check_columns(path, wanted, columns.__contains__, columns)
        return _READERS[fmt](path)
    # JSON(L)/parquet: a column only needs to occur in one record. The first records usually
    # settle it; only when they do not is the file scanned once before it is read.
    records = iter(_READERS[fmt](path))
    head = list(itertools.islice(records, _PEEK))
    if not head:  # canonical_rows says the file holds no rows
        return head
    if all(any(_has_path(r, c) for _, r in head) for c in wanted.values() if c):
        return itertools.chain(head, records)
    seen: dict[str, None] = {}
    found = {c: False for c in wanted.values() if c}
    for _, record in itertools.chain(head, records):
        if isinstance(record, dict):
            seen.update(dict.fromkeys(record))
            for c in found:
                found[c] = found[c] or _has_path(record, c)
    _check_columns(path, wanted, found.__getitem__, list(seen))
    return _READERS[fmt](path)


_PEEK = 1000


def _check_columns(path: Path, wanted: dict[str, str], present: Callable[[str], bool], columns: list) -> None:
    absent = [f"{key}={column!r}" for key, column in wanted.items() if column and not present(column)]
    if absent:
        raise DataError(
            f"{path}: no column {', '.join(absent)}. The file's columns are: {', '.join(map(str, columns)) or 'none'}. "
            "Set data.columns.<name> to one of them."
        )


def _lookup(record: Any, dotted: str) -> Any:
    value = record
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise _BadRow(f"missing field {dotted!r}")
    return value


def _sentence(record: Any, column: str) -> str:
    value = _lookup(record, column)
    if value is None:
        raise _BadRow(f"missing field {column!r}")
    if not isinstance(value, str):
        raise _BadRow(f"field {column!r} is not text ({value!r})")
    if not value.strip():
        raise _BadRow(f"empty sentence in {column!r}")
    return value


def _score(value: Any, column: str, scores: ScoreRange) -> float:
    if value is None or isinstance(value, bool):
        raise _BadRow(f"score {column!r} is not a number ({value!r})")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise _BadRow(f"score {column!r} is not a number ({value!r})") from None
    if score != score:  # NaN
        raise _BadRow(f"score {column!r} is not a number ({value!r})")
    if not scores.low <= score <= scores.high:
        raise _BadRow(
            f"score {score:g} is outside [{scores.low:g}, {scores.high:g}] "
            "(set data.score_min/data.score_max to your scale)"
        )
    return (score - scores.low) / (scores.high - scores.low)


# The Arrow type of each canonical column: what the in-memory Dataset and the cache both hold.
_STRING = datasets.Value("string")
FEATURES: dict[str, Any] = {
    **{name: _STRING for name in ("sentence1", "sentence2", "anchor", "positive", "negative", "query", "text")},
    "score": datasets.Value("float32"),
    "label": datasets.Value("int64"),
    "candidates": datasets.List(_STRING),
    "labels": datasets.List(datasets.Value("float64")),
}


def features_of(names: Iterable[str]) -> datasets.Features:
    return datasets.Features({name: FEATURES[name] for name in names})


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
            if isinstance(record, _BadRecord):
                raise _BadRow(record.reason)
            if not isinstance(record, (dict, list)):
                raise _BadRow(f"expected an object, got {type(record).__name__}")
            row = get_row(record)
        except _BadRow as e:
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


def pair_getter(columns: Columns, scores: ScoreRange) -> Callable[[dict[str, Any]], tuple[str, str, float]]:
    """Reads (sentence1, sentence2, rescaled score) out of one record by column names or dot paths."""

    def get_row(record: dict[str, Any]) -> tuple[str, str, float]:
        return (
            _sentence(record, columns.sentence1),
            _sentence(record, columns.sentence2),
            _score(_lookup(record, columns.score), columns.score, scores),
        )

    return get_row


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: no such file.")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a data file.")


def _file_source(path: Path, fmt: str, wanted: dict[str, str | None], names: tuple[str, ...], get_row, on_bad_row: str, **settings) -> RowSource:
    wanted = {k: v for k, v in wanted.items() if v}
    return RowSource(
        str(path), names, lambda: read_records(path, fmt, wanted), get_row, on_bad_row,
        {"format": fmt, "columns": wanted, **settings}, path,
    )


def sts_file_source(
    path: str | Path,
    fmt: str | None = None,
    columns: Columns = Columns(),
    scores: ScoreRange = ScoreRange(),
    on_bad_row: str = "error",
) -> RowSource:
    """Any csv/tsv/json/jsonl/parquet file of scored sentence pairs; columns may be dot paths."""
    path = Path(path)
    _check_file(path)
    fmt = infer_format(path, fmt)
    wanted = {f"data.columns.{k}": getattr(columns, k) for k in ("sentence1", "sentence2", "score")}
    return _file_source(
        path, fmt, wanted, ("sentence1", "sentence2", "score"), pair_getter(columns, scores), on_bad_row,
        kind="sts", scores=[scores.low, scores.high],
    )


def read_sts_file(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """sts_file_source's rows, in memory (dev and test sets; a training split goes through the cache)."""
    return sts_file_source(*args, **kwargs).to_dataset()

def read_stsb_official(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """stsb_official_source's rows, in memory (dev and test sets; a training split goes through the cache)."""
    return stsb_official_source(*args, **kwargs).to_dataset()

def stsb_official_source(path: str | Path, scores: ScoreRange = ScoreRange(), on_bad_row: str = "error") -> RowSource:
    """The STS Benchmark distribution files: tab-separated, no header, fields
    genre, filename, year, id, score, sentence1, sentence2 and sometimes extra trailing
    source fields; quote characters are text, not CSV quoting."""
    path = Path(path)
    _check_file(path)

    def records() -> Iterator[tuple[str, list[str]]]:
        for number, line in _read_lines(path):
            yield f"line {number}", line.split("\t")

    def get_row(fields: list[str]) -> tuple[str, str, float]:
        if len(fields) < 7:
            raise _BadRow(f"expected at least 7 tab-separated fields, found {len(fields)}")
        return _nonempty(fields[5], "sentence1"), _nonempty(fields[6], "sentence2"), _score(fields[4], "score", scores)

    return RowSource(
        str(path), ("sentence1", "sentence2", "score"), records, get_row, on_bad_row,
        {"format": "stsb", "kind": "sts", "scores": [scores.low, scores.high]}, path,
    )


def _nonempty(text: str, column: str) -> str:
    if not text.strip():
        raise _BadRow(f"empty sentence in {column!r}")
    return text


# --- NLI, pairs and plain text (contrastive training) -------------------------------------

NLI_LABELS = ("entailment", "neutral", "contradiction")
# Numeric labels as in SNLI/MNLI on the Hub: 0 entailment, 1 neutral, 2 contradiction.
_NLI_LABEL_IDS = {name: i for i, name in enumerate(NLI_LABELS)} | {str(i): i for i in range(3)}


def _nli_label(value: Any, column: str) -> int:
    key = str(value).strip().lower() if value is not None else ""
    if key in _NLI_LABEL_IDS:
        return _NLI_LABEL_IDS[key]
    raise _BadRow(f"label {column!r} is {value!r}, expected one of {', '.join(NLI_LABELS)} (or 0/1/2)")


def read_nli_file(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """nli_file_source's rows, in memory (dev and test sets; a training split goes through the cache)."""
    return nli_file_source(*args, **kwargs).to_dataset()

def nli_file_source(
    path: str | Path,
    fmt: str | None = None,
    columns: Columns = Columns("sentence1", "sentence2", "gold_label"),
    on_bad_row: str = "error",
) -> RowSource:
    """Premise/hypothesis/label records -> Dataset(sentence1, sentence2, label: 0 entailment,
    1 neutral, 2 contradiction). KorNLI TSV, KLUE-NLI JSON and any file through `columns`
    (sentence1 = premise, sentence2 = hypothesis, score = the label column). Rows whose label
    is '-' (no annotator agreement, as in SNLI) count as bad rows."""
    path = Path(path)
    _check_file(path)
    fmt = infer_format(path, fmt)

    def get_row(record: dict[str, Any]) -> tuple[str, str, int]:
        return (
            _sentence(record, columns.sentence1),
            _sentence(record, columns.sentence2),
            _nli_label(_lookup(record, columns.score), columns.score),
        )

    wanted = {"data.columns.sentence1": columns.sentence1, "data.columns.sentence2": columns.sentence2, "data.columns.label": columns.score}
    return _file_source(path, fmt, wanted, ("sentence1", "sentence2", "label"), get_row, on_bad_row, kind="nli")


def read_text_lines(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """text_lines_source's rows, in memory (dev and test sets; a training split goes through the cache)."""
    return text_lines_source(*args, **kwargs).to_dataset()

def text_lines_source(path: str | Path) -> RowSource:
    path = Path(path)
    _check_file(path)

    def records() -> Iterator[tuple[str, list[str]]]:
        for number, line in _read_lines(path):
            yield f"line {number}", [line]

    return RowSource(str(path), ("text",), records, lambda fields: (fields[0].strip(),), "error", {"format": "lines", "kind": "text"}, path)


def read_pairs_file(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """pairs_file_source's rows, in memory (dev and test sets; a training split goes through the cache)."""
    return pairs_file_source(*args, **kwargs).to_dataset()

def pairs_file_source(
    path: str | Path,
    fmt: str | None = None,
    anchor: str = "anchor",
    positive: str = "positive",
    negative: str | None = None,
    on_bad_row: str = "error",
) -> RowSource:
    """(anchor, positive[, negative]) text records -> rows with those columns."""
    path = Path(path)
    _check_file(path)
    fmt = infer_format(path, fmt)
    names = ("anchor", "positive", "negative") if negative else ("anchor", "positive")
    fields = (anchor, positive, negative) if negative else (anchor, positive)

    def get_row(record: dict[str, Any]) -> tuple[str, ...]:
        return tuple(_sentence(record, column) for column in fields)

    wanted = {"data.columns.sentence1": anchor, "data.columns.sentence2": positive, "data.columns.negative": negative}
    return _file_source(path, fmt, wanted, names, get_row, on_bad_row, kind="pairs")


# --- Query with candidates (rerankers) -------------------------------------------------------


@dataclass(frozen=True)
class CandidateColumns:
    query: str = "query"
    positive: str = "positive"  # one text, or a list of texts
    negatives: str = "negatives"  # a list of texts (may be empty)
    scores: str | None = None  # optional: one score per candidate, positives first


def _text_list(record: Any, column: str, allow_single: bool) -> list[str]:
    value = _lookup(record, column)
    if allow_single and isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _BadRow(f"field {column!r} is not a list of texts ({value!r})")
    for text in value:
        if not isinstance(text, str) or not text.strip():
            raise _BadRow(f"field {column!r} holds {text!r}, not a non-empty text")
    return value


def candidates_getter(columns: CandidateColumns) -> Callable[[Any], tuple[str, list[str], list[float]]]:
    """Reads (query, candidates, labels) out of one record: positives score 1 and negatives 0,
    unless `columns.scores` gives a score per candidate."""

    def get_row(record: Any) -> tuple[str, list[str], list[float]]:
        query = _sentence(record, columns.query)
        positives = _text_list(record, columns.positive, allow_single=True)
        if not positives:
            raise _BadRow(f"no positive in {columns.positive!r}")
        negatives = _text_list(record, columns.negatives, allow_single=False) if _has_path(record, columns.negatives) else []
        candidates = positives + negatives
        if columns.scores is None:
            return query, candidates, [1.0] * len(positives) + [0.0] * len(negatives)
        scores = _lookup(record, columns.scores)
        if not isinstance(scores, list) or len(scores) != len(candidates):
            raise _BadRow(f"{columns.scores!r} must list one score per candidate ({len(candidates)}: positives, then negatives), got {scores!r}")
        return query, candidates, [_plain_number(s, columns.scores) for s in scores]

    return get_row


def _plain_number(value: Any, column: str) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise _BadRow(f"score in {column!r} is not a number ({value!r})")
    return float(value)


def read_candidates_file(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """candidates_file_source's rows, in memory (dev and test sets; a training split goes through the cache)."""
    return candidates_file_source(*args, **kwargs).to_dataset()

def candidates_file_source(
    path: str | Path, fmt: str | None = None, columns: CandidateColumns = CandidateColumns(), on_bad_row: str = "error"
) -> RowSource:
    """JSON/JSONL/parquet records of a query, its positive(s) and a list of negatives ->
    Dataset(query, candidates, labels). This is what `python -m train.mine` writes."""
    path = Path(path)
    _check_file(path)
    fmt = infer_format(path, fmt)
    if fmt in ("csv", "tsv"):
        raise DataError(f"{path}: query-with-candidates data holds lists of texts; write it as JSONL, JSON or parquet.")
    wanted = {"data.columns.query": columns.query, "data.columns.positive": columns.positive}
    if columns.scores:
        wanted["data.columns.scores"] = columns.scores
    return _file_source(
        path, fmt, wanted, ("query", "candidates", "labels"), candidates_getter(columns), on_bad_row,
        kind="candidates", negatives=columns.negatives,
    )
