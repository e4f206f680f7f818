"""Config sections -> plain arguments for the models, data and loss code. The only place
below the entry points that reads the config."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig
from sentence_transformers import SentenceTransformer

from train.config import DataConfig, LossConfig, ModelConfig, PoolingConfig, to_plain
from train.data.corpus import CacheSettings, Corpus, load_corpus
from train.data.presets import DataSpec, check_source, data_spec, load_spec_splits, load_sts_splits
from train.data.readers import CandidateColumns, Columns, ScoreRange
from train.data.checks import check_scorable, report_overlap
from train.errors import DataError, Preempted, UserError
from train.losses import LossSpec, build_loss

log = logging.getLogger("train")


def build_model(
    model: DictConfig | ModelConfig, pooling: DictConfig | PoolingConfig, task: str = "bi_encoder", num_labels: int = 1
) -> SentenceTransformer:
    """The task's model: a SentenceTransformer (bi-encoder) or a CrossEncoder with `num_labels` outputs."""
    from train.tasks import get_task

    m: ModelConfig = to_plain(model) if isinstance(model, DictConfig) else model
    p: PoolingConfig = to_plain(pooling) if isinstance(pooling, DictConfig) else pooling
    name, package = m.name, m.offline_package
    if m.random_init:
        from train.models import random_model_dir

        name, package = str(random_model_dir(m.name, m.offline_package, dict(m.random_init))), None
        log.info("Random weights (model.random_init, %s) with %s's tokenizer: a speed and memory workload, "
                 "no quality claim", m.random_init.get("model_type"), m.name)
    return get_task(task).build_model(
        name=name,
        max_seq_length=m.max_seq_length,
        pooling_mode=p.mode.value,
        normalize=m.normalize,
        offline_package=package,
        attn_implementation=m.attn_implementation,
        num_labels=num_labels,
        **(
            dict(
                image_tower=m.image_tower, image_config=dict(m.image_config), image_pooling=m.image_pooling.value,
                projection_dim=m.projection_dim, freeze_text=m.freeze_text, freeze_image=m.freeze_image,
            )
            if task == "image_text"
            else {}
        ),
    )


def loss_options(loss: DictConfig | LossConfig, num_processes: int = 1) -> dict:
    c: LossConfig = to_plain(loss) if isinstance(loss, DictConfig) else loss
    return dict(
        scale=c.scale,
        gather_across_devices=num_processes > 1,
        mini_batch_size=c.mini_batch_size,
        margin=c.margin,
        num_labels=c.num_labels,
        matryoshka_dims=list(c.matryoshka_dims),
        num_negatives=c.num_negatives,
        learn_scale=c.learn_scale,
    )


def build_loss_from(
    loss: DictConfig | LossConfig, model: SentenceTransformer, num_processes: int = 1, task: str = "bi_encoder"
) -> tuple[object, LossSpec]:
    """The loss module of `loss` for `model`, and its spec (data shape; whether the loop embeds for it)."""
    c: LossConfig = to_plain(loss) if isinstance(loss, DictConfig) else loss
    return build_loss(c.name.value, model, task=task, **loss_options(c, num_processes))


def model_outputs(loss: DictConfig | LossConfig, task: str) -> int:
    """How many outputs the task's model needs for this loss (cross-encoder: 1, or the NLI classes)."""
    from train.losses import loss_spec

    c: LossConfig = to_plain(loss) if isinstance(loss, DictConfig) else loss
    return loss_spec(task, c.name.value).num_labels({"num_labels": c.num_labels})


def data_spec_of(d: DataConfig, shape: str = "scored_pairs") -> DataSpec:
    """Where the data's splits come from and how they are read, as plain arguments."""
    return data_spec(
        d.name,
        Path(d.dir),
        # data.path is the one file: what train.evaluate scores, or the corpus of data=text_file.
        {"train": d.train_path or (d.path if shape != "scored_pairs" else None), "dev": d.dev_path, "test": d.test_path},
        d.format,
        Columns(d.columns.sentence1, d.columns.sentence2, d.columns.score),
        d.columns.label,
        d.columns.negative,
        ScoreRange(d.score_min, d.score_max),
        d.on_bad_row.value,
        CandidateColumns(d.columns.query, d.columns.positive, d.columns.negatives, d.columns.scores),
        hub_id=d.hub_id,
        hub_config=d.hub_config,
        hub_splits=dict(d.hub_splits),
    )


def build_data(
    data: DictConfig | DataConfig, splits: tuple[str, ...], shape: str = "scored_pairs", eval_shape: str | None = None
) -> dict[str, datasets.Dataset]:
    """The splits of `data` in the shape a loss trains on (train/losses.py), in memory."""
    d: DataConfig = to_plain(data) if isinstance(data, DictConfig) else data
    return load_spec_splits(data_spec_of(d, shape), shape, splits, d.max_train_samples, d.max_eval_samples, d.hard_negatives, eval_shape)


