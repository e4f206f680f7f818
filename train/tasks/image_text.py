"""Image–text (CLIP-style): images and captions into one space, trained contrastively.

Rows hold an image reference and a caption; DataLoader workers decode and preprocess the images
of a batch (train/data/images.py), so a dataset of any size trains in bounded memory. The loss
sees both embeddings and the caption ids, so that repeated captions are masked
(train/losses/clip.py). Dev figures: zero-shot classification accuracy (data with classes),
image→text and text→image Recall@1/5/10; the run reports them before and after training.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import nn

from train.data.build import build_image_text_data
from train.engine.settings import TrainerConfig
from train.data.batching import NoDuplicatesBatchSampler, text_hashes
from train.data.checks import check_batch_fits
from train.data.image_decoding import open_image
from train.data.shapes import Shape
from train.errors import DataError
from train.models.image_text import (
    image_processor_of,
    text_encoder_of,
)
from train.losses.registry import LossSpec
from train.evaluation.bars import eval_bar, long_eval
from train.engine.task_step import BatchStats
from train.tasks.base import Evaluate, Scoring, Task, TrainingInputs, dev_and_test
from train.evaluation.eval_mode import eval_mode
from train.evaluation.tables import text_table

log = logging.getLogger("train")

RECALL_AT = (1, 5, 10)


def load_images(rows: Sequence[dict[str, Any]]) -> list[Any]:
    images = []
    for r in rows:
        try:
            images.append(open_image(r["image"]))
        except DataError as e:
            raise DataError(f"row {r['row']}: {e}") from None
    return images


class Collate:
    """Rows -> image features, caption features and caption ids. Runs in DataLoader workers:
    it holds the image processor and the tokenizer, not the model."""

    def __init__(self, image_processor: Any, tokenizer: Any, max_seq_length: int, caption_ids: dict[str, int]) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.caption_ids = caption_ids

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        pixels = self.image_processor(images=load_images(rows), return_tensors="pt")["pixel_values"]
        captions = [r["text"] for r in rows]
        # Each distinct caption through the text tower once (class captions repeat a lot);
        # `caption_rows` maps the batch's rows back to them.
        distinct = list(dict.fromkeys(captions))
        position = {c: i for i, c in enumerate(distinct)}
        texts = dict(self.tokenizer(distinct, padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"))
        mask = texts["attention_mask"]
        return {
            "images": {"pixel_values": pixels, "modality": "image"},
            "texts": {**texts, "modality": "text"},
            "caption_rows": torch.tensor([position[c] for c in captions]),
            "caption_ids": torch.tensor([self.caption_ids[c] for c in captions]),
            # Counted here, on the host (in a worker), so the step reads nothing from the device.
            "counts": [len(rows), int(mask.sum()), mask.numel()],
        }


def frozen_modules(model: nn.Module) -> list[nn.Module]:
    """The outermost modules whose every parameter is frozen (model.freeze_text/freeze_image)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(module)
        else:
            for child in module.children():
                visit(child)

    visit(model)
    return found


def _embed(model: nn.Module, features: dict[str, Any]) -> torch.Tensor:
    return model(dict(features))["sentence_embedding"]


