"""Image–text data: (image, caption) rows from your own file, a folder per class, or Fashion-MNIST.

Loading never decodes pixels. A split holds image references (an absolute file path, or
`<uncompressed IDX file>#<index>`) that `open_image` (train/data/image_decoding.py) decodes when
a batch needs them, so a 60,000-image set costs its references and labels in memory.
Fashion-MNIST's files are train/data/fashion_mnist.py's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import datasets

from train.data.fashion_mnist import load_fashion_mnist
from train.data.formats import BadRecord, check_file, infer_format, read_records
from train.data.image_decoding import image_problem
from train.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
NAMES = ("image_text_file", "image_folder", "fashion_mnist")


class _BadImage(Exception):
    pass


def check_caption_template(template: str) -> None:
    """ConfigError unless `template.format(label=...)` works and shows the label."""
    marker = "\x00label\x00"
    try:
        filled = template.format(label=marker)
    except (KeyError, IndexError, ValueError, AttributeError) as e:
        raise ConfigError(
            f"data.caption_template={template!r} does not format with only {{label}} ({type(e).__name__}: {e}); "
            "write e.g. 'a photo of a {label}' (double other braces: {{ }})."
        ) from None
    # "{{label}}" formats fine but never shows the label.
    if "{label}" not in template or marker not in filled:
        raise ConfigError(f"data.caption_template={template!r} must contain {{label}}, e.g. 'a photo of a {{label}}'.")


# ---------------------------------------------------------------- checking rows


def _collect(
    items: Iterable[tuple[int, Any]],
    source: str,
    check: Callable[[Any], dict[str, Any]],
    on_bad_row: str,
    limit: int,
) -> datasets.Dataset:
    """The rows that `check` accepts, numbered as `items` numbers them, as a Dataset. The first bad
    row is an error naming source and row; with on_bad_row=skip all are skipped and counted in one
    warning. Stops after `limit` good rows (0 = all), so a quick run does not verify every image."""
    rows: list[dict[str, Any]] = []
    bad: list[str] = []
    total = 0
    for number, item in items:
        if limit and len(rows) >= limit:
            break
        total += 1
        try:
            rows.append({**check(item), "row": number})
        except _BadImage as e:
            if on_bad_row != "skip":
                raise DataError(
                    f"{source}, row {number}: {e}. Fix the row, or set data.on_bad_row=skip to skip bad rows."
                ) from None
            bad.append(f"row {number}: {e}")
    if total == 0:
        raise DataError(f"{source}: holds no rows.")
    if not rows:
        raise DataError(f"{source}: all {total} rows are bad (first: {bad[0]}).")
    if bad:
        first = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        log.warning("%s: skipped %d bad rows of %d (%s)", source, len(bad), total, first)
    return datasets.Dataset.from_list(rows)


def _text(record: dict[str, Any], column: str) -> str:
    value = record.get(column)
    if not isinstance(value, str):
        raise _BadImage(f"field {column!r} is not text ({value!r})")
    return value


def read_image_text_file(
    path: str | Path, fmt: str | None, image_column: str, text_column: str, on_bad_row: str = "error", limit: int = 0
) -> datasets.Dataset:
    """Dataset(image, text, row) from a csv/tsv/json/jsonl/parquet file of image paths and captions.
    Relative image paths are relative to the file's folder, so the file and its images move together."""
    path = Path(path)
    check_file(path)
    records = read_records(
        path, infer_format(path, fmt), {"data.columns.image": image_column, "data.columns.text": text_column}
    )
    base = path.parent.absolute()

    def check(record: Any) -> dict[str, Any]:
        if isinstance(record, BadRecord):
            raise _BadImage(record.reason)
        if not isinstance(record, dict):
            raise _BadImage(f"expected an object, got {type(record).__name__}")
        written = _text(record, image_column)
        if not written.strip():
            raise _BadImage(f"empty image path in {image_column!r}")
        image = Path(os.path.normpath(base / written))  # an absolute path stays as it is
        if not _text(record, text_column).strip():
            raise _BadImage(f"empty caption in {text_column!r} ({image})")
        problem = image_problem(image)
        if problem:
            raise _BadImage(f"{problem} ({image})")
        return {"image": str(image), "text": record[text_column]}

    numbered = ((number, record) for number, (_, record) in enumerate(records, start=1))
    return _collect(numbered, str(path), check, on_bad_row, limit)


def read_image_folder(
    folder: str | Path, caption_template: str, on_bad_row: str = "error", limit: int = 0
) -> datasets.Dataset:
    """Dataset(image, text, row, label) from `folder/<class name>/<image>`: the caption is
    the template filled with the class name; row is the 1-based place in the sorted listing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (expected one subfolder per class, images inside).")
    # Hidden folders are tool litter (.ipynb_checkpoints, .git), never a class.
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class subfolders; put each class's images in a subfolder named after the class.")
    listing = [
        (c.name, p) for c in classes for p in sorted(c.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    ]
    if not listing:
        raise DataError(
            f"{folder}: no images in its class subfolders ({', '.join(c.name for c in classes)}); "
            f"image files end in {', '.join(sorted(IMAGE_EXTENSIONS))}."
        )

    def check(item: tuple[str, Path]) -> dict[str, Any]:
        label, image = item
        problem = image_problem(image)
        if problem:
            raise _BadImage(f"{problem} ({image.absolute()})")
        return {"image": str(image.absolute()), "text": caption_template.format(label=label), "label": label}

    return _collect(enumerate(listing, start=1), str(folder), check, on_bad_row, limit)


# ---------------------------------------------------------------- the entry point


def load_image_text_splits(
    name: str,
    splits: tuple[str, ...],
    data_dir: Path,
    paths: dict[str, str | None],
    fmt: str | None,
    image_column: str,
    text_column: str,
    caption_template: str,
    class_names: list[str] | None,
    on_bad_row: str,
    max_train_samples: int = 0,
    max_eval_samples: int = 0,
    cache_dir: Path | None = None,
) -> dict[str, datasets.Dataset]:
    """`{split: Dataset(image, text, row[, label])}`: image is a reference for `open_image`, text
    the caption, row the place in the source (1-based data row of a file or of a folder's sorted
    listing; index in an IDX file), label the class name (image_folder, fashion_mnist)."""
    unknown = [s for s in splits if s not in ("train", "dev", "test")]
    if unknown:
        raise DataError(f"unknown split {unknown[0]!r}; use train, dev or test.")
    limits = {s: max_train_samples if s == "train" else max_eval_samples for s in splits}
    if name == "fashion_mnist":
        check_caption_template(caption_template)
        return load_fashion_mnist(splits, Path(data_dir), caption_template, class_names, limits, cache_dir)
    if name not in NAMES:
        raise DataError(f"data.name={name!r} is not image–text data; use one of {', '.join(NAMES)}.")
    if name == "image_folder":
        check_caption_template(caption_template)
    out = {}
    for split in splits:
        if not paths.get(split):
            continue
        if name == "image_text_file":
            out[split] = read_image_text_file(paths[split], fmt, image_column, text_column, on_bad_row, limits[split])
        else:
            out[split] = read_image_folder(paths[split], caption_template, on_bad_row, limits[split])
    if not out:
        kind = "file" if name == "image_text_file" else "folder (one subfolder per class)"
        raise DataError(f"data={name} needs a {kind}: set {', '.join(f'data.{s}_path' for s in splits)}.")
    return out
