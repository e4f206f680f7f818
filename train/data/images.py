"""Image–text data: (image, caption) rows from your own file, a folder per class, or Fashion-MNIST.

Loading never decodes pixels. A split holds image references (an absolute file path, or
`<uncompressed IDX file>#<index>`) that `open_image` decodes when a batch needs them, so a
60,000-image set costs its references and labels in memory, and DataLoader workers share
the IDX files through the page cache instead of each holding a copy.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from train.data.presets import _download
from train.data.readers import _BadRecord, _check_file, infer_format, read_records
from train.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FASHION_MNIST_EN = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_KO = ["티셔츠", "바지", "풀오버", "드레스", "코트", "샌들", "셔츠", "운동화", "가방", "앵클부츠"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
NAMES = ("image_text_file", "image_folder", "fashion_mnist")

_FASHION_DIR = "fashion-mnist"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
_FASHION_FILES = {  # split source -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FASHION_DEV_ROWS = 1000  # the last rows of the train file: Fashion-MNIST has no dev split of its own
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_IDX_HEADER = 16  # magic, count, rows, cols: four big-endian uint32


class _BadImage(Exception):
    pass


def default_cache_dir() -> Path:
    """Where decompressed data goes: EMBED_CACHE_DIR, else data/.cache under the working directory."""
    return Path(os.environ.get("EMBED_CACHE_DIR") or "data/.cache")


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


# ---------------------------------------------------------------- decoding


_idx_maps: dict[str, np.memmap] = {}  # per process: a forked worker inherits the mapping, not a copy


def _idx_header(path: str, data: bytes, magic: int) -> tuple[int, ...]:
    expected = 4 if magic == _IMAGES_MAGIC else 2
    if len(data) < 4 * expected:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes).")
    fields = struct.unpack(f">{expected}I", data[: 4 * expected])
    if fields[0] != magic:
        kind = "images" if magic == _IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: not an IDX {kind} file (magic number {fields[0]}, expected {magic}).")
    return fields[1:]


def _idx_images(path: str) -> np.memmap:
    images = _idx_maps.get(path)
    if images is None:
        try:
            with open(path, "rb") as f:
                count, rows, cols = _idx_header(path, f.read(_IDX_HEADER), _IMAGES_MAGIC)
            images = np.memmap(path, np.uint8, "r", offset=_IDX_HEADER, shape=(count, rows, cols))
        except (OSError, ValueError) as e:  # ValueError: numpy's word for a file shorter than its header says
            raise DataError(f"{path}: cannot read the IDX images file ({e}).") from None
        _idx_maps[path] = images
    return images


def _open_idx(path: str, index: int):
    from PIL import Image

    images = _idx_images(path)
    if index >= len(images):
        raise DataError(f"{path}: no image #{index}; the file holds {len(images)}.")
    return Image.fromarray(np.array(images[index])).convert("RGB")  # a copy: the image outlives no mapping


def open_image(ref: str):
    """One image reference (see the module docstring) as an RGB PIL image."""
    from PIL import Image

    path, _, index = ref.rpartition("#")
    # A '#' may also occur in a file name: an IDX reference is one whose head is a known or existing file.
    if index.isdigit() and (path in _idx_maps or (not os.path.exists(ref) and os.path.isfile(path))):
        return _open_idx(path, int(index))
    try:
        with Image.open(ref) as image:
            return image.convert("RGB")  # decodes every pixel, so the file is closed on return
    except FileNotFoundError:
        raise DataError(f"{ref}: no such image file.") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise DataError(f"{ref}: cannot decode the image ({type(e).__name__}: {e}).") from None


def _image_problem(path: Path) -> str | None:
    """Why `path` is not a usable image, or None; parses the file without decoding its pixels."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        return "no such image file"
    if not path.is_file():
        return "not a file"
    try:
        with Image.open(path) as image:
            image.verify()
    except UnidentifiedImageError:
        return "not an image file"
    except PermissionError as e:
        return f"cannot read the file ({e.strerror})"
    except Exception as e:  # a truncated or corrupt image: PIL's error types vary by format
        return f"broken image ({type(e).__name__}: {e})"
    return None


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
    _check_file(path)
    records = read_records(
        path, infer_format(path, fmt), {"data.columns.image": image_column, "data.columns.text": text_column}
    )
    base = path.parent.absolute()

    def check(record: Any) -> dict[str, Any]:
        if isinstance(record, _BadRecord):
            raise _BadImage(record.reason)
        if not isinstance(record, dict):
            raise _BadImage(f"expected an object, got {type(record).__name__}")
        written = _text(record, image_column)
        if not written.strip():
            raise _BadImage(f"empty image path in {image_column!r}")
        image = Path(os.path.normpath(base / written))  # an absolute path stays as it is
        if not _text(record, text_column).strip():
            raise _BadImage(f"empty caption in {text_column!r} ({image})")
        problem = _image_problem(image)
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
        problem = _image_problem(image)
        if problem:
            raise _BadImage(f"{problem} ({image.absolute()})")
        return {"image": str(image.absolute()), "text": caption_template.format(label=label), "label": label}

    return _collect(enumerate(listing, start=1), str(folder), check, on_bad_row, limit)


# ---------------------------------------------------------------- Fashion-MNIST


