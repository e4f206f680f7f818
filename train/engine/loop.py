"""The training loop: one accelerate loop for one CPU, one GPU or many processes.

It gets plain objects (a model, a loss, tokenized rows, a task's `TrainStep`, an evaluation
function, the trainer settings) and writes into the run dir: metrics.jsonl, checkpoints/step-N/,
best/, final/; what it writes to metrics.jsonl also goes to the accelerator's trackers, if any
(train/engine/tracking.py). Nothing here knows a batch layout, reads files of a dataset format or the config.
Read `train` first: it calls the rest top-down.

A step reads nothing back from the device (train/engine/device_stats.py): what it counts is read at log
lines, evaluations and checkpoints. The model a step calls is the prepared one, DDP's wrapper
under several processes, for the loop and for losses that run the model themselves alike, its
forward pass under autocast and its outputs in fp32 (train/engine/step_model.py).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_linear_schedule_with_warmup

from train.engine import checkpoint, tracking
from train.engine.checkpoint import ACCELERATE_STATE, Progress, latest_checkpoint, load_progress, prune
from train.engine.settings import TrainerConfig
from train.engine.device_stats import DeviceStats, Reading, skips_on_device
from train.engine.parallel import StopVote, sync_loss_parameters, unused_parameters
from train.errors import Preempted, UserError
from train.engine.precision import fp16_on_cpu, resolve_precision, set_tf32
from train.engine.parallel import check_deepspeed_settings, deepspeed_batch_size, freeze_unused_parameters, fsdp_on_cpu, fsdp_plugin, savable_model
from train.engine.step_model import compile_backbones, route_loss_through, training_forward
from train.engine.task_step import TrainStep

log = logging.getLogger(__name__)


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


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, fused: bool = False, extra: list[nn.Parameter] = ()
) -> torch.optim.Optimizer:
    # No weight decay on biases and LayerNorm weights, as in BERT's recipe.
    decay, no_decay = [], list(extra)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


class StopOnSignal:
    """First SIGTERM or SIGINT: the loop finishes its step, writes a checkpoint and stops.
    A second one exits at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        log.warning("%s: finishing this step, then writing a checkpoint (again to exit at once)", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _nan_message(step: int, now: int, run_dir: Path) -> str:
    last = latest_checkpoint(run_dir / "checkpoints")
    later = f" (seen at step {now}; the steps since were skipped, so the weights are those before step {step})" if now > step else ""
    return (
        f"Training diverged at step {step}: the loss or its gradient is not finite{later}. "
        f"Last good checkpoint: {last or 'none yet'}. Try a lower trainer.lr, a longer trainer.warmup_ratio, "
        "trainer.mixed_precision=bf16 instead of fp16, or look for broken rows in the data; "
        "trainer.on_nan=skip skips such steps instead of stopping."
    )


def _oom_message(settings: TrainerConfig) -> str:
    return (
        f"Out of memory at trainer.batch_size={settings.batch_size}. What helps: a smaller trainer.batch_size "
        "with trainer.grad_accum to keep the effective batch; loss=cached_mnrl (GradCache: memory flat in the "
        "batch size) for contrastive losses; a shorter model.max_seq_length; trainer.mixed_precision=bf16."
    )


class LossWeights:
    """A loss's own parameters (not its model's) as a checkpointable object."""

    def __init__(self, loss_fn: nn.Module) -> None:
        self.params = {n: p for n, p in loss_fn.named_parameters() if not n.startswith("model.")}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.params.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])


