"""Fashion-MNIST as image–text data: the IDX files (downloaded when missing), decompressed once
into the cache, split into train (the first 59,000 train images), dev (the last 1,000) and test
(t10k); each image a reference `<IDX file>#<index>` that train/data/image_decoding.py decodes.
"""

from __future__ import annotations

import gzip
import logging
import os
import tempfile
from pathlib import Path

import datasets
import numpy as np

from train.data.image_decoding import IDX_HEADER, IMAGES_MAGIC, LABELS_MAGIC, idx_header
from train.data.presets import _download
from train.errors import ConfigError, DataError

log = logging.getLogger("train.data.images")

FASHION_MNIST_EN = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_KO = ["티셔츠", "바지", "풀오버", "드레스", "코트", "샌들", "셔츠", "운동화", "가방", "앵클부츠"]

_FASHION_DIR = "fashion-mnist"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com"
_FASHION_FILES = {  # split source -> (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_FASHION_DEV_ROWS = 1000  # the last rows of the train file: Fashion-MNIST has no dev split of its own


def default_cache_dir() -> Path:
    """Where decompressed data goes: EMBED_CACHE_DIR, else data/.cache under the working directory."""
    return Path(os.environ.get("EMBED_CACHE_DIR") or "data/.cache")


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
    count, rows, cols = idx_header(str(gz), _gunzip(gz, IDX_HEADER), IMAGES_MAGIC)
    size = IDX_HEADER + count * rows * cols
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
    (count,) = idx_header(str(gz), data, LABELS_MAGIC)
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
