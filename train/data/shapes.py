"""Raw sources -> the shape a loss trains on (see train/losses.py): one vocabulary for readers,
losses and tasks.

NLI becomes triplets the way SBERT/SimCSE build them: the premise is the anchor, a hypothesis
it entails is the positive, and a hypothesis it contradicts is the hard negative.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from enum import Enum

import datasets

from train.errors import DataError

log = logging.getLogger(__name__)

ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2


class Shape(str, Enum):
    """What a row holds, by canonical column names."""

    scored_pairs = "scored_pairs"  # sentence1, sentence2, score in [0, 1] (STS; 0/1 labels)
    labeled_pairs = "labeled_pairs"  # sentence1, sentence2, label in {0, 1, 2} (NLI classification)
    triplets = "triplets"  # anchor, positive[, negative] (NLI, pairs files)
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
    Shape.triplets: ("anchor", "positive", "negative"),
    Shape.texts: ("anchor", "positive"),
    Shape.query_candidates: ("query", "candidates", "labels"),
}


def nli_to_triplets(ds: datasets.Dataset, hard_negatives: bool = True, source: str = "") -> datasets.Dataset:
    """(premise, hypothesis, label) -> (anchor, positive[, negative]).

    Every entailed hypothesis gives one example. With hard negatives, it gets a contradicted
    hypothesis of the same premise (cycling through them when there are fewer), and premises
    without any contradiction are left out and counted. Without, plain (anchor, positive) pairs.
    """
    entailed: dict[str, list[str]] = defaultdict(list)
    contradicted: dict[str, list[str]] = defaultdict(list)
    for premise, hypothesis, label in zip(ds["sentence1"], ds["sentence2"], ds["label"]):
        if label == ENTAILMENT:
            entailed[premise].append(hypothesis)
        elif label == CONTRADICTION:
            contradicted[premise].append(hypothesis)
    anchors, positives, negatives = [], [], []
    dropped = 0
    for premise, hyps in entailed.items():
        negs = contradicted.get(premise, [])
        for i, hyp in enumerate(hyps):
            if hard_negatives and not negs:
                dropped += 1
                continue
            anchors.append(premise)
            positives.append(hyp)
            if hard_negatives:
                negatives.append(negs[i % len(negs)])
    if not anchors:
        raise DataError(
            f"{source or 'NLI data'}: no (premise, entailed hypothesis"
            + (", contradicted hypothesis) triplets" if hard_negatives else ") pairs")
            + " could be built"
            + (" — try data.hard_negatives=false." if hard_negatives else ".")
        )
    if dropped:
        log.info("%s: %d entailment pairs have no contradiction of the same premise; left out (data.hard_negatives=false keeps them)", source, dropped)
    columns = {"anchor": anchors, "positive": positives}
    if hard_negatives:
        columns["negative"] = negatives
    return datasets.Dataset.from_dict(columns)


def texts_to_pairs(ds: datasets.Dataset) -> datasets.Dataset:
    """Unsupervised SimCSE input: every distinct sentence of the source as (x, x)."""
    seen: dict[str, None] = {}
    for column in ds.column_names:
        if column in ("text", "anchor", "positive", "negative", "sentence1", "sentence2"):
            for text in ds[column]:
                seen.setdefault(text, None)
    texts = list(seen)
    return datasets.Dataset.from_dict({"anchor": texts, "positive": texts})


def nli_to_candidates(ds: datasets.Dataset, source: str = "") -> datasets.Dataset:
    """(premise, hypothesis, label) -> (query, candidates, labels): a premise's entailed hypotheses
    score 1, its contradicted ones 0 (neutral ones are left out: neither relevant nor not)."""
    lists: dict[str, tuple[list[str], list[float]]] = {}
    for premise, hypothesis, label in zip(ds["sentence1"], ds["sentence2"], ds["label"]):
        if label in (ENTAILMENT, CONTRADICTION):
            texts, labels = lists.setdefault(premise, ([], []))
            texts.append(hypothesis)
            labels.append(1.0 if label == ENTAILMENT else 0.0)
    kept = {q: v for q, v in lists.items() if 1.0 in v[1]}
    if not kept:
        raise DataError(f"{source or 'NLI data'}: no premise has an entailed hypothesis, so no query has a relevant candidate.")
    return datasets.Dataset.from_dict(
        {"query": list(kept), "candidates": [v[0] for v in kept.values()], "labels": [v[1] for v in kept.values()]}
    )


def candidates_to_pairs(ds: datasets.Dataset) -> datasets.Dataset:
    """(query, candidates, labels) -> one scored pair per candidate (for pointwise losses)."""
    s1, s2, scores = [], [], []
    for query, candidates, labels in zip(ds["query"], ds["candidates"], ds["labels"]):
        for candidate, label in zip(candidates, labels):
            s1.append(query)
            s2.append(candidate)
            scores.append(float(label))
    out = datasets.Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": scores})
    return out.cast_column("score", datasets.Value("float32"))


def candidates_to_triplets(ds: datasets.Dataset, source: str = "") -> datasets.Dataset:
    """(query, candidates, labels) -> (anchor, best candidate[, best-scored non-positive]): the
    hard negative column only when every query has one."""
    anchors, positives, negatives = [], [], []
    for query, candidates, labels in zip(ds["query"], ds["candidates"], ds["labels"]):
        order = sorted(range(len(candidates)), key=lambda i: -labels[i])
        anchors.append(query)
        positives.append(candidates[order[0]])
        rest = [candidates[i] for i in order[1:] if labels[i] < labels[order[0]]]
        negatives.append(rest[0] if rest else None)
    columns = {"anchor": anchors, "positive": positives}
    if all(n is not None for n in negatives):
        columns["negative"] = negatives
    else:
        log.info("%s: not every query has a negative candidate; training on (query, positive) pairs", source)
    return datasets.Dataset.from_dict(columns)


def to_shape(ds: datasets.Dataset, source_kind: str, shape: str, hard_negatives: bool, source: str) -> datasets.Dataset:
    """Converts a source dataset (kind nli, pairs, text, sts or candidates) to the loss's shape."""
    if source_kind == "candidates":
        convert = {Shape.query_candidates: lambda: ds, Shape.scored_pairs: lambda: candidates_to_pairs(ds),
                   Shape.triplets: lambda: candidates_to_triplets(ds, source)}
        if shape in convert:
            return convert[Shape(shape)]()
    if shape == "query_candidates" and source_kind == "nli":
        return nli_to_candidates(ds, source)
    if shape == "texts":
        return texts_to_pairs(ds)
    if shape == "triplets":
        if source_kind == "nli":
            return nli_to_triplets(ds, hard_negatives, source)
        if source_kind == "pairs":
            return ds
        if source_kind == "text":
            return texts_to_pairs(ds)
    if shape == "labeled_pairs" and source_kind == "nli":
        return ds
    if shape == "scored_pairs" and source_kind == "sts":
        return ds
    raise DataError(f"{source}: {source_kind} data cannot feed a loss that trains on {shape.replace('_', ' ')}.")
