"""End to end on the tiny model: run dir contents, loadable final model, exact resume, no silent overwrite."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from train.errors import RunDirError, UserError
from train.evaluate import evaluate_run
from train.run import run
from tests.conftest import FIXTURES, compose_config, tiny_overrides, assert_same_weights, resume_from_checkpoint


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    cfg = compose_config(tiny_overrides(tiny_model_dir, f"data.test_path={FIXTURES / 'pairs.csv'}"))
    run_dir = tmp_path_factory.mktemp("run")
    result = run(cfg, run_dir=run_dir)
    return cfg, run_dir, result


def test_run_dir_layout(finished_run):
    _, run_dir, result = finished_run
    for name in ("final/modules.json", "best/modules.json", "eval.json", "metrics.jsonl", "checkpoints/step-3/manifest.json"):
        assert (run_dir / name).exists(), name
    assert not list(run_dir.glob("**/.*tmp*")), "no temporary dirs left behind"
    report = json.loads((run_dir / "eval.json").read_text())
    assert set(report["dev"]) >= {"pearson_cosine", "spearman_cosine", "spearman_dot", "spearman_euclidean", "spearman_manhattan", "n_pairs"}
    assert report["dev"]["n_pairs"] == 3 and report["test"]["n_pairs"] == 2
    assert report["steps"] == 6 == result["steps"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "epoch"} <= set(line) for line in lines)
    assert "dev_spearman_cosine" in lines[2] and "dev_spearman_cosine" in lines[5]


def test_final_loads_with_plain_sentence_transformers_and_matches_eval(finished_run, tmp_path):
    cfg, run_dir, result = finished_run
    model = SentenceTransformer(str(run_dir / "final"))
    assert model.encode(["a sentence"]).shape == (1, 32)
    again = evaluate_run(
        compose_config([f"checkpoint={run_dir / 'final'}", "data=sts_file", f"data.path={FIXTURES / 'pairs.jsonl'}", "split=dev"], "evaluate"),
        run_dir=tmp_path,
    )
    for key in ("spearman_cosine", "pearson_cosine", "spearman_manhattan"):
        assert again["dev"][key] == pytest.approx(result["dev"][key], abs=1e-6)
    assert json.loads((tmp_path / "eval.json").read_text())["dev"]["n_pairs"] == 3


def test_training_changed_the_weights(finished_run, tiny_model_dir):
    _, run_dir, _ = finished_run
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(run_dir / "final" / "model.safetensors"))
    key = next(k for k in after if k.endswith("encoder.layer.0.attention.self.query.weight"))
    base_key = next(k for k in before if k.endswith("encoder.layer.0.attention.self.query.weight"))
    assert not torch.equal(before[base_key], after[key])


def test_resume_from_checkpoint_continues_at_the_next_step_and_ends_identical(finished_run, tmp_path):
    cfg, run_dir, result = finished_run
    # A run that "died" after its step-3 checkpoint: only that checkpoint is in its dir.
    resumed_dir = tmp_path / "resumed"
    resumed = resume_from_checkpoint(cfg, run_dir, resumed_dir)
    lines = [json.loads(line) for line in (resumed_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert_same_weights(run_dir / "final" / "model.safetensors", resumed_dir / "final" / "model.safetensors")
    assert resumed["dev"]["spearman_cosine"] == pytest.approx(result["dev"]["spearman_cosine"], abs=1e-6)


def test_refuses_to_overwrite_a_finished_run(finished_run, tmp_path):
    cfg, run_dir, _ = finished_run
    target = tmp_path / "copy"
    shutil.copytree(run_dir, target)
    cfg.trainer.resume = None
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match="trainer.overwrite=true"):
        run(cfg, run_dir=target)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before, "a refused run must leave every file of the finished run as it was"
    cfg.trainer.overwrite = True
    cfg.trainer.max_steps = 2
    run(cfg, run_dir=target)
    assert json.loads((target / "eval.json").read_text())["steps"] == 2


def test_resume_latest_without_checkpoints_says_how(tiny_cfg, tmp_path):
    with pytest.raises(UserError, match="hydra.run.dir"):
        run(tiny_cfg("trainer.resume=latest"), run_dir=tmp_path)


def weight_updates(start_dir, run_dir) -> dict[str, torch.Tensor]:
    """final/ weights minus the starting weights, by backbone parameter name (a cross-encoder's
    backbone is saved under `bert.`; its fresh head has no starting weights to compare)."""
    before = load_file(str(start_dir / "model.safetensors"))
    after = {k.removeprefix("bert."): v for k, v in load_file(str(run_dir / "final" / "model.safetensors")).items()}
    return {k: after[k] - before[k] for k in after if k in before}


def assert_same_updates(a: dict, b: dict, rtol: float) -> None:
    """The two runs moved the weights the same way: the difference of their updates is small
    against the updates themselves (absolute tolerances would not tell a bug from noise)."""
    diff = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a))
    size = torch.sqrt(sum((a[k] ** 2).sum() for k in a))
    assert size > 0 and diff / size < rtol, f"updates differ by {float(diff / size):.2e} of their size"


def test_grad_accum_reaches_the_weights_of_the_whole_batch(tiny_model_no_dropout_dir, tmp_path):
    # CosineSimilarityLoss is a mean over pairs with no in-batch interaction, so two accumulated
    # halves of a batch give the gradient of the whole batch. Random batches (bucket_windows=0):
    # batch k of 16 rows is batches 2k and 2k+1 of 8 rows.
    common = ["loss=cosine", "trainer.bucket_windows=0", "trainer.mixed_precision=no", "trainer.max_steps=0",
              "trainer.epochs=2", "trainer.lr=1e-3", "data.max_train_samples=64", "trainer.log_every=1"]
    whole = run(compose_config(tiny_overrides(tiny_model_no_dropout_dir, *common, "trainer.batch_size=16")), run_dir=tmp_path / "whole")
    halves = run(compose_config(tiny_overrides(tiny_model_no_dropout_dir, *common, "trainer.batch_size=8", "trainer.grad_accum=2")),
                 run_dir=tmp_path / "halves")
    # 64 rows / 16 = 4 updates an epoch either way -> 8 steps.
    assert whole["steps"] == halves["steps"] == 8
    assert_same_updates(weight_updates(tiny_model_no_dropout_dir, tmp_path / "whole"),
                        weight_updates(tiny_model_no_dropout_dir, tmp_path / "halves"), rtol=1e-4)
    losses = lambda d: [json.loads(line)["loss"] for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(tmp_path / "halves") == pytest.approx(losses(tmp_path / "whole"), rel=1e-4)


def test_train_rows_in_dev_and_duplicate_rows_are_counted_in_the_log(tiny_cfg, tmp_path, caplog):
    lines = (FIXTURES / "train_small.jsonl").read_text().splitlines()
    train = tmp_path / "train.jsonl"
    # Two dev pairs leak into train (one with its sentences swapped), and one train row repeats.
    dev_rows = [json.loads(line) for line in (FIXTURES / "pairs.jsonl").read_text().splitlines() if line.strip()]
    swapped = {**dev_rows[1], "sentence1": dev_rows[1]["sentence2"], "sentence2": dev_rows[1]["sentence1"]}
    train.write_text("\n".join([*lines, json.dumps(dev_rows[0]), json.dumps(swapped), lines[0]]) + "\n")
    caplog.set_level("INFO", logger="train")
    run(tiny_cfg(f"data.train_path={train}", "data.max_train_samples=0", "trainer.max_steps=1"), run_dir=tmp_path / "run")
    assert "2 train rows (2 distinct pairs) also occur in dev" in caplog.text
    assert f"train: 1 of {len(lines) + 3} rows repeat an earlier row exactly" in caplog.text