def build_corpus(data: DictConfig | DataConfig, shape: str, split: str = "train") -> Corpus | None:
    """A split of `data` through the cache (read and converted once, memory-mapped), or None."""
    d: DataConfig = to_plain(data) if isinstance(data, DictConfig) else data
    limit = d.max_train_samples if split == "train" else d.max_eval_samples
    return load_corpus(data_spec_of(d, shape), split, shape, d.hard_negatives, CacheSettings.make(d.cache_dir, d.num_proc), limit)


def build_sts_eval_data(data: DictConfig | DataConfig, own: dict[str, datasets.Dataset]) -> dict[str, datasets.Dataset]:
    """The STS dev/test sets that score a model: the data's own (STS data) or data.sts_dev's."""
    d: DataConfig = to_plain(data) if isinstance(data, DictConfig) else data
    if not d.sts_dev:
        return {s: ds for s, ds in own.items() if s in ("dev", "test") and "score" in ds.column_names}
    return load_sts_splits(d.sts_dev, ("dev", "test"), Path(d.dir), max_eval_samples=d.max_eval_samples)


def _eval_set_name(data: DictConfig, split: str) -> str:
    path = data.get(f"{split}_path")
    return str(path) if path and not data.sts_dev else f"data={data.sts_dev or data.name} ({split} split)"


