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
    keep_own_max_seq_length: bool = False,
) -> SentenceTransformer:
    """The task's model (a SentenceTransformer, or a CrossEncoder with `num_labels` outputs), with
    its memory settings and adapter applied. `device`: where it is built (None: the library's
    choice, the GPU when there is one; `cpu` under FSDP, which shards it from there).
    `keep_own_max_seq_length`: a finished bi-encoder keeps its own length, not model.max_seq_length."""
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
    built = _build(task, m, p, name, package, num_labels, model_kwargs, device, keep_own_max_seq_length)
    fit_token_types(built)
    _memory_and_adapters(built, m, a, task)
    return built


def build_guide(model: ModelConfig, device: str | None = None) -> SentenceTransformer:
    """A guide model (GIST's loss.guide), loaded as any bi-encoder is (Hub id, local folder,
    offline package), with its own max_seq_length: frozen and in eval mode. The loss that holds
    it is moved to the training device with it (train/engine/setup.py)."""
    from train.errors import ConfigError, ModelLoadError

    try:
        guide = build_model(model, PoolingConfig(), "bi_encoder", device=device, keep_own_max_seq_length=True)
    except (OSError, ValueError, ConfigError, ModelLoadError) as e:
        # The loader's first sentence (its advice speaks of model.name, not of loss.guide).
        why = (str(e).strip().splitlines() or [type(e).__name__])[0].removeprefix(f"model.name={model.name}: ").split(". ")[0].rstrip(".")
        raise ModelLoadError(
            f"loss.guide={model.name}: the guide model could not be loaded ({why}). "
            "Give a Hub id, a local folder holding a model, or a conf/model preset name (e.g. loss.guide=minilm)."
        ) from None
    guide.requires_grad_(False)
    guide.eval()
    return guide


def _build(task: str, m: ModelConfig, p: PoolingConfig, name: str, package: str | None, num_labels: int, model_kwargs: dict, device: str | None,
           keep_own_max_seq_length: bool = False):
    if task == "cross_encoder":
        from train.models.cross_encoder import build_cross_encoder

        return build_cross_encoder(name, m.max_seq_length, num_labels, package, m.attn_implementation, model_kwargs, m.trust_remote_code, device)
    if task == "sparse":
        from train.models.sparse import build_sparse_encoder

        return build_sparse_encoder(name, m.max_seq_length, m.sparse_architecture.value, package, model_kwargs, m.trust_remote_code,
                                    device, m.csr_k)
    if task == "multi_vector":
        from train.models.multi_vector import build_multi_vector_encoder

        return build_multi_vector_encoder(name, m.max_seq_length, m.multi_vector_dim, m.query_length, m.document_length, m.query_expansion,
                                          dict(m.prompts), package, model_kwargs, m.trust_remote_code, device)
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
        device=device, chosen=chosen_head_settings(m, p), refuse_unapplied=_in_sweep(), keep_own_max_seq_length=keep_own_max_seq_length,
    )


# The head settings of a bare transformer, which a finished model does not take without pooling.replace.
_HEAD_DEFAULTS = {"pooling.mode": PoolingConfig().mode, "pooling.include_prompt": PoolingConfig().include_prompt,
                  "model.normalize": ModelConfig().normalize}


def chosen_head_settings(m: ModelConfig, p: PoolingConfig) -> frozenset[str]:
    """The head settings the user chose: not their default (an experiment, a stage, a call from
    Python), or named on the command line (`pooling=cls`, `pooling.mode=...`, `model.normalize=false`),
    even at the default's value. A default left alone is no choice: model=bge_m3 pools by CLS and
    says nothing about the default pooling=mean."""
    values = {"pooling.mode": p.mode, "pooling.include_prompt": p.include_prompt, "model.normalize": m.normalize}
    chosen = {k for k, v in values.items() if v != _HEAD_DEFAULTS[k]}
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        named = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
        chosen |= named & set(values) | ({"pooling.mode"} if "pooling" in named else set())
    return frozenset(chosen)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _memory_and_adapters(model, m: ModelConfig, a: PeftConfig, task: str) -> None:
    from train.models.adapters import LoraSettings, add_lora, enable_gradient_checkpointing, has_tied_lm_head_bias, parameter_counts

    if (m.gradient_checkpointing or a.method.value != "none") and task == "image_text":
        from train.errors import ConfigError

        raise ConfigError("model.gradient_checkpointing and peft apply to task=bi_encoder and task=cross_encoder.")
    if m.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if a.method.value == "lora" and task == "sparse" and not a.merge and has_tied_lm_head_bias(model):
        from train.errors import ConfigError

        # Measured: a RoBERTa-layout SPLADE saved as an adapter reloads to other figures (the
        # head's decoder.bias, tied to lm_head.bias, is not in the adapter file); merged, it matches.
        raise ConfigError("peft=lora on this sparse model: its masked-LM head (lm_head, RoBERTa's layout) has a tied bias "
                          "that an adapter-only save loses. Set peft.merge=true: final/ then holds the merged weights.")
    if a.method.value == "lora":
        add_lora(model, LoraSettings(a.r, a.alpha, a.dropout, list(a.target_modules)), task)
    counts = parameter_counts(model)
    log.info(
        "Parameters: %s trainable of %s (%.2f%%)%s%s",
        f"{counts['trainable']:,}", f"{counts['total']:,}", 100 * counts["trainable"] / max(counts["total"], 1),
        f"; LoRA r={a.r} alpha={a.alpha}" if a.method.value == "lora" else "",
        f"; weights in {m.dtype.value}" if m.dtype is not None else "",
    )
