"""Ranked retrieval, scored: queries, one corpus and each query's relevant documents
(`RetrievalSet`, built over the Arrow columns of a cached split or from a RetrievalSplit), and the
figures of a ranking, the same as sentence-transformers' InformationRetrievalEvaluator computes."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from train.data.corpus import Corpus
from train.data.texts import Texts, column_hashes, unique_first
from train.errors import DataError

log = logging.getLogger("train")

METRIC_K = 10
DEPTH = 100  # how deep a ranking is scored (Recall@100, MAP@100)
METRICS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100")


def ranking_metrics(rankings: Sequence[Sequence[int]], relevant: Sequence[set[int]]) -> dict[str, float]:
    """MRR@10, NDCG@10 (binary relevance), Recall@1/10/100 and MAP@100, averaged over queries.

    `rankings[i]` is query i's document ids, best first (at least its top 100 where the corpus
    has them; -1 pads a short one); `relevant[i]` its relevant ids (not empty). The figures are
    sentence-transformers' InformationRetrievalEvaluator's: Recall@k is the share of a query's
    relevant documents in its top k (a query with two relevant documents has Recall@1 of at most
    0.5), AP@100 sums precision at each hit over min(100, relevant)."""
    if len(rankings) != len(relevant) or len(rankings) == 0:
        raise ValueError(f"{len(rankings)} rankings for {len(relevant)} queries: need one per query, at least one.")
    sums = dict.fromkeys(METRICS, 0.0)
    for ranking, rel in zip(rankings, relevant):
        hits = [doc in rel for doc in list(ranking)[:DEPTH]]
        first = next((i for i, hit in enumerate(hits[:METRIC_K]) if hit), None)
        sums["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
        dcg = sum(1.0 / math.log2(i + 2) for i, hit in enumerate(hits[:METRIC_K]) if hit)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), METRIC_K)))
        sums["ndcg@10"] += dcg / ideal
        for k in (1, 10, 100):
            sums[f"recall@{k}"] += sum(hits[:k]) / len(rel)
        precisions = [sum(hits[: i + 1]) / (i + 1) for i, hit in enumerate(hits) if hit]
        sums["map@100"] += sum(precisions) / min(len(rel), DEPTH)
    return {name: total / len(rankings) for name, total in sums.items()}




@dataclass
class RetrievalSet:
    queries: list[str]
    corpus: Sequence[str]  # the documents: a Texts view of the cached split, or a list
    relevant: list[set[int]]  # per query: ids into corpus


def pick(corpus: Sequence[str], ids: Sequence[int]) -> list[str]:
    return corpus.take(ids) if isinstance(corpus, Texts) else [corpus[int(i)] for i in ids]


def retrieval_set(ds: Any, corpus_kind: str = "positives", max_queries: int = 0) -> RetrievalSet:
    """Query-with-candidates rows (a Dataset, or the cached Corpus) -> queries, one shared corpus
    and each query's relevant ids, as arrays over the Arrow columns (no Python copy of the corpus).

    The corpus is built from every row, so capping the queries keeps the search as hard as the
    whole split's; a candidate relevant to one query is an ordinary document for the others.
    Document ids follow first appearance: row by row, a row's relevant candidates, then (with
    corpus=all) its other candidates.
    """
    from train.data.shapes import flat_values

    table = ds.dataset.data.table if isinstance(ds, Corpus) else ds.data.table
    flat, parents = flat_values(table.column("candidates"))
    labels = flat_values(table.column("labels"))[0].to_numpy()
    relevant_flat = np.flatnonzero(labels > 0)
    if corpus_kind == "all":
        every = np.arange(len(flat))
        seq = np.concatenate([relevant_flat, every])
        passes = np.concatenate([np.zeros(len(relevant_flat), np.int8), np.ones(len(every), np.int8)])
        order = np.lexsort((seq, passes, parents[seq]))  # by row, then relevant first, then position
        seq = seq[order]
    else:
        seq = relevant_flat
    first, doc_of_seq = unique_first(column_hashes(flat)[seq])
    doc_of_flat = np.full(len(flat), -1, dtype=np.int64)
    doc_of_flat[seq[::-1]] = doc_of_seq[::-1]  # any occurrence names the same document
    kept = np.unique(parents[relevant_flat])  # rows with a relevant candidate, in row order
    dropped = table.num_rows - len(kept)
    if not len(kept):
        raise DataError("no query has a relevant candidate (a label > 0), so there is nothing to retrieve.")
    if dropped:
        log.info("%d queries without a relevant candidate left out", dropped)
    if max_queries:
        kept = kept[:max_queries]
    starts = np.searchsorted(parents[relevant_flat], kept)
    ends = np.searchsorted(parents[relevant_flat], kept, side="right")
    relevant = [set(doc_of_flat[relevant_flat[a:b]].tolist()) for a, b in zip(starts, ends)]
    queries = Texts(table.column("query")).take(kept)
    return RetrievalSet(queries, Texts(flat, seq[first]), relevant)


def from_split(split: Any) -> RetrievalSet:
    """A RetrievalSplit (data=beir, korquad: ids to texts) as queries, corpus and relevant ids. A
    cached BEIR corpus stays a column view: its passages are read a slice at a time by search."""
    qids = list(split.relevant)
    if hasattr(split.corpus, "texts"):  # train/data/beir_corpus.py's CorpusTable
        return RetrievalSet([split.queries[q] for q in qids], split.corpus.texts,
                            [{split.corpus.row(c) for c in split.relevant[q]} for q in qids])
    cids = list(split.corpus)
    index = {cid: i for i, cid in enumerate(cids)}
    qids = list(split.relevant)
    return RetrievalSet([split.queries[q] for q in qids], [split.corpus[c] for c in cids],
                        [{index[c] for c in split.relevant[q]} for q in qids])
