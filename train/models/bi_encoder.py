"""The bi-encoder: a transformer, a pooling layer and optionally Normalize, as a SentenceTransformer."""

from __future__ import annotations

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

from train.models.sources import check_max_seq_length, load_backbone


def build_sentence_transformer(
    name: str,
    max_seq_length: int = 128,
    pooling_mode: str = "mean",
    normalize: bool = False,
    offline_package: str | None = None,
    attn_implementation: str | None = None,
) -> SentenceTransformer:
    """Transformer -> Pooling(mode) [-> Normalize], the bi-encoder the loop trains."""
    backbone = load_backbone(name, max_seq_length, offline_package, attn_implementation)
    check_max_seq_length(backbone, name, max_seq_length)
    modules = [backbone, Pooling(backbone.get_embedding_dimension(), pooling_mode=pooling_mode)]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules)
