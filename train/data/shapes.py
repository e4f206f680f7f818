"""Raw sources -> the shape a loss trains on (see train/losses/registry.py): one vocabulary for readers,
losses and tasks.

NLI becomes triplets the way SBERT/SimCSE build them: the premise is the anchor, a hypothesis
it entails is the positive, and a hypothesis it contradicts is the hard negative.

A conversion is a `Plan`: for each output column, which rows of which input column it gathers
(premises are grouped by a 64-bit hash of their text, in numpy). The same plan becomes an
in-memory Dataset (`to_shape`, dev and test sets) or is written to the cache chunk by chunk
(`Plan.chunks`, a training corpus of millions of rows), without a Python object a row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from train.data.text_hash import hash64

from train.errors import DataError

log = logging.getLogger(__name__)

ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2


class Shape(str, Enum):
    """What a row holds, by canonical column names."""

    scored_pairs = "scored_pairs"  # sentence1, sentence2, score in [0, 1] (STS; 0/1 labels)
    labeled_pairs = "labeled_pairs"  # sentence1, sentence2, label in {0, 1, 2} (NLI classification)
    triplets = "triplets"  # anchor, positive[, negative | negative_1 ... negative_n] (NLI, pairs, candidates files)
    texts = "texts"  # anchor == positive: the same sentence twice (unsupervised SimCSE)
    query_candidates = "query_candidates"  # query, candidates (list), labels (list, one score each)
    image_captions = "image_captions"  # image (a reference, train/data/images.py), text (its caption)[, label]

    def __str__(self) -> str:
        return self.value

    @property
    def words(self) -> str:
        return self.value.replace("_", " ")


COLUMNS = {
    Shape.scored_pairs: ("sentence1", "sentence2", "score"),
    Shape.labeled_pairs: ("sentence1", "sentence2", "label"),
    Shape.triplets: ("anchor", "positive", "negative"),  # or negative_1 ... negative_n (candidates -> n-tuples)
    Shape.texts: ("anchor", "positive"),
    Shape.query_candidates: ("query", "candidates", "labels"),
}


@dataclass
class Take:
    """An output column gathered from an input column: row i is source[index[i]]."""

    source: pa.ChunkedArray | pa.Array
    index: np.ndarray


@dataclass
class TakeLists:
    """A list column: row i holds source[index[offsets[i]:offsets[i + 1]]]."""

    source: pa.ChunkedArray | pa.Array
    offsets: np.ndarray
    index: np.ndarray


@dataclass
class Values:
    """An output column given whole (labels computed by the conversion)."""

    values: pa.Array


@dataclass
class Plan:
    columns: dict[str, Take | TakeLists | Values]
    rows: int
    notes: list[str] = field(default_factory=list)  # what the conversion left out, for the log

    def chunk(self, start: int, stop: int) -> pa.Table:
        out = {}
        for name, spec in self.columns.items():
            if isinstance(spec, Take):
                out[name] = gather(spec.source, spec.index[start:stop])
            elif isinstance(spec, TakeLists):
                offsets = spec.offsets[start : stop + 1]
                values = gather(spec.source, spec.index[offsets[0] : offsets[-1]])
                out[name] = pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), values)
            else:
                out[name] = spec.values.slice(start, stop - start)
        return pa.table(out)

    def chunks(self, size: int = 10_000) -> Iterator[pa.Table]:
        for start in range(0, self.rows, size):
            yield self.chunk(start, min(start + size, self.rows))


def gather(column: pa.ChunkedArray | pa.Array, index: np.ndarray) -> pa.Array:
    """column[index] chunk by chunk: pyarrow's own take on a chunked array first concatenates
    every chunk, which reads a whole memory-mapped column to gather a few rows."""
    index = np.asarray(index, dtype=np.int64)
    if isinstance(column, pa.Array):
        return column.take(pa.array(index))
    if column.num_chunks == 1:
        return column.chunk(0).take(pa.array(index))
    starts = np.cumsum([0] + [len(c) for c in column.chunks])
    which = np.searchsorted(starts, index, side="right") - 1
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(column.num_chunks + 1))
    parts = [
        column.chunk(k).take(pa.array(index[order[bounds[k] : bounds[k + 1]]] - starts[k]))
        for k in np.flatnonzero(np.diff(bounds))
    ]
    if not parts:
        return pa.array([], column.type)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return pa.concat_arrays(parts).take(pa.array(inverse))


def _table(ds: datasets.Dataset | pa.Table) -> pa.Table:
    return ds if isinstance(ds, pa.Table) else ds.data.table


def _texts(column: pa.ChunkedArray) -> Iterator[str]:
    for chunk in column.chunks:
        yield from chunk.to_pylist()


def _premise_groups(premise_hash: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`rows` (ascending) grouped by premise, the groups in order of their first row: (rows sorted
    by group then position, each group's start in it; the last start is len(rows))."""
    h = premise_hash[rows]
    _, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    group = rank[inverse.reshape(-1)]
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(len(first) + 1))
    return rows[order], starts


