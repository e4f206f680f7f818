"""Named datasets: where their files live under `data.dir`, how to read them, where to download them.

`load_sts_splits` is the builder the entry points call: a preset name, `sts_file` (your own
files) or `hub` (a Hub dataset id) in, `{"train"|"dev"|"test": Dataset}` out.
"""

from __future__ import annotations

import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from train.data.readers import (
    Columns,
    ScoreRange,
    canonical_pairs,
    pair_getter,
    CandidateColumns,
    read_candidates_file,
    read_nli_file,
    read_pairs_file,
    read_sts_file,
    read_stsb_official,
    read_text_lines,
)
from train.data.shapes import to_shape
from train.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
# Datasets this repository ships (data/<folder>/, with their licences): found even when
# data.dir points elsewhere or the command runs from another directory.
BUNDLED_DIR = Path(__file__).resolve().parents[2] / "data"


@dataclass(frozen=True)
class Preset:
    folder: str
    files: dict[str, tuple[str, ...]]  # split -> file names inside `folder` (concatenated)
    read: Callable[[Path, ScoreRange, str], datasets.Dataset]
    kind: str = "sts"  # sts: scored pairs; nli: premise/hypothesis/label
    # How to fetch missing files: file name -> URL, or one archive holding them all.
    urls: dict[str, str] = field(default_factory=dict)
    archive_url: str | None = None
    archive_member_dir: str = ""
    source: str = ""
    bundled: bool = False  # shipped under BUNDLED_DIR/<folder>


def _read_korsts(path: Path, scores: ScoreRange, on_bad_row: str) -> datasets.Dataset:
    return read_sts_file(path, "tsv", Columns("sentence1", "sentence2", "score"), scores, on_bad_row)


def _read_stsb(path: Path, scores: ScoreRange, on_bad_row: str) -> datasets.Dataset:
    return read_stsb_official(path, scores, on_bad_row)


def _read_kornli(path: Path, scores: ScoreRange, on_bad_row: str) -> datasets.Dataset:
    return read_nli_file(path, "tsv", Columns("sentence1", "sentence2", "gold_label"), on_bad_row)


_KORNLU = "https://raw.githubusercontent.com/kakaobrain/KorNLUDatasets/master"

PRESETS: dict[str, Preset] = {
    "korsts": Preset(
        folder="korsts",
        files={"train": ("sts-train.tsv",), "dev": ("sts-dev.tsv",), "test": ("sts-test.tsv",)},
        read=_read_korsts,
        urls={f"sts-{s}.tsv": f"{_KORNLU}/KorSTS/sts-{s}.tsv" for s in ("train", "dev", "test")},
        source="kakaobrain/KorNLUDatasets (KorSTS), CC BY-SA 4.0",
        bundled=True,
    ),
    "stsb": Preset(
        folder="stsb",
        files={"train": ("sts-train.csv",), "dev": ("sts-dev.csv",), "test": ("sts-test.csv",)},
        read=_read_stsb,
        archive_url="https://ixa2.si.ehu.eus/stswiki/images/4/48/Stsbenchmark.tar.gz",
        archive_member_dir="stsbenchmark",
        source="STS Benchmark (STS Wiki)",
    ),
    # KorNLI (Kakao Brain): machine-translated SNLI + MNLI train, human-translated XNLI dev/test.
    "kornli": Preset(
        folder="kornli",
        files={
            "train": ("snli_1.0_train.ko.tsv", "multinli.train.ko.tsv"),
            "dev": ("xnli.dev.ko.tsv",),
            "test": ("xnli.test.ko.tsv",),
        },
        read=_read_kornli,
        kind="nli",
        urls={
            name: f"{_KORNLU}/KorNLI/{name}"
            for name in ("snli_1.0_train.ko.tsv", "multinli.train.ko.tsv", "xnli.dev.ko.tsv", "xnli.test.ko.tsv")
        },
        source="kakaobrain/KorNLUDatasets (KorNLI), CC BY-SA 4.0",
    ),
    # Only the Korean XNLI files (5,010 test pairs to train on, 2,490 dev): small enough for a CPU.
    "kor_xnli": Preset(
        folder="kornli-xnli",
        files={"train": ("xnli.test.ko.tsv",), "dev": ("xnli.dev.ko.tsv",)},
        read=_read_kornli,
        kind="nli",
        urls={name: f"{_KORNLU}/KorNLI/{name}" for name in ("xnli.dev.ko.tsv", "xnli.test.ko.tsv")},
        source="kakaobrain/KorNLUDatasets (KorNLI XNLI), CC BY-SA 4.0",
    ),
}


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            shutil.copyfileobj(response, out)
        os.replace(tmp, dest)  # readers never see a half-written file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fetch_missing(preset: Preset, folder: Path, missing: list[str]) -> None:
    if preset.archive_url:
        with tempfile.TemporaryDirectory() as tmp:
            archive = Path(tmp) / "archive.tar.gz"
            _download(preset.archive_url, archive)
            with tarfile.open(archive) as tar:
                for name in missing:
                    member = f"{preset.archive_member_dir}/{name}" if preset.archive_member_dir else name
                    source = tar.extractfile(member)
                    if source is None:
                        raise OSError(f"{member} not in {preset.archive_url}")
                    folder.mkdir(parents=True, exist_ok=True)
                    part = folder / f".{name}.part"
                    with open(part, "wb") as out:
                        shutil.copyfileobj(source, out)
                    os.replace(part, folder / name)
    else:
        for name in missing:
            _download(preset.urls[name], folder / name)


