"""Counting reads of tensor values back to the host (what makes a GPU's queue drain) during the
training loop's steps, each attributed to the code that made it: this project's or a library's."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

import train

PROJECT = str(Path(train.__file__).resolve().parent)
# What hands a tensor's value to Python: on CUDA each waits for the device to finish.
READS = {
    torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
    torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
}
SKIP = (str(Path(torch.__file__).resolve().parent), "<frozen", "contextlib.py", "functools.py")


def caller() -> str:
    """file:line of the first frame outside torch (and the standard library's wrappers)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(SKIP) and name != __file__:
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


class CountReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads[f"{getattr(func, '__name__', func)} at {caller()}"] += 1
        return func(*args, **(kwargs or {}))

    def ours(self) -> Counter[str]:
        return Counter({k: v for k, v in self.reads.items() if PROJECT in k})

    def libraries(self) -> Counter[str]:
        return Counter({k: v for k, v in self.reads.items() if PROJECT not in k})


def count_step_reads(monkeypatch, run_training) -> tuple[CountReads, int]:
    """Runs `run_training()` with reads counted inside the loop's per-step work (update: forward,
    backward, optimizer step; count: the batch statistics), not in log, eval or checkpoint steps.
    Returns the counter and the number of steps counted."""
    import train.engine.loop as loop

    mode = CountReads()
    steps = {"n": 0}
    real_update, real_count = loop.update, loop.count

    def update(s, batch):
        with mode:
            return real_update(s, batch)

    def count(s, batch):
        steps["n"] += 1
        with mode:
            return real_count(s, batch)

    monkeypatch.setattr(loop, "update", update)
    monkeypatch.setattr(loop, "count", count)
    run_training()
    return mode, steps["n"]
