"""Which mixed precision `trainer.mixed_precision=auto` means on this machine, fp16's loss scaling
on a CPU, and TF32."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger("train")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matrix products natively (not emulated, which is slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        # Private helpers, hence the guard: a torch without them gets fp32.
        checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    return False


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto` -> `bf16` where the device has native bf16, else `no`; anything else as given."""
    if requested != "auto":
        return requested
    return "bf16" if native_bf16(device) else "no"


def fp16_on_cpu(accelerator) -> None:
    """accelerate leaves fp16 on a CPU off (no autocast, no scaler) while reporting fp16. torch's
    CPU autocast computes fp16 and its GradScaler works there, so fp16 runs as it would on a GPU:
    autocast in the forward pass and dynamic loss scaling. Slow (a CPU emulates most fp16 math);
    bf16 is the CPU's half precision, fp16 here is for checking the GPU recipe."""
    from accelerate.utils import DistributedType

    if accelerator.mixed_precision != "fp16" or accelerator.device.type != "cpu" or accelerator.scaler is not None:
        return
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu")
    log.warning("trainer.mixed_precision=fp16 on a CPU: fp16 autocast with loss scaling, emulated and slow; bf16 is the CPU's half precision")


def set_tf32(enabled: bool, device: torch.device) -> bool:
    """TF32 tensor-core matmuls for fp32 work on CUDA (the fp32 parts of a mixed-precision step and
    every fp32 run): about 8x an fp32 matmul on an A100 or H100, a 10-bit mantissa on the inputs
    and fp32 accumulation. Returns whether TF32 is in effect (never on a CPU)."""
    if device.type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return enabled
