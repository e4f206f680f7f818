"""STS evaluation: Pearson/Spearman between gold scores and embedding similarities.

The figures come from sentence-transformers' own EmbeddingSimilarityEvaluator, so they are
the numbers papers and model cards quote.
"""

from __future__ import annotations

import datasets
import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

from train.inference import encode

SIMILARITIES = ["cosine", "dot", "euclidean", "manhattan"]
MAIN_METRIC = "spearman_cosine"


class STSEvaluator(EmbeddingSimilarityEvaluator):
    """The library's evaluator and metrics; only the embedding step is `train.inference.encode`."""

    def embed_inputs(self, model: SentenceTransformer, sentences, **kwargs) -> np.ndarray:
        return encode(model, list(sentences), self.batch_size)


def sts_evaluator(ds: datasets.Dataset, batch_size: int = 64, name: str = "") -> EmbeddingSimilarityEvaluator:
    return STSEvaluator(
        ds["sentence1"],
        ds["sentence2"],
        ds["score"],
        batch_size=batch_size,
        similarity_fn_names=list(SIMILARITIES),
        name=name,
        write_csv=False,
    )


def evaluate_sts(model: SentenceTransformer, evaluator: EmbeddingSimilarityEvaluator) -> dict[str, float]:
    """{pearson_cosine, spearman_cosine, ..., spearman_manhattan, n_pairs}; leaves the model in the mode it found."""
    was_training = model.training
    model.eval()
    try:
        raw = evaluator(model)
    finally:
        model.train(was_training)
    prefix = f"{evaluator.name}_" if evaluator.name else ""
    metrics = {}
    for kind in ("pearson", "spearman"):
        for sim in SIMILARITIES:
            metrics[f"{kind}_{sim}"] = float(raw[f"{prefix}{kind}_{sim}"])
    metrics["n_pairs"] = len(evaluator.scores)
    return metrics


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A small text table: one row a split, Spearman for each similarity and Pearson (cosine)."""
    columns = ["spearman_cosine", "pearson_cosine", "spearman_dot", "spearman_euclidean", "spearman_manhattan", "n_pairs"]
    header = f"{'split':<6} " + " ".join(f"{c:>18}" for c in columns)
    lines = [header, "-" * len(header)]
    for split, metrics in results.items():
        cells = [f"{metrics[c]:>18.4f}" if c != "n_pairs" else f"{int(metrics[c]):>18d}" for c in columns]
        lines.append(f"{split:<6} " + " ".join(cells))
    return "\n".join(lines)
