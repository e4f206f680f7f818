"""What one training run's steps share, in a few named parts: what trains (`Workload`), how it is
scored on dev (`DevEvaluation`), what accelerate prepared (`Prepared`), the throughput counters
(`Meter`) and the whole (`Session`), plus what the loop hands back (`LoopResult`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from train.engine.checkpoint import Progress
from train.engine.device_stats import DeviceStats, Reading
from train.engine.parallel import StopVote, savable_model
from train.engine.settings import TrainerConfig
from train.engine.task_step import BatchStats, TrainStep


@dataclass
class Workload:
    """What trains: the model, its loss, the rows (a map-style dataset the loader gathers a batch at
    a time), the collator, the batch sampler (with `use_epoch(epoch)`) and the task's step.
    `groups`: names of the groups a batch may belong to (`BatchStats.group`: a mixture's
    datasets), each logged with a loss of its own."""

    model: nn.Module
    loss_fn: nn.Module
    rows: Any
    collate: Callable[[list[Any]], dict[str, Any]]
    sampler: Any
    step_fn: TrainStep
    groups: tuple[str, ...] = ()


@dataclass
class DevEvaluation:
    """`evaluate(model)` gives dev figures; `main_metric` of them picks best/."""

    evaluate: Callable[[nn.Module], dict[str, float]]
    main_metric: str


@dataclass
class Prepared:
    """What accelerate prepared, and what goes with it."""

    accelerator: Accelerator
    model: nn.Module  # DDP's wrapper under several processes
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    plain: nn.Module | None  # FSDP: an unsharded copy (on the CPU) that checkpoints and final/ save
    loss_params: list[nn.Parameter]  # the loss's own weights (a classifier, a temperature)
    sync_loss_params: bool  # several processes: those are averaged by hand
    trainable: list[nn.Parameter]  # what clipping and the optimizer see
    undo_routing: Callable[[], None]  # gives the loss its own model back at the end
    helpers: list[nn.Module] = field(default_factory=list)  # frozen models the loss runs (GIST's guide): autocast too


@dataclass
class Meter:
    """Rows and tokens trained, and throughput over training time only (data, forward, backward,
    update; not evaluation or checkpoints)."""

    pairs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    last_tick: float = 0.0  # when the previous step's bookkeeping ended
    step_rows: int = 0  # rows of this process since then
    window_rows: int = 0  # rows (all processes) and seconds since the last log line
    window_seconds: float = 0.0
    rate: float | None = None  # rows/s, smoothed, for the bar

    def count(self, stats: BatchStats) -> None:
        self.pairs += stats.rows
        self.step_rows += stats.rows
        self.real_tokens += stats.real_tokens
        self.padded_tokens += stats.padded_tokens

    def step_done(self, num_processes: int) -> None:
        """After an optimizer step: its time and rows into the log window and the smoothed rate."""
        seconds = time.perf_counter() - self.last_tick
        rows = self.step_rows * num_processes  # every process trains an equal share of the batch
        self.step_rows = 0
        self.window_rows += rows
        self.window_seconds += seconds
        if seconds > 0:
            self.rate = rows / seconds if self.rate is None else 0.3 * rows / seconds + 0.7 * self.rate  # tqdm's smoothing

    def take_window(self) -> float | None:
        """Rows a second since the last log line (None: no time passed), and a new window."""
        rate = round(self.window_rows / self.window_seconds, 2) if self.window_seconds > 0 else None
        self.window_rows, self.window_seconds = 0, 0.0
        return rate


@dataclass
class Session:
    """Everything the loop's steps share."""

    prep: Prepared
    sampler: Any
    step_fn: TrainStep
    settings: TrainerConfig
    run_dir: Path
    progress: Progress
    dev: DevEvaluation | None
    stats: DeviceStats
    vote: StopVote
    total_steps: int
    n_epochs: int
    tf32: bool = False
    unit: str = "pairs"  # what a training row is: throughput is <unit>/s
    meter: Meter = field(default_factory=Meter)
    last_read: Reading = field(default_factory=lambda: Reading(0.0, 0.0, 0, 0, None, None))  # the device figures at the last read
    logged_loss: tuple[float, float] = (0.0, 0.0)  # loss sum and count at the last log line
    groups: tuple[str, ...] = ()  # the workload's named groups (a mixture's datasets)
    logged_groups: tuple[list[float], list[float]] = ([], [])  # each group's loss sum and count at the last log line
    shown_loss: float | None = None  # the bar's loss: the mean of the last log window
    checked_unused: bool = False
    eval_seconds: float = 0.0

    @property
    def accelerator(self) -> Accelerator:
        return self.prep.accelerator

    @property
    def model(self) -> nn.Module:
        return self.prep.model

    @property
    def loader(self) -> DataLoader:
        return self.prep.loader

    @property
    def scheduler(self) -> Any:
        return self.prep.scheduler

    @property
    def main(self) -> bool:
        return self.prep.accelerator.is_main_process

    @property
    def scaler(self):
        return self.prep.accelerator.scaler

    def to_save(self) -> nn.Module:
        return savable_model(self.prep.accelerator, self.prep.model, self.prep.plain)


@dataclass
class LoopResult:
    progress: Progress
    final_dir: Path
    best_dir: Path | None
    seconds: float
    pairs: int
    real_tokens: int
    padded_tokens: int
    mixed_precision: str
    skipped_steps: int = 0  # not finite (bf16/fp32), or overflowed under fp16's loss scaling
    loss_scale: float | None = None  # fp16: the dynamic loss scale at the end
    tf32: bool = False
