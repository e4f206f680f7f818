"""Padding-free forward passes: a batch's sequences packed end to end.

A random batch of STS-B sentences is about half padding, and a padded forward pass spends as much
on a pad as on a token in every projection and feed-forward layer. Packed, those layers run on
the `[tokens, hidden]` rows of real tokens only, and only the attention core is padded, per
sentence, as MosaicBERT and FlashAttention's BERT do: queries, keys and values are scattered into
`[sentences, heads, width, head_dim]` in a few groups of neighbouring lengths, each padded to its
own longest (train/data/packing.py), attended with a key-padding mask, and gathered back. On CUDA, in half precision and
without attention dropout (evaluation, or a model trained without it), the core is torch's
varlen flash attention on the packed rows instead, with no padding at all.

The collator lays the batch out on the host (train/data/packing.py): token ids end to end, each sentence's
position ids restarting from the model's first position (RoBERTa's start after its padding
index), the slot of each token in the padded core, the padded attention mask the pooling reads,
and the cumulative sequence lengths. The device side (`packed_forward`) runs the transformer on
that and hands the pooling the usual padded token embeddings, so every pooling mode, Dense and
Normalize work unchanged; a cross-encoder's head gets each pair's first token. Nothing is read
back from the device.

Architectures: those whose attention goes through transformers' attention interface with
absolute positions, checked against the padded path in tests (BERT, RoBERTa, XLM-R, CamemBERT,
ELECTRA). Any other model trains padded, in chunks (trainer.forward_chunk_rows).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train.data.packing import PackLayout
from train.models.sources import _OFFSET_POSITIONS

PACKABLE = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
ATTENTION = "embed_train_packed"
PACKED_KEYS = ("packed_slots", "cu_seq_lens")


def _transformers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "auto_model") and hasattr(m, "tokenizer")]


def pack_layout(model: nn.Module, multiple_of: int = 1) -> tuple[PackLayout | None, str]:
    """The layout a model's batches are packed in, or None and why not."""
    found = _transformers(model)
    if len(found) != 1:
        return None, f"{len(found)} transformer modules (one is packable)"
    module = found[0]
    config = module.auto_model.config
    kind = getattr(config, "model_type", "")
    if kind not in PACKABLE:
        return None, f"model type {kind!r} (padding-free: {', '.join(PACKABLE)})"
    if getattr(config, "is_decoder", False) or getattr(module.tokenizer, "padding_side", "right") != "right":
        return None, "a decoder or left padding"
    if getattr(module.auto_model, "peft_config", None) and type(module.auto_model).__name__.startswith("Peft"):
        return None, "a PeftModel wrapper"
    offset = config.pad_token_id + 1 if kind in _OFFSET_POSITIONS and config.pad_token_id is not None else 0
    types = "token_type_ids" in module.tokenizer.model_input_names
    return PackLayout(offset, types, multiple_of), ""


def is_packed(features: dict[str, Any]) -> bool:
    return "packed_slots" in features


@dataclass
class Packed:
    """What the attention function needs: passed down the layers as a keyword argument."""

    groups: list  # per attention group: (first token, end token, slots in its padded block, key mask)
    cu_seq_lens: torch.Tensor
    longest: int


def _varlen_ok(query: torch.Tensor, dropout: float) -> bool:
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0 and query.shape[-1] <= 256


def packed_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                     dropout: float = 0.0, scaling: float | None = None, packed: Packed | None = None, **_: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention interface on packed rows: [1, heads, tokens, d] in, [1, tokens, heads, d] out."""
    heads, dim = query.shape[1], query.shape[-1]
    rows = [x[0].transpose(0, 1) for x in (query, key, value)]  # [tokens, heads, d]
    if _varlen_ok(query, dropout):
        from torch.nn.attention.varlen import varlen_attn

        out = varlen_attn(*rows, packed.cu_seq_lens, packed.cu_seq_lens, packed.longest, packed.longest, scale=scaling)
        return out.unsqueeze(0), None
    outs = []
    for start, end, slots, mask in packed.groups:
        sentences, width = mask.shape[0], mask.shape[-1]

        def padded(x: torch.Tensor) -> torch.Tensor:
            block = x.new_zeros(sentences * width, heads, dim).index_copy(0, slots, x[start:end])
            return block.view(sentences, width, heads, dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(*(padded(x) for x in rows), attn_mask=mask, dropout_p=dropout, scale=scaling)
        outs.append(out.transpose(1, 2).reshape(sentences * width, heads, dim)[slots])
    return (outs[0] if len(outs) == 1 else torch.cat(outs)).unsqueeze(0), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_attention)


@contextmanager
def _attention(config: Any) -> Iterator[None]:
    previous = config._attn_implementation
    config._attn_implementation = ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


def _first_tokens(base: nn.Module, first: torch.Tensor) -> Any:
    """A hook that gives a sequence-classification head each pair's first token ([pairs, 1, hidden]),
    and the pooler's output of it where the head reads the pooler (BERT)."""

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        tokens = output.last_hidden_state[0, first].unsqueeze(1)
        output["last_hidden_state"] = tokens
        pooler = getattr(base, "pooler", None)
        if pooler is not None:
            output["pooler_output"] = pooler(tokens)
        return output

    return hook


def packed_forward(module: nn.Module, features: dict[str, Any]) -> dict[str, Any]:
    """A sentence-transformers Transformer module's forward on packed features: token embeddings
    padded back to [sentences, width, hidden] (the pooling's input), or a cross-encoder's scores."""
    auto = module.auto_model
    mask = features["attention_mask"]
    sentences, width = mask.shape
    slots = features["packed_slots"]
    packed = Packed(features["packed_groups"], features["cu_seq_lens"], width)
    inputs = {k: features[k] for k in ("input_ids", "position_ids", "token_type_ids") if k in features}
    classify = module.module_output_name == "scores"
    handle = auto.base_model.register_forward_hook(_first_tokens(auto.base_model, features["first_tokens"])) if classify else None
    try:
        with _attention(auto.config):
            output = auto(**inputs, packed=packed, return_dict=True)
    finally:
        if handle is not None:
            handle.remove()
    if classify:
        features["scores"] = output.logits
        return features
    hidden = output.last_hidden_state[0]
    features["token_embeddings"] = hidden.new_zeros(sentences * width, hidden.shape[-1]).index_copy(0, slots, hidden).view(sentences, width, -1)
    return features


@contextmanager
def packed_forwards(model: nn.Module) -> Iterator[None]:
    """Within: the model's transformer runs packed features padding-free (others as before)."""
    module = _transformers(model)[0]
    original = module.forward

    def forward(features: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        return packed_forward(module, features) if is_packed(features) else original(features, *args, **kwargs)

    module.forward = forward
    try:
        yield
    finally:
        del module.forward


_register()
