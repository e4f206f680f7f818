"""From canonical pairs to model batches: tokenize once, batch by length, only pad at collate time.

Padding is the main waste of CPU/GPU time in sentence-pair training: with random batches of
16, STS-B batches hold about twice their real tokens. Batches cut from length-sorted windows
hold close to none, while the window and batch order stay random.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import Sampler


def tokenize_pairs(ds: datasets.Dataset, tokenizer: Any, max_length: int) -> datasets.Dataset:
    """Adds `ids1`, `ids2` (token ids with special tokens, truncated to max_length) and `length`."""

    def encode(batch: dict[str, list]) -> dict[str, list]:
        kwargs = dict(truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False)
        ids1 = tokenizer(batch["sentence1"], **kwargs)["input_ids"]
        ids2 = tokenizer(batch["sentence2"], **kwargs)["input_ids"]
        return {"ids1": ids1, "ids2": ids2, "length": [max(len(a), len(b)) for a, b in zip(ids1, ids2)]}

    return ds.map(encode, batched=True, batch_size=1000, desc="Tokenizing", keep_in_memory=True)


class BucketBatchSampler(Sampler[list[int]]):
    """Yields index batches; every example exactly once per epoch.

    Each epoch: shuffle all indices (seeded by seed and epoch), cut them into windows of
    `batch_size * window_batches`, sort each window by length and cut it into batches, then
    shuffle the order of all batches. `window_batches=0` gives plain random batches.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window_batches: int = 50) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window_batches = window_batches
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        # Not `set_epoch`: accelerate calls that with its own iteration count, which restarts
        # at 0 after skip_first_batches and would replay epoch 0's order on resume.
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        if self.window_batches > 0:
            window = self.batch_size * self.window_batches
            chunks = []
            for start in range(0, len(order), window):
                part = order[start : start + window]
                chunks.append(part[np.argsort(self.lengths[part], kind="stable")])
            order = np.concatenate(chunks) if chunks else order
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.window_batches > 0:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def pad(sequences: list[list[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padded to the longest sequence."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if left:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        else:
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
    return ids, mask


class PairCollator:
    """Both columns of a batch (sentence1s, then sentence2s: 2B rows) as model inputs.

    With `chunk_rows > 0` the 2B sentences are sorted by length and cut into chunks of that
    many rows, each padded only to its own longest sentence; `restore` puts the chunks'
    embeddings back in batch order. The loss still sees the whole (randomly composed) batch,
    the forward pass sees almost no padding. With `chunk_rows = 0`, one padded chunk.
    """

    def __init__(self, pad_token_id: int, padding_side: str = "right", token_type_ids: bool = False, chunk_rows: int = 0) -> None:
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"
        self.token_type_ids = token_type_ids
        self.chunk_rows = chunk_rows

    def features(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad(sequences, self.pad_token_id, self.left)
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_type_ids:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        return features

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        sequences = [r["ids1"] for r in rows] + [r["ids2"] for r in rows]
        labels = torch.tensor([r["score"] for r in rows], dtype=torch.float32)
        if self.chunk_rows <= 0 or len(sequences) <= self.chunk_rows:
            return {"chunks": [self.features(sequences)], "restore": None, "labels": labels}
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        chunks = [
            self.features([sequences[i] for i in order[start : start + self.chunk_rows]])
            for start in range(0, len(order), self.chunk_rows)
        ]
        restore = torch.empty(len(order), dtype=torch.long)
        restore[torch.tensor(order)] = torch.arange(len(order))
        return {"chunks": chunks, "restore": restore, "labels": labels}


def embed_batch(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Sentence embeddings of a collated batch, in batch order (2B rows)."""
    outputs = [model(chunk)["sentence_embedding"] for chunk in batch["chunks"]]
    embeddings = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return embeddings if batch["restore"] is None else embeddings[batch["restore"]]
