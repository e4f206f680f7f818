"""What a training step counts stays on the device until a log line reads it, and a step whose
gradient is not finite is skipped on the device.

On a GPU every read of a device value (`.item()`, `float()`, `bool()`) waits for the queue to
drain, so the next batch's collation and kernel launches cannot overlap the GPU's work. A step
therefore reads nothing: the loss is summed on the device, and the decision to skip a step is the
optimizer's own. torch's fused AdamW takes a `found_inf` tensor (what GradScaler hands it) and
leaves the weights, its moments and its step count untouched when it is non-zero; this loop sets
it from the gradient norm that clipping computes anyway. Under several processes the norm is
that of the averaged gradient, the same number on every rank, so every rank skips alike with no
extra collective. One read at each log line (and before a checkpoint, an evaluation and the end)
brings back the loss, the skipped steps and, under fp16, the loss scale.

An optimizer without `found_inf` (DeepSpeed's, or a non-fused one) costs one read a step instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` (the torch one inside accelerate's wrapper) can skip a step on the device."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return isinstance(inner, torch.optim.Adam | torch.optim.AdamW) and bool(inner.defaults.get("fused"))


@dataclass
class Reading:
    """What one read brought back (totals since the run began, resumes included)."""

    loss_sum: float
    loss_count: float
    nonfinite_losses: int
    skipped_steps: int
    first_bad_step: int | None  # the first skipped step since the previous read, or None
    loss_scale: float | None  # fp16's dynamic loss scale
    group_sums: list[float] = field(default_factory=list)  # each group's finite-loss sum and count
    group_counts: list[float] = field(default_factory=list)


class DeviceStats:
    def __init__(self, device: torch.device, on_device: bool, skipped_before: int = 0, nonfinite_before: int = 0, groups: int = 0) -> None:
        self.on_device = on_device
        zeros = dict(device=device, dtype=torch.float32)
        self.loss_sum = torch.zeros((), **zeros)
        self.loss_count = torch.zeros((), **zeros)
        # Per group (a mixture's datasets): sums and counts as above, one slot a group.
        self.group_sum = torch.zeros(groups, **zeros)
        self.group_count = torch.zeros(groups, **zeros)
        self.nonfinite_losses = torch.full((), float(nonfinite_before), **zeros)
        self.skipped = torch.full((), float(skipped_before), **zeros)
        self.first_bad = torch.full((), -1.0, **zeros)
        self.host_skipped = skipped_before  # the host path's count (no device skip)
        self.host_first_bad: int | None = None

    def add_loss(self, loss: torch.Tensor, group: int = 0) -> None:
        """A micro-batch's loss: finite ones go into the mean (and its group's), the others are counted."""
        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        kept = torch.where(finite, loss, 0.0)
        self.loss_sum += kept
        self.loss_count += finite
        self.nonfinite_losses += ~finite
        if len(self.group_sum):
            self.group_sum[group] += kept  # a view of one slot: no read, no copy to the device
            self.group_count[group] += finite

    def optimizer_step(self, optimizer, norm: torch.Tensor | float | None, step: int, scaler=None) -> bool | None:
        """Steps `optimizer` (accelerate's wrapper) unless the gradient norm is not finite. Returns
        whether the step was applied when the host had to decide (None when the device did)."""
        if not self.on_device or not torch.is_tensor(norm):
            finite = norm is None or math.isfinite(float(norm))  # one read: no device skip here
            if finite or scaler is not None:
                optimizer.step()  # GradScaler skips an overflow itself, and must see every step
            if not finite:
                self.host_skipped += 1
                self.host_first_bad = self.host_first_bad or step
            return finite
        bad = ~torch.isfinite(norm.detach())
        inner = optimizer.optimizer
        if scaler is None:
            # GradScaler sets these itself (and skips an overflow the same way); without one we do.
            inner.found_inf, inner.grad_scale = bad.float(), None
        try:
            optimizer.step()
        finally:
            if scaler is None:
                del inner.found_inf, inner.grad_scale
        self.skipped += bad
        self.first_bad = torch.where(bad & (self.first_bad < 0), float(step), self.first_bad)
        return None

    def read(self, accelerator, scaler=None) -> Reading:
        """One read of everything (and one collective under several processes)."""
        scale = scaler._scale.reshape(()).float() if scaler is not None and scaler._scale is not None else torch.zeros((), device=self.loss_sum.device)
        local = torch.cat([torch.stack([self.loss_sum, self.loss_count, self.nonfinite_losses, self.skipped, self.first_bad, scale]),
                           self.group_sum, self.group_count])
        summed = accelerator.reduce(local.clone(), "sum") if accelerator.num_processes > 1 else local
        values = summed.tolist()
        n = accelerator.num_processes
        # The skip decision is the same on every rank: its sum is n times one rank's.
        first_bad = int(values[4] / n) if values[4] >= 0 else None
        self.first_bad.fill_(-1.0)
        if not self.on_device:
            first_bad, self.host_first_bad = self.host_first_bad, None
        skipped = round(values[3] / n) if self.on_device else self.host_skipped
        g = len(self.group_sum)
        return Reading(values[0], values[1], round(values[2]), skipped, first_bad, values[5] / n if scaler is not None else None,
                       values[6 : 6 + g], values[6 + g :])
