"""Autocast covers the model's forward pass only: under bf16 every loss (the loop's and the ones
that run the model themselves) computes its similarities, logits and softmax in fp32."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from train.run import run
from tests.conftest import FIXTURES, compose_config, tiny_image_text_overrides, tiny_overrides

ONE_STEP = ["trainer.max_steps=2", "trainer.mixed_precision=bf16", "trainer.eval_every=1000", "trainer.save_every=1000"]
NLI = ["data=nli_file", f"data.train_path={FIXTURES / 'nli_train_small.tsv'}", f"data.dev_path={FIXTURES / 'nli_small.tsv'}", "data.max_train_samples=0"]
CANDIDATES = ["data=candidates_file", f"data.train_path={FIXTURES / 'candidates_small.jsonl'}", f"data.dev_path={FIXTURES / 'candidates_small.jsonl'}"]
# 40 queries with 3 negatives each: n-tuples (anchor, positive, negative_1, negative_2, negative_3).
N_TUPLES = ["data=candidates_file", f"data.train_path={FIXTURES / 'candidates_ntuples.jsonl'}", f"data.dev_path={FIXTURES / 'candidates_small.jsonl'}"]
HALF = (torch.bfloat16, torch.float16)

CASES = {
    "cosent": [],
    "angle": ["loss=angle"],
    "cosine": ["loss=cosine"],
    "mnrl": [*NLI, "loss=mnrl", "trainer.batch_size=4"],
    "triplet": [*NLI, "loss=triplet", "trainer.batch_size=4"],
    "cached_mnrl": [*NLI, "loss=cached_mnrl", "trainer.batch_size=4", "loss.mini_batch_size=2"],
    "mnrl n-tuples": [*N_TUPLES, "loss=mnrl", "trainer.batch_size=4"],
    "gist n-tuples": [*N_TUPLES, "loss=gist", "loss.guide={model}", "trainer.batch_size=4"],
    "cached_gist n-tuples": [*N_TUPLES, "loss=cached_gist", "loss.guide={model}", "trainer.batch_size=4", "loss.mini_batch_size=2"],
    "softmax": [*NLI, "loss=softmax", "trainer.batch_size=4"],
    "matryoshka": ["loss.matryoshka_dims=[32,16]"],
    "cross_encoder bce": ["task=cross_encoder"],
    "cross_encoder ce": ["task=cross_encoder", *NLI, "loss=ce"],
    "cross_encoder mnrl": ["task=cross_encoder", *NLI, "loss=mnrl", "trainer.batch_size=4"],
    "cross_encoder mnrl n-tuples": ["task=cross_encoder", *N_TUPLES, "loss=mnrl", "trainer.batch_size=4"],
    "cross_encoder lambda": ["task=cross_encoder", *CANDIDATES, "loss=lambda", "trainer.batch_size=2"],
    "cross_encoder listnet": ["task=cross_encoder", *CANDIDATES, "loss=listnet", "trainer.batch_size=2"],
}


class HalfOutsideForward(TorchFunctionMode):
    """Records ops that return a half-precision tensor while no forward pass of `models` (the
    trained model, a loss's frozen guide) runs."""

    def __init__(self, *models: torch.nn.Module) -> None:
        super().__init__()
        self.depth = 0
        self.inside = 0
        self.found: list[str] = []
        for model in models:
            model.register_forward_pre_hook(lambda *_: self._enter())
            model.register_forward_hook(lambda *_: self._leave())

    def _enter(self) -> None:
        self.depth += 1

    def _leave(self) -> None:
        self.depth -= 1

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.depth:
            self.inside += isinstance(out, torch.Tensor) and out.dtype in HALF
        elif isinstance(out, torch.Tensor) and out.dtype in HALF:
            self.found.append(getattr(func, "__name__", str(func)))
        return out


def run_watched(cfg, tmp_path, monkeypatch) -> HalfOutsideForward:
    import train.engine.loop as loop

    real = loop.update
    watch: dict[str, HalfOutsideForward] = {}

    def update(s, batch):
        if "mode" not in watch:
            watch["mode"] = HalfOutsideForward(s.accelerator.unwrap_model(s.model), *s.prep.helpers)
        with watch["mode"]:
            return real(s, batch)

    monkeypatch.setattr(loop, "update", update)
    result = run(cfg, run_dir=tmp_path)
    assert result["mixed_precision"] == "bf16"
    return watch["mode"]


@pytest.mark.parametrize("case", list(CASES))
def test_every_loss_is_computed_in_fp32_under_bf16(case, tiny_model_dir, tmp_path, monkeypatch):
    case_overrides = [o.replace("{model}", str(tiny_model_dir)) for o in CASES[case]]
    mode = run_watched(compose_config(tiny_overrides(tiny_model_dir, *case_overrides, *ONE_STEP)), tmp_path, monkeypatch)
    assert mode.inside > 0, "the forward pass ran in bf16"
    assert not mode.found, f"half-precision results outside the forward pass: {sorted(set(mode.found))}"


@pytest.mark.parametrize("loss", ["clip", "cached_clip"])
def test_image_text_losses_are_computed_in_fp32_under_bf16(loss, tiny_model_dir, tmp_path, monkeypatch):
    overrides = tiny_image_text_overrides(tiny_model_dir, f"loss={loss}", *ONE_STEP, "trainer.num_workers=0",
                                          *(["loss.mini_batch_size=2", "trainer.batch_size=2"] if loss == "cached_clip" else []))
    mode = run_watched(compose_config(overrides), tmp_path, monkeypatch)
    assert mode.inside > 0
    assert not mode.found, f"half-precision results outside the forward pass: {sorted(set(mode.found))}"
