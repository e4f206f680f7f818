"""The configuration reference and `--help` are drawn from the schema: every key, group option and
loss is there, each key with its help, so the docs cannot drift from the code."""

from __future__ import annotations

import dataclasses
import typing
import subprocess
import sys

from train.config.reference import COMMANDS, groups, keys, markdown
from train.config.schema import TrainConfig
from train.losses.registry import loss_names
from tests.conftest import ROOT


def leaf_paths(schema, prefix=""):
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        nested = next((c for c in (f.default_factory,) if c is not dataclasses.MISSING and dataclasses.is_dataclass(c)), None)
        if nested is not None:
            yield from leaf_paths(nested, prefix + f.name + ".")
            continue
        yield prefix + f.name
        item = next(iter(typing.get_args(hints[f.name])), None)
        if dataclasses.is_dataclass(item):  # a list of records (stages, mixture.datasets): each entry's keys
            yield from leaf_paths(item, prefix + f.name + "[].")


def test_every_key_of_every_command_is_in_the_reference_with_its_help():
    page = markdown()
    for command, (schema, rules) in COMMANDS.items():
        found = {k.path: k for k in keys(schema, rules)}
        assert set(found) == set(leaf_paths(schema)), command
        for path, key in found.items():
            assert f"| `{path}` |" in page, f"{command}: {path} is not in the reference"
            assert key.help, f"{command}: {path} has no comment in the schema to explain it"
    assert "| `trainer.batch_size` | int | `16` | an integer ≥ 1 |" in page  # type, default and range from checks.py
    assert "`bf16`" in page and "`fp16`" in page  # an enum's choices


def test_every_group_option_and_loss_is_in_the_reference():
    page = markdown()
    options = [(g, o) for g, opts in groups().items() for o, _ in opts]
    assert ("model", "minilm") in options and ("experiment", "nli_then_sts") in options
    for group, option in options:
        assert f"`{group}={option}`" in page
    for name in loss_names():
        assert f"| `{name}` |" in page


def test_help_prints_every_key_with_its_help_not_hydras_stock_text():
    done = subprocess.run([sys.executable, "-m", "train", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "powered by Hydra" not in done.stdout
    for key in keys(TrainConfig):
        assert f"  {key.path}=" in done.stdout
    assert "Rows a batch (pairs, triplets, image–caption pairs)" in done.stdout
    assert "model: " in done.stdout and "minilm" in done.stdout
    evaluate = subprocess.run([sys.executable, "-m", "train.evaluate", "-h"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert evaluate.returncode == 0 and "  checkpoint=null" in evaluate.stdout
