"""Model kinds. A task owns what differs between them (its model is built by train/models/), how
rows become a batch, the loss call and batch statistics (its `TrainStep`), its evaluation and
main metric, and the table it prints. The loop, checkpoints, precision and distribution are
shared (train/loop.py, train/checkpoint.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    name: str
    # (loss shape) -> the shape of dev/test splits (None: the data's default)
    eval_shape: Callable[[str], str | None]
    # (train split: a cached Corpus for text tasks, model, loss spec, trainer settings, processes,
    #  prompts: column -> prompt name, bi-encoder only)
    # -> rows (a map-style dataset), collate, sampler
    training_inputs: Callable[..., tuple[Any, Callable, Any]]
    # (loss spec, collate of training_inputs) -> TrainStep
    train_step: Callable[[Any, Any], Any]
    # (eval sets, batch size, matryoshka dims, prompts) -> (evaluate(model) or None, main metric)
    evaluator: Callable[..., tuple[Callable | None, str]]
    # (model, progress, evaluate, eval sets, batch size, dims, prompts) -> the report in eval.json
    final_figures: Callable[..., dict[str, Any]]
    print_report: Callable[[dict[str, Any]], None]
    # (data config, loss shape) -> (splits, the sets that score the model: dev, test, ...)
    load_data: Callable[[Any, str], tuple[dict[str, Any], dict[str, Any]]]
    # (model, eval sets, batch size) -> figures of the model before training, or None
    baseline_figures: Callable[..., dict[str, Any]] | None = None
    # What a training row is, for throughput (the progress bar, trackers, metrics.jsonl): <unit>/s.
    unit: str = "pairs"


def get_task(name: str) -> Task:
    from train.tasks import bi_encoder, cross_encoder, image_text

    return {"bi_encoder": bi_encoder.TASK, "cross_encoder": cross_encoder.TASK, "image_text": image_text.TASK}[name]