def nli_triplets_plan(ds: datasets.Dataset | pa.Table, hard_negatives: bool = True, source: str = "") -> Plan:
    """(premise, hypothesis, label) -> (anchor, positive[, negative]).

    Every entailed hypothesis gives one example. With hard negatives, it gets a contradicted
    hypothesis of the same premise (cycling through them when there are fewer), and premises
    without any contradiction are left out and counted. Without, plain (anchor, positive) pairs.
    Premises come in the order of their first entailment, hypotheses in file order.
    """
    t = _table(ds)
    labels = t.column("label").to_numpy()
    premise_hash = hash64(_texts(t.column("sentence1")))
    entailed, starts = _premise_groups(premise_hash, np.flatnonzero(labels == ENTAILMENT))
    notes = []
    columns: dict[str, Take] = {"anchor": Take(t.column("sentence1"), entailed), "positive": Take(t.column("sentence2"), entailed)}
    if hard_negatives:
        # Each premise's contradictions, found by the premise's hash among the entailed groups.
        group_hash = premise_hash[entailed[starts[:-1]]]
        by_hash = np.argsort(group_hash)
        contradicted = np.flatnonzero(labels == CONTRADICTION)
        where = np.searchsorted(group_hash[by_hash], premise_hash[contradicted])
        where = np.minimum(where, max(len(by_hash) - 1, 0))
        found = (group_hash[by_hash][where] == premise_hash[contradicted]) if len(by_hash) else np.zeros(len(contradicted), bool)
        c_group = by_hash[where[found]]
        c_rows = contradicted[found][np.argsort(c_group, kind="stable")]
        c_count = np.bincount(c_group, minlength=len(starts) - 1)
        c_start = np.concatenate([[0], np.cumsum(c_count)])
        group = np.repeat(np.arange(len(starts) - 1), np.diff(starts))
        position = np.arange(len(entailed)) - starts[group]
        keep = c_count[group] > 0
        dropped = int((~keep).sum())
        negatives = c_rows[(c_start[group] + position % np.maximum(c_count[group], 1))[keep]]
        columns = {
            "anchor": Take(t.column("sentence1"), entailed[keep]),
            "positive": Take(t.column("sentence2"), entailed[keep]),
            "negative": Take(t.column("sentence2"), negatives),
        }
        if dropped:
            notes.append(f"{source}: {dropped} entailment pairs have no contradiction of the same premise; left out (data.hard_negatives=false keeps them)")
    rows = len(columns["anchor"].index)
    if not rows:
        raise DataError(
            f"{source or 'NLI data'}: no (premise, entailed hypothesis"
            + (", contradicted hypothesis) triplets" if hard_negatives else ") pairs")
            + " could be built"
            + (" — try data.hard_negatives=false." if hard_negatives else ".")
        )
    return Plan(columns, rows, notes)


def nli_to_triplets(ds: datasets.Dataset, hard_negatives: bool = True, source: str = "") -> datasets.Dataset:
    return materialize(nli_triplets_plan(ds, hard_negatives, source))


TEXT_SOURCE_COLUMNS = ("text", "anchor", "positive", "negative", "sentence1", "sentence2")


