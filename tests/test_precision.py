"""trainer.mixed_precision: what `auto` picks, and that bf16 training still evaluates and saves in fp32."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import train.engine.precision
from train.evaluate import evaluate_run
from train.run import run
from tests.conftest import FIXTURES, compose_config


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"), [(True, False, "bf16"), (False, True, "bf16"), (False, False, "no")]
)
def test_auto_picks_bf16_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    assert train.engine.precision.resolve_precision("auto", torch.device("cpu")) == expected
    assert train.engine.precision.resolve_precision("no", torch.device("cpu")) == "no"
    assert train.engine.precision.resolve_precision("bf16", torch.device("cpu")) == "bf16"


def test_auto_is_fp32_on_a_torch_without_the_cpu_probes(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert train.engine.precision.resolve_precision("auto", torch.device("cpu")) == "no"


def test_bf16_autocasts_training_but_evaluates_and_saves_fp32(tiny_cfg, tmp_path):
    runs = {}
    for precision in ("no", "bf16"):
        run_dir = tmp_path / precision
        runs[precision] = run(tiny_cfg(f"trainer.mixed_precision={precision}"), run_dir=run_dir)
        assert runs[precision]["mixed_precision"] == precision
        weights = load_file(str(run_dir / "final" / "model.safetensors"))
        assert all(t.dtype == torch.float32 for t in weights.values())

    losses = {p: json.loads((tmp_path / p / "metrics.jsonl").read_text().splitlines()[0])["loss"] for p in runs}
    assert losses["bf16"] != losses["no"], "bf16 did not change the forward pass: autocast is not on"
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05)

    # The run's dev figures are those of its saved model evaluated in fp32.
    again = evaluate_run(
        compose_config([f"checkpoint={tmp_path / 'bf16' / 'final'}", "data=sts_file", f"data.path={FIXTURES / 'pairs.jsonl'}", "split=dev"], "evaluate"),
        run_dir=tmp_path / "eval",
    )
    assert again["dev"]["spearman_cosine"] == pytest.approx(runs["bf16"]["dev"]["spearman_cosine"], abs=1e-6)
    assert again["dev"]["pearson_cosine"] == pytest.approx(runs["bf16"]["dev"]["pearson_cosine"], abs=1e-6)


def test_tf32_is_set_for_cuda_only_and_reported():
    from train.engine.precision import set_tf32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert set_tf32(True, torch.device("cpu")) is False and torch.backends.cuda.matmul.allow_tf32 is False
        assert set_tf32(True, torch.device("cuda")) is True
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
        assert set_tf32(False, torch.device("cuda")) is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_the_run_reports_tf32_off_on_a_cpu(tiny_cfg, tmp_path):
    assert run(tiny_cfg(), run_dir=tmp_path)["tf32"] is False


def test_under_fsdp_the_model_is_built_on_the_cpu(monkeypatch):
    """FSDP shards the model from the CPU onto the GPUs: it is never whole on one GPU."""
    from train.engine.parallel import build_device

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert build_device() == "cpu"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert build_device() is None
