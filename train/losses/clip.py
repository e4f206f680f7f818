"""CLIP's symmetric contrastive loss, with its temperature, across processes, duplicates masked.

Each image's caption is the right answer among all captions of the global batch, and each
caption's image among all images (InfoNCE both ways, averaged). Two choices:
- Embeddings are gathered from every process with their gradients (torch.distributed.nn's
  all_gather), so a process's rows are scored against the whole global batch, as open_clip does
  with `gather_with_grad`; the loop averages the gradients across processes.
- Captions that repeat are masked, not kept out of batches. On class-caption data (every
  sneaker is "운동화 사진") a batch without repeats could hold at most one image a class, so
  batch size would be capped at the number of classes; masking keeps any batch size and makes
  sure an identical caption never counts as a negative (its logit is -inf, in both directions).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# CLIP's initial temperature (0.07) and its cap on the inverse temperature (100).
CLIP_SCALE = 1 / 0.07
MAX_SCALE = 100.0


def gather_with_grad(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's rows (equal-sized batches), gradients flowing back to each owner; and the
    offset of this process's rows in the result."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x)), dist.get_rank() * x.shape[0]


def gather_ids(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x)
    return torch.cat(out)


class ClipLoss(nn.Module):
    def __init__(self, model: nn.Module, scale: float = CLIP_SCALE, learnable: bool = True, max_scale: float = MAX_SCALE) -> None:
        super().__init__()
        self.model = model  # the loss owns the model the way sentence-transformers' losses do
        # Learned in log space, as CLIP does: the step size is relative to the value.
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learnable)
        self.max_log_scale = math.log(max_scale)

    @property
    def scale(self) -> float:
        return float(self.log_scale.detach().clamp(max=self.max_log_scale).exp())

    def from_embeddings(self, images: torch.Tensor, texts: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
        """Row i of `images` and of `texts` are a pair; `caption_ids` tells repeated captions apart."""
        images, texts = F.normalize(images, dim=-1), F.normalize(texts, dim=-1)
        all_images, offset = gather_with_grad(images)
        all_texts, _ = gather_with_grad(texts)
        all_ids = gather_ids(caption_ids)
        n = images.shape[0]
        targets = torch.arange(offset, offset + n, device=images.device)
        # A caption identical to row i's own (other than row i's) is neither right nor wrong.
        repeats = caption_ids[:, None] == all_ids[None, :]
        repeats[torch.arange(n, device=images.device), targets] = False
        scale = self.log_scale.clamp(max=self.max_log_scale).exp()
        image_to_text = (scale * images @ all_texts.T).masked_fill(repeats, float("-inf"))
        text_to_image = (scale * texts @ all_images.T).masked_fill(repeats, float("-inf"))
        return (F.cross_entropy(image_to_text, targets) + F.cross_entropy(text_to_image, targets)) / 2
