"""The training loop: one accelerate loop for one CPU, one GPU or many processes.

It gets plain objects (a `Workload`: model, loss, tokenized rows, collator, sampler and the
task's `TrainStep`; a `DevEvaluation`; the trainer settings) and writes into the run dir:
metrics.jsonl, checkpoints/step-N/, best/, final/; what it writes to metrics.jsonl also goes to
the accelerator's trackers, if any (train/engine/tracking.py). Nothing here knows a batch layout,
reads files of a dataset format or the config. Read `train` first: it calls the rest top-down;
train/engine/setup.py builds what it starts from.

A step reads nothing back from the device (train/engine/device_stats.py): what it counts is read at log lines,
evaluations and checkpoints. The model a step calls is the prepared one, DDP's wrapper
under several processes, for the loop and for losses that run the model themselves alike, its
forward pass under autocast and its outputs in fp32 (train/engine/step_model.py).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from train.engine import checkpoint, tracking
from train.engine.checkpoint import latest_checkpoint, prune
from train.engine.device_stats import Reading
from train.engine.parallel import sync_loss_parameters, unused_parameters
from train.engine.session import DevEvaluation, LoopResult, Session, Workload
from train.engine.settings import TrainerConfig
from train.engine.setup import build_optimizer, make_accelerator, setup  # noqa: F401 (the loop's entry points, for callers)
from train.engine.signals import StopOnSignal
from train.engine.step_model import OUTPUT_KEYS, training_forward
from train.engine.task_step import TrainStep
from train.errors import Preempted, UserError

log = logging.getLogger(__name__)


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


def compute_loss(step: TrainStep, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """The batch's loss, as the task computes it (a seam for tests that plant a NaN)."""
    return step.loss(model, loss_fn, batch)


