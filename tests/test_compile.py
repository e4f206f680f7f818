"""trainer.compile: the backbone goes through torch.compile (dynamic shapes), padding-free batches
included, and trains to the weights of the uncompiled run. Compiled here with dynamo's `eager`
backend: the tracing is what can break, and inductor's code generation would take minutes on a
CPU without changing what is checked."""

from __future__ import annotations

import pytest

from train.run import run
from tests.conftest import compose_config, tiny_overrides
from tests.test_train_run import assert_same_updates, weight_updates


def test_a_compiled_backbone_trains_to_the_same_weights(tiny_model_no_dropout_dir, tmp_path, monkeypatch):
    import torch._dynamo

    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compile_module(self, *a, **{**k, "backend": "eager"}))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    common = ["trainer.mixed_precision=no", "trainer.lr=1e-3", "trainer.eval_every=1000", "trainer.save_every=1000"]
    compiled = run(compose_config(tiny_overrides(tiny_model_no_dropout_dir, *common, "trainer.compile=true")), run_dir=tmp_path / "compiled")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0, "nothing was compiled"
    plain = run(compose_config(tiny_overrides(tiny_model_no_dropout_dir, *common)), run_dir=tmp_path / "plain")
    assert compiled["steps"] == plain["steps"] == 6
    assert compiled["dev"]["spearman_cosine"] == pytest.approx(plain["dev"]["spearman_cosine"], abs=1e-4)
    assert_same_updates(weight_updates(tiny_model_no_dropout_dir, tmp_path / "compiled"), weight_updates(tiny_model_no_dropout_dir, tmp_path / "plain"),
                        rtol=1e-4)
