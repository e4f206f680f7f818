"""Several datasets in one run, each with its own loss and prompts, behind the task interface the
loop already knows: one `Workload` whose rows, sampler and collator are the datasets' side by side
(train/data/mixture.py), whose loss holds every dataset's loss (`LossMixture`), and whose step
hands each batch to its own dataset's step and loss (`MixtureStep`). The loop sees one task; its
per-group loss statistics (`BatchStats.group`) give metrics.jsonl a loss_<name> a dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from train.data.mixture import PART, MixtureBatchSampler, MixtureCollate, MixtureRows
from train.engine.session import Workload
from train.engine.step_model import OUTPUT_KEYS
from train.engine.task_step import BatchStats, TrainStep
from train.errors import DataError

log = logging.getLogger("train")


class LossMixture(nn.Module):
    """Every dataset's loss, in mixture order; a batch's step calls its own (`parts[d]`). The
    losses' own weights (a softmax classifier) are trained and checkpointed as one loss's are."""

    def __init__(self, losses: Sequence[nn.Module], names: Sequence[str]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(losses)
        self.names = list(names)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise TypeError("a LossMixture is not called: each batch's step calls its own dataset's loss (parts[d])")


class MixtureStep:
    """The step of the batch's own dataset, with its loss; its statistics carry the dataset as their group."""

    def __init__(self, steps: Sequence[TrainStep]) -> None:
        self.steps = list(steps)
        keys = [k for step in self.steps for k in getattr(step, "fp32_outputs", OUTPUT_KEYS)]
        self.fp32_outputs = tuple(dict.fromkeys(keys))

    def loss(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        d = batch[PART]
        return self.steps[d].loss(model, loss_fn.parts[d], batch)

    def stats(self, batch: dict[str, Any]) -> BatchStats:
        d = batch[PART]
        return replace(self.steps[d].stats(batch), group=d)

    def forward_contexts(self, model: nn.Module, batch: dict[str, Any] | None = None) -> list[Callable[[], AbstractContextManager]]:
        if batch is None:
            raise ValueError("a mixture's forward contexts depend on the batch's dataset")
        return self.steps[batch[PART]].forward_contexts(model, batch)


@dataclass
class PartInputs:
    """One dataset's share of the mixture, built as a one-dataset run builds it."""

    name: str
    weight: float
    loss: nn.Module
    rows: Any
    collate: Callable
    sampler: Any
    step: TrainStep


def mixture_workload(model: nn.Module, parts: Sequence[PartInputs], sampling: str, seed: int, num_processes: int) -> Workload:
    """One workload of several datasets: a batch from one of them, scheduled by `sampling`."""
    rows = MixtureRows([p.rows for p in parts])
    sampler = MixtureBatchSampler(
        [p.sampler for p in parts], rows.offsets[:-1], [p.weight for p in parts], sampling, seed, group=num_processes,
        names=[p.name for p in parts],
    )
    order = sampler.parts(0)
    counts = {p.name: order.count(d) // num_processes for d, p in enumerate(parts)}  # global batches
    log.info("Mixture (%s): batches of epoch 1 by dataset: %s%s", sampling, ", ".join(f"{k} {v}" for k, v in counts.items()),
             f"; left out: {sampler.dropped}" if sampler.dropped else "")
    if not len(sampler):
        raise DataError("the mixture has no batch: every dataset is smaller than one (global) batch of trainer.batch_size")
    return Workload(
        model, LossMixture([p.loss for p in parts], [p.name for p in parts]), rows, MixtureCollate([p.collate for p in parts]), sampler,
        MixtureStep([p.step for p in parts]), groups=tuple(p.name for p in parts),
    )
