"""What a task is (`Task`: the pieces run.py asks it for) and what the loop needs from it: the
loss of a batch, and what the batch held.

The loop (train/engine/loop.py) knows no batch layout; a task's `TrainStep` does. Tasks themselves
(train/tasks/bi_encoder.py, cross_encoder.py) also own their model, data shape, collation and
evaluator; run.py asks them for those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any




def on_cuda() -> bool:
    from accelerate import PartialState

    return PartialState().device.type == "cuda"


def pad_multiple(setting: int | None) -> int:
    """trainer.pad_to_multiple_of; null: 8 on CUDA (tensor-core tiles), 1 on a CPU."""
    if setting is not None:
        return setting
    return 8 if on_cuda() else 1


def padding_free_layout(model: Any, settings: Any) -> Any:
    """The padding-free layout of the model's batches (train/models/packed.py), or None (padded)
    when trainer.padding_free is off or the model does not allow it; the log says which."""
    import logging

    from train.models.packed import pack_layout

    log = logging.getLogger("train")
    if not settings.padding_free:
        return None
    layout, why_not = pack_layout(model, pad_multiple(settings.pad_to_multiple_of))
    if layout is None:
        log.info("Padded batches (not padding-free: %s)", why_not)
    else:
        log.info("Padding-free batches: sentences packed end to end, only the attention core padded")
    return layout


def dev_and_test(model: Any, progress: Any, evaluate: Callable | None, test_set: Any, score: Callable[[Any, Any], dict]) -> dict[str, Any]:
    """The final model's dev figures (the loop's last evaluation when it was at the last step)
    and its test figures (`score(model, test_set)`)."""
    report: dict[str, Any] = {}
    if evaluate is not None:
        fresh = progress.last_eval is not None and progress.last_eval_step == progress.step
        report["dev"] = progress.last_eval if fresh else evaluate(model)
    if test_set is not None:
        report["test"] = score(model, test_set)
    return report


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
