"""The training loop: one accelerate loop for one CPU, one GPU or many processes.

It gets plain objects (a model, a loss, tokenized rows, a task's `TrainStep`, an evaluation
function, the trainer settings) and writes into the run dir: metrics.jsonl, checkpoints/step-N/,
best/, final/; what it writes to metrics.jsonl also goes to the accelerator's trackers, if any
(train/tracking.py). Nothing here knows a batch layout, reads files of a dataset format or the config.
Read `train` first: it calls the rest top-down.
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
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import get_linear_schedule_with_warmup

from train import checkpoint, tracking
from train.checkpoint import ACCELERATE_STATE, Progress, latest_checkpoint, load_progress, prune
from train.config import TrainerConfig
from train.errors import Preempted, UserError
from train.precision import resolve_precision
from train.sharding import check_deepspeed_settings, deepspeed_batch_size, freeze_unused_pooler, fsdp_on_cpu, fsdp_plugin, savable_model
from train.tasks.base import TrainStep

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


def _all_agree(ok: bool, accelerator: Accelerator) -> bool:
    """True only if every process says so (one NaN anywhere stops or skips the step everywhere)."""
    if accelerator.num_processes == 1:
        return ok
    flag = torch.tensor(0.0 if ok else 1.0, device=accelerator.device)
    return accelerator.reduce(flag, "sum").item() == 0


def _nan_message(step: int, loss: torch.Tensor, run_dir: Path) -> str:
    last = latest_checkpoint(run_dir / "checkpoints")
    return (
        f"Training diverged at step {step}: the loss ({loss.item()}) or its gradient is not finite. "
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


def _all_reduce_grads(params: list[nn.Parameter], accelerator: Accelerator) -> None:
    # For what DDP does not see: a loss's own parameters (the softmax classifier), and the model
    # itself when the loss runs it outside the DDP wrapper (GradCache, Matryoshka).
    for p in params:
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad, reduction="mean")




def compute_loss(
    step: TrainStep, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any], autocast: Callable[[], AbstractContextManager]
) -> torch.Tensor:
    """The batch's loss, as the task computes it (a seam for tests that plant a NaN)."""
    return step.loss(model, loss_fn, batch, autocast)


def make_accelerator(settings: TrainerConfig, log_with: list | None = None) -> Accelerator:
    # The accelerator's settings are a process-wide singleton; a Hydra sweep (one process)
    # or a multi-stage run may change mixed precision between runs. The process group stays.
    # `log_with`: trackers (train/tracking.py `build`); run.py opens and closes them.
    AcceleratorState._reset_state()
    fsdp_on_cpu()
    return Accelerator(
        mixed_precision=resolve_precision(settings.mixed_precision.value, PartialState().device),
        gradient_accumulation_steps=settings.grad_accum,
        # The backbone's pooler (BERT) gets no gradient from a sentence-embedding loss.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        fsdp_plugin=fsdp_plugin(),
        log_with=log_with or None,
    )


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
    plain: nn.Module | None  # FSDP: an unsharded copy that checkpoints and final/ save
    loss_params: list[nn.Parameter]
    manual_sync: list[nn.Parameter]
    total_steps: int
    n_epochs: int
    progress: Progress
    evaluate: Callable[[nn.Module], dict[str, float]] | None
    main_metric: str
    unit: str = "pairs"  # what a training row is: throughput is <unit>/s
    pairs: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    running_loss: float = 0.0
    running_n: int = 0
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

    def to_save(self) -> nn.Module:
        return savable_model(self.accelerator, self.model, self.plain)


