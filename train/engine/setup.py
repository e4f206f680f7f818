"""Everything the loop needs before its first step: the accelerator, the optimizer, the loader, the
schedule, and a checkpoint loaded when resuming, gathered into a `Session`."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType, set_seed
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from train.engine.checkpoint import ACCELERATE_STATE, Progress, load_progress
from train.errors import ConfigError
from train.engine.device_stats import DeviceStats, Reading, skips_on_device
from train.engine.parallel import (
    StopVote, check_deepspeed_settings, deepspeed_batch_size, freeze_unused_parameters, fsdp_on_cpu, fsdp_plugin,
)
from train.engine.precision import fp16_on_cpu, resolve_precision, set_tf32
from train.engine.session import DevEvaluation, Prepared, Session, Workload
from train.engine.settings import TrainerConfig
from train.engine.step_model import compile_backbones, frozen_helpers, route_loss_through

log = logging.getLogger("train.engine.loop")


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


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, fused: bool = False, extra: list[nn.Parameter] = (),
    lr_mapping: dict[str, float] | None = None,
) -> torch.optim.Optimizer:
    """AdamW. No weight decay on biases and LayerNorm weights, as in BERT's recipe. `lr_mapping`:
    pattern (a regular expression, searched in a parameter's name and the class names of the
    modules that hold it: "SparseStaticEmbedding", "predictions") -> its own peak learning rate,
    the first pattern that matches winning (the library's learning_rate_mapping)."""
    import re

    mapping = [(re.compile(pattern), rate) for pattern, rate in (lr_mapping or {}).items()]
    modules = dict(model.named_modules()) if mapping else {}

    def described(name: str) -> str:
        path = name.split(".")[:-1]
        return " ".join([name, *(type(modules[".".join(path[:i])]).__name__ for i in range(1, len(path) + 1) if ".".join(path[:i]) in modules)])

    # The two groups of old (decay, then no decay) come first, so that a checkpoint's optimizer state loads.
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {(lr, True): [], (lr, False): list(extra)}
    hits = dict.fromkeys(lr_mapping or {}, 0)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        rate, text = lr, described(name) if mapping else name
        for pattern, mapped in mapping:
            if pattern.search(text):
                rate, hits[pattern.pattern] = mapped, hits[pattern.pattern] + 1
                break
        decays = not (param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name)
        groups.setdefault((rate, decays), []).append(param)
    unmatched = [p for p, n in hits.items() if n == 0]
    if unmatched:
        names = [n for n, _ in model.named_parameters()]
        raise ConfigError(f"trainer.lr_mapping: {', '.join(map(repr, unmatched))} matches no trainable parameter "
                          f"(their names look like {names[0]!r}, {names[-1]!r}).")
    for pattern, n in hits.items():
        log.info("trainer.lr_mapping: %d parameter tensors at lr %g (%r)", n, lr_mapping[pattern], pattern)
    return torch.optim.AdamW([{"params": params, "lr": rate, "weight_decay": weight_decay if decays else 0.0}
                              for (rate, decays), params in groups.items()], lr=lr, fused=fused or None)


def loader_workers(setting: int | None, device: torch.device) -> int:
    """trainer.num_workers; null: on CUDA worker processes that collate the next batches while the
    GPU trains (up to 4 a process, from the cores there are), on a CPU none (the cores train)."""
    if setting is not None:
        return setting
    if device.type != "cuda":
        return 0
    per_process = (os.cpu_count() or 1) // max(int(os.environ.get("LOCAL_WORLD_SIZE", 1)), 1)
    return max(1, min(4, per_process - 1))


def make_loader(rows: Any, sampler: Any, collate: Callable, settings: TrainerConfig, device: torch.device) -> DataLoader:
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


def schedule(accelerator: Accelerator, optimizer: torch.optim.Optimizer, n_batches: int, settings: TrainerConfig, deepspeed: bool):
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


class LossWeights:
    """A loss's own parameters (not its model's) as a checkpointable object."""

    def __init__(self, loss_fn: nn.Module, params: list[nn.Parameter]) -> None:
        wanted = {id(p) for p in params}
        self.params = {n: p for n, p in loss_fn.named_parameters() if id(p) in wanted}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.params.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])


