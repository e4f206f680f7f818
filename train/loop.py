"""The training loop: one accelerate loop for one CPU, one GPU or many processes.

It gets plain objects (a model, a loss, tokenized rows, an evaluation function, the trainer
settings) and writes into the run dir: metrics.jsonl, checkpoints/step-N/, best/, final/.
Nothing here reads files of a dataset format or the Hydra config.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import threading
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from sentence_transformers import SentenceTransformer
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from train import checkpoint
from train.checkpoint import atomic_dir, latest_checkpoint, prune
from train.config import TrainerConfig
from train.data.batching import embed_batch
from train.sharding import check_deepspeed_settings, deepspeed_batch_size, freeze_unused_pooler, fsdp_on_cpu, fsdp_plugin, savable_model
from train.errors import Preempted, UserError
from train.evaluation import MAIN_METRIC
from train.precision import resolve_precision

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
ACCELERATE_STATE = "accelerate_state"


@dataclass
class Progress:
    """What a checkpoint needs beyond the accelerate state to continue at the next step."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already consumed (per process)
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, float] | None = None
    last_eval_step: int | None = None


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


def save_checkpoint(
    accelerator: Accelerator, model: nn.Module, progress: Progress, target: Path, plain: nn.Module | None = None
) -> None:
    """Model dir (loadable by SentenceTransformer) + accelerate state + progress, atomically."""
    main = accelerator.is_main_process
    tmp = checkpoint.temp_dir_for(target)
    accelerator.wait_for_everyone()
    if main:
        checkpoint.begin(target)
    accelerator.wait_for_everyone()
    # Every rank calls save_state: each writes its own RNG state into the shared dir.
    accelerator.save_state(str(tmp / ACCELERATE_STATE))
    to_save = savable_model(accelerator, model, plain)
    if main:
        to_save.save(str(tmp), create_model_card=False)
        (tmp / STATE_FILE).write_text(json.dumps(progress.__dict__, indent=1))
    accelerator.wait_for_everyone()
    if main:
        checkpoint.commit(tmp, target, {"step": progress.step, "kind": "checkpoint"})
    accelerator.wait_for_everyone()


def save_model(accelerator: Accelerator, model: nn.Module, target: Path, manifest: dict, plain: nn.Module | None = None) -> None:
    accelerator.wait_for_everyone()
    to_save = savable_model(accelerator, model, plain)
    if accelerator.is_main_process:
        with atomic_dir(target, manifest) as tmp:
            to_save.save(str(tmp), create_model_card=False)
    accelerator.wait_for_everyone()


def load_progress(checkpoint: Path) -> Progress:
    return Progress(**json.loads((checkpoint / STATE_FILE).read_text()))


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    if not resume:
        return None
    if resume == "latest":
        found = latest_checkpoint(run_dir / "checkpoints")
        if found is None:
            raise UserError(
                f"trainer.resume=latest: no complete checkpoint in {run_dir / 'checkpoints'}. "
                "Run with hydra.run.dir=<the run's dir> to resume that run, or give a checkpoint dir."
            )
        return found
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file() or not (path / ACCELERATE_STATE).is_dir():
        raise UserError(
            f"trainer.resume={resume}: not a complete training checkpoint (expected {STATE_FILE} and "
            f"{ACCELERATE_STATE}/ in it). Use a run's checkpoints/step-N/ dir, or trainer.resume=latest."
        )
    return path


