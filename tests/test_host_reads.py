"""A training step reads nothing back from the device in this project's code: the loss, token
counts and the decision to skip a non-finite step stay on the device (or come from the
collator's host-side counts) until a log line reads them."""

from __future__ import annotations

import pytest

from train.run import run
from tests.conftest import FIXTURES, compose_config, tiny_image_text_overrides, tiny_overrides
from tests.host_reads import count_step_reads

# No log line, evaluation or checkpoint inside the counted steps: those read on purpose.
QUIET = ["trainer.log_every=1000", "trainer.eval_every=1000", "trainer.save_every=1000", "trainer.max_steps=5"]
NLI = ["data=nli_file", f"data.train_path={FIXTURES / 'nli_train_small.tsv'}", f"data.dev_path={FIXTURES / 'nli_small.tsv'}", "data.max_train_samples=0"]
CANDIDATES = ["data=candidates_file", f"data.train_path={FIXTURES / 'candidates_small.jsonl'}", f"data.dev_path={FIXTURES / 'candidates_small.jsonl'}"]
# 40 queries with 3 negatives each: n-tuples (anchor, positive, negative_1, negative_2, negative_3).
N_TUPLES = ["data=candidates_file", f"data.train_path={FIXTURES / 'candidates_ntuples.jsonl'}", f"data.dev_path={FIXTURES / 'candidates_small.jsonl'}"]

CASES = {
    "bi_encoder cosent, padding-free": [],
    "bi_encoder cosent, padded in chunks": ["trainer.padding_free=false"],
    "bi_encoder mnrl": [*NLI, "loss=mnrl", "trainer.batch_size=4"],
    "bi_encoder cached_mnrl": [*NLI, "loss=cached_mnrl", "trainer.batch_size=4", "loss.mini_batch_size=2"],
    "bi_encoder mnrl n-tuples": [*N_TUPLES, "loss=mnrl", "trainer.batch_size=4"],
    "bi_encoder gist n-tuples": [*N_TUPLES, "loss=gist", "loss.guide={model}", "trainer.batch_size=4"],
    "bi_encoder cached_gist n-tuples": [*N_TUPLES, "loss=cached_gist", "loss.guide={model}", "trainer.batch_size=4", "loss.mini_batch_size=2"],
    "bi_encoder softmax": [*NLI, "loss=softmax", "trainer.batch_size=4"],
    "bi_encoder matryoshka": ["loss.matryoshka_dims=[32,16]"],
    "cross_encoder bce, padding-free": ["task=cross_encoder"],
    "cross_encoder bce, padded in chunks": ["task=cross_encoder", "trainer.padding_free=false"],
    "cross_encoder mnrl": ["task=cross_encoder", *NLI, "loss=mnrl", "trainer.batch_size=4"],
    "cross_encoder mnrl n-tuples": ["task=cross_encoder", *N_TUPLES, "loss=mnrl", "trainer.batch_size=4"],
    "cross_encoder listnet": ["task=cross_encoder", *CANDIDATES, "loss=listnet", "trainer.batch_size=2"],
    "sparse splade": ["task=sparse", *NLI, "trainer.batch_size=4"],
    "sparse inference-free splade": ["task=sparse", *NLI, "model.sparse_architecture=inference_free", "trainer.batch_size=4"],
    "multi_vector colbert": ["task=multi_vector", *NLI, "model.multi_vector_dim=16", "model.query_length=12", "trainer.batch_size=4"],
    "multi_vector colbert n-tuples": ["task=multi_vector", *N_TUPLES, "model.multi_vector_dim=16", "model.query_length=12", "trainer.batch_size=4"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_host_reads_in_a_step_of_ours(case, tiny_model_dir, tmp_path, monkeypatch):
    cfg = compose_config(tiny_overrides(tiny_model_dir, *[o.replace("{model}", str(tiny_model_dir)) for o in CASES[case]], *QUIET))
    mode, steps = count_step_reads(monkeypatch, lambda: run(cfg, run_dir=tmp_path))
    assert steps == 5
    assert not mode.ours(), f"reads of device values in this project's step code: {dict(mode.ours())}"


@pytest.mark.parametrize("loss", ["clip", "cached_clip"])
def test_no_host_reads_in_an_image_text_step_of_ours(loss, tiny_model_dir, tmp_path, monkeypatch):
    overrides = tiny_image_text_overrides(tiny_model_dir, f"loss={loss}", *QUIET, "trainer.num_workers=0",
                                          *(["loss.mini_batch_size=2", "trainer.batch_size=2"] if loss == "cached_clip" else []))
    mode, steps = count_step_reads(monkeypatch, lambda: run(compose_config(overrides), run_dir=tmp_path))
    assert steps == 5
    assert not mode.ours(), f"reads of device values in this project's step code: {dict(mode.ours())}"


def test_the_counter_sees_a_read_put_back(tiny_model_dir, tmp_path, monkeypatch):
    """The tests above can fail: with the skip decided on the host (an optimizer that cannot skip
    on the device), the gradient norm is read once a step, and that read is counted."""
    import train.engine.setup as setup

    monkeypatch.setattr(setup, "skips_on_device", lambda optimizer: False)
    mode, steps = count_step_reads(monkeypatch, lambda: run(compose_config(tiny_overrides(tiny_model_dir, *QUIET)), run_dir=tmp_path))
    assert sum(mode.ours().values()) == steps, dict(mode.ours())
