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
    CandidateColumns,
    candidates_file_sources,
    nli_file_sources,
    pair_getter,
    pairs_file_sources,
    sts_file_sources,
    stsb_official_sources,
    text_lines_sources,
)
from train.data.beir import KORQUAD_FILE, KORQUAD_URL, RETRIEVAL_DATA, retrieval_sources
from train.data.rows import Columns, RowSource, ScoreRange, read_sources
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
    reader: Callable[[Path, str, ScoreRange, str], list[RowSource]]  # (path, split, scores, on_bad_row)
    kind: str = "sts"  # sts: scored pairs; nli: premise/hypothesis/label
    # How to fetch missing files: file name -> URL, or one archive holding them all.
    urls: dict[str, str] = field(default_factory=dict)
    archive_url: str | None = None
    archive_member_dir: str = ""
    source: str = ""
    bundled: bool = False  # shipped under BUNDLED_DIR/<folder>


# A preset's files are TSV; a folder given in place of one (data.test_path=DIR) is read as what it holds.
def _read_korsts(path: Path, split: str, scores: ScoreRange, on_bad_row: str) -> list[RowSource]:
    fmt = None if path.is_dir() else "tsv"
    return sts_file_sources(path, fmt, Columns("sentence1", "sentence2", "score"), scores, on_bad_row, split)


def _read_stsb(path: Path, split: str, scores: ScoreRange, on_bad_row: str) -> list[RowSource]:
    return stsb_official_sources(path, scores, on_bad_row, split)


def _read_kornli(path: Path, split: str, scores: ScoreRange, on_bad_row: str) -> list[RowSource]:
    fmt = None if path.is_dir() else "tsv"
    return nli_file_sources(path, fmt, Columns("sentence1", "sentence2", "gold_label"), on_bad_row, split)


_KORNLU = "https://raw.githubusercontent.com/kakaobrain/KorNLUDatasets/master"

