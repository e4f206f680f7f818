"""A resume with another command: refused when the change alters the result, accepted when it
cannot, recorded when allowed (trainer.resume_changed=allow)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import compose_config, resume_from_checkpoint, tiny_overrides
from train.errors import UserError
from train.config.resume_rules import changes
from train.run import run


@pytest.fixture(scope="module")
def started(tmp_path_factory, tiny_model_dir):
    cfg = compose_config(tiny_overrides(tiny_model_dir))
    run_dir = tmp_path_factory.mktemp("started")
    run(cfg, run_dir=run_dir)
    return cfg, run_dir


def test_a_resume_that_changes_the_learning_rate_is_refused_naming_the_key(started, tmp_path):
    cfg, run_dir = started
    changed = cfg.copy()
    changed.trainer.lr = 1e-4
    changed.trainer.batch_size = 4
    with pytest.raises(UserError) as e:
        resume_from_checkpoint(changed, run_dir, tmp_path / "resumed")
    message = str(e.value)
    assert "trainer.lr: 2e-05 -> 0.0001" in message and "trainer.batch_size: 8 -> 4" in message
    assert "trainer.resume_changed=allow" in message
    assert not (tmp_path / "resumed" / "final").exists() and not (tmp_path / "resumed" / "checkpoints" / "step-6").exists()


def test_a_resume_that_changes_only_logging_and_evaluation_is_accepted(started, tmp_path):
    cfg, run_dir = started
    changed = cfg.copy()
    changed.trainer.log_every = 2
    changed.trainer.eval_every = 6
    changed.trainer.keep_last = 1
    result = resume_from_checkpoint(changed, run_dir, tmp_path / "resumed")
    assert result["steps"] == 6 and "resume_changes" not in result


def test_allow_continues_and_records_the_change_in_eval_json_and_the_card(started, tmp_path):
    cfg, run_dir = started
    changed = cfg.copy()
    changed.trainer.lr = 1e-4
    changed.trainer.resume_changed = "allow"
    result = resume_from_checkpoint(changed, run_dir, tmp_path / "resumed")
    assert result["resume_changes"] == [{"step": 3, "key": "trainer.lr", "old": 2e-05, "new": 0.0001}]
    assert json.loads((tmp_path / "resumed" / "eval.json").read_text())["resume_changes"] == result["resume_changes"]
    assert "trainer.lr: 2e-05 -> 0.0001 (from step 3)" in (tmp_path / "resumed" / "final" / "README.md").read_text()


def test_processes_and_precision_change_the_result_trackers_do_not():
    old = {"trainer": {"mixed_precision": "auto", "report_to": []}, "launch": {"num_processes": 1}}
    new = {"trainer": {"mixed_precision": "no", "report_to": ["tensorboard"]}, "launch": {"num_processes": 2}}
    assert {(k, harmful) for k, _, _, harmful in changes(old, new)} == {
        ("launch.num_processes", True), ("trainer.mixed_precision", True), ("trainer.report_to", False)}


def test_a_setting_newer_than_the_run_is_no_change_but_a_changed_one_is():
    """A run started by an older version has no trainer.padding_free in its file: the key's
    default is not a change the command asked for; setting a key the file has still is."""
    old = {"trainer": {"lr": 2e-5}}
    new = {"trainer": {"lr": 2e-5, "padding_free": True}}
    assert [(k, harmful) for k, _, _, harmful in changes(old, new)] == [("trainer.padding_free", False)]
    assert [(k, harmful) for k, _, _, harmful in changes({"trainer": {"padding_free": True}}, {"trainer": {"padding_free": False}})] == [
        ("trainer.padding_free", True)]
