"""One pass through DDP's wrapper for every task and loss: the gradients are averaged in DDP's
buckets while backward runs (no all-reduce a parameter), every trainable parameter gets one (so
DDP need not search for unused ones), and two processes reach the weights of one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from train.run import run as run_in_process
from tests.conftest import FIXTURES, ROOT, compose_config, make_tiny_bert, tiny_overrides
from tests.test_train_run import assert_same_updates, weight_updates

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate" / "two_processes.yaml")]
NLI = ["data=nli_file", f"data.train_path={FIXTURES / 'nli_train_small.tsv'}", f"data.dev_path={FIXTURES / 'nli_small.tsv'}", "data.max_train_samples=0"]
# 40 queries with 3 negatives each: n-tuples (anchor, positive, negative_1, negative_2, negative_3).
N_TUPLES = ["data=candidates_file", f"data.train_path={FIXTURES / 'candidates_ntuples.jsonl'}", f"data.dev_path={FIXTURES / 'candidates_small.jsonl'}"]
EXACT = ["trainer.mixed_precision=no", "trainer.lr=1e-3", "trainer.max_steps=4", "trainer.eval_every=1000", "trainer.save_every=1000"]


def launched(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def collectives(model_dir, tmp_path, name: str, *overrides: str) -> dict:
    out = tmp_path / f"{name}.json"
    launched([*LAUNCH, str(ROOT / "tests" / "probes" / "collectives.py"), str(out), str(tmp_path / name),
              *tiny_overrides(model_dir, *overrides, *EXACT, "trainer.batch_size=4")])
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", [["task=cross_encoder"], [*NLI, "loss=softmax"], ["task=sparse", *NLI],
                                  ["task=multi_vector", *NLI, "model.multi_vector_dim=16", "model.query_length=12"]],
                         ids=["cross_encoder", "softmax", "splade", "colbert"])
def test_the_collectives_of_a_run_do_not_grow_with_the_parameter_tensors(case, tmp_path):
    """The same run on a 2-layer and an 8-layer model (about 3x the parameter tensors): the same
    collectives. Before, losses that run the model themselves were averaged a tensor at a time."""
    small = make_tiny_bert(tmp_path / "layers-2", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    big = make_tiny_bert(tmp_path / "layers-8", num_hidden_layers=8, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    few, many = collectives(small, tmp_path, "few", *case), collectives(big, tmp_path, "many", *case)
    assert few["steps"] == many["steps"] == 4
    assert few["collectives"] == many["collectives"], (few, many)
    assert few["collectives"]["gloo:all_reduce"] < 40, few  # not one a parameter (the 2-layer model has 39 tensors)


CASES = {
    "cross_encoder bce": ["task=cross_encoder"],
    "softmax": [*NLI, "loss=softmax"],
    "cached_mnrl": [*NLI, "loss=cached_mnrl", "loss.mini_batch_size=2"],
    "matryoshka mnrl": [*NLI, "loss=mnrl", "loss.matryoshka_dims=[32,16]"],
    "mnrl n-tuples": [*N_TUPLES, "loss=mnrl"],
    "gist n-tuples": [*N_TUPLES, "loss=gist", "loss.guide={model}"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_reach_the_weights_of_one(case, tiny_model_no_dropout_dir, tmp_path):
    """2 processes x 4 rows against 1 process x 8 rows, the same global batches: for a loss that is
    a mean over rows (BCE, softmax) or that gathers its negatives from every process (MNRL, also
    under GradCache and Matryoshka), the same weights up to float noise."""
    common = [*[o.replace("{model}", str(tiny_model_no_dropout_dir)) for o in CASES[case]], *EXACT]
    launched([*LAUNCH, "-m", "train", *tiny_overrides(tiny_model_no_dropout_dir, *common, "trainer.batch_size=4"),
              f"hydra.run.dir={tmp_path / 'two'}"])
    one = run_in_process(compose_config(tiny_overrides(tiny_model_no_dropout_dir, *common, "trainer.batch_size=8")), run_dir=tmp_path / "one")
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert two["num_processes"] == 2 and one["num_processes"] == 1 and two["steps"] == one["steps"] == 4
    assert_same_updates(weight_updates(tiny_model_no_dropout_dir, tmp_path / "two"),
                        weight_updates(tiny_model_no_dropout_dir, tmp_path / "one"), rtol=1e-3)


def test_a_parameter_without_gradient_is_named_before_ddp_fails(tiny_model_dir, tmp_path):
    """A trainable parameter no loss reaches (here: the pooler, unfrozen) ends the run at its first
    step with the parameter's name and the key that allows it."""
    script = ("import train.engine.parallel as s; s.freeze_unused_parameters = lambda model: None; "
              "import runpy, sys; sys.argv = ['train', *sys.argv[1:]]; runpy.run_module('train', run_name='__main__')")
    done = subprocess.run([*LAUNCH, "--no_python", sys.executable, "-c", script, *tiny_overrides(tiny_model_dir, *EXACT),
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode != 0
    assert "pooler.dense.weight" in done.stderr and "trainer.find_unused_parameters=true" in done.stderr, done.stderr[-3000:]