def _fashion_file(data_dir: Path, name: str) -> Path:
    """data_dir/fashion-mnist/<name>, downloaded when missing."""
    path = Path(data_dir) / _FASHION_DIR / name
    if not path.exists():
        log.info("fashion_mnist: fetching %s into %s (Zalando Research, MIT)", name, path.parent)
        try:
            _download(f"{_FASHION_URL}/{name}", path)
        except OSError as e:
            raise DataError(
                f"data=fashion_mnist: {path} not found, and downloading failed ({e}). Put the files "
                f"{', '.join(f for fs in _FASHION_FILES.values() for f in fs)} in {path.parent}, or point "
                f"EMBED_DATA_DIR (data.dir) at a folder that holds {_FASHION_DIR}/ with them."
            ) from None
    return path


def _gunzip(path: Path, size: int = -1) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read(size)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a readable gzip file ({e}).") from None


def _decompressed_images(gz: Path, cache_dir: Path) -> tuple[Path, int]:
    """The uncompressed copy of an IDX images file under cache_dir (made once) and its image count."""
    count, rows, cols = _idx_header(str(gz), _gunzip(gz, _IDX_HEADER), _IMAGES_MAGIC)
    size = _IDX_HEADER + count * rows * cols
    out = (cache_dir / _FASHION_DIR / gz.name.removesuffix(".gz")).absolute()
    if out.is_file() and out.stat().st_size == size:
        return out, count
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    except OSError as e:
        raise DataError(
            f"{out.parent}: cannot write the decompressed images there ({e}); set EMBED_CACHE_DIR to a writable folder."
        ) from None
    try:
        with os.fdopen(fd, "wb") as f, gzip.open(gz, "rb") as source:
            while chunk := source.read(1 << 20):
                f.write(chunk)
        if os.path.getsize(tmp) != size:
            raise DataError(f"{gz}: holds {os.path.getsize(tmp)} bytes of images, its header says {size}.")
        os.replace(tmp, out)  # another process (or a killed run) never leaves a half-written file in its place
    except (OSError, EOFError) as e:
        raise DataError(f"{gz}: cannot decompress into {out} ({e}).") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out, count


def _labels(gz: Path) -> np.ndarray:
    data = _gunzip(gz)  # 60,000 labels are 60 kB
    (count,) = _idx_header(str(gz), data, _LABELS_MAGIC)
    labels = np.frombuffer(data, np.uint8, offset=8)
    if len(labels) != count:
        raise DataError(f"{gz}: holds {len(labels)} labels, its header says {count}.")
    return labels


def _fashion_source(
    data_dir: Path, source: str, cache_dir: Path, class_names: list[str]
) -> tuple[Path, np.ndarray]:
    images_gz, labels_gz = (_fashion_file(data_dir, name) for name in _FASHION_FILES[source])
    images, count = _decompressed_images(images_gz, cache_dir)
    labels = _labels(labels_gz)
    if len(labels) != count:
        raise DataError(f"{labels_gz}: {len(labels)} labels for the {count} images of {images_gz}.")
    if labels.max() >= len(class_names):
        raise DataError(f"{labels_gz}: label {labels.max()}, but data.class_names names {len(class_names)} classes.")
    return images, labels


def _fashion_split(
    images: Path, labels: np.ndarray, start: int, stop: int, captions: list[str], names: list[str]
) -> datasets.Dataset:
    classes = labels[start:stop].tolist()
    return datasets.Dataset.from_dict({
        "image": [f"{images}#{i}" for i in range(start, stop)],
        "text": [captions[c] for c in classes],
        "row": list(range(start, stop)),
        "label": [names[c] for c in classes],
    })


def load_fashion_mnist(
    splits: tuple[str, ...],
    data_dir: Path,
    caption_template: str,
    class_names: list[str] | None = None,
    limits: dict[str, int] | None = None,
    cache_dir: Path | None = None,
) -> dict[str, datasets.Dataset]:
    """train = the first 59,000 images of the train file, dev = its last 1,000, test = t10k;
    row is the index in the IDX file."""
    names = list(class_names) if class_names is not None else FASHION_MNIST_EN
    if len(names) != len(FASHION_MNIST_EN):
        raise ConfigError(
            f"data.class_names lists {len(names)} names; Fashion-MNIST has {len(FASHION_MNIST_EN)} classes (in label order)."
        )
    captions = [caption_template.format(label=name) for name in names]
    cache_dir = cache_dir or default_cache_dir()
    limits = limits or {}
    sources: dict[str, tuple[Path, np.ndarray]] = {}  # train and dev share one file: read it once
    out = {}
    for split in splits:
        source = "t10k" if split == "test" else "train"
        if source not in sources:
            sources[source] = _fashion_source(data_dir, source, cache_dir, names)
        images, labels = sources[source]
        if source == "train" and len(labels) <= _FASHION_DEV_ROWS:
            raise DataError(f"{images}: {len(labels)} images; the train file needs more than the {_FASHION_DEV_ROWS} kept for dev.")
        start, stop = {
            "train": (0, len(labels) - _FASHION_DEV_ROWS),
            "dev": (len(labels) - _FASHION_DEV_ROWS, len(labels)),
            "test": (0, len(labels)),
        }[split]
        if limits.get(split):
            stop = min(stop, start + limits[split])
        out[split] = _fashion_split(images, labels, start, stop, captions, names)
    return out


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
