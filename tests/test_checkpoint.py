"""Checkpoint dirs are complete or absent; `latest` never picks a half-written one."""

from __future__ import annotations

import json

import pytest

from train.engine.checkpoint import atomic_dir, latest_checkpoint, prune, step_checkpoints, write_json_atomic


def make(root, step, complete=True):
    path = root / f"step-{step}"
    if complete:
        with atomic_dir(path, {"step": step}) as tmp:
            (tmp / "weights").write_text(str(step))
    else:
        path.mkdir(parents=True)
        (path / "weights").write_text("partial")
    return path


def test_crash_while_writing_leaves_latest_on_the_previous_checkpoint(tmp_path):
    make(tmp_path, 2)
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "step-4") as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed while saving")
    assert not (tmp_path / "step-4").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-2"
    assert [p.name for p in tmp_path.iterdir()] == ["step-2"]


def test_latest_skips_dirs_without_manifest_and_orders_numerically(tmp_path):
    make(tmp_path, 9)
    make(tmp_path, 10)
    make(tmp_path, 12, complete=False)
    assert latest_checkpoint(tmp_path) == tmp_path / "step-10"
    manifest = json.loads((tmp_path / "step-10" / "manifest.json").read_text())
    assert manifest["step"] == 10 and manifest["files"] == ["weights"]
    assert latest_checkpoint(tmp_path / "missing") is None


def test_rewriting_a_dir_replaces_it_whole(tmp_path):
    with atomic_dir(tmp_path / "best") as tmp:
        (tmp / "old-only").write_text("x")
    with atomic_dir(tmp_path / "best") as tmp:
        (tmp / "new").write_text("y")
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["manifest.json", "new"]


def test_keep_last(tmp_path):
    for step in (1, 2, 3, 4):
        make(tmp_path, step)
    prune(tmp_path, keep_last=2)
    assert [s for s, _ in step_checkpoints(tmp_path)] == [3, 4]
    prune(tmp_path, keep_last=0)
    assert len(step_checkpoints(tmp_path)) == 2


def test_write_json_atomic(tmp_path):
    write_json_atomic(tmp_path / "eval.json", {"a": 1})
    write_json_atomic(tmp_path / "eval.json", {"a": 2})
    assert json.loads((tmp_path / "eval.json").read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]
