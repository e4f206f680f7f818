"""STS and retrieval evaluation, with sentence-transformers' own evaluators and metrics.

STS: Pearson/Spearman between gold scores and the cosine (dot, euclidean, manhattan) similarity
of the two embeddings. Retrieval: MRR@10, NDCG@10 and Recall@1/10 of finding each anchor's
positive among all positives. Under several processes each rank embeds its own share of the
sentences and the shares are gathered, so every sentence is embedded exactly once.
"""

from __future__ import annotations

from typing import Any

from collections.abc import Sequence

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
)

from train.evaluation.encode import encode
from train.evaluation.bars import long_eval
from train.evaluation.eval_mode import eval_mode
from train.evaluation.tables import text_table

SIMILARITIES = ["cosine", "dot", "euclidean", "manhattan"]
MAIN_METRIC = "spearman_cosine"
RETRIEVAL_MAIN_METRIC = "retrieval_ndcg@10"


def encode_sharded(
    model: SentenceTransformer, sentences: Sequence[str], batch_size: int, truncate_dim: int | None = None, prompt: str | None = None
) -> np.ndarray:
    """`encode` split over the processes and gathered back in order (one process: plain encode).
    A long list shows a bar on the main process (train/evaluation/bars.py)."""
    state = PartialState()
    progress = long_eval(len(sentences))
    if state.num_processes == 1:
        embeddings = encode(model, sentences, batch_size, progress, prompt)
    else:
        with state.split_between_processes(list(sentences)) as share:
            mine = encode(model, share, batch_size, progress, prompt)
        parts = gather_object([mine])
        embeddings = np.concatenate(parts) if parts else mine
    return embeddings[:, :truncate_dim] if truncate_dim else embeddings


class STSEvaluator(EmbeddingSimilarityEvaluator):
    """The library's evaluator and metrics; only the embedding step is ours (faster, sharded).
    `prompts`: the texts put before sentence1 and before sentence2 (None: no prompt)."""

    prompts: tuple[str | None, str | None] = (None, None)

    def embed_inputs(self, model: SentenceTransformer, sentences, **kwargs) -> np.ndarray:
        prompt = self.prompts[0] if sentences is self.sentences1 else self.prompts[1]
        return encode_sharded(model, list(sentences), self.batch_size, self.truncate_dim, prompt)


class RetrievalEvaluator(InformationRetrievalEvaluator):
    def embed_inputs(self, model: SentenceTransformer, sentences, encode_fn_name=None, prompt=None, **kwargs) -> torch.Tensor:
        return torch.from_numpy(encode_sharded(model, list(sentences), self.batch_size, self.truncate_dim, prompt or None))


def sts_evaluator(
    ds: datasets.Dataset, batch_size: int = 64, name: str = "", truncate_dim: int | None = None, prompts: dict[str, str] | None = None
) -> EmbeddingSimilarityEvaluator:
    """`prompts`: column (sentence1, sentence2) -> the text put before its sentences."""
    evaluator = STSEvaluator(
        ds["sentence1"],
        ds["sentence2"],
        ds["score"],
        batch_size=batch_size,
        similarity_fn_names=list(SIMILARITIES),
        name=name,
        write_csv=False,
        truncate_dim=truncate_dim,
    )
    prompts = prompts or {}
    evaluator.prompts = (prompts.get("sentence1"), prompts.get("sentence2"))
    return evaluator


def _run(evaluator, model: SentenceTransformer) -> dict[str, float]:
    """The evaluator's raw figures, with dropout off; the model is left in the mode it was found in."""
    with eval_mode(model):
        return evaluator(model)


def evaluate_sts(model: SentenceTransformer, evaluator: EmbeddingSimilarityEvaluator) -> dict[str, float]:
    """{pearson_cosine, spearman_cosine, ..., spearman_manhattan, n_pairs}."""
    raw = _run(evaluator, model)
    prefix = f"{evaluator.name}_" if evaluator.name else ""
    metrics = {}
    for kind in ("pearson", "spearman"):
        for sim in SIMILARITIES:
            metrics[f"{kind}_{sim}"] = float(raw[f"{prefix}{kind}_{sim}"])
    metrics["n_pairs"] = len(evaluator.scores)
    return metrics


