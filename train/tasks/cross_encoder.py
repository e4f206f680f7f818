"""The cross-encoder (reranker): both texts through one model, one score (or NLI logits) out.

Training calls sentence-transformers' own cross-encoder losses with the batch's texts; only the
model's `preprocess` is swapped, for the step, with a lookup into the pairs' token ids from the
token cache (train/data/tokens.py; a pair the data did not hold, such as an in-batch negative of
MNRL, is tokenized then, as the library would). Rows are batched by length like the bi-encoder's. Dev figures:
Spearman of predicted scores on scored pairs, accuracy on NLI labels, MAP/MRR@10/NDCG@10 on
queries with candidates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import datasets
import numpy as np
import torch
from torch import nn

from train.engine.settings import TrainerConfig
from train.data.batching import (
    BucketBatchSampler, NoDuplicatesBatchSampler, chunk_size, forward_chunk_rows, is_numbered_negative, pad, padded_width,
    ordered_text_columns,
)
from train.data.checks import check_batch_fits
from train.data.corpus import Corpus
from train.data.shapes import Shape
from train.data.tokens import row_pairs, token_table
from train.data.build import load_text_task_data
from train.losses.registry import LossSpec
from train.evaluation.bars import long_eval
from train.data.packing import pack
from train.models.packed import packed_forwards
from train.engine.task_step import BatchStats
from train.tasks.base import Evaluate, Scoring, Task, TrainingInputs, check_teacher_scores, dev_and_test, on_cuda, pad_multiple, padding_free_layout
from train.evaluation.eval_mode import eval_mode
from train.evaluation.tables import text_table

log = logging.getLogger("train")

Pair = tuple[str, str]


class PairTokens:
    """Model inputs for text pairs, the signature of CrossEncoder.preprocess: a batch's own pairs
    come from the token cache (`use`), tokenized as the model's `preprocess` would ([CLS] a [SEP]
    b [SEP], longest-first truncation to max_seq_length); a pair the data did not hold (an
    in-batch negative of MNRL) is tokenized on the spot, as the library would. Packed
    padding-free (`packed`, train/models/packed.py), or padded per call with a host-side plan of
    length-sorted chunks. The inputs are put on the model's device here, from pinned memory
    without waiting, and counted from their lengths: nothing is read back from the device."""

    def __init__(self, tokenizer: Any, max_length: int, chunk_rows: int | None = 0, multiple_of: int = 1, packed: Any = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chunk_rows = chunk_rows  # trainer.forward_chunk_rows (see forward_in_chunks)
        self.multiple_of = multiple_of
        self.packed = packed
        self.token_types = "token_type_ids" in tokenizer.model_input_names
        self.known: dict[Pair, tuple[list[int], list[int] | None]] = {}
        self.device = torch.device("cpu")
        self.real = self.padded = 0  # tokens of the features built since the last reset

    def use(self, known: dict[Pair, tuple[list[int], list[int] | None]], device: torch.device) -> None:
        """The pre-tokenized pairs of the batch about to be trained on, and where the model is."""
        self.known, self.device = known, device

    def _encode(self, pairs: Sequence[Pair]) -> dict[Pair, tuple[list[int], list[int] | None]]:
        encoded = self.tokenizer(
            [a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=self.max_length,
            return_attention_mask=False, return_token_type_ids=self.token_types,
        )
        types = encoded["token_type_ids"] if self.token_types else [None] * len(pairs)
        return {pair: (ids, tt) for pair, ids, tt in zip(pairs, encoded["input_ids"], types)}

    def features(self, pairs: Sequence[Pair], **_: Any) -> dict[str, Any]:
        """Model inputs for `pairs`, on the model's device."""
        pairs = [tuple(p) for p in pairs]
        missing = [p for p in dict.fromkeys(pairs) if p not in self.known]
        extra = self._encode(missing) if missing else {}
        entries = [self.known.get(p) or extra[p] for p in pairs]
        ids = [e[0] for e in entries]
        self.real += sum(map(len, ids))
        if self.packed is not None:
            features = pack(ids, self.packed, [e[1] for e in entries] if self.token_types else None)
            self.padded += features["input_ids"].shape[1]
        else:
            features = self._padded(ids, [e[1] for e in entries])
        features = {k: _to(v, self.device) for k, v in features.items()}
        features["modality"] = "text"
        return features

    def _padded(self, ids: list[list[int]], types: list[Any]) -> dict[str, Any]:
        left = self.tokenizer.padding_side == "left"
        input_ids, attention_mask = pad(ids, self.tokenizer.pad_token_id, left, self.multiple_of)
        features: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_types:
            features["token_type_ids"], _ = pad(types, 0, left, self.multiple_of)
        plan = chunk_plan([len(x) for x in ids], self.chunk_rows, input_ids.shape[1], left, self.multiple_of)
        if plan is not None:
            features["chunk_plan"] = plan
            self.padded += sum(len(part) * (cut.stop - cut.start) for part, cut in plan)
        else:
            self.padded += attention_mask.numel()
        return features


