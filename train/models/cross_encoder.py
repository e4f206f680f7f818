"""The cross-encoder: a backbone with a sequence-classification head, as a sentence-transformers CrossEncoder."""

from __future__ import annotations

from train.models.sources import check_max_seq_length, load_backbone


def build_cross_encoder(
    name: str,
    max_seq_length: int = 128,
    num_labels: int = 1,
    offline_package: str | None = None,
    attn_implementation: str | None = None,
    model_kwargs: dict | None = None,
    trust_remote_code: bool = False,
    device: str | None = None,
):
    """A sentence-transformers CrossEncoder: the backbone with a sequence-classification head
    (fresh unless `name` already has one) of `num_labels` outputs."""
    from sentence_transformers.cross_encoder import CrossEncoder

    head = {"transformer_task": "sequence-classification", "num_labels": num_labels}
    backbone = load_backbone(name, max_seq_length, offline_package, attn_implementation, head=head, model_kwargs=model_kwargs, trust_remote_code=trust_remote_code)
    check_max_seq_length(backbone, name, max_seq_length)
    return CrossEncoder(modules=[backbone], device=device)
