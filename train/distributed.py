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


class StopVote:
    """Whether any process got a stop signal, agreed without making the GPU wait: each step posts
    this process's vote (an all-reduce of one CPU number on a gloo group of its own, in the
    background) and reads the previous step's outcome, long finished by then. Every process reads
    the same outcome at the same step, one step after the signal."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.group = None
        self.pending = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self.group = dist.new_group(backend="gloo", timeout=collective_timeout())

    def vote(self, stop: bool) -> bool:
        """Posts this step's vote; returns whether any process voted to stop at the previous step."""
        if self.group is None:
            return stop
        import torch
        import torch.distributed as dist

        outcome = self._collect()
        flag = torch.tensor([1.0 if stop else 0.0])
        self.pending = (dist.all_reduce(flag, group=self.group, async_op=True), flag)
        return outcome

    def _collect(self) -> bool:
        if self.pending is None:
            return False
        work, flag = self.pending
        self.pending = None
        work.wait()
        return bool(flag.item())  # a CPU tensor: no device involved

    def close(self) -> None:
        """Waits for the vote in flight (every process posted it), so that none is left pending."""
        self._collect()


def sync_loss_parameters(params: list, accelerator) -> None:
    """The loss's own weights (the softmax classifier, CLIP's temperature) are in no prepared
    model: their gradients are averaged here, all in one flat all-reduce."""
    import torch
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = accelerator.reduce(_flatten_dense_tensors(grads), reduction="mean")
    with torch.no_grad():
        for grad, averaged in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(averaged)


def unused_parameters(model) -> list[str]:
    """Trainable parameters that got no gradient from a backward pass (host-side: no read)."""
    return [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
