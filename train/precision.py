"""Which mixed precision `trainer.mixed_precision=auto` means on this machine."""

from __future__ import annotations

import torch


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
