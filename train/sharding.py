"""What the loop needs under FSDP and DeepSpeed (accelerate/fsdp.yaml, deepspeed_zero2.yaml)
that plain DDP does not. Each function is a no-op, or not called, under any other launcher."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn


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
