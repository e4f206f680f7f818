"""fp16 with dynamic loss scaling, on a CPU as on a GPU: the forward pass really runs in fp16,
a step whose scaled gradients overflow is skipped by torch's GradScaler and training goes on
(with either trainer.on_nan), and the skipped steps are counted in metrics.jsonl, eval.json and
the card. A loss that is itself not finite is still a divergence."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import train.engine.loop
from train.errors import UserError
from train.run import run

FP16 = ("trainer.mixed_precision=fp16", "trainer.save_every=1000")


def overflow_at(monkeypatch, calls: set[int], factor: float = 1e30) -> None:
    """The loss of the given batches times `factor`: finite, but the scaled gradient overflows fp16."""
    seen = {"n": 0}
    real = train.engine.loop.compute_loss

    def compute_loss(*a, **k):
        seen["n"] += 1
        loss = real(*a, **k)
        return loss * factor if seen["n"] in calls else loss

    monkeypatch.setattr(train.engine.loop, "compute_loss", compute_loss)


def forward_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtype of what the model's first linear layer computed in each training forward pass."""
    seen: list[torch.dtype] = []
    real = train.engine.loop.update

    def update(s, batch):
        module = next(m for m in s.accelerator.unwrap_model(s.model).modules() if isinstance(m, torch.nn.Linear))
        handle = module.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        try:
            return real(s, batch)
        finally:
            handle.remove()

    monkeypatch.setattr(train.engine.loop, "update", update)
    return seen


@pytest.mark.parametrize("on_nan", ["stop", "skip"])
def test_an_overflow_is_skipped_by_the_scaler_and_training_goes_on(on_nan, tiny_cfg, tmp_path, monkeypatch):
    overflow_at(monkeypatch, {2})
    dtypes = forward_dtypes(monkeypatch)
    result = run(tiny_cfg(*FP16, f"trainer.on_nan={on_nan}"), run_dir=tmp_path)
    assert result["steps"] == 6 and result["mixed_precision"] == "fp16"
    assert set(dtypes) == {torch.float16}, "fp16 on a CPU must really run fp16 autocast"
    assert result["skipped_steps"] == 1
    assert result["loss_scale"] == 2.0**15  # GradScaler's 2**16, halved once by the overflow
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["skipped_steps"] for line in lines] == [0, 1, 1, 1, 1, 1]
    assert lines[1]["loss_scale"] == 2.0**15
    card = (tmp_path / "final" / "README.md").read_text()
    assert "- `skipped_optimizer_steps`: 1" in card and "final scale 32768" in card
    assert all(torch.isfinite(w).all() for w in load_file(str(tmp_path / "final" / "model.safetensors")).values())


def test_the_skipped_step_leaves_the_weights_as_they_were(tiny_model_no_dropout_dir, tmp_path, monkeypatch):
    """An overflow at the last of 2 steps: the final weights are those after step 1."""
    from tests.conftest import compose_config, tiny_overrides

    common = ["trainer.mixed_precision=fp16", "trainer.eval_every=1000", "trainer.save_every=1000", "trainer.lr=1e-3", "trainer.warmup_ratio=0"]
    one = run(compose_config(tiny_overrides(tiny_model_no_dropout_dir, *common, "trainer.max_steps=1")), run_dir=tmp_path / "one")
    overflow_at(monkeypatch, {2})
    two = run(compose_config(tiny_overrides(tiny_model_no_dropout_dir, *common, "trainer.max_steps=2")), run_dir=tmp_path / "two")
    assert one["skipped_steps"] == 0 and two["skipped_steps"] == 1
    first = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    second = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    start = load_file(str(tiny_model_no_dropout_dir / "model.safetensors"))
    moved = [k for k in first if not torch.equal(first[k], start[k].to(first[k].dtype))]
    assert moved, "step 1 changed the weights"
    assert all(torch.equal(first[k], second[k]) for k in first), "the skipped step 2 changed the weights"


def test_a_loss_that_is_not_finite_is_still_a_divergence_under_fp16(tiny_cfg, tmp_path, monkeypatch):
    overflow_at(monkeypatch, {3}, factor=float("nan"))
    with pytest.raises(UserError, match="diverged at step 3"):
        run(tiny_cfg(*FP16), run_dir=tmp_path)
