"""python -m train.report: a run's plots and report.md, a sweep's leaderboard, and what it refuses."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, tiny_overrides
from tests.test_cli import cli

pytest.importorskip("matplotlib", reason="python -m train.report needs matplotlib (pip install -e .[report])")
from PIL import Image  # noqa: E402

from train.report import main as report_main  # noqa: E402
from train.report import report  # noqa: E402


@pytest.fixture(scope="module")
def sweep(tiny_model_dir, tmp_path_factory) -> Path:
    """A real 2-run sweep (pooling=cls,max) of the tiny model: 4 steps, dev evaluated at 3 and 4
    on 32 pairs (train_small.jsonl, so that the two runs' figures differ)."""
    sweep = tmp_path_factory.mktemp("report") / "sweep"
    args = tiny_overrides(tiny_model_dir, f"data.dev_path={FIXTURES / 'train_small.jsonl'}", "trainer.max_steps=4")
    done = cli("train", "-m", "pooling=cls,max", *args, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


def opens_as_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


def leaderboard(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "leaderboard.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_report_has_plots_and_the_final_figures(sweep):
    run_dir = sweep / "0"
    written = report(run_dir)
    result = json.loads((run_dir / "eval.json").read_text())
    for name in ("loss.png", "lr.png", "dev_spearman_cosine.png", "dev_pearson_cosine.png"):
        assert run_dir / name in written and opens_as_png(run_dir / name), name
    text = (run_dir / "report.md").read_text()
    for figure in (result["dev"]["spearman_cosine"], result["dev"]["pearson_manhattan"]):
        assert f"{figure:.4f}" in text
    for words in ("| pooling | cls |", "| loss | cosent |", "| trainer.batch_size | 8 |", "train 64, dev 32",
                  f"| padding ratio (padded/real tokens) | {result['padding_ratio']:.4g} |",
                  f"| pairs/s (training) | {result['train_pairs_per_second']:.4g} |",
                  "![loss](loss.png)", "![dev_spearman_cosine](dev_spearman_cosine.png)"):
        assert words in text, words


def test_sweep_leaderboard_is_sorted_and_shows_the_override_that_differs(sweep):
    done = cli("train.report", str(sweep))  # the command as a user types it
    assert done.returncode == 0, done.stderr[-2000:]
    rows = leaderboard(sweep)
    assert len(rows) == 2
    metric = "dev spearman_cosine"
    figures = {r: json.loads((sweep / r / "eval.json").read_text())["dev"]["spearman_cosine"] for r in ("0", "1")}
    assert [r["run"] for r in rows] == sorted(figures, key=lambda r: -figures[r])
    assert [float(r[metric]) for r in rows] == sorted(figures.values(), reverse=True)
    assert {r["run"]: r["pooling"] for r in rows} == {"0": "cls", "1": "max"}
    assert "debug" not in rows[0] and "trainer.max_steps" not in rows[0]  # the same in every run
    assert opens_as_png(sweep / "dev_curves.png")
    text = (sweep / "leaderboard.md").read_text()
    assert "| pooling |" in text and "![dev curves](dev_curves.png)" in text


def test_leaderboard_order_follows_the_metric_and_lists_failed_runs_last(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("final", "best", "checkpoints", "*.png", "leaderboard.*"))
    for run, figure in (("0", 0.25), ("1", 0.75)):  # job 1 ahead, whatever the real figures were
        result = json.loads((copy / run / "eval.json").read_text())
        result["dev"]["spearman_cosine"] = figure
        (copy / run / "eval.json").write_text(json.dumps(result))
    failed = copy / "2"  # a job that stopped with an error: its config and log, no eval.json
    shutil.copytree(copy / "0" / ".hydra", failed / ".hydra")
    (failed / ".hydra" / "overrides.yaml").write_text((failed / ".hydra" / "overrides.yaml").read_text().replace("pooling=cls", "pooling=mean"))
    (failed / "__main__.log").write_text("[2026-01-01 00:00:00,000][train][ERROR] - trainer.batch_size=1000, but the training set has 64 rows.\n")
    no_dev = copy / "3"  # finished, but without a dev figure (no dev set): after the ranked runs, before failed ones
    shutil.copytree(copy / "0", no_dev)
    result = json.loads((no_dev / "eval.json").read_text())
    del result["dev"]
    (no_dev / "eval.json").write_text(json.dumps(result))
    (no_dev / ".hydra" / "overrides.yaml").write_text((no_dev / ".hydra" / "overrides.yaml").read_text().replace("pooling=cls", "pooling=lasttoken"))
    report(copy)
    rows = leaderboard(copy)
    assert [(r["run"], r["rank"], r["pooling"], r["status"][:6]) for r in rows] == [
        ("1", "1", "max", "ok"), ("0", "2", "cls", "ok"), ("3", "", "lasttoken", "ok"), ("2", "", "mean", "failed"),
    ]
    assert rows[3]["status"].startswith("failed: trainer.batch_size=1000")
    assert "2 | failed: trainer.batch_size=1000" in (copy / "leaderboard.md").read_text()


def test_image_text_and_retrieve_runs_show_their_own_figures(tmp_path):
    image_run = tmp_path / "image"
    image_run.mkdir()
    before = {"zero_shot_accuracy": 0.125, "image_to_text_recall@1": 0.25, "n_images": 6}
    after = {"zero_shot_accuracy": 0.875, "image_to_text_recall@1": 0.625, "n_images": 6}
    (image_run / "eval.json").write_text(json.dumps({
        "task": "image_text", "dev_before": before, "dev": after, "test_before": before, "test": after,
        "main_metric": "zero_shot_accuracy", "train_seconds": 1.5, "steps": 2,
    }))
    (image_run / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.0, "lr": 1e-5}\n{"step": 2, "loss": 1.0, "lr": 0.0, "dev_zero_shot_accuracy": 0.875}\n'
    )
    written = report(image_run)
    text = (image_run / "report.md").read_text()
    assert "| dev_before | 0.1250 | 0.2500 | 6 |" in text and "| test | 0.8750 | 0.6250 | 6 |" in text
    assert image_run / "dev_zero_shot_accuracy.png" in written and opens_as_png(image_run / "dev_zero_shot_accuracy.png")

    retrieve_run = tmp_path / "retrieve"
    retrieve_run.mkdir()
    system = {"mrr@10": 0.5, "ndcg@10": 0.5625, "recall@1": 0.375, "recall@10": 0.75, "ms_per_query": 3.5, "cross_encoder_pairs_per_query": 0}
    (retrieve_run / "retrieve.json").write_text(json.dumps({
        "data": "nli_file", "split": "dev", "corpus": "entailed", "n_queries": 8, "corpus_size": 9, "bi_encoder": "bi",
        "cross_encoder": None, "systems": [{"system": "bi-encoder", **system}], "notes": ["No cross_encoder=<dir>: bi-encoder only."],
    }))
    report(retrieve_run)
    text = (retrieve_run / "report.md").read_text()
    assert "| bi-encoder | 0.5000 | 0.5625 | 0.3750 | 0.7500 | 3.5 | 0 |" in text and "8 queries, corpus 9 documents" in text

    # A `python -m train.retrieve -m` sweep: ranked by the last system's NDCG@10.
    sweep = tmp_path / "retrieve-sweep"
    for job, ndcg in (("0", 0.25), ("1", 0.5)):
        shutil.copytree(retrieve_run, sweep / job)
        result = json.loads((sweep / job / "retrieve.json").read_text())
        result["systems"][-1]["ndcg@10"] = ndcg
        (sweep / job / "retrieve.json").write_text(json.dumps(result))
    report(sweep)
    assert [(r["run"], r["dev ndcg@10"]) for r in leaderboard(sweep)] == [("1", "0.5"), ("0", "0.25")]


def test_a_dir_that_is_neither_run_nor_sweep_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a run")
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"Error: {tmp_path}: neither a run dir" in err and "nor a sweep dir" in err
    assert report_main([str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.md")) and not list(tmp_path.glob("*.png"))
