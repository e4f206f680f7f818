"""The model config -> the task's model: plain arguments for the builders in this package."""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from sentence_transformers import SentenceTransformer

from train.config.schema import ModelConfig, PeftConfig, PoolingConfig, to_plain
from train.models.token_types import fit_token_types

log = logging.getLogger("train")


def _plain(node):
    return to_plain(node) if isinstance(node, DictConfig) else node


def build_model(
    model: DictConfig | ModelConfig,
    pooling: DictConfig | PoolingConfig,
    task: str = "bi_encoder",
    num_labels: int = 1,
    peft: DictConfig | PeftConfig | None = None,
    device: str | None = None,
) -> SentenceTransformer:
    """The task's model (a SentenceTransformer, or a CrossEncoder with `num_labels` outputs), with
    its memory settings and adapter applied. `device`: where it is built (None: the library's
    choice, the GPU when there is one; `cpu` under FSDP, which shards it from there)."""
    m: ModelConfig = _plain(model)
    p: PoolingConfig = _plain(pooling)
    a: PeftConfig = _plain(peft) if peft is not None else PeftConfig()
    name, package = m.name, m.offline_package
    if m.random_init:
        from train.models.random_init import random_model_dir

        name, package = str(random_model_dir(m.name, m.offline_package, dict(m.random_init), trust_remote_code=m.trust_remote_code)), None
        log.info("Random weights (model.random_init, %s) with %s's tokenizer: a speed and memory workload, "
                 "no quality claim", m.random_init.get("model_type"), m.name)
    model_kwargs = {}
    if m.dtype is not None:
        import torch

        model_kwargs["dtype"] = getattr(torch, m.dtype.value)
    built = _build(task, m, p, name, package, num_labels, model_kwargs, device)
    fit_token_types(built)
    _memory_and_adapters(built, m, a, task)
    return built


def _build(task: str, m: ModelConfig, p: PoolingConfig, name: str, package: str | None, num_labels: int, model_kwargs: dict, device: str | None):
    if task == "cross_encoder":
        from train.models.cross_encoder import build_cross_encoder

        return build_cross_encoder(name, m.max_seq_length, num_labels, package, m.attn_implementation, model_kwargs, m.trust_remote_code, device)
    if task == "image_text":
        from train.models.image_text import build_image_text_model

        return build_image_text_model(
            name, m.max_seq_length, p.mode.value, m.normalize, package, m.attn_implementation,
            image_tower=m.image_tower, image_config=dict(m.image_config), image_pooling=m.image_pooling.value,
            projection_dim=m.projection_dim, freeze_text=m.freeze_text, freeze_image=m.freeze_image,
            trust_remote_code=m.trust_remote_code, device=device,
        )
    from train.models.bi_encoder import build_sentence_transformer

    return build_sentence_transformer(
        name, m.max_seq_length, p.mode.value, m.normalize, package, m.attn_implementation,
        replace_pooling=p.replace, include_prompt=p.include_prompt, prompts=dict(m.prompts),
        default_prompt_name=m.default_prompt_name, model_kwargs=model_kwargs, trust_remote_code=m.trust_remote_code,
        device=device,
    )


def _memory_and_adapters(model, m: ModelConfig, a: PeftConfig, task: str) -> None:
    from train.models.adapters import LoraSettings, add_lora, enable_gradient_checkpointing, parameter_counts

    if (m.gradient_checkpointing or a.method.value != "none") and task == "image_text":
        from train.errors import ConfigError

        raise ConfigError("model.gradient_checkpointing and peft apply to task=bi_encoder and task=cross_encoder.")
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if a.method.value == "lora":
        add_lora(model, LoraSettings(a.r, a.alpha, a.dropout, list(a.target_modules)), task)
    counts = parameter_counts(model)
    log.info(
        "Parameters: %s trainable of %s (%.2f%%)%s%s",
        f"{counts['trainable']:,}", f"{counts['total']:,}", 100 * counts["trainable"] / max(counts["total"], 1),
        f"; LoRA r={a.r} alpha={a.alpha}" if a.method.value == "lora" else "",
        f"; weights in {m.dtype.value}" if m.dtype is not None else "",
    )
