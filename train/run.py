"""run(cfg): build model, data and loss from the config, hand plain objects to the loop, report.

An experiment with `stages` runs them in order in one run dir (stage-1-<name>/, ...), each
stage starting from the previous stage's final model.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import PartialState
from omegaconf import DictConfig, OmegaConf

from train import checkpoint
from train.builders import build_data, build_loss_from, build_model, build_sts_eval_data, run_dir_from_hydra, setup_logging
from train.config_checks import check_train_config
from train.config import LossConfig, TrainerConfig, to_plain
from train.data.batching import (
    BucketBatchSampler,
    Collator,
    NoDuplicatesBatchSampler,
    label_column,
    text_columns,
    tokenize_columns,
)
from train.errors import DataError, RunDirError
from train.evaluation import (
    MAIN_METRIC,
    RETRIEVAL_MAIN_METRIC,
    evaluate_retrieval,
    evaluate_sts_dims,
    format_table,
    retrieval_evaluator,
)
from train.data.checks import check_batch_fits, check_scorable, report_overlap
from train.losses import LossSpec
from train.loop import clear_run_outputs, resolve_resume, train

log = logging.getLogger("train")


def check_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Never replace a finished run's results without being asked to."""
    finished = (run_dir / "final").exists() or (run_dir / "eval.json").exists()
    if resuming or not finished:
        return
    if not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a finished run (final/ or eval.json). Choose another "
            "hydra.run.dir, resume it with trainer.resume=latest, or replace it with trainer.overwrite=true."
        )
    log.warning("trainer.overwrite=true: removing the previous results in %s", run_dir)
    if PartialState().is_main_process:
        clear_run_outputs(run_dir)
    PartialState().wait_for_everyone()


def make_evaluate(
    sts: dict[str, Any], retrieval_dev: Any, batch_size: int, dims: list[int]
) -> tuple[Callable[[Any], dict[str, float]] | None, str]:
    """The dev evaluation the loop runs, and the metric that picks best/."""
    if "dev" not in sts and retrieval_dev is None:
        return None, MAIN_METRIC
    ir = retrieval_evaluator(retrieval_dev, batch_size) if retrieval_dev is not None else None

    def evaluate(model) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if "dev" in sts:
            metrics.update(evaluate_sts_dims(model, sts["dev"], batch_size, dims))
        if ir is not None:
            metrics.update(evaluate_retrieval(model, ir))
        return metrics

    return evaluate, (MAIN_METRIC if "dev" in sts else RETRIEVAL_MAIN_METRIC)


