"""A sweep dir's leaderboard: every run ranked by its main dev metric with the overrides that
differ (leaderboard.md, leaderboard.csv), and the runs' dev curves (dev_curves.png)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from train.report.files import last_error, main_figure, read_json, read_metrics, read_overrides, read_yaml, write_text_atomic
from train.report.plots import plot_curves, series
from train.report.tables import fmt, md_table


@dataclass
class SweepRun:
    name: str
    dir: Path
    result: dict[str, Any] | None
    overrides: dict[str, str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.result is not None

    @property
    def metric(self) -> str | None:
        return (self.result or {}).get("main_metric")

    @property
    def dev(self) -> float | None:
        return main_figure(self.result, "dev")

    @property
    def test(self) -> float | None:
        return main_figure(self.result, "test")


def sweep_run_dirs(sweep_dir: Path) -> list[Path]:
    """The run dirs of a sweep: its subdirs with a Hydra config or an eval.json, in job order."""
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and any((p / f).exists() for f in (".hydra", "eval.json", "retrieve.json"))]
    return sorted(dirs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def differing(overrides: list[dict[str, str]]) -> list[str]:
    """The override keys whose value is not the same in every run (absent counts as a value)."""
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1]


def ranked(runs: list[SweepRun]) -> list[SweepRun]:
    """Finished runs by main dev metric (higher first), finished runs without one, then
    failed/unfinished runs; in job order where equal."""
    def key(r: SweepRun):
        return (not r.finished, r.dev is None, -(r.dev or 0.0))

    return sorted(runs, key=key)


def leaderboard_rows(runs: list[SweepRun], keys: list[str]) -> tuple[list[str], list[list[Any]]]:
    metrics = sorted({r.metric for r in runs if r.metric})
    metric = metrics[0] if len(metrics) == 1 else "main metric"
    with_before = any(main_figure(r.result, "dev_before") is not None for r in runs)
    header = ["rank", "run", "status", f"dev {metric}", f"test {metric}"]
    header += [f"dev_before {metric}"] if with_before else []
    header += [*keys, "steps", "train_seconds"] + (["metric"] if len(metrics) > 1 else [])
    rows = []
    for rank, r in enumerate(ranked(runs), start=1):
        status = "ok" if r.finished else "failed"
        reason = last_error(r.dir) if not r.finished else None
        row = [rank if r.dev is not None else "", r.name, status + (f": {reason}" if reason else ""), r.dev, r.test]
        row += [main_figure(r.result, "dev_before")] if with_before else []
        row += [r.overrides.get(k, "") for k in keys]
        row += [(r.result or {}).get("steps", r.rows[-1]["step"] if r.rows else None), (r.result or {}).get("train_seconds")]
        row += [r.metric] if len(metrics) > 1 else []
        rows.append(row)
    return header, rows


def optuna_lines(sweep_dir: Path) -> list[str]:
    best = read_yaml(sweep_dir / "optimization_results.yaml")
    if not best:
        return []
    if "best_value" in best:
        params = " ".join(f"`{k}={fmt(v)}`" for k, v in (best.get("best_params") or {}).items())
        return [f"Optuna ({sweep_dir.name}/optimization_results.yaml): best value {fmt(best['best_value'])}, {params}", ""]
    return [f"Optuna: {len(best.get('solutions', []))} Pareto-optimal trials (optimization_results.yaml)", ""]


def plot_dev_curves(runs: list[SweepRun], keys: list[str], path: Path) -> Path | None:
    curves = {}
    for r in ranked(runs):
        metric = r.metric or next((m for m in (o.metric for o in runs) if m), None)
        steps, values = series(r.rows, f"dev_{metric}") if metric else ([], [])
        if steps:
            label = " ".join([r.name, *(f"{k}={r.overrides[k]}" for k in keys if k in r.overrides)])
            curves[label[:60]] = (steps, values)
    metrics = sorted({r.metric for r in runs if r.metric})
    if not curves:
        return None
    return plot_curves(curves, f"dev {' / '.join(metrics)} by run", f"dev {' / '.join(metrics)}", path)


def sweep_result(run_dir: Path) -> dict[str, Any] | None:
    """eval.json; for a `python -m train.retrieve -m` job, its last system's NDCG@10 (what that
    command returns to a sweeper) as the main figure."""
    result = read_json(run_dir / "eval.json")
    retrieve = read_json(run_dir / "retrieve.json") if result is None else None
    if retrieve and retrieve.get("systems"):
        return {"main_metric": "ndcg@10", "dev": {"ndcg@10": retrieve["systems"][-1]["ndcg@10"]}}
    return result


def write_leaderboard(sweep_dir: Path) -> list[Path]:
    """leaderboard.md, leaderboard.csv and dev_curves.png in the sweep dir; returns the files written."""
    runs = [
        SweepRun(d.name, d, sweep_result(d), read_overrides(d), read_metrics(d / "metrics.jsonl"))
        for d in sweep_run_dirs(sweep_dir)
    ]
    keys = differing([r.overrides for r in runs])
    header, rows = leaderboard_rows(runs, keys)
    plot = plot_dev_curves(runs, keys, sweep_dir / "dev_curves.png")
    table = io.StringIO(newline="")
    csv.writer(table).writerows([header, *[["" if c is None else c for c in row] for row in rows]])
    write_text_atomic(sweep_dir / "leaderboard.csv", table.getvalue())
    failed = sum(not r.finished for r in runs)
    lines = [
        f"# Leaderboard: {sweep_dir.name}", "",
        f"Sweep dir: `{sweep_dir}`; {len(runs)} runs, {failed} failed or unfinished. "
        "Sorted by the main dev metric (higher first); the columns after the figures are the overrides that differ.",
        "", *optuna_lines(sweep_dir), *md_table(header, rows), "",
    ]
    if plot:
        lines += [f"![dev curves]({plot.name})", ""]
    write_text_atomic(sweep_dir / "leaderboard.md", "\n".join(lines))
    return [sweep_dir / "leaderboard.md", sweep_dir / "leaderboard.csv", *([plot] if plot else [])]
