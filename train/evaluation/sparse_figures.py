"""task=sparse figures, with sentence-transformers' sparse evaluators (dot product, as SparseEncoder
scores): retrieval as the dense evaluation reports it (NDCG@10, MRR@10, Recall@1/10/100, MAP@100)
plus the active dimensions of a query and of a document and the average FLOPS of a query-document
score; STS Spearman and Pearson with the active dimensions of a text."""

from __future__ import annotations

from typing import Any

from train.evaluation.eval_mode import eval_mode
from train.evaluation.figures import retrieval_inputs

SPARSE_MAIN_METRIC = "retrieval_ndcg@10"
RANKING = {"ndcg@10": "ndcg@10", "mrr@10": "mrr@10", "recall@1": "recall@1", "recall@10": "recall@10", "recall@100": "recall@100",
           "map@100": "map@100"}
SPARSITY = ("query_active_dims", "corpus_active_dims", "avg_flops")


def sparse_retrieval_evaluator(data: Any, batch_size: int = 64):
    """`data`: a RetrievalSplit (a whole corpus: data=beir, korquad) or (anchor, positive) rows."""
    from sentence_transformers.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator

    queries, corpus, relevant = retrieval_inputs(data)
    return SparseInformationRetrievalEvaluator(
        queries=queries, corpus=corpus, relevant_docs=relevant, mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10, 100], map_at_k=[100], batch_size=batch_size, write_csv=False,
    )


def evaluate_sparse_retrieval(model: Any, data: Any, batch_size: int = 64) -> dict[str, float]:
    """{retrieval_ndcg@10, ..., retrieval_query_active_dims, retrieval_corpus_active_dims, retrieval_avg_flops, retrieval_n_queries}."""
    evaluator = sparse_retrieval_evaluator(data, batch_size)
    with eval_mode(model):
        raw = evaluator(model)
    score = next(k for k in raw if k.endswith("_ndcg@10")).removesuffix("_ndcg@10")  # the model's own similarity: dot
    metrics = {f"retrieval_{k}": float(raw[f"{score}_{v}"]) for k, v in RANKING.items()}
    metrics.update({f"retrieval_{k}": float(raw[k]) for k in SPARSITY})
    metrics["retrieval_n_queries"] = len(evaluator.queries)
    return metrics


def evaluate_sparse_sts(model: Any, ds: Any, batch_size: int = 64) -> dict[str, float]:
    """{spearman_dot, pearson_dot, spearman_cosine, pearson_cosine, active_dims, n_pairs} on scored pairs."""
    from sentence_transformers.sparse_encoder.evaluation import SparseEmbeddingSimilarityEvaluator

    evaluator = SparseEmbeddingSimilarityEvaluator(ds["sentence1"], ds["sentence2"], ds["score"], batch_size=batch_size,
                                                   similarity_fn_names=["dot", "cosine"], write_csv=False)
    with eval_mode(model):
        raw = evaluator(model)
    metrics = {f"{kind}_{sim}": float(raw[f"{kind}_{sim}"]) for kind in ("spearman", "pearson") for sim in ("dot", "cosine")}
    return {**metrics, "active_dims": float(raw["active_dims"]), "n_pairs": len(ds)}


# Passages encoded at a time into the index: the library's COO output (int64 indices, 20 bytes an
# active dimension) is held for one chunk only, beside the int32 CSR index (8 bytes).
INDEX_CHUNK = 16_384
# Query-document scores computed at a time (256 MB in fp32), so that scoring memory does not grow
# with the corpus: fewer queries a block over a larger corpus.
SCORE_ELEMENTS = 1 << 26