def training_inputs(
    train_split: Any, model: Any, spec: LossSpec, settings: TrainerConfig, num_processes: int = 1
) -> tuple[list[dict[str, Any]], Collator, Any]:
    """Tokenized rows, the collator and the batch sampler for a training split."""
    tokenizer = model.tokenizer
    train_ds = tokenize_columns(train_split, tokenizer, model.max_seq_length)
    columns = tuple(text_columns(train_split))
    label = label_column(train_split)
    rows = train_ds.select_columns([f"ids_{c}" for c in columns] + ([label] if label else [])).to_list()
    collate = Collator(
        pad_token_id=tokenizer.pad_token_id,
        padding_side=tokenizer.padding_side,
        token_type_ids="token_type_ids" in tokenizer.model_input_names,
        chunk_rows=settings.forward_chunk_rows,
        columns=columns,
        label=label,
        merge=spec.from_embeddings,
    )
    if spec.data in ("triplets", "texts"):
        # In-batch negatives: a text twice in a (global) batch would be its own negative.
        texts = list(zip(*(train_split[c] for c in columns)))
        sampler = NoDuplicatesBatchSampler(texts, settings.batch_size, settings.seed, group=num_processes)
        if len(sampler) and sampler.dropped:
            log.info("%d of %d rows fit no duplicate-free global batch of %d in epoch 1 and are left out of it (each epoch shuffles anew)",
                     sampler.dropped, len(rows), settings.batch_size * num_processes)
    else:
        sampler = BucketBatchSampler(train_ds["length"], settings.batch_size, settings.seed, settings.bucket_windows)
    check_batch_fits(len(rows), settings.batch_size, num_processes, len(sampler) // num_processes)
    return rows, collate, sampler


def _eval_set_name(data: DictConfig, split: str) -> str:
    path = data.get(f"{split}_path")
    return str(path) if path and not data.sts_dev else f"data={data.sts_dev or data.name} ({split} split)"


def load_stage_data(data: DictConfig, shape: str) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """The run's splits, its STS evaluation sets and its retrieval dev set, checked."""
    splits = build_data(data, ("train", "dev", "test"), shape)
    if "train" not in splits:
        raise DataError(f"data={data.name}: no train split to train on (set data.train_path).")
    sts_eval = build_sts_eval_data(data, splits)
    for split, ds in sts_eval.items():
        check_scorable(ds, _eval_set_name(data, split))
    retrieval_dev = splits.get("dev") if splits.get("dev") is not None and "anchor" in splits["dev"].column_names else None
    log.info(
        "Data %s (%s): %s%s",
        data.name,
        shape.replace("_", " "),
        ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
        f"; STS eval on {data.sts_dev}" if data.sts_dev else "",
    )
    evaluation = [(s, ds) for s, ds in splits.items() if s != "train"] + [(f"{data.sts_dev} {s}", ds) for s, ds in sts_eval.items() if data.sts_dev]
    report_overlap(splits["train"], evaluation)
    return splits, sts_eval, retrieval_dev


def train_stage(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """One training run (one stage) into run_dir; returns eval.json's content."""
    settings: TrainerConfig = to_plain(cfg.trainer)
    loss_cfg: LossConfig = to_plain(cfg.loss)
    state = PartialState()
    resume_from = resolve_resume(settings.resume, run_dir)
    check_run_dir(run_dir, resume_from is not None, settings.overwrite)

    model = build_model(cfg.model, cfg.pooling)
    loss, spec = build_loss_from(loss_cfg, model, state.num_processes)
    splits, sts_eval, retrieval_dev = load_stage_data(cfg.data, spec.data)
    log.info("Model:\n%s", model)
    rows, collate, sampler = training_inputs(splits["train"], model, spec, settings, state.num_processes)

    evaluate, main_metric = make_evaluate(sts_eval, retrieval_dev, settings.eval_batch_size, list(loss_cfg.matryoshka_dims))
    result = train(
        model=model,
        loss_fn=loss,
        rows=rows,
        collate=collate,
        sampler=sampler,
        evaluate=evaluate,
        run_dir=run_dir,
        settings=settings,
        resume_from=resume_from,
        from_embeddings=spec.from_embeddings,
        main_metric=main_metric,
    )
    report = final_figures(model, result.progress, evaluate, sts_eval, retrieval_dev, settings.eval_batch_size, list(loss_cfg.matryoshka_dims))
    out = {
        **report,
        "model": cfg.model.name,
        "data": cfg.data.name,
        **({"sts_eval_data": cfg.data.sts_dev} if cfg.data.sts_dev else {}),
        "loss": loss_cfg.name.value,
        "steps": result.progress.step,
        "best": {"step": result.progress.best_step, main_metric: result.progress.best_metric} if result.progress.best_step else None,
        "train_seconds": round(result.seconds, 2),
        "train_pairs_per_second": round(result.pairs / result.seconds, 2) if result.seconds else None,
        "padding_ratio": round(result.padded_tokens / result.real_tokens, 3) if result.real_tokens else None,
        "mixed_precision": result.mixed_precision,
        "num_processes": state.num_processes,
    }
    if state.is_main_process:
        checkpoint.write_json_atomic(run_dir / "eval.json", out)
        print_report(report)
    state.wait_for_everyone()
    log.info("Run dir: %s", run_dir)
    return out


def final_figures(model, progress, evaluate, sts_eval, retrieval_dev, batch_size: int, dims: list[int]) -> dict[str, Any]:
    """dev (the last evaluation, if it was at the last step), retrieval_dev and test figures of the final model."""
    report: dict[str, Any] = {}
    if evaluate is not None:
        dev = progress.last_eval if progress.last_eval is not None and progress.last_eval_step == progress.step else evaluate(model)
        sts_dev = {k: v for k, v in dev.items() if not k.startswith("retrieval_")}
        if sts_dev:
            report["dev"] = sts_dev
        if retrieval_dev is not None:
            report["retrieval_dev"] = {k.removeprefix("retrieval_"): v for k, v in dev.items() if k.startswith("retrieval_")}
    if "test" in sts_eval:
        report["test"] = evaluate_sts_dims(model, sts_eval["test"], batch_size, dims)
    return report


def print_report(report: dict[str, Any]) -> None:
    if report.get("dev") or report.get("test"):
        print(format_table({k: v for k, v in report.items() if k in ("dev", "test")}))
    if "retrieval_dev" in report:
        print("retrieval (dev): " + ", ".join(f"{k}={v:.4f}" for k, v in report["retrieval_dev"].items() if k != "n_queries"))


def stage_configs(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """The (name, config) of each stage: the run's config with the stage's overrides applied."""
    if not cfg.get("stages"):
        return [("", cfg)]
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    base = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    out = []
    for i, stage in enumerate(cfg.stages, start=1):
        # The experiment stays selected (its defaults apply); `stages=[]` keeps a stage a single run.
        overrides = [*base, *stage.overrides, "stages=[]"]
        out.append((f"stage-{i}-{stage.name}", compose(config_name="train", overrides=overrides)))
    return out


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Trains as configured (all stages, if the experiment has them); returns eval.json's content."""
    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    stages = stage_configs(cfg)
    for _, stage_cfg in stages:  # a single run is its own one stage
        check_train_config(stage_cfg)
    if len(stages) == 1 and not stages[0][0]:
        return train_stage(cfg, run_dir)

    check_run_dir(run_dir, bool(cfg.trainer.resume), cfg.trainer.overwrite)
    previous: Path | None = None
    results: dict[str, Any] = {}
    for name, stage_cfg in stages:
        stage_cfg = stage_cfg.copy()
        if previous is not None:
            OmegaConf.update(stage_cfg, "model.name", str(previous), merge=False)
        stage_dir = run_dir / name
        if (stage_dir / "eval.json").exists() and cfg.trainer.resume:
            log.info("%s: already finished, skipping", name)
            results[name] = json.loads((stage_dir / "eval.json").read_text())
        else:
            if not (stage_dir / "checkpoints").is_dir():
                OmegaConf.update(stage_cfg, "trainer.resume", None, merge=False)  # a stage not started yet
            log.info("=== %s ===", name)
            results[name] = train_stage(stage_cfg, stage_dir)
        previous = stage_dir / "final"
    out = {**results[stages[-1][0]], "stages": results}
    if PartialState().is_main_process:
        checkpoint.write_json_atomic(run_dir / "eval.json", out)
        shutil.copytree(previous, run_dir / "final", dirs_exist_ok=True)
    PartialState().wait_for_everyone()
    return out

