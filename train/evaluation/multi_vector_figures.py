"""task=multi_vector figures (MaxSim, as MultiVectorEncoder scores).

- Retrieval: exact MaxSim of every query against the whole corpus, with the library's
  MultiVectorInformationRetrievalEvaluator. It encodes and scores the corpus `corpus_chunk_size`
  documents at a time and keeps only a running top-k, so memory stays flat in the corpus size
  (the token vectors of one chunk, not of the corpus). The same figures as the dense evaluation
  (NDCG@10, MRR@10, Recall@1/10/100, MAP@100), plus the scored tokens of a query and a document.
- STS: Spearman and Pearson of MaxSim (first text as the query, second as the document).
- Query cost: what an exact search holds and spends (bytes a passage, ms a query).
- Reranking: MaxSim over a shortlist (BM25's), the cheap way to use ColBERT without its index.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from train.evaluation.eval_mode import eval_mode
from train.evaluation.figures import retrieval_inputs

MULTI_VECTOR_MAIN_METRIC = "retrieval_ndcg@10"
RANKING = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100", "map@100")
# Documents the retrieval evaluation encodes and scores at a time: bounds the token vectors it
# holds (2,000 documents of 256 tokens in 128 dimensions: 262 MB in fp32).
CORPUS_CHUNK = 2000


def evaluate_multi_vector_retrieval(model: Any, data: Any, batch_size: int = 64, corpus_chunk_size: int = CORPUS_CHUNK) -> dict[str, float]:
    """{retrieval_ndcg@10, ..., retrieval_query_tokens, retrieval_document_tokens, retrieval_n_queries}.
    `data`: a RetrievalSplit (a whole corpus: data=beir, korquad) or (anchor, positive) rows."""
    from sentence_transformers.multi_vector_encoder.evaluation import MultiVectorInformationRetrievalEvaluator

    queries, corpus, relevant = retrieval_inputs(data)
    evaluator = MultiVectorInformationRetrievalEvaluator(
        queries=queries, corpus=corpus, relevant_docs=relevant, corpus_chunk_size=corpus_chunk_size, mrr_at_k=[10], ndcg_at_k=[10],
        accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10, 100], map_at_k=[100], batch_size=batch_size, write_csv=False,
    )
    with eval_mode(model):
        raw = evaluator(model)
        sample = list(corpus.values())[:256]
        tokens = {"query_tokens": _scored_tokens(model.encode_query(list(queries.values())[:256], batch_size=batch_size)),
                  "document_tokens": _scored_tokens(model.encode_document(sample, batch_size=batch_size))}
    score = next(k for k in raw if k.endswith("_ndcg@10")).removesuffix("_ndcg@10")  # the model's similarity: maxsim
    metrics = {f"retrieval_{k}": float(raw[f"{score}_{k}"]) for k in RANKING}
    metrics.update({f"retrieval_{k}": v for k, v in tokens.items()})
    metrics["retrieval_n_queries"] = len(queries)
    return metrics


def _scored_tokens(embeddings: list[torch.Tensor]) -> float:
    """Mean token vectors a text keeps (encode drops the ones the scoring mask leaves out)."""
    return float(np.mean([len(e) for e in embeddings])) if embeddings else 0.0


def evaluate_multi_vector_sts(model: Any, ds: Any, batch_size: int = 64) -> dict[str, float]:
    """{spearman_maxsim, pearson_maxsim, n_pairs} on scored pairs."""
    from scipy.stats import pearsonr, spearmanr

    with eval_mode(model), torch.inference_mode():
        a = model.encode_query(list(ds["sentence1"]), batch_size=batch_size)
        b = model.encode_document(list(ds["sentence2"]), batch_size=batch_size)
        scores = model.similarity_pairwise(a, b).float().cpu().numpy()
    gold = np.asarray(ds["score"], dtype=np.float64)
    return {"spearman_maxsim": float(spearmanr(gold, scores)[0]), "pearson_maxsim": float(pearsonr(gold, scores)[0]), "n_pairs": len(ds)}


def encode_corpus(model: Any, corpus: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The corpus's token vectors padded into one (documents, tokens, dim) tensor and its mask."""
    return _padded(model.encode_document(corpus, batch_size=batch_size))


