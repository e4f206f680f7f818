"""Several training sets as one: their rows side by side (`MixtureRows`), a batch sampler whose
every batch comes from one of them (`MixtureBatchSampler`), and a collator that hands each batch
to its own set's collator (`MixtureCollate`), tagging it with the set it came from.

The schedule is sentence-transformers' (its multi-dataset batch samplers): `proportional` uses
every batch of every set once an epoch (times the set's weight) in a random order, so a set is
drawn in proportion to its size; `round_robin` takes a batch of each in turn until the smallest
runs out. What differs: under several processes the unit of the schedule is a *global* step,
`group` consecutive batches of one set (accelerate hands them to the ranks in turn), so every
rank trains the same set, and the same loss, at every step; and the order is a function of the
seed and the epoch only, so a resumed run (skip_first_batches) sees the same batches, and a
1-process run of the global batch the same sets in the same order as an N-process one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

PART = "mixture_part"  # the batch key that names its set (an index into the mixture)


@dataclass
class Tagged:
    """A batch's rows and the set they came from (what `MixtureRows` gives the collator)."""

    part: int
    rows: Any


class MixtureRows:
    """The rows of several map-style sets under one index: set d's row i is `offsets[d] + i`. A
    batch's indices all fall in one set (the sampler sees to it), gathered in one call."""

    def __init__(self, parts: Sequence[Any]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0, *(len(p) for p in self.parts)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def part_of(self, index: int) -> int:
        return int(np.searchsorted(self.offsets, index, side="right") - 1)

    def __getitem__(self, index: int) -> Any:
        d = self.part_of(index)
        return self.parts[d][index - int(self.offsets[d])]

    def __getitems__(self, indices: list[int]) -> Tagged:
        d = self.part_of(indices[0])
        start, end = int(self.offsets[d]), int(self.offsets[d + 1])
        if not all(start <= i < end for i in indices):
            raise ValueError("a mixture batch holds rows of more than one set")
        local = [i - start for i in indices]
        part = self.parts[d]
        rows = part.__getitems__(local) if hasattr(part, "__getitems__") else [part[i] for i in local]
        return Tagged(d, rows)


class MixtureCollate:
    """Set d's batch through set d's collator, with `batch[PART] = d`."""

    def __init__(self, collates: Sequence[Callable[[Any], dict[str, Any]]]) -> None:
        self.collates = list(collates)

    def __call__(self, tagged: Tagged) -> dict[str, Any]:
        batch = self.collates[tagged.part](tagged.rows)
        batch[PART] = tagged.part
        return batch


class MixtureBatchSampler:
    """Batches of several sets' batch samplers (each with `batches(epoch)`, `use_epoch` and
    `batch_size`), each batch from one set, in units of `group` consecutive batches."""

    def __init__(
        self, samplers: Sequence[Any], offsets: Sequence[int], weights: Sequence[float], sampling: str, seed: int = 0,
        group: int = 1, names: Sequence[str] = (),
    ) -> None:
        if sampling == "round_robin" and any(w != 1 for w in weights):
            raise ValueError("round_robin sampling takes every weight as 1: use sampling=proportional for weights")
        self.samplers = list(samplers)
        self.offsets = [int(o) for o in offsets]
        self.weights = list(weights)
        self.sampling = sampling
        self.seed = seed
        self.group = group
        self.names = list(names) or [str(i) for i in range(len(self.samplers))]
        self.epoch = 0
        self.dropped: dict[str, int] = {}  # batches an epoch left out, by set (an incomplete unit, or round_robin's excess)
        self._cache: tuple[int, list[tuple[int, list[int]]]] | None = None

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for s in self.samplers:
            s.use_epoch(epoch)

    def _units(self, d: int, epoch: int) -> list[list[list[int]]]:
        """Set d's batches of the epoch as units of `group` full batches; a weight above 1 adds the
        set's batches again in other orders (as its later epochs would shuffle them), below 1 cuts them."""
        units = self._units_once(self.samplers[d], epoch)
        wanted = int(round(self.weights[d] * len(units)))
        again = 1
        while units and len(units) < wanted:
            units += self._units_once(self.samplers[d], epoch + again * 1_000_003)
            again += 1
        return units[:wanted]

    def _units_once(self, sampler: Any, epoch: int) -> list[list[list[int]]]:
        batches = sampler.batches(epoch)
        if self.group > 1:
            # accelerate skips a round whose last batch is short: a unit holds full batches only.
            batches = [b for b in batches if len(b) == sampler.batch_size]
        return [batches[i : i + self.group] for i in range(0, len(batches) - len(batches) % self.group, self.group)]

    def _plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        units = [self._units(d, epoch) for d in range(len(self.samplers))]
        if self.sampling == "round_robin":
            n = min(len(u) for u in units)
            order = np.tile(np.arange(len(units)), n)
            self.dropped = {self.names[d]: (len(u) - n) * self.group for d, u in enumerate(units) if len(u) > n}
        else:
            order = np.repeat(np.arange(len(units)), [len(u) for u in units])
            np.random.default_rng([self.seed, epoch, 0x6D6978]).shuffle(order)  # its own stream: "mix"
            self.dropped = {}
        taken = [0] * len(units)
        plan: list[tuple[int, list[int]]] = []
        for d in order.tolist():
            for batch in units[d][taken[d]]:
                plan.append((d, [self.offsets[d] + i for i in batch]))
            taken[d] += 1
        self._cache = (epoch, plan)
        return plan

    def batches(self, epoch: int) -> list[list[int]]:
        return [b for _, b in self._plan(epoch)]

    def parts(self, epoch: int) -> list[int]:
        """The set of each batch of the epoch, in order."""
        return [d for d, _ in self._plan(epoch)]

    @property
    def batch_size(self) -> int:
        return self.samplers[0].batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for _, batch in self._plan(self.epoch):
            yield batch

    def __len__(self) -> int:
        return len(self._plan(self.epoch))
