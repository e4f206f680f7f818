"""A data path -> the `RowSource`s of one split, for each kind of data: scored pairs (STS), NLI,
pairs, plain text, queries with candidates, and the official STS Benchmark files.

A path is a file or a folder (a `save_to_disk` folder or a folder of shards: train/data/folders.py);
a folder gives one source a file, so a bad row is still reported as `file, line N: reason`. The
`read_*` functions read the rows into memory (dev and test sets; a training split goes through
the cache, train/data/corpus.py). Readers know nothing of models or batching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import datasets

from train.data.folders import data_files
from train.data.formats import check_file, has_path, read_lines, read_records
from train.data.rows import (
    BadRow,
    Columns,
    RowSource,
    ScoreRange,
    lookup,
    nonempty,
    plain_number,
    read_sources,
    score,
    sentence,
    text_list,
)
from train.errors import DataError

PAIR_NAMES = ("sentence1", "sentence2", "score")


def file_source(
    path: Path, fmt: str, wanted: dict[str, str | None], names: tuple[str, ...], get_row: Callable[[Any], tuple],
    on_bad_row: str, **settings: Any,
) -> RowSource:
    """One file's rows: its records (checked for the `wanted` columns) through `get_row`."""
    wanted = {k: v for k, v in wanted.items() if v}
    return RowSource(
        str(path), names, lambda: read_records(path, fmt, wanted), get_row, on_bad_row,
        {"format": fmt, "columns": wanted, **settings}, path,
    )


def _sources(path: str | Path, split: str, fmt: str | None, make: Callable[[Path, str], RowSource]) -> list[RowSource]:
    return [make(file, file_fmt) for file, file_fmt in data_files(path, split, fmt)]


def pair_getter(columns: Columns, scores: ScoreRange) -> Callable[[dict[str, Any]], tuple[str, str, float]]:
    """Reads (sentence1, sentence2, rescaled score) out of one record by column names or dot paths."""

    def get_row(record: dict[str, Any]) -> tuple[str, str, float]:
        return (
            sentence(record, columns.sentence1),
            sentence(record, columns.sentence2),
            score(lookup(record, columns.score), columns.score, scores),
        )

    return get_row


def sts_file_sources(
    path: str | Path, fmt: str | None = None, columns: Columns = Columns(), scores: ScoreRange = ScoreRange(),
    on_bad_row: str = "error", split: str = "train",
) -> list[RowSource]:
    """Scored sentence pairs from any csv/tsv/json/jsonl/parquet/Arrow file or data folder; columns may be dot paths."""
    wanted = {f"data.columns.{k}": getattr(columns, k) for k in PAIR_NAMES}
    get_row = pair_getter(columns, scores)
    return _sources(path, split, fmt, lambda file, file_fmt: file_source(
        file, file_fmt, wanted, PAIR_NAMES, get_row, on_bad_row, kind="sts", scores=[scores.low, scores.high],
    ))