def compute_loss(step: TrainStep, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The batch's loss, as the task computes it (a seam for tests that plant a NaN)."""
    return step.loss(model, loss_fn, batch)


def make_accelerator(settings: TrainerConfig, log_with: list | None = None) -> Accelerator:
    # The accelerator's settings are a process-wide singleton; a Hydra sweep (one process)
    # or a multi-stage run may change mixed precision between runs. The process group stays.
    # `log_with`: trackers (train/engine/tracking.py `build`); run.py opens and closes them.
    AcceleratorState._reset_state()
    fsdp_on_cpu()
    cuda = PartialState().device.type == "cuda"
    accelerator = Accelerator(
        mixed_precision=resolve_precision(settings.mixed_precision.value, PartialState().device),
        gradient_accumulation_steps=settings.grad_accum,
        # Every trainable parameter gets a gradient each step (the unused pooler is frozen, and the
        # first step checks the rest), so DDP need not search the graph for unused ones. No
        # BatchNorm-style running statistics: no buffers to broadcast before each forward pass.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=settings.find_unused_parameters, broadcast_buffers=False)],
        # Pinned batches copied to the GPU without waiting (the copy overlaps the previous step).
        dataloader_config=DataLoaderConfiguration(non_blocking=cuda),
        fsdp_plugin=fsdp_plugin(),
        log_with=log_with or None,
    )
    fp16_on_cpu(accelerator)
    return accelerator


@dataclass
class Session:
    """Everything the loop's steps share: prepared objects, the schedule, counters."""

    accelerator: Accelerator
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    sampler: Any
    step_fn: TrainStep
    settings: TrainerConfig
    run_dir: Path
    plain: nn.Module | None  # FSDP: an unsharded copy (on the CPU) that checkpoints and final/ save
    loss_params: list[nn.Parameter]
    sync_loss_params: bool  # several processes: the loss's own weights are averaged by hand
    trainable: list[nn.Parameter]  # what clipping and the optimizer see
    total_steps: int
    n_epochs: int
    progress: Progress
    evaluate: Callable[[nn.Module], dict[str, float]] | None
    main_metric: str
    stats: DeviceStats
    vote: StopVote
    undo_routing: Callable[[], None]
    tf32: bool = False
    unit: str = "pairs"  # what a training row is: throughput is <unit>/s
    pairs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    last_read: Reading = field(default_factory=lambda: Reading(0.0, 0.0, 0, 0, None, None))  # the device figures at the last read
    logged_loss: tuple[float, float] = (0.0, 0.0)  # loss sum and count at the last log line
    shown_loss: float | None = None  # the bar's loss: the mean of the last log window
    checked_unused: bool = False
    eval_seconds: float = 0.0
    # Throughput: training time only (data, forward, backward, update; not evaluation or checkpoints).
    last_tick: float = 0.0  # when the previous step's bookkeeping ended
    step_rows: int = 0  # rows of this process since then
    window_rows: int = 0  # rows (all processes) and seconds since the last log line
    window_seconds: float = 0.0
    rate: float | None = None  # rows/s, smoothed, for the bar

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def scaler(self):
        return self.accelerator.scaler

    def to_save(self) -> nn.Module:
        return savable_model(self.accelerator, self.model, self.plain)


def loader_workers(setting: int | None, device: torch.device) -> int:
    """trainer.num_workers; null: on CUDA worker processes that collate the next batches while the
    GPU trains (up to 4 a process, from the cores there are), on a CPU none (the cores train)."""
    if setting is not None:
        return setting
    if device.type != "cuda":
        return 0
    per_process = (os.cpu_count() or 1) // max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    return max(1, min(4, per_process - 1))


def _make_loader(rows: Any, sampler: Any, collate: Callable, settings: TrainerConfig, device: torch.device) -> DataLoader:
    workers = loader_workers(settings.num_workers, device)
    return DataLoader(
        rows,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        # Its own generator: creating an iterator draws a seed from it, and drawing from the global
        # RNG would shift dropout after a resume (which creates one iterator more than a plain run).
        generator=torch.Generator().manual_seed(settings.seed),
    )


def _schedule(accelerator: Accelerator, optimizer: torch.optim.Optimizer, n_batches: int, settings: TrainerConfig, deepspeed: bool):
    """(scheduler, total optimizer steps, epochs to run)."""
    updates_per_epoch = max(1, math.ceil(n_batches / settings.grad_accum))
    total_steps = settings.max_steps if settings.max_steps > 0 else settings.epochs * updates_per_epoch
    # Rounded up, as transformers' Trainer does (TrainingArguments.get_warmup_steps).
    warmup = math.ceil(settings.warmup_ratio * total_steps)
    # A prepared scheduler steps once per process per update, hence the scaling; under DeepSpeed
    # prepare() leaves it as it is, and it steps once per update.
    per_update = 1 if deepspeed else accelerator.num_processes
    scheduler = accelerator.prepare(get_linear_schedule_with_warmup(optimizer, warmup * per_update, total_steps * per_update))
    if deepspeed:
        accelerator.register_for_checkpointing(scheduler)  # not prepared, so save_state would skip it
    return scheduler, total_steps, math.ceil(total_steps / updates_per_epoch)


def setup(
    model: nn.Module, loss_fn: nn.Module, rows: Any, collate: Callable, sampler: Any, step_fn: TrainStep,
    settings: TrainerConfig, run_dir: Path, accelerator: Accelerator | None, resume_from: Path | None,
    evaluate: Callable | None, main_metric: str, unit: str = "pairs",
) -> Session:
    """Prepares model, optimizer, loader and schedule with accelerate, and loads a checkpoint."""
    accelerator = accelerator or make_accelerator(settings)
    set_seed(settings.seed)
    tf32 = set_tf32(settings.tf32, accelerator.device)
    loader = _make_loader(rows, sampler, collate, settings, accelerator.device)
    in_model = {id(p) for p in model.parameters()}
    loss_params = [p for p in loss_fn.parameters() if id(p) not in in_model]
    loss_fn.to(accelerator.device)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    freeze_unused_parameters(model)
    if settings.compile:
        log.info("torch.compile: %d backbone(s), dynamic shapes (the first steps compile)", compile_backbones(model))
    # Fused AdamW: one kernel for all parameters (on this 2-core CPU it cut the step from 40 to 9
    # ms), and the one that can skip a step on the device (train/engine/device_stats.py).
    optimizer = build_optimizer(
        model, settings.lr, settings.weight_decay, fused=accelerator.device.type in ("cpu", "cuda"), extra=loss_params
    )
    # FSDP: the copy that gathers full weights for saving stays on the CPU, where the model was built.
    plain = copy.deepcopy(model).cpu() if fsdp and accelerator.is_main_process else None
    if deepspeed:
        check_deepspeed_settings(settings.on_nan.value)
        deepspeed_batch_size(accelerator, settings.batch_size)
    prepared, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # prepare() makes the model's forward autocast; undo that (in place) so that evaluation and
    # saved models stay fp32: the training step autocasts its forward passes itself (training_forward).
    accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)
    log.info("Mixed precision: %s%s", accelerator.mixed_precision, "; TF32 matmuls" if tf32 else "")
    scheduler, total_steps, n_epochs = _schedule(accelerator, optimizer, len(loader), settings, deepspeed)
    if loss_params:
        # The loss's own weights (the softmax classifier, CLIP's temperature) are in no prepared
        # model: without this, a resumed run would restart them from their initial values.
        accelerator.register_for_checkpointing(LossWeights(loss_fn))
    progress = Progress()
    if resume_from is not None:
        accelerator.load_state(str(resume_from / ACCELERATE_STATE))
        progress = load_progress(resume_from)
        log.info("Resumed from %s at step %d (epoch %d, batch %d)", resume_from, progress.step, progress.epoch, progress.batches_in_epoch)
    on_device = skips_on_device(optimizer) and not deepspeed
    stats = DeviceStats(accelerator.device, on_device, progress.skipped_steps, progress.nonfinite_losses)
    trainable = [p for p in (*prepared.parameters(), *loss_params) if p.requires_grad]
    session = Session(
        accelerator, prepared, loss_fn, optimizer, scheduler, loader, sampler, step_fn, settings, Path(run_dir), plain,
        loss_params, bool(loss_params) and accelerator.num_processes > 1 and not deepspeed, trainable, total_steps, n_epochs,
        progress, evaluate, main_metric, stats, StopVote(), route_loss_through(loss_fn, prepared, model), tf32, unit,
    )
    session.last_read = Reading(0.0, 0.0, progress.nonfinite_losses, progress.skipped_steps, None, None)
    return session