def _to(value: Any, device: torch.device) -> Any:
    """Tensors, also inside lists and tuples (a chunk plan, attention groups), on `device`."""
    if torch.is_tensor(value):
        return value.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(_to(v, device) for v in value)
    return value


def chunk_plan(lengths: list[int], chunk_rows: int | None, width: int, left: bool, multiple_of: int = 1) -> list[tuple[torch.Tensor, slice]] | None:
    """Host side: the batch's rows sorted by length and cut into chunks of `chunk_rows`, each with
    the columns its longest row needs; None for one forward pass."""
    if chunk_rows is not None and chunk_rows <= 0:
        return None
    rows = chunk_size(len(lengths), chunk_rows)
    if len(lengths) <= rows:
        return None
    order = np.argsort(lengths, kind="stable")
    plan = []
    for start in range(0, len(order), rows):
        part = order[start : start + rows]
        used = padded_width(max(lengths[i] for i in part), multiple_of)
        plan.append((torch.from_numpy(part.astype(np.int64)), slice(width - used, width) if left else slice(0, used)))
    return plan


@contextmanager
def tokenized_once(model: nn.Module, tokens: PairTokens) -> Iterator[None]:
    """For the duration of a step, the model's `preprocess` looks up pre-tokenized pairs."""
    had, previous = "preprocess" in model.__dict__, model.__dict__.get("preprocess")
    model.preprocess = tokens.features
    try:
        yield
    finally:
        if had:
            model.preprocess = previous
        else:
            del model.preprocess


