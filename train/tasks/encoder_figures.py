"""The dev, test and printed figures of a task whose model embeds a text at a time as the
bi-encoder's does, but is scored by figures of its own kind (sparse dot products, MaxSim):
`sts(model, scored pairs, batch size)` and `retrieval(model, rows or a RetrievalSplit, batch size)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from train.tasks.base import Evaluate, Scoring
from train.tasks.bi_encoder import BiEncoderTask


class EncoderFiguresTask(BiEncoderTask):
    sts: ClassVar[Callable[..., dict[str, float]]]
    retrieval: ClassVar[Callable[..., dict[str, float]]]
    sts_metric: ClassVar[str]  # picks best/ when there is an STS dev set
    retrieval_metric: ClassVar[str] = "retrieval_ndcg@10"

    def evaluator(self, scoring: Scoring) -> tuple[Evaluate | None, str]:
        sts_dev, retrieval_dev = scoring.sets.get("dev"), scoring.sets.get("retrieval_dev")
        if sts_dev is None and retrieval_dev is None:
            return None, self.retrieval_metric

        def evaluate(model) -> dict[str, float]:
            metrics: dict[str, float] = {}
            if sts_dev is not None:
                metrics.update(type(self).sts(model, sts_dev, scoring.batch_size))
            if retrieval_dev is not None:
                metrics.update(type(self).retrieval(model, retrieval_dev, scoring.batch_size))
            return metrics

        return evaluate, (self.sts_metric if sts_dev is not None else self.retrieval_metric)

    def _sts(self, model, ds, scoring: Scoring) -> dict[str, float]:
        return type(self).sts(model, ds, scoring.batch_size)

    def _retrieval(self, model, data, scoring: Scoring) -> dict[str, float]:
        return {k.removeprefix("retrieval_"): v for k, v in type(self).retrieval(model, data, scoring.batch_size).items()}

    def report_table(self, report: dict[str, Any]) -> str | None:
        lines = []
        for split in ("dev", "test", "retrieval_dev", "retrieval_test"):
            if split in report:
                lines.append(f"{split}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in report[split].items()))
        return "\n".join(lines) or None