def compute_loss(
    model: nn.Module,
    loss_fn: nn.Module,
    batch: dict[str, Any],
    from_embeddings: bool,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> torch.Tensor:
    """The batch's loss; only the model's forward pass runs under `autocast`."""
    labels = batch["labels"]
    if not from_embeddings:
        with autocast():
            return loss_fn(batch["columns"], labels)
    with autocast():
        embeddings = embed_batch(model, batch)
    # The loss in fp32: bf16's 8-bit mantissa would blur the small similarity differences it ranks.
    return loss_fn.compute_loss_from_embeddings(list(embeddings.float().chunk(batch["n_columns"])), labels)


def _token_counts(batch: dict[str, Any]) -> tuple[int, int]:
    masks = [f["attention_mask"] for f in batch.get("chunks") or batch["columns"]]
    return sum(int(m.sum()) for m in masks), sum(m.numel() for m in masks)


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


def _batch_rows(batch: dict[str, Any]) -> int:
    if batch.get("columns"):
        return batch["columns"][0]["input_ids"].shape[0]
    return sum(c["input_ids"].shape[0] for c in batch["chunks"]) // batch["n_columns"]


def _all_reduce_grads(params: list[nn.Parameter], accelerator: Accelerator) -> None:
    # For what DDP does not see: a loss's own parameters (the softmax classifier), and the model
    # itself when the loss runs it outside the DDP wrapper (GradCache, Matryoshka).
    for p in params:
        if p.grad is not None:
            p.grad = accelerator.reduce(p.grad, reduction="mean")


def train(
    model: SentenceTransformer,
    loss_fn: nn.Module,
    rows: list[dict[str, Any]],
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
    sampler: Any,
    evaluate: Callable[[SentenceTransformer], dict[str, float]] | None,
    run_dir: Path,
    settings: TrainerConfig,
    resume_from: Path | None = None,
    accelerator: Accelerator | None = None,
    from_embeddings: bool = True,
    main_metric: str = MAIN_METRIC,
) -> LoopResult:
    """Trains `model` in place and returns where things went.

    `sampler` yields index batches and has `use_epoch(epoch)`. With `from_embeddings`, the loop
    embeds all columns of a batch in one pass and calls `loss_fn.compute_loss_from_embeddings`;
    otherwise `loss_fn(per_column_features, labels)` runs the model itself.
    """
    if accelerator is None:
        # The accelerator's settings are a process-wide singleton; a Hydra sweep (one process)
        # or a multi-stage run may change mixed precision between runs. The process group stays.
        AcceleratorState._reset_state()
        fsdp_on_cpu()
        accelerator = Accelerator(
            mixed_precision=resolve_precision(settings.mixed_precision.value, PartialState().device),
            gradient_accumulation_steps=settings.grad_accum,
            # The backbone's pooler (BERT) gets no gradient from a sentence-embedding loss.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            fsdp_plugin=fsdp_plugin(),
        )
    set_seed(settings.seed)
    run_dir = Path(run_dir)
    main = accelerator.is_main_process

    loader = DataLoader(
        rows,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=settings.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        # Its own generator: creating an iterator draws a seed from it, and drawing from the global
        # RNG would shift dropout after a resume (which creates one iterator more than a plain run).
        generator=torch.Generator().manual_seed(settings.seed),
    )
    loss_params = [p for name, p in loss_fn.named_parameters() if not name.startswith("model.")]
    loss_fn.to(accelerator.device)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if fsdp:
        freeze_unused_pooler(model)
    trainable = nn.ModuleList([model, *([loss_fn] if loss_params else [])])
    # Fused AdamW: one kernel for all parameters; on this 2-core CPU it cut the step from 40 to 9 ms.
    optimizer = build_optimizer(
        model, settings.lr, settings.weight_decay, fused=accelerator.device.type in ("cpu", "cuda"), extra=loss_params
    )
    plain = copy.deepcopy(model) if fsdp and main else None  # what final/, best/ and checkpoints save
    if deepspeed:
        check_deepspeed_settings(settings.on_nan.value)
        deepspeed_batch_size(accelerator, settings.batch_size)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # prepare() makes the model's forward autocast; undo that (in place) so that evaluation and
    # saved models stay fp32, and autocast only the training forward pass (compute_loss).
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    precision = accelerator.mixed_precision
    log.info("Mixed precision: %s", precision)
    # Gradients that DDP does not average for us (see _all_reduce_grads).
    manual_sync = (loss_params if from_embeddings else list(trainable.parameters())) if accelerator.num_processes > 1 else []

    updates_per_epoch = max(1, math.ceil(len(loader) / settings.grad_accum))
    total_steps = settings.max_steps if settings.max_steps > 0 else settings.epochs * updates_per_epoch
    n_epochs = math.ceil(total_steps / updates_per_epoch)
    warmup = int(settings.warmup_ratio * total_steps)
    # A prepared scheduler steps once per process per update, hence the scaling; under DeepSpeed
    # prepare() leaves it as it is, and it steps once per update.
    per_update = 1 if deepspeed else accelerator.num_processes
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup * per_update, total_steps * per_update)
    scheduler = accelerator.prepare(scheduler)
    if deepspeed:
        accelerator.register_for_checkpointing(scheduler)  # not prepared, so save_state would skip it

    progress = Progress()
    if resume_from is not None:
        accelerator.load_state(str(resume_from / ACCELERATE_STATE))
        progress = load_progress(resume_from)
        log.info("Resumed from %s at step %d (epoch %d, batch %d)", resume_from, progress.step, progress.epoch, progress.batches_in_epoch)

    metrics_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # The file is the checkpoint's history: steps after it (from a killed run) are dropped.
        metrics_path.write_text("".join(json.dumps(h) + "\n" for h in progress.history))

    def record(entry: dict[str, Any]) -> None:
        progress.history.append(entry)
        if main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    best_dir = run_dir / "best"

    eval_seconds = 0.0

    def run_eval() -> dict[str, float]:
        nonlocal eval_seconds
        assert evaluate is not None
        eval_started = time.perf_counter()
        metrics = evaluate(accelerator.unwrap_model(model))
        progress.last_eval, progress.last_eval_step = metrics, progress.step
        score = metrics[main_metric]
        if progress.best_metric is None or score > progress.best_metric:
            progress.best_metric, progress.best_step = score, progress.step
            save_model(accelerator, model, best_dir, {"step": progress.step, main_metric: score, "kind": "best"}, plain)
        eval_seconds += time.perf_counter() - eval_started
        return metrics

    bar = tqdm(total=total_steps, initial=progress.step, disable=not main, desc="train", dynamic_ncols=True)
    running_loss, running_n = 0.0, 0
    pairs = real_tokens = padded_tokens = 0
    started = time.perf_counter()
    model.train()
    done = progress.step >= total_steps
    # Closed on every way out (an error, a signal), so no half bar is left on the terminal.
    try:
        with StopOnSignal() as stop:
            for epoch in range(progress.epoch, n_epochs):
                if done:
                    break
                sampler.use_epoch(epoch)
                skip = progress.batches_in_epoch if epoch == progress.epoch else 0
                batches = accelerator.skip_first_batches(loader, skip) if skip else loader
                progress.epoch, progress.batches_in_epoch = epoch, skip
                for batch in batches:
                    with accelerator.accumulate(model):
                        try:
                            loss = compute_loss(model, loss_fn, batch, from_embeddings, accelerator.autocast)
                            accelerator.backward(loss)
                        except torch.OutOfMemoryError:
                            raise UserError(_oom_message(settings)) from None
                        finite = bool(torch.isfinite(loss.detach()))
                        if accelerator.sync_gradients:
                            if manual_sync:
                                _all_reduce_grads(manual_sync, accelerator)
                            norm = accelerator.clip_grad_norm_(
                                [*model.parameters(), *loss_params],
                                settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf"),
                            )
                            # DeepSpeed: a float (or None), of the step accelerator.backward has already taken.
                            finite = _all_agree(finite and (norm is None or math.isfinite(float(norm))), accelerator)
                            if not finite:
                                if settings.on_nan.value == "stop":
                                    raise UserError(_nan_message(progress.step + 1, loss, run_dir))
                                log.warning("step %d: loss or gradient is not finite; step skipped (trainer.on_nan=skip)", progress.step + 1)
                            else:
                                optimizer.step()
                            scheduler.step()
                            optimizer.zero_grad(set_to_none=True)
                    progress.batches_in_epoch += 1
                    if finite:
                        running_loss += loss.detach().float().item()
                        running_n += 1
                    pairs += len(batch["labels"]) if batch["labels"] is not None else _batch_rows(batch)
                    real, padded = _token_counts(batch)
                    real_tokens += real
                    padded_tokens += padded
                    if not accelerator.sync_gradients:
                        continue

                    progress.step += 1
                    step = progress.step
                    lr = scheduler.get_last_lr()[0]
                    bar.update(1)
                    bar.set_postfix(loss=f"{running_loss / max(running_n, 1):.4f}", lr=f"{lr:.2e}")
                    last = step >= total_steps
                    epoch_end = progress.batches_in_epoch >= len(loader)
                    entry: dict[str, Any] = {}
                    if step % settings.log_every == 0 or last:
                        # The mean over processes: each rank's loss covers only its own share of the batch.
                        mean_loss = accelerator.reduce(torch.tensor(running_loss / max(running_n, 1), device=accelerator.device), "mean").item()
                        entry.update(step=step, epoch=round(epoch + progress.batches_in_epoch / len(loader), 4),
                                     loss=mean_loss, lr=lr)
                        running_loss, running_n = 0.0, 0
                    if evaluate is not None and (
                        last or (settings.eval_every > 0 and step % settings.eval_every == 0)
                        or (settings.eval_every <= 0 and epoch_end)
                    ):
                        metrics = run_eval()
                        entry.update(step=step, epoch=round(epoch + progress.batches_in_epoch / len(loader), 4))
                        entry.update({f"dev_{k}": v for k, v in metrics.items() if k != "n_pairs"})
                    if entry:
                        record(entry)
                    if epoch_end:
                        progress.epoch, progress.batches_in_epoch = epoch + 1, 0
                    if not last and (
                        (settings.save_every > 0 and step % settings.save_every == 0) or (settings.save_every <= 0 and epoch_end)
                    ):
                        save_checkpoint(accelerator, model, progress, run_dir / "checkpoints" / f"step-{step}", plain)
                        if main:
                            prune(run_dir / "checkpoints", settings.keep_last)
                    if not last and not _all_agree(stop.received is None, accelerator):
                        target = run_dir / "checkpoints" / f"step-{step}"
                        if not checkpoint.is_complete(target):
                            save_checkpoint(accelerator, model, progress, target, plain)
                        raise Preempted(
                            f"Stopped by a signal after step {step}; checkpoint {target}. Resume with the same "
                            f"command plus: hydra.run.dir={run_dir} trainer.resume=latest"
                        )
                    if last:
                        done = True
                        break
    finally:
        bar.close()
    seconds = time.perf_counter() - started - eval_seconds  # training only: evaluation is not throughput

    final_dir = run_dir / "final"
    save_model(accelerator, model, final_dir, {"step": progress.step, "kind": "final"}, plain)
    return LoopResult(
        progress=progress,
        final_dir=final_dir,
        best_dir=best_dir if best_dir.exists() else None,
        seconds=seconds,
        pairs=pairs,
        real_tokens=real_tokens,
        padded_tokens=padded_tokens,
        mixed_precision=precision,
    )


def clear_run_outputs(run_dir: Path) -> None:
    """Removes a previous run's results (trainer.overwrite=true)."""
    for name in ("final", "best", "checkpoints"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("eval.json", "metrics.jsonl"):
        (run_dir / name).unlink(missing_ok=True)
