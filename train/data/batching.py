"""From canonical pairs to model batches: tokenize once, batch by length, only pad at collate time.

Padding is the main waste of CPU/GPU time in sentence-pair training: with random batches of
16, STS-B batches hold about twice their real tokens. Batches cut from length-sorted windows
hold close to none, while the window and batch order stay random.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import Sampler


TEXT_COLUMNS = ("sentence1", "sentence2", "anchor", "positive", "negative")
LABEL_COLUMNS = {"score": torch.float32, "label": torch.long}


def text_columns(ds: datasets.Dataset) -> list[str]:
    return [c for c in TEXT_COLUMNS if c in ds.column_names]


def label_column(ds: datasets.Dataset) -> str | None:
    return next((c for c in LABEL_COLUMNS if c in ds.column_names), None)


def tokenize_columns(ds: datasets.Dataset, tokenizer: Any, max_length: int) -> datasets.Dataset:
    """Adds `ids_<column>` for each text column (token ids with special tokens, truncated to
    max_length) and `length`, the longest of a row's columns."""
    columns = text_columns(ds)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        kwargs = dict(truncation=True, max_length=max_length, return_attention_mask=False, return_token_type_ids=False)
        out = {f"ids_{c}": tokenizer(batch[c], **kwargs)["input_ids"] for c in columns}
        out["length"] = [max(len(ids[i]) for ids in out.values()) for i in range(len(batch[columns[0]]))]
        return out

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
            # A short batch stays last: accelerate's per-rank sharding expects only the last one short.
            short = [b for b in batches if len(b) < self.batch_size]
            full = [b for b in batches if len(b) == self.batch_size]
            batches = [full[i] for i in rng.permutation(len(full))] + short
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Random batches in which no text occurs twice, for in-batch-negative losses: a duplicate
    would be scored as a negative of itself.

    `texts[i]` holds example i's texts (hashes are enough). An example that clashes with the
    batch being filled waits at the front of the queue for the next one, so every example is
    used once an epoch in one pass over the data. With `group > 1` (several processes sharing
    their negatives), groups of `group * batch_size` are duplicate-free and cut into `group`
    consecutive batches, which accelerate hands to the ranks in turn; groups that cannot be
    filled are dropped (`dropped` counts their rows) so that every rank gets only full batches.
    """

    def __init__(self, texts: Sequence[Sequence[Any]], batch_size: int, seed: int = 0, group: int = 1) -> None:
        self.texts = [frozenset(t) for t in texts]
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0
        self.dropped = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        pending = deque(rng.permutation(len(self.texts)).tolist())
        size = self.batch_size * self.group
        groups: list[list[int]] = []
        while pending:
            batch: list[int] = []
            seen: set = set()
            skipped: list[int] = []
            while pending and len(batch) < size:
                i = pending.popleft()
                if seen.isdisjoint(self.texts[i]):
                    batch.append(i)
                    seen.update(self.texts[i])
                else:
                    skipped.append(i)
            pending.extendleft(reversed(skipped))
            groups.append(batch)
        if self.group > 1:
            # accelerate hands batch i to rank i % group and skips a round whose last batch is
            # short, so a short group would silently cost a step: keep full groups only. A group
            # is short when every row left clashes with it (end of epoch, or few distinct anchors).
            self.dropped = sum(len(g) for g in groups if len(g) < size)
            groups = [g for g in groups if len(g) == size]
        out = [g[r * self.batch_size : (r + 1) * self.batch_size] for g in groups for r in range(self.group)]
        out = [b for b in out if b]
        self._cache = (epoch, out)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


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


class Collator:
    """A batch of B rows with k text columns as model inputs.

    `merge=True`: all kB sentences (column after column) in one input, or with `chunk_rows > 0`
    sorted by length and cut into chunks of that many rows, each padded only to its own longest
    sentence; `restore` puts the embeddings back in order. The loss still sees the whole,
    randomly composed batch. `merge=False`: one padded input per column (`columns`), for losses
    that run the model themselves.
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        token_type_ids: bool = False,
        chunk_rows: int = 0,
        columns: tuple[str, ...] = ("sentence1", "sentence2"),
        label: str | None = "score",
        merge: bool = True,
    ) -> None:
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"
        self.token_type_ids = token_type_ids
        self.chunk_rows = chunk_rows
        self.columns = columns
        self.label = label
        self.merge = merge

    def features(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad(sequences, self.pad_token_id, self.left)
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_type_ids:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        return features

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        labels = torch.tensor([r[self.label] for r in rows], dtype=LABEL_COLUMNS[self.label]) if self.label else None
        batch: dict[str, Any] = {"labels": labels, "n_columns": len(self.columns)}
        if not self.merge:
            batch["columns"] = [self.features([r[f"ids_{c}"] for r in rows]) for c in self.columns]
            return batch
        sequences = [r[f"ids_{c}"] for c in self.columns for r in rows]
        if self.chunk_rows <= 0 or len(sequences) <= self.chunk_rows:
            return {**batch, "chunks": [self.features(sequences)], "restore": None}
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        chunks = [
            self.features([sequences[i] for i in order[start : start + self.chunk_rows]])
            for start in range(0, len(order), self.chunk_rows)
        ]
        restore = torch.empty(len(order), dtype=torch.long)
        restore[torch.tensor(order)] = torch.arange(len(order))
        return {**batch, "chunks": chunks, "restore": restore}


def embed_batch(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Sentence embeddings of a merged batch, in batch order (kB rows: column after column)."""
    outputs = [model(chunk)["sentence_embedding"] for chunk in batch["chunks"]]
    embeddings = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return embeddings if batch["restore"] is None else embeddings[batch["restore"]]