def _make_loader(rows: Any, sampler: Any, collate: Callable, settings: TrainerConfig, device: torch.device) -> DataLoader:
    return DataLoader(
        rows,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=settings.num_workers,
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
    loader = _make_loader(rows, sampler, collate, settings, accelerator.device)
    loss_params = [p for name, p in loss_fn.named_parameters() if not name.startswith("model.")]
    loss_fn.to(accelerator.device)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if fsdp:
        freeze_unused_pooler(model)
    # Fused AdamW: one kernel for all parameters; on this 2-core CPU it cut the step from 40 to 9 ms.
    optimizer = build_optimizer(
        model, settings.lr, settings.weight_decay, fused=accelerator.device.type in ("cpu", "cuda"), extra=loss_params
    )
    plain = copy.deepcopy(model) if fsdp and accelerator.is_main_process else None
    if deepspeed:
        check_deepspeed_settings(settings.on_nan.value)
        deepspeed_batch_size(accelerator, settings.batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # prepare() makes the model's forward autocast; undo that (in place) so that evaluation and
    # saved models stay fp32, and autocast only the training forward pass (compute_loss).
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    log.info("Mixed precision: %s", accelerator.mixed_precision)
    # Gradients that DDP does not average for us (see _all_reduce_grads).
    own = [*loss_fn.parameters()] if step_fn.runs_model_itself else loss_params
    manual_sync = own if accelerator.num_processes > 1 else []
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
    return Session(
        accelerator, model, loss_fn, optimizer, scheduler, loader, sampler, step_fn, settings, Path(run_dir), plain,
        loss_params, manual_sync, total_steps, n_epochs, progress, evaluate, main_metric, unit,
    )


def update(s: Session, batch: dict[str, Any]) -> tuple[torch.Tensor, bool]:
    """Forward and backward of one batch, and the optimizer step when the accumulation is full.
    Returns the loss and whether it (and the gradient) was finite."""
    accelerator, settings = s.accelerator, s.settings
    with accelerator.accumulate(s.model):
        try:
            loss = compute_loss(s.step_fn, s.model, s.loss_fn, batch, accelerator.autocast)
            accelerator.backward(loss)
        except torch.OutOfMemoryError:
            raise UserError(_oom_message(settings)) from None
        finite = bool(torch.isfinite(loss.detach()))
        if accelerator.sync_gradients:
            if s.manual_sync:
                _all_reduce_grads(s.manual_sync, accelerator)
            norm = accelerator.clip_grad_norm_(
                [*s.model.parameters(), *s.loss_params],
                settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf"),
            )
            # DeepSpeed: a float (or None), of the step accelerator.backward has already taken.
            finite = _all_agree(finite and (norm is None or math.isfinite(float(norm))), accelerator)
            if not finite:
                if settings.on_nan.value == "stop":
                    raise UserError(_nan_message(s.progress.step + 1, loss, s.run_dir))
                log.warning("step %d: loss or gradient is not finite; step skipped (trainer.on_nan=skip)", s.progress.step + 1)
            else:
                s.optimizer.step()
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
    return loss, finite


def count(s: Session, batch: dict[str, Any], loss: torch.Tensor, finite: bool) -> None:
    s.progress.batches_in_epoch += 1
    if finite:
        s.running_loss += loss.detach().float().item()
        s.running_n += 1
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


def run_eval(s: Session) -> dict[str, float]:
    """Dev figures of the model now; a new best is saved to best/."""
    started = time.perf_counter()
    metrics = s.evaluate(s.accelerator.unwrap_model(s.model))
    p = s.progress
    p.last_eval, p.last_eval_step = metrics, p.step
    score = metrics[s.main_metric]
    if p.best_metric is None or score > p.best_metric:
        p.best_metric, p.best_step = score, p.step
        checkpoint.save_model(s.accelerator, s.to_save(), s.run_dir / "best", {"step": p.step, s.main_metric: score, "kind": "best"})
    s.eval_seconds += time.perf_counter() - started
    return metrics


def log_and_evaluate(s: Session, epoch: int, last: bool, epoch_end: bool) -> None:
    """After an optimizer step: the metrics.jsonl line (mean loss, lr, throughput) and dev figures
    when due, also sent to the trackers."""
    settings, p, step = s.settings, s.progress, s.progress.step
    entry: dict[str, Any] = {}
    where = dict(step=step, epoch=round(epoch + p.batches_in_epoch / len(s.loader), 4))
    if step % settings.log_every == 0 or last:
        # The mean over processes: each rank's loss covers only its own share of the batch.
        local = torch.tensor(s.running_loss / max(s.running_n, 1), device=s.accelerator.device)
        entry.update(where, loss=s.accelerator.reduce(local, "mean").item(), lr=s.scheduler.get_last_lr()[0])
        if s.window_seconds > 0:
            entry[f"{s.unit}_per_second"] = round(s.window_rows / s.window_seconds, 2)
        s.running_loss, s.running_n = 0.0, 0
        s.window_rows, s.window_seconds = 0, 0.0
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
    """A step checkpoint when due; on a signal, one (if not just written) and Preempted."""
    settings, step = s.settings, s.progress.step
    target = s.run_dir / "checkpoints" / f"step-{step}"
    if (settings.save_every > 0 and step % settings.save_every == 0) or (settings.save_every <= 0 and epoch_end):
        checkpoint.save_checkpoint(s.accelerator, s.to_save(), s.progress, target)
        if s.main:
            prune(s.run_dir / "checkpoints", settings.keep_last)
    if not _all_agree(stop.received is None, s.accelerator):
        if not checkpoint.is_complete(target):
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
                loss, finite = update(s, batch)
                count(s, batch, loss, finite)
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
    """The training bar's postfix: mean loss since the last log line, lr, throughput."""
    figures = {"loss": f"{s.running_loss / max(s.running_n, 1):.4f}", "lr": f"{s.scheduler.get_last_lr()[0]:.2e}"}
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
    finally:
        bar.close()
    seconds = time.perf_counter() - started - s.eval_seconds  # training only: evaluation is not throughput
    final_dir = s.run_dir / "final"
    checkpoint.save_model(s.accelerator, s.to_save(), final_dir, {"step": s.progress.step, "kind": "final"})
    best_dir = s.run_dir / "best"
    return LoopResult(
        progress=s.progress,
        final_dir=final_dir,
        best_dir=best_dir if best_dir.exists() else None,
        seconds=seconds,
        pairs=s.pairs,
        real_tokens=s.real_tokens,
        padded_tokens=s.padded_tokens,
        mixed_precision=s.accelerator.mixed_precision,
    )
