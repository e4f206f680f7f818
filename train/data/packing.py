"""The host side of padding-free batches (train/models/packed.py runs them): a batch's token id
lists laid end to end, with what the device needs to run them and to pad them back for the
pooling, all computed here so that the device reads nothing back."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class PackLayout:
    """How the host lays out sequences for this model."""

    position_offset: int  # the first position id (RoBERTa: padding index + 1)
    token_types: bool  # the model takes token_type_ids
    multiple_of: int = 1  # the padded core's width rounded up to this


def pack(sequences: Sequence[Sequence[int]], layout: PackLayout, token_types: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """Host side: a batch of token id lists as packed model inputs (see the module docstring)."""
    n = len(sequences)
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=n)
    total, longest = int(lengths.sum()), int(lengths.max())
    width = -(-longest // layout.multiple_of) * layout.multiple_of
    starts = np.concatenate([[0], np.cumsum(lengths)])
    within = np.arange(total) - np.repeat(starts[:-1], lengths)  # each token's place in its sentence
    ids = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=total)
    features: dict[str, Any] = {
        "input_ids": torch.from_numpy(ids)[None],
        "position_ids": torch.from_numpy(within + layout.position_offset)[None],
        "packed_slots": torch.from_numpy(np.repeat(np.arange(n) * width, lengths) + within),
        "cu_seq_lens": torch.from_numpy(starts.astype(np.int32)),
        "attention_mask": torch.from_numpy((np.arange(width) < lengths[:, None]).astype(np.int64)),
    }
    if layout.token_types:
        types = np.zeros(total, dtype=np.int64) if token_types is None else np.fromiter(
            itertools.chain.from_iterable(token_types), dtype=np.int64, count=total)
        features["token_type_ids"] = torch.from_numpy(types)[None]
    return features
