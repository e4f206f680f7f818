"""python -m train.report <dir>: which kind of dir it is (a run or a sweep), and the command line.
matplotlib is checked before anything is written: without it the command says which extra to
install and exits 2, like the project's other user errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from train.errors import UserError
from train.report.run_report import write_run_report
from train.report.sweep import sweep_run_dirs, write_leaderboard


class NotARunError(UserError):
    """The directory is neither a run dir nor a sweep dir."""


def require_matplotlib() -> None:
    """matplotlib is there (it draws every plot); otherwise a UserError that names the extra."""
    from train.report.plots import pyplot

    try:
        pyplot()
    except ImportError as e:
        raise UserError(
            f"python -m train.report draws its plots with matplotlib, which is not installed ({e}). Install the "
            "`report` extra: pip install 'embed-train[report]' (in a checkout: pip install -e '.[report]'). "
            "Nothing was written."
        ) from None


def kind_of(path: Path) -> str:
    """"run" or "sweep"; NotARunError for anything else."""
    if not path.is_dir():
        raise NotARunError(f"{path}: no such directory.")
    if any((path / f).exists() for f in ("eval.json", "metrics.jsonl", "retrieve.json", ".hydra/config.yaml")):
        return "run"
    if (path / "multirun.yaml").exists() or sweep_run_dirs(path):
        return "sweep"
    raise NotARunError(
        f"{path}: neither a run dir (no eval.json, metrics.jsonl, retrieve.json or .hydra/config.yaml) "
        "nor a sweep dir (no multirun.yaml, no run dirs inside). Point it at outputs/<date>/<time> "
        "or outputs/multirun/<date>/<time>."
    )


def report(path: str | Path) -> list[Path]:
    """The report of a run dir or the leaderboard of a sweep dir; returns the files written."""
    path = Path(path)
    kind = kind_of(path)
    require_matplotlib()
    return write_leaderboard(path) if kind == "sweep" else write_run_report(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.report",
        description="Plots and report.md for a run dir; leaderboard.md/.csv and dev_curves.png for a sweep dir.",
    )
    parser.add_argument("dir", help="a run dir (outputs/<date>/<time>) or a sweep dir (outputs/multirun/<date>/<time>)")
    args = parser.parse_args(argv)
    try:
        written = report(args.dir)
    except UserError as e:  # not a run or sweep dir, matplotlib missing
        print(f"Error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