@contextmanager
def forward_in_chunks(model: nn.Module) -> Iterator[None]:
    """For the duration of a step, the model runs a padded batch of pairs in the length-sorted
    chunks its features carry (`chunk_plan`, from PairTokens), each cut to its own longest pair;
    the loss gets the whole batch's scores in batch order. A randomly composed batch then costs
    little more padding than a length-bucketed one (trainer.forward_chunk_rows)."""
    had, previous = "forward" in model.__dict__, model.__dict__.get("forward")
    forward = model.forward

    def chunked(features: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        plan = features.pop("chunk_plan", None)
        if plan is None:
            return forward(features, *args, **kwargs)
        scores, order = [], []
        for part, cut in plan:
            chunk = {k: v[part][:, cut] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in features.items()}
            scores.append(forward(chunk, *args, **kwargs)["scores"])
            order.append(part)
        order = torch.cat(order)
        restore = torch.empty_like(order)
        restore[order] = torch.arange(len(order), device=order.device)
        return {**features, "scores": torch.cat(scores)[restore]}

    model.forward = chunked
    try:
        yield
    finally:
        if had:
            model.forward = previous
        else:
            del model.forward


class CrossEncoderStep:
    def __init__(self, tokens: PairTokens) -> None:
        self.tokens = tokens

    def loss(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        # The library's loss calls the model it holds (the step model, `model`), through `preprocess`.
        self.tokens.real = self.tokens.padded = 0
        self.tokens.use(batch["known"], model.device)
        return loss_fn(batch["inputs"], batch["labels"])

    def stats(self, batch: dict[str, Any]) -> BatchStats:
        return BatchStats(batch["rows"], self.tokens.real, self.tokens.padded)

    def forward_contexts(self, model: nn.Module, batch: dict[str, Any] | None = None) -> list[Callable[[], AbstractContextManager]]:
        forward = (lambda: packed_forwards(model)) if self.tokens.packed is not None else (lambda: forward_in_chunks(model))
        return [lambda: tokenized_once(model, self.tokens), forward]


class Collate:
    """Rows of one shape -> the loss's inputs (a list of text columns), the labels, and the rows'
    pairs with their cached token ids."""

    def __init__(self, shape: Shape, tokens: PairTokens) -> None:
        self.shape = Shape(shape)
        self.tokens = tokens  # for the train step; collation itself needs only the rows

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        if self.shape == Shape.query_candidates:
            inputs = [[r["query"] for r in rows], [r["candidates"] for r in rows]]
            labels: Any = [torch.tensor(r["labels"], dtype=torch.float32) for r in rows]
        elif self.shape == Shape.triplets:
            columns = [c for c in ordered_text_columns(rows[0]) if c in ("anchor", "positive", "negative") or is_numbered_negative(c)]
            inputs = [[r[c] for r in rows] for c in columns]
            # Distillation: the teacher's score of the positive and of each negative (MarginMSE takes their margins).
            labels = torch.tensor([r["scores"] for r in rows], dtype=torch.float32) if "scores" in rows[0] else None
        else:
            label = "score" if self.shape == Shape.scored_pairs else "label"
            inputs = [[r["sentence1"] for r in rows], [r["sentence2"] for r in rows]]
            labels = torch.tensor([r[label] for r in rows], dtype=torch.float32 if label == "score" else torch.long)
        known = {}
        for r in rows:
            types = r.get("pair_types") or [None] * len(r["pair_ids"])
            known.update(zip(row_pairs(r), zip(r["pair_ids"], types)))
        return {"inputs": inputs, "labels": labels, "rows": len(rows), "known": known}


def training_inputs(
    corpus: Corpus, model: Any, spec: LossSpec, settings: TrainerConfig, num_processes: int = 1, prompts: Any = None
) -> tuple[datasets.Dataset, Collate, Any]:
    """Rows (texts, labels and the token ids of their pairs, from the token cache), the collator
    and the batch sampler."""
    cached = token_table(corpus, model.tokenizer, model.max_seq_length, "pairs")
    rows = datasets.concatenate_datasets([corpus.dataset, cached.dataset], axis=1)
    tokens = PairTokens(
        model.tokenizer, model.max_seq_length, forward_chunk_rows(settings.forward_chunk_rows, settings.bucket_windows, on_cuda()),
        pad_multiple(settings.pad_to_multiple_of), padding_free_layout(model, settings),
    )
    check_teacher_scores(corpus, spec)
    if spec.shape == Shape.triplets and not spec.needs_scores:
        # In-batch negatives: a text twice in a (global) batch would be its own negative.
        sampler: Any = NoDuplicatesBatchSampler(corpus.hashes, settings.batch_size, settings.seed, group=num_processes)
    else:
        sampler = BucketBatchSampler(cached.lengths, settings.batch_size, settings.seed, settings.bucket_windows)
    check_batch_fits(len(rows), settings.batch_size, num_processes, len(sampler) // num_processes)
    return rows, Collate(spec.shape, tokens), sampler


# --- Evaluation -------------------------------------------------------------------------------

MAIN_METRICS = {Shape.scored_pairs: "spearman", Shape.labeled_pairs: "accuracy", Shape.query_candidates: "ndcg@10"}


def _shape_of(ds: Any) -> Shape:
    columns = ds.column_names
    if "query" in columns:
        return Shape.query_candidates
    return Shape.scored_pairs if "score" in columns else Shape.labeled_pairs


def reranking_samples(ds: Any) -> list[dict[str, Any]]:
    """Query-with-candidates rows -> the reranking evaluator's samples (a label > 0 is relevant).
    A query with no relevant candidate, or a single candidate, has nothing to rank: left out."""
    samples = []
    for query, candidates, labels in zip(ds["query"], ds["candidates"], ds["labels"]):
        positive = [c for c, label in zip(candidates, labels) if label > 0]
        if positive and len(candidates) > 1:
            samples.append({"query": query, "positive": positive, "negative": [c for c, label in zip(candidates, labels) if label <= 0]})
    return samples


def evaluate_set(model: Any, ds: Any, batch_size: int) -> dict[str, float]:
    """The figures of one dev/test set, by its shape; the model is left in the mode it was found in."""
    from sentence_transformers.cross_encoder import evaluation as ev

    shape = _shape_of(ds)
    if shape == Shape.query_candidates:
        samples = reranking_samples(ds)
        scored = sum(len(x["positive"]) + len(x["negative"]) for x in samples)
        evaluator: Any = ev.CrossEncoderRerankingEvaluator(
            samples, at_k=10, batch_size=batch_size, write_csv=False, show_progress_bar=long_eval(scored)
        )
        n = {"n_queries": len(samples)}
    else:
        pairs = list(zip(ds["sentence1"], ds["sentence2"]))
        bar = long_eval(len(pairs))
        if shape == Shape.scored_pairs:
            evaluator = ev.CrossEncoderCorrelationEvaluator(pairs, ds["score"], batch_size=batch_size, write_csv=False, show_progress_bar=bar)
        else:
            evaluator = ev.CrossEncoderClassificationEvaluator(pairs, ds["label"], batch_size=batch_size, write_csv=False, show_progress_bar=bar)
        n = {"n_pairs": len(pairs)}
    with eval_mode(model):
        raw = evaluator(model)
    metrics = {k: float(v) for k, v in raw.items() if not k.startswith("base_")}
    if shape == Shape.labeled_pairs:
        # Single-label classes: micro-averaged F1 is the accuracy.
        metrics = {"accuracy": metrics["f1_micro"], "f1_macro": metrics["f1_macro"]}
    return {**metrics, **n}


def format_table(report: dict[str, dict[str, float]]) -> str:
    return text_table(report)


class CrossEncoderTask(Task):
    name = "cross_encoder"

    def eval_shape(self, loss_shape: Shape) -> Shape:
        return Shape.labeled_pairs if loss_shape == Shape.labeled_pairs else Shape.query_candidates

    def load_data(self, data: Any, loss_shape: Shape) -> tuple[dict[str, Any], dict[str, Any]]:
        return load_text_task_data(data, loss_shape, self.name, self.eval_shape(loss_shape))

    def training_inputs(self, train, model, spec, settings, num_processes=1, prompts=None) -> TrainingInputs:
        return TrainingInputs(*training_inputs(train, model, spec, settings, num_processes, prompts))

    def train_step(self, spec: LossSpec, collate: Any) -> CrossEncoderStep:
        return CrossEncoderStep(collate.tokens)

    def evaluator(self, scoring: Scoring) -> tuple[Evaluate | None, str]:
        dev = scoring.sets.get("dev")
        if dev is None:
            return None, "spearman"
        return (lambda model: evaluate_set(model, dev, scoring.batch_size)), MAIN_METRICS[_shape_of(dev)]

    def final_figures(self, model, progress, evaluate, scoring: Scoring) -> dict[str, Any]:
        return dev_and_test(model, progress, evaluate, scoring.sets.get("test"), lambda m, ds: evaluate_set(m, ds, scoring.batch_size))

    def report_table(self, report: dict[str, Any]) -> str | None:
        shown = {k: v for k, v in report.items() if k in ("dev", "test") and v}
        return format_table(shown) if shown else None


TASK = CrossEncoderTask()