def _padded(vectors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    masks = [torch.ones(len(v), dtype=torch.bool) for v in vectors]
    return torch.nn.utils.rnn.pad_sequence(vectors, batch_first=True), torch.nn.utils.rnn.pad_sequence(masks, batch_first=True)


def maxsim_scores(query: torch.Tensor, documents: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MaxSim of one query's token vectors (q, dim) against padded documents (n, t, dim) and their
    mask: the library's maxsim, which packs documents under a fixed element budget (flat memory)."""
    from sentence_transformers.util.similarity import maxsim

    return maxsim(query, documents, b_mask=mask)[0]


def multi_vector_query_cost(model: Any, data: Any, n_queries: int = 200, batch_size: int = 64) -> dict[str, float]:
    """What an exact MaxSim search costs, its corpus held in memory: bytes a passage (its scored
    token vectors in fp32; fp16 halves it) and ms a query, one query at a time (encode it, MaxSim
    against every passage, take the top 10), on the first `n_queries` queries of a RetrievalSplit."""
    corpus = list(data.corpus.values())
    with eval_mode(model), torch.inference_mode():
        documents, mask = encode_corpus(model, corpus, batch_size)
        queries = list(data.queries.values())[:n_queries]
        model.encode_query(queries[:3])  # warm-up: the first calls allocate
        seconds = []
        for text in queries:
            start = time.perf_counter()
            q = model.encode_query([text])[0]
            torch.topk(maxsim_scores(q, documents, mask), k=min(10, len(corpus)))
            seconds.append(time.perf_counter() - start)
    dim = documents.shape[-1]
    return {"bytes_per_passage": 4 * dim * float(mask.sum()) / len(corpus), "ms_per_query": 1000 * sum(seconds) / len(seconds),
            "timed_queries": len(seconds)}


def maxsim_rerank(model: Any, queries: list[str], corpus: list[str], shortlists: np.ndarray, batch_size: int = 64,
                  timed: int = 0) -> tuple[np.ndarray, list[float]]:
    """Each query's shortlist (ids into `corpus`, best first) reordered by MaxSim, and the seconds
    the first `timed` queries (0: all) took one by one as a reranking service meets them: encode
    the query and its candidates, score. The order comes from every shortlisted document encoded
    once (the same vectors: encoding is deterministic), so the untimed queries cost no re-encoding."""
    from train.evaluation.ranking import pick

    timed = len(queries) if timed <= 0 else min(timed, len(queries))
    seconds = []
    with eval_mode(model), torch.inference_mode():
        model.encode_query(queries[:1])
        for query, ids in zip(queries[:timed], shortlists[:timed]):
            start = time.perf_counter()
            q = model.encode_query([query])[0]
            documents, mask = _padded(model.encode_document(pick(corpus, ids), batch_size=batch_size))
            torch.argsort(maxsim_scores(q, documents, mask), descending=True)
            seconds.append(time.perf_counter() - start)
        wanted = np.unique(shortlists)
        documents, mask = _padded(model.encode_document(pick(corpus, wanted), batch_size=batch_size))
        row = {int(j): i for i, j in enumerate(wanted)}
        out = np.empty_like(shortlists)
        vectors = model.encode_query(list(queries), batch_size=batch_size)
        for i, (q, ids) in enumerate(zip(vectors, shortlists)):
            rows = torch.tensor([row[int(j)] for j in ids])
            out[i] = ids[torch.argsort(maxsim_scores(q, documents[rows], mask[rows]), descending=True).numpy()]
    return out, seconds
