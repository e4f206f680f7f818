"""Loss config -> a sentence-transformers loss.

The loop embeds a batch itself (both columns in one forward pass) and hands the embeddings
to the loss's `compute_loss_from_embeddings`, so each entry here must provide that method.
"""

from __future__ import annotations

from collections.abc import Callable

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss, CosineSimilarityLoss
from torch import nn

LOSSES: dict[str, Callable[..., nn.Module]] = {
    "cosent": lambda model, scale: CoSENTLoss(model, scale=scale),
    "angle": lambda model, scale: AnglELoss(model, scale=scale),
    "cosine": lambda model, scale: CosineSimilarityLoss(model),
}


def build_loss(name: str, model: SentenceTransformer, scale: float = 20.0) -> nn.Module:
    if name not in LOSSES:
        raise ValueError(f"Unknown loss {name!r}; valid losses: {', '.join(LOSSES)}")
    return LOSSES[name](model, scale)
