"""Faults a long job meets: SIGKILL and SIGTERM mid-run, a NaN, and what a resume then gives."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import train.engine.loop
from train.errors import UserError
from train.run import run
from tests.conftest import ROOT, tiny_image_text_overrides, tiny_overrides


def args(model_dir, run_dir, *extra):
    common = ["data.max_train_samples=0", "trainer.max_steps=40", "trainer.save_every=5", "trainer.eval_every=20", f"hydra.run.dir={run_dir}"]
    if "task=image_text" in extra:
        # The 6 fixture images, 2 batches of 3 an epoch (so 20 epochs), decoded in a DataLoader worker;
        # CLIP's learned temperature is part of what a resume must restore.
        extra = tuple(e for e in extra if e != "task=image_text")
        return tiny_image_text_overrides(model_dir, *common, "trainer.batch_size=3", "trainer.num_workers=1", *extra)
    return tiny_overrides(model_dir, *common, *extra)


def start(model_dir, run_dir, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "train", *args(model_dir, run_dir, *extra)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def wait_for(path, proc, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def figures(run_dir):
    report = json.loads((run_dir / "eval.json").read_text())
    return {k: report[k] for k in ("dev", "steps")}


def same_weights(a, b):
    # Every weights file of final/ (an image–text model keeps one a module: text and image towers, projection).
    files = sorted(p.relative_to(a / "final") for p in (a / "final").rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(b / "final") for p in (b / "final").rglob("*.safetensors"))
    for f in files:
        wa, wb = load_file(str(a / "final" / f)), load_file(str(b / "final" / f))
        if wa.keys() != wb.keys() or not all(torch.equal(wa[k], wb[k]) for k in wa):
            return False
    return True


def finished(model_dir, run_dir, *extra):
    proc = start(model_dir, run_dir, *extra)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory):
    return finished(tiny_model_dir, tmp_path_factory.mktemp("uninterrupted"))


@pytest.fixture(scope="module")
def uninterrupted_cross_encoder(tiny_model_dir, tmp_path_factory):
    return finished(tiny_model_dir, tmp_path_factory.mktemp("uninterrupted-ce"), "task=cross_encoder")


@pytest.fixture(scope="module")
def uninterrupted_image_text(tiny_model_dir, tmp_path_factory):
    return finished(tiny_model_dir, tmp_path_factory.mktemp("uninterrupted-it"), "task=image_text")


@pytest.mark.parametrize("task", ["bi_encoder", "cross_encoder", "image_text"])
def test_sigkill_at_a_random_step_then_resume_gives_the_same_model(tiny_model_dir, task, request, tmp_path):
    # Random on purpose (a resume must be exact wherever it happens); printed, and fixed with
    # EMBED_TEST_KILL_STEP=<step> to reproduce a failure.
    uninterrupted = request.getfixturevalue("uninterrupted" if task == "bi_encoder" else f"uninterrupted_{task}")
    kill_after = int(os.environ.get("EMBED_TEST_KILL_STEP") or random.choice([5, 10, 15, 20, 25, 30]))
    print(f"SIGKILL after the step-{kill_after} checkpoint (EMBED_TEST_KILL_STEP={kill_after} reproduces this run)")
    proc = start(tiny_model_dir, tmp_path, f"task={task}")
    wait_for(tmp_path / "checkpoints" / f"step-{kill_after}" / "manifest.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "final").exists()
    resumed = start(tiny_model_dir, tmp_path, f"task={task}", "trainer.resume=latest")
    _, err = resumed.communicate(timeout=600)
    where = f"killed after step {kill_after} (EMBED_TEST_KILL_STEP={kill_after})"
    assert resumed.returncode == 0, f"{where}: {err[-3000:]}"
    assert same_weights(tmp_path, uninterrupted), f"{where}: weights differ"
    assert figures(tmp_path) == figures(uninterrupted), where
    lines = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == list(range(1, 41)), f"{where}: each step must be logged exactly once"


def test_sigterm_writes_a_checkpoint_and_exits_with_75(tiny_model_dir, uninterrupted, tmp_path):
    proc = start(tiny_model_dir, tmp_path)
    wait_for(tmp_path / "checkpoints" / "step-5" / "manifest.json", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    assert "trainer.resume=latest" in err and f"hydra.run.dir={tmp_path}" in err
    assert not (tmp_path / "final").exists()
    resumed = start(tiny_model_dir, tmp_path, "trainer.resume=latest")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    assert same_weights(tmp_path, uninterrupted)
    assert figures(tmp_path) == figures(uninterrupted)


def planted_nan(monkeypatch, at_call: int):
    calls = {"n": 0}
    real = train.engine.loop.compute_loss

    def compute_loss(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == at_call else loss

    monkeypatch.setattr(train.engine.loop, "compute_loss", compute_loss)


def test_planted_nan_stops_with_step_and_last_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    planted_nan(monkeypatch, at_call=5)
    with pytest.raises(UserError) as e:
        run(tiny_cfg("trainer.save_every=2"), run_dir=tmp_path)
    message = str(e.value)
    assert "diverged at step 5" in message and "step-4" in message and "trainer.on_nan=skip" in message
    assert not (tmp_path / "final").exists() and not (tmp_path / "eval.json").exists()


def test_planted_nan_is_skipped_when_configured(tiny_cfg, tmp_path, monkeypatch, caplog):
    planted_nan(monkeypatch, at_call=2)
    result = run(tiny_cfg("trainer.on_nan=skip"), run_dir=tmp_path)
    assert result["steps"] == 6 and "step 2: loss or gradient is not finite; step skipped" in caplog.text
    weights = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
