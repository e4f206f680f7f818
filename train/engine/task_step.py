"""What the loop needs from a task's training step: the loss of a batch, and what the batch held.
The loop knows no batch layout; a task's `TrainStep` (train/tasks/) does."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class BatchStats:
    rows: int  # pairs (or queries) the batch trained on
    real_tokens: int
    padded_tokens: int
    group: int = 0  # which of the workload's named groups (a mixture's datasets) the batch belongs to


class TrainStep(Protocol):
    # A step may name `fp32_outputs`, the output keys its loss reads (default: step_model.OUTPUT_KEYS,
    # the pooled embedding and the scores), which the loop casts to fp32 after the autocast forward.

    def loss(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's loss. `model` is the prepared model (DDP's wrapper under several processes),
        which `loss_fn` holds too; calling it autocasts the forward pass and gives fp32 outputs
        (train/engine/step_model.py), so the loss itself is computed in fp32."""
        ...

    def stats(self, batch: dict[str, Any]) -> BatchStats:
        """What the batch held, from what the collator counted on the host (no device read)."""
        ...

    def forward_contexts(self, model: nn.Module, batch: dict[str, Any] | None = None) -> list[Callable[[], AbstractContextManager]]:
        """Context managers the batch's forward and backward passes run in (a padding-free forward)."""
        ...
