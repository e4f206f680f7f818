"""task=multi_vector: ColBERT (sentence-transformers' MultiVectorEncoder) on the shared loop.

Rows, token cache and sampling are the bi-encoder's; the collator gives the loss one feature batch
per column, stamped with its role as the library's MultiVectorEncoderDataCollator stamps it: the
first column is the query, every other a document. A query is cut to the model's query_length and,
with query expansion, padded to it with the expansion token (the library's
Transformer.preprocess(task="query"), reproduced on cached ids; a test holds the two equal).
Dev figures: exact MaxSim retrieval (chunked over the corpus) and MaxSim STS correlations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from train.data.batching import Collator
from train.engine.step_model import OUTPUT_KEYS
from train.evaluation.multi_vector_figures import MULTI_VECTOR_MAIN_METRIC, evaluate_multi_vector_retrieval, evaluate_multi_vector_sts
from train.losses.registry import LossSpec
from train.models.multi_vector import expansion
from train.tasks.base import TrainingInputs
from train.tasks.bi_encoder import training_inputs
from train.tasks.encoder_figures import EncoderFiguresTask
from train.tasks.sparse import SparseStep

ROLES = {"anchor": "query", "sentence1": "query"}  # the first column; every other is a document


class MultiVectorCollator:
    """The bi-encoder's per-column collator, then the query column as the library tokenizes a
    query: at most `query_length` ids (the last special token kept), and with `expansion_id`
    padded to exactly `query_length`, the padding marked as expansion positions."""

    def __init__(self, base: Collator, query_length: int | None, expansion_id: int | None, attend: bool, end_tokens: set[int]) -> None:
        self.base = base
        self.packed = None
        self.packed_columns = False
        self.query_length = query_length
        self.expansion_id = expansion_id
        self.attend = attend
        self.end_tokens = end_tokens
        self.query_key = f"ids_{base.columns[0]}"

    def _cut(self, ids: list[int]) -> list[int]:
        if self.query_length is None or len(ids) <= self.query_length:
            return ids
        keep_end = ids[-1] in self.end_tokens
        return ids[: self.query_length - 1] + [ids[-1]] if keep_end else ids[: self.query_length]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [{**r, self.query_key: self._cut(list(r[self.query_key]))} for r in rows]
        batch = self.base(rows)
        columns = batch["columns"]
        if self.expansion_id is not None:
            columns[0] = self._expand(columns[0], batch["counts"])
        batch["columns"] = [{**f, "task": "query" if i == 0 else "document"} for i, f in enumerate(columns)]
        return batch

    def _expand(self, features: dict[str, torch.Tensor], counts: list[int]) -> dict[str, torch.Tensor]:
        ids, mask = features["input_ids"], features["attention_mask"]
        rows, width = ids.shape
        extra = self.query_length - width
        if extra > 0:
            side = (extra, 0) if self.base.left else (0, extra)
            ids = torch.nn.functional.pad(ids, side, value=self.base.pad_token_id)
            mask = torch.nn.functional.pad(mask, side, value=0)
        positions = mask == 0
        out = {**features, "input_ids": ids.masked_fill(positions, self.expansion_id), "query_expansion_positions": positions,
               "attention_mask": mask.masked_fill(positions, 1) if self.attend else mask}
        if "token_type_ids" in features:
            out["token_type_ids"] = torch.zeros_like(ids)
        counts[1] += rows * max(extra, 0)
        return out


class MultiVectorStep(SparseStep):
    """One feature batch a column to the loss, which runs the model itself (the sparse task's step
    without its Router routing: the columns carry their roles already)."""

    # MaxSim reads the token vectors: in bf16 a query's score (a sum of up to query_length maxima)
    # would move in steps of 1/8 near 32, coarser than the margins the loss separates.
    fp32_outputs = (*OUTPUT_KEYS, "token_embeddings")

    def loss(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return loss_fn(batch["columns"], batch["labels"])


def role_prompts(model: Any, prompts: dict[str, str] | None, columns: tuple[str, ...]) -> dict[str, str]:
    """column -> prompt name: data.prompts where it names one, else the model's "query" prompt for the
    first column and "document" for the others (as encode_query / encode_document apply them)."""
    own = getattr(model, "prompts", None) or {}
    out = {}
    for i, column in enumerate(columns):
        role = "query" if i == 0 else "document"
        if column in (prompts or {}):
            out[column] = prompts[column]
        elif own.get(role):
            out[column] = role
    return out


def collator_for(model: Any, base: Collator) -> MultiVectorCollator:
    transformer = model[0]
    tokenizer = model.tokenizer
    config = expansion(transformer)
    query_length = (config or {}).get("length") or getattr(transformer, "query_length", None)
    expansion_id = None
    if config is not None:
        token = config.get("token")
        expansion_id = tokenizer.convert_tokens_to_ids(token) if token else (tokenizer.mask_token_id if tokenizer.mask_token_id is not None
                                                                               else tokenizer.eos_token_id)
    return MultiVectorCollator(base, query_length, expansion_id, bool((config or {}).get("attend")), set(tokenizer.all_special_ids))


class MultiVectorTask(EncoderFiguresTask):
    name = "multi_vector"

    def training_inputs(self, train, model, spec, settings, num_processes=1, prompts=None) -> TrainingInputs:
        # Padded batches, one a column: MaxSim reads (batch, tokens, dim) and the query's expansion positions.
        settings = dataclasses.replace(settings, padding_free=False)
        spec = dataclasses.replace(spec, from_embeddings=False)
        from train.data.batching import text_columns

        columns = tuple(text_columns(train))
        document_length = getattr(model[0], "document_length", None)
        rows, collate, sampler = training_inputs(train, model, spec, settings, num_processes, role_prompts(model, prompts, columns),
                                                 max_length=document_length)
        return TrainingInputs(rows, collator_for(model, collate), sampler)

    def train_step(self, spec: LossSpec, collate: Any) -> MultiVectorStep:
        return MultiVectorStep()

    sts = staticmethod(evaluate_multi_vector_sts)
    retrieval = staticmethod(evaluate_multi_vector_retrieval)
    sts_metric = "spearman_maxsim"
    retrieval_metric = MULTI_VECTOR_MAIN_METRIC


TASK = MultiVectorTask()
