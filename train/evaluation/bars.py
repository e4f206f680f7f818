"""Progress a person can read: evaluation bars on long dev/test sets.

The training bar is the loop's own (train/engine/loop.py: one bar a stage, steps with ETA, loss, lr and
<unit>/s). An evaluation gets a bar only when it is long (more than LONG_EVAL items), so that
the small dev sets of tests and quick runs stay quiet, and only on the main process. Its bar
goes away when done (leave=False): the training bar stays the one line on the terminal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from accelerate import PartialState
from tqdm.auto import tqdm

T = TypeVar("T")
LONG_EVAL = 2000
log = logging.getLogger("train")


def long_eval(n_items: int) -> bool:
    """Whether an evaluation over `n_items` shows a bar (a long one, on the main process)."""
    return n_items > LONG_EVAL and PartialState().is_main_process


def eval_bar(iterable: Iterable[T], total: int, desc: str, show: bool, unit: str = "batch") -> Iterable[T]:
    """`iterable`, with a transient bar when `show`."""
    if not show:
        return iterable
    bar: Any = tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
    return bar


class ProgressLog:
    """One log line, `<what>: <done> of <total> <unit>, <s> s`, at most every `seconds`: for the
    hour-long loops (embedding a million passages, mining or searching 100k queries) that have no bar."""

    def __init__(self, what: str, total: int, unit: str, seconds: float = 30.0) -> None:
        self.what, self.total, self.unit, self.seconds = what, total, unit, seconds
        self.clock = time.perf_counter
        self.started = self.last = self.clock()

    def __call__(self, done: int) -> None:
        now = self.clock()
        if now - self.last > self.seconds:
            self.last = now
            log.info("%s: %s of %s %s, %.0f s", self.what, f"{done:,}", f"{self.total:,}", self.unit, now - self.started)
