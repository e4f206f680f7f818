"""The image–text side of `python -m train.bench --task image_text`: this project's loop against
SentenceTransformerTrainer on Fashion-MNIST, the same model, data, loss, batch size and epochs.

Model: the offline dual encoder (MiniLM text tower, locked, beside a ViT from scratch), built
alike on both sides from one seed; `--vit b32` makes the image tower ViT-B/32-sized (224 px,
patch 32, 12 layers of 768) for GPU figures. Loss: CLIP's (train/losses/clip.py) at a fixed
temperature on both sides: the library's trainer optimizes only the model's parameters, and the
library's own contrastive losses cannot mask repeated captions, which every Fashion-MNIST batch
has, so its trainer gets the same loss module (wrapped for its `(features, labels)` call, the
caption ids as labels) and the comparison measures the training machinery alone.

Data: ours reads images lazily from the IDX file in DataLoader workers; the library's trainer
takes a `datasets` table with an Image column (PNG bytes, decoded per row by `datasets`), the way
image data comes from the Hub. Both use `--workers` loader processes. The table is built before
the timed span, as a downloaded dataset would be.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

VIT_B32 = {"image_size": 224, "patch_size": 32, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def _model(args: argparse.Namespace):
    from train.bench.common import resolve_model
    from train.models.image_text import build_image_text_model

    name, package = resolve_model(args.model)
    torch.manual_seed(args.seed)  # the scratch tower and projection start alike on both sides
    model = build_image_text_model(name, 32, "mean", False, package, None, image_tower="scratch",
                        image_config=VIT_B32 if args.vit == "b32" else {}, freeze_text=True)
    if args.device != "cpu":
        model.to(args.device)
    return model


def _splits(args: argparse.Namespace):
    from train.data.images import load_image_text_splits

    return load_image_text_splits(
        "fashion_mnist", ("train", "dev"), Path(args.data_dir), {}, None, "image", "text", "a photo of a {label}", None, "error",
        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples,
    )


def _flops(model, counts: dict[str, int], seconds: float, precision: str, args: argparse.Namespace) -> dict[str, float]:
    """Model FLOP/s (and MFU on a known GPU): the image tower trained (6 FLOPs a weight a token),
    the locked text tower run forward only (2), over the tokens each side actually ran."""
    from train.bench.flops import matmul_weights, peak_tflops
    from train.models.image_text import text_encoder_of

    router = model[0]
    vit = router.sub_modules["image"][0].auto_model
    text = text_encoder_of(model).auto_model
    c = vit.config
    per_image = (c.image_size // c.patch_size) ** 2 + 1
    image_flops = counts["images"] * per_image * (6 * matmul_weights(vit) + 12 * c.num_hidden_layers * c.hidden_size * per_image)
    text_flops = counts["text_tokens"] * 2 * matmul_weights(text)
    achieved = (image_flops + text_flops) / seconds / 1e12
    out = {"model_tflops_per_s": achieved}
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or peak_tflops(device, precision)
    if peak:
        out["mfu"] = achieved / peak
    return out


def _score(model, splits, args) -> float:
    from train.tasks.image_text import evaluate_split

    if args.skip_eval:
        return float("nan")
    return evaluate_split(model, splits["dev"], 256)["zero_shot_accuracy"]


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    from train.bench.common import peak_memory, profiled, timed_train
    from train.bench.common import precision as resolve
    from train.config.schema import MixedPrecision, TrainerConfig
    from train.losses.registry import build_loss

    model, splits = _model(args), _splits(args)
    precision = resolve(args.precision, args.device)
    settings = TrainerConfig(
        epochs=1, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.1, weight_decay=0.0,
        mixed_precision=MixedPrecision(precision), seed=args.seed, eval_every=10**9, save_every=10**9, log_every=10**9,
        num_workers=args.workers,
    )
    loss, spec = build_loss("clip", model, task="image_text", learn_scale=False)
    with profiled(args):
        result, seconds = timed_train("image_text", model, loss, spec, splits["train"], settings, precision, args.device)
    # The task's batch statistics count the text tokens its tower ran (each distinct caption once).
    counts = {"images": result.pairs, "text_tokens": result.real_tokens}
    return {
        "seconds": seconds, **counts, **_flops(model, counts, seconds, result.mixed_precision, args),
        "dev_zero_shot": _score(model, splits, args), **peak_memory(args.device), "precision": result.mixed_precision,
    }


class TrainerClipLoss(nn.Module):
    """ClipLoss in the library trainer's call: (features of each column, labels = caption ids)."""

    def __init__(self, model: nn.Module, counts: dict[str, int]) -> None:
        super().__init__()
        from train.losses.clip import ClipLoss

        self.model = model
        self.clip = ClipLoss(model, learnable=False)
        self.counts = counts

    def forward(self, features: list[dict[str, Any]], labels: torch.Tensor) -> torch.Tensor:
        images, texts = (self.model(f)["sentence_embedding"] for f in features)
        self.counts["images"] += len(labels)
        self.counts["text_tokens"] += int(features[1]["attention_mask"].sum())
        return self.clip.from_embeddings(images.float(), texts.float(), labels)


def _image_table(split) -> Any:
    """The split as the library's trainer takes image data: an Image column (PNG bytes), the caption, its id."""
    import datasets

    from train.data.image_decoding import open_image

    captions = list(dict.fromkeys(split["text"]))
    ids = {c: i for i, c in enumerate(captions)}
    rows = {"image": [open_image(r) for r in split["image"]], "text": split["text"], "label": [ids[t] for t in split["text"]]}
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict(rows, features=features)


def run_st_trainer(args: argparse.Namespace) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from train.bench.common import peak_memory
    from train.bench.common import precision as resolve

    model, splits = _model(args), _splits(args)
    table = _image_table(splits["train"])
    counts = {"images": 0, "text_tokens": 0}
    precision = resolve(args.st_precision, args.device)
    loss = TrainerClipLoss(model, counts)
    with tempfile.TemporaryDirectory() as out:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=out, num_train_epochs=1, max_steps=args.max_steps if args.max_steps > 0 else -1,
            per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=0.1, weight_decay=0.0,
            seed=args.seed, bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=args.device == "cpu",
            save_strategy="no", eval_strategy="no", report_to="none", logging_steps=10**9, disable_tqdm=True,
            dataloader_num_workers=args.workers, router_mapping={"image": "image", "text": "text"},
        )
        started = time.perf_counter()
        trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=table, loss=loss)
        trainer.train()
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds, **counts, **_flops(model, counts, seconds, precision, args),
        "dev_zero_shot": _score(model, splits, args), **peak_memory(args.device), "precision": precision,
    }