def update(s: Session, batch: dict[str, Any]) -> torch.Tensor:
    """Forward and backward of one batch, and the optimizer step when the accumulation is full.
    Nothing is read back from the device (train/engine/device_stats.py)."""
    accelerator = s.accelerator
    with accelerator.accumulate(s.model):
        # The forward passes in autocast, outputs and loss in fp32, also GradCache's replay in backward.
        with training_forward(s.model, accelerator.autocast, s.step_fn.forward_contexts(s.model)):
            try:
                loss = compute_loss(s.step_fn, s.model, s.loss_fn, batch)
                accelerator.backward(loss)
            except torch.OutOfMemoryError:
                raise UserError(_oom_message(s.settings)) from None
        s.stats.add_loss(loss)
        if not s.checked_unused:
            check_every_parameter_used(s)
        if accelerator.sync_gradients:
            optimizer_step(s)
    return loss


def check_every_parameter_used(s: Session) -> None:
    """After the first backward pass: DDP (without find_unused_parameters) needs a gradient for
    every trainable parameter, or it fails at the next step with a list of indices."""
    s.checked_unused = True
    if s.accelerator.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU) or s.settings.find_unused_parameters:
        return
    missing = unused_parameters(s.accelerator.unwrap_model(s.model))
    if missing:
        raise UserError(
            f"{len(missing)} trainable parameters got no gradient from the loss ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}), which DDP cannot average. Set trainer.find_unused_parameters=true "
            "(DDP then searches the graph for them every step, which costs time)."
        )


