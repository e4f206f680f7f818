"""The host side of padding-free batches (train/models/packed.py runs them): a batch's token id
lists laid end to end, with what the device needs to run them and to pad them back for the
pooling, all computed here so that the device reads nothing back.

The sentences are laid out shortest first and cut into a few groups of neighbouring lengths;
attention pads each group only to its own longest sentence (the projections and feed-forward
layers see no padding at all). Attention's cost grows with the square of the padded width, so a
batch of mixed lengths attended as one block, every sentence as long as the longest, would spend
most of it on pads: on KorSTS with MiniLM (Korean spelled out in jamo, up to 128 tokens) one
block made a step slower than padded batches in length-sorted chunks.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# Attention groups of at least this many sentences, at most MAX_GROUPS of them: each group costs
# its own attention call in every layer.
GROUP_ROWS = 8
MAX_GROUPS = 4


@dataclass(frozen=True)
class PackLayout:
    """How the host lays out sequences for this model."""

    position_offset: int  # the first position id (RoBERTa: padding index + 1)
    token_types: bool  # the model takes token_type_ids
    multiple_of: int = 1  # padded widths (attention groups, the pooling's input) rounded up to this


def attention_groups(n: int) -> int:
    return max(1, min(MAX_GROUPS, n // GROUP_ROWS))


def _width(longest: int, multiple_of: int) -> int:
    return -(-longest // multiple_of) * multiple_of


def pack(sequences: Sequence[Sequence[int]], layout: PackLayout, token_types: Sequence[Sequence[int]] | None = None) -> dict[str, Any]:
    """A batch of token id lists as packed model inputs. `attention_mask` ([sentences, width], in
    the batch's order) and `packed_slots` (each packed token's place in it) let the device pad the
    token vectors back for the pooling; `first_tokens` is each sentence's first token in the packed
    rows (a cross-encoder's head reads it); `packed_groups` holds, per attention group, its token
    range, its tokens' slots in the group's padded block and the block's key mask."""
    n = len(sequences)
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=n)
    order = np.argsort(lengths, kind="stable")  # packed sentence i is the batch's sentence order[i]
    ordered = lengths[order]
    starts = np.concatenate([[0], np.cumsum(ordered)])
    total = int(starts[-1])
    within = np.arange(total) - np.repeat(starts[:-1], ordered)  # each token's place in its sentence
    width = _width(int(lengths.max()), layout.multiple_of)
    first = np.empty(n, dtype=np.int64)
    first[order] = starts[:-1]
    ids = np.fromiter(itertools.chain.from_iterable(sequences[i] for i in order), dtype=np.int64, count=total)
    features: dict[str, Any] = {
        "input_ids": torch.from_numpy(ids)[None],
        "position_ids": torch.from_numpy(within + layout.position_offset)[None],
        "packed_slots": torch.from_numpy(np.repeat(order * width, ordered) + within),
        "first_tokens": torch.from_numpy(first),
        "cu_seq_lens": torch.from_numpy(starts.astype(np.int32)),
        "attention_mask": torch.from_numpy((np.arange(width) < lengths[:, None]).astype(np.int64)),
        "packed_groups": _groups(ordered, starts, within, layout.multiple_of),
    }
    if layout.token_types:
        types = np.zeros(total, dtype=np.int64) if token_types is None else np.fromiter(
            itertools.chain.from_iterable(token_types[i] for i in order), dtype=np.int64, count=total)
        features["token_type_ids"] = torch.from_numpy(types)[None]
    return features


def _groups(ordered: np.ndarray, starts: np.ndarray, within: np.ndarray, multiple_of: int) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """(first token, end token, slots in the group's [sentences x width] block, key mask) a group."""
    groups = []
    bounds = np.linspace(0, len(ordered), attention_groups(len(ordered)) + 1).round().astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        lengths = ordered[a:b]
        width = _width(int(lengths.max()), multiple_of)
        t0, t1 = int(starts[a]), int(starts[b])
        slots = np.repeat(np.arange(b - a) * width, lengths) + within[t0:t1]
        mask = np.arange(width) < lengths[:, None]
        groups.append((t0, t1, torch.from_numpy(slots), torch.from_numpy(mask)[:, None, None, :]))
    return groups
