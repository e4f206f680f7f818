"""A disk that fills during a run: a clean message (what is intact, how to resume), exit code 74,
no traceback, no half-written dir; the intact checkpoint resumes on a larger disk to the same model.
Runs on a size-limited tmpfs, which needs root; skipped elsewhere, with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT, tiny_overrides
from tests.test_faults import finished, same_weights
from train.errors import DiskFull


@contextmanager
def small_disk(path: Path, megabytes: int):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a size-limited filesystem needs root (mount -t tmpfs)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def run_train(run_dir: Path, model_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    # Checkpoints at steps 3 and 6 (17 MB each for the tiny model), best/ and final/ 5 MB each: on 20 MB
    # the step-3 checkpoint fits and best/ at step 6 does not.
    overrides = tiny_overrides(model_dir, "trainer.eval_every=6", f"hydra.run.dir={run_dir}", *extra)
    return subprocess.run([sys.executable, "-m", "train", *overrides], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)


def test_a_full_disk_mid_run_ends_cleanly_and_the_intact_checkpoint_resumes(tiny_model_no_dropout_dir, tmp_path):
    with small_disk(tmp_path / "disk", 20) as disk:
        done = run_train(disk / "run", tiny_model_no_dropout_dir)
        assert done.returncode == DiskFull.exit_code, done.stderr[-3000:]
        assert "Traceback" not in done.stderr
        assert "No space left on the device while writing" in done.stderr
        assert f"Intact: {disk / 'run' / 'checkpoints' / 'step-3'}" in done.stderr and "trainer.resume=latest" in done.stderr
        assert (disk / "run" / "checkpoints" / "step-3" / "manifest.json").exists()
        leftovers = [p.name for p in (disk / "run").rglob("*") if p.name.endswith(".tmp")]
        assert not leftovers and not (disk / "run" / "final").exists() and not (disk / "run" / "eval.json").exists()
        shutil.copytree(disk / "run", tmp_path / "moved", ignore=shutil.ignore_patterns(".hydra"))
    resumed = run_train(tmp_path / "moved", tiny_model_no_dropout_dir, "trainer.resume=latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = finished(tiny_model_no_dropout_dir, tmp_path / "whole", "data.max_train_samples=64", "trainer.max_steps=6",
                     "trainer.save_every=3", "trainer.eval_every=6")
    assert same_weights(tmp_path / "moved", whole)


def test_a_checkpoint_that_will_not_fit_is_warned_about_before_it_is_written(tmp_path, caplog, monkeypatch):
    import logging

    from train.engine import checkpoint

    step = tmp_path / "checkpoints" / "step-3"
    step.mkdir(parents=True)
    (step / "weights").write_bytes(b"0" * 4096)
    (step / checkpoint.MANIFEST).write_text("{}")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with caplog.at_level(logging.WARNING):
        checkpoint.warn_if_short_of_space(tmp_path / "checkpoints")
    assert "this checkpoint will probably not fit" in caplog.text and "step-3" in caplog.text


def test_a_full_data_cache_ends_cleanly_and_leaves_no_half_built_entry(tiny_model_dir, tmp_path):
    with small_disk(tmp_path / "cache", 1) as cache:
        # 8 KB left: the first cache entry does not fit.
        (cache / "filler").write_bytes(b"0" * (1024 * 1024 - 8 * 1024))
        done = run_train(tmp_path / "run", tiny_model_dir, f"data.cache_dir={cache}")
        assert done.returncode == DiskFull.exit_code, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and "No space left on the device while writing" in done.stderr
        assert "run the same command again" in done.stderr
        assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")], "a half-built cache entry was left"
