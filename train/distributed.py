"""Several processes (accelerate launch, torchrun): one run dir for all, a bounded wait for a dead peer."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

# A collective that waits longer than this (a peer died or hangs) fails with an error naming the
# operation instead of blocking forever. Long evaluations or checkpoints on slow disks may need more.
DEFAULT_TIMEOUT_S = 600


def collective_timeout() -> timedelta:
    return timedelta(seconds=int(os.environ.get("EMBED_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S)))


def agree_on_run_dir(args: list[str], root: str = "outputs") -> list[str]:
    """Hydra names the run dir after the clock, which differs between processes by a second or
    more: rank 0 picks the name and tells the others. Only rank 0 writes Hydra's files."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    # Without a GPU, accelerate runs several processes only when asked for the CPU (gloo).
    state = PartialState(cpu=not torch.cuda.is_available(), timeout=collective_timeout())
    if any(a.startswith(("-m", "--multirun")) for a in args):
        print("Error: Hydra multirun (-m) does not combine with several processes; launch each run on its own.", file=sys.stderr)
        raise SystemExit(2)
    if not any(a.startswith("hydra.run.dir=") for a in args):
        stamp = [time.strftime(f"{root}/%Y-%m-%d/%H-%M-%S") if state.is_main_process else None]
        broadcast_object_list(stamp)
        args = [*args, f"hydra.run.dir={stamp[0]}"]
    if not state.is_main_process:
        args = [*args, "hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return args