def load_text_task_data(data: DictConfig, shape: str, task: str, eval_shape: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A text task's splits (train: a cached Corpus; dev, test: in memory) and the sets that score
    it (dev, test, retrieval_dev), checked."""
    d: DataConfig = to_plain(data)
    spec = data_spec_of(d, shape)
    check_source(spec, shape)
    train = build_corpus(d, shape)
    if train is None:
        raise DataError(f"data={data.name}: no train split to train on (set data.train_path).")
    evaluation = load_spec_splits(spec, shape, ("dev", "test"), 0, d.max_eval_samples, d.hard_negatives, eval_shape, require=False)
    splits: dict[str, Any] = {"train": train, **evaluation}
    if task == "bi_encoder":
        sets: dict[str, Any] = build_sts_eval_data(data, splits)
        dev = splits.get("dev")
        if dev is not None and "anchor" in dev.column_names:
            sets["retrieval_dev"] = dev
    else:
        sets = {s: ds for s, ds in splits.items() if s != "train"}
    for split, ds in sets.items():
        if split != "retrieval_dev" and "score" in ds.column_names:
            check_scorable(ds, _eval_set_name(data, split))
    log.info(
        "Data %s (%s): %s%s",
        data.name,
        shape.replace("_", " "),
        ", ".join(f"{k} {len(v)}" for k, v in splits.items()),
        f"; STS eval on {data.sts_dev}" if data.sts_dev else "",
    )
    named = [(s, ds) for s, ds in splits.items() if s != "train"]
    if data.sts_dev:
        named += [(f"{data.sts_dev} {s}", ds) for s, ds in sets.items() if s in ("dev", "test")]
    report_overlap(train, named)
    return splits, sets


def build_image_text_splits(data: DictConfig | DataConfig, splits: tuple[str, ...]) -> dict[str, datasets.Dataset]:
    """Image–caption splits: image references (decoded later, in the loader) and captions."""
    from train.data.images import load_image_text_splits

    d: DataConfig = to_plain(data) if isinstance(data, DictConfig) else data
    return load_image_text_splits(
        d.name,
        splits,
        data_dir=Path(d.dir),
        paths={"train": d.train_path or d.path, "dev": d.dev_path, "test": d.test_path},
        fmt=d.format,
        image_column=d.columns.image,
        text_column=d.columns.text,
        caption_template=d.caption_template,
        class_names=list(d.class_names) if d.class_names else None,
        on_bad_row=d.on_bad_row.value,
        max_train_samples=d.max_train_samples,
        max_eval_samples=d.max_eval_samples,
    )


def build_image_text_data(data: DictConfig | DataConfig, shape: str = "image_captions") -> tuple[dict[str, Any], dict[str, Any]]:
    """The image–text task's splits and the sets that score the model (dev, test)."""
    d: DataConfig = to_plain(data) if isinstance(data, DictConfig) else data
    splits = build_image_text_splits(d, ("train", "dev", "test"))
    if "train" not in splits:
        raise DataError(f"data={d.name}: no train split to train on (set data.train_path).")
    log.info("Data %s (images and captions): %s", d.name, ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return splits, {s: ds for s, ds in splits.items() if s != "train"}


def setup_logging() -> None:
    # Hydra configures the root logger under @hydra.main; tests and plain calls get the same format.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    logging.getLogger("train").setLevel(logging.INFO)
    for noisy in ("sentence_transformers", "transformers", "httpx", "huggingface_hub", "datasets", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    datasets.disable_progress_bars()
    # "Loading weights" / "Writing model shards" bars at every save would bury the training bar.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def run_dir_from_hydra() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise RuntimeError("No Hydra run dir: pass run_dir= when calling run() outside `python -m train`.")
    return Path(HydraConfig.get().runtime.output_dir)


def exit_2_on_config_errors(main: Callable[[], object]) -> None:
    """Runs a @hydra.main function; a config Hydra cannot compose (unknown key, group option or
    value, wrong type) exits with 2 like every other user error, not Hydra's 1. Hydra has
    printed its message by then; its SystemExit carries the error as __context__."""
    from hydra.errors import CompactHydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        main()
    except SystemExit as e:
        # UserError: a sweep's failed job, which Hydra reports after the sweep (see user_errors).
        if e.code == 1 and isinstance(e.__context__, (CompactHydraException, OmegaConfBaseException, UserError)):
            raise SystemExit(2) from None
        raise


def in_sweep() -> bool:
    """Whether this is one job of a Hydra sweep (`-m`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def user_errors() -> Iterator[None]:
    """A UserError ends the program with its message and exit code 2, no traceback
    (HYDRA_FULL_ERROR=1 shows the traceback); in a sweep, it ends only its own job."""
    try:
        yield
    except Preempted as e:
        log.warning("%s", e)
        print(str(e), file=sys.stderr)
        sys.exit(Preempted.exit_code)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        log.error("%s", e)
        print(f"Error: {e}", file=sys.stderr)
        if in_sweep():
            # One job of a sweep: Hydra's launcher records the exception as this job's result and
            # the sweep goes on (SystemExit would end it). The basic sweeper raises it once its
            # batch has run; the Optuna sweeper tells Optuna the trial failed (conf/hpo/optuna.yaml).
            raise
        sys.exit(2)
    except Exception:
        if in_sweep():
            log.exception("This job of the sweep failed")  # into the job's log, for train.report
        raise


def card_facts(cfg: DictConfig, splits: dict[str, Any], sets: dict[str, Any], loss: object, num_labels: int, report: dict[str, Any]):
    """The plain facts of a run that its model cards tell (train/model_card.py)."""
    from train.config import TrainerConfig
    from train.model_card import DataFacts, RunFacts

    m: ModelConfig = to_plain(cfg.model)
    d: DataConfig = to_plain(cfg.data)
    c: LossConfig = to_plain(cfg.loss)
    t: TrainerConfig = to_plain(cfg.trainer)
    task = cfg.task.name.value
    data = DataFacts(
        name=d.name,
        rows={k: len(v) for k, v in splits.items()},
        eval_data=d.sts_dev,
        eval_rows={k: len(v) for k, v in sets.items() if k in ("dev", "test")} if d.sts_dev else {},
        files={k: p for k, p in (("train", d.train_path), ("dev", d.dev_path), ("test", d.test_path), ("data", d.path)) if p},
        hub_id=d.hub_id if d.name == "hub" else None,
    )
    details: dict[str, Any] = {"max_seq_length": m.max_seq_length}
    if task == "bi_encoder" and m.normalize:
        details["normalize"] = True
    if task == "image_text":
        details.update(image_tower=m.image_tower or "(the CLIP model's own)", image_pooling=m.image_pooling.value)
        details.update({k: v for k, v in (("projection_dim", m.projection_dim), ("freeze_text", m.freeze_text), ("freeze_image", m.freeze_image)) if v})
    if task == "cross_encoder":
        details["num_labels"] = num_labels
    hyper: dict[str, Any] = {"epochs": t.epochs} if t.max_steps <= 0 else {"max_steps": t.max_steps}
    hyper.update(
        optimizer_steps=report.get("steps"),
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        num_processes=report.get("num_processes", 1),
        lr=t.lr,
        warmup_ratio=t.warmup_ratio,
        lr_schedule="linear with warmup",
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        mixed_precision=f"{t.mixed_precision.value} (ran as {report.get('mixed_precision')})",
        seed=t.seed,
        **({"loss.scale": c.scale} if c.scale is not None else {}),
        **({"loss.matryoshka_dims": list(c.matryoshka_dims)} if c.matryoshka_dims else {}),
        **({"train_seconds": report["train_seconds"]} if report.get("train_seconds") is not None else {}),
    )
    return RunFacts(
        task=task,
        base_model=m.name,
        loss=c.name.value,
        loss_class=type(loss).__name__,
        data=data,
        hyperparameters=hyper,
        main_metric=report.get("main_metric", ""),
        pooling=cfg.pooling.mode.value if task == "bi_encoder" or (task == "image_text" and m.image_tower) else None,
        model_details=details,
        num_labels=num_labels,
        random_init=dict(m.random_init),
    )