def preset_files(name: str, data_dir: str | Path, splits: tuple[str, ...]) -> dict[str, list[Path]]:
    """Paths of the asked splits, downloading what is missing. A test split that the
    source lacks is left out; a missing train or dev split that cannot be fetched is an error."""
    preset = PRESETS[name]
    folder = Path(data_dir) / preset.folder
    wanted = {s: [folder / f for f in preset.files[s]] for s in splits if s in preset.files}
    missing = [p.name for paths in wanted.values() for p in paths if not p.exists()]
    shipped = BUNDLED_DIR / preset.folder
    if missing and preset.bundled and folder.resolve() != shipped and all((shipped / f).exists() for f in missing):
        log.info("%s: %s not in %s; using the copy shipped in %s", name, ", ".join(missing), folder, shipped)
        return {s: [p if p.exists() else shipped / p.name for p in paths] for s, paths in wanted.items()}
    if missing:
        log.info("%s: fetching %s into %s (%s)", name, ", ".join(missing), folder, preset.source)
        try:
            _fetch_missing(preset, folder, missing)
        except (OSError, tarfile.TarError, KeyError) as e:
            required = [s for s, paths in wanted.items() if s != "test" and not all(p.exists() for p in paths)]
            if required:
                expected = [str(p) for s in required for p in wanted[s] if not p.exists()]
                raise DataError(
                    f"data={name}: {', '.join(expected)} not found, and downloading failed ({e}). "
                    f"Put the files {', '.join(f for fs in preset.files.values() for f in fs)} in {folder}, "
                    f"or point EMBED_DATA_DIR (data.dir) at a folder that holds {preset.folder}/ with them."
                ) from None
            log.warning("%s: no test split (%s); evaluating on dev only", name, e)
    return {s: paths for s, paths in wanted.items() if all(p.exists() for p in paths)}


def read_preset(name: str, paths: list[Path], scores: ScoreRange, on_bad_row: str) -> datasets.Dataset:
    parts = [PRESETS[name].read(p, scores, on_bad_row) for p in paths]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def source_kind(name: str) -> str:
    """What a data option holds: sts (scored pairs), nli, pairs, candidates or text."""
    if name in PRESETS:
        return PRESETS[name].kind
    return {"nli_file": "nli", "pairs_file": "pairs", "candidates_file": "candidates", "text_file": "text"}.get(name, "sts")


def _limit(ds: datasets.Dataset, n: int) -> datasets.Dataset:
    return ds.select(range(min(n, len(ds)))) if n > 0 else ds


def load_sts_splits(
    name: str,
    splits: tuple[str, ...] = SPLITS,
    data_dir: str | Path = "data",
    paths: dict[str, str | None] | None = None,
    fmt: str | None = None,
    columns: Columns = Columns(),
    scores: ScoreRange = ScoreRange(),
    on_bad_row: str = "error",
    hub_id: str | None = None,
    hub_config: str | None = None,
    hub_splits: dict[str, str] | None = None,
    max_train_samples: int = 0,
    max_eval_samples: int = 0,
) -> dict[str, datasets.Dataset]:
    """`{split: Dataset(sentence1, sentence2, score in [0, 1])}` for the splits that exist.

    `splits` lists what the caller wants; a preset's missing test split is simply absent.
    """
    paths = paths or {}
    out: dict[str, datasets.Dataset] = {}
    if name in PRESETS:
        if PRESETS[name].kind != "sts":
            raise DataError(f"data={name} is {PRESETS[name].kind} data, not scored pairs: use it with loss=mnrl, triplet or softmax.")
        for split, paths in preset_files(name, data_dir, splits).items():
            out[split] = read_preset(name, paths, scores, on_bad_row)
    elif name == "sts_file":
        for split in splits:
            if paths.get(split):
                out[split] = read_sts_file(paths[split], fmt, columns, scores, on_bad_row)
        if not out:
            asked = ", ".join(f"data.{s}_path" for s in splits)
            raise DataError(f"data=sts_file needs a file: set {asked}.")
    elif name == "hub":
        out = _load_hub(hub_id, hub_config, hub_splits or {}, splits, columns, scores, on_bad_row)
    else:
        raise DataError(f"data.name={name!r} is unknown; use one of {', '.join([*PRESETS, 'sts_file', 'hub'])}.")
    return {
        split: _limit(ds, max_train_samples if split == "train" else max_eval_samples) for split, ds in out.items()
    }


