"""What a run wrote, read back (eval.json, metrics.jsonl, the Hydra config and overrides, the log),
and the report's own files written atomically: a reader never sees half a file, and a failure
leaves the previous file (or none) in place."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it becomes `path` when the block ends without an
    error, and is removed otherwise."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> Path:
    with replaced_atomically(path) as tmp:
        tmp.write_text(text)
    return path


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's rows by step, the last row of a step winning (a resumed run logs a step
    again); a line cut short by a killed run is skipped."""
    if not path.exists():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            by_step[row["step"]] = {**by_step.get(row["step"], {}), **row}
    return [by_step[s] for s in sorted(by_step)]


def read_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    if not path.exists():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides (.hydra/overrides.yaml) as key -> value."""
    out = {}
    for item in read_yaml(run_dir / ".hydra" / "overrides.yaml") or []:
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def data_sizes(run_dir: Path) -> list[str]:
    """The split sizes the run logged ("Data korsts (scored pairs): train 5749, dev 1500, ..."),
    once each (a resumed run logs them again; a multi-stage run once a stage)."""
    found = []
    for log in sorted(run_dir.glob("*.log")) + sorted(run_dir.glob("stage-*/*.log")):
        found += re.findall(r"\] - (Data .*)$", log.read_text(errors="replace"), flags=re.MULTILINE)
    return list(dict.fromkeys(found))


def last_error(run_dir: Path) -> str | None:
    """The last ERROR line of the run's log: why a failed run failed."""
    for log in sorted(run_dir.glob("*.log")):
        found = re.findall(r"\]\[ERROR\] - (.*)$", log.read_text(errors="replace"), flags=re.MULTILINE)
        if found:
            return found[-1]
    return None


def main_figure(result: dict[str, Any] | None, split: str = "dev") -> float | None:
    """The run's main metric (eval.json main_metric) on `split`; on dev, what a sweeper maximises
    and what a leaderboard sorts by. A retrieval metric (retrieval_ndcg@10) is in retrieval_<split>."""
    if not result or not result.get("main_metric"):
        return None
    metric = result["main_metric"]
    value = (result.get(split) or {}).get(metric)
    if value is None and metric.startswith("retrieval_"):
        value = (result.get(f"retrieval_{split}") or {}).get(metric.removeprefix("retrieval_"))
    return float(value) if isinstance(value, (int, float)) else None
