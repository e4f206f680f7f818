"""Range checks on a composed config, run before any data or model is loaded.

The schema (train/config/schema.py) catches misspelt keys and wrong types at compose time; these
catch values of the right type that cannot work (`trainer.batch_size=0`, `log_every=0`, a
warm-up ratio of 2), and report all of them in one message that names each key and its range.
Checks that need the model (`model.max_seq_length` against its position limit,
`loss.matryoshka_dims` against its embedding size) are in train/models/ and train/losses/registry.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from train.data.images import NAMES as IMAGE_DATA
from train.errors import ConfigError

# key -> (test, the valid range in words)
_AT_LEAST_1 = (lambda v: v >= 1, "an integer ≥ 1")
_AT_LEAST_0 = (lambda v: v >= 0, "an integer ≥ 0 (0 = off/all)")
_POSITIVE = (lambda v: math.isfinite(v) and v > 0, "a number > 0")
_NON_NEGATIVE = (lambda v: math.isfinite(v) and v >= 0, "a number ≥ 0")

TRAIN_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "trainer.epochs": (lambda v: v >= 0, "an integer ≥ 1 (or 0 with trainer.max_steps > 0)"),
    "trainer.max_steps": (lambda v: v >= 0, "an integer ≥ 0 (0 = use trainer.epochs)"),
    "trainer.batch_size": _AT_LEAST_1,
    "trainer.lr": _POSITIVE,
    "trainer.warmup_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "trainer.weight_decay": _NON_NEGATIVE,
    "trainer.max_grad_norm": (lambda v: v >= 0, "a number ≥ 0 (0 = no clipping)"),
    "trainer.grad_accum": _AT_LEAST_1,
    "trainer.eval_every": (lambda v: v >= 0, "an integer ≥ 0 (0 = every epoch)"),
    "trainer.save_every": (lambda v: v >= 0, "an integer ≥ 0 (0 = every epoch)"),
    "trainer.log_every": _AT_LEAST_1,
    "trainer.keep_last": (lambda v: v >= 0, "an integer ≥ 0 (0 = keep all)"),
    "model.csr_k": _AT_LEAST_1,
    "model.multi_vector_dim": _AT_LEAST_1,
    "model.query_length": (lambda v: v >= 3, "an integer ≥ 3 (a query's special tokens and one more), or null"),
    "model.document_length": (lambda v: v >= 3, "an integer ≥ 3, or null"),
    "loss.document_regularizer_weight": _NON_NEGATIVE,
    "loss.query_regularizer_weight": _NON_NEGATIVE,
    "trainer.eval_batch_size": _AT_LEAST_1,
    "trainer.bucket_windows": (lambda v: v >= 0, "an integer ≥ 0 (0 = random batches)"),
    "trainer.forward_chunk_rows": (lambda v: v >= 0, "an integer ≥ 0 (0 = one forward pass), or null (the default)"),
    "trainer.num_workers": (lambda v: v >= 0, "an integer ≥ 0, or null (the default: workers on CUDA)"),
    "trainer.pad_to_multiple_of": _AT_LEAST_1,
    "model.max_seq_length": _AT_LEAST_1,
    "loss.scale": _POSITIVE,
    "loss.mini_batch_size": _AT_LEAST_1,
    "loss.margin": _NON_NEGATIVE,
    "loss.num_labels": (lambda v: v >= 2, "an integer ≥ 2"),
    "loss.num_negatives": _AT_LEAST_1,
    "model.projection_dim": (lambda v: v >= 1, "an integer ≥ 1, or null"),
    "data.max_train_samples": _AT_LEAST_0,
    "data.num_negatives": (lambda v: v >= 0, "an integer ≥ 0 (0 = pairs), or null (all the candidates file has)"),
    "data.max_eval_samples": _AT_LEAST_0,
    "data.num_proc": (lambda v: v >= 1, "an integer ≥ 1, or null (the machine's cores)"),
    "peft.r": _AT_LEAST_1,
    "peft.alpha": _AT_LEAST_1,
    "peft.dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
}

_SEARCH_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "fusion_weight": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "latency_queries": _AT_LEAST_0,
}

EVALUATE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **_SEARCH_RULES,
    "batch_size": _AT_LEAST_1,
    "model.max_seq_length": _AT_LEAST_1,
    "data.max_eval_samples": _AT_LEAST_0,
}

RETRIEVE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **_SEARCH_RULES,
    "search.rescore_multiplier": _AT_LEAST_1,
    "batch_size": _AT_LEAST_1,
    "max_queries": _AT_LEAST_0,
    "full_rerank_max_corpus": _AT_LEAST_0,
    "model.max_seq_length": _AT_LEAST_1,
    "data.max_eval_samples": _AT_LEAST_0,
}


SCORE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "chunk_queries": _AT_LEAST_1,
    "batch_size": _AT_LEAST_1,
}


EXPORT_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "calibration_samples": (lambda v: v >= 2, "an integer ≥ 2"),
    "check_samples": _AT_LEAST_1,
    "truncate_dim": _AT_LEAST_1,
}


MINE_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_negatives": _AT_LEAST_1,
    "search.rescore_multiplier": _AT_LEAST_1,
    "range_min": (lambda v: v >= 0, "an integer ≥ 0"),
    "range_max": (lambda v: v >= 1, "an integer ≥ 1, or null"),
    "absolute_margin": (lambda v: math.isfinite(v) and v >= 0, "a number ≥ 0, or null"),
    "relative_margin": (lambda v: 0 <= v <= 1, "a number in [0, 1], or null"),
    "max_score": (lambda v: math.isfinite(v), "a number, or null"),
    "batch_size": _AT_LEAST_1,
    "model.max_seq_length": _AT_LEAST_1,
    "data.max_train_samples": _AT_LEAST_0,
    "data.max_eval_samples": _AT_LEAST_0,
}


def _problems(cfg: DictConfig, rules: dict[str, tuple[Callable[[Any], bool], str]]) -> list[str]:
    problems = []
    for key, (ok, valid) in rules.items():
        section, _, name = key.rpartition(".")
        node = cfg.get(section) if section else cfg
        if node is None or name not in node:
            continue
        value = node[name]
        if value is not None and not ok(value):  # null: the default of what uses it
            problems.append(f"{key}={value} (must be {valid})")
    return problems




def _caption_template_problem(template: str) -> str | None:
    from train.data.images import check_caption_template

    try:
        check_caption_template(template)
    except ConfigError as e:
        return str(e).rstrip(".")
    return None


def _data_problems(cfg: DictConfig) -> list[str]:
    data = cfg.data
    problems = []
    if not data.score_max > data.score_min:
        problems.append(f"data.score_min={data.score_min}, data.score_max={data.score_max} (score_max must be greater)")
    template = data.get("caption_template")
    if template is not None and data.name in ("image_folder", "fashion_mnist"):  # the data built from class names
        problems.append(_caption_template_problem(template))
    return [p for p in problems if p]


def _task_data_problems(cfg: DictConfig) -> list[str]:
    images, task = cfg.data.name in IMAGE_DATA, cfg.task.name.value
    if task == "image_text" and not images:
        return [f"data={cfg.data.name} with task=image_text (images and captions are needed: data={', '.join(IMAGE_DATA)})"]
    if task != "image_text" and images:
        return [f"data={cfg.data.name} holds images: it trains task=image_text, not task={task}"]
    if task != "bi_encoder" and cfg.data.get("prompts"):
        return [f"data.prompts with task={task} (prompts apply to a bi-encoder's texts)"]
    if task == "image_text" and "peft" in cfg and cfg.peft.method.value != "none":
        return ["peft with task=image_text (adapters apply to task=bi_encoder and task=cross_encoder)"]
    if task == "image_text" and (cfg.model.get("dtype") is not None or cfg.model.get("gradient_checkpointing")):
        return ["model.dtype and model.gradient_checkpointing with task=image_text (they apply to task=bi_encoder and task=cross_encoder)"]
    return []


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("Invalid settings: " + "; ".join(problems) + ". Nothing was loaded or written.")


def check_train_config(cfg: DictConfig) -> None:
    problems = _problems(cfg, TRAIN_RULES) + _data_problems(cfg)
    trainer = cfg.trainer
    if trainer.epochs == 0 and trainer.max_steps == 0:
        problems.append("trainer.epochs=0 with trainer.max_steps=0 (nothing to train: set one of them ≥ 1)")
    if "task" in cfg:
        from train.losses.registry import loss_spec

        problems += _task_data_problems(cfg)
        try:
            if loss_spec(cfg.task.name.value, cfg.loss.name.value).needs_guide and not cfg.loss.get("guide"):
                problems.append(f"loss={cfg.loss.name.value} without loss.guide (its guide model: a Hub id, a local folder or a conf/model preset, e.g. loss.guide=minilm)")
        except ConfigError as e:
            problems.append(str(e).rstrip("."))
    if "report_to" in trainer:
        from train.engine.tracking import report_to_problems

        problems += report_to_problems(list(trainer.report_to))
    dims = list(cfg.loss.matryoshka_dims)
    if any(d < 1 for d in dims) or len(set(dims)) != len(dims):
        problems.append(f"loss.matryoshka_dims={dims} (must be distinct integers ≥ 1)")
    _raise(problems)
    if cfg.get("mixture") is not None and cfg.mixture.datasets:
        from train.config.mixture import mixture_parts

        for part in mixture_parts(cfg):  # each dataset as its own run would be checked
            check_train_config(part.cfg)


def check_evaluate_config(cfg: DictConfig) -> None:
    _raise(_problems(cfg, EVALUATE_RULES) + _data_problems(cfg))


def check_score_config(cfg: DictConfig) -> None:
    problems = _problems(cfg, SCORE_RULES) + _data_problems(cfg)
    if cfg.split not in ("train", "dev", "test"):
        problems.append(f"split={cfg.split} (must be train, dev or test)")
    _raise(problems)


def check_export_config(cfg: DictConfig) -> None:
    _raise(_problems(cfg, EXPORT_RULES))


def check_mine_config(cfg: DictConfig) -> None:
    problems = _problems(cfg, MINE_RULES) + _data_problems(cfg)
    if cfg.split not in ("train", "dev", "test"):
        problems.append(f"split={cfg.split} (must be train, dev or test)")
    if cfg.range_max is not None and cfg.range_max - cfg.range_min < cfg.num_negatives:
        problems.append(
            f"range_max={cfg.range_max} with range_min={cfg.range_min} leaves {cfg.range_max - cfg.range_min} ranks, "
            f"fewer than num_negatives={cfg.num_negatives} (raise range_max or leave it null)"
        )
    if cfg.search.precision.value != "float32" and not cfg.search.rescore:
        problems.append(f"search.precision={cfg.search.precision.value} with search.rescore=false: the margins compare each "
                        "candidate's score with its positive's float32 cosine, so quantized candidates must be rescored (search.rescore=true)")
    _raise(problems)


def check_retrieve_config(cfg: DictConfig) -> None:
    problems = _problems(cfg, RETRIEVE_RULES) + _data_problems(cfg)
    ks = list(cfg.rerank_top_k)
    if any(k < 1 for k in ks):
        problems.append(f"rerank_top_k={ks} (must be integers ≥ 1)")
    _raise(problems)