def _load_hub(
    hub_id: str | None,
    hub_config: str | None,
    hub_splits: dict[str, str],
    splits: tuple[str, ...],
    columns: Columns,
    scores: ScoreRange,
    on_bad_row: str,
) -> dict[str, datasets.Dataset]:
    if not hub_id:
        raise DataError("data=hub needs data.hub_id (a Hugging Face dataset id, e.g. sentence-transformers/stsb).")
    out = {}
    for split in splits:
        hub_split = hub_splits.get(split, split)
        try:
            raw = datasets.load_dataset(hub_id, hub_config, split=hub_split)
        except ValueError as e:  # an unknown split name
            if split == "test":
                continue
            raise DataError(f"data.hub_id={hub_id}: no split {hub_split!r} ({e}).") from None
        except Exception as e:
            raise DataError(
                f"data.hub_id={hub_id}: could not load the dataset ({type(e).__name__}: {e}). "
                "It needs network access to the Hub; offline, export it to files and use data=sts_file."
            ) from None
        out[split] = canonical_pairs(
            ((f"row {i + 1}", r) for i, r in enumerate(raw)),
            f"{hub_id}[{hub_split}]",
            pair_getter(columns, scores),
            on_bad_row,
        )
    return out


def load_splits(
    name: str,
    shape: str,
    splits: tuple[str, ...] = SPLITS,
    data_dir: str | Path = "data",
    paths: dict[str, str | None] | None = None,
    fmt: str | None = None,
    columns: Columns = Columns(),
    label_column: str = "gold_label",
    negative_column: str | None = None,
    scores: ScoreRange = ScoreRange(),
    on_bad_row: str = "error",
    hard_negatives: bool = True,
    max_train_samples: int = 0,
    max_eval_samples: int = 0,
    candidate_columns: CandidateColumns = CandidateColumns(),
    eval_shape: str | None = None,
    **hub: Any,
) -> dict[str, datasets.Dataset]:
    """Any source in the shape a loss needs (see train/data/shapes.py): STS data for the STS
    losses; NLI presets/files, pairs files, query-with-candidates files or a text file for the
    others. Dev/test come in `eval_shape` (default: (anchor, positive) for retrieval evaluation)."""
    if shape == "scored_pairs" and name != "candidates_file":
        return load_sts_splits(
            name, splits, data_dir, paths, fmt, columns, scores, on_bad_row,
            max_train_samples=max_train_samples, max_eval_samples=max_eval_samples, **hub,
        )
    paths = paths or {}
    raw: dict[str, datasets.Dataset] = {}
    if name in PRESETS:
        kind = PRESETS[name].kind
        for split, files in preset_files(name, data_dir, splits).items():
            raw[split] = read_preset(name, files, scores, on_bad_row)
    elif name == "nli_file":
        kind = "nli"
        for split in splits:
            if paths.get(split):
                raw[split] = read_nli_file(paths[split], fmt, Columns(columns.sentence1, columns.sentence2, label_column), on_bad_row)
    elif name == "pairs_file":
        kind = "pairs"
        for split in splits:
            if paths.get(split):
                raw[split] = read_pairs_file(paths[split], fmt, columns.sentence1, columns.sentence2, negative_column, on_bad_row)
    elif name == "candidates_file":
        kind = "candidates"
        for split in splits:
            if paths.get(split):
                raw[split] = read_candidates_file(paths[split], fmt, candidate_columns, on_bad_row)
    elif name == "text_file":
        kind = "text"
        for split in splits:
            if paths.get(split):
                raw[split] = read_text_lines(paths[split])
    else:
        raise DataError(
            f"data={name} holds scored sentence pairs, but this loss trains on {shape.replace('_', ' ')}: "
            "use NLI data (data=kornli, kor_xnli, nli_file), pairs (data=pairs_file) or text (data=text_file)."
        )
    if name not in PRESETS and not raw:
        raise DataError(f"data={name} needs a file: set data.train_path (and data.dev_path), or data.path.")
    out = {}
    for split, ds in raw.items():
        # Bi-encoder dev/test are kept as (anchor, positive) for retrieval evaluation, whatever the loss.
        default_eval = "triplets" if kind in ("nli", "pairs", "candidates") else None
        split_shape = shape if split == "train" else (eval_shape or default_eval if kind != "text" else None)
        if split_shape is None:
            continue
        # Candidate lists keep their negatives in dev/test; NLI triplets only in train.
        keep_negatives = hard_negatives and (split == "train" or kind == "candidates")
        out[split] = to_shape(ds, kind, split_shape, keep_negatives, f"data={name} ({split})")
        out[split] = _limit(out[split], max_train_samples if split == "train" else max_eval_samples)
    return out
