"""The schemas in Hydra's ConfigStore: `defaults: [train_schema, ...]` in conf/ names them, so a
misspelt key or a value of the wrong type fails when the config is composed."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from train.config.command_schema import EvaluateConfig, ExportConfig, MineConfig, PushConfig, RetrieveConfig, ScoreConfig
from train.config.schema import TrainConfig, open_dict_fields
from train.losses.registry import loss_names


def register_configs() -> None:
    """Every command's schema, and a loss option a registered loss, in Hydra's ConfigStore."""
    from omegaconf import OmegaConf

    cs = ConfigStore.instance()
    for name, schema in (("train_schema", TrainConfig), ("evaluate_schema", EvaluateConfig),
                         ("mine_schema", MineConfig), ("retrieve_schema", RetrieveConfig), ("score_schema", ScoreConfig), ("push_schema", PushConfig),
                         ("export_schema", ExportConfig)):
        cs.store(name=name, node=open_dict_fields(OmegaConf.structured(schema)))
    # loss=<name>: one option a registered loss (train/losses/registry.py), so the list is kept in one place.
    for name in loss_names():
        cs.store(group="loss", name=name, node={"name": name})
