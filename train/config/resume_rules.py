"""A resume with a different command: which settings changed since the run started, and whether
each one changes what the run computes.

The run's settings are kept beside its checkpoints (`run_config.json`, written when it starts).
A resume compares its own with them: a change to the model, data, loss, batch size, processes,
learning rate and schedule, seed or precision would make the run neither the old recipe nor the
new one, so it is refused unless `trainer.resume_changed=allow`; logging, evaluation cadence,
trackers, `keep_last` and where files live cannot change the result and are accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "run_config.json"

# Settings that cannot change the weights a run ends with (prefixes of dotted keys).
NEUTRAL = (
    "trainer.log_every", "trainer.eval_every", "trainer.save_every", "trainer.keep_last", "trainer.report_to",
    "trainer.project_name", "trainer.resume", "trainer.resume_changed", "trainer.overwrite", "trainer.eval_batch_size",
    "trainer.num_workers", "data.dir", "data.cache_dir", "data.num_proc", "data.max_eval_samples", "stages",
)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): tree}


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """(key, old value, new value, whether it changes the result) for every setting that differs."""
    a, b = flatten(old), flatten(new)
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            # A key the run's file does not have is a setting newer than the run: its default
            # is what this version does, not a change the command asked for.
            out.append((key, a.get(key), b.get(key), not key.startswith(NEUTRAL) and key in a))
    return out


def config_file(checkpoint: Path) -> Path:
    """The settings file of the run a checkpoint (<run dir>/checkpoints/step-N) belongs to."""
    return Path(checkpoint).parent.parent / CONFIG_FILE


def write(run_dir: Path, settings: dict[str, Any], allowed: list[dict[str, Any]]) -> None:
    from train.engine.checkpoint import write_json_atomic

    write_json_atomic(Path(run_dir) / CONFIG_FILE, {"settings": settings, "resume_changes": allowed})


def read(checkpoint: Path) -> dict[str, Any] | None:
    path = config_file(checkpoint)
    return json.loads(path.read_text()) if path.is_file() else None


def check(checkpoint: Path | None, settings: dict[str, Any], policy: str, step: int | None) -> list[dict[str, Any]]:
    """The result-changing settings changes allowed so far in this run (earlier resumes' and this
    one's). Raises a UserError naming each change when `policy` is refuse."""
    import logging

    from train.errors import UserError

    log = logging.getLogger("train")
    if checkpoint is None:
        return []
    recorded = read(checkpoint)
    if recorded is None:
        log.warning("%s has no %s (a run from before it was kept): the resume's settings cannot be compared", config_file(checkpoint).parent, CONFIG_FILE)
        return []
    found = changes(recorded["settings"], settings)
    harmful = [c for c in found if c[3]]
    if found and not harmful:
        log.info("Resuming with changed settings that do not change the result: %s", describe(found))
    if harmful and policy != "allow":
        raise UserError(
            f"trainer.resume: this command changes settings of the run in {config_file(checkpoint).parent} that change its "
            f"result: {describe(harmful)}. Resume with the run's own settings, start a new run (another hydra.run.dir), "
            "or continue anyway with trainer.resume_changed=allow (the change is recorded in eval.json and the model card)."
        )
    if harmful:
        log.warning("trainer.resume_changed=allow: continuing at step %s with %s", step, describe(harmful))
    return list(recorded.get("resume_changes", [])) + [{"step": step, "key": k, "old": o, "new": n} for k, o, n, _ in harmful]


def describe(found: list[tuple[str, Any, Any, bool]]) -> str:
    return "; ".join(f"{key}: {json.dumps(old, ensure_ascii=False)} -> {json.dumps(new, ensure_ascii=False)}" for key, old, new, _ in found)
