"""A run dir's report.md: its config, data sizes, final figures, training figures and curves
(a train.retrieve run: its systems' table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.report.files import data_sizes, last_error, read_json, read_metrics, read_yaml, write_text_atomic
from train.report.plots import plot_run
from train.report.tables import fmt, md_table

# The trainer settings report.md shows, in this order (those in the run's config).
TRAINER_KEYS = (
    "epochs", "max_steps", "batch_size", "grad_accum", "lr", "warmup_ratio", "weight_decay",
    "max_grad_norm", "mixed_precision", "seed", "eval_every",
)


FIGURE_SPLITS = ("dev_before", "dev", "test_before", "test", "retrieval_dev", "retrieval_test")


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
    write_text_atomic(run_dir / "report.md", "\n".join(lines))
    return [*plots, run_dir / "report.md"]