def optimizer_step(s: Session) -> None:
    settings = s.settings
    if s.sync_loss_params:
        sync_loss_parameters(s.loss_params, s.accelerator)
    norm = s.accelerator.clip_grad_norm_(s.trainable, settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf"))
    applied = s.stats.optimizer_step(s.optimizer, norm, s.progress.step + 1, s.scaler)
    if applied is False and s.scaler is None and settings.on_nan.value == "stop":  # decided on the host (DeepSpeed)
        raise UserError(_nan_message(s.progress.step + 1, s.progress.step + 1, s.run_dir))
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)


def count(s: Session, batch: dict[str, Any]) -> None:
    """The batch's rows and tokens, from what the collator counted (no device value is read)."""
    s.progress.batches_in_epoch += 1
    stats = s.step_fn.stats(batch)
    s.pairs += stats.rows
    s.step_rows += stats.rows
    s.real_tokens += stats.real_tokens
    s.padded_tokens += stats.padded_tokens


def time_step(s: Session) -> None:
    """After an optimizer step: its time and rows into the log window and the bar's smoothed rate."""
    seconds = time.perf_counter() - s.last_tick
    rows = s.step_rows * s.accelerator.num_processes  # every process trains an equal share of the batch
    s.step_rows = 0
    s.window_rows += rows
    s.window_seconds += seconds
    if seconds > 0:
        s.rate = rows / seconds if s.rate is None else 0.3 * rows / seconds + 0.7 * s.rate  # tqdm's smoothing


def read_device(s: Session) -> Reading:
    """One read of the device figures; a step that was not finite stops the run or is reported,
    as trainer.on_nan says. Under fp16 a skipped step is the loss scaler's (an overflow, expected
    now and then) and only a non-finite loss counts as divergence."""
    before = s.last_read
    reading = s.stats.read(s.accelerator, s.scaler)
    s.last_read = reading
    p = s.progress
    p.skipped_steps, p.nonfinite_losses = reading.skipped_steps, reading.nonfinite_losses
    fp16 = s.scaler is not None
    new_skips = reading.skipped_steps - before.skipped_steps
    new_bad_losses = reading.nonfinite_losses - before.nonfinite_losses
    diverged = new_bad_losses > 0 if fp16 else new_skips > 0
    if diverged and s.settings.on_nan.value == "stop":
        raise UserError(_nan_message(reading.first_bad_step or p.step, p.step, s.run_dir))
    if diverged:
        log.warning("step %d: loss or gradient is not finite; step skipped (trainer.on_nan=skip)", reading.first_bad_step or p.step)
    elif new_skips and fp16:
        log.info("fp16: %d step(s) skipped by the loss scaler (gradient overflow); loss scale now %g", new_skips, reading.loss_scale)
    return reading


