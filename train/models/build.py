"""The model config -> the task's model: plain arguments for the builders in this package."""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from sentence_transformers import SentenceTransformer

from train.config import ModelConfig, PoolingConfig, to_plain

log = logging.getLogger("train")


def build_model(
    model: DictConfig | ModelConfig, pooling: DictConfig | PoolingConfig, task: str = "bi_encoder", num_labels: int = 1
) -> SentenceTransformer:
    """The task's model: a SentenceTransformer (bi-encoder) or a CrossEncoder with `num_labels` outputs."""
    m: ModelConfig = to_plain(model) if isinstance(model, DictConfig) else model
    p: PoolingConfig = to_plain(pooling) if isinstance(pooling, DictConfig) else pooling
    name, package = m.name, m.offline_package
    if m.random_init:
        from train.models.random_init import random_model_dir

        name, package = str(random_model_dir(m.name, m.offline_package, dict(m.random_init))), None
        log.info("Random weights (model.random_init, %s) with %s's tokenizer: a speed and memory workload, "
                 "no quality claim", m.random_init.get("model_type"), m.name)
    if task == "cross_encoder":
        from train.models.cross_encoder import build_cross_encoder

        return build_cross_encoder(name, m.max_seq_length, num_labels, package, m.attn_implementation)
    if task == "image_text":
        from train.models.image_text import build_image_text_model

        return build_image_text_model(
            name, m.max_seq_length, p.mode.value, m.normalize, package, m.attn_implementation,
            image_tower=m.image_tower, image_config=dict(m.image_config), image_pooling=m.image_pooling.value,
            projection_dim=m.projection_dim, freeze_text=m.freeze_text, freeze_image=m.freeze_image,
        )
    from train.models.bi_encoder import build_sentence_transformer

    return build_sentence_transformer(name, m.max_seq_length, p.mode.value, m.normalize, package, m.attn_implementation)
