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

The package, by what each part does: files.py reads what a run wrote and writes the report's own
files atomically; plots.py draws the PNG curves (matplotlib, the `report` extra); tables.py formats
Markdown tables; run_report.py writes a run dir's report.md; sweep.py a sweep dir's leaderboard;
command.py tells the two kinds of dir apart and is the command line.

May import: train.errors and train.evaluation.tables (the one table formatter). It reads the files runs wrote and loads no model, no data, no config
schema.
"""

from train.report.command import NotARunError, kind_of, main, report
from train.report.files import main_figure

__all__ = ["NotARunError", "kind_of", "main", "main_figure", "report"]
