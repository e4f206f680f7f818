"""The model as a training step calls it: through the DDP wrapper, the forward pass alone under
autocast, its outputs in fp32.

- **One pass through the wrapper for every loss.** A loss that runs the model itself (the
  library's cross-encoder losses, GradCache, Matryoshka, the softmax classifier, CLIP's towers)
  holds the plain model; it is given the prepared one (DDP's wrapper) instead, as
  sentence-transformers' own trainer does (`override_model_in_loss`), so that DDP reduces the
  gradients in its buckets while backward runs, and GradCache finds the wrapper's `no_sync`.
- **Autocast covers the forward pass only.** Within `training_forward`, a call of the step model
  runs under autocast and hands back `sentence_embedding` / `scores` in fp32, so every loss
  computes its similarities, logits and softmax in fp32 (bf16's 8-bit mantissa blurs the small
  differences a ranking loss works on), whether the loop or the loss called the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

# The outputs a loss reads, cast to fp32 after the autocast forward. Token embeddings stay as computed
# (casting them would cost memory), unless a task's loss reads them (MaxSim): its step names them
# in `fp32_outputs`.
OUTPUT_KEYS = ("sentence_embedding", "scores")
# What the library's losses call on the model besides forward (DDP's wrapper has `device` itself;
# the multi-vector losses score with the model's MaxSim).
_BOUND = ("preprocess", "get_embedding_dimension", "num_labels", "similarity", "similarity_pairwise")


def _holders(loss_fn: nn.Module, plain: nn.Module) -> list[nn.Module]:
    """The loss and the losses it wraps (MatryoshkaLoss's inner loss) whose `model` is `plain`."""
    return [m for m in loss_fn.modules() if m is not plain and m._modules.get("model") is plain]


def route_loss_through(loss_fn: nn.Module, wrapped: nn.Module, plain: nn.Module) -> Callable[[], None]:
    """Gives every loss that holds `plain` the prepared `wrapped` instead; returns the undo."""
    if wrapped is plain:
        return lambda: None
    holders = _holders(loss_fn, plain)
    for name in _BOUND:
        if hasattr(plain, name) and name not in wrapped.__dict__:
            wrapped.__dict__[name] = getattr(plain, name)
    for holder in holders:
        holder._modules["model"] = wrapped

    def undo() -> None:
        for holder in holders:
            holder._modules["model"] = plain

    return undo


def frozen_helpers(loss_fn: nn.Module, plain: nn.Module) -> list[nn.Module]:
    """The models a loss holds beside the trained one, with weights and none of them trained (GIST's
    guide): their forward runs under the step's autocast too, fp32 outputs, outside DDP's wrapper
    (nothing of theirs is reduced)."""
    found = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            params = list(child.parameters())
            if child is plain or not params:
                continue
            if not any(p.requires_grad for p in params):
                found.append(child)
            else:  # a loss within a loss (a mixture's, Matryoshka's inner one) may hold a guide of its own
                visit(child)

    visit(loss_fn)
    return found


def compile_backbones(model: nn.Module) -> int:
    """torch.compile each transformer's own forward in place (parameter names, saving and the
    state dict stay as they are), with dynamic shapes, since every batch has its own length.
    Returns how many were compiled."""
    found = [m.auto_model for m in model.modules() if hasattr(m, "auto_model")]
    for backbone in found:
        backbone.compile(dynamic=True)
    return len(found)


def to_fp32(outputs: Any, keys: tuple[str, ...] = OUTPUT_KEYS) -> Any:
    if isinstance(outputs, dict):
        for key in keys:
            value = outputs.get(key)
            if torch.is_tensor(value) and value.is_floating_point() and value.dtype != torch.float32:
                outputs[key] = value.float()
    return outputs


@contextmanager
def patched_forward(module: nn.Module, make: Callable[[Callable], Callable]) -> Iterator[None]:
    """`module.forward` replaced by `make(the current forward)` for the duration."""
    had = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = make(module.forward)
    try:
        yield
    finally:
        if had:
            module.forward = previous
        else:
            del module.forward


@contextmanager
def training_forward(
    model: nn.Module, autocast: Callable[[], AbstractContextManager], extra: list[Callable[[], AbstractContextManager]] = (),
    helpers: list[nn.Module] = (), keys: tuple[str, ...] = OUTPUT_KEYS,
) -> Iterator[None]:
    """Within: `model(...)` (the step model, whoever calls it) and each of `helpers` (a loss's frozen
    guide) runs under autocast and returns its `keys` outputs in fp32; `extra` context managers
    (padding-free forwards of the task) are entered inside."""

    def make(forward: Callable) -> Callable:
        def forward_in_autocast(*args: Any, **kwargs: Any) -> Any:
            with autocast():
                outputs = forward(*args, **kwargs)
            return to_fp32(outputs, keys)

        return forward_in_autocast

    with ExitStack() as stack:
        stack.enter_context(patched_forward(model, make))
        for helper in helpers:
            stack.enter_context(patched_forward(helper, make))
        for manager in extra:
            stack.enter_context(manager())
        yield
