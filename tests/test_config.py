"""Every config file composes; mistakes fail at compose time with a message that helps."""

from __future__ import annotations

import pytest
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from tests.conftest import CONF, compose_config

GROUPS = ("model", "pooling", "data", "loss", "trainer", "experiment", "debug")


def group_options() -> list[tuple[str, str]]:
    found = []
    for path in sorted(CONF.rglob("*.yaml")):
        rel = path.relative_to(CONF)
        if len(rel.parts) == 2 and rel.parts[0] in GROUPS:
            found.append((rel.parts[0], rel.stem))
    return found


def test_config_files_were_found():
    options = group_options()
    assert len(options) >= 15, options
    assert {g for g, _ in options} == set(GROUPS)
    # Every yaml under conf/ is either a primary config or a group option tested below
    # (accelerate launcher configs live in accelerate/, apart from the hyperparameters).
    primaries = {p.name for p in CONF.glob("*.yaml")}
    assert primaries == {"train.yaml", "evaluate.yaml"}
    assert len(list(CONF.rglob("*.yaml"))) == len(options) + len(primaries)


@pytest.mark.parametrize("group,option", group_options())
def test_every_group_option_composes(group, option):
    cfg = compose_config([f"{group}={option}"])
    assert cfg.model.name and cfg.trainer.batch_size > 0
    if group == "pooling":
        assert cfg.pooling.mode.value in {"cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"}
    if group == "model":
        assert cfg.model.name == yaml.safe_load((CONF / "model" / f"{option}.yaml").read_text())["name"]


@pytest.mark.parametrize("group,option", [(g, o) for g, o in group_options() if g in ("model", "pooling", "data")])
def test_evaluate_config_composes(group, option):
    cfg = compose_config([f"{group}={option}"], config_name="evaluate")
    assert cfg.split == "test"


def test_defaults_are_the_documented_recipe():
    cfg = compose_config()
    assert cfg.model.name == "klue/roberta-base"
    assert cfg.pooling.mode.value == "mean"
    assert cfg.data.name == "korsts"
    assert cfg.loss.name.value == "cosent"


def test_experiment_overrides_groups():
    cfg = compose_config(["experiment=minilm_stsb"])
    assert cfg.model.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg.data.name == "stsb"


def test_misspelt_key_fails_at_compose_time():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["trainer.learning_rate=1e-4"])
    assert "learning_rate" in str(e.value.__cause__ or e.value)


def test_wrong_type_fails_at_compose_time():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_config(["trainer.epochs=two"])
    assert "epochs" in str(e.value.__cause__ or e.value)


def test_unknown_pooling_mode_names_the_valid_ones():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_config(["pooling.mode=average"])
    message = str(e.value.__cause__ or e.value)
    for mode in ("cls", "mean", "max", "weightedmean", "lasttoken"):
        assert mode in message


def test_unknown_loss_names_the_valid_ones():
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        compose_config(["loss.name=triplett"])
    message = str(e.value.__cause__ or e.value)
    for loss in ("cosent", "angle", "cosine"):
        assert loss in message


def test_unknown_group_option_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException) as e:
        compose_config(["pooling=average"])
    assert "mean" in str(e.value) and "cls" in str(e.value)


def test_env_var_sets_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBED_DATA_DIR", str(tmp_path))
    assert compose_config().data.dir == str(tmp_path)
    monkeypatch.delenv("EMBED_DATA_DIR")
    assert compose_config().data.dir == "data"
