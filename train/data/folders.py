"""A data path -> the files that hold one split: a file, a `save_to_disk` folder, a folder of shards.

Where a data file is accepted (data.train_path, data.dev_path, data.test_path, data.path), a
folder is too:
- a `datasets.Dataset.save_to_disk` folder (state.json, data-*.arrow): its Arrow files;
- a `DatasetDict.save_to_disk` folder (dataset_dict.json, one folder a split): the folder of
  the split being read (train: train/training; dev: dev/validation/valid/val; test: test/testing/eval);
- a folder of shards as the Hub lays them out (`train-00000-of-00002.parquet`, `data/train-*.parquet`,
  `train/part-0.jsonl`, ...): the files whose path names the split being read, in natural order,
  or every data file when no file names a split. One format a folder; data.format picks one
  when several are there.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from train.data.formats import EXTENSIONS, SPREADSHEETS, infer_format, spreadsheet_error
from train.errors import DataError

log = logging.getLogger(__name__)

# What a file or folder name calls each split (the words the Hub's `datasets` reads the same way).
SPLIT_WORDS = {
    "train": ("train", "training"),
    "dev": ("dev", "validation", "valid", "val"),
    "test": ("test", "testing", "eval", "evaluation"),
}
# Files a saved or Hub dataset keeps beside its data: never data themselves.
_METADATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"}


def data_files(path: str | Path, split: str = "train", fmt: str | None = None) -> list[tuple[Path, str]]:
    """(file, format) of each file that holds `split` of `path`, in reading order."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder.")
    if not path.is_dir():
        return [(path, infer_format(path, fmt))]
    if (path / "dataset_dict.json").is_file():
        return saved_dataset_files(saved_split_folder(path, split))
    if (path / "state.json").is_file():
        return saved_dataset_files(path)
    return shard_files(path, split, fmt)


def saved_split_folder(folder: Path, split: str) -> Path:
    """The folder of `split` in a saved DatasetDict."""
    try:
        splits = list(json.loads((folder / "dataset_dict.json").read_text())["splits"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder}/dataset_dict.json: not a readable DatasetDict index ({e}).") from None
    words = SPLIT_WORDS.get(split, (split,))
    name = next((w for w in words if w in splits), None)
    if name is None:
        raise DataError(
            f"{folder}: a saved DatasetDict with the splits {', '.join(splits) or 'none'}; none is the {split} split "
            f"(named {' or '.join(words)}). Give the split's own folder instead, e.g. data.{split}_path={folder / splits[0]}."
            if splits else f"{folder}: a saved DatasetDict with no splits."
        )
    return folder / name


def saved_dataset_files(folder: Path) -> list[tuple[Path, str]]:
    """The Arrow files of a saved Dataset, in its own order (state.json)."""
    try:
        state = json.loads((folder / "state.json").read_text())
        names = [entry["filename"] for entry in state.get("_data_files", [])]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{folder}/state.json: not a readable saved Dataset ({e}).") from None
    files = [folder / name for name in names] if names else sorted(folder.glob("*.arrow"), key=natural_key)
    missing = [str(f) for f in files if not f.is_file()]
    if missing or not files:
        raise DataError(f"{folder}: a saved Dataset without its data files ({', '.join(missing) or 'no *.arrow file'}); save it again.")
    return [(f, "arrow") for f in files]


def natural_key(path: Path) -> list:
    """Sorts shard-2 before shard-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def split_of(relative: Path) -> str | None:
    """The split a file's path names, or None (`data/train-00000-of-00002.parquet` -> train)."""
    words = set(re.split(r"[-._ /\\0-9]+", str(relative.with_suffix("")).lower()))
    return next((split for split, names in SPLIT_WORDS.items() if words & set(names)), None)


def _listing(folder: Path) -> list[Path]:
    """The files under `folder` (any depth), hidden files and folders (.git, .cache) left out."""
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
        key=natural_key,
    )


def _by_format(folder: Path, files: list[Path], fmt: str | None) -> tuple[str, list[Path]]:
    if fmt:
        infer_format(folder / f"x.{fmt}", fmt)  # refuses an unknown data.format
        chosen = [p for p in files if EXTENSIONS.get(p.suffix.lower()) == fmt]
        if not chosen:
            raise DataError(f"{folder}: no *.{fmt} file in the folder (data.format={fmt}).")
        return fmt, chosen
    formats = {EXTENSIONS[p.suffix.lower()] for p in files}
    if len(formats) > 1:
        raise DataError(f"{folder}: holds {', '.join(sorted(formats))} files; set data.format to the one to read.")
    return formats.pop(), files


def shard_files(folder: Path, split: str, fmt: str | None) -> list[tuple[Path, str]]:
    """The data files of `split` in a folder of shards (see the module docstring)."""
    listing = _listing(folder)
    files = [p for p in listing if p.suffix.lower() in EXTENSIONS and p.name not in _METADATA]
    if not files:
        sheets = [p for p in listing if p.suffix.lower() in SPREADSHEETS]
        if sheets:
            raise spreadsheet_error(sheets[0])
        raise DataError(
            f"{folder}: a folder without data files ({', '.join(sorted(EXTENSIONS))}) and not a save_to_disk folder "
            "(no state.json or dataset_dict.json)."
        )
    fmt, files = _by_format(folder, files, fmt)
    named = {p: split_of(p.relative_to(folder)) for p in files}
    if not any(named.values()):
        return [(p, fmt) for p in files]  # a folder of one split's shards
    chosen = [p for p in files if named[p] == split]
    if not chosen:
        found = sorted({s for s in named.values() if s})
        raise DataError(
            f"{folder}: its files name the splits {', '.join(found)}, none the {split} split "
            f"(a file or folder name with {' or '.join(SPLIT_WORDS.get(split, (split,)))})."
        )
    ignored = [p.name for p in files if named[p] is None]
    if ignored:
        log.info("%s: %s name no split, left out of the %s split", folder, ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else ""), split)
    return [(p, fmt) for p in chosen]
