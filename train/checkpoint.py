"""Checkpoint directories that are either complete or absent.

A checkpoint is written into a hidden temporary dir next to its final place, gets a
`manifest.json` as its last file, and is then renamed into place: a crash while saving
leaves only a `.tmp` dir that nothing picks up. `latest` means the newest dir that has a
manifest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def temp_dir_for(target: Path) -> Path:
    """The hidden dir a checkpoint is written into before `commit` renames it to `target`."""
    target = Path(target)
    return target.parent / f".{target.name}.tmp"


def begin(target: Path) -> Path:
    tmp = temp_dir_for(target)
    shutil.rmtree(tmp, ignore_errors=True)  # left over from a crash while saving
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, target: Path, manifest: dict | None = None) -> None:
    """Writes the manifest last, then renames `tmp` into place (replacing an older `target`)."""
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    with open(tmp / MANIFEST, "w") as f:
        json.dump({**(manifest or {}), "files": files, "written_at": time.time()}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(target: Path, manifest: dict | None = None) -> Iterator[Path]:
    """Yields a temporary dir to fill; on success it replaces `target` in one rename."""
    target = Path(target)
    tmp = begin(target)
    try:
        yield tmp
        commit(tmp, target, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, obj: object) -> None:
    """Readers see the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_complete(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def step_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete `step-N` dirs under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    found = step_checkpoints(root)
    return found[-1][1] if found else None


def prune(root: Path, keep_last: int, protect: Callable[[Path], bool] = lambda p: False) -> None:
    """Removes all but the newest `keep_last` complete step checkpoints (0 keeps all)."""
    if keep_last <= 0:
        return
    for _, path in step_checkpoints(root)[:-keep_last]:
        if not protect(path):
            shutil.rmtree(path, ignore_errors=True)
