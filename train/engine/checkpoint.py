"""Checkpoints, resume and the run dir: every rule about what is on disk lives here.

A checkpoint is written into a hidden temporary dir next to its final place, gets a
`manifest.json` as its last file, and is then renamed into place: a crash while saving
leaves only a `.tmp` dir that nothing picks up. `latest` means the newest dir that has a
manifest. A run dir that holds a finished run is never written over unless asked.
Under several processes every rank calls these functions; only the main process writes files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.errors import DiskFull, RunDirError, UserError, is_disk_full

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE_FILE = "trainer_state.json"
ACCELERATE_STATE = "accelerate_state"
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


def add_file(model_dir: Path, name: str, text: str) -> None:
    """Writes (or replaces) one small file in a committed dir (final/'s README.md) without copying
    the dir: the file is replaced in one rename, then the manifest is rewritten the same way to list
    it. A crash in between leaves a complete dir whose manifest just does not list the new file."""
    model_dir = Path(model_dir)
    target = model_dir / name
    tmp = target.parent / f".{target.name}.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    list_in_manifest(model_dir, [name])


def list_in_manifest(model_dir: Path, names: list[str]) -> None:
    """Adds files placed in a committed dir (each in one rename) to its manifest, if it has one."""
    manifest_path = Path(model_dir) / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        manifest["files"] = sorted({*manifest.get("files", []), *names})
        write_json_atomic(manifest_path, manifest)


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


@dataclass
class Progress:
    """What a checkpoint needs beyond the accelerate state to continue at the next step."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # batches of `epoch` already consumed (per process)
    best_metric: float | None = None
    best_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, float] | None = None
    last_eval_step: int | None = None
    skipped_steps: int = 0  # optimizer steps skipped (not finite, or fp16's overflows)
    nonfinite_losses: int = 0


def load_progress(checkpoint: Path) -> Progress:
    return Progress(**json.loads((Path(checkpoint) / STATE_FILE).read_text()))


def save_checkpoint(accelerator: Any, to_save: Any, progress: Progress, target: Path) -> None:
    """Model dir (loadable by sentence-transformers) + accelerate state + progress, atomically.
    Every rank calls it: each writes its own RNG state into the shared dir."""
    main = accelerator.is_main_process
    tmp = temp_dir_for(target)
    run_dir = Path(target).parent.parent
    if main:
        warn_if_short_of_space(Path(target).parent)
    accelerator.wait_for_everyone()
    if main:
        begin(target)
    accelerator.wait_for_everyone()
    with space_errors(f"checkpoint {target}", run_dir, tmp):
        accelerator.save_state(str(tmp / ACCELERATE_STATE))
        if main:
            to_save.save(str(tmp), create_model_card=False)
            (tmp / STATE_FILE).write_text(json.dumps(progress.__dict__, indent=1))
    accelerator.wait_for_everyone()
    if main:
        commit(tmp, target, {"step": progress.step, "kind": "checkpoint"})
    accelerator.wait_for_everyone()


def save_model(accelerator: Any, to_save: Any, target: Path, manifest: dict) -> None:
    """A model dir (final/, best/) written atomically by the main process."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with space_errors(str(target), Path(target).parent), atomic_dir(target, manifest) as tmp:
            to_save.save(str(tmp), create_model_card=False)
    accelerator.wait_for_everyone()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def warn_if_short_of_space(checkpoints: Path) -> None:
    """Before a checkpoint: a warning while there is still time to act, when the disk has less
    free space than the last checkpoint took."""
    last = latest_checkpoint(checkpoints)
    if last is None:
        return
    needed, free = dir_size(last), shutil.disk_usage(checkpoints).free
    if free < needed:
        log.warning(
            "%s has %.1f MB free and the last checkpoint (%s) took %.1f MB: this checkpoint will probably not fit. "
            "Free space, or lower trainer.keep_last.", checkpoints, free / 1e6, last.name, needed / 1e6,
        )


@contextmanager
def space_errors(what: str, run_dir: Path, tmp: Path | None = None) -> Iterator[None]:
    """A write that runs out of space ends with what is intact and how to resume (DiskFull), and
    leaves no half-written dir behind."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFull(disk_full_message(what, run_dir)) from None


def disk_full_message(what: str, run_dir: Path, on_run_disk: bool = True) -> str:
    """What ran out of space, the space left (when the write was to the run dir's disk), what is
    intact and how to resume."""
    run_dir = Path(run_dir)
    latest = latest_checkpoint(run_dir / "checkpoints") if (run_dir / "checkpoints").is_dir() else None
    space = ""
    if on_run_disk and run_dir.exists():
        space = f" ({shutil.disk_usage(run_dir).free / 1e6:.1f} MB free" + (f"; the last checkpoint took {dir_size(latest) / 1e6:.1f} MB)" if latest else ")")
    intact = (f"Intact: {latest} (complete; nothing half-written is left)." if latest is not None
              else "No complete checkpoint of this run yet; nothing half-written is left.")
    return (
        f"No space left on the device while writing {what}{space}. {intact} Free space (or move the run dir, or "
        "data.cache_dir, to a larger disk) and "
        + (f"resume with the same command plus hydra.run.dir={run_dir} trainer.resume=latest." if latest is not None
           else "run the same command again.")
    )


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """trainer.resume (`latest` or a checkpoint dir) -> the checkpoint to load, or None."""
    if not resume:
        return None
    if resume == "latest":
        found = latest_checkpoint(run_dir / "checkpoints")
        if found is None:
            raise UserError(
                f"trainer.resume=latest: no complete checkpoint in {run_dir / 'checkpoints'}. "
                "Run with hydra.run.dir=<the run's dir> to resume that run, or give a checkpoint dir."
            )
        return found
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file() or not (path / ACCELERATE_STATE).is_dir():
        raise UserError(
            f"trainer.resume={resume}: not a complete training checkpoint (expected {STATE_FILE} and "
            f"{ACCELERATE_STATE}/ in it). Use a run's checkpoints/step-N/ dir, or trainer.resume=latest."
        )
    return path


def clear_run_outputs(run_dir: Path) -> None:
    """Removes a previous run's results (trainer.overwrite=true)."""
    # tensorboard/, mlruns/, mlflow_run_id: what train/engine/tracking.py writes (trainer.report_to).
    for name in ("final", "best", "checkpoints", "tensorboard", "mlruns"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("eval.json", "metrics.jsonl", "mlflow_run_id"):
        (run_dir / name).unlink(missing_ok=True)


def check_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Never replace a finished run's results without being asked to."""
    from accelerate import PartialState

    finished = (run_dir / "final").exists() or (run_dir / "eval.json").exists()
    if resuming or not finished:
        return
    if not overwrite:
        raise RunDirError(
            f"{run_dir} already holds a finished run (final/ or eval.json). Choose another "
            "hydra.run.dir, resume it with trainer.resume=latest, or replace it with trainer.overwrite=true."
        )
    log.warning("trainer.overwrite=true: removing the previous results in %s", run_dir)
    if PartialState().is_main_process:
        clear_run_outputs(run_dir)
    PartialState().wait_for_everyone()