def texts_pairs_plan(ds: datasets.Dataset | pa.Table) -> Plan:
    """Unsupervised SimCSE input: every distinct sentence of the source as (x, x), in order of
    first occurrence (column after column)."""
    t = _table(ds)
    names = [c for c in t.column_names if c in TEXT_SOURCE_COLUMNS]
    every = pa.chunked_array([chunk for name in names for chunk in t.column(name).chunks], pa.string())
    _, first = np.unique(hash64(_texts(every)), return_index=True)
    first.sort()
    return Plan({"anchor": Take(every, first), "positive": Take(every, first)}, len(first))


def texts_to_pairs(ds: datasets.Dataset) -> datasets.Dataset:
    return materialize(texts_pairs_plan(ds))


def nli_candidates_plan(ds: datasets.Dataset | pa.Table, source: str = "") -> Plan:
    """(premise, hypothesis, label) -> (query, candidates, labels): a premise's entailed hypotheses
    score 1, its contradicted ones 0 (neutral ones are left out: neither relevant nor not)."""
    t = _table(ds)
    labels = t.column("label").to_numpy()
    premise_hash = hash64(_texts(t.column("sentence1")))
    rows, starts = _premise_groups(premise_hash, np.flatnonzero((labels == ENTAILMENT) | (labels == CONTRADICTION)))
    relevant = (labels[rows] == ENTAILMENT).astype(np.float64)
    has_relevant = np.add.reduceat(relevant, starts[:-1]) > 0 if len(rows) else np.zeros(0, bool)
    if not has_relevant.any():
        raise DataError(f"{source or 'NLI data'}: no premise has an entailed hypothesis, so no query has a relevant candidate.")
    sizes = np.diff(starts)[has_relevant]
    keep_row = np.repeat(has_relevant, np.diff(starts))
    kept, kept_labels = rows[keep_row], relevant[keep_row]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return Plan(
        {
            "query": Take(t.column("sentence1"), kept[offsets[:-1]]),
            "candidates": TakeLists(t.column("sentence2"), offsets, kept),
            "labels": Values(pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(kept_labels, pa.float64()))),
        },
        len(sizes),
    )


def nli_to_candidates(ds: datasets.Dataset, source: str = "") -> datasets.Dataset:
    return materialize(nli_candidates_plan(ds, source))


def flat_values(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, np.ndarray]:
    """A list column's values flattened (views of its chunks, nothing copied), and each value's row."""
    values = pa.chunked_array([c.flatten() for c in column.chunks], column.type.value_type)
    starts = np.cumsum([0] + [len(c) for c in column.chunks])
    parents = [pc.list_parent_indices(c).to_numpy() + start for c, start in zip(column.chunks, starts)]
    return values, np.concatenate(parents) if parents else np.zeros(0, np.int64)


def candidates_pairs_plan(ds: datasets.Dataset | pa.Table) -> Plan:
    """(query, candidates, labels) -> one scored pair per candidate (for pointwise losses)."""
    t = _table(ds)
    candidates, parents = flat_values(t.column("candidates"))
    scores, _ = flat_values(t.column("labels"))
    every = np.arange(len(candidates))
    return Plan(
        {"sentence1": Take(t.column("query"), parents), "sentence2": Take(candidates, every), "score": Values(scores.cast(pa.float32()))},
        len(candidates),
    )


def candidates_to_pairs(ds: datasets.Dataset) -> datasets.Dataset:
    return materialize(candidates_pairs_plan(ds))


def negative_names(n: int) -> list[str]:
    """The hard-negative columns of rows with n of them: `negative` for one (triplets), else
    negative_1 ... negative_n (the n-tuples sentence-transformers' MNRL, CachedMNRL and GIST take)."""
    return ["negative"] if n == 1 else [f"negative_{k}" for k in range(1, n + 1)]


