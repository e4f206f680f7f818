"""Runs under several processes, as `accelerate launch` starts them (CPU processes here), and
multi-stage experiments: end to end on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from accelerate.commands.config.config_args import load_config_from_file

from train.evaluate import evaluate_run
from train.run import run as run_in_process
from tests.conftest import FIXTURES, ROOT, compose_config, tiny_image_text_overrides
from tests.test_train_run import assert_same_updates, weight_updates


def launch(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate" / "two_processes.yaml"), "-m", "train", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def tiny_nli(model_dir) -> list[str]:
    return [
        "debug=default",
        "trainer.save_every=3",  # the step-3 checkpoint whose RNG states are checked
        f"model.name={model_dir}",
        "data=nli_file",
        f"data.train_path={FIXTURES / 'nli_train_small.tsv'}",
        f"data.dev_path={FIXTURES / 'nli_small.tsv'}",
        "loss=mnrl",
        "trainer.batch_size=4",
        "data.max_train_samples=0",
    ]


def test_two_processes_one_run_dir_and_the_same_weights_as_one_process(tiny_model_no_dropout_dir, tmp_path):
    # MNRL with negatives gathered across processes: 2 processes x 4 rows train on the same
    # global batches as 1 process x 8 rows (the duplicate-free sampler cuts groups of 8 into two
    # consecutive batches, one a rank), so without dropout both must move the weights alike.
    # What may differ is float noise: each rank pads its own 4 rows, and gloo sums the gradients.
    common = [*tiny_nli(tiny_model_no_dropout_dir), "trainer.max_steps=4", "trainer.mixed_precision=no", "trainer.lr=1e-3"]
    done = launch([*common, f"hydra.run.dir={tmp_path / 'run'}"])
    assert done.returncode == 0, done.stderr[-4000:]
    one = run_in_process(compose_config([*common, "trainer.batch_size=8"]), run_dir=tmp_path / "one")
    run = tmp_path / "run"
    report = json.loads((run / "eval.json").read_text())
    assert report["num_processes"] == 2 and one["num_processes"] == 1 and report["steps"] == one["steps"] == 4
    assert_same_updates(weight_updates(tiny_model_no_dropout_dir, run), weight_updates(tiny_model_no_dropout_dir, tmp_path / "one"), rtol=1e-3)
    for key in ("mrr@10", "ndcg@10", "recall@1"):
        assert report["retrieval_dev"][key] == pytest.approx(one["retrieval_dev"][key], abs=1e-6)

    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == [
        "__main__.log", "best", "checkpoints", "eval.json", "final", "metrics.jsonl", "run_config.json"
    ]
    assert sorted(p.name for p in (run / "checkpoints" / "step-3" / "accelerate_state").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"
    ]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], "only the main process writes metrics"


def test_two_processes_colbert_gathers_documents_and_moves_the_weights_as_one_process(tiny_model_no_dropout_dir, tmp_path):
    # task=multi_vector: the MaxSim InfoNCE gathers every rank's documents (padded to the longest
    # across ranks), so 2 x 4 rows must train as 1 x 8 rows.
    common = [*tiny_nli(tiny_model_no_dropout_dir), "task=multi_vector", "loss=colbert", "model.multi_vector_dim=16", "model.query_length=12",
              "trainer.max_steps=4", "trainer.mixed_precision=no", "trainer.lr=1e-3"]
    done = launch([*common, f"hydra.run.dir={tmp_path / 'run'}"])
    assert done.returncode == 0, done.stderr[-4000:]
    one = run_in_process(compose_config([*common, "trainer.batch_size=8"]), run_dir=tmp_path / "one")
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["num_processes"] == 2 and report["task"] == "multi_vector" and report["steps"] == one["steps"] == 4
    assert_same_updates(weight_updates(tiny_model_no_dropout_dir, tmp_path / "run"), weight_updates(tiny_model_no_dropout_dir, tmp_path / "one"),
                        rtol=1e-3)


def test_two_processes_sts_run_evaluates_each_pair_once(tiny_model_dir, tmp_path):
    done = launch([*tiny_nli(tiny_model_dir), "data=sts_file", f"data.train_path={FIXTURES / 'train_small.jsonl'}",
                   f"data.dev_path={FIXTURES / 'pairs.jsonl'}", "loss=cosent", f"hydra.run.dir={tmp_path / 'run'}"])
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "run"
    report = json.loads((run / "eval.json").read_text())
    assert report["num_processes"] == 2
    again = evaluate_run(
        compose_config([f"checkpoint={run / 'final'}", "data=sts_file", f"data.path={FIXTURES / 'pairs.jsonl'}", "split=dev"], "evaluate"),
        run_dir=tmp_path / "eval",
    )
    for key in ("spearman_cosine", "pearson_cosine", "spearman_euclidean"):
        assert again["dev"][key] == pytest.approx(report["dev"][key], abs=1e-6)
    assert again["dev"]["n_pairs"] == report["dev"]["n_pairs"] == 3


def test_two_processes_cross_encoder_one_run_dir_and_the_figures_of_its_final_model(tiny_model_dir, tmp_path):
    # Listwise loss on query-with-candidates data: each rank trains on its share of the queries,
    # the loop averages the gradients (the library's loss runs the model outside DDP).
    run = tmp_path / "run"
    done = launch([
        "debug=default", f"model.name={tiny_model_dir}", "task=cross_encoder", "loss=listnet", "data=candidates_file",
        f"data.train_path={FIXTURES / 'candidates_small.jsonl'}", f"data.dev_path={FIXTURES / 'candidates_small.jsonl'}",
        "trainer.batch_size=2", "trainer.max_steps=4", f"hydra.run.dir={run}",
    ])
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((run / "eval.json").read_text())
    assert report["num_processes"] == 2 and report["task"] == "cross_encoder" and report["steps"] == 4
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    again = evaluate_run(
        compose_config([f"checkpoint={run / 'final'}", "data=candidates_file", f"data.path={FIXTURES / 'candidates_small.jsonl'}", "split=dev"], "evaluate"),
        run_dir=tmp_path / "eval",
    )
    for key in ("map", "mrr@10", "ndcg@10"):
        assert again["dev"][key] == pytest.approx(report["dev"][key], abs=1e-6)


def image_text_weights(model_dir) -> dict[str, torch.Tensor]:
    """Every weight of a saved image–text model (one file a module: towers, projection), by file and name."""
    return {f"{f.parent.name}/{k}": v for f in sorted(model_dir.rglob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_two_processes_image_text_gathers_the_global_batch(tiny_model_no_dropout_dir, tmp_path):
    # CLIP's loss gathers both embeddings across processes with their gradients: 2 processes x 3
    # images score each image against the same 6 captions as 1 process x 6 (the sampler cuts the
    # global batch into consecutive halves, one a rank), so both runs move the weights alike.
    # The 6 fixture images make one global batch an epoch either way.
    from accelerate.utils import set_seed

    from train.models.build import build_model

    common = tiny_image_text_overrides(
        tiny_model_no_dropout_dir, "data.max_train_samples=0", "trainer.max_steps=4", "trainer.mixed_precision=no", "trainer.lr=1e-3",
        "trainer.eval_every=2", "trainer.save_every=2",
    )
    done = launch([*common, "trainer.batch_size=3", f"hydra.run.dir={tmp_path / 'run'}"])
    assert done.returncode == 0, done.stderr[-4000:]
    one = run_in_process(compose_config([*common, "trainer.batch_size=6"]), run_dir=tmp_path / "one")
    run = tmp_path / "run"
    report = json.loads((run / "eval.json").read_text())
    assert report["num_processes"] == 2 and one["num_processes"] == 1 and report["steps"] == one["steps"] == 4
    # Where both runs started: the run's model, built under its seed (the scratch ViT is random).
    cfg = compose_config(common)
    set_seed(cfg.trainer.seed)
    build_model(cfg.model, cfg.pooling, "image_text").save(str(tmp_path / "start"))
    start = image_text_weights(tmp_path / "start")
    two_w, one_w = image_text_weights(run / "final"), image_text_weights(tmp_path / "one" / "final")
    assert start.keys() == two_w.keys() == one_w.keys() and any(k.startswith("image_2_Dense/") for k in start)
    assert_same_updates({k: two_w[k] - start[k] for k in start}, {k: one_w[k] - start[k] for k in start}, rtol=1e-3)
    for key in ("zero_shot_accuracy", "image_to_text_recall@1", "text_to_image_recall@1"):
        assert report["dev"][key] == pytest.approx(one["dev"][key], abs=1e-6)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_two_processes_refuse_a_global_batch_larger_than_the_data(tiny_model_dir, tmp_path):
    done = launch([*tiny_nli(tiny_model_dir), "data.max_train_samples=12", "trainer.batch_size=8", f"hydra.run.dir={tmp_path}"])
    assert done.returncode != 0
    assert "trainer.batch_size=8 × 2 processes = 16 rows a step, but the training set has 12 rows" in done.stderr, done.stderr[-3000:]
    # The launcher reports the failed process with its own traceback; none comes from this project.
    assert "exitcode  : 2" in done.stderr and f'File "{ROOT / "train"}' not in done.stderr
    assert not (tmp_path / "final").exists() and not (tmp_path / "eval.json").exists()


def test_two_processes_contrastive_with_hard_negatives(tiny_model_dir, tmp_path):
    done = launch([*tiny_nli(tiny_model_dir), f"hydra.run.dir={tmp_path}"])
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["num_processes"] == 2 and report["loss"] == "mnrl"
    assert set(report["retrieval_dev"]) == {"mrr@10", "ndcg@10", "recall@1", "recall@10", "recall@100", "map@100", "n_queries"}
    assert report["retrieval_dev"]["n_queries"] == 3  # dev keeps every (premise, entailment) pair


def test_two_stage_experiment(tiny_model_dir, tmp_path):
    # nli_then_sts with its stages pointed at the tiny fixtures.
    stages = [
        {"name": "nli", "overrides": ["data=nli_file", f"data.train_path={FIXTURES / 'nli_train_small.tsv'}",
                                      f"data.dev_path={FIXTURES / 'nli_small.tsv'}", "loss=mnrl", "trainer.batch_size=4"]},
        {"name": "sts", "overrides": ["data=sts_file", f"data.train_path={FIXTURES / 'train_small.jsonl'}",
                                      f"data.dev_path={FIXTURES / 'pairs.jsonl'}", "loss=cosent"]},
    ]
    quoted = ", ".join(
        "{name: %s, overrides: [%s]}" % (s["name"], ", ".join(f"'{o}'" for o in s["overrides"])) for s in stages
    )
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "train", "experiment=nli_then_sts", f"stages=[{quoted}]",
         "debug=default", f"model.name={tiny_model_dir}", f"hydra.run.dir={run}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads((run / "eval.json").read_text())
    assert list(report["stages"]) == ["stage-1-nli", "stage-2-sts"]
    assert report["stages"]["stage-1-nli"]["loss"] == "mnrl" and report["loss"] == "cosent"
    assert "retrieval_dev" in report["stages"]["stage-1-nli"] and report["dev"]["n_pairs"] == 3
    for stage in ("stage-1-nli", "stage-2-sts"):
        assert (run / stage / "final" / "modules.json").exists()
    assert (run / "final" / "modules.json").exists()
    # Stage 2 started from stage 1's final model.
    assert report["stages"]["stage-2-sts"]["model"] == str(run / "stage-1-nli" / "final")


@pytest.mark.parametrize("path", sorted((ROOT / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_launcher_configs_are_valid_accelerate_configs(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 2 and config.compute_environment.value == "LOCAL_MACHINE"


def test_launcher_configs_found():
    assert len(list((ROOT / "accelerate").glob("*.yaml"))) >= 5
