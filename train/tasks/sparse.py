"""task=sparse: SPLADE, inference-free SPLADE and CSR (sentence-transformers' SparseEncoder).

Rows, token cache, collation and sampling are the bi-encoder's (a text at a time through the
backbone); the loss is the library's SpladeLoss or CSRLoss, given one feature batch per column.
The first column is the query: an inference-free model routes it to its static token weights
and every other column to the document path. The loss's parts (ranking loss, FLOPS terms)
are summed into the one loss the loop steps on. Dev figures: retrieval with the library's
SparseInformationRetrievalEvaluator (dot product), with the active dimensions of queries and
documents; STS with SparseEmbeddingSimilarityEvaluator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from train.engine.task_step import BatchStats
from train.evaluation.sparse_figures import SPARSE_MAIN_METRIC, evaluate_sparse_retrieval, evaluate_sparse_sts
from train.losses.registry import LossSpec
from train.models.sparse import query_route
from train.tasks.base import TrainingInputs
from train.tasks.bi_encoder import training_inputs
from train.tasks.encoder_figures import EncoderFiguresTask


class SparseStep:
    def loss(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        features = batch["columns"]
        if query_route(loss_fn.model) is not None:  # a Router: the first column is the query, every other a document
            features = [{**f, "task": "query" if i == 0 else "document"} for i, f in enumerate(features)]
        out = loss_fn(features, batch["labels"])
        return sum(out.values()) if isinstance(out, dict) else out

    def stats(self, batch: dict[str, Any]) -> BatchStats:
        real, ran = batch["counts"]
        return BatchStats(batch["rows"], real, ran)

    def forward_contexts(self, model: nn.Module, batch: dict[str, Any] | None = None) -> list[Callable[[], AbstractContextManager]]:
        return []


class SparseTask(EncoderFiguresTask):
    name = "sparse"

    def training_inputs(self, train, model, spec, settings, num_processes=1, prompts=None) -> TrainingInputs:
        # Padded batches: SpladePooling reads a padded (batch, length, vocabulary) logit tensor.
        settings = dataclasses.replace(settings, padding_free=False)
        return TrainingInputs(*training_inputs(train, model, spec, settings, num_processes, prompts))

    def train_step(self, spec: LossSpec, collate: Any) -> SparseStep:
        return SparseStep()

    sts = staticmethod(evaluate_sparse_sts)
    retrieval = staticmethod(evaluate_sparse_retrieval)
    sts_metric = "spearman_dot"
    retrieval_metric = SPARSE_MAIN_METRIC


TASK = SparseTask()