def read_sts_file(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """sts_file_sources' rows, in memory."""
    return read_sources(sts_file_sources(*args, **kwargs))


def stsb_official_sources(path: str | Path, scores: ScoreRange = ScoreRange(), on_bad_row: str = "error", split: str = "train") -> list[RowSource]:
    """The STS Benchmark distribution files (a file, or the extracted stsbenchmark/ folder):
    tab-separated, no header, fields genre, filename, year, id, score, sentence1, sentence2 and
    sometimes extra trailing source fields; quote characters are text, not CSV quoting."""

    def get_row(fields: list[str]) -> tuple[str, str, float]:
        if len(fields) < 7:
            raise BadRow(f"expected at least 7 tab-separated fields, found {len(fields)}")
        return nonempty(fields[5], "sentence1"), nonempty(fields[6], "sentence2"), score(fields[4], "score", scores)

    def make(file: Path, _: str) -> RowSource:
        def records() -> Iterator[tuple[str, list[str]]]:
            for number, line in read_lines(file):
                yield f"line {number}", line.split("\t")

        settings = {"format": "stsb", "kind": "sts", "scores": [scores.low, scores.high]}
        return RowSource(str(file), PAIR_NAMES, records, get_row, on_bad_row, settings, file)

    if Path(path).is_dir():
        return _sources(path, split, "csv", make)  # the official file names: sts-train.csv, sts-dev.csv, sts-test.csv
    return [make(check_file(path), "")]


def read_stsb_official(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """stsb_official_sources' rows, in memory."""
    return read_sources(stsb_official_sources(*args, **kwargs))


# --- NLI, pairs and plain text (contrastive training) -------------------------------------

NLI_LABELS = ("entailment", "neutral", "contradiction")
# Numeric labels as in SNLI/MNLI on the Hub: 0 entailment, 1 neutral, 2 contradiction.
_NLI_LABEL_IDS = {name: i for i, name in enumerate(NLI_LABELS)} | {str(i): i for i in range(3)}


def _nli_label(value: Any, column: str) -> int:
    key = str(value).strip().lower() if value is not None else ""
    if key in _NLI_LABEL_IDS:
        return _NLI_LABEL_IDS[key]
    raise BadRow(f"label {column!r} is {value!r}, expected one of {', '.join(NLI_LABELS)} (or 0/1/2)")


def nli_file_sources(
    path: str | Path, fmt: str | None = None, columns: Columns = Columns("sentence1", "sentence2", "gold_label"),
    on_bad_row: str = "error", split: str = "train",
) -> list[RowSource]:
    """Premise/hypothesis/label records -> rows (sentence1, sentence2, label: 0 entailment,
    1 neutral, 2 contradiction). KorNLI TSV, KLUE-NLI JSON and any file through `columns`
    (sentence1 = premise, sentence2 = hypothesis, score = the label column). Rows whose label
    is '-' (no annotator agreement, as in SNLI) count as bad rows."""

    def get_row(record: dict[str, Any]) -> tuple[str, str, int]:
        return (
            sentence(record, columns.sentence1),
            sentence(record, columns.sentence2),
            _nli_label(lookup(record, columns.score), columns.score),
        )

    wanted = {"data.columns.sentence1": columns.sentence1, "data.columns.sentence2": columns.sentence2, "data.columns.label": columns.score}
    return _sources(path, split, fmt, lambda file, file_fmt: file_source(
        file, file_fmt, wanted, ("sentence1", "sentence2", "label"), get_row, on_bad_row, kind="nli",
    ))


def read_nli_file(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """nli_file_sources' rows, in memory."""
    return read_sources(nli_file_sources(*args, **kwargs))


def text_lines_sources(path: str | Path, split: str = "train") -> list[RowSource]:
    """Plain text, one text a line; a folder (saved dataset or shards) gives its `text` column."""
    if Path(path).is_dir():
        return _sources(path, split, None, lambda file, file_fmt: file_source(
            file, file_fmt, {"data.columns.text": "text"}, ("text",), lambda r: (sentence(r, "text").strip(),), "error", kind="text",
        ))
    file = check_file(path)

    def records() -> Iterator[tuple[str, list[str]]]:
        for number, line in read_lines(file):
            yield f"line {number}", [line]

    return [RowSource(str(file), ("text",), records, lambda fields: (fields[0].strip(),), "error", {"format": "lines", "kind": "text"}, file)]


def read_text_lines(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """text_lines_sources' rows, in memory."""
    return read_sources(text_lines_sources(*args, **kwargs))


def pairs_file_sources(
    path: str | Path, fmt: str | None = None, anchor: str = "anchor", positive: str = "positive",
    negative: str | None = None, on_bad_row: str = "error", split: str = "train",
) -> list[RowSource]:
    """(anchor, positive[, negative]) text records -> rows with those columns."""
    names = ("anchor", "positive", "negative") if negative else ("anchor", "positive")
    fields = (anchor, positive, negative) if negative else (anchor, positive)

    def get_row(record: dict[str, Any]) -> tuple[str, ...]:
        return tuple(sentence(record, column) for column in fields)

    wanted = {"data.columns.sentence1": anchor, "data.columns.sentence2": positive, "data.columns.negative": negative}
    return _sources(path, split, fmt, lambda file, file_fmt: file_source(file, file_fmt, wanted, names, get_row, on_bad_row, kind="pairs"))


def read_pairs_file(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """pairs_file_sources' rows, in memory."""
    return read_sources(pairs_file_sources(*args, **kwargs))


# --- Query with candidates (rerankers) -------------------------------------------------------


@dataclass(frozen=True)
class CandidateColumns:
    query: str = "query"
    positive: str = "positive"  # one text, or a list of texts
    negatives: str = "negatives"  # a list of texts (may be empty)
    scores: str | None = None  # optional: one score per candidate, positives first
    # n-tuple training (a training split read as (query, positive, negative_1 ... negative_n)):
    # the negatives every row gives, its best-scored first; a row with fewer is a bad row. -1:
    # as many as the file's first row has, and a row with another count is a bad row. None: no
    # rule (lists for listwise losses, one scored pair a candidate, dev and test sets).
    num_negatives: int | None = None


# Negatives are the candidates scored below a row's best one (what the n-tuples train on).
ALL_NEGATIVES = -1


def _keep_negatives(candidates: list[str], labels: list[float], wanted: int, first: list[int]) -> tuple[list[str], list[float]]:
    """The row with `wanted` negatives (its best-scored ones), or BadRow naming the counts; with
    ALL_NEGATIVES the first row read sets the count (`first`, shared by the rows of one file)."""
    top = max(labels)
    negative = sorted((i for i, label in enumerate(labels) if label < top), key=lambda i: -labels[i])
    if wanted == ALL_NEGATIVES:
        if not first:
            first.append(len(negative))
        if len(negative) != first[0]:
            raise BadRow(
                f"holds {len(negative)} negatives where the file's first row holds {first[0]} (n-tuples take the same "
                f"number from every row; data.num_negatives={min(len(negative), first[0])} trains on the best-scored "
                f"{min(len(negative), first[0])} of each)"
            )
        return candidates, labels
    if len(negative) < wanted:
        raise BadRow(f"holds {len(negative)} negatives, fewer than data.num_negatives={wanted}")
    keep = sorted([i for i, label in enumerate(labels) if label == top] + negative[:wanted])
    return [candidates[i] for i in keep], [labels[i] for i in keep]


def candidates_getter(columns: CandidateColumns) -> Callable[[Any], tuple[str, list[str], list[float]]]:
    """Reads (query, candidates, labels) out of one record: positives score 1 and negatives 0,
    unless `columns.scores` gives a score per candidate. With `columns.num_negatives`, a row keeps
    that many negatives (see CandidateColumns)."""
    first: list[int] = []  # ALL_NEGATIVES: the first row's count (the same row whenever the file is read anew)

    def get_row(record: Any) -> tuple[str, list[str], list[float]]:
        query = sentence(record, columns.query)
        positives = text_list(record, columns.positive, allow_single=True)
        if not positives:
            raise BadRow(f"no positive in {columns.positive!r}")
        negatives = text_list(record, columns.negatives, allow_single=False) if has_path(record, columns.negatives) else []
        candidates = positives + negatives
        if columns.scores is None:
            labels = [1.0] * len(positives) + [0.0] * len(negatives)
        else:
            scores = lookup(record, columns.scores)
            if not isinstance(scores, list) or len(scores) != len(candidates):
                raise BadRow(f"{columns.scores!r} must list one score per candidate ({len(candidates)}: positives, then negatives), got {scores!r}")
            labels = [plain_number(s, columns.scores) for s in scores]
        if columns.num_negatives is not None:
            candidates, labels = _keep_negatives(candidates, labels, columns.num_negatives, first)
        return query, candidates, labels

    return get_row


def candidates_file_sources(
    path: str | Path, fmt: str | None = None, columns: CandidateColumns = CandidateColumns(), on_bad_row: str = "error",
    split: str = "train",
) -> list[RowSource]:
    """JSON/JSONL/parquet/Arrow records of a query, its positive(s) and a list of negatives ->
    rows (query, candidates, labels). This is what `python -m train.mine` writes."""
    wanted = {"data.columns.query": columns.query, "data.columns.positive": columns.positive}
    if columns.scores:
        wanted["data.columns.scores"] = columns.scores

    if split != "train":  # the negatives rule is for n-tuple training; dev and test sets rank whole lists
        columns = replace(columns, num_negatives=None)

    def make(file: Path, file_fmt: str) -> RowSource:
        if file_fmt in ("csv", "tsv"):
            raise DataError(f"{file}: query-with-candidates data holds lists of texts; write it as JSONL, JSON or parquet.")
        return file_source(
            file, file_fmt, wanted, ("query", "candidates", "labels"), candidates_getter(columns), on_bad_row,
            kind="candidates", negatives=columns.negatives,
            **({"num_negatives": columns.num_negatives} if columns.num_negatives is not None else {}),
        )

    return _sources(path, split, fmt, make)


def read_candidates_file(*args: Any, **kwargs: Any) -> datasets.Dataset:
    """candidates_file_sources' rows, in memory."""
    return read_sources(candidates_file_sources(*args, **kwargs))
