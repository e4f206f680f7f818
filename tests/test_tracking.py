"""Experiment trackers (trainer.report_to) read back with their own readers, resumed runs without
duplicate steps, and the progress a person watches (bars, throughput, log lines)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

import train.engine.loop
from train.config.checks import check_train_config
from train.errors import ConfigError
from train.run import run
from train.tasks import get_task
from train.engine.tracking import MLFLOW_RUN_ID, final_scalars, flatten, scalars
from tests.conftest import FIXTURES, ROOT, compose_config, tiny_overrides

STEPS = [1, 2, 3, 4, 5, 6]  # the debug config: 6 steps, log_every=1, dev at 3 and 6, checkpoints at 3 and 6
WITH_TEST = f"data.test_path={FIXTURES / 'pairs.csv'}"


def scalars_of(run_dir) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard's own reader over <run dir>/tensorboard: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture
def mlflow_client(monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")

    def client(run_dir):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())

    yield client
    import mlflow

    mlflow.set_tracking_uri(None)  # what train.engine.tracking set for the run


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def jsonl(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_event_files_hold_the_loss_dev_and_test_curves(tiny_cfg, tmp_path):
    pytest.importorskip("tensorboard")
    result = run(tiny_cfg(WITH_TEST, "trainer.report_to=[tensorboard]"), run_dir=tmp_path)
    curves = scalars_of(tmp_path)
    lines = jsonl(tmp_path)
    assert [s for s, _ in curves["train/loss"]] == STEPS
    assert [v for _, v in curves["train/loss"]] == pytest.approx([line["loss"] for line in lines], rel=1e-6)
    assert [s for s, _ in curves["train/lr"]] == STEPS and [s for s, _ in curves["train/pairs_per_second"]] == STEPS
    assert [s for s, _ in curves["dev/spearman_cosine"]] == [3, 6]
    assert curves["dev/pearson_cosine"][-1][1] == pytest.approx(result["dev"]["pearson_cosine"], rel=1e-6)
    assert curves["test/pearson_cosine"] == [(6, pytest.approx(result["test"]["pearson_cosine"], rel=1e-6))]
    # The resolved config as hyperparameters (accelerate also keeps them as hparams.yml).
    hparams = next((tmp_path / "tensorboard").glob("*/hparams.yml")).read_text()
    assert "trainer.lr: 2.0e-05" in hparams and "loss.name: cosent" in hparams and "trainer.report_to: '[\"tensorboard\"]'" in hparams
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / MLFLOW_RUN_ID).exists()


def test_mlflow_local_store_holds_params_and_metric_histories(tiny_cfg, tmp_path, mlflow_client):
    result = run(tiny_cfg(WITH_TEST, "trainer.report_to=[mlflow]"), run_dir=tmp_path)
    client = mlflow_client(tmp_path)
    run_id = (tmp_path / MLFLOW_RUN_ID).read_text().strip()
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED"
    assert client.get_experiment(logged.info.experiment_id).name == "embed-train"
    assert logged.data.params["trainer.batch_size"] == "8" and logged.data.params["pooling.mode"] == "mean"
    assert [s for s, _ in history(client, run_id, "train/loss")] == STEPS
    assert [v for _, v in history(client, run_id, "train/loss")] == pytest.approx([line["loss"] for line in jsonl(tmp_path)])
    assert [s for s, _ in history(client, run_id, "dev/spearman_cosine")] == [3, 6]
    assert history(client, run_id, "test/pearson_cosine") == [(6, pytest.approx(result["test"]["pearson_cosine"]))]
    assert not (tmp_path / "tensorboard").exists()


def fail_at_call(monkeypatch, at_call: int):
    """The run dies at its `at_call`-th batch, after metrics of later steps than its last checkpoint
    were logged (as a SIGKILL leaves it)."""
    calls = {"n": 0}
    real = train.engine.loop.compute_loss

    def compute_loss(*a, **k):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise RuntimeError("planted crash")
        return real(*a, **k)

    monkeypatch.setattr(train.engine.loop, "compute_loss", compute_loss)
    return real


def test_a_resumed_run_continues_the_same_curves_without_duplicate_steps(tiny_cfg, tmp_path, monkeypatch, mlflow_client):
    pytest.importorskip("tensorboard")
    cfg = tiny_cfg(WITH_TEST, "trainer.report_to=[tensorboard,mlflow]")
    real = fail_at_call(monkeypatch, at_call=6)  # steps 1-5 logged, the last checkpoint is step-3
    with pytest.raises(RuntimeError, match="planted crash"):
        run(cfg, run_dir=tmp_path)
    monkeypatch.setattr(train.engine.loop, "compute_loss", real)
    client = mlflow_client(tmp_path)
    run_id = (tmp_path / MLFLOW_RUN_ID).read_text().strip()
    assert client.get_run(run_id).info.status == "FAILED"
    assert [s for s, _ in scalars_of(tmp_path)["train/loss"]] == [1, 2, 3, 4, 5]

    cfg.trainer.resume = "latest"
    result = run(cfg, run_dir=tmp_path)
    lines = jsonl(tmp_path)
    curves = scalars_of(tmp_path)
    for tag in ("train/loss", "train/lr", "train/pairs_per_second"):
        assert [s for s, _ in curves[tag]] == STEPS, tag
    assert [s for s, _ in curves["dev/spearman_cosine"]] == [3, 6]
    assert [v for _, v in curves["train/loss"]] == pytest.approx([line["loss"] for line in lines], rel=1e-6)
    assert curves["test/pearson_cosine"] == [(6, pytest.approx(result["test"]["pearson_cosine"], rel=1e-6))]
    # MLflow: the same run goes on; steps it already had (4, 5) are not logged twice.
    assert (tmp_path / MLFLOW_RUN_ID).read_text().strip() == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    for key in ("train/loss", "train/lr", "dev/spearman_cosine"):
        steps = [s for s, _ in history(client, run_id, key)]
        assert steps == sorted(set(steps)) and set(steps) == {s for s, _ in curves[key]}, key
    assert [v for _, v in history(client, run_id, "train/loss")] == pytest.approx([line["loss"] for line in lines])


def test_sigkill_then_resume_leaves_each_step_once_in_tensorboard_and_mlflow(tiny_model_dir, tmp_path, mlflow_client):
    # `python -m train` killed (SIGKILL) once its step-8 checkpoint exists, then resumed: TensorBoard
    # must hold every point up to the checkpoint (accelerate flushes at every log) and each step once.
    pytest.importorskip("tensorboard")
    from tests.test_faults import wait_for

    overrides = tiny_overrides(
        tiny_model_dir, "data.max_train_samples=0", "trainer.max_steps=12", "trainer.save_every=4", "trainer.eval_every=6",
        "trainer.report_to=[tensorboard,mlflow]", f"hydra.run.dir={tmp_path}",
    )

    def start(*extra):
        return subprocess.Popen(
            [sys.executable, "-m", "train", *overrides, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )

    proc = start()
    wait_for(tmp_path / "checkpoints" / "step-8" / "manifest.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = start("trainer.resume=latest")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    curves = scalars_of(tmp_path)
    assert [s for s, _ in curves["train/loss"]] == list(range(1, 13))
    assert [s for s, _ in curves["dev/spearman_cosine"]] == [6, 12]
    assert [v for _, v in curves["train/loss"]] == pytest.approx([line["loss"] for line in jsonl(tmp_path)], rel=1e-6)
    client = mlflow_client(tmp_path)
    run_id = (tmp_path / MLFLOW_RUN_ID).read_text().strip()
    assert [s for s, _ in history(client, run_id, "train/loss")] == list(range(1, 13))
    assert client.get_run(run_id).info.status == "FINISHED"


def test_under_two_processes_only_the_main_process_logs_and_draws(tiny_model_dir, tmp_path, mlflow_client):
    pytest.importorskip("tensorboard")
    from tests.test_multiprocess_run import launch

    run_dir = tmp_path / "run"
    done = launch(tiny_overrides(
        tiny_model_dir, "trainer.max_steps=4", "trainer.eval_every=2", "trainer.report_to=[tensorboard,mlflow]", f"hydra.run.dir={run_dir}"
    ))
    assert done.returncode == 0, done.stderr[-4000:]
    assert json.loads((run_dir / "eval.json").read_text())["num_processes"] == 2
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    curves = scalars_of(run_dir)
    assert [s for s, _ in curves["train/loss"]] == [1, 2, 3, 4] and [s for s, _ in curves["dev/spearman_cosine"]] == [2, 4]
    client = mlflow_client(run_dir)
    run_id = (run_dir / MLFLOW_RUN_ID).read_text().strip()
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1
    assert [s for s, _ in history(client, run_id, "train/loss")] == [1, 2, 3, 4]
    assert done.stderr.count("train:   0%|") == 1, "one training bar, the main process's"


@pytest.mark.parametrize(
    "value, words",
    [
        ("[tensorbord]", "unknown tensorbord (valid: tensorboard, mlflow, wandb, trackio, none)"),
        ("[none,mlflow]", "none cannot be combined with a tracker"),
    ],
)
def test_a_bad_report_to_is_a_config_error_naming_the_valid_trackers(tiny_model_dir, value, words):
    with pytest.raises(ConfigError) as e:
        check_train_config(compose_config(tiny_overrides(tiny_model_dir, f"trainer.report_to={value}")))
    assert words in str(e.value) and "trainer.report_to" in str(e.value)


def test_a_missing_tracker_package_names_what_to_install(tiny_model_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tensorboard is not installed \(pip install -e \.\[track\]\)"):
        check_train_config(compose_config(tiny_overrides(tiny_model_dir, "trainer.report_to=[tensorboard]")))


def test_default_and_none_need_no_tracker(tiny_model_dir):
    for extra in ([], ["trainer.report_to=[none]"]):
        check_train_config(compose_config(tiny_overrides(tiny_model_dir, *extra)))


def test_config_flattens_and_metrics_map_to_tracker_names():
    assert flatten({"a": {"b": 1, "c": [1, 2], "d": None, "e": {}}, "f": "x"}) == {"a.b": 1, "a.c": "[1, 2]", "a.d": "null", "a.e": "{}", "f": "x"}
    entry = {"step": 3, "epoch": 0.5, "loss": 1.0, "lr": 2e-5, "images_per_second": 9.0, "dev_zero_shot_accuracy": 0.5, "dev_n_images": 6}
    assert scalars(entry) == {
        "train/epoch": 0.5, "train/loss": 1.0, "train/lr": 2e-5, "train/images_per_second": 9.0, "dev/zero_shot_accuracy": 0.5
    }
    assert final_scalars({"dev": {"a": 1.0}, "test": {"spearman_cosine": 0.5, "n_pairs": 2}}) == {"test/spearman_cosine": 0.5}


# --- Progress --------------------------------------------------------------------------------


# Built at run time, so that no echo of this file's source in stderr can match it.
MID_RUN_LINE = " ".join(("A", "LINE", "IN", "MID-RUN"))


def test_the_bar_shows_steps_eta_and_pairs_per_second_and_log_lines_print_above_it(tiny_cfg, tmp_path, monkeypatch, capsys):
    # A console handler on the root logger, as Hydra configures one; a log record in mid-run.
    # Only this one: a handler an earlier test left on the root logger may write to a stream
    # pytest has closed, and logging then prints "--- Logging error --- Message: ..." to stderr.
    handler = logging.StreamHandler(sys.stderr)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    logging.getLogger().addHandler(handler)
    real = train.engine.loop.compute_loss
    calls = {"n": 0}

    def compute_loss(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            logging.getLogger("train").warning(MID_RUN_LINE)
        return real(*a, **k)

    monkeypatch.setattr(train.engine.loop, "compute_loss", compute_loss)
    try:
        run(tiny_cfg(), run_dir=tmp_path)
    finally:
        logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    last = err.split("\r")[-2:]  # the bar's final draw
    assert any("train: 100%" in part and "6/6" in part and "pairs/s=" in part and "loss=" in part for part in last), err[-2000:]
    # The record is a line of its own: the bar was cleared before it (tqdm.write), not written into.
    line = next(line for line in err.split("\n") if MID_RUN_LINE in line)
    assert line.split("\r")[-1].startswith(MID_RUN_LINE), repr(line)
    assert all("pairs_per_second" in entry for entry in jsonl(tmp_path))


def test_the_unit_is_the_task_s():
    assert get_task("bi_encoder").unit == "pairs" and get_task("cross_encoder").unit == "pairs"
    assert get_task("image_text").unit == "images"


def test_long_evaluations_show_a_bar_short_ones_do_not(tiny_model_dir, capsys):
    from train.evaluation.figures import encode_sharded
    from train.models.bi_encoder import build_sentence_transformer

    model = build_sentence_transformer(str(tiny_model_dir), 16, "mean", False, None, None)
    encode_sharded(model, ["short"] * 100, 64)
    assert "embedding" not in capsys.readouterr().err
    out = encode_sharded(model, [f"sentence {i}" for i in range(2001)], 256)
    assert out.shape == (2001, 32)
    err = capsys.readouterr().err
    assert "embedding:" in err and "/8 [" in err  # 8 batches; the bar goes away when done (leave=False)


def test_evaluation_bars_only_on_the_main_process(monkeypatch):
    import train.evaluation.bars

    assert train.evaluation.bars.long_eval(5000) and not train.evaluation.bars.long_eval(100)

    class NotMain:
        is_main_process = False

    monkeypatch.setattr(train.evaluation.bars, "PartialState", lambda: NotMain())
    assert not train.evaluation.bars.long_eval(5000)
