"""What every bench recipe shares: model presets, precision, peak memory, our side's timed span."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CONF_MODELS = Path(__file__).resolve().parents[2] / "conf" / "model"


def resolve_model(model: str) -> tuple[str, str | None]:
    """(what to load, its offline package) for `--model`: a model preset of conf/model/ (minilm,
    roberta_base_random, ...; random_init presets are built into the data cache first), a Hub id or
    a local folder."""
    preset = CONF_MODELS / f"{model}.yaml"
    if "/" in model or not preset.is_file():
        return model, None
    from omegaconf import OmegaConf

    m = OmegaConf.to_container(OmegaConf.load(preset))
    if m.get("random_init"):
        from train.models.random_init import random_model_dir

        return str(random_model_dir(m["name"], m.get("offline_package"), m["random_init"])), None
    return m["name"], m.get("offline_package")


def precision(requested: str, device: str) -> str:
    import torch

    from train.engine.precision import resolve_precision

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
    from train.engine.loop import make_accelerator, train
    from train.engine.session import Workload
    from train.tasks import get_task

    task = get_task(task_name)
    started = time.perf_counter()
    rows, collate, sampler = task.training_inputs(train_split, model, spec, settings)
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(
            Workload(model, loss, rows, collate, sampler, task.train_step(spec, collate)), settings, Path(run_dir),
            accelerator=make_accelerator(settings),  # the run's own: DDP settings, fp16's scaler, the loader
        )
        return result, time.perf_counter() - started


@contextmanager
def profiled(args):
    """With --profile: torch.profiler over the block, and a summary of the top operators by device
    and by CPU time written beside --out (<out>.profile.txt). The profiler slows the run: its
    timing is not a bench figure."""
    if not getattr(args, "profile", False):
        yield
        return
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = args.device.startswith("cuda")
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities, record_shapes=True) as prof:
        yield
    if cuda:
        torch.cuda.synchronize()
    averages = prof.key_averages()
    parts = []
    for title, key in ([("by GPU time", "self_cuda_time_total")] if cuda else []) + [("by CPU time", "self_cpu_time_total")]:
        parts.append(f"## Top operators {title}\n\n" + averages.table(sort_by=key, row_limit=30))
    products = ("aten::addmm", "aten::mm", "aten::bmm")
    shapes = {tuple(map(tuple, e.input_shapes)) for e in prof.key_averages(group_by_input_shape=True) if e.key in products}
    parts.append(f"Distinct matrix-product input shapes: {len(shapes)} (every new (batch, length) shape can cost a one-time kernel choice)")
    out = Path(args.out or "bench_results/bench.json").with_suffix(".profile.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(parts) + "\n")
    print(f"wrote {out}", flush=True)


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(), "torch": torch.__version__}


def write_report(report: dict[str, Any], out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