class ClipStep:
    # Both towers run through the step model (DDP's wrapper under several processes): two forward
    # passes before one backward, reduced in DDP's buckets.
    def __init__(self, cached: bool) -> None:
        self.cached = cached
        self.frozen: list[nn.Module] | None = None

    def loss(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        # A frozen tower runs as at inference, without dropout (LiT's locked tower gives fixed
        # embeddings); the loop puts the whole model in train mode.
        if self.frozen is None:
            self.frozen = frozen_modules(model)
        for module in self.frozen:
            module.eval()
        if self.cached:
            # sentence-transformers' GradCache loss embeds in mini-batches itself, a row a caption.
            texts = {k: v[batch["caption_rows"]] if torch.is_tensor(v) else v for k, v in batch["texts"].items()}
            return loss_fn([batch["images"], texts], None)
        images = _embed(model, batch["images"])  # fp32 outputs: the loss in fp32, like the bi-encoder's
        texts = _embed(model, batch["texts"])[batch["caption_rows"]]
        return loss_fn.from_embeddings(images, texts, batch["caption_ids"])

    def stats(self, batch: dict[str, Any]) -> BatchStats:
        # Text tokens only (an image is always its fixed number of patches), of the distinct captions embedded.
        return BatchStats(*batch["counts"])

    def forward_contexts(self, model: nn.Module, batch: dict[str, Any] | None = None) -> list[Callable[[], AbstractContextManager]]:
        return []


def training_inputs(
    train_split: Any, model: Any, spec: LossSpec, settings: TrainerConfig, num_processes: int = 1, prompts: Any = None
) -> tuple[list[dict[str, Any]], Collate, Any]:
    """Rows (image reference, caption), the collator and the batch sampler."""
    rows = train_split.select_columns(["image", "text", "row"]).to_list()
    captions = train_split["text"]
    caption_ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    text = text_encoder_of(model)
    collate = Collate(image_processor_of(model), text.tokenizer, model.max_seq_length or 77, caption_ids)
    cached = not spec.from_embeddings
    # Keys that must not repeat in a batch. The masked loss needs none (each row is its own key):
    # the sampler only keeps every global batch full. The library's cached loss cannot mask, so
    # there a caption repeats in no batch.
    keys = text_hashes([(c,) for c in captions]) if cached else np.arange(len(rows), dtype=np.int64)[:, None]
    sampler = NoDuplicatesBatchSampler(keys, settings.batch_size, settings.seed, group=num_processes)
    if cached and len(caption_ids) < settings.batch_size:
        raise DataError(
            f"loss=cached_clip keeps repeated captions out of a batch, and the training data has only {len(caption_ids)} "
            f"distinct captions, fewer than trainer.batch_size={settings.batch_size}. Use loss=clip (it masks repeats)."
        )
    check_batch_fits(len(rows), settings.batch_size, num_processes, len(sampler) // num_processes)
    return rows, collate, sampler


# --- Evaluation -------------------------------------------------------------------------------


def encode_images(model: Any, rows: Sequence[dict[str, Any]], batch_size: int, progress: bool = False) -> np.ndarray:
    """Embeddings of the rows' images, decoded a batch at a time (bounded memory); `progress`: a bar."""
    out = []
    starts = range(0, len(rows), batch_size)
    for start in eval_bar(starts, len(starts), "embedding images", progress):
        chunk = load_images(rows[start : start + batch_size])
        out.append(model.encode(chunk, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True))
    return np.concatenate(out) if out else np.zeros((0, model.get_embedding_dimension()), dtype=np.float32)


def _hits(scores: np.ndarray, relevant: Callable[[np.ndarray], np.ndarray], ks: Sequence[int]) -> dict[int, int]:
    """For each k, how many query rows have a relevant item among their k best."""
    top = np.argsort(-scores, axis=1)[:, : max(ks)]
    found = relevant(top)  # bool [queries, max k]
    return {k: int(found[:, :k].any(axis=1).sum()) for k in ks}


def evaluate_split(model: Any, ds: Any, batch_size: int, chunk: int = 1024) -> dict[str, float]:
    """Image→text: each image against the split's distinct captions (right: its own caption).
    Text→image: each distinct caption against all images (right: any image it describes).
    With classes (a `label` column), image→text Recall@1 is zero-shot classification accuracy."""
    rows = ds.select_columns(["image", "text", "row"]).to_list()
    captions = list(dict.fromkeys(r["text"] for r in rows))
    index = {c: i for i, c in enumerate(captions)}
    gold = np.array([index[r["text"]] for r in rows], dtype=np.int64)
    with eval_mode(model), torch.no_grad():
        text_emb = model.encode(
            captions, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=long_eval(len(captions))
        )
        image_emb = encode_images(model, rows, batch_size, long_eval(len(rows)))
    ks = [k for k in RECALL_AT if k <= len(captions)] or [1]
    i2t = {k: 0 for k in ks}
    for start in range(0, len(rows), chunk):
        scores = image_emb[start : start + chunk] @ text_emb.T
        g = gold[start : start + chunk]
        for k, n in _hits(scores, lambda top: top == g[:, None], ks).items():
            i2t[k] += n
    t2i_ks = [k for k in RECALL_AT if k <= len(rows)] or [1]
    t2i = {k: 0 for k in t2i_ks}
    for start in range(0, len(captions), chunk):
        scores = text_emb[start : start + chunk] @ image_emb.T
        q = np.arange(start, start + len(scores))
        for k, n in _hits(scores, lambda top: gold[top] == q[:, None], t2i_ks).items():
            t2i[k] += n
    metrics: dict[str, float] = {}
    if "label" in ds.column_names:
        metrics["zero_shot_accuracy"] = i2t[1] / len(rows)
    metrics.update({f"image_to_text_recall@{k}": n / len(rows) for k, n in i2t.items()})
    metrics.update({f"text_to_image_recall@{k}": n / len(captions) for k, n in t2i.items()})
    metrics.update({"n_images": len(rows), "n_captions": len(captions)})
    return metrics


def main_metric_of(ds: Any) -> str:
    return "zero_shot_accuracy" if "label" in ds.column_names else "image_to_text_recall@1"


def format_table(report: dict[str, Any]) -> str:
    rows = {name: report[name] for split in ("dev", "test") for name in (f"{split}_before", split) if report.get(name)}
    columns = [c for c in dict.fromkeys(k for m in rows.values() for k in m) if not c.startswith("n_")]
    return text_table(rows, columns, label="", headers={c: c.replace("_recall", " R") for c in columns})


class ImageTextTask(Task):
    name = "image_text"
    unit = "images"

    def load_data(self, data: Any, loss_shape: Shape) -> tuple[dict[str, Any], dict[str, Any]]:
        return build_image_text_data(data, loss_shape)

    def training_inputs(self, train, model, spec, settings, num_processes=1, prompts=None) -> TrainingInputs:
        return TrainingInputs(*training_inputs(train, model, spec, settings, num_processes, prompts))

    def train_step(self, spec: LossSpec, collate: Any) -> ClipStep:
        return ClipStep(cached=not spec.from_embeddings)

    def evaluator(self, scoring: Scoring) -> tuple[Evaluate | None, str]:
        dev = scoring.sets.get("dev")
        if dev is None:
            return None, "zero_shot_accuracy"
        return (lambda model: evaluate_split(model, dev, scoring.batch_size)), main_metric_of(dev)

    def baseline_figures(self, model, scoring: Scoring) -> dict[str, Any]:
        """The untrained model's dev and test figures: what training is measured against."""
        return {f"{split}_before": evaluate_split(model, ds, scoring.batch_size) for split, ds in scoring.sets.items() if split in ("dev", "test")}

    def final_figures(self, model, progress, evaluate, scoring: Scoring) -> dict[str, Any]:
        return dev_and_test(model, progress, evaluate, scoring.sets.get("test"), lambda m, ds: evaluate_split(m, ds, scoring.batch_size))

    def report_table(self, report: dict[str, Any]) -> str | None:
        return format_table(report) if any(report.get(k) for k in ("dev", "test", "dev_before", "test_before")) else None


TASK = ImageTextTask()
