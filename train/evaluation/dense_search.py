"""The bi-encoder's side of a retrieval run: the corpus embedded once into the data cache, each
query embedded and searched (timed one by one, as a search service meets them), and, for a
quantized search, its recall against exact float32 search."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def bi_encoder_search(
    bi: Any, queries: Sequence[str], index: Any, depth: int, batch_size: int, timed: int = 0, prompt: str | None = None,
    exact: Any = None,
) -> tuple[np.ndarray, list[float], np.ndarray, list[float], np.ndarray | None]:
    """Each query's top `depth` document ids (an array, a row a query), the seconds (encoding +
    search) of each of the first `timed` queries (0: all), run one by one as a search service
    meets them: it embeds a query when it arrives, not in a batch with later ones (the rest are
    embedded and searched in batches), the cosine of each ranked document, the seconds of
    the search alone of each timed query, and, given an `exact` index, each query's top 10 by
    it: the same query vectors searched again, outside the timed span."""
    from train.evaluation.bars import ProgressLog
    from train.evaluation.search import QUERY_BATCH, embed

    depth = min(depth, index.vectors.rows)
    timed = len(queries) if timed <= 0 else min(timed, len(queries))
    rankings = np.empty((len(queries), depth), dtype=np.int64)
    scores = np.empty((len(queries), depth), dtype=np.float32)
    seconds, searching = [], []
    exact_depth = min(10, depth)
    exact_ids = np.empty((len(queries), exact_depth), dtype=np.int64) if exact is not None else None
    for i in range(timed):
        start = time.perf_counter()
        query = embed(bi, [queries[i]], batch_size, prompt)
        embedded = time.perf_counter()
        found, ids = index.search(query, depth)
        seconds.append(time.perf_counter() - start)
        searching.append(time.perf_counter() - embedded)
        rankings[i], scores[i] = ids[0], found[0]
        if exact is not None:
            exact_ids[i] = exact.search(query, exact_depth)[1][0]
    progress = ProgressLog("Bi-encoder search", len(queries), "queries")
    for start in range(timed, len(queries), QUERY_BATCH):
        progress(start)
        batch = queries[start : start + QUERY_BATCH]
        embedded = embed(bi, batch, batch_size, prompt)
        found, ids = index.search(embedded, depth)
        rankings[start : start + len(batch)], scores[start : start + len(batch)] = ids, found
        if exact is not None:
            exact_ids[start : start + len(batch)] = exact.search(embedded, exact_depth)[1]
    return rankings, seconds, scores, searching, exact_ids


@dataclass
class DenseSearch:
    rankings: np.ndarray  # each query's ranked document ids
    seconds: list[float]  # each timed query's encoding + search
    scores: np.ndarray  # their cosines
    embed_seconds: float  # the corpus's embedding (0 when its vectors were reused from the cache)
    reused: bool
    search_seconds: float  # every query's
    search: dict[str, Any]  # Index.describe()
    recall_vs_exact: float | None = None  # quantized search: recall@10 against exact float32 search


def dense_search(bi: Any, data: Any, depth: int, cache_root: Path, batch_size: int, timed: int, query_prompt: str | None = None,
                 document_prompt: str | None = None, search: dict[str, Any] | None = None) -> DenseSearch:
    """The bi-encoder's search of a retrieval set (queries, corpus): the corpus embedded once into
    the cache under `cache_root` (or its vectors reused), each query ranked `depth` deep, the first
    `timed` one by one (0: all). `search`: Index's settings (search_settings); exact by default."""
    from train.evaluation.search import Index, cached_vectors

    vectors, embed_seconds, reused = cached_vectors(bi, data.corpus, cache_root, batch_size, prompt=document_prompt)
    index = Index(vectors, **(search or {}), cache_root=cache_root)
    # What quantizing costs: each query's exact top 10 too, from the same query vectors.
    exact = Index(vectors, "auto") if index.quantized is not None else None
    started = time.perf_counter()
    rankings, seconds, scores, searching, exact_ids = bi_encoder_search(bi, data.queries, index, min(len(data.corpus), depth), batch_size,
                                                                        timed, query_prompt, exact)
    recall = recall_against(exact_ids, rankings) if exact_ids is not None else None
    described = index.describe() | {"search_ms_per_query": 1000.0 * float(np.mean(searching)) if searching else None}
    return DenseSearch(rankings, seconds, scores, embed_seconds, reused, time.perf_counter() - started, described, recall)


def recall_against(exact_ids: np.ndarray, rankings: np.ndarray) -> float:
    """The share of each query's exact top k (k = exact_ids' width, 10) that `rankings` also has
    in its top k, averaged over queries (recall@10 against exact search)."""
    depth = exact_ids.shape[1]
    found = sum(len(np.intersect1d(a, b)) for a, b in zip(exact_ids, rankings[:, :depth]))
    return found / max(1, exact_ids.size)
