"""Model FLOPs of training a transformer encoder, and model FLOPs utilisation (MFU).

Counted as in the PaLM paper (appendix B): a token costs 6 FLOPs per weight of the matrix
products (2 forward, 4 backward) plus 12 * layers * hidden * sequence_length for attention.
Embedding lookups and the unused pooler are not model FLOPs; padding tokens are not either,
so MFU counts only real tokens (padding is waste, not work).
"""

from __future__ import annotations

from torch import nn

# Dense bf16/fp16 tensor-core peak per GPU, TFLOP/s (vendor data sheets, no sparsity).
# More specific names first: "H100 PCIe" must match before "H100".
PEAK_TFLOPS_16BIT = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,
    "H200": 989.4,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}


def matmul_weights(transformer: nn.Module) -> int:
    """Weights of the encoder's matrix products: all parameters but embeddings, pooler, biases and norms."""
    return sum(
        p.numel()
        for name, p in transformer.named_parameters()
        if p.ndim == 2 and "embeddings" not in name and "pooler" not in name
    )


def training_flops_per_token(weights: int, layers: int, hidden: int, sequence_length: float) -> float:
    return 6 * weights + 12 * layers * hidden * sequence_length


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The device's dense 16-bit peak when training runs in bf16/fp16 on a known GPU, else None."""
    if precision not in ("bf16", "fp16"):
        return None
    return next((value for key, value in PEAK_TFLOPS_16BIT.items() if key in device_name), None)


def utilisation(
    transformer: nn.Module, real_tokens: int, sequences: int, seconds: float, peak: float | None
) -> dict[str, float]:
    """Achieved model TFLOP/s (and MFU when the peak is known) for `real_tokens` in `sequences`
    trained in `seconds`; the attention term uses the mean real sequence length."""
    config = transformer.config
    per_token = training_flops_per_token(
        matmul_weights(transformer), config.num_hidden_layers, config.hidden_size, real_tokens / max(sequences, 1)
    )
    achieved = per_token * real_tokens / seconds / 1e12
    out = {"model_tflops_per_s": achieved}
    if peak:
        out["mfu"] = achieved / peak
    return out


def measured_peak_tflops(device: str, precision: str, size: int | None = None, repeats: int = 20) -> float:
    """The matrix-product rate this device reaches at `precision` (bf16, fp16, or fp32 for "no"),
    measured on size×size products: what MFU is reported against in the GPU suite, since a data
    sheet's peak is rarely reached and names no fp32 figure."""
    import time

    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    size = size or (8192 if device.startswith("cuda") else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up: kernel selection, clocks
        a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e12
