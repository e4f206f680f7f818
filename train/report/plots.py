"""The PNG curves: a run's loss, learning rate and dev metrics over steps, any curves against the
step. matplotlib (pip install 'embed-train[report]') is imported only when a plot is drawn."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from train.report.files import replaced_atomically

PLOT_DPI = 100


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_curves(curves: dict[str, tuple[list, list]], title: str, ylabel: str, path: Path) -> Path:
    """One line per curve (label -> (steps, values)) against the step, saved as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=PLOT_DPI, format="png")
    plt.close(fig)
    return path


def series(rows: list[dict[str, Any]], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [s for s, _ in points], [v for _, v in points]


def plot_run(rows: list[dict[str, Any]], out_dir: Path, prefix: str = "", before: dict[str, Any] | None = None) -> list[Path]:
    """loss.png, lr.png and dev_<metric>.png (each metric at its eval steps; the untrained model's
    figure, eval.json dev_before, at step 0) from metrics.jsonl rows."""
    keys = ["loss", "lr"] + sorted({k for r in rows for k in r if k.startswith("dev_") and not k.startswith("dev_n_")})
    paths = []
    for key in keys:
        steps, values = series(rows, key)
        start = (before or {}).get(key.removeprefix("dev_")) if key.startswith("dev_") else None
        if steps and isinstance(start, (int, float)):
            steps, values = [0, *steps], [start, *values]
        if steps:
            title = f"{prefix}{key}".replace("dev_", "dev ")
            paths.append(plot_curves({key: (steps, values)}, title, key, out_dir / f"{file_name(prefix + key)}.png"))
    return paths
