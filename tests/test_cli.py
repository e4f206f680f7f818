"""The commands as a user types them: python -m train / train.evaluate, sweeps, and their errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import FIXTURES, ROOT, tiny_image_text_overrides, tiny_overrides


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=600,
    )


def tiny_args(model_dir, run_dir):
    return tiny_overrides(model_dir, f"hydra.run.dir={run_dir}")


def test_train_then_evaluate_klue_json(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    done = cli("train", *tiny_args(tiny_model_dir, run_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert json.loads((run_dir / "eval.json").read_text())["dev"]["n_pairs"] == 3

    # A KLUE-style JSON file (nested labels.label, scores 0-5) through overrides alone.
    eval_dir = tmp_path / "eval"
    done = cli(
        "train.evaluate",
        f"checkpoint={run_dir / 'final'}",
        "data=sts_file",
        f"data.path={FIXTURES / 'klue_sts_small.json'}",
        "data.columns.score=labels.label",
        "data.score_max=5",
        "split=dev",
        f"hydra.run.dir={eval_dir}",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((eval_dir / "eval.json").read_text())
    assert report["dev"]["n_pairs"] == 5 and report["data"] == "sts_file"
    assert "spearman_cosine" in done.stdout


def test_multirun_sweep_gives_one_run_dir_per_pooling_mode(tiny_model_dir, tmp_path):
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_args(tiny_model_dir, tmp_path / "unused") if not a.startswith("hydra.run.dir")]
    done = cli("train", "-m", "pooling=cls,max", "trainer.max_steps=2", *args, f"hydra.sweep.dir={sweep}")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.glob("*/eval.json"))
    assert len(runs) == 2
    modes = {json.loads((r / "final" / "1_Pooling" / "config.json").read_text())["pooling_mode"] for r in runs}
    assert modes == {"cls", "max"}


def test_unloadable_model_is_one_clear_message(tmp_path):
    done = cli("train", "debug=default", f"model.name={tmp_path / 'nope'}", "data=sts_file",
               f"data.train_path={FIXTURES / 'train_small.jsonl'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "Error: model.name=" in done.stderr and "no such folder" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_data_row_is_one_clear_message(tiny_model_dir, tmp_path):
    done = cli("train", *tiny_args(tiny_model_dir, tmp_path / "run"), f"data.train_path={FIXTURES / 'bad_rows.jsonl'}", "data.score_max=1")
    assert done.returncode == 2
    assert "bad_rows.jsonl, line 2: empty sentence" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "final").exists()


NLI = ["data=nli_file", f"data.train_path={FIXTURES / 'nli_train_small.tsv'}", f"data.dev_path={FIXTURES / 'nli_small.tsv'}", "loss=mnrl"]

# case -> (extra overrides, what the message must say)
BAD_INPUTS = {
    "missing data file": ([f"data.train_path={FIXTURES / 'missing.jsonl'}"], ["missing.jsonl: no such file"]),
    "not UTF-8": ([f"data.train_path={FIXTURES / 'not_utf8.tsv'}"], ["not_utf8.tsv: not valid UTF-8"]),
    "empty file": ([f"data.train_path={FIXTURES / 'empty.jsonl'}"], ["empty.jsonl: the file holds no rows"]),
    "wrong format": ([f"data.train_path={FIXTURES / 'pairs.csv'}", "data.format=json"], ["pairs.csv, line 1: not valid JSON"]),
    "every row bad": ([f"data.train_path={FIXTURES / 'bad_rows.jsonl'}", "data.on_bad_row=skip", "data.score_max=0.5"], ["rows are bad"]),
    "resume from a non-checkpoint": ([f"trainer.resume={FIXTURES}"], ["not a complete training checkpoint"]),
    "unknown value": (["trainer.mixed_precision=fp12"], ["fp12"]),
    "unknown key": (["trainer.lr_rate=1e-4"], ["lr_rate"]),
    "decimal comma in a CSV row": (
        [f"data.train_path={FIXTURES / 'decimal_comma.csv'}"],
        ["decimal_comma.csv, line 3: 4 comma-separated fields, but the header has 3", "4.5"],
    ),
    "extra tab in a TSV row": (
        [f"data.train_path={FIXTURES / 'extra_tab.tsv'}"], ["extra_tab.tsv, line 3: 4 tab-separated fields, but the header has 3"],
    ),
    "batch size 0, STS data": (["trainer.batch_size=0"], ["trainer.batch_size=0 (must be an integer ≥ 1)"]),
    "batch size 0, contrastive data": ([*NLI, "trainer.batch_size=0"], ["trainer.batch_size=0 (must be an integer ≥ 1)"]),
    "numeric settings out of range": (
        ["trainer.log_every=0", "trainer.warmup_ratio=1.5", "trainer.lr=0", "trainer.grad_accum=0", "trainer.eval_every=-1",
         "trainer.save_every=-2", "trainer.keep_last=-1", "trainer.max_steps=-1", "loss.mini_batch_size=0", "data.num_proc=0"],
        ["trainer.log_every=0 (must be an integer ≥ 1)", "trainer.warmup_ratio=1.5 (must be a number in [0, 1])",
         "trainer.lr=0.0 (must be a number > 0)", "trainer.grad_accum=0", "trainer.eval_every=-1", "trainer.save_every=-2",
         "trainer.keep_last=-1", "trainer.max_steps=-1", "loss.mini_batch_size=0", "data.num_proc=0 (must be an integer ≥ 1, or null"],
    ),
    "no epochs and no steps": (["trainer.max_steps=0", "trainer.epochs=0"], ["trainer.epochs=0 with trainer.max_steps=0"]),
    "max_seq_length above the position limit": (
        ["model.max_seq_length=1000"], ["model.max_seq_length=1000 is above what", "(128 tokens", "model.max_seq_length ≤ 128"],
    ),
    "matryoshka dims above the embedding size": (
        ["loss.matryoshka_dims=[768,512,256,128,64]"], ["loss.matryoshka_dims=[768, 512, 256, 128, 64]: 768, 512, 256, 128, 64 exceed", "embedding size 32"],
    ),
    "dev set with one gold score": (
        [f"data.dev_path={FIXTURES / 'constant_scores.jsonl'}"], ["constant_scores.jsonl: cannot be scored, all 3 gold scores are 0.5"],
    ),
    "batch larger than the training set": (
        ["data.max_train_samples=5", "trainer.batch_size=8"], ["trainer.batch_size=8, but the training set has 5 rows"],
    ),
    "a bi-encoder loss for a cross-encoder": (
        ["task=cross_encoder", "loss=cosent"], ["loss=cosent does not train a cross-encoder", "bce, ce, mnrl, mse, lambda, listnet"],
    ),
    "a candidate list that is not a list": (
        ["task=cross_encoder", "loss=listnet", "data=candidates_file", f"data.train_path={FIXTURES / 'candidates_bad.jsonl'}", "data.dev_path=null"],
        ["candidates_bad.jsonl, line 4: field 'negatives' is not a list of texts ('not a list')"],
    ),
    "candidates in a CSV file": (
        ["task=cross_encoder", "loss=listnet", "data=candidates_file", f"data.train_path={FIXTURES / 'pairs.csv'}", "data.dev_path=null"],
        ["pairs.csv: query-with-candidates data holds lists of texts; write it as JSONL, JSON or parquet"],
    ),
    "a column the file does not have": (
        ["data.columns.score=label"], ["train_small.jsonl: no column data.columns.score='label'", "columns are: sentence1, sentence2, score"],
    ),
}


def assert_one_paragraph_and_no_result(done, expected: list[str], run_dir) -> None:
    """Exit 2 with every expected phrase in the message, no traceback, and no result in the run dir."""
    assert done.returncode == 2, done.stderr[-2000:]
    for words in expected:
        assert words in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    leftovers = {p.name for p in run_dir.iterdir()} if run_dir.exists() else set()
    assert not leftovers & {"final", "best", "checkpoints", "eval.json", "metrics.jsonl"}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_is_one_paragraph_and_leaves_no_result(tiny_model_dir, tmp_path, case):
    extra, expected = BAD_INPUTS[case]
    run_dir = tmp_path / "run"
    done = cli("train", *tiny_args(tiny_model_dir, run_dir), *extra)
    assert_one_paragraph_and_no_result(done, expected, run_dir)


IMAGES = FIXTURES / "images"
CAPTION_FILE = ["data=image_text_file", "data.dev_path=null", "data.test_path=null"]

# task=image_text on the tiny dual encoder: case -> (extra overrides, what the message must say)
IMAGE_TEXT_BAD_INPUTS = {
    "a caption file row whose image is missing": (
        [*CAPTION_FILE, f"data.train_path={IMAGES / 'captions_bad.csv'}"],
        [f"{IMAGES / 'captions_bad.csv'}, row 2: no such image file ({IMAGES / 'red' / '9.png'})", "data.on_bad_row=skip"],
    ),
    "an image column the file does not have": (
        [*CAPTION_FILE, f"data.train_path={IMAGES / 'captions.csv'}", "data.columns.image=picture"],
        [f"{IMAGES / 'captions.csv'}", "data.columns.image='picture'", "image, text"],
    ),
    "a caption template without {label}": (
        ["data.caption_template='a photo'"], ["data.caption_template='a photo' must contain {label}"],
    ),
    "text data for task=image_text": (
        ["data=korsts"], ["data=korsts with task=image_text", "image_text_file, image_folder, fashion_mnist"],
    ),
}


@pytest.mark.parametrize("case", list(IMAGE_TEXT_BAD_INPUTS), ids=list(IMAGE_TEXT_BAD_INPUTS))
def test_bad_image_text_input_is_one_paragraph_and_leaves_no_result(tiny_model_dir, tmp_path, case):
    extra, expected = IMAGE_TEXT_BAD_INPUTS[case]
    run_dir = tmp_path / "run"
    done = cli("train", *tiny_image_text_overrides(tiny_model_dir, f"hydra.run.dir={run_dir}", *extra))
    assert_one_paragraph_and_no_result(done, expected, run_dir)


def test_evaluate_refuses_a_set_it_cannot_score_and_bad_settings(tiny_model_dir, tmp_path):
    args = [f"model.name={tiny_model_dir}", "model.max_seq_length=64", "data=sts_file", "split=dev", f"hydra.run.dir={tmp_path}"]
    done = cli("train.evaluate", *args, f"data.path={FIXTURES / 'constant_scores.jsonl'}")
    assert done.returncode == 2 and "cannot be scored, all 3 gold scores are 0.5" in done.stderr, done.stderr[-2000:]
    done = cli("train.evaluate", *args, f"data.path={FIXTURES / 'pairs.jsonl'}", "batch_size=0")
    assert done.returncode == 2 and "batch_size=0 (must be an integer ≥ 1)" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (tmp_path / "eval.json").exists()


def test_finished_run_dir_is_not_overwritten(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert cli("train", *tiny_args(tiny_model_dir, run_dir), "trainer.max_steps=2").returncode == 0
    before = (run_dir / "eval.json").read_text()
    again = cli("train", *tiny_args(tiny_model_dir, run_dir), "trainer.max_steps=2")
    assert again.returncode == 2 and "trainer.overwrite=true" in again.stderr
    assert (run_dir / "eval.json").read_text() == before


def optuna_sweep_args(model_dir, sweep_dir, *extra: str) -> list[str]:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e .[hpo]")
    args = [a for a in tiny_args(model_dir, sweep_dir / "unused") if not a.startswith("hydra.run.dir")]
    # dev on 32 pairs (train_small.jsonl): the trials' figures differ, so maximising is visible
    return ["train", "-m", *extra, "trainer.max_steps=2", *args, f"data.dev_path={FIXTURES / 'train_small.jsonl'}",
            f"hydra.sweep.dir={sweep_dir}"]


def test_optuna_sweep_of_three_trials_maximises_the_main_dev_metric(tiny_model_dir, tmp_path):
    import yaml

    sweep = tmp_path / "optuna"
    # The plugin's usual command line (train/__main__.py gives it conf/hpo/optuna.yaml's defaults).
    done = cli(*optuna_sweep_args(tiny_model_dir, sweep, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3",
                                  "trainer.lr=tag(log,interval(1e-5,1e-3))", "pooling=cls,mean,max"))
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [r.name for r in runs] == ["0", "1", "2"] and all((r / "eval.json").exists() for r in runs)
    figures = [json.loads((r / "eval.json").read_text())["dev"]["spearman_cosine"] for r in runs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(figures))  # maximised, the value the job returned
    assert set(best["best_params"]) == {"trainer.lr", "pooling"}

    done = cli("train.report", str(sweep))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = (sweep / "leaderboard.csv").read_text().splitlines()
    assert len(lines) == 4 and "trainer.lr" in lines[0] and "pooling" in lines[0]
    assert float(lines[1].split(",")[3]) == pytest.approx(max(figures))


def test_optuna_sweep_goes_on_past_a_failed_trial(tiny_model_dir, tmp_path):
    sweep = tmp_path / "optuna"
    # The shipped search space (conf/hpo/sts.yaml), batch size narrowed to one that fits and one
    # that cannot: with the seeded sampler, trial 0 draws 8 and trial 1 draws 1000.
    done = cli(*optuna_sweep_args(tiny_model_dir, sweep, "hpo=sts", "hydra.sweeper.n_trials=2", "trainer.batch_size=choice(8,1000)"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (sweep / "0" / "eval.json").exists() and not (sweep / "1" / "eval.json").exists()
    assert "trainer.batch_size=1000, but the training set has 64 rows" in done.stderr
    assert "Failed experiment" in done.stdout + done.stderr and (sweep / "optimization_results.yaml").exists()
    assert cli("train.report", str(sweep)).returncode == 0
    with open(sweep / "leaderboard.csv", newline="") as f:
        rows = [(r["run"], r["status"]) for r in csv.DictReader(f)]
    assert rows[0] == ("0", "ok") and rows[1][0] == "1" and rows[1][1].startswith("failed: trainer.batch_size=1000"), rows


def test_hydra_sweeper_optuna_on_the_command_line_selects_the_project_defaults():
    from train.__main__ import optuna_with_our_defaults

    assert optuna_with_our_defaults(["-m", "hydra/sweeper=optuna", "pooling=cls,max"]) == ["-m", "pooling=cls,max", "hpo=optuna"]
    assert optuna_with_our_defaults(["-m", "hydra/sweeper=optuna", "hpo=sts"]) == ["-m", "hpo=sts"]
    assert optuna_with_our_defaults(["pooling=cls"]) == ["pooling=cls"]