def run_eval(s: Session) -> dict[str, float]:
    """Dev figures of the model now; a new best is saved to best/."""
    started = time.perf_counter()
    read_device(s)  # a diverged run is not evaluated (or saved as best)
    metrics = s.evaluate(s.accelerator.unwrap_model(s.model))
    p = s.progress
    p.last_eval, p.last_eval_step = metrics, p.step
    score = metrics[s.main_metric]
    if p.best_metric is None or score > p.best_metric:
        p.best_metric, p.best_step = score, p.step
        checkpoint.save_model(s.accelerator, s.to_save(), s.run_dir / "best", {"step": p.step, s.main_metric: score, "kind": "best"})
    s.eval_seconds += time.perf_counter() - started
    return metrics


def log_figures(s: Session) -> dict[str, Any]:
    """The log line's training figures: the mean loss since the last line (over all processes),
    lr, throughput, and the skipped steps and loss scale when there are any."""
    reading = read_device(s)
    loss_sum, loss_count = reading.loss_sum - s.logged_loss[0], reading.loss_count - s.logged_loss[1]
    s.logged_loss = (reading.loss_sum, reading.loss_count)
    s.shown_loss = loss_sum / loss_count if loss_count else float("nan")
    entry: dict[str, Any] = {"loss": s.shown_loss, "lr": s.scheduler.get_last_lr()[0]}
    if s.window_seconds > 0:
        entry[f"{s.unit}_per_second"] = round(s.window_rows / s.window_seconds, 2)
    if reading.skipped_steps or reading.loss_scale is not None:
        entry["skipped_steps"] = reading.skipped_steps
    if reading.loss_scale is not None:
        entry["loss_scale"] = reading.loss_scale
    s.window_rows, s.window_seconds = 0, 0.0
    return entry


