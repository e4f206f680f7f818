"""What a task is: `Task`, the interface every model kind implements (its data, collation,
training step, evaluation and printed table), and the helpers the kinds share.

The loop (train/engine/loop.py) knows no batch layout; a task's `TrainStep`
(train/engine/task_step.py) does.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from torch import nn

from train.data.shapes import Shape
from train.engine.settings import TrainerConfig
from train.engine.task_step import TrainStep
from train.losses.registry import LossSpec


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


def check_teacher_scores(corpus: Any, spec: LossSpec) -> None:
    """A distillation loss needs the teacher's scores in the training rows."""
    from train.errors import DataError

    if spec.needs_scores and "scores" not in corpus.column_names:
        raise DataError(
            "This loss learns a teacher's scores, and the training rows carry none: train on a candidates file with "
            "them (python -m train.score teacher=<dir> ... writes one) and data.columns.scores=scores."
        )


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


@dataclass
class Scoring:
    """What scores a model and how: the task's sets (dev, test, retrieval_dev, ...), the batch size,
    Matryoshka sizes (each one scored too) and column -> prompt name."""

    sets: dict[str, Any]
    batch_size: int
    dims: list[int] = field(default_factory=list)
    prompts: dict[str, str] = field(default_factory=dict)


class TrainingInputs(NamedTuple):
    rows: Any  # a map-style dataset the loader gathers a batch at a time
    collate: Callable[[list[Any]], dict[str, Any]]
    sampler: Any  # yields index batches; has use_epoch(epoch)


Evaluate = Callable[[nn.Module], dict[str, float]]


class Task(ABC):
    """A model kind: what run.py asks it for, in the order it asks. The loop sees only its
    `TrainStep`; the rest (data, collation, evaluation, the printed table) stays here."""

    name: ClassVar[str]
    unit: ClassVar[str] = "pairs"  # what a training row is: throughput is <unit>/s

    def eval_shape(self, loss_shape: Shape) -> Shape | None:
        """The shape dev and test splits are read in; None: the data's own."""
        return None

    @abstractmethod
    def load_data(self, data: Any, loss_shape: Shape) -> tuple[dict[str, Any], dict[str, Any]]:
        """(splits, the sets that score the model) from the data config section."""

    @abstractmethod
    def training_inputs(
        self, train: Any, model: nn.Module, spec: LossSpec, settings: TrainerConfig, num_processes: int = 1,
        prompts: Mapping[str, str] | None = None,
    ) -> TrainingInputs:
        """The training split (a cached Corpus for text tasks) as rows, collator and sampler."""

    @abstractmethod
    def train_step(self, spec: LossSpec, collate: Any) -> TrainStep:
        """What the loop calls on each collated batch."""

    @abstractmethod
    def evaluator(self, scoring: Scoring) -> tuple[Evaluate | None, str]:
        """The dev evaluation the loop runs (None: no dev set), and the metric that picks best/."""

    def baseline_figures(self, model: nn.Module, scoring: Scoring) -> dict[str, Any]:
        """Figures of the model before training, reported beside the trained ones."""
        return {}

    @abstractmethod
    def final_figures(self, model: nn.Module, progress: Any, evaluate: Evaluate | None, scoring: Scoring) -> dict[str, Any]:
        """The trained model's figures for eval.json (dev, test, ...)."""

    @abstractmethod
    def report_table(self, report: dict[str, Any]) -> str | None:
        """The table printed at the end of a run; None: nothing to show."""

    def print_report(self, report: dict[str, Any]) -> None:
        table = self.report_table(report)
        if table:
            print(table)
