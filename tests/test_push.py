"""Publishing (train.push, trainer.push_to_hub): the folder and calls that would reach the Hub,
which cannot be reached here, and the errors that come before any work."""

from __future__ import annotations

import logging
import subprocess
import sys

import huggingface_hub
import pytest
from huggingface_hub.utils import filter_repo_objects

from train.errors import ConfigError
from train.push import push_run
from train.run import run

from tests.conftest import ROOT, compose_config, tiny_overrides


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    run_dir = tmp_path_factory.mktemp("push") / "run"
    run(compose_config(tiny_overrides(tiny_model_dir)), run_dir=run_dir)
    return run_dir


class FakeHub:
    """HfApi's three calls a push makes, recorded."""

    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **_):
        FakeHub.calls.append(("create_repo", repo_id, private, exist_ok))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, branch, exist_ok=False, **_):
        FakeHub.calls.append(("create_branch", repo_id, branch, exist_ok))

    def upload_folder(self, repo_id, folder_path, revision=None, ignore_patterns=None, commit_message=None, **_):
        FakeHub.calls.append(("upload_folder", repo_id, folder_path, revision, ignore_patterns, commit_message))
        return f"https://huggingface.co/{repo_id}/commit/abc"

    def whoami(self):
        return {"name": "me"}


@pytest.fixture
def hub(monkeypatch):
    FakeHub.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return FakeHub


def push_cfg(*overrides):
    return compose_config(list(overrides), config_name="push")


def hub_filter(folder, patterns):
    """The files huggingface_hub's upload_folder keeps under these ignore patterns."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return sorted(filter_repo_objects(files, ignore_patterns=patterns))


def test_a_run_dir_pushes_its_final_model_with_its_card(finished, hub, tmp_path):
    report = push_run(push_cfg(f"dir={finished}", "repo=me/tiny", "private=true", "revision=v1"), run_dir=tmp_path)
    final = finished / "final"
    assert report["folder"] == str(final) and "README.md" in report["files"] and "model.safetensors" in report["files"]
    assert report["url"] == "https://huggingface.co/me/tiny/commit/abc"
    create, branch, upload = hub.calls
    assert create == ("create_repo", "me/tiny", True, True) and branch == ("create_branch", "me/tiny", "v1", True)
    assert upload[1:4] == ("me/tiny", str(final), "v1")
    # What upload_folder keeps under the patterns it is given is the plan the report lists.
    assert hub_filter(final, upload[4]) == report["files"]
    assert (tmp_path / "push.json").is_file()


def test_a_checkpoint_keeps_its_training_state_unless_asked(finished, hub, tmp_path):
    step = finished / "checkpoints" / "step-3"
    assert (step / "accelerate_state").is_dir()
    plain = push_run(push_cfg(f"dir={step}", "repo=me/tiny"), run_dir=tmp_path / "a")
    assert not [f for f in plain["files"] if f.startswith("accelerate_state/") or f == "trainer_state.json"]
    assert hub_filter(step, hub.calls[-1][4]) == plain["files"]
    full = push_run(push_cfg(f"dir={step}", "repo=me/tiny", "training_state=true"), run_dir=tmp_path / "b")
    assert "accelerate_state/optimizer.bin" in full["files"] and "trainer_state.json" in full["files"]
    assert hub_filter(step, hub.calls[-1][4]) == full["files"]


def test_exports_beside_the_model_go_up_with_it(finished, hub, tmp_path):
    final = finished / "final"
    (final / "onnx").mkdir(exist_ok=True)
    (final / "onnx" / "model.onnx").write_bytes(b"onnx")
    try:
        report = push_run(push_cfg(f"dir={final}", "repo=me/tiny", "dry_run=true"), run_dir=tmp_path)
    finally:
        (final / "onnx" / "model.onnx").unlink()
        (final / "onnx").rmdir()
    assert "onnx/model.onnx" in report["files"] and "url" not in report and hub.calls == []


def test_a_push_that_cannot_work_fails_before_anything_is_uploaded(finished, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        push_run(push_cfg(f"dir={finished}", "repo=me/tiny"), run_dir=tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="needs a Hugging Face token"):
        push_run(push_cfg(f"dir={finished}", "repo=me/tiny"), run_dir=tmp_path)
    with pytest.raises(ConfigError, match="is not a Hub repo id"):
        push_run(push_cfg(f"dir={finished}", "repo=a/b/c"), run_dir=tmp_path)
    with pytest.raises(ConfigError, match="holds no saved model"):
        push_run(push_cfg(f"dir={tmp_path}", "repo=me/tiny"), run_dir=tmp_path)


def test_push_to_hub_without_the_hub_stops_the_run_before_training(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="trainer.push_to_hub=null"):
        run(compose_config(tiny_overrides(tiny_model_dir, "trainer.push_to_hub=me/tiny")), run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_failed_push_leaves_the_run_and_prints_the_retry(tiny_model_dir, hub, monkeypatch, tmp_path, caplog):
    def refuse(self, **_):
        raise ConnectionError("the Hub went away")

    monkeypatch.setattr(FakeHub, "upload_folder", refuse)
    with caplog.at_level(logging.ERROR, logger="train"):
        out = run(compose_config(tiny_overrides(tiny_model_dir, "trainer.push_to_hub=me/tiny")), run_dir=tmp_path / "run")
    assert out["pushed_to"] is None and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "eval.json").is_file()
    assert f"python -m train.push {tmp_path / 'run' / 'final'} repo=me/tiny" in caplog.text and "the Hub went away" in caplog.text


def test_the_command_takes_the_folder_as_its_first_argument(finished, tmp_path):
    cmd = [sys.executable, "-m", "train.push", str(finished / "final"), "repo=me/tiny", "dry_run=true", f"hydra.run.dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert "Would upload" in done.stdout and "  model.safetensors" in done.stdout
    bad = subprocess.run([*cmd[:4], "repo=not a repo", "dry_run=true", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a Hub repo id" in bad.stderr
