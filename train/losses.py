"""Loss config -> a sentence-transformers loss, and the shape of data it trains on.

Losses with `compute_loss_from_embeddings` let the loop embed every column of a batch in one
forward pass (`from_embeddings`); the others (GradCache, Matryoshka, the softmax classifier)
are called with one feature batch per column and run the model themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses as st_losses
from torch import nn

from train.errors import ConfigError

# What each loss trains on:
#   scored_pairs   sentence1, sentence2, score in [0, 1]           (STS)
#   triplets       anchor, positive[, negative]                     (NLI, pairs files)
#   texts          anchor == positive: the same sentence twice      (unsupervised SimCSE)
#   labeled_pairs  sentence1, sentence2, label in {0, 1, 2}         (NLI classification)


@dataclass(frozen=True)
class LossSpec:
    data: str
    from_embeddings: bool
    build: Callable[..., nn.Module]


def _mnrl(model, scale, gather, **_):
    return st_losses.MultipleNegativesRankingLoss(model, scale=scale, gather_across_devices=gather)


LOSSES: dict[str, LossSpec] = {
    "cosent": LossSpec("scored_pairs", True, lambda model, scale, **_: st_losses.CoSENTLoss(model, scale=scale)),
    "angle": LossSpec("scored_pairs", True, lambda model, scale, **_: st_losses.AnglELoss(model, scale=scale)),
    "cosine": LossSpec("scored_pairs", True, lambda model, **_: st_losses.CosineSimilarityLoss(model)),
    "mnrl": LossSpec("triplets", True, _mnrl),
    # SimCSE is MNRL on (x, x): the two copies differ only by dropout noise.
    "simcse": LossSpec("texts", True, _mnrl),
    "cached_mnrl": LossSpec(
        "triplets",
        False,
        lambda model, scale, gather, mini_batch_size, **_: st_losses.CachedMultipleNegativesRankingLoss(
            model, scale=scale, mini_batch_size=mini_batch_size, gather_across_devices=gather
        ),
    ),
    "triplet": LossSpec(
        "triplets", True, lambda model, margin, **_: st_losses.TripletLoss(model, triplet_margin=margin)
    ),
    "softmax": LossSpec(
        "labeled_pairs",
        False,
        lambda model, num_labels, **_: st_losses.SoftmaxLoss(
            model, sentence_embedding_dimension=model.get_embedding_dimension(), num_labels=num_labels
        ),
    ),
}


def loss_spec(name: str) -> LossSpec:
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name]


def build_loss(
    name: str,
    model: SentenceTransformer,
    scale: float = 20.0,
    gather_across_devices: bool = False,
    mini_batch_size: int = 32,
    margin: float = 5.0,
    num_labels: int = 3,
    matryoshka_dims: list[int] | None = None,
) -> tuple[nn.Module, LossSpec]:
    """The loss module, and its spec (data shape; whether the loop may embed for it)."""
    spec = loss_spec(name)
    loss = spec.build(
        model=model, scale=scale, gather=gather_across_devices, mini_batch_size=mini_batch_size, margin=margin, num_labels=num_labels
    )
    if matryoshka_dims:
        dim = model.get_embedding_dimension()
        too_big = [d for d in matryoshka_dims if d > dim]
        if too_big:
            raise ConfigError(
                f"loss.matryoshka_dims={list(matryoshka_dims)}: {', '.join(map(str, too_big))} exceed the model's "
                f"embedding size {dim}. Use sizes ≤ {dim}, e.g. loss.matryoshka_dims=[{','.join(str(d) for d in (dim, dim // 2, dim // 4))}]."
            )
        loss = st_losses.MatryoshkaLoss(model, loss, matryoshka_dims=list(matryoshka_dims))
        spec = LossSpec(spec.data, False, spec.build)
    return loss, spec
