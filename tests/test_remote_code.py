"""model.trust_remote_code: a model with its own Python code is refused by the key's name (never
with a [y/N] question that would hang a job without a terminal), and with the key it trains,
saves and loads back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from train.run import run
from tests.conftest import ROOT, compose_config, make_tiny_custom_code, tiny_overrides


def test_custom_code_without_the_key_exits_2_naming_it_and_never_asks(tmp_path):
    model_dir = make_tiny_custom_code(tmp_path / "custom")
    args = [sys.executable, "-m", "train", *tiny_overrides(model_dir), f"hydra.run.dir={tmp_path / 'run'}"]
    # stdin open and silent: a [y/N] question would wait on it (transformers' own 15 s timeout).
    proc = subprocess.run(args, cwd=ROOT, stdin=subprocess.PIPE, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert "model.trust_remote_code=true" in output
    assert "[y/N]" not in output and "Traceback" not in output
    assert not (tmp_path / "run" / "final").exists()


def test_custom_code_with_the_key_trains_saves_and_loads_back(tmp_path):
    from sentence_transformers import SentenceTransformer

    model_dir = make_tiny_custom_code(tmp_path / "custom")
    run_dir = tmp_path / "run"
    result = run(compose_config(tiny_overrides(model_dir, "model.trust_remote_code=true")), run_dir=run_dir)
    assert result["steps"] == 6
    assert json.loads((run_dir / "run_config.json").read_text())["settings"]["model"]["trust_remote_code"] is True
    assert "trust_remote_code" in (run_dir / "final" / "README.md").read_text()
    model = SentenceTransformer(str(run_dir / "final"), trust_remote_code=True)
    assert type(model[0].auto_model).__name__ == "TinyCustomModel"
    assert model.encode(["A man plays a guitar."]).shape == (1, 32)
