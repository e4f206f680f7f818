"""python -m train.report <dir>: plots and a Markdown report of a run, or a leaderboard of a sweep.

    python -m train.report outputs/2026-01-01/12-00-00             # a run dir
    python -m train.report outputs/multirun/2026-01-01/12-00-00    # a sweep dir (-m, Optuna too)

A run dir (eval.json, metrics.jsonl, .hydra/) gets, inside it:
    loss.png, lr.png, dev_<metric>.png   the training loss, learning rate and each dev metric over
                                         steps (a multi-stage run: <stage>-loss.png, ...)
    report.md                            config, data sizes, the final dev/test figures, time,
                                         throughput, padding ratio, links to the plots
A train.retrieve run dir (retrieve.json) gets report.md with its systems' table.

A sweep dir (multirun.yaml, or run dirs inside) gets, inside it:
    leaderboard.md, leaderboard.csv      every run sorted by its main dev metric (eval.json's
                                         main_metric, higher first), the overrides that differ
                                         between runs, the test figure, time; runs without an
                                         eval.json at the bottom as failed
    dev_curves.png                       the main dev metric over steps, one line per run
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLOT_DPI = 100
# The trainer settings report.md shows, in this order (those in the run's config).
TRAINER_KEYS = (
    "epochs", "max_steps", "batch_size", "grad_accum", "lr", "warmup_ratio", "weight_decay",
    "max_grad_norm", "mixed_precision", "seed", "eval_every",
)


class NotARunError(Exception):
    """The directory is neither a run dir nor a sweep dir."""


# --- Reading a run dir --------------------------------------------------------------------------


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


# --- Plots --------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_curves(curves: dict[str, tuple[list, list]], title: str, ylabel: str, path: Path) -> Path:
    """One line per curve (label -> (steps, values)) against the step, saved as a PNG."""
    plt = _pyplot()
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
    fig.savefig(path, dpi=PLOT_DPI)
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


# --- report.md ----------------------------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):  # figures (mostly in [-1, 1]) to 4 decimals, other numbers to 4 digits
        return f"{value:.4f}" if 1e-3 <= abs(value) <= 1 or value == 0 else f"{value:.4g}"
    if isinstance(value, str) and len(value) > 10 and re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", value):
        return f"{float(value):.4g}"  # an override Optuna sampled: 4.3708610696262625e-05
    return str(value)


def md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


FIGURE_SPLITS = ("dev_before", "dev", "test_before", "test", "retrieval_dev")


def figures_table(result: dict[str, Any]) -> list[str]:
    """The final figures: one row per split (dev, test, and the untrained model's *_before)."""
    splits = [s for s in FIGURE_SPLITS if isinstance(result.get(s), dict) and result[s]]
    if not splits:
        return ["No dev or test figures (no dev or test set)."]
    columns = list(dict.fromkeys(k for s in splits for k in result[s]))
    return md_table(["split", *columns], [[s, *(result[s].get(c) for c in columns)] for s in splits])


def config_lines(run_dir: Path, result: dict[str, Any]) -> list[str]:
    cfg = read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    trainer = cfg.get("trainer") or {}
    rows = [
        ["task", result.get("task") or (cfg.get("task") or {}).get("name")],
        ["model", result.get("model") or (cfg.get("model") or {}).get("name")],
        ["pooling", (cfg.get("pooling") or {}).get("mode")],
        ["data", result.get("data") or (cfg.get("data") or {}).get("name")],
        ["loss", result.get("loss") or (cfg.get("loss") or {}).get("name")],
        *[[f"trainer.{k}", trainer[k]] for k in TRAINER_KEYS if k in trainer],
    ]
    lines = md_table(["setting", "value"], [r for r in rows if r[1] is not None])
    overrides = read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    if overrides:
        lines += ["", "Command-line overrides: " + " ".join(f"`{o}`" for o in overrides)]
    return lines


def training_lines(result: dict[str, Any]) -> list[str]:
    best = result.get("best") or {}
    rows = [
        ["steps", result.get("steps")],
        ["train seconds", result.get("train_seconds")],
        ["pairs/s (training)", result.get("train_pairs_per_second")],
        # A ratio (1 = padding-free), not a figure in [0, 1]: four digits, not four decimals.
        ["padding ratio (padded/real tokens)", f"{result['padding_ratio']:.4g}" if result.get("padding_ratio") is not None else None],
        ["mixed precision", result.get("mixed_precision")],
        ["processes", result.get("num_processes")],
        ["main metric", result.get("main_metric")],
        ["best checkpoint", f"step {best.get('step')}: {fmt(best.get(result.get('main_metric')))}" if best else None],
    ]
    return md_table(["", ""], [r for r in rows if r[1] is not None])


def retrieve_lines(report: dict[str, Any]) -> list[str]:
    """train.retrieve's retrieve.json: each system's ranking figures and cost per query."""
    lines = [
        f"data={report.get('data')} {report.get('split')}: {report.get('n_queries')} queries, "
        f"corpus {report.get('corpus_size')} documents ({report.get('corpus')}); "
        f"bi-encoder {report.get('bi_encoder')}, cross-encoder {report.get('cross_encoder')}",
        "",
    ]
    columns = ["mrr@10", "ndcg@10", "recall@1", "recall@10", "ms_per_query", "cross_encoder_pairs_per_query"]
    lines += md_table(["system", *columns], [[s.get("system"), *(s.get(c) for c in columns)] for s in report.get("systems", [])])
    return lines + [""] + [f"- {n}" for n in report.get("notes", [])]


def stage_dirs(run_dir: Path, result: dict[str, Any] | None) -> list[tuple[str, Path]]:
    """(name, dir) of each stage of a multi-stage run; [("", run_dir)] for a single run."""
    names = list((result or {}).get("stages") or {}) or sorted(p.name for p in run_dir.glob("stage-*") if p.is_dir())
    return [(n, run_dir / n) for n in names] if names else [("", run_dir)]


def write_run_report(run_dir: Path) -> list[Path]:
    """The plots and report.md of one run dir; returns the files written."""
    result = read_json(run_dir / "eval.json")
    retrieve = read_json(run_dir / "retrieve.json")
    lines = [f"# Run report: {run_dir.name}", "", f"Run dir: `{run_dir}`", ""]
    if result is None and retrieve is None:
        lines += ["**Unfinished or failed**: no eval.json." + (f" Last error: {last_error(run_dir)}" if last_error(run_dir) else ""), ""]
    lines += ["## Config", "", *config_lines(run_dir, result or {}), ""]
    sizes = data_sizes(run_dir)
    if sizes:
        lines += ["## Data", "", *[f"- {s}" for s in sizes], ""]
    if retrieve is not None:
        lines += ["## Retrieval", "", *retrieve_lines(retrieve), ""]
    if result is not None:
        lines += ["## Final figures", "", *figures_table(result), ""]
        for name, stage in (result.get("stages") or {}).items():
            lines += [f"### Stage {name}", "", *figures_table(stage), ""]
        lines += ["## Training", "", *training_lines(result), ""]
    plots = []
    for name, stage in stage_dirs(run_dir, result):
        figures = ((result or {}).get("stages") or {}).get(name, result) or {}
        plots += plot_run(read_metrics(stage / "metrics.jsonl"), run_dir, f"{name}-" if name else "", figures.get("dev_before"))
    if plots:
        lines += ["## Curves", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    (run_dir / "report.md").write_text("\n".join(lines))
    return [*plots, run_dir / "report.md"]


# --- Sweeps -------------------------------------------------------------------------------------


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
    with open(sweep_dir / "leaderboard.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *[["" if c is None else c for c in row] for row in rows]])
    plot = plot_dev_curves(runs, keys, sweep_dir / "dev_curves.png")
    failed = sum(not r.finished for r in runs)
    lines = [
        f"# Leaderboard: {sweep_dir.name}", "",
        f"Sweep dir: `{sweep_dir}`; {len(runs)} runs, {failed} failed or unfinished. "
        "Sorted by the main dev metric (higher first); the columns after the figures are the overrides that differ.",
        "", *optuna_lines(sweep_dir), *md_table(header, rows), "",
    ]
    if plot:
        lines += [f"![dev curves]({plot.name})", ""]
    (sweep_dir / "leaderboard.md").write_text("\n".join(lines))
    return [sweep_dir / "leaderboard.md", sweep_dir / "leaderboard.csv", *([plot] if plot else [])]


# --- Entry point --------------------------------------------------------------------------------


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
    return write_leaderboard(path) if kind_of(path) == "sweep" else write_run_report(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.report",
        description="Plots and report.md for a run dir; leaderboard.md/.csv and dev_curves.png for a sweep dir.",
    )
    parser.add_argument("dir", help="a run dir (outputs/<date>/<time>) or a sweep dir (outputs/multirun/<date>/<time>)")
    args = parser.parse_args(argv)
    try:
        written = report(args.dir)
    except NotARunError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