def update(s: Session, batch: dict[str, Any]) -> torch.Tensor:
    """Forward and backward of one batch, and the optimizer step when the accumulation is full.
    Nothing is read back from the device (train/engine/device_stats.py)."""
    accelerator = s.accelerator
    with accelerator.accumulate(s.model):
        # The forward passes in autocast, outputs and loss in fp32, also GradCache's replay in backward.
        with training_forward(s.model, accelerator.autocast, s.step_fn.forward_contexts(s.model, batch), s.prep.helpers,
                              getattr(s.step_fn, "fp32_outputs", OUTPUT_KEYS)):
            try:
                loss = compute_loss(s.step_fn, s.model, s.prep.loss_fn, batch)
                accelerator.backward(loss)
            except torch.OutOfMemoryError:
                raise UserError(_oom_message(s.settings)) from None
        s.stats.add_loss(loss, s.step_fn.stats(batch).group)
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
    if s.prep.sync_loss_params:
        sync_loss_parameters(s.prep.loss_params, s.accelerator)
    norm = s.accelerator.clip_grad_norm_(s.prep.trainable, settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf"))
    applied = s.stats.optimizer_step(s.prep.optimizer, norm, s.progress.step + 1, s.scaler)
    if applied is False and s.scaler is None and settings.on_nan.value == "stop":  # decided on the host (DeepSpeed)
        raise UserError(_nan_message(s.progress.step + 1, s.progress.step + 1, s.run_dir))
    s.scheduler.step()
    s.prep.optimizer.zero_grad(set_to_none=True)


def count(s: Session, batch: dict[str, Any]) -> None:
    """The batch's rows and tokens, from what the collator counted (no device value is read)."""
    s.progress.batches_in_epoch += 1
    s.meter.count(s.step_fn.stats(batch))


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
    metrics = s.dev.evaluate(s.accelerator.unwrap_model(s.model))
    p = s.progress
    p.last_eval, p.last_eval_step = metrics, p.step
    score = metrics[s.dev.main_metric]
    if p.best_metric is None or score > p.best_metric:
        p.best_metric, p.best_step = score, p.step
        checkpoint.save_model(s.accelerator, s.to_save(), s.run_dir / "best", {"step": p.step, s.dev.main_metric: score, "kind": "best"})
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
    entry.update(group_losses(s, reading))
    rate = s.meter.take_window()
    if rate is not None:
        entry[f"{s.unit}_per_second"] = rate
    if reading.skipped_steps or reading.loss_scale is not None:
        entry["skipped_steps"] = reading.skipped_steps
    if reading.loss_scale is not None:
        entry["loss_scale"] = reading.loss_scale
    return entry


def group_losses(s: Session, reading: Reading) -> dict[str, float]:
    """loss_<name>: each group's (a mixture dataset's) mean loss since the last log line, for the
    groups that trained since."""
    before_sums, before_counts = s.logged_groups
    out = {}
    for i, name in enumerate(s.groups):
        total = reading.group_sums[i] - (before_sums[i] if before_sums else 0.0)
        n = reading.group_counts[i] - (before_counts[i] if before_counts else 0.0)
        if n:
            out[f"loss_{name}"] = total / n
    s.logged_groups = (reading.group_sums, reading.group_counts)
    return out


def log_and_evaluate(s: Session, epoch: int, last: bool, epoch_end: bool) -> None:
    """After an optimizer step: the metrics.jsonl line and dev figures when due, also sent to the
    trackers. Only these steps read figures back from the device."""
    settings, p, step = s.settings, s.progress, s.progress.step
    entry: dict[str, Any] = {}
    where = dict(step=step, epoch=round(epoch + p.batches_in_epoch / len(s.loader), 4))
    if step % settings.log_every == 0 or last:
        entry.update(where, **log_figures(s))
    due = settings.eval_every > 0 and step % settings.eval_every == 0 or settings.eval_every <= 0 and epoch_end
    if s.dev is not None and (last or due):
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
    s.meter.last_tick = time.perf_counter()
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
                s.meter.step_done(s.accelerator.num_processes)
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
                s.meter.last_tick = time.perf_counter()


def bar_figures(s: Session) -> dict[str, str]:
    """The training bar's postfix: the mean loss of the last log window (the bar reads nothing
    from the device), lr, throughput."""
    figures = {"loss": f"{s.shown_loss:.4f}" if s.shown_loss is not None else "-", "lr": f"{s.scheduler.get_last_lr()[0]:.2e}"}
    if s.meter.rate is not None:
        figures[f"{s.unit}/s"] = f"{s.meter.rate:.1f}"
    return figures


def train(
    work: Workload,
    settings: TrainerConfig,
    run_dir: Path,
    dev: DevEvaluation | None = None,
    resume_from: Path | None = None,
    accelerator: Accelerator | None = None,
    unit: str = "pairs",
    desc: str = "train",
) -> LoopResult:
    """Trains `work.model` in place and returns where things went.

    `dev` scores the model on dev data (and picks best/); `unit` names a row in throughput
    (pairs/s, images/s); `desc` labels the progress bar (the stage).
    """
    s = setup(work, settings, run_dir, accelerator, resume_from, dev, unit)
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
        s.prep.undo_routing()
    seconds = time.perf_counter() - started - s.eval_seconds  # training only: evaluation is not throughput
    checkpoint.save_model(s.accelerator, s.to_save(), s.run_dir / "final", {"step": s.progress.step, "kind": "final"})
    return loop_result(s, seconds, reading)


def loop_result(s: Session, seconds: float, reading: Reading) -> LoopResult:
    best_dir = s.run_dir / "best"
    return LoopResult(
        progress=s.progress, final_dir=s.run_dir / "final", best_dir=best_dir if best_dir.exists() else None, seconds=seconds,
        pairs=s.meter.pairs, real_tokens=s.meter.real_tokens, padded_tokens=s.meter.padded_tokens, mixed_precision=s.accelerator.mixed_precision,
        skipped_steps=reading.skipped_steps, loss_scale=reading.loss_scale, tf32=s.tf32,
    )
