"""Image references -> pixels: image files and `<uncompressed IDX file>#<index>` references.

`open_image` decodes one reference when a batch needs it; `image_problem` checks that a file is
an image without decoding its pixels. An IDX file is memory-mapped once a process, so DataLoader
workers share it through the page cache instead of each holding a copy.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from train.errors import DataError

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
IDX_HEADER = 16  # magic, count, rows, cols: four big-endian uint32


_idx_maps: dict[str, np.memmap] = {}  # per process: a forked worker inherits the mapping, not a copy


def idx_header(path: str, data: bytes, magic: int) -> tuple[int, ...]:
    expected = 4 if magic == IMAGES_MAGIC else 2
    if len(data) < 4 * expected:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes).")
    fields = struct.unpack(f">{expected}I", data[: 4 * expected])
    if fields[0] != magic:
        kind = "images" if magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{path}: not an IDX {kind} file (magic number {fields[0]}, expected {magic}).")
    return fields[1:]


def _idx_images(path: str) -> np.memmap:
    images = _idx_maps.get(path)
    if images is None:
        try:
            with open(path, "rb") as f:
                count, rows, cols = idx_header(path, f.read(IDX_HEADER), IMAGES_MAGIC)
            images = np.memmap(path, np.uint8, "r", offset=IDX_HEADER, shape=(count, rows, cols))
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


def image_problem(path: Path) -> str | None:
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