def candidates_triplets_plan(ds: datasets.Dataset | pa.Table, source: str = "") -> Plan:
    """(query, candidates, labels) -> (anchor, best candidate, negative_1 ... negative_n): the
    candidates scored below the best, best-scored first (ties in file order), n the fewest any row
    has; with scores other than 0/1 (a teacher's) also `scores`: the positive's, then each negative's. A training split read for this shape already holds as many in every row
    (data.num_negatives, train/data/readers.py); a dev split keeps as many as its poorest row."""
    t = _table(ds)
    candidates, parents = flat_values(t.column("candidates"))
    scores = flat_values(t.column("labels"))[0].to_numpy()
    starts = np.searchsorted(parents, np.arange(t.num_rows + 1))
    positive = np.empty(t.num_rows, dtype=np.int64)
    lowers: list[np.ndarray] = []
    for row in range(t.num_rows):
        s, e = starts[row], starts[row + 1]
        order = s + np.argsort(-scores[s:e], kind="stable")
        positive[row] = order[0]
        lowers.append(order[1:][scores[order[1:]] < scores[order[0]]])
    n = min((len(lower) for lower in lowers), default=0)
    columns: dict[str, Take] = {"anchor": Take(t.column("query"), np.arange(t.num_rows)), "positive": Take(candidates, positive)}
    notes = []
    for k, name in enumerate(negative_names(n) if n else []):
        columns[name] = Take(candidates, np.array([lower[k] for lower in lowers], dtype=np.int64))
    if n and not np.isin(scores, (0.0, 1.0)).all():  # teacher scores, not relevance: the labels of distillation
        chosen = np.concatenate([np.concatenate([[p], lower[:n]]) for p, lower in zip(positive, lowers)]).astype(np.int64)
        columns["scores"] = TakeLists(pa.array(scores, pa.float32()), np.arange(0, t.num_rows * (n + 1) + 1, n + 1), chosen)
    most = max((len(lower) for lower in lowers), default=0)
    if n == 0:
        notes.append(f"{source}: not every query has a negative candidate; training on (query, positive) pairs")
    elif most > n:
        notes.append(f"{source}: every query keeps its {n} best-scored negatives (the fewest a query has; the most is {most})")
    return Plan(columns, t.num_rows, notes)


def candidates_to_triplets(ds: datasets.Dataset, source: str = "") -> datasets.Dataset:
    return materialize(candidates_triplets_plan(ds, source))


IDENTITY = {("candidates", "query_candidates"), ("pairs", "triplets"), ("nli", "labeled_pairs"), ("sts", "scored_pairs")}


def is_identity(source_kind: str, shape: str) -> bool:
    """Whether rows of this kind already are in the shape (no conversion, no pass over the whole split)."""
    return (source_kind, str(shape)) in IDENTITY


def shape_plan(ds: datasets.Dataset | pa.Table, source_kind: str, shape: str, hard_negatives: bool, source: str) -> Plan | None:
    """How a source dataset (kind nli, pairs, text, sts or candidates) becomes the loss's shape;
    None when it already is."""
    if source_kind == "candidates":
        convert = {Shape.query_candidates: lambda: None, Shape.scored_pairs: lambda: candidates_pairs_plan(ds),
                   Shape.triplets: lambda: candidates_triplets_plan(ds, source)}
        if shape in convert:
            return convert[Shape(shape)]()
    if shape == "query_candidates" and source_kind == "nli":
        return nli_candidates_plan(ds, source)
    if shape == "texts":
        return texts_pairs_plan(ds)
    if shape == "triplets":
        if source_kind == "nli":
            return nli_triplets_plan(ds, hard_negatives, source)
        if source_kind == "pairs":
            return None
        if source_kind == "text":
            return texts_pairs_plan(ds)
    if shape == "labeled_pairs" and source_kind == "nli":
        return None
    if shape == "scored_pairs" and source_kind == "sts":
        return None
    raise DataError(f"{source}: {source_kind} data cannot feed a loss that trains on {shape.replace('_', ' ')}.")


def materialize(plan: Plan) -> datasets.Dataset:
    """A plan as an in-memory Dataset; its notes are logged."""
    for note in plan.notes:
        log.info("%s", note)
    table = plan.chunk(0, plan.rows)
    from train.data.rows import features_of

    return datasets.Dataset(table.cast(features_of(table.column_names).arrow_schema))


def to_shape(ds: datasets.Dataset, source_kind: str, shape: str, hard_negatives: bool, source: str) -> datasets.Dataset:
    """Converts a source dataset (kind nli, pairs, text, sts or candidates) to the loss's shape."""
    plan = shape_plan(ds, source_kind, shape, hard_negatives, source)
    return ds if plan is None else materialize(plan)
