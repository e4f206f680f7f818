"""A model of a given architecture with random weights: a speed and memory workload that needs no download."""

from __future__ import annotations

from pathlib import Path

from train.errors import ConfigError
from train.models.sources import load_tokenizer
from train.models.token_types import drop_unused_token_types


def random_model_dir(
    name: str, offline_package: str | None, architecture: dict, cache_root: str | Path | None = None, trust_remote_code: bool = False
) -> Path:
    """A model folder with `architecture`'s weights drawn at random (seed 0) and `name`'s tokenizer:
    a workload of a given size that needs no download. Built once into the data cache
    (`random-models/`), so that every process and later run loads the same weights."""
    from transformers import AutoConfig, AutoModel

    from train.data import cache

    settings = dict(architecture)
    model_type = settings.pop("model_type", None)
    if not model_type:
        raise ConfigError("model.random_init needs model_type (bert, roberta, xlm-roberta, ...), the architecture to build.")
    tokenizer = load_tokenizer(name, offline_package, trust_remote_code)
    # The tokenizer's special tokens, so that padding and RoBERTa-style position ids agree with it.
    special = {k: v for k, v in (("pad_token_id", tokenizer.pad_token_id), ("bos_token_id", tokenizer.cls_token_id),
                                  ("eos_token_id", tokenizer.sep_token_id)) if v is not None}
    try:
        config = AutoConfig.for_model(model_type, **{**special, **settings})
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.random_init: {e}") from None
    if config.vocab_size < len(tokenizer):
        raise ConfigError(f"model.random_init.vocab_size={config.vocab_size} is below the tokenizer's {len(tokenizer)} tokens ({name}).")

    def build(out: Path) -> dict:
        import torch

        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(out)
        drop_unused_token_types(tokenizer, config)
        tokenizer.save_pretrained(out)
        return {"model_type": model_type}

    key = {"what": "random-model", "config": config.to_dict(), "tokenizer": name, "vocab": len(tokenizer)}
    entry = cache.cached(cache.resolve_cache_dir(cache_root), "random-models", key, build, f"random {model_type} weights")
    return entry.file("config.json").parent