class _Growing:
    """A 1-d array appended to in place: sized from the first chunk's density, grown by half when
    full, so the index is not held twice at the end as concatenating the chunks would."""

    def __init__(self, dtype: Any) -> None:
        import numpy as np

        self.data, self.size = np.zeros(0, dtype), 0

    def reserve(self, capacity: int) -> None:
        import numpy as np

        if capacity > len(self.data):
            grown = np.empty(capacity, self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown

    def extend(self, values: Any) -> None:
        if self.size + len(values) > len(self.data):
            self.reserve(max(self.size + len(values), len(self.data) * 3 // 2))
        self.data[self.size : self.size + len(values)] = values
        self.size += len(values)

    def array(self) -> Any:
        return self.data[: self.size]


def sparse_index(model: Any, corpus: list[str], batch_size: int = 64, chunk: int | None = None) -> Any:
    """The corpus's document vectors as one torch CSR matrix (passages x vocabulary) with int32 row
    offsets and token ids (int64 past 2^31 active dimensions) and float32 weights, as an inverted
    index holds them."""
    import numpy as np
    import torch

    chunk = chunk or INDEX_CHUNK
    crow, ids, weights = np.zeros(len(corpus) + 1, np.int64), _Growing(np.int32), _Growing(np.float32)
    for start in range(0, len(corpus), chunk):
        part = model.encode_document(corpus[start : start + chunk], batch_size=batch_size, convert_to_sparse_tensor=True).coalesce()
        part = part.to_sparse_csr()
        if start == 0:  # the rest of the corpus is assumed about as dense as its first chunk, with a margin
            estimate = int(1.2 * part.values().numel() * len(corpus) / max(1, part.shape[0])) + 1
            ids.reserve(estimate), weights.reserve(estimate)
        crow[start + 1 : start + 1 + part.shape[0]] = part.crow_indices()[1:].numpy() + ids.size
        ids.extend(part.col_indices().numpy())
        weights.extend(part.values().float().numpy())
    index_type = np.int32 if ids.size < 2**31 else np.int64  # torch wants row offsets and ids of one type
    columns = torch.from_numpy(ids.array().astype(index_type, copy=False))
    vocabulary = model.get_embedding_dimension()
    # Checked (one pass over the index): a malformed CSR matrix would crash the matmul, not raise.
    return torch.sparse_csr_tensor(torch.from_numpy(crow.astype(index_type)), columns, torch.from_numpy(weights.array()),
                                   size=(len(corpus), vocabulary), check_invariants=True)


def timed_sparse_queries(model: Any, documents: Any, queries: list[str], depth: int) -> list[float]:
    """Seconds each query takes alone: encode it, score it against every passage, take the top `depth`."""
    import time

    import torch

    model.encode_query(queries[:3])  # warm-up: the first calls allocate
    seconds = []
    for text in queries:
        start = time.perf_counter()
        torch.topk(documents @ model.encode_query([text], convert_to_sparse_tensor=True).to_dense()[0].float(), k=depth)
        seconds.append(time.perf_counter() - start)
    return seconds


def sparse_query_cost(model: Any, data: Any, n_queries: int = 200, batch_size: int = 64) -> dict[str, float]:
    """What a sparse search costs, as an inverted index would hold it: bytes a passage (each active
    dimension a float32 weight and an int32 token id) and ms a query, one query at a time (encode
    the query, score it against every passage by sparse dot product, take the top 10), on the
    first `n_queries` queries of a RetrievalSplit."""
    import torch

    corpus = list(data.corpus.values())
    with eval_mode(model), torch.inference_mode():
        documents = sparse_index(model, corpus, batch_size)
        seconds = timed_sparse_queries(model, documents, list(data.queries.values())[:n_queries], min(10, len(corpus)))
    nnz = documents.values().numel()
    return {"bytes_per_passage": 8 * nnz / len(corpus), "ms_per_query": 1000 * sum(seconds) / len(seconds), "timed_queries": len(seconds)}


def sparse_search(model: Any, queries: list[str], corpus: list[str], depth: int = 100, timed: int = 0, batch_size: int = 64):
    """(ids, scores, seconds): each query's `depth` best documents by sparse dot product, best
    first, and the seconds the first `timed` queries (0: all) took one by one. The corpus is
    encoded once into a CSR index (`sparse_index`); then every query is scored a block at a
    time, at most SCORE_ELEMENTS scores a block."""
    import numpy as np
    import torch

    depth = min(depth, len(corpus))
    timed = len(queries) if timed <= 0 else min(timed, len(queries))
    block = max(1, min(256, SCORE_ELEMENTS // max(1, len(corpus))))
    with eval_mode(model), torch.inference_mode():
        documents = sparse_index(model, list(corpus), batch_size)
        seconds = timed_sparse_queries(model, documents, queries[:timed], depth)
        ids, scores = [], []
        for start in range(0, len(queries), block):
            q = model.encode_query(queries[start : start + block], batch_size=batch_size, convert_to_sparse_tensor=True).to_dense().float()
            top = torch.topk((documents @ q.T).T, k=depth, dim=1)
            ids.append(top.indices.numpy())
            scores.append(top.values.numpy())
    return np.concatenate(ids), np.concatenate(scores), seconds
