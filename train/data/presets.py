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

import datasets

from train.data.readers import Columns, ScoreRange, canonical_pairs, pair_getter, read_sts_file, read_stsb_official
from train.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Preset:
    folder: str
    files: dict[str, str]  # split -> file name inside `folder`
    read: Callable[[Path, ScoreRange, str], datasets.Dataset]
    # How to fetch missing files: file name -> URL, or one archive holding them all.
    urls: dict[str, str] = field(default_factory=dict)
    archive_url: str | None = None
    archive_member_dir: str = ""
    source: str = ""


def _read_korsts(path: Path, scores: ScoreRange, on_bad_row: str) -> datasets.Dataset:
    return read_sts_file(path, "tsv", Columns("sentence1", "sentence2", "score"), scores, on_bad_row)


def _read_stsb(path: Path, scores: ScoreRange, on_bad_row: str) -> datasets.Dataset:
    return read_stsb_official(path, scores, on_bad_row)


_KORNLU = "https://raw.githubusercontent.com/kakaobrain/KorNLUDatasets/master"

PRESETS: dict[str, Preset] = {
    "korsts": Preset(
        folder="korsts",
        files={"train": "sts-train.tsv", "dev": "sts-dev.tsv", "test": "sts-test.tsv"},
        read=_read_korsts,
        urls={f"sts-{s}.tsv": f"{_KORNLU}/KorSTS/sts-{s}.tsv" for s in ("train", "dev", "test")},
        source="kakaobrain/KorNLUDatasets (KorSTS), CC BY-SA 4.0",
    ),
    "stsb": Preset(
        folder="stsb",
        files={"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"},
        read=_read_stsb,
        archive_url="https://ixa2.si.ehu.eus/stswiki/images/4/48/Stsbenchmark.tar.gz",
        archive_member_dir="stsbenchmark",
        source="STS Benchmark (STS Wiki)",
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


def preset_files(name: str, data_dir: str | Path, splits: tuple[str, ...]) -> dict[str, Path]:
    """Paths of the asked splits, downloading what is missing. A test split that the
    source lacks is left out; a missing train or dev split that cannot be fetched is an error."""
    preset = PRESETS[name]
    folder = Path(data_dir) / preset.folder
    wanted = {s: folder / preset.files[s] for s in splits if s in preset.files}
    missing = [p.name for p in wanted.values() if not p.exists()]
    if missing:
        log.info("%s: fetching %s into %s (%s)", name, ", ".join(missing), folder, preset.source)
        try:
            _fetch_missing(preset, folder, missing)
        except (OSError, tarfile.TarError, KeyError) as e:
            required = [s for s, p in wanted.items() if not p.exists() and s != "test"]
            if required:
                raise DataError(
                    f"data={name}: {', '.join(str(wanted[s]) for s in required)} not found, and downloading failed ({e}). "
                    f"Put the files {', '.join(preset.files.values())} in {folder}, or point EMBED_DATA_DIR "
                    f"(data.dir) at a folder that holds {preset.folder}/ with them."
                ) from None
            log.warning("%s: no test split (%s); evaluating on dev only", name, e)
    return {s: p for s, p in wanted.items() if p.exists()}


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
        for split, path in preset_files(name, data_dir, splits).items():
            out[split] = PRESETS[name].read(path, scores, on_bad_row)
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