def log_and_evaluate(s: Session, epoch: int, last: bool, epoch_end: bool) -> None:
    """After an optimizer step: the metrics.jsonl line and dev figures when due, also sent to the
    trackers. Only these steps read figures back from the device."""
    settings, p, step = s.settings, s.progress, s.progress.step
    entry: dict[str, Any] = {}
    where = dict(step=step, epoch=round(epoch + p.batches_in_epoch / len(s.loader), 4))
    if step % settings.log_every == 0 or last:
        entry.update(where, **log_figures(s))
    due = settings.eval_every > 0 and step % settings.eval_every == 0 or settings.eval_every <= 0 and epoch_end
    if s.evaluate is not None and (last or due):
        entry.update(where, **{f"dev_{k}": v for k, v in run_eval(s).items() if k != "n_pairs"})
    if entry:
        p.history.append(entry)
        if s.main:
            with open(s.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
        s.accelerator.log(tracking.scalars(entry), step=step)  # main process only


def checkpoint_if_due(s: Session, epoch_end: bool, stop: "StopOnSignal") -> None:
    """A step checkpoint when due; on a signal (agreed by every process), one (if not just
    written) and Preempted."""
    settings, step = s.settings, s.progress.step
    target = s.run_dir / "checkpoints" / f"step-{step}"
    if (settings.save_every > 0 and step % settings.save_every == 0) or (settings.save_every <= 0 and epoch_end):
        read_device(s)  # a diverged run writes no checkpoint; the skip counts go into this one
        checkpoint.save_checkpoint(s.accelerator, s.to_save(), s.progress, target)
        if s.main:
            prune(s.run_dir / "checkpoints", settings.keep_last)
    if s.vote.vote(stop.received is not None):
        if not checkpoint.is_complete(target):
            read_device(s)
            checkpoint.save_checkpoint(s.accelerator, s.to_save(), s.progress, target)
        raise Preempted(
            f"Stopped by a signal after step {step}; checkpoint {target}. Resume with the same "
            f"command plus: hydra.run.dir={s.run_dir} trainer.resume=latest"
        )


def run_epochs(s: Session, bar: tqdm) -> None:
    """From the checkpoint's place (epoch, batch) to the last optimizer step."""
    p = s.progress
    s.last_tick = time.perf_counter()
    with StopOnSignal() as stop:
        for epoch in range(p.epoch, s.n_epochs):
            s.sampler.use_epoch(epoch)
            skip = p.batches_in_epoch if epoch == p.epoch else 0
            batches = s.accelerator.skip_first_batches(s.loader, skip) if skip else s.loader
            p.epoch, p.batches_in_epoch = epoch, skip
            for batch in batches:
                update(s, batch)
                count(s, batch)
                if not s.accelerator.sync_gradients:
                    continue
                p.step += 1
                time_step(s)
                bar.set_postfix(bar_figures(s), refresh=False)
                bar.update(1)
                last = p.step >= s.total_steps
                epoch_end = p.batches_in_epoch >= len(s.loader)
                log_and_evaluate(s, epoch, last, epoch_end)
                if epoch_end:
                    p.epoch, p.batches_in_epoch = epoch + 1, 0
                if last:
                    return
                checkpoint_if_due(s, epoch_end, stop)
                s.last_tick = time.perf_counter()


def bar_figures(s: Session) -> dict[str, str]:
    """The training bar's postfix: the mean loss of the last log window (the bar reads nothing
    from the device), lr, throughput."""
    figures = {"loss": f"{s.shown_loss:.4f}" if s.shown_loss is not None else "-", "lr": f"{s.scheduler.get_last_lr()[0]:.2e}"}
    if s.rate is not None:
        figures[f"{s.unit}/s"] = f"{s.rate:.1f}"
    return figures


def train(
    model: nn.Module,
    loss_fn: nn.Module,
    rows: Any,
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    sampler: Any,
    step_fn: TrainStep,
    evaluate: Callable[[nn.Module], dict[str, float]] | None,
    run_dir: Path,
    settings: TrainerConfig,
    resume_from: Path | None = None,
    accelerator: Accelerator | None = None,
    main_metric: str = "",
    unit: str = "pairs",
    desc: str = "train",
) -> LoopResult:
    """Trains `model` in place and returns where things went.

    `rows` is a map-style dataset (a list, or a memory-mapped datasets.Dataset, which the loader
    gathers a batch at a time); `sampler` yields index batches and has `use_epoch(epoch)`; `step_fn` (the task's) turns a
    collated batch into a loss. `evaluate(model)` gives dev figures; `main_metric` picks best/.
    `unit` names a row in throughput (pairs/s, images/s); `desc` labels the progress bar (the stage).
    """
    s = setup(model, loss_fn, rows, collate, sampler, step_fn, settings, run_dir, accelerator, resume_from, evaluate, main_metric, unit)
    if s.main:
        s.run_dir.mkdir(parents=True, exist_ok=True)
        # The file is the checkpoint's history: steps after it (from a killed run) are dropped.
        (s.run_dir / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in s.progress.history))
    # One bar for the run (the stage): steps with ETA, loss, lr and throughput; only the main process
    # draws. Into a log file (not a terminal) it redraws every 30 s, not every 0.1 s.
    bar = tqdm(
        total=s.total_steps, initial=s.progress.step, disable=not s.main, desc=desc, unit="step", dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 30,
    )
    started = time.perf_counter()
    s.model.train()
    # Closed on every way out (an error, a signal), so no half bar is left on the terminal. Log
    # records go out through tqdm.write meanwhile: printed above the bar, never into it.
    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            if s.progress.step < s.total_steps:
                run_epochs(s, bar)
        reading = read_device(s)
    finally:
        bar.close()
        s.vote.close()
        s.undo_routing()
    seconds = time.perf_counter() - started - s.eval_seconds  # training only: evaluation is not throughput
    checkpoint.save_model(s.accelerator, s.to_save(), s.run_dir / "final", {"step": s.progress.step, "kind": "final"})
    return loop_result(s, seconds, reading)


def loop_result(s: Session, seconds: float, reading: Reading) -> LoopResult:
    best_dir = s.run_dir / "best"
    return LoopResult(
        progress=s.progress, final_dir=s.run_dir / "final", best_dir=best_dir if best_dir.exists() else None, seconds=seconds,
        pairs=s.pairs, real_tokens=s.real_tokens, padded_tokens=s.padded_tokens, mixed_precision=s.accelerator.mixed_precision,
        skipped_steps=reading.skipped_steps, loss_scale=reading.loss_scale, tf32=s.tf32,
    )
