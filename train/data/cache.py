"""The on-disk data cache: entries keyed by what determines them, built once, then memory-mapped.

An entry is a folder `<root>/<kind>/<digest>/` whose `manifest.json` (written last) holds the
full key, the files with their sizes and what the build counted. It is built in a hidden
temporary folder and renamed into place, under a file lock, so that:
- several processes (ranks of one run, runs side by side) build it once: the first takes the
  lock and builds, the others wait for the lock and then map what it wrote;
- a build that was killed leaves only a temporary folder, which is never read and is removed by
  the next build of the same key;
- a stale entry cannot be used: the key holds the content hash of the data files, the
  tokenizer, the settings and CACHE_VERSION, and a manifest whose key or file sizes do not match
  is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("train")

# Bumped whenever what an entry holds changes shape: older entries are then simply not found.
# 2: n-tuples (negative_1 ... negative_n) and teacher scores from candidates files.
CACHE_VERSION = 2
MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """EMBED_CACHE_DIR, else data/.cache under the working directory."""
    return Path(os.environ.get("EMBED_CACHE_DIR") or "data/.cache")


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def file_digest(path: str | Path, chunk: int = 1 << 24) -> str:
    """A 128-bit hash of a file's bytes (xxh3: about 10 GB/s, so a 2 GB corpus costs a fraction
    of a second from the page cache) with its size."""
    import xxhash

    h = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return f"{h.hexdigest()}-{size}"


def key_digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Entry:
    path: Path
    manifest: dict[str, Any]
    built: bool  # by this call (False: found complete)

    def file(self, name: str) -> Path:
        return self.path / name


def _valid(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of a complete entry for `key`, or None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != CACHE_VERSION or manifest.get("key") != json.loads(json.dumps(key, sort_keys=True, default=str)):
        return None
    for name, size in manifest.get("files", {}).items():
        try:
            if (path / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return manifest


def _lock(root: Path, digest: str):
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / f".{digest}.lock"))


def cached(root: Path, kind: str, key: dict[str, Any], build: Callable[[Path], dict[str, Any]], what: str = "") -> Entry:
    """The complete entry for `key` under root/kind, built by `build(folder)` if there is none.

    `build` writes its files into the (temporary) folder it is given and returns what the
    manifest should hold besides the key and the file sizes."""
    folder = root / kind
    digest = key_digest(key)
    path = folder / digest
    manifest = _valid(path, key)
    if manifest is not None:
        return Entry(path, manifest, built=False)
    lock = _lock(folder, digest)
    try:
        lock.acquire(timeout=0)
    except Exception:  # filelock.Timeout: another process builds it
        log.info("Waiting for another process to build the %s cache %s", what or kind, path)
        lock.acquire()
    try:
        manifest = _valid(path, key)
        if manifest is not None:
            return Entry(path, manifest, built=False)
        for stale in folder.glob(f".{digest}.*.tmp"):  # killed builds of this key; we hold its lock
            shutil.rmtree(stale, ignore_errors=True)
        if path.exists():  # incomplete or from another version: never used, replaced
            shutil.rmtree(path)
        tmp = folder / f".{digest}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir(parents=True)
        started = time.perf_counter()
        try:
            extra = build(tmp)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
            manifest = {
                "version": CACHE_VERSION,
                "key": json.loads(json.dumps(key, sort_keys=True, default=str)),
                "files": files,
                "build_seconds": round(time.perf_counter() - started, 2),
                **extra,
            }
            for name in files:
                _fsync(tmp / name)
            part = tmp / f".{MANIFEST}.part"
            part.write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
            _fsync(part)
            os.replace(part, tmp / MANIFEST)
            try:
                os.rename(tmp, path)
            except OSError:
                # On a filesystem whose locks do not hold across machines, another process may have
                # renamed the same entry into place first: then that one is used.
                found = _valid(path, key)
                if found is None:
                    raise
                return Entry(path, found, built=False)
            _fsync_dir(folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return Entry(path, manifest, built=True)
    finally:
        lock.release()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:  # not every filesystem lets a directory be opened for fsync
        pass
