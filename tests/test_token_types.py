"""klue/roberta-base's layout (a RoBERTa with one token type and a BERT tokenizer): every task
trains, evaluates and saves a model that bare sentence-transformers runs, without ever handing the
model a token type it does not have."""

from __future__ import annotations

import pytest

from train.evaluate import evaluate_run
from train.run import run
from tests.conftest import FIXTURES, compose_config, tiny_overrides

PAIRS = [("A man plays a guitar.", "A person makes music."), ("A man plays a guitar.", "It rains.")]


@pytest.fixture(scope="module")
def klue_ce_run(tmp_path_factory, tiny_klue_dir):
    cfg = compose_config(tiny_overrides(tiny_klue_dir, "task=cross_encoder", f"data.test_path={FIXTURES / 'pairs.csv'}"))
    run_dir = tmp_path_factory.mktemp("klue-ce")
    return run_dir, run(cfg, run_dir=run_dir)


def test_cross_encoder_on_a_one_token_type_roberta_trains_and_bare_cross_encoder_predicts(klue_ce_run):
    from sentence_transformers.cross_encoder import CrossEncoder

    run_dir, result = klue_ce_run
    assert result["steps"] == 6 and result["test"]["n_pairs"] == 2
    model = CrossEncoder(str(run_dir / "final"))
    assert "token_type_ids" not in model.tokenizer(*PAIRS[0])
    scores = model.predict(PAIRS)
    assert scores.shape == (2,)


def test_evaluate_of_the_klue_cross_encoder_gives_the_runs_figures(klue_ce_run, tmp_path):
    run_dir, result = klue_ce_run
    again = evaluate_run(
        compose_config([f"checkpoint={run_dir / 'final'}", "data=sts_file", f"data.path={FIXTURES / 'pairs.jsonl'}", "split=dev"], "evaluate"),
        run_dir=tmp_path,
    )
    assert again["dev"]["spearman"] == pytest.approx(result["dev"]["spearman"], abs=1e-6)


def test_bi_encoder_on_a_one_token_type_roberta_trains_and_bare_sentence_transformer_encodes(tiny_klue_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    result = run(compose_config(tiny_overrides(tiny_klue_dir)), run_dir=tmp_path)
    assert result["steps"] == 6
    model = SentenceTransformer(str(tmp_path / "final"))
    assert "token_type_ids" not in model.tokenizer.model_input_names
    assert model.encode([a for a, _ in PAIRS]).shape == (2, 32)


def test_a_model_saved_elsewhere_with_token_types_is_fitted_when_loaded(tiny_klue_dir, tmp_path):
    """A CrossEncoder written by other tools on klue/roberta-base keeps the BERT tokenizer's token
    types; train.evaluate, train.mine and train.retrieve load it through load_saved_model."""
    from sentence_transformers.cross_encoder import CrossEncoder

    from train.models.saved import load_saved_model

    CrossEncoder(str(tiny_klue_dir), num_labels=1).save(str(tmp_path / "ce"))
    assert "token_type_ids" in CrossEncoder(str(tmp_path / "ce")).tokenizer(*PAIRS[0])  # as written
    model = load_saved_model(tmp_path / "ce")
    assert model.predict(PAIRS).shape == (2,)
