"""GISTEmbed with any number of hard negatives.

sentence-transformers' `GISTEmbedLoss` takes (anchor, positive) pairs or (anchor, positive,
negative) triplets only; its `CachedGISTEmbedLoss` already takes negative_1 ... negative_n. This
is the former with the latter's n-tuples: each anchor against its positive, the other anchors
and positives of the (gathered) batch, and every row's negatives of every column; a candidate
the guide scores above the anchor's own positive (less the margin) is masked as a likely false
negative. With one negative in one process it is the library's loss, term for term
(tests/test_n_tuples.py); across processes the anchors are gathered too (the library gathers the
candidates only), so that N processes reach the weights of one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from sentence_transformers.base.losses.merged_forward import embed_columns
from sentence_transformers.sentence_transformer.losses import GISTEmbedLoss
from sentence_transformers.util import all_gather_with_grad, batch_to_device, get_rank


class NTupleGISTEmbedLoss(GISTEmbedLoss):
    def _guide_features(self, sentence_features: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        if not self.must_retokenize:
            return [dict(f) for f in sentence_features]
        # Another vocabulary (or a shorter guide): the texts go through the guide's own tokenizer.
        out = []
        for features in sentence_features:
            decoded = self.tokenizer.batch_decode(features["input_ids"], skip_special_tokens=True)
            out.append(batch_to_device(self.guide.preprocess(decoded), self.guide.device))
        return out

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        sentence_features = list(sentence_features)
        guide_features = self._guide_features(sentence_features)
        embeddings = embed_columns(self.model, sentence_features)
        with torch.no_grad():
            guide_embeddings = embed_columns(self.guide, guide_features)
        anchor, positive, *negatives = embeddings
        anchor_guide, positive_guide, *negatives_guide = guide_embeddings
        batch_size = anchor.size(0)
        offset = 0
        anchors, anchors_guide = anchor, anchor_guide  # the other anchors each anchor is contrasted with
        if self.gather_across_devices:
            # Unlike the library's loss, the anchors too: the anchor-anchor terms then span the global
            # batch, and N processes reach the weights of one (tests/test_ddp_pass.py).
            anchors, anchors_guide = all_gather_with_grad(anchor), all_gather_with_grad(anchor_guide)
            positive, positive_guide = all_gather_with_grad(positive), all_gather_with_grad(positive_guide)
            negatives = [all_gather_with_grad(n) for n in negatives]
            negatives_guide = [all_gather_with_grad(n) for n in negatives_guide]
            offset = get_rank() * batch_size

        guided_ap_sim = self.sim_matrix(anchor_guide, positive_guide)
        guided_sim = guided_ap_sim.diagonal(offset=offset).view(-1, 1)

        def mask_false_negatives(guided: Tensor, sim: Tensor, keep: Tensor | None = None) -> Tensor:
            if self.margin_strategy == "absolute":
                mask = guided > (guided_sim - self.margin)
            else:
                mask = guided > (guided_sim - guided_sim.abs() * self.margin)
            if keep is not None:
                mask = mask & ~keep
            sim[mask] = -torch.inf
            return sim

        rows = torch.arange(batch_size, device=anchor.device)
        own = torch.zeros_like(guided_ap_sim, dtype=torch.bool)
        own[rows, offset + rows] = True
        scores = [mask_false_negatives(guided_ap_sim, self.sim_matrix(anchor, positive), keep=own)]
        if self.contrast_anchors:
            aa = mask_false_negatives(self.sim_matrix(anchor_guide, anchors_guide), self.sim_matrix(anchor, anchors))
            aa[rows, offset + rows] = -torch.inf
            scores.append(aa)
        if self.contrast_positives:
            mine = slice(offset, offset + batch_size)
            pp = mask_false_negatives(self.sim_matrix(positive_guide[mine], positive_guide), self.sim_matrix(positive[mine], positive))
            pp[rows, offset + rows] = -torch.inf
            scores.append(pp)
        for negative, negative_guide in zip(negatives, negatives_guide):
            scores.append(mask_false_negatives(self.sim_matrix(anchor_guide, negative_guide), self.sim_matrix(anchor, negative)))
        logits = torch.cat(scores, dim=1) / self.temperature
        return self.cross_entropy_loss(logits, torch.arange(offset, offset + batch_size, device=anchor.device))
