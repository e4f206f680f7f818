"""The data config -> splits: plain arguments for the readers, the presets and the cache."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import datasets
from omegaconf import DictConfig

from train.config.schema import DataConfig, to_plain
from train.data.beir import RETRIEVAL_DATA, RetrievalSplit, retrieval_split
from train.data.checks import check_scorable, report_overlap
from train.data.corpus import CacheSettings, Corpus, load_corpus
from train.data.presets import DataSpec, check_source, data_spec, load_spec_splits, load_sts_splits, retrieval_path
from train.data.readers import CandidateColumns
from train.data.rows import Columns, ScoreRange
from train.errors import DataError

log = logging.getLogger("train")


def data_spec_of(d: DataConfig, shape: str = "scored_pairs") -> DataSpec:
    """Where the data's splits come from and how they are read, as plain arguments."""
    return data_spec(
        d.name,
        Path(d.dir),
        # data.path is the one file: what train.evaluate scores, or the corpus of data=text_file.
        {"train": d.train_path or (d.path if shape != "scored_pairs" else None), "dev": d.dev_path or _retrieval_path(d), "test": d.test_path or _retrieval_path(d)},
        d.format,
        Columns(d.columns.sentence1, d.columns.sentence2, d.columns.score),
        d.columns.label,
        d.columns.negative,
        ScoreRange(d.score_min, d.score_max),
        d.on_bad_row.value,
        CandidateColumns(d.columns.query, d.columns.positive, d.columns.negatives, d.columns.scores, _negatives_rule(d, shape)),
        hub_id=d.hub_id,
        hub_config=d.hub_config,
        hub_splits=dict(d.hub_splits),
        cache_dir=d.cache_dir,
    )


def _retrieval_path(d: DataConfig) -> str | None:
    """data=beir and data=korquad: data.path is every split's (the folder, or the SQuAD-style JSON)."""
    return d.path if d.name in RETRIEVAL_DATA else None


def retrieval_eval_sets(d: DataConfig, splits: tuple[str, ...] = ("dev", "test")) -> dict[str, RetrievalSplit]:
    """Queries against the whole corpus, for each of `splits` the data has: retrieval_dev, retrieval_test."""
    spec = data_spec_of(d, "pairs")
    out = {}
    for split in splits:
        found = retrieval_split(d.name, retrieval_path(d.name, spec.path(split), spec.data_dir), split, d.on_bad_row.value, d.cache_dir)
        if found is not None:
            out[f"retrieval_{split}"] = _limit_queries(found, d.max_eval_samples)
    return out


def _limit_queries(split: RetrievalSplit, n: int) -> RetrievalSplit:
    """The first n queries (data.max_eval_samples), against the whole corpus (a search as hard as the split's)."""
    if n <= 0 or len(split.relevant) <= n:
        return split
    kept = dict(list(split.relevant.items())[:n])
    return RetrievalSplit(split.name, {q: split.queries[q] for q in kept}, split.corpus, kept)


def _negatives_rule(d: DataConfig, shape: str) -> int | None:
    """How many negatives a candidates row gives an n-tuple (data.num_negatives; -1: all the file has)."""
    if str(shape) != "triplets":
        return None
    return -1 if d.num_negatives is None else d.num_negatives


def build_data(
    data: DictConfig | DataConfig, splits: tuple[str, ...], shape: str = "scored_pairs", eval_shape: str | None = None
) -> dict[str, datasets.Dataset]:
    """The splits of `data` in the shape a loss trains on (train/losses/registry.py), in memory."""
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
    if d.name in RETRIEVAL_DATA:  # queries against the whole corpus, not pairs
        sets = {**build_sts_eval_data(data, {}), **retrieval_eval_sets(d)}
        log.info("Data %s: train %d pairs; %s", d.name, len(train), ", ".join(f"{k} {len(v)} queries" for k, v in sets.items()))
        return {"train": train}, sets
    evaluation = load_spec_splits(spec, shape, ("dev", "test"), 0, d.max_eval_samples, d.hard_negatives, eval_shape, require=False)
    splits: dict[str, Any] = {"train": train, **evaluation}
    if task in ("bi_encoder", "sparse", "multi_vector"):  # texts embedded on their own: STS dev and (anchor, positive) retrieval both score it
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
