"""Several processes (accelerate launch, torchrun) and how the model is spread over them: one run
dir for all, a bounded wait for a dead peer, the stop vote, and what FSDP and DeepSpeed
(accelerate/fsdp.yaml, deepspeed_zero2.yaml) need that plain DDP does not (each of those a no-op,
or not called, under any other launcher)."""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn

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


def fsdp_on_cpu() -> None:
    # accelerate turns ACCELERATE_USE_FSDP into FSDP only for GPU-like process groups; CPU
    # processes (gloo) stay MULTI_CPU, i.e. plain DDP. PyTorch's FSDP2 itself runs on gloo.
    state = PartialState()
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.MULTI_GPU  # AcceleratorState then picks FSDP


def build_device() -> str | None:
    """Where the model is built: on the CPU under FSDP, which shards it onto the GPUs from there
    (a model larger than one GPU never is on one whole); else the library's choice."""
    return "cpu" if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" else None


def fsdp_plugin() -> FullyShardedDataParallelPlugin | None:
    """Under FSDP (the launcher's settings), weights stay fp32 in all-gathers: mixed precision is
    the autocast of the training forward alone, as without FSDP, so evaluation runs in fp32."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    fp32 = {"param_dtype": torch.float32, "reduce_dtype": torch.float32, "output_dtype": torch.float32}
    return FullyShardedDataParallelPlugin(mixed_precision_policy=fp32)


def freeze_unused_parameters(model) -> None:
    """Parameters that no loss here reaches are frozen: BERT's pooler in an embedding model (the
    pooling layer reads the token vectors, not it) and a CLIP model's own logit scale and bias
    (the loss keeps its own temperature). They would get no gradient, so DDP would have to search
    the graph for unused parameters every step (find_unused_parameters), and FSDP's optimizer
    load_state refuses a trainable parameter without AdamW state. Freezing changes nothing else:
    AdamW leaves a parameter without gradient alone. A sequence-classification head (a
    cross-encoder's) reads the pooler: then it trains."""
    classifier = any("ForSequenceClassification" in type(m).__name__ for m in model.modules())
    for name, param in model.named_parameters():
        if (".pooler." in name and not classifier) or name.split(".")[-1] in ("logit_scale", "logit_bias"):
            param.requires_grad_(False)


def check_deepspeed_settings(on_nan: str) -> None:
    """DeepSpeed steps the optimizer inside backward, before the loop sees the loss: a NaN step
    cannot be skipped, only reported (and the run stopped) after it was applied."""
    from train.errors import ConfigError

    if on_nan == "skip":
        raise ConfigError(
            "trainer.on_nan=skip does not work under DeepSpeed, which applies the update inside backward "
            "before the loss can be checked. Use trainer.on_nan=stop (the default), or another launcher config."
        )


def deepspeed_batch_size(accelerator, batch_size: int) -> None:
    """DeepSpeed reads the micro-batch size from the data loader, which has a batch sampler
    (no batch_size) here: tell it."""
    accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size


def savable_model(accelerator: Accelerator, model: nn.Module, plain: nn.Module | None) -> nn.Module:
    """The model to call `.save` on (main process). Under FSDP the parameters are shards
    (DTensors): every process joins in gathering the full weights into `plain`, a copy of the
    model made before prepare() that lives on the main process only."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return accelerator.unwrap_model(model)
    state = accelerator.get_state_dict(model)  # a collective; full fp32 tensors on the main process
    if accelerator.is_main_process:
        plain.load_state_dict(state)
    return plain
