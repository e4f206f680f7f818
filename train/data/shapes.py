"""Raw sources -> the shape a loss trains on (see train/losses.py).

NLI becomes triplets the way SBERT/SimCSE build them: the premise is the anchor, a hypothesis
it entails is the positive, and a hypothesis it contradicts is the hard negative.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import datasets

from train.errors import DataError

log = logging.getLogger(__name__)

ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2


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


def to_shape(ds: datasets.Dataset, source_kind: str, shape: str, hard_negatives: bool, source: str) -> datasets.Dataset:
    """Converts a source dataset (kind nli, pairs, text or sts) to the loss's shape."""
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
