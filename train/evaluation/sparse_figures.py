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


def sparse_query_cost(model: Any, data: Any, n_queries: int = 200, batch_size: int = 64) -> dict[str, float]:
    """What a sparse search costs, as an inverted index would hold it: bytes a passage (each active
    dimension a float32 weight and an int32 token id) and ms a query, one query at a time (encode
    the query, score it against every passage by sparse dot product, take the top 10), on the
    first `n_queries` queries of a RetrievalSplit."""
    import time

    import torch

    corpus = list(data.corpus.values())
    with eval_mode(model), torch.inference_mode():
        documents = model.encode_document(corpus, batch_size=batch_size, convert_to_sparse_tensor=True).coalesce().to_sparse_csr()
        queries = list(data.queries.values())[:n_queries]
        model.encode_query(queries[:3])  # warm-up: the first calls allocate
        seconds = []
        for text in queries:
            start = time.perf_counter()
            q = model.encode_query([text], convert_to_sparse_tensor=True).to_dense()[0]
            torch.topk(documents @ q, k=min(10, len(corpus)))
            seconds.append(time.perf_counter() - start)
    nnz = documents.values().numel()
    return {"bytes_per_passage": 8 * nnz / len(corpus), "ms_per_query": 1000 * sum(seconds) / len(seconds), "timed_queries": len(seconds)}


def sparse_search(model: Any, queries: list[str], corpus: list[str], depth: int = 100, timed: int = 0, batch_size: int = 64):
    """(ids, scores, seconds): each query's `depth` best documents by sparse dot product, best
    first, and the seconds the first `timed` queries (0: all) took one by one (encode, score
    against every document, top `depth`). The corpus is encoded once into a sparse matrix; the
    scores of the untimed queries come 256 queries at a time."""
    import time

    import numpy as np
    import torch

    depth = min(depth, len(corpus))
    timed = len(queries) if timed <= 0 else min(timed, len(queries))
    with eval_mode(model), torch.inference_mode():
        documents = model.encode_document(list(corpus), batch_size=batch_size, convert_to_sparse_tensor=True).coalesce().to_sparse_csr()
        model.encode_query(queries[:1])
        seconds = []
        for text in queries[:timed]:
            start = time.perf_counter()
            torch.topk(documents @ model.encode_query([text], convert_to_sparse_tensor=True).to_dense()[0], k=depth)
            seconds.append(time.perf_counter() - start)
        ids, scores = [], []
        for start in range(0, len(queries), 256):
            q = model.encode_query(queries[start : start + 256], batch_size=batch_size, convert_to_sparse_tensor=True).to_dense()
            top = torch.topk((documents @ q.T).T, k=depth, dim=1)
            ids.append(top.indices.numpy())
            scores.append(top.values.float().numpy())
    return np.concatenate(ids), np.concatenate(scores), seconds
