"""Our STS figures are sentence-transformers' EmbeddingSimilarityEvaluator figures."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers.sentence_transformer.evaluation import EmbeddingSimilarityEvaluator

from train.data.readers import read_sts_file
from train.data.rows import ScoreRange
from train.evaluation.figures import SIMILARITIES, evaluate_sts, format_table, sts_evaluator
from train.evaluation.encode import encode
from train.models.bi_encoder import build_sentence_transformer
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def model_and_data(tiny_model_dir):
    model = build_sentence_transformer(str(tiny_model_dir), max_seq_length=32)
    ds = read_sts_file(FIXTURES / "train_small.jsonl", scores=ScoreRange(0, 1))
    return model, ds


def test_encode_equals_sentence_transformers_encode(model_and_data):
    model, ds = model_and_data
    sentences = ds["sentence1"][:40]
    ours = encode(model, sentences, batch_size=7)
    theirs = model.encode(sentences, batch_size=7)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
    assert encode(model, []).shape == (0, 32)


def test_metrics_match_the_library_evaluator(model_and_data):
    model, ds = model_and_data
    ours = evaluate_sts(model, sts_evaluator(ds, batch_size=16))
    library = EmbeddingSimilarityEvaluator(
        ds["sentence1"], ds["sentence2"], ds["score"], batch_size=16, similarity_fn_names=list(SIMILARITIES)
    )(model)
    for kind in ("pearson", "spearman"):
        for sim in SIMILARITIES:
            assert ours[f"{kind}_{sim}"] == pytest.approx(library[f"{kind}_{sim}"], abs=1e-4)
    assert ours["n_pairs"] == len(ds)
    table = format_table({"dev": ours})
    assert "spearman_cosine" in table and f"{ours['spearman_cosine']:.4f}" in table
