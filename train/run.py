"""run(cfg): build model, data and loss from the config, hand plain objects to the loop, report."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from accelerate import PartialState
from omegaconf import DictConfig

from train import checkpoint
from train.builders import build_data, build_model, run_dir_from_hydra, setup_logging
from train.config import TrainerConfig, to_plain
from train.data.batching import PairCollator, tokenize_pairs
from train.errors import RunDirError
from train.evaluation import MAIN_METRIC, evaluate_sts, format_table, sts_evaluator
from train.losses import build_loss
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
    clear_run_outputs(run_dir)


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Trains as configured; returns eval.json's content (plus run facts)."""
    setup_logging()
    run_dir = Path(run_dir) if run_dir is not None else run_dir_from_hydra()
    settings: TrainerConfig = to_plain(cfg.trainer)
    resume_from = resolve_resume(settings.resume, run_dir)
    check_run_dir(run_dir, resume_from is not None, settings.overwrite)

    splits = build_data(cfg.data, ("train", "dev", "test"))
    if "train" not in splits:
        raise RunDirError(f"data={cfg.data.name}: no train split to train on (set data.train_path).")
    log.info("Data %s: %s", cfg.data.name, ", ".join(f"{k} {len(v)} pairs" for k, v in splits.items()))

    model = build_model(cfg.model, cfg.pooling)
    log.info("Model:\n%s", model)
    tokenizer = model.tokenizer
    train_ds = tokenize_pairs(splits["train"], tokenizer, model.max_seq_length)
    rows = train_ds.select_columns(["ids1", "ids2", "score"]).to_list()
    collate = PairCollator(
        pad_token_id=tokenizer.pad_token_id,
        padding_side=tokenizer.padding_side,
        token_type_ids="token_type_ids" in tokenizer.model_input_names,
        chunk_rows=settings.forward_chunk_rows,
    )
    dev_evaluator = sts_evaluator(splits["dev"], settings.eval_batch_size) if "dev" in splits else None
    loss_cfg = to_plain(cfg.loss)
    loss = build_loss(loss_cfg.name.value, model, loss_cfg.scale)

    result = train(
        model=model,
        loss_fn=loss,
        rows=rows,
        collate=collate,
        lengths=train_ds["length"],
        evaluate=(lambda m: evaluate_sts(m, dev_evaluator)) if dev_evaluator else None,
        run_dir=run_dir,
        settings=settings,
        resume_from=resume_from,
    )

    report: dict[str, Any] = {}
    progress = result.progress
    if dev_evaluator is not None:
        if progress.last_eval is not None and progress.last_eval_step == progress.step:
            report["dev"] = progress.last_eval
        else:
            report["dev"] = evaluate_sts(model, dev_evaluator)
    if "test" in splits:
        report["test"] = evaluate_sts(model, sts_evaluator(splits["test"], settings.eval_batch_size))
    out = {
        **report,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "steps": progress.step,
        "best": {"step": progress.best_step, MAIN_METRIC: progress.best_metric} if progress.best_step else None,
        "train_seconds": round(result.seconds, 2),
        "train_pairs_per_second": round(result.pairs / result.seconds, 2) if result.seconds else None,
        "padding_ratio": round(result.padded_tokens / result.real_tokens, 3) if result.real_tokens else None,
    }
    if PartialState().is_main_process:
        checkpoint.write_json_atomic(run_dir / "eval.json", out)
        if report:
            print(format_table(report))
    log.info("Run dir: %s (final/ %s, eval.json)", run_dir, "best/, " if result.best_dir else "")
    return out