def prepare(work: Workload, settings: TrainerConfig, accelerator: Accelerator) -> tuple[Prepared, bool]:
    """Model, optimizer and loader through accelerate.prepare; (what it gave, whether under DeepSpeed)."""
    model, loss_fn = work.model, work.loss_fn
    loader = make_loader(work.rows, work.sampler, work.collate, settings, accelerator.device)
    in_model = {id(p) for p in model.parameters()}
    # The loss's own trainable weights; a frozen model it holds (GIST's guide) is neither trained,
    # checkpointed nor averaged across processes: it only moves to the device with the loss.
    loss_params = [p for p in loss_fn.parameters() if id(p) not in in_model and p.requires_grad]
    loss_fn.to(accelerator.device)
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    freeze_unused_parameters(model)
    if settings.compile:
        log.info("torch.compile: %d backbone(s), dynamic shapes (the first steps compile)", compile_backbones(model))
    # Fused AdamW: one kernel for all parameters (on this 2-core CPU it cut the step from 40 to 9
    # ms), and the one that can skip a step on the device (train/engine/device_stats.py).
    optimizer = build_optimizer(
        model, settings.lr, settings.weight_decay, fused=accelerator.device.type in ("cpu", "cuda"), extra=loss_params,
        lr_mapping=dict(settings.lr_mapping),
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
    if loss_params:
        # The loss's own weights (the softmax classifier, CLIP's temperature) are in no prepared
        # model: without this, a resumed run would restart them from their initial values.
        accelerator.register_for_checkpointing(LossWeights(loss_fn, loss_params))
    trainable = [p for p in (*prepared.parameters(), *loss_params) if p.requires_grad]
    sync = bool(loss_params) and accelerator.num_processes > 1 and not deepspeed
    helpers = frozen_helpers(loss_fn, model)
    undo = route_loss_through(loss_fn, prepared, model)
    return Prepared(accelerator, prepared, loss_fn, optimizer, None, loader, plain, loss_params, sync, trainable, undo, helpers), deepspeed


def setup(
    work: Workload, settings: TrainerConfig, run_dir: Path, accelerator: Accelerator | None = None,
    resume_from: Path | None = None, dev: DevEvaluation | None = None, unit: str = "pairs",
) -> Session:
    """Prepares model, optimizer, loader and schedule with accelerate, and loads a checkpoint."""
    accelerator = accelerator or make_accelerator(settings)
    set_seed(settings.seed)
    tf32 = set_tf32(settings.tf32, accelerator.device)
    prep, deepspeed = prepare(work, settings, accelerator)
    log.info("Mixed precision: %s%s", accelerator.mixed_precision, "; TF32 matmuls" if tf32 else "")
    prep.scheduler, total_steps, n_epochs = schedule(accelerator, prep.optimizer, len(prep.loader), settings, deepspeed)
    progress = Progress()
    if resume_from is not None:
        accelerator.load_state(str(resume_from / ACCELERATE_STATE))
        progress = load_progress(resume_from)
        log.info("Resumed from %s at step %d (epoch %d, batch %d)", resume_from, progress.step, progress.epoch, progress.batches_in_epoch)
    on_device = skips_on_device(prep.optimizer) and not deepspeed
    stats = DeviceStats(accelerator.device, on_device, progress.skipped_steps, progress.nonfinite_losses, len(work.groups))
    return Session(
        prep=prep, sampler=work.sampler, step_fn=work.step_fn, settings=settings, run_dir=Path(run_dir), progress=progress,
        dev=dev, stats=stats, vote=StopVote(), total_steps=total_steps, n_epochs=n_epochs, tf32=tf32, unit=unit, groups=work.groups,
        last_read=Reading(0.0, 0.0, progress.nonfinite_losses, progress.skipped_steps, None, None),
    )
