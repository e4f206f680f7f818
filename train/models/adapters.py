"""LoRA adapters through PEFT, as sentence-transformers integrates them (`model.add_adapter`), and
the memory levers that go with them (gradient checkpointing).

With an adapter the transformer's own weights are frozen; only the adapter trains. A saved model
holds the adapter alone (`adapter_config.json`, `adapter_model.safetensors`, the base model's id
or path inside), and bare `SentenceTransformer(dir)` / `CrossEncoder(dir)` loads it onto its base.
`merge` folds the adapter into the weights for a model that needs no PEFT to load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from train.errors import ConfigError

log = logging.getLogger("train")


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    # Module names to adapt; empty: PEFT's default for the architecture (BERT, XLM-R: query and
    # value; Qwen3: q_proj and v_proj); ["all-linear"]: every linear layer.
    target_modules: list[str] = field(default_factory=list)


def transformer_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a SentenceTransformer or CrossEncoder (its first module)."""
    first = model[0]
    auto_model = getattr(first, "auto_model", None)
    if auto_model is None:
        raise ConfigError(f"peft and gradient checkpointing need a transformer as the model's first module, not {type(first).__name__}.")
    return auto_model


def add_lora(model: nn.Module, settings: LoraSettings, task: str) -> None:
    """Freezes the transformer and adds a trainable LoRA adapter to it (a cross-encoder's
    classification head stays trainable: it is new, or it is what scores)."""
    try:
        from peft import LoraConfig, TaskType
    except ImportError:
        raise ConfigError("peft=lora needs the peft package (a dependency of this project): pip install 'peft>=0.20'.") from None
    auto_model = transformer_of(model)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=(settings.target_modules[0] if settings.target_modules == ["all-linear"] else list(settings.target_modules)) or None,
        task_type=TaskType.SEQ_CLS if task == "cross_encoder" else TaskType.FEATURE_EXTRACTION,
        # The classification head (a cross-encoder) or the masked-LM head (SPLADE, often fresh):
        # trained and saved with the adapter, or the saved model would load a random one.
        modules_to_save=_head_names(auto_model, task) if task in ("cross_encoder", "sparse") else None,
    )
    try:
        model.add_adapter(config)
    except ValueError as e:
        raise ConfigError(f"peft=lora: {e}") from None
    # Adapters on bf16/fp16 weights train in fp32, as PEFT's own get_peft_model keeps them
    # (autocast_adapter_dtype): a low-rank update is too small for bf16's 8-bit mantissa.
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()


HEADS = {"cross_encoder": ("classifier", "score"),
         # BERT, RoBERTa / XLM-R, DistilBERT, ELECTRA's masked-LM heads.
         "sparse": ("cls", "lm_head", "vocab_transform", "vocab_layer_norm", "vocab_projector", "generator_predictions", "generator_lm_head")}


def _head_names(auto_model: nn.Module, task: str = "cross_encoder") -> list[str] | None:
    names = [n for n in HEADS[task] if isinstance(getattr(auto_model, n, None), nn.Module)]
    return names or None


def has_tied_lm_head_bias(model: nn.Module) -> bool:
    """A RoBERTa-style masked-LM head (`lm_head`, whose decoder's bias is its own `bias`)."""
    head = getattr(transformer_of(model), "lm_head", None)
    decoder = getattr(head, "decoder", None)
    return decoder is not None and getattr(decoder, "bias", None) is not None and decoder.bias is getattr(head, "bias", None)


def has_adapter(model: nn.Module) -> bool:
    return bool(getattr(getattr(model[0], "auto_model", None), "_hf_peft_config_loaded", False))


def merge_adapters(model: nn.Module) -> None:
    """Folds every LoRA layer into its base weights and removes the adapter, in place (PEFT's
    merge_and_unload, for a model that holds the adapter through transformers' integration)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    auto_model = transformer_of(model)
    for name, module in list(auto_model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(auto_model.get_submodule(parent_name) if parent_name else auto_model, child, module.get_base_layer())
    # modules_to_save wrappers (a cross-encoder's head): keep the trained copy as the module itself.
    for name, module in list(auto_model.named_modules()):
        trained = getattr(module, "modules_to_save", None)
        if isinstance(trained, nn.ModuleDict) and "default" in trained:
            parent_name, _, child = name.rpartition(".")
            setattr(auto_model.get_submodule(parent_name) if parent_name else auto_model, child, trained["default"])
    auto_model._hf_peft_config_loaded = False
    auto_model.__dict__.pop("peft_config", None)
    for param in auto_model.parameters():
        param.requires_grad_(True)


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Activations are recomputed in the backward pass instead of kept: memory for time.
    Non-reentrant checkpointing: works with frozen inputs (adapters) and with DDP."""
    auto_model = transformer_of(model)
    if not getattr(auto_model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"model.gradient_checkpointing=true: {type(auto_model).__name__} does not support gradient checkpointing.")
    auto_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (an adapter's trainable share is what it saves)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
