"""Several datasets in one run (mixture.datasets): the schedule, a loss per dataset in the log, the
card, exact resume, and 1 process against 2 on the same global batches."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import FIXTURES, assert_same_weights, compose_config, resume_from_checkpoint
from train.data.batching import BucketBatchSampler, NoDuplicatesBatchSampler
from train.data.mixture import MixtureBatchSampler, MixtureCollate, MixtureRows
from train.errors import ConfigError
from train.run import run

NLI = [f"'data.train_path={FIXTURES / 'nli_train_small.tsv'}'", f"'data.dev_path={FIXTURES / 'nli_small.tsv'}'", "'data.max_train_samples=0'"]
STS = [f"'data.train_path={FIXTURES / 'train_small.jsonl'}'", f"'data.dev_path={FIXTURES / 'pairs.jsonl'}'", "'data.max_train_samples=0'"]


def entry(name: str, data: str, loss: str, overrides: list[str], weight: float = 1.0) -> str:
    return f"{{name: {name}, data: {data}, loss: {loss}, weight: {weight}, overrides: [{', '.join(overrides)}]}}"


def mixture(*entries: str, sampling: str = "proportional") -> list[str]:
    return [f"mixture.datasets=[{', '.join(entries)}]", f"mixture.sampling={sampling}"]


def tiny(model_dir, *extra: str) -> list[str]:
    return ["debug=default", f"model.name={model_dir}", "model.max_seq_length=64", "trainer.batch_size=4", *extra]


# --- the schedule ---------------------------------------------------------------------------------


def samplers(sizes=(40, 12), batch=4, group=1):
    out = [NoDuplicatesBatchSampler([[f"{d}-{i}"] for i in range(n)], batch, seed=1, group=group) for d, n in enumerate(sizes)]
    return out, [0, *itertools.accumulate(sizes)][:-1]


def test_proportional_uses_every_batch_of_every_dataset_once_each_from_one_dataset():
    parts, offsets = samplers()
    s = MixtureBatchSampler(parts, offsets, [1, 1], "proportional", seed=0)
    batches, order = s.batches(0), s.parts(0)
    assert order.count(0) == 10 and order.count(1) == 3
    for d, batch in zip(order, batches):
        lo, hi = offsets[d], offsets[d] + (40, 12)[d]
        assert all(lo <= i < hi for i in batch)
    assert sorted(i for b in batches for i in b) == list(range(52))
    assert order != sorted(order)  # interleaved, not one dataset after the other
    again = MixtureBatchSampler(samplers()[0], offsets, [1, 1], "proportional", seed=0)
    assert again.batches(0) == batches and again.batches(1) != batches  # a function of seed and epoch


def test_round_robin_alternates_and_stops_when_the_smallest_runs_out():
    parts, offsets = samplers()
    s = MixtureBatchSampler(parts, offsets, [1, 1], "round_robin")
    assert s.parts(0) == [0, 1, 0, 1, 0, 1] and s.dropped == {"0": 7}
    with pytest.raises(ValueError, match="round_robin"):
        MixtureBatchSampler(parts, offsets, [2, 1], "round_robin")


def test_weights_cut_or_repeat_a_dataset():
    parts, offsets = samplers()
    order = MixtureBatchSampler(parts, offsets, [0.5, 2], "proportional").parts(0)
    assert order.count(0) == 5 and order.count(1) == 6


def test_under_two_processes_a_unit_is_two_consecutive_batches_of_one_dataset():
    parts, offsets = samplers((40, 16), group=2)
    order = MixtureBatchSampler(parts, offsets, [1, 1], "proportional", group=2).parts(0)
    assert len(order) % 2 == 0 and all(order[i] == order[i + 1] for i in range(0, len(order), 2))
    # The same units as one process with the global batch: dataset order per global step is equal.
    one = MixtureBatchSampler(samplers((40, 16), batch=8)[0], offsets, [1, 1], "proportional").parts(0)
    assert one == order[::2]


def test_a_short_batch_is_left_out_under_several_processes_only():
    lengths = [5] * 10  # 10 rows, batch 4: a short last batch
    one = MixtureBatchSampler([BucketBatchSampler(lengths, 4)], [0], [1], "proportional")
    two = MixtureBatchSampler([BucketBatchSampler(lengths, 4)], [0], [1], "proportional", group=2)
    assert [len(b) for b in one.batches(0)].count(2) == 1 and all(len(b) == 4 for b in two.batches(0))


def test_rows_and_collate_hand_each_batch_to_its_own_dataset():
    rows = MixtureRows([["a", "b", "c"], ["x", "y"]])
    collate = MixtureCollate([lambda r: {"rows": r, "from": "first"}, lambda r: {"rows": r, "from": "second"}])
    assert collate(rows.__getitems__([3, 4])) == {"rows": ["x", "y"], "from": "second", "mixture_part": 1}
    with pytest.raises(ValueError, match="more than one set"):
        rows.__getitems__([2, 3])


# --- runs -----------------------------------------------------------------------------------------


def test_a_mixture_run_logs_a_loss_per_dataset_and_its_card_lists_them(tiny_model_dir, tmp_path):
    cfg = compose_config(tiny(tiny_model_dir, "trainer.max_steps=0", "trainer.epochs=1",
                              *mixture(entry("nli", "nli_file", "mnrl", NLI), entry("sts", "sts_file", "cosent", STS))))
    out = run(cfg, run_dir=tmp_path / "run")
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    per_step = [[k for k in line if k.startswith("loss_")] for line in lines]
    assert all(len(keys) == 1 for keys in per_step)  # log_every=1: each step trained one dataset
    assert {k for keys in per_step for k in keys} == {"loss_nli", "loss_sts"}
    for line in lines:  # a step of one dataset: its loss is the step's
        assert line[per_step[lines.index(line)][0]] == pytest.approx(line["loss"], rel=1e-5)
    datasets = out["mixture"]["datasets"]
    assert [(d["name"], d["loss"], d["train_rows"]) for d in datasets] == [("nli", "mnrl", 60), ("sts", "cosent", 80)]
    assert out["steps"] == sum(d["batches_per_epoch"] for d in datasets) == 15 + 20
    assert "spearman_cosine" in out["dev"] and "ndcg@10" in out["retrieval_dev"]  # STS dev of sts, retrieval dev of nli
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    assert "| nli | `data=nli_file`" in card and "| sts | `data=sts_file`" in card and "CoSENTLoss" in card


def test_a_mixture_with_a_loss_of_its_own_weights_resumes_exactly(tiny_model_dir, tmp_path):
    # softmax holds a classifier (the loss's own weights): checkpointed inside the mixture's loss.
    cfg = compose_config(tiny(tiny_model_dir, "trainer.save_every=3", "trainer.eval_every=1000",
                              *mixture(entry("nli", "nli_file", "softmax", NLI), entry("sts", "sts_file", "cosent", STS))))
    run(cfg, run_dir=tmp_path / "full")
    resume_from_checkpoint(cfg, tmp_path / "full", tmp_path / "resumed")
    assert_same_weights(tmp_path / "full" / "final" / "model.safetensors", tmp_path / "resumed" / "final" / "model.safetensors")
    full = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [line["loss"] for line in resumed] == pytest.approx([line["loss"] for line in full], abs=1e-6)


def test_an_entry_is_composed_as_its_own_run_and_checked(tiny_model_dir, tmp_path):
    from train.config.mixture import mixture_parts

    cfg = compose_config(tiny(tiny_model_dir, *mixture(entry("nli", "nli_file", "mnrl", [*NLI, "'loss.scale=30'"]),
                                                        entry("sts", "korsts", "cosent", []))))
    nli, sts = mixture_parts(cfg)
    assert nli.cfg.loss.scale == 30 and nli.cfg.data.name == "nli_file" and sts.cfg.data.name == "korsts"
    assert sts.cfg.loss.scale is None and OmegaConf.select(sts.cfg, "model.name") == str(tiny_model_dir)
    bad = compose_config(tiny(tiny_model_dir, *mixture(entry("nli", "nli_file", "clip", ["'trainer.lr=1'"]), entry("nli", "nope", "mnrl", []))))
    with pytest.raises(ConfigError) as e:
        run(bad, run_dir=tmp_path / "bad")
    message = str(e.value)
    for part in ("loss=clip is not a task=bi_encoder loss", "trainer.lr=1", "data=nope is not a conf/data option", "names ['nli', 'nli'] repeat"):
        assert part in message
    assert not (tmp_path / "bad" / "final").exists()


def test_two_processes_train_a_mixture_like_one_process_of_the_global_batch(tiny_model_no_dropout_dir, tmp_path):
    from tests.test_multiprocess_run import launch
    from tests.test_train_run import assert_same_updates, weight_updates

    half = [*NLI[:2], "'data.max_train_samples=32'"]
    common = [f"model.name={tiny_model_no_dropout_dir}", "debug=default", "trainer.max_steps=6", "trainer.mixed_precision=no",
              "trainer.lr=1e-3", "trainer.eval_every=1000",
              *mixture(entry("all", "nli_file", "mnrl", NLI), entry("half", "nli_file", "mnrl", half))]
    done = launch([*common, "trainer.batch_size=4", f"hydra.run.dir={tmp_path / 'two'}"])
    assert done.returncode == 0, done.stderr[-4000:]
    one = run(compose_config([*common, "trainer.batch_size=8"]), run_dir=tmp_path / "one")
    two = json.loads((tmp_path / "two" / "eval.json").read_text())
    rows = lambda report: [(d["name"], d["train_rows"]) for d in report["mixture"]["datasets"]]
    assert two["num_processes"] == 2 and rows(two) == rows(one) == [("all", 60), ("half", 32)]
    assert_same_updates(weight_updates(tiny_model_no_dropout_dir, tmp_path / "two"), weight_updates(tiny_model_no_dropout_dir, tmp_path / "one"),
                        rtol=1e-3)
    logged = lambda run_dir: [[k for k in json.loads(line) if k.startswith("loss_")] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged(tmp_path / "two") == logged(tmp_path / "one")  # the same dataset at every step


def test_each_batch_goes_to_its_own_datasets_step_and_loss():
    from train.engine.task_step import BatchStats
    from train.tasks.mixture import LossMixture, MixtureStep

    class Step:
        def __init__(self, tag):
            self.tag = tag

        def loss(self, model, loss_fn, batch):
            return (self.tag, loss_fn.tag)

        def stats(self, batch):
            return BatchStats(batch["rows"], 0, 0)

        def forward_contexts(self, model, batch=None):
            return [self.tag]

    class Loss(torch.nn.Module):
        def __init__(self, tag):
            super().__init__()
            self.tag = tag

    step = MixtureStep([Step("a"), Step("b")])
    losses = LossMixture([Loss("A"), Loss("B")], ["a", "b"])
    batch = {"mixture_part": 1, "rows": 3}
    assert step.loss(None, losses, batch) == ("b", "B") and step.forward_contexts(None, batch) == ["b"]
    assert step.stats(batch) == BatchStats(3, 0, 0, group=1)