def evaluate_sts_dims(
    model: SentenceTransformer, ds: datasets.Dataset, batch_size: int, dims: Sequence[int] = (), prompts: dict[str, str] | None = None
) -> dict[str, float]:
    """STS figures at full size, plus Spearman (cosine) at each Matryoshka dimension. `prompts`:
    column -> prompt text."""
    metrics = evaluate_sts(model, sts_evaluator(ds, batch_size, prompts=prompts))
    full = model.get_embedding_dimension()
    for dim in dims:
        if dim < full:
            metrics[f"spearman_cosine@{dim}"] = evaluate_sts(model, sts_evaluator(ds, batch_size, truncate_dim=dim, prompts=prompts))["spearman_cosine"]
    return metrics


RETRIEVAL_FIGURES = {
    "ndcg@10": "cosine_ndcg@10", "mrr@10": "cosine_mrr@10", "recall@1": "cosine_recall@1", "recall@10": "cosine_recall@10",
    "recall@100": "cosine_recall@100", "map@100": "cosine_map@100",
}


def retrieval_evaluator(data: Any, batch_size: int = 64, prompts: dict[str, str] | None = None) -> InformationRetrievalEvaluator:
    """The library's evaluator over `data`: a RetrievalSplit (queries against a whole corpus:
    data=beir, korquad), or (anchor, positive) rows, where each distinct anchor is a query, all
    distinct positives are the corpus and its positives are relevant. `prompts`: column (anchor,
    positive) -> the text put before its texts."""
    prompts = prompts or {}
    queries, corpus, relevant = retrieval_inputs(data)
    return RetrievalEvaluator(
        queries=queries,
        corpus=corpus,
        relevant_docs=relevant,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        accuracy_at_k=[1, 10],
        precision_recall_at_k=[1, 10, 100],
        map_at_k=[100],
        batch_size=batch_size,
        write_csv=False,
        query_prompt=prompts.get("anchor"),
        corpus_prompt=prompts.get("positive"),
        score_functions={"cosine": lambda a, b: torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T},
    )


def retrieval_inputs(data: Any) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """(queries, corpus, relevant ids) as the library's retrieval evaluators take them, from a
    RetrievalSplit or from (anchor, positive) rows."""
    if hasattr(data, "relevant"):
        return data.queries, data.corpus, {q: set(docs) for q, docs in data.relevant.items()}
    return _pairs_as_retrieval(data)


def _pairs_as_retrieval(ds: datasets.Dataset) -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    relevant: dict[str, set[str]] = {}
    for anchor, positive in zip(ds["anchor"], ds["positive"]):
        qid = queries.setdefault(anchor, f"q{len(queries)}")
        cid = corpus.setdefault(positive, f"d{len(corpus)}")
        relevant.setdefault(qid, set()).add(cid)
    return {qid: text for text, qid in queries.items()}, {cid: text for text, cid in corpus.items()}, relevant


def evaluate_retrieval(model: SentenceTransformer, evaluator: InformationRetrievalEvaluator) -> dict[str, float]:
    """{retrieval_ndcg@10, retrieval_mrr@10, retrieval_recall@1/10/100, retrieval_map@100,
    retrieval_n_queries}: the library's figures (cosine), as its evaluator computes them."""
    raw = _run(evaluator, model)
    metrics = {f"retrieval_{k}": float(raw[v]) for k, v in RETRIEVAL_FIGURES.items()}
    metrics["retrieval_n_queries"] = len(evaluator.queries)
    return metrics


def format_table(results: dict[str, dict[str, float]]) -> str:
    """One row a split: Spearman for each similarity and Pearson (cosine)."""
    columns = ["spearman_cosine", "pearson_cosine", "spearman_dot", "spearman_euclidean", "spearman_manhattan", "n_pairs"]
    return text_table({split: m for split, m in results.items() if "spearman_cosine" in m}, columns)
