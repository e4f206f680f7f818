"""From canonical rows to model batches: samplers over index arrays, a collator that only pads
(the ids come tokenized from the token cache, train/data/tokens.py).

Padding is the main waste of CPU/GPU time in sentence-pair training: with random batches of
16, STS-B batches hold about twice their real tokens. By default batches stay random (the
library's trainers' batches, so the same quality), and a batch runs through the model in
length-sorted chunks, each padded only to its own longest (`chunk_rows`). Batches cut from
length-sorted windows (trainer.bucket_windows) hold even less padding, but a batch of similar
lengths is not a random sample: an in-batch ranking loss then never compares a short pair with a
long one, and on KorSTS test such batches scored lower (docs/benchmarks.md, "Quality over seeds").
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler


TEXT_COLUMNS = ("sentence1", "sentence2", "anchor", "positive", "negative")
# n-tuples (query, positive, negative_1 ... negative_n) from a candidates file: train/data/shapes.py.
NEGATIVE_PREFIX = "negative_"

# The default chunking of a random batch: two chunks, at least this many rows each. On a 2-core
# CPU every extra forward call has a fixed cost: the STS-B bi-encoder (32 sentences a batch) ran
# 82 s a seed in four chunks of 8, 70 s in two of 16; the cross-encoder 80 s in four chunks of 4
# pairs, 70 s in two of 8.
MIN_CHUNK_ROWS = 8


def forward_chunk_rows(setting: int | None, bucket_windows: int, cuda: bool = False) -> int | None:
    """trainer.forward_chunk_rows as the collators take it (padded batches only): N rows a chunk,
    0 one forward pass, or None for the default: on a CPU chunks when batches are random, one pass
    when they are length-bucketed (they have little padding left to save). On CUDA one pass: a
    GPU's fixed cost per forward call (kernel launches) outweighs the padding chunks save at
    these sizes, by construction; the suite measures it (python -m train.bench --suite gpu)."""
    if setting is not None:
        return setting
    return None if bucket_windows == 0 and not cuda else 0


def chunk_size(rows: int, chunk_rows: int | None) -> int:
    """Rows a forward chunk holds for a batch of `rows` sequences (0: the whole batch at once)."""
    if chunk_rows is None:
        return max(MIN_CHUNK_ROWS, math.ceil(rows / 2))
    return chunk_rows


LABEL_COLUMNS = {"score": torch.float32, "label": torch.long, "scores": torch.float32}


def is_numbered_negative(name: str) -> bool:
    return name.startswith(NEGATIVE_PREFIX) and name[len(NEGATIVE_PREFIX):].isdigit()


def ordered_text_columns(names: Any) -> list[str]:
    """The text columns among `names`, in canonical order: the fixed ones, then negative_1, negative_2, ..."""
    names = list(names)
    numbered = sorted((n for n in names if is_numbered_negative(n)), key=lambda n: int(n[len(NEGATIVE_PREFIX):]))
    return [c for c in TEXT_COLUMNS if c in names] + numbered


def text_columns(ds: Any) -> list[str]:
    """The text columns of a Dataset or corpus (anything with column_names), in canonical order."""
    return ordered_text_columns(ds.column_names)


def label_column(ds: Any) -> str | None:
    return next((c for c in LABEL_COLUMNS if c in ds.column_names), None)


def _shuffled(n: int, rng: np.random.Generator) -> np.ndarray:
    # rng.permutation(n) draws the same order; int32 halves it (40 MB for 10M rows).
    order = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    rng.shuffle(order)
    return order


class BucketBatchSampler(Sampler[list[int]]):
    """Yields index batches; every example exactly once per epoch.

    Each epoch: shuffle all indices (seeded by seed and epoch), cut them into windows of
    `batch_size * window_batches`, sort each window by length and cut it into batches, then
    shuffle the order of all batches. `window_batches=0` gives plain random batches. An epoch
    is one int32 array of indices (4 bytes a row) that batches are sliced from as they are drawn.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, window_batches: int = 50) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window_batches = window_batches
        self.epoch = 0
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def use_epoch(self, epoch: int) -> None:
        # Not `set_epoch`: accelerate calls that with its own iteration count, which restarts
        # at 0 after skip_first_batches and would replay epoch 0's order on resume.
        self.epoch = epoch

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(the epoch's index order, the start of each batch in it, in the order drawn)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng([self.seed, epoch])
        n, size = len(self.lengths), self.batch_size
        order = _shuffled(n, rng)
        starts = np.arange(0, n, size)
        if self.window_batches > 0:
            window = size * self.window_batches
            for start in range(0, n, window):
                part = order[start : start + window]
                order[start : start + window] = part[np.argsort(self.lengths[part], kind="stable")]
            # A short batch stays last: accelerate's per-rank sharding expects only the last one short.
            full = n // size
            starts = np.concatenate([starts[:full][rng.permutation(full)], starts[full:]])
        self._cache = (epoch, order, starts)
        return order, starts

    def batches(self, epoch: int) -> list[list[int]]:
        order, starts = self._plan(epoch)
        return [order[s : s + self.batch_size].tolist() for s in starts]

    def __iter__(self) -> Iterator[list[int]]:
        order, starts = self._plan(self.epoch)
        for s in starts:
            yield order[s : s + self.batch_size].tolist()

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def text_hashes(texts: Sequence[Sequence[str]]) -> np.ndarray:
    """(rows, columns) 32-bit hashes of each row's texts."""
    from train.data.text_hash import hash32

    rows = [tuple(t) for t in texts]
    width = max((len(r) for r in rows), default=0)
    if any(len(r) != width for r in rows):
        raise ValueError("every row must hold the same number of texts")
    return hash32(t for r in rows for t in r).reshape(len(rows), width)


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Random batches in which no text occurs twice, for in-batch-negative losses: a duplicate
    would be scored as a negative of itself.

    `texts`: a (rows, columns) array of text hashes (train/data/corpus.py keeps one for every
    corpus), or each row's texts. An example that clashes with the batch being filled waits at
    the front of the queue for the next one, so every example is used once an epoch in one
    pass over the data. With `group > 1` (several processes sharing their negatives), groups of
    `group * batch_size` are duplicate-free and cut into `group` consecutive batches, which
    accelerate hands to the ranks in turn; groups that cannot be filled are dropped (`dropped`
    counts their rows) so that every rank gets only full batches.

    Groups are checked many at a time in numpy; only one that holds a clash is filled row by
    row. An epoch is one int32 array of indices (4 bytes a row).
    """

    def __init__(self, texts: Any, batch_size: int, seed: int = 0, group: int = 1) -> None:
        hashes = texts if isinstance(texts, np.ndarray) else text_hashes(texts)
        self.hashes = hashes.reshape(len(hashes), -1)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0
        self.dropped = 0
        self._cache: tuple[int, np.ndarray, int, list[list[int]]] | None = None

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _clean(self, groups: np.ndarray) -> np.ndarray:
        """For each row of `groups` (index groups), whether no text occurs in two of its rows."""
        m, size = groups.shape
        width = self.hashes.shape[1]
        h = np.asarray(self.hashes[groups.ravel()]).reshape(m, size * width)
        owner = np.repeat(np.arange(size), width)
        by_hash = np.argsort(h, axis=1, kind="stable")
        h = np.take_along_axis(h, by_hash, axis=1)
        owner = owner[by_hash]
        clash = (h[:, 1:] == h[:, :-1]) & (owner[:, 1:] != owner[:, :-1])
        return ~clash.any(axis=1)

    def _plan(self, epoch: int) -> tuple[np.ndarray, int, list[list[int]]]:
        """(order, full, tail): the first `full` indices of `order` are full groups in turn; `tail`
        the groups formed after the queue first ran short (the end of the epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2], self._cache[3]
        rng = np.random.default_rng([self.seed, epoch])
        order = _shuffled(len(self.hashes), rng)
        n, size = len(order), self.batch_size * self.group
        pending: deque[int] = deque()  # read from `order` but not placed: the front of the queue
        read = placed = 0
        tail: list[list[int]] = []
        run = 1  # groups to check at once; doubles while they are clean
        while read < n or pending:
            if not pending and not tail and n - read >= size:
                m = min(run, (n - read) // size)
                clean = self._clean(order[read : read + m * size].reshape(m, size))
                good = m if clean.all() else int(np.argmin(clean))
                read += good * size
                placed = read  # clean groups are already in place
                run = min(run * 2, max(1, 65536 // size)) if good == m else 1
                if good == m:
                    continue
            group, skipped, seen = [], [], set()
            while len(group) < size and (pending or read < n):
                if pending:
                    i = pending.popleft()
                else:
                    i, read = int(order[read]), read + 1
                texts = set(self.hashes[i].tolist())
                if seen.isdisjoint(texts):
                    group.append(i)
                    seen |= texts
                else:
                    skipped.append(i)
            pending.extendleft(reversed(skipped))
            if len(group) == size and not tail:
                order[placed : placed + size] = group
                placed += size
            else:
                tail.append(group)
        if self.group > 1:
            # accelerate hands batch i to rank i % group and skips a round whose last batch is
            # short, so a short group would silently cost a step: keep full groups only. A group
            # is short when every row left clashes with it (end of epoch, or few distinct anchors).
            self.dropped = sum(len(g) for g in tail if len(g) < size)
            tail = [g for g in tail if len(g) == size]
        tail = [g[r * self.batch_size : (r + 1) * self.batch_size] for g in tail for r in range(self.group)]
        tail = [b for b in tail if b]
        self._cache = (epoch, order, placed, tail)
        return order, placed, tail

    def batches(self, epoch: int) -> list[list[int]]:
        return list(self._iter(epoch))

    def _iter(self, epoch: int) -> Iterator[list[int]]:
        order, full, tail = self._plan(epoch)
        for start in range(0, full, self.batch_size):
            yield order[start : start + self.batch_size].tolist()
        yield from tail

    def __iter__(self) -> Iterator[list[int]]:
        return self._iter(self.epoch)

    def __len__(self) -> int:
        order, full, tail = self._plan(self.epoch)
        return full // self.batch_size + len(tail)


def pad(sequences: Sequence[Sequence[int]], pad_id: int, left: bool = False, multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padded to the longest sequence (rounded up to `multiple_of`).
    Vectorised: the ids are laid end to end once and dropped into place by the mask (at batch 256
    about 10x the row-by-row loop)."""
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    width = padded_width(int(lengths.max()), multiple_of)
    flat = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64, count=int(lengths.sum()))
    columns = np.arange(width)
    mask = columns >= (width - lengths)[:, None] if left else columns < lengths[:, None]
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    ids[mask] = flat  # row-major: each row's ids in order, rows in order
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def padded_width(longest: int, multiple_of: int = 1) -> int:
    return -(-longest // multiple_of) * multiple_of


class Collator:
    """A batch of B rows with k text columns as model inputs, with its token counts (host ints).

    `merge=True`: all kB sentences (column after column) in one input. Packed (`packed`, a
    PackLayout of train/models/packed.py): end to end, padding-free, in batch order. Padded: one
    input, or with `chunk_rows > 0` sorted by length and cut into chunks of that many rows, each
    padded only to its own longest sentence; `restore` puts the embeddings back in order. The
    loss still sees the whole, randomly composed batch. `merge=False`: one input per column
    (`columns`), for losses that run the model themselves; packed too unless the loss slices its
    inputs into mini-batches (`packed_columns=False`: GradCache).
    """

    def __init__(
        self,
        pad_token_id: int,
        padding_side: str = "right",
        token_type_ids: bool = False,
        chunk_rows: int | None = 0,
        columns: tuple[str, ...] = ("sentence1", "sentence2"),
        label: str | None = "score",
        merge: bool = True,
        prompt_lengths: dict[str, int] | None = None,
        multiple_of: int = 1,
        packed: Any = None,
        packed_columns: bool = True,
    ) -> None:
        self.pad_token_id = pad_token_id
        self.left = padding_side == "left"
        self.token_type_ids = token_type_ids
        self.chunk_rows = chunk_rows
        self.columns = columns
        self.label = label
        self.merge = merge
        # Pooling(include_prompt=False): the prompt's token count of each column, for the pooling
        # to skip. One count a forward pass, so chunks then hold one column each.
        self.prompt_lengths = prompt_lengths or {}
        self.multiple_of = multiple_of
        self.packed = packed
        self.packed_columns = packed_columns

    def features(self, sequences: list[list[int]], column: str | None = None, counts: list[int] | None = None, pack: bool = False) -> dict[str, torch.Tensor]:
        """Model inputs of `sequences`; `counts` ([real, padded]) gets what they hold and what runs."""
        if pack:
            from train.data.packing import pack as packed_inputs

            features = packed_inputs(sequences, self.packed)
            ran = features["input_ids"].shape[1]
        else:
            input_ids, attention_mask = pad(sequences, self.pad_token_id, self.left, self.multiple_of)
            features = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.token_type_ids:
                features["token_type_ids"] = torch.zeros_like(input_ids)
            ran = input_ids.numel()
        if column in self.prompt_lengths:
            features["prompt_length"] = torch.tensor([self.prompt_lengths[column]])
        if counts is not None:
            counts[0] += sum(map(len, sequences))
            counts[1] += ran
        return features

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        labels = torch.tensor([r[self.label] for r in rows], dtype=LABEL_COLUMNS[self.label]) if self.label else None
        counts = [0, 0]
        batch: dict[str, Any] = {"labels": labels, "n_columns": len(self.columns), "rows": len(rows), "counts": counts}
        if not self.merge:
            pack = self.packed is not None and self.packed_columns
            batch["columns"] = [self.features([r[f"ids_{c}"] for r in rows], c, counts, pack) for c in self.columns]
            return batch
        sequences = [r[f"ids_{c}"] for c in self.columns for r in rows]
        if self.prompt_lengths:
            return {**batch, **self._by_column(sequences, len(rows), counts)}
        if self.packed is not None:
            return {**batch, "chunks": [self.features(sequences, counts=counts, pack=True)], "restore": None}
        size = chunk_size(len(sequences), self.chunk_rows)
        if size <= 0 or len(sequences) <= size:
            return {**batch, "chunks": [self.features(sequences, counts=counts)], "restore": None}
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        chunks = [self.features([sequences[i] for i in order[start : start + size]], counts=counts) for start in range(0, len(order), size)]
        restore = torch.empty(len(order), dtype=torch.long)
        restore[torch.tensor(order)] = torch.arange(len(order))
        return {**batch, "chunks": chunks, "restore": restore}

    def _by_column(self, sequences: list[list[int]], rows: int, counts: list[int]) -> dict[str, Any]:
        """Chunks that each hold one column's sentences (sorted by length within it, or packed), so
        that each forward pass carries that column's prompt length."""
        size = chunk_size(len(sequences), self.chunk_rows)
        size = rows if size <= 0 or self.packed is not None else min(size, rows)
        order: list[int] = []
        chunks = []
        for k, column in enumerate(self.columns):
            mine = list(range(k * rows, (k + 1) * rows))
            if self.packed is None:
                mine.sort(key=lambda i: len(sequences[i]))
            for start in range(0, rows, size):
                part = mine[start : start + size]
                chunks.append(self.features([sequences[i] for i in part], column, counts, pack=self.packed is not None))
                order += part
        restore = torch.empty(len(order), dtype=torch.long)
        restore[torch.tensor(order)] = torch.arange(len(order))
        return {"chunks": chunks, "restore": restore}


def embed_batch(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Sentence embeddings of a merged batch, in batch order (kB rows: column after column)."""
    outputs = [model(chunk)["sentence_embedding"] for chunk in batch["chunks"]]
    embeddings = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return embeddings if batch["restore"] is None else embeddings[batch["restore"]]