PRESETS: dict[str, Preset] = {
    "korsts": Preset(
        folder="korsts",
        files={"train": ("sts-train.tsv",), "dev": ("sts-dev.tsv",), "test": ("sts-test.tsv",)},
        reader=_read_korsts,
        urls={f"sts-{s}.tsv": f"{_KORNLU}/KorSTS/sts-{s}.tsv" for s in ("train", "dev", "test")},
        source="kakaobrain/KorNLUDatasets (KorSTS), CC BY-SA 4.0",
        bundled=True,
    ),
    "stsb": Preset(
        folder="stsb",
        files={"train": ("sts-train.csv",), "dev": ("sts-dev.csv",), "test": ("sts-test.csv",)},
        reader=_read_stsb,
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
        reader=_read_kornli,
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
        reader=_read_kornli,
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


def retrieval_path(name: str, path: str | None, data_dir: str | Path) -> Path | None:
    """Where data=beir or data=korquad is read: data.path, or (korquad) the KorQuAD 1.0 dev file
    under data.dir (its korquad/ folder), downloaded when missing."""
    if path or name != "korquad":
        return Path(path).expanduser() if path else None
    where = Path(data_dir) / KORQUAD_FILE
    if not where.is_file():
        log.info("KorQuAD 1.0 dev (LG CNS, CC BY-ND 2.0 KR): downloading %s into %s", KORQUAD_URL, where)
        try:
            _download(KORQUAD_URL, where)
        except OSError as e:
            raise DataError(f"data=korquad: {where} is missing and could not be downloaded from {KORQUAD_URL} ({e}). "
                            "Put KorQuAD_v1.0_dev.json there, point data.dir at its parent folder's parent, or set data.path=<file>.") from None
    return where


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


def source_kind(name: str) -> str:
    """What a data option holds: sts (scored pairs), nli, pairs, candidates or text."""
    if name in PRESETS:
        return PRESETS[name].kind
    if name in RETRIEVAL_DATA:  # queries with relevant passages: trained on as (query, passage) pairs
        return "pairs"
    return {"nli_file": "nli", "pairs_file": "pairs", "candidates_file": "candidates", "text_file": "text"}.get(name, "sts")


@dataclass(frozen=True)
class DataSpec:
    """Where a dataset's splits come from and how its files are read: the plain arguments a
    data config becomes (train/data/build.py). Picklable, so that a subprocess can read it too."""

    name: str
    data_dir: Path = Path("data")
    paths: tuple[tuple[str, str], ...] = ()  # (split, file) for the *_file options
    fmt: str | None = None
    columns: Columns = Columns()
    label_column: str = "gold_label"
    negative_column: str | None = None
    scores: ScoreRange = ScoreRange()
    on_bad_row: str = "error"
    candidate_columns: CandidateColumns = CandidateColumns()
    hub_id: str | None = None
    hub_config: str | None = None
    hub_splits: tuple[tuple[str, str], ...] = ()
    cache_dir: str | None = None  # data.cache_dir: where a BEIR corpus is kept once read

    @property
    def kind(self) -> str:
        return source_kind(self.name)

    def path(self, split: str) -> str | None:
        return dict(self.paths).get(split)


def split_sources(spec: DataSpec, split: str) -> list[RowSource] | None:
    """The files (readers, not yet read) of one split, or None when the source has no such split.
    A preset's missing files are downloaded here; a path given for a preset's split
    (data.test_path=…) is read with the preset's reader instead."""
    name = spec.name
    if name in PRESETS:
        reader = PRESETS[name].reader
        if spec.path(split):  # a file of the preset's format in place of its own (a held-out test set)
            return reader(Path(spec.path(split)), split, spec.scores, spec.on_bad_row)
        files = preset_files(name, spec.data_dir, (split,)).get(split)
        return [s for f in files for s in reader(f, split, spec.scores, spec.on_bad_row)] if files else None
    if name == "hub":
        return _hub_source(spec, split)
    if name in RETRIEVAL_DATA:
        return retrieval_sources(name, retrieval_path(name, spec.path(split), spec.data_dir), split, spec.on_bad_row, spec.cache_dir)
    path = spec.path(split)
    if not path:
        return None
    # A file, or a folder (save_to_disk, shards) whose `split` is read: train/data/folders.py.
    if name == "sts_file":
        return sts_file_sources(path, spec.fmt, spec.columns, spec.scores, spec.on_bad_row, split)
    if name == "nli_file":
        columns = Columns(spec.columns.sentence1, spec.columns.sentence2, spec.label_column)
        return nli_file_sources(path, spec.fmt, columns, spec.on_bad_row, split)
    if name == "pairs_file":
        c = spec.columns
        return pairs_file_sources(path, spec.fmt, c.sentence1, c.sentence2, spec.negative_column, spec.on_bad_row, split)
    if name == "candidates_file":
        return candidates_file_sources(path, spec.fmt, spec.candidate_columns, spec.on_bad_row, split)
    if name == "text_file":
        return text_lines_sources(path, split)
    raise DataError(f"data.name={name!r} is unknown; use one of {', '.join([*PRESETS, 'sts_file', 'nli_file', 'pairs_file', 'candidates_file', 'text_file', 'hub', *RETRIEVAL_DATA])}.")


def _limit(ds: datasets.Dataset, n: int) -> datasets.Dataset:
    return ds.select(range(min(n, len(ds)))) if n > 0 else ds


def load_sts_splits(
    name: str, splits: tuple[str, ...] = SPLITS, data_dir: str | Path = "data", max_train_samples: int = 0, max_eval_samples: int = 0,
    **source: Any,
) -> dict[str, datasets.Dataset]:
    """`{split: Dataset(sentence1, sentence2, score in [0, 1])}` for the splits that exist, in
    memory. `splits` lists what the caller wants; a preset's missing test split is simply absent.
    `source`: the rest of data_spec's arguments (paths, fmt, columns, scores, on_bad_row, hub_*)."""
    return load_spec_splits(data_spec(name, data_dir, **source), "scored_pairs", splits, max_train_samples, max_eval_samples)

def data_spec(
    name: str,
    data_dir: str | Path = "data",
    paths: dict[str, str | None] | None = None,
    fmt: str | None = None,
    columns: Columns = Columns(),
    label_column: str = "gold_label",
    negative_column: str | None = None,
    scores: ScoreRange = ScoreRange(),
    on_bad_row: str = "error",
    candidate_columns: CandidateColumns = CandidateColumns(),
    hub_id: str | None = None,
    hub_config: str | None = None,
    hub_splits: dict[str, str] | None = None,
    cache_dir: str | None = None,
) -> DataSpec:
    return DataSpec(
        name, Path(data_dir), tuple((k, str(v)) for k, v in (paths or {}).items() if v), fmt, columns, label_column,
        negative_column, scores, on_bad_row, candidate_columns, hub_id, hub_config, tuple((hub_splits or {}).items()), cache_dir,
    )


def _hub_source(spec: DataSpec, split: str) -> list[RowSource] | None:
    if not spec.hub_id:
        raise DataError("data=hub needs data.hub_id (a Hugging Face dataset id, e.g. sentence-transformers/stsb).")
    hub_split = dict(spec.hub_splits).get(split, split)
    try:
        raw = datasets.load_dataset(spec.hub_id, spec.hub_config, split=hub_split)
    except ValueError as e:  # an unknown split name
        if split == "test":
            return None
        raise DataError(f"data.hub_id={spec.hub_id}: no split {hub_split!r} ({e}).") from None
    except Exception as e:
        raise DataError(
            f"data.hub_id={spec.hub_id}: could not load the dataset ({type(e).__name__}: {e}). "
            "It needs network access to the Hub; offline, export it to files and use data=sts_file."
        ) from None
    where = f"{spec.hub_id}[{hub_split}]"

    def records():
        return ((f"row {i + 1}", r) for i, r in enumerate(raw))

    settings = {"kind": "sts", "hub": where, "config": spec.hub_config, "fingerprint": raw._fingerprint,
                "columns": [spec.columns.sentence1, spec.columns.sentence2, spec.columns.score], "scores": [spec.scores.low, spec.scores.high]}
    return [RowSource(where, ("sentence1", "sentence2", "score"), records, pair_getter(spec.columns, spec.scores), spec.on_bad_row, settings)]


def load_splits(
    name: str,
    shape: str,
    splits: tuple[str, ...] = SPLITS,
    hard_negatives: bool = True,
    max_train_samples: int = 0,
    max_eval_samples: int = 0,
    eval_shape: str | None = None,
    **source: Any,
) -> dict[str, datasets.Dataset]:
    """Any source in the shape a loss needs (see train/data/shapes.py), in memory: STS data for the
    STS losses; NLI presets/files, pairs files, query-with-candidates files or a text file for the
    others. Dev/test come in `eval_shape` (default: (anchor, positive) for retrieval evaluation).
    `source`: data_spec's arguments (data_dir, paths, fmt, columns, label_column, ...)."""
    return load_spec_splits(data_spec(name, **source), shape, splits, max_train_samples, max_eval_samples, hard_negatives, eval_shape)

def check_source(spec: DataSpec, shape: str) -> None:
    """Refuses a source that cannot feed `shape` before anything is read."""
    if spec.name not in PRESETS and spec.name not in ("sts_file", "nli_file", "pairs_file", "candidates_file", "text_file", "hub", *RETRIEVAL_DATA):
        raise DataError(f"data.name={spec.name!r} is unknown; use one of {', '.join([*PRESETS, 'sts_file', 'nli_file', 'pairs_file', 'candidates_file', 'text_file', 'hub', *RETRIEVAL_DATA])}.")
    kind = spec.kind
    if shape == "scored_pairs" and kind not in ("sts", "candidates"):
        raise DataError(f"data={spec.name} is {kind} data, not scored pairs: use it with loss=mnrl, triplet or softmax.")
    if shape != "scored_pairs" and kind == "sts":
        raise DataError(
            f"data={spec.name} holds scored sentence pairs, but this loss trains on {shape.replace('_', ' ')}: "
            "use NLI data (data=kornli, kor_xnli, nli_file), pairs (data=pairs_file) or text (data=text_file)."
        )


def split_shape(spec: DataSpec, split: str, shape: str, eval_shape: str | None) -> str | None:
    """The shape a split is loaded in: the loss's for train; for dev/test `eval_shape`, by default
    (anchor, positive) for retrieval evaluation of pair-like data, scored pairs for STS data, and
    none for plain text."""
    if split == "train" or spec.kind == "sts":
        return shape
    if spec.kind == "text":
        return None
    return eval_shape or ("triplets" if spec.kind in ("nli", "pairs", "candidates") else None)


def load_spec_splits(
    spec: DataSpec,
    shape: str,
    splits: tuple[str, ...] = SPLITS,
    max_train_samples: int = 0,
    max_eval_samples: int = 0,
    hard_negatives: bool = True,
    eval_shape: str | None = None,
    require: bool = True,
) -> dict[str, datasets.Dataset]:
    """The asked splits that the source has, in memory; `require`: a file option without any of
    them is an error."""
    check_source(spec, shape)
    out = {}
    found = False
    for split in splits:
        sources = split_sources(spec, split)
        found = found or sources is not None
        target = split_shape(spec, split, shape, eval_shape)
        if sources is None or target is None:
            continue
        # Candidate lists keep their negatives in dev/test; NLI triplets only in train.
        keep_negatives = hard_negatives and (split == "train" or spec.kind == "candidates")
        ds = to_shape(read_sources(sources), spec.kind, target, keep_negatives, f"data={spec.name} ({split})")
        out[split] = _limit(ds, max_train_samples if split == "train" else max_eval_samples)
    if require and not found and spec.name not in PRESETS:
        asked = ", ".join(f"data.{s}_path" for s in splits)
        raise DataError(f"data={spec.name} needs a file: set {asked} (or data.path).")
    return out
