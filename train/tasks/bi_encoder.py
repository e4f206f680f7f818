"""The bi-encoder: each text through the transformer once, pooled into one vector.

Batches merge every text column into one forward pass (losses with
`compute_loss_from_embeddings`), or give the loss one feature batch per column. Dev figures:
STS correlations on scored pairs, retrieval (NDCG@10) on (anchor, positive) data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

import datasets
import torch
from torch import nn

from train.engine.settings import TrainerConfig
from train.data.batching import (
    BucketBatchSampler, Collator, NoDuplicatesBatchSampler, embed_batch, forward_chunk_rows, is_numbered_negative, label_column,
    text_columns,
)
from train.data.checks import check_batch_fits
from train.data.corpus import Corpus
from train.data.shapes import Shape
from train.data.tokens import token_table
from train.evaluation.figures import MAIN_METRIC, RETRIEVAL_MAIN_METRIC, evaluate_retrieval, evaluate_sts_dims, format_table, retrieval_evaluator
from train.data.build import load_text_task_data
from train.losses.registry import LossSpec
from train.models.prompts import column_prompts, excludes_prompt, prompt_length
from train.models.packed import packed_forwards
from train.engine.task_step import BatchStats
from train.errors import ConfigError
from train.tasks.base import Evaluate, Scoring, Task, TrainingInputs, check_teacher_scores, on_cuda, pad_multiple, padding_free_layout

log = logging.getLogger("train")
STS_COLUMNS = ("sentence1", "sentence2")


class BiEncoderStep:
    def __init__(self, from_embeddings: bool, packed: bool = False) -> None:
        self.from_embeddings = from_embeddings
        self.packed = packed

    def loss(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        labels = batch["labels"]
        if not self.from_embeddings:
            return loss_fn(batch["columns"], labels)  # the loss runs `model` (it holds it)
        embeddings = embed_batch(model, batch)  # fp32: the loss is computed in fp32
        return loss_fn.compute_loss_from_embeddings(list(embeddings.chunk(batch["n_columns"])), labels)

    def stats(self, batch: dict[str, Any]) -> BatchStats:
        real, ran = batch["counts"]
        return BatchStats(batch["rows"], real, ran)

    def forward_contexts(self, model: nn.Module, batch: dict[str, Any] | None = None) -> list[Callable[[], AbstractContextManager]]:
        return [lambda: packed_forwards(model)] if self.packed else []


def training_inputs(
    corpus: Corpus, model: Any, spec: LossSpec, settings: TrainerConfig, num_processes: int = 1, prompts: Mapping[str, str] | None = None,
    max_length: int | None = None,
) -> tuple[datasets.Dataset, Collator, Any]:
    """The corpus's token ids (from the token cache: memory-mapped, gathered a batch at a time),
    the collator and the batch sampler. `prompts`: column -> prompt name (data.prompts);
    `max_length`: tokens a text at most (null: the model's max_seq_length)."""
    tokenizer = model.tokenizer
    columns = tuple(text_columns(corpus))
    check_teacher_scores(corpus, spec)
    negatives = [c for c in columns if c == "negative" or is_numbered_negative(c)]
    if spec.max_negatives is not None and len(negatives) > spec.max_negatives:
        raise ConfigError(
            f"the training rows hold {len(negatives)} hard negatives ({', '.join(negatives)}), and this loss takes at most "
            f"{spec.max_negatives}: set data.num_negatives={spec.max_negatives}, or use loss=mnrl (any number)."
        )
    texts = column_prompts(model, prompts or {}, columns)
    if texts:
        log.info("Prompts in training: %s", ", ".join(f"{c}: {t!r}" for c, t in texts.items()))
    tokens = token_table(corpus, tokenizer, max_length or model.max_seq_length, "columns", texts)
    label = label_column(corpus)
    layout = padding_free_layout(model, settings)
    rows = tokens.dataset.select_columns([f"ids_{c}" for c in columns])
    if label:
        rows = datasets.concatenate_datasets([rows, corpus.dataset.select_columns([label])], axis=1)
    collate = Collator(
        pad_token_id=tokenizer.pad_token_id,
        padding_side=tokenizer.padding_side,
        token_type_ids="token_type_ids" in tokenizer.model_input_names,
        chunk_rows=forward_chunk_rows(settings.forward_chunk_rows, settings.bucket_windows, on_cuda()),
        columns=columns,
        label=label,
        merge=spec.from_embeddings,
        prompt_lengths={c: prompt_length(tokenizer, t) for c, t in texts.items()} if excludes_prompt(model) else None,
        multiple_of=pad_multiple(settings.pad_to_multiple_of),
        packed=layout,
        packed_columns=not spec.slices_inputs,
    )
    if spec.shape in ("triplets", "texts"):
        # In-batch negatives: a text twice in a (global) batch would be its own negative.
        sampler = NoDuplicatesBatchSampler(corpus.text_hashes(columns), settings.batch_size, settings.seed, group=num_processes)
        if len(sampler) and sampler.dropped:
            log.info("%d of %d rows fit no duplicate-free global batch of %d in epoch 1 and are left out of it (each epoch shuffles anew)",
                     sampler.dropped, len(rows), settings.batch_size * num_processes)
    else:
        sampler = BucketBatchSampler(tokens.lengths, settings.batch_size, settings.seed, settings.bucket_windows)
    check_batch_fits(len(rows), settings.batch_size, num_processes, len(sampler) // num_processes)
    return rows, collate, sampler


class BiEncoderTask(Task):
    name = "bi_encoder"

    def load_data(self, data: Any, loss_shape: Shape) -> tuple[dict[str, Any], dict[str, Any]]:
        return load_text_task_data(data, loss_shape, self.name, self.eval_shape(loss_shape))

    def training_inputs(self, train, model, spec, settings, num_processes=1, prompts=None) -> TrainingInputs:
        return TrainingInputs(*training_inputs(train, model, spec, settings, num_processes, prompts))

    def train_step(self, spec: LossSpec, collate: Any) -> BiEncoderStep:
        return BiEncoderStep(spec.from_embeddings, collate.packed is not None and (spec.from_embeddings or collate.packed_columns))

    def evaluator(self, scoring: Scoring) -> tuple[Evaluate | None, str]:
        """STS `dev` (scored pairs) and `retrieval_dev` ((anchor, positive) rows); each prompt by its column."""
        sts_dev, retrieval_dev = scoring.sets.get("dev"), scoring.sets.get("retrieval_dev")
        if sts_dev is None and retrieval_dev is None:
            return None, MAIN_METRIC
        ir = retrieval_evaluator(retrieval_dev, scoring.batch_size) if retrieval_dev is not None else None

        def evaluate(model) -> dict[str, float]:
            metrics: dict[str, float] = {}
            if sts_dev is not None:
                metrics.update(self._sts(model, sts_dev, scoring))
            if ir is not None:
                texts = column_prompts(model, scoring.prompts, ("anchor", "positive"))
                ir.query_prompt, ir.corpus_prompt = texts.get("anchor"), texts.get("positive")
                metrics.update(evaluate_retrieval(model, ir))
            return metrics

        return evaluate, (MAIN_METRIC if sts_dev is not None else RETRIEVAL_MAIN_METRIC)

    @staticmethod
    def _sts(model, ds, scoring: Scoring) -> dict[str, float]:
        return evaluate_sts_dims(model, ds, scoring.batch_size, scoring.dims, column_prompts(model, scoring.prompts, STS_COLUMNS))

    def final_figures(self, model, progress, evaluate, scoring: Scoring) -> dict[str, Any]:
        """dev (the last evaluation, if it was at the last step), retrieval_dev and test figures of the final model."""
        report: dict[str, Any] = {}
        if evaluate is not None:
            fresh = progress.last_eval is not None and progress.last_eval_step == progress.step
            dev = progress.last_eval if fresh else evaluate(model)
            sts_dev = {k: v for k, v in dev.items() if not k.startswith("retrieval_")}
            if sts_dev:
                report["dev"] = sts_dev
            if scoring.sets.get("retrieval_dev") is not None:
                report["retrieval_dev"] = {k.removeprefix("retrieval_"): v for k, v in dev.items() if k.startswith("retrieval_")}
        if scoring.sets.get("test") is not None:
            report["test"] = self._sts(model, scoring.sets["test"], scoring)
        if scoring.sets.get("retrieval_test") is not None:
            report["retrieval_test"] = self._retrieval(model, scoring.sets["retrieval_test"], scoring)
        return report

    @staticmethod
    def _retrieval(model, data, scoring: Scoring) -> dict[str, float]:
        """Retrieval figures of queries against a corpus (ndcg@10, mrr@10, recall@k, map@100, n_queries)."""
        texts = column_prompts(model, scoring.prompts, ("anchor", "positive"))
        ir = retrieval_evaluator(data, scoring.batch_size, {"anchor": texts.get("anchor"), "positive": texts.get("positive")})
        return {k.removeprefix("retrieval_"): v for k, v in evaluate_retrieval(model, ir).items()}

    def report_table(self, report: dict[str, Any]) -> str | None:
        lines = []
        if report.get("dev") or report.get("test"):
            lines.append(format_table({k: v for k, v in report.items() if k in ("dev", "test")}))
        for split in ("retrieval_dev", "retrieval_test"):
            if split in report:
                lines.append(f"retrieval ({split.removeprefix('retrieval_')}): "
                             + ", ".join(f"{k}={v:.4f}" for k, v in report[split].items() if k != "n_queries"))
        return "\n".join(lines) or None


TASK = BiEncoderTask()
